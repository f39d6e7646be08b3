// Package importer moves a reference registry (CNCF Distribution) into
// Berth without downtime: it reads the registry's storage tree, on a
// filesystem or in S3, while the registry keeps serving, and stores what
// it finds through the same database paths as a push. A bulk pass takes
// everything; catch-up passes take what changed since, cheaply (what
// Berth already has is skipped after one lookup per repository); the
// command runs passes until one finds nothing new. Every step is keyed by
// digest and idempotent, so an import killed at any point is finished by
// running it again.
//
// Nothing is taken on trust: manifests are parsed and validated like a
// push (package manifest) and their bytes hashed; blobs are hashed, unless
// Config.TrustDigests, before Berth serves them. Blob bytes are hard-linked
// (filesystem to filesystem) or copied on the S3 server (S3 to S3), never
// sent through Berth, when source and store are of the same kind; else they
// are streamed into the store.
package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/internal/names"
	"github.com/berth-registry/berth/manifest"
)

// Config says how to import.
type Config struct {
	// TrustDigests skips hashing the blobs' bytes: a blob is taken to hold
	// what its name says. Manifests are always hashed (they are small).
	TrustDigests bool
	// Workers is how many repositories are imported at once (0: 4).
	Workers int
	// MaxPasses bounds the passes of Run (0: 10).
	MaxPasses int
	// Settle ends Run after a pass that changed at most this many things
	// (manifests stored, tags set or removed, blobs linked).
	Settle int
	// Progress receives the progress of each pass, if set.
	Progress *Progress
	Log      *slog.Logger
}

// Importer imports from one source into one Berth.
type Importer struct {
	cfg   Config
	src   Source
	db    *db.DB
	store blobstore.Store

	// placed holds, across repositories and passes, the blobs whose bytes
	// were placed (verified unless told not to), are being placed, or were
	// found not to match their digest.
	placed sync.Map // digest.Digest → *placing
	// links holds the current links read, by "repository:tag", for the
	// next pass to skip those that did not change.
	links sync.Map // string → readLink
}

// New returns an importer from src into the database and blob store of a
// Berth.
func New(cfg Config, src Source, d *db.DB, store blobstore.Store) *Importer {
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.MaxPasses <= 0 {
		cfg.MaxPasses = 10
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Importer{cfg: cfg, src: src, db: d, store: store}
}

// Run makes passes until one changes at most cfg.Settle things, or
// cfg.MaxPasses have run, and returns the reports of every pass.
func (im *Importer) Run(ctx context.Context) ([]*Report, error) {
	var reports []*Report
	for pass := 1; pass <= im.cfg.MaxPasses; pass++ {
		rep, err := im.Pass(ctx, pass)
		reports = append(reports, rep)
		if err != nil {
			return reports, err
		}
		if rep.Changes() <= int64(im.cfg.Settle) {
			break
		}
	}
	return reports, nil
}

// Pass makes one pass over the source: scan, then each repository.
func (im *Importer) Pass(ctx context.Context, n int) (*Report, error) {
	rep := newReport(n)
	start := time.Now()
	if p := im.cfg.Progress; p != nil {
		fmt.Fprintf(p.W, "pass %d: scanning %s\n", n, im.src)
	}
	repos, err := im.src.Scan(ctx)
	if err != nil {
		return rep, err
	}
	rep.ScanTime = time.Since(start)
	if p := im.cfg.Progress; p != nil {
		p.start(n, len(repos), rep)
		defer p.stop()
	}
	work := make(chan *Repository)
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	for range im.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range work {
				if err := im.repository(ctx, r, rep); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("repository %s: %w", r.Name, err) })
				}
				rep.Repositories.Add(1)
			}
		}()
	}
	for _, r := range repos {
		if ctx.Err() != nil || firstErr != nil {
			break
		}
		work <- r
	}
	close(work)
	wg.Wait()
	rep.Duration = time.Since(start)
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return rep, firstErr
}

// srcManifest is a manifest read from the source.
type srcManifest struct {
	digest  digest.Digest
	payload []byte
	m       *manifest.Manifest
	skip    string // why it cannot be imported, if it cannot
}

// repoImport is the import of one repository in one pass.
type repoImport struct {
	im   *Importer
	r    *Repository
	rep  *Report
	have db.RepositoryContents // what Berth had when the pass reached it

	current   map[string]digest.Digest // tag → digest, as current/link says
	revisions map[digest.Digest]bool
	needed    map[digest.Digest]*srcManifest // manifests Berth lacks
	blobErr   map[digest.Digest]string       // blobs that cannot be linked, and why
	stored    map[digest.Digest]bool         // manifests live in Berth
	created   map[string]bool                // tags created with their manifest
}

func (ri *repoImport) skip(what, reason string) { ri.rep.skip(ri.r.Name, what, reason) }

// repository imports one repository: what Berth does not have yet, in
// four steps, each taking what the one before left.
func (im *Importer) repository(ctx context.Context, r *Repository, rep *Report) error {
	if !names.ValidRepository(r.Name) {
		rep.skip(r.Name, "", "repository name is not valid in the OCI distribution spec")
		return nil
	}
	for _, b := range r.Bad {
		rep.skip(r.Name, b, "unexpected file in the repository's tree")
	}
	have, err := im.db.RepositoryContentsGet(ctx, r.Name)
	if err != nil {
		return err
	}
	ri := &repoImport{im: im, r: r, rep: rep, have: have, blobErr: map[digest.Digest]string{},
		stored: map[digest.Digest]bool{}, created: map[string]bool{}}
	for d := range have.Manifests {
		ri.stored[digest.Digest(d)] = true
	}
	ri.readTags(ctx)
	ri.readManifests(ctx)
	if err := ri.linkBlobs(ctx); err != nil {
		return err
	}
	if err := ri.storeManifests(ctx); err != nil {
		return err
	}
	return ri.syncTags(ctx)
}

// readTags reads where each tag points now (current/link).
func (ri *repoImport) readTags(ctx context.Context) {
	ri.current = map[string]digest.Digest{}
	for _, name := range sortedKeys(ri.r.Tags) {
		if !names.ValidTag(name) {
			ri.skip(name, "tag name is not valid in the OCI distribution spec")
			continue
		}
		if !ri.r.Tags[name].HasCurrent {
			ri.skip(name, "tag without a current link (being written, or a broken tree)")
			continue
		}
		t := ri.r.Tags[name]
		key := ri.r.Name + ":" + name
		if t.Version != "" {
			if v, ok := ri.im.links.Load(key); ok && v.(readLink).version == t.Version {
				ri.current[name] = v.(readLink).digest
				continue
			}
		}
		dg, err := ri.im.src.ReadLink(ctx, ri.r.Name, "_manifests/tags/"+name+"/current/link")
		if errors.Is(err, ErrNotFound) {
			continue // deleted since the scan
		}
		if err != nil {
			ri.skip(name, fmt.Sprintf("tag's current link unreadable: %v", err))
			continue
		}
		ri.current[name] = digest.Digest(dg)
		if t.Version != "" {
			ri.im.links.Store(key, readLink{t.Version, digest.Digest(dg)})
		}
	}
}

// readLink is a tag's current link as read at a version (see Tag.Version).
type readLink struct {
	version string
	digest  digest.Digest
}

// readManifests reads, hashes and parses every revision Berth lacks. A tag
// pointing at a digest that is not a revision is dangling (see syncTags).
func (ri *repoImport) readManifests(ctx context.Context) {
	ri.revisions = map[digest.Digest]bool{}
	ri.needed = map[digest.Digest]*srcManifest{}
	for _, d := range ri.r.Revisions {
		ri.revisions[d] = true
		switch {
		case ri.have.Manifests[string(d)]:
		case ri.have.Deleted[string(d)]:
			// Deleted in Berth: Berth's decision stands.
			ri.needed[d] = &srcManifest{digest: d, skip: "deleted in Berth: left deleted (push or restore it to bring it back)"}
		default:
			ri.needed[d] = ri.im.readManifest(ctx, d)
		}
	}
}

// linkBlobs places and links the repository's layer links and what the
// new manifests reference, less what Berth has linked already; what cannot
// be linked goes to blobErr.
func (ri *repoImport) linkBlobs(ctx context.Context) error {
	declared := map[digest.Digest]int64{} // size a manifest declares, -1: a layer link only
	for _, d := range ri.r.Layers {
		declared[d] = -1
	}
	for _, sm := range ri.needed {
		if sm.m == nil {
			continue
		}
		for _, b := range sm.m.Blobs {
			declared[b.Digest] = b.Size
		}
	}
	var lookup []string
	for d := range declared {
		if !ri.have.Blobs[string(d)] {
			lookup = append(lookup, string(d))
		}
	}
	slices.Sort(lookup)
	ready, err := ri.im.db.BlobsReady(ctx, lookup)
	if err != nil {
		return err
	}
	var toLink []db.BlobRef
	for _, ds := range lookup {
		d := digest.Digest(ds)
		size, inBerth := ready[ds]
		if !inBerth {
			var err error
			size, err = ri.im.src.BlobSize(ctx, d)
			if errors.Is(err, ErrNotFound) {
				ri.blobErr[d] = "blob data missing from the source"
				if declared[d] < 0 {
					ri.skip(ds, "dangling layer link: the blob's data is gone")
				}
				continue
			}
			if err != nil {
				return err
			}
			if err := ri.im.place(ctx, d, size, ri.rep); err != nil {
				if errors.Is(err, errDigestMismatch) {
					ri.blobErr[d] = err.Error()
					ri.skip(ds, err.Error())
					continue
				}
				return err
			}
		}
		if want := declared[d]; want >= 0 && want != size {
			ri.blobErr[d] = fmt.Sprintf("blob is %d bytes, the manifest says %d", size, want)
			continue
		}
		toLink = append(toLink, db.BlobRef{Digest: ds, Size: size})
	}
	for i := 0; i < len(toLink); i += blobBatch {
		batch := toLink[i:min(i+blobBatch, len(toLink))]
		err := ri.im.db.BlobImport(ctx, ri.r.Name, batch, func(ctx context.Context, b db.BlobRef) error {
			// Under the row lock: make sure the bytes are (still) there.
			return ri.im.ensure(ctx, digest.Digest(b.Digest), b.Size, ri.rep)
		})
		if err != nil {
			return err
		}
		ri.rep.BlobsLinked.Add(int64(len(batch)))
	}
	return nil
}

// storeManifests stores the new manifests, children before their index,
// each with the new tags that point at it, after seeding those tags'
// history.
func (ri *repoImport) storeManifests(ctx context.Context) error {
	tagsOf := map[digest.Digest][]string{}
	for tag, d := range ri.current {
		if _, ok := ri.have.Tags[tag]; !ok {
			tagsOf[d] = append(tagsOf[d], tag)
		}
	}
	pending := map[digest.Digest]bool{}
	for d, sm := range ri.needed {
		switch {
		case sm.skip != "":
			ri.skip(string(d), sm.skip)
		case missingBlob(sm.m, ri.blobErr) != "":
			ri.skip(string(d), missingBlob(sm.m, ri.blobErr))
		default:
			pending[d] = true
		}
	}
	// The history of the tags about to be created, in one transaction.
	seeds := map[string][]db.TagPast{}
	for tag, d := range ri.current {
		if _, ok := ri.have.Tags[tag]; ok || !(ri.stored[d] || pending[d]) {
			continue
		}
		for _, e := range ri.r.Tags[tag].Index {
			seeds[tag] = append(seeds[tag], db.TagPast{Digest: string(e.Digest), At: e.At})
		}
	}
	if _, err := ri.im.db.TagHistorySeed(ctx, ri.r.Name, seeds); err != nil {
		return err
	}
	for len(pending) > 0 {
		progress := false
		for _, d := range sortedKeys(pending) {
			sm := ri.needed[d]
			waiting, missing := false, ""
			for _, c := range sm.m.Children {
				switch {
				case ri.stored[c.Digest]:
				case pending[c.Digest]:
					waiting = true
				case ri.needed[c.Digest] != nil:
					missing = "child manifest " + string(c.Digest) + " was skipped"
				default:
					missing = "child manifest " + string(c.Digest) + " is not in the repository"
				}
			}
			if waiting && missing == "" {
				continue
			}
			delete(pending, d)
			progress = true
			if missing != "" {
				ri.skip(string(d), missing)
				continue
			}
			tags := tagsOf[d]
			slices.Sort(tags)
			ok, err := ri.im.storeManifest(ctx, ri.r, sm, tags, db.TagCondition{IfNoneMatch: len(tags) > 0}, ri.rep)
			if err != nil {
				return err
			}
			if ok {
				ri.stored[d] = true
				ri.rep.Manifests.Add(1)
				ri.rep.TagsSet.Add(int64(len(tags)))
				for _, t := range tags {
					ri.created[t] = true
				}
			}
		}
		if !progress {
			for _, d := range sortedKeys(pending) {
				ri.skip(string(d), "its child manifests form a cycle")
			}
			break
		}
	}
	return nil
}

// syncTags creates the tags on manifests Berth had already, moves those
// that moved in the source, and removes those the source removed — the
// last two only where Berth's tag is still as the import left it.
func (ri *repoImport) syncTags(ctx context.Context) error {
	for _, tag := range sortedKeys(ri.current) {
		d := ri.current[tag]
		berth, inBerth := ri.have.Tags[tag]
		switch {
		case inBerth && berth == string(d), ri.created[tag]:
			continue
		case !ri.revisions[d] && !ri.stored[d]:
			ri.skip(tag, "dangling tag link: it points at "+string(d)+", which is not a manifest of the repository")
			continue
		case !ri.stored[d]:
			continue // its manifest was skipped, and said why
		case !inBerth:
			if err := ri.im.setTag(ctx, ri.r, tag, d, db.TagCondition{IfNoneMatch: true}, ri.rep); err != nil {
				return err
			}
		case ri.have.ImportedTags[tag] != berth:
			ri.skip(tag, "moved in the source, but changed in Berth since the import: left as Berth has it")
		default:
			if err := ri.im.setTag(ctx, ri.r, tag, d, db.TagCondition{IfMatch: []string{berth}}, ri.rep); err != nil {
				return err
			}
		}
	}
	for _, tag := range sortedKeys(ri.have.ImportedTags) {
		if _, ok := ri.r.Tags[tag]; ok {
			continue
		}
		_, err := ri.im.db.TagDelete(ctx, ri.r.Name, tag, db.TagCondition{IfMatch: []string{ri.have.ImportedTags[tag]}}, db.ImportActor)
		var pe *db.PreconditionError
		var rule *db.TagRuleError
		switch {
		case err == nil:
			ri.rep.TagsRemoved.Add(1)
		case errors.As(err, &pe), errors.Is(err, db.ErrTagUnknown):
		case errors.As(err, &rule):
			ri.skip(tag, "removed in the source, kept in Berth: "+err.Error())
		default:
			return err
		}
	}
	return nil
}

// blobBatch is how many blobs one BlobImport transaction links: enough to
// make the transactions few, few enough to hold their row locks briefly.
const blobBatch = 200

// setTag points tag at the (stored) manifest d: through ManifestStore, with
// the manifest's bytes read again, like a push of it by tag.
func (im *Importer) setTag(ctx context.Context, r *Repository, tag string, d digest.Digest, cond db.TagCondition, rep *Report) error {
	sm := im.readManifest(ctx, d)
	if sm.skip != "" {
		rep.skip(r.Name, tag, sm.skip)
		return nil
	}
	ok, err := im.storeManifest(ctx, r, sm, []string{tag}, cond, rep)
	if ok {
		rep.TagsSet.Add(1)
	}
	return err
}

// storeManifest stores sm with tags; false (and a skip) when Berth refuses
// it for a reason that belongs to the data, not to Berth.
func (im *Importer) storeManifest(ctx context.Context, r *Repository, sm *srcManifest, tags []string, cond db.TagCondition, rep *Report) (bool, error) {
	put := db.ManifestPutOf(r.Name, string(sm.digest), sm.payload, sm.m)
	put.Tags, put.TagCondition = tags, cond
	_, err := im.db.ManifestStore(ctx, put, db.ImportActor)
	var missing *db.MissingReferenceError
	var size *db.SizeMismatchError
	var pre *db.PreconditionError
	var rule *db.TagRuleError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &missing):
		rep.skip(r.Name, string(sm.digest), fmt.Sprintf("references %s, which Berth does not have in the repository", missing.Digest))
	case errors.As(err, &size):
		rep.skip(r.Name, string(sm.digest), err.Error())
	case errors.As(err, &pre) && len(tags) > 1:
		// One of the tags changed since our lookup (another import, or a
		// client): store the manifest, then each tag on its own.
		if ok, err := im.storeManifest(ctx, r, sm, nil, db.TagCondition{}, rep); !ok || err != nil {
			return ok, err
		}
		for _, tag := range tags {
			if _, err := im.storeManifest(ctx, r, sm, []string{tag}, cond, rep); err != nil {
				return false, err
			}
		}
		return true, nil
	case errors.As(err, &pre) && pre.Current == string(sm.digest):
		return true, nil // another import set it meanwhile
	case errors.As(err, &pre):
		// Changed in Berth between our lookup and now: left as it is.
		rep.skip(r.Name, strings.Join(tags, ","), "changed in Berth during the import: left as Berth has it")
	case errors.As(err, &rule):
		rep.skip(r.Name, strings.Join(tags, ","), err.Error())
	case errors.Is(err, db.ErrUnavailable), ctx.Err() != nil:
		return false, err
	default:
		// A refusal this package does not know (a quota, say): the
		// manifest is skipped with Berth's reason, and a rerun tries again.
		rep.skip(r.Name, string(sm.digest), "Berth refused it: "+err.Error())
	}
	return false, nil
}

// missingBlob says why m cannot be imported for lack of a blob, if so.
func missingBlob(m *manifest.Manifest, blobErr map[digest.Digest]string) string {
	for _, b := range m.Blobs {
		if reason, bad := blobErr[b.Digest]; bad {
			return fmt.Sprintf("missing blob %s: %s", b.Digest, reason)
		}
	}
	return ""
}

// readManifest reads, hashes and validates manifest d from the source.
func (im *Importer) readManifest(ctx context.Context, d digest.Digest) *srcManifest {
	sm := &srcManifest{digest: d}
	size, err := im.src.BlobSize(ctx, d)
	if errors.Is(err, ErrNotFound) {
		sm.skip = "dangling revision link: the manifest's data is gone"
		return sm
	}
	if err != nil {
		sm.skip = fmt.Sprintf("cannot read the manifest: %v", err)
		return sm
	}
	if size > manifest.MaxSize {
		sm.skip = fmt.Sprintf("manifest of %d bytes, over Berth's limit of %d", size, manifest.MaxSize)
		return sm
	}
	body, err := im.src.OpenBlob(ctx, d)
	if err != nil {
		sm.skip = fmt.Sprintf("cannot read the manifest: %v", err)
		return sm
	}
	defer body.Close()
	payload, err := io.ReadAll(io.LimitReader(body, manifest.MaxSize+1))
	if err != nil {
		sm.skip = fmt.Sprintf("cannot read the manifest: %v", err)
		return sm
	}
	if got := manifest.Digest(payload, d.Algorithm()); got != d {
		sm.skip = fmt.Sprintf("manifest data hashes to %s", got)
		return sm
	}
	m, err := manifest.Parse("", payload)
	if err != nil {
		if strings.Contains(err.Error(), "schema 1") {
			sm.skip = "Docker schema 1 manifest: Berth does not accept them"
		} else {
			sm.skip = err.Error()
		}
		return sm
	}
	sm.payload, sm.m = payload, m
	return sm
}

var errDigestMismatch = errors.New("blob data does not match its digest")

// place puts blob d's bytes into Berth's store, verifying them unless
// told not to; once per blob and run, however many repositories (and
// workers at once) link it.
func (im *Importer) place(ctx context.Context, d digest.Digest, size int64, rep *Report) error {
	p := &placing{done: make(chan struct{})}
	if v, loaded := im.placed.LoadOrStore(d, p); loaded {
		q := v.(*placing)
		select {
		case <-q.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if q.err == nil || errors.Is(q.err, errDigestMismatch) {
			return q.err
		}
		// The other attempt failed for a reason of its own (it has been
		// forgotten): make ours.
		return im.place(ctx, d, size, rep)
	}
	p.err = im.placeOnce(ctx, d, size, rep)
	if p.err != nil && !errors.Is(p.err, errDigestMismatch) {
		im.placed.CompareAndDelete(d, p)
	}
	close(p.done)
	return p.err
}

// placing is a blob being placed, or placed (done closed): err nil, or
// the mismatch that keeps it out.
type placing struct {
	done chan struct{}
	err  error
}

func (im *Importer) placeOnce(ctx context.Context, d digest.Digest, size int64, rep *Report) error {
	// A stream hashes what it copies; a hard link or a server-side copy
	// reads nothing, so the bytes are read for the hash alone.
	if !im.cfg.TrustDigests && im.fastPath() {
		if err := im.verify(ctx, d, rep); err != nil {
			return err
		}
	}
	return im.ensure(ctx, d, size, rep)
}

// fastPath reports whether blobs reach the store without passing through
// this process: a hard link, or a copy on the S3 server.
func (im *Importer) fastPath() bool {
	switch im.src.(type) {
	case *DirSource:
		_, ok := im.store.(blobstore.FileImporter)
		return ok
	case *S3Source:
		_, ok := im.store.(blobstore.ObjectCopier)
		return ok
	}
	return false
}

// verify reads and hashes every byte of blob d.
func (im *Importer) verify(ctx context.Context, d digest.Digest, rep *Report) error {
	body, err := im.src.OpenBlob(ctx, d)
	if err != nil {
		return err
	}
	defer body.Close()
	v := d.Verifier()
	n, err := io.Copy(v, body)
	rep.BytesVerified.Add(n)
	if err != nil {
		return fmt.Errorf("read blob %s: %w", d, err)
	}
	if !v.Verified() {
		return fmt.Errorf("%w: %s", errDigestMismatch, d)
	}
	return nil
}

// ensure makes blob d readable in Berth's store: a hard link or a
// server-side copy when the source allows it, else a stream. Idempotent.
func (im *Importer) ensure(ctx context.Context, d digest.Digest, size int64, rep *Report) error {
	if got, err := im.store.Stat(ctx, d); err == nil && got == size {
		return nil
	}
	switch src := im.src.(type) {
	case *DirSource:
		if fi, ok := im.store.(blobstore.FileImporter); ok {
			err := fi.ImportFile(ctx, d, src.BlobPath(d))
			if err == nil {
				rep.BlobsHardLinked.Add(1)
				rep.Bytes.Add(size)
				return nil
			}
			if !errors.Is(err, blobstore.ErrCannotLink) {
				return err
			}
			rep.cannotLink.Store(err.Error())
		}
	case *S3Source:
		if oc, ok := im.store.(blobstore.ObjectCopier); ok {
			err := oc.CopyObject(ctx, d, src.Bucket(), src.BlobKey(d), size)
			if err == nil {
				rep.BlobsServerCopied.Add(1)
				rep.Bytes.Add(size)
				return nil
			}
			if !errors.Is(err, blobstore.ErrTooLargeToCopy) {
				return err
			}
		}
	}
	return im.stream(ctx, d, size, rep)
}

// stream copies blob d through this process into the store, as an upload
// would, checking the digest on the way (it costs nothing more here).
func (im *Importer) stream(ctx context.Context, d digest.Digest, size int64, rep *Report) error {
	body, err := im.src.OpenBlob(ctx, d)
	if err != nil {
		return err
	}
	defer body.Close()
	id := uploadID()
	v := d.Verifier()
	state, n, err := im.store.AppendChunk(ctx, id, nil, io.TeeReader(body, v))
	defer im.store.DeleteUpload(context.WithoutCancel(ctx), id, state)
	if err != nil {
		return fmt.Errorf("copy blob %s: %w", d, err)
	}
	rep.BytesVerified.Add(n)
	if n != size || !v.Verified() {
		return fmt.Errorf("%w: %s (%d bytes read)", errDigestMismatch, d, n)
	}
	if err := im.store.Publish(ctx, id, state, d); err != nil {
		return err
	}
	rep.BlobsStreamed.Add(1)
	rep.Bytes.Add(size)
	return nil
}

var uploadSeq atomic.Int64

// uploadID names the store upload a streamed blob goes through.
func uploadID() string {
	return fmt.Sprintf("import-%d-%d", time.Now().UnixNano(), uploadSeq.Add(1))
}

func sortedKeys[K ~string, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}
