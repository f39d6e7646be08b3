package importer_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/importer"
	"github.com/berth-registry/berth/internal/regtree"
)

type fixture struct {
	tree  *regtree.Tree
	d     *db.DB
	store *blobstore.FS
	im    *importer.Importer
}

func setup(t *testing.T, cfg importer.Config) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{tree: &regtree.Tree{Root: filepath.Join(dir, "registry")}, d: dbtest.New(t)}
	var err error
	if f.store, err = blobstore.NewFS(filepath.Join(dir, "berth")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(f.tree.Root, "docker/registry/v2/repositories"), 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := importer.NewDirSource(f.tree.Root)
	if err != nil {
		t.Fatal(err)
	}
	f.im = importer.New(cfg, src, f.d, f.store)
	return f
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// skipReasons maps "repository what" to the reason of each skip.
func skipReasons(rep *importer.Report) map[string]string {
	m := map[string]string{}
	for _, s := range rep.Skipped {
		m[s.Repository+" "+s.What] = s.Reason
	}
	return m
}

// A tree with everything a years-old registry holds that cannot be
// imported, next to what can: each skip says why, everything else
// arrives, and a second pass finds nothing to do.
func TestImportSkips(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := setup(t, importer.Config{})
	tr := f.tree
	desc := must[regtree.Descriptor](t)

	// Good: an image whose tag moved once, and an index of two images.
	old := desc(tr.Image("good/app", []byte(`{"v":0}`), []byte("layer-0")))
	v1 := desc(tr.Image("good/app", []byte(`{"v":1}`), []byte("layer-1")))
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	check(t, tr.Tag("good/app", "v1", old.Digest, t0))
	check(t, tr.Tag("good/app", "v1", v1.Digest, t0.Add(24*time.Hour)))
	amd := desc(tr.Image("good/app", []byte(`{"arch":"amd64"}`), []byte("amd")))
	arm := desc(tr.Image("good/app", []byte(`{"arch":"arm64"}`), []byte("arm")))
	multi := desc(tr.Index("good/app", amd, arm))
	check(t, tr.Tag("good/app", "multi", multi.Digest, time.Time{}))

	// Schema 1.
	s1 := must[digest.Digest](t)(tr.Schema1("old/s1", "latest"))
	check(t, tr.Tag("old/s1", "latest", s1, time.Time{}))
	// A revision link whose data is gone, and a tag pointing at nothing.
	ghost := regtree.FakeDigest("ghost")
	check(t, tr.LinkRevision("bad/links", ghost))
	check(t, tr.Tag("bad/links", "ghost", regtree.FakeDigest("no revision"), time.Time{}))
	check(t, tr.LinkLayer("bad/links", regtree.FakeDigest("layer")))
	// A manifest whose layer's data is gone.
	lost := desc(tr.Image("bad/blobs", []byte(`{"v":"lost"}`), []byte("lost layer")))
	lostLayer := digest.FromBytes([]byte("lost layer"))
	check(t, os.RemoveAll(filepath.Join(tr.Root, "docker/registry/v2/blobs/sha256", lostLayer.Encoded()[:2], lostLayer.Encoded())))
	// A layer whose data does not hash to its name.
	liar := digest.FromBytes([]byte("what the manifest says"))
	check(t, tr.BlobAs(liar, []byte("something else!!!!!!!")))
	check(t, tr.LinkLayer("bad/blobs", liar))
	// An index listing a manifest the repository does not have.
	orphan := desc(tr.Index("bad/index", regtree.Descriptor{MediaType: regtree.MediaTypeManifest, Digest: regtree.FakeDigest("child"), Size: 10}))

	rep, err := f.im.Pass(ctx, 1)
	check(t, err)
	var out strings.Builder
	rep.Print(&out)
	rep.PrintSkipped(&out)
	t.Logf("the report:\n%s", out.String())
	reasons := skipReasons(rep)
	want := map[string]string{
		"old/s1 " + s1.String():                             "Docker schema 1",
		"bad/links " + ghost.String():                       "dangling revision link",
		"bad/links ghost":                                   "dangling tag link",
		"bad/links " + regtree.FakeDigest("layer").String(): "dangling layer link",
		"bad/blobs " + lost.Digest.String():                 "missing blob " + lostLayer.String(),
		"bad/blobs " + liar.String():                        "does not match its digest",
		"bad/index " + orphan.Digest.String():               "is not in the repository",
	}
	for k, w := range want {
		if !strings.Contains(reasons[k], w) {
			t.Errorf("skip of %s: %q, want it to say %q", k, reasons[k], w)
		}
	}
	if len(reasons) != len(want) {
		t.Errorf("skipped %d things, want %d: %v", len(reasons), len(want), reasons)
	}
	if got := rep.Manifests.Load(); got != 5 {
		t.Errorf("stored %d manifests, want 5 (two of v1, the index and its two children)", got)
	}
	for tag, d := range map[string]digest.Digest{"v1": v1.Digest, "multi": multi.Digest} {
		m, err := f.d.ManifestByTag(ctx, "good/app", tag, false)
		if err != nil || m.Digest != d.String() {
			t.Errorf("good/app:%s is %s, %v; want %s", tag, m.Digest, err, d)
		}
	}
	if _, err := f.d.ManifestByDigest(ctx, "good/app", old.Digest.String(), false); err != nil {
		t.Errorf("the untagged revision was not imported: %v", err)
	}
	// The history: the source's two digests, dated from the index links,
	// then the import's creation of the tag.
	hist, _, err := f.d.TagHistory(ctx, "good/app", "v1", 0, 10)
	check(t, err)
	slices.Reverse(hist)
	if len(hist) != 3 || hist[0].Digest != old.Digest.String() || !hist[0].At.Equal(t0) ||
		hist[1].Digest != v1.Digest.String() || hist[1].OldDigest != old.Digest.String() || !hist[1].At.Equal(t0.Add(24*time.Hour)) ||
		hist[2].Action != db.ActionTagCreate || hist[2].Digest != v1.Digest.String() {
		t.Errorf("history of v1: %+v", hist)
	}

	rep, err = f.im.Pass(ctx, 2)
	check(t, err)
	if rep.Changes() != 0 {
		t.Errorf("second pass changed %d things", rep.Changes())
	}
	if len(skipReasons(rep)) != len(want) {
		t.Errorf("second pass skipped %v", skipReasons(rep))
	}
}

// Catch-up passes follow the source: new tags and manifests arrive, moved
// tags move, removed tags go; but a tag someone changed in Berth since the
// import is Berth's, and stays.
func TestImportCatchUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := setup(t, importer.Config{TrustDigests: true})
	tr := f.tree
	desc := must[regtree.Descriptor](t)
	a := desc(tr.Image("r", []byte(`{"a":1}`), []byte("a")))
	b := desc(tr.Image("r", []byte(`{"b":1}`), []byte("b")))
	for _, tag := range []string{"moves", "goes", "stays", "mine"} {
		check(t, tr.Tag("r", tag, a.Digest, time.Time{}))
	}
	del := desc(tr.Image("r", []byte(`{"d":1}`), []byte("d")))
	check(t, tr.Tag("r", "deleted", del.Digest, time.Time{}))
	_, err := f.im.Pass(ctx, 1)
	check(t, err)
	// In Berth, someone deletes a manifest: it stays deleted.
	check(t, f.d.ManifestDelete(ctx, "r", del.Digest.String(), db.Actor{Name: "alice", MayDelete: true}))
	// In Berth, someone points "mine" elsewhere.
	_, err = f.d.TagRestore(ctx, "r", "mine", b.Digest.String(), db.TagCondition{}, db.Actor{Name: "alice", MayDelete: true})
	check(t, err)

	c := desc(tr.Image("r", []byte(`{"c":1}`), []byte("c")))
	check(t, tr.Tag("r", "moves", c.Digest, time.Time{}))
	check(t, tr.Tag("r", "mine", c.Digest, time.Time{}))
	check(t, tr.DeleteTag("r", "goes"))
	check(t, tr.Tag("r", "new", b.Digest, time.Time{}))
	rep, err := f.im.Pass(ctx, 2)
	check(t, err)
	tags, _, err := f.d.TagList(ctx, "r", "", 100)
	check(t, err)
	if want := []string{"mine", "moves", "new", "stays"}; !slices.Equal(tags, want) {
		t.Errorf("tags %v, want %v", tags, want)
	}
	for tag, d := range map[string]digest.Digest{"moves": c.Digest, "mine": b.Digest, "new": b.Digest, "stays": a.Digest} {
		m, err := f.d.ManifestByTag(ctx, "r", tag, false)
		if err != nil || m.Digest != d.String() {
			t.Errorf("r:%s is %s (%v), want %s", tag, m.Digest, err, d)
		}
	}
	if !strings.Contains(skipReasons(rep)["r mine"], "changed in Berth") {
		t.Errorf("the skip of mine: %v", skipReasons(rep))
	}
	if !strings.Contains(skipReasons(rep)["r "+del.Digest.String()], "deleted in Berth") {
		t.Errorf("the skip of the manifest deleted in Berth: %v", skipReasons(rep))
	}
	if _, err := f.d.ManifestByDigest(ctx, "r", del.Digest.String(), false); err == nil {
		t.Error("the manifest deleted in Berth was imported again")
	}
	rep, err = f.im.Pass(ctx, 3)
	check(t, err)
	if rep.Changes() != 0 {
		t.Errorf("third pass changed %d things", rep.Changes())
	}
}

// Two imports of one tree at once, each with its own database handle (as
// two processes would be) and four workers: every manifest, tag and blob
// arrives once, each tag's history is seeded once and ends where the tag
// is, and a later pass finds nothing to do.
func TestImportTwoAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	root := filepath.Join(dir, "registry")
	const repos, tags = 12, 6
	check(t, regtree.Generate(root, repos, tags, 4<<10, 512))
	url := dbtest.NewURL(t)
	store, err := blobstore.NewFS(filepath.Join(dir, "berth"))
	check(t, err)
	src, err := importer.NewDirSource(root)
	check(t, err)
	open := func() *db.DB {
		d, err := db.Open(ctx, url, db.Options{})
		check(t, err)
		t.Cleanup(d.Close)
		return d
	}
	var reps [2]*importer.Report
	var errs [2]error
	done := make(chan int)
	for i := range 2 {
		go func() {
			im := importer.New(importer.Config{Workers: 4}, src, open(), store)
			reps[i], errs[i] = im.Pass(ctx, 1)
			done <- i
		}()
	}
	<-done
	<-done
	for i := range 2 {
		check(t, errs[i])
		if len(reps[i].Skipped) > 0 {
			t.Errorf("import %d skipped %v", i, reps[i].Skipped)
		}
	}
	d := open()
	names, _, err := d.RepositoryList(ctx, "", 1000)
	check(t, err)
	if len(names) != repos {
		t.Fatalf("%d repositories, want %d", len(names), repos)
	}
	for _, repo := range names {
		list, _, err := d.TagList(ctx, repo, "", 1000)
		check(t, err)
		if len(list) != tags {
			t.Errorf("%s: %d tags, want %d", repo, len(list), tags)
		}
		for _, tag := range list {
			m, err := d.ManifestByTag(ctx, repo, tag, false)
			check(t, err)
			hist, _, err := d.TagHistory(ctx, repo, tag, 0, 100)
			check(t, err)
			// Newest first: the import's creation, then the seeded rows
			// (one per digest of the tag's index: two for every tenth).
			wantSeeded := 1
			if strings.HasSuffix(tag, ".0") {
				wantSeeded = 2
			}
			if len(hist) != wantSeeded+1 || hist[0].Digest != m.Digest || hist[1].Digest != m.Digest {
				t.Errorf("%s:%s at %s: history %+v", repo, tag, m.Digest, hist)
			}
		}
	}
	rep, err := importer.New(importer.Config{}, src, d, store).Pass(ctx, 2)
	check(t, err)
	if rep.Changes() != 0 {
		t.Errorf("a later pass changed %d things", rep.Changes())
	}
}

// Imports race garbage collection with no review delay, each on its own
// database handle: collectors claim, review and delete blobs (bytes, then
// rows) while importers link the same blobs again and again, placing the
// bytes by hard link under the row lock. However they interleave, no blob
// row that readers see ('ready') is ever left without its bytes.
func TestImportRacesCollection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	url := dbtest.NewURL(t)
	store, err := blobstore.NewFS(filepath.Join(dir, "berth"))
	check(t, err)
	open := func() *db.DB {
		d, err := db.Open(ctx, url, db.Options{GC: db.GCPolicy{ReviewDelay: 0, TombstoneRetention: time.Hour}})
		check(t, err)
		t.Cleanup(d.Close)
		return d
	}
	const nblobs = 24
	var refs []db.BlobRef
	paths := map[string]string{}
	for i := range nblobs {
		b := []byte(strings.Repeat("blob ", i+1))
		d := digest.FromBytes(b)
		p := filepath.Join(dir, d.Encoded())
		check(t, os.WriteFile(p, b, 0o444))
		refs = append(refs, db.BlobRef{Digest: d.String(), Size: int64(len(b))})
		paths[d.String()] = p
	}
	var placed atomic.Int64
	ensure := func(ctx context.Context, b db.BlobRef) error {
		placed.Add(1)
		return store.ImportFile(ctx, digest.Digest(b.Digest), paths[b.Digest])
	}
	stop := make(chan struct{})
	var collected atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := open()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cands, err := d.GCClaim(ctx, 50, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				if len(cands) == 0 {
					time.Sleep(time.Millisecond) // nothing due: do not spin on the database
				}
				for _, c := range cands {
					if c.Kind != db.CandidateBlob {
						continue
					}
					rev, err := d.GCReviewBlob(ctx, c, false)
					if err != nil {
						t.Error(err)
						return
					}
					if !rev.Collect {
						continue
					}
					deleted, _, err := d.GCDeleteBlob(ctx, c, func(ctx context.Context) error {
						return store.Delete(ctx, digest.Digest(c.Key))
					})
					if err != nil {
						t.Error(err)
						return
					}
					if deleted {
						collected.Add(1)
					}
				}
			}
		}()
	}
	var imports sync.WaitGroup
	for g := range 4 {
		imports.Add(1)
		go func() {
			defer imports.Done()
			d := open()
			for round := range 40 {
				batch := refs[(g*5+round)%nblobs:]
				batch = batch[:min(len(batch), 10)]
				if err := d.BlobImport(ctx, "race/"+string(rune('a'+g)), batch, ensure); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	imports.Wait()
	close(stop)
	wg.Wait()
	d := open()
	digests := make([]string, len(refs))
	for i, r := range refs {
		digests[i] = r.Digest
	}
	ready, err := d.BlobsReady(ctx, digests)
	check(t, err)
	for dg := range ready {
		if _, err := store.Stat(ctx, digest.Digest(dg)); err != nil {
			t.Errorf("blob %s is ready without its bytes: %v", dg, err)
		}
	}
	t.Logf("%d placements, %d blobs collected meanwhile, %d ready at the end", placed.Load(), collected.Load(), len(ready))
	if collected.Load() == 0 {
		t.Log("no blob was collected during the imports: the race was not exercised this time")
	}
}

// A source on another filesystem cannot be hard-linked: its blobs are
// copied (streamed and hashed), and the report says why.
func TestImportCrossDevice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	other, err := os.MkdirTemp("/dev/shm", "berth-import-")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	dir := t.TempDir()
	var a, b syscall.Stat_t
	if syscall.Stat(other, &a) != nil || syscall.Stat(dir, &b) != nil || a.Dev == b.Dev {
		t.Skip("/dev/shm is on the same filesystem as the temporary directory")
	}
	tr := &regtree.Tree{Root: other}
	img, err := tr.Image("x/y", []byte(`{"v":1}`), []byte("a layer"))
	check(t, err)
	check(t, tr.Tag("x/y", "v1", img.Digest, time.Time{}))
	store, err := blobstore.NewFS(dir)
	check(t, err)
	src, err := importer.NewDirSource(other)
	check(t, err)
	d := dbtest.New(t)
	rep, err := importer.New(importer.Config{}, src, d, store).Pass(ctx, 1)
	check(t, err)
	if rep.BlobsStreamed.Load() != 2 || rep.BlobsHardLinked.Load() != 0 || !strings.Contains(rep.CannotLink(), "cross-device") {
		t.Errorf("streamed %d, hard-linked %d, why: %q", rep.BlobsStreamed.Load(), rep.BlobsHardLinked.Load(), rep.CannotLink())
	}
	if m, err := d.ManifestByTag(ctx, "x/y", "v1", false); err != nil || m.Digest != img.Digest.String() {
		t.Errorf("x/y:v1 is %s, %v", m.Digest, err)
	}
}
