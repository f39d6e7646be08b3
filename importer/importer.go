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

	// verified caches, across repositories and passes, the blobs whose
	// bytes were hashed and placed (true), or found bad (false).
	verified sync.Map // digest.Digest → error (nil: good)
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

// repository imports one repository: what Berth does not have yet.
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
	// The tags, as they are now (current/link).
	current := map[string]digest.Digest{}
	for _, name := range sortedKeys(r.Tags) {
		t := r.Tags[name]
		if !names.ValidTag(name) {
			rep.skip(r.Name, name, "tag name is not valid in the OCI distribution spec")
			continue
		}
		if !t.HasCurrent {
			rep.skip(r.Name, name, "tag without a current link (being written, or a broken tree)")
			continue
		}
		dg, err := im.src.ReadLink(ctx, r.Name, "_manifests/tags/"+name+"/current/link")
		if errors.Is(err, ErrNotFound) {
			continue // deleted since the scan
		}
		if err != nil {
			rep.skip(r.Name, name, fmt.Sprintf("tag's current link unreadable: %v", err))
			continue
		}
		current[name] = digest.Digest(dg)
	}

	// The manifests Berth does not have: every revision, and what the tags
	// point at (a tag may point at a manifest whose revision link is gone:
	// a dangling tag, skipped below).
	revisions := map[digest.Digest]bool{}
	for _, d := range r.Revisions {
		revisions[d] = true
	}
	needed := map[digest.Digest]*srcManifest{}
	for _, d := range r.Revisions {
		switch {
		case have.Manifests[string(d)]:
		case have.Deleted[string(d)]:
			// Deleted in Berth: Berth's decision stands.
			needed[d] = &srcManifest{digest: d, skip: "deleted in Berth: left deleted (push or restore it to bring it back)"}
		default:
			needed[d] = im.readManifest(ctx, d)
		}
	}
	// Blobs: the repository's layer links and what the new manifests
	// reference, less those Berth has linked already.
	declared := map[digest.Digest]int64{} // size a manifest declares, -1: a layer link only
	for _, d := range r.Layers {
		declared[d] = -1
	}
	for _, sm := range needed {
		if sm.m == nil {
			continue
		}
		for _, b := range sm.m.Blobs {
			declared[b.Digest] = b.Size
		}
	}
	blobErr := map[digest.Digest]string{}
	var toLink []db.BlobRef
	var lookup []string
	for d := range declared {
		if !have.Blobs[string(d)] {
			lookup = append(lookup, string(d))
		}
	}
	slices.Sort(lookup)
	ready, err := im.db.BlobsReady(ctx, lookup)
	if err != nil {
		return err
	}
	for _, ds := range lookup {
		d := digest.Digest(ds)
		size, inBerth := ready[ds]
		if !inBerth {
			var err error
			size, err = im.src.BlobSize(ctx, d)
			if errors.Is(err, ErrNotFound) {
				blobErr[d] = "blob data missing from the source"
				if declared[d] < 0 {
					rep.skip(r.Name, ds, "dangling layer link: the blob's data is gone")
				}
				continue
			}
			if err != nil {
				return err
			}
			if err := im.place(ctx, d, size, rep); err != nil {
				if errors.Is(err, errDigestMismatch) {
					blobErr[d] = err.Error()
					rep.skip(r.Name, ds, err.Error())
					continue
				}
				return err
			}
		}
		if want := declared[d]; want >= 0 && want != size {
			blobErr[d] = fmt.Sprintf("blob is %d bytes, the manifest says %d", size, want)
			continue
		}
		toLink = append(toLink, db.BlobRef{Digest: ds, Size: size})
	}
	for i := 0; i < len(toLink); i += blobBatch {
		batch := toLink[i:min(i+blobBatch, len(toLink))]
		err := im.db.BlobImport(ctx, r.Name, batch, func(ctx context.Context, b db.BlobRef) error {
			// Under the row lock: make sure the bytes are (still) there.
			return im.ensure(ctx, digest.Digest(b.Digest), b.Size, rep)
		})
		if err != nil {
			return err
		}
		rep.BlobsLinked.Add(int64(len(batch)))
	}

	// Manifests, children before their index.
	stored := map[digest.Digest]bool{}
	for d := range have.Manifests {
		stored[digest.Digest(d)] = true
	}
	tagsOf := map[digest.Digest][]string{}
	for tag, d := range current {
		if _, ok := have.Tags[tag]; !ok {
			tagsOf[d] = append(tagsOf[d], tag)
		}
	}
	created := map[string]bool{}
	pending := map[digest.Digest]bool{}
	for d, sm := range needed {
		switch {
		case sm.skip != "":
			rep.skip(r.Name, string(d), sm.skip)
		case missingBlob(sm.m, blobErr) != "":
			rep.skip(r.Name, string(d), missingBlob(sm.m, blobErr))
		default:
			pending[d] = true
		}
	}
	// The history of the tags about to be created, in one transaction.
	seeds := map[string][]db.TagPast{}
	for tag, d := range current {
		if _, ok := have.Tags[tag]; ok || !(stored[d] || pending[d]) {
			continue
		}
		for _, e := range r.Tags[tag].Index {
			seeds[tag] = append(seeds[tag], db.TagPast{Digest: string(e.Digest), At: e.At})
		}
	}
	if _, err := im.db.TagHistorySeed(ctx, r.Name, seeds); err != nil {
		return err
	}
	for len(pending) > 0 {
		progress := false
		for _, d := range sortedKeys(pending) {
			sm := needed[d]
			waiting, missing := false, ""
			for _, c := range sm.m.Children {
				switch {
				case stored[c.Digest]:
				case pending[c.Digest]:
					waiting = true
				case needed[c.Digest] != nil:
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
				rep.skip(r.Name, string(d), missing)
				continue
			}
			tags := tagsOf[d]
			slices.Sort(tags)
			ok, err := im.storeManifest(ctx, r, sm, tags, db.TagCondition{IfNoneMatch: len(tags) > 0}, rep)
			if err != nil {
				return err
			}
			if ok {
				stored[d] = true
				rep.Manifests.Add(1)
				rep.TagsSet.Add(int64(len(tags)))
				for _, t := range tags {
					created[t] = true
				}
			}
		}
		if !progress {
			for _, d := range sortedKeys(pending) {
				rep.skip(r.Name, string(d), "its child manifests form a cycle")
			}
			break
		}
	}

	// Tags on manifests Berth had already, and tags that moved.
	for _, tag := range sortedKeys(current) {
		d := current[tag]
		berth, inBerth := have.Tags[tag]
		if inBerth && berth == string(d) {
			continue
		}
		if !revisions[d] && !stored[d] {
			rep.skip(r.Name, tag, "dangling tag link: it points at "+string(d)+", which is not a manifest of the repository")
			continue
		}
		if !stored[d] {
			continue // its manifest was skipped, and said why
		}
		if created[tag] {
			continue
		}
		if !inBerth {
			if err := im.setTag(ctx, r, tag, d, db.TagCondition{IfNoneMatch: true}, rep); err != nil {
				return err
			}
			continue
		}
		if have.ImportedTags[tag] != berth {
			rep.skip(r.Name, tag, "moved in the source, but changed in Berth since the import: left as Berth has it")
			continue
		}
		if err := im.setTag(ctx, r, tag, d, db.TagCondition{IfMatch: []string{berth}}, rep); err != nil {
			return err
		}
	}
	// Tags the source no longer has: removed, if the import set them and
	// nobody changed them in Berth since.
	for _, tag := range sortedKeys(have.ImportedTags) {
		if _, ok := r.Tags[tag]; ok {
			continue
		}
		_, err := im.db.TagDelete(ctx, r.Name, tag, db.TagCondition{IfMatch: []string{have.ImportedTags[tag]}}, db.ImportActor)
		var pe *db.PreconditionError
		switch {
		case err == nil:
			rep.TagsRemoved.Add(1)
		case errors.As(err, &pe), errors.Is(err, db.ErrTagUnknown):
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
	m := sm.m
	put := db.ManifestPut{
		Repository:   r.Name,
		Digest:       string(sm.digest),
		MediaType:    m.MediaType,
		ArtifactType: m.ArtifactType,
		Annotations:  m.Annotations,
		Payload:      sm.payload,
		Tags:         tags,
		TagCondition: cond,
	}
	if m.Config != nil {
		put.ConfigDigest = m.Config.Digest.String()
	}
	if m.Subject != nil {
		put.SubjectDigest = m.Subject.Digest.String()
	}
	for _, b := range m.Blobs {
		put.Blobs = append(put.Blobs, db.BlobRef{Digest: b.Digest.String(), Size: b.Size})
	}
	for _, c := range m.Children {
		put.Children = append(put.Children, c.Digest.String())
	}
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
// told not to; once per blob and run.
func (im *Importer) place(ctx context.Context, d digest.Digest, size int64, rep *Report) error {
	if v, ok := im.verified.Load(d); ok {
		if v != nil {
			return v.(error)
		}
		return nil
	}
	// A stream hashes what it copies; a hard link or a server-side copy
	// reads nothing, so the bytes are read for the hash alone.
	if !im.cfg.TrustDigests && im.fastPath() {
		if err := im.verify(ctx, d, rep); err != nil {
			if errors.Is(err, errDigestMismatch) {
				im.verified.Store(d, err)
			}
			return err
		}
	}
	if err := im.ensure(ctx, d, size, rep); err != nil {
		if errors.Is(err, errDigestMismatch) {
			im.verified.Store(d, err)
		}
		return err
	}
	im.verified.Store(d, nil)
	return nil
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
			if !errors.Is(err, blobstore.ErrCrossDevice) {
				return err
			}
			rep.crossDevice.Store(true)
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
