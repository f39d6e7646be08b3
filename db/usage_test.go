package db_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// usageBlob records blob name of size bytes in repo, as an upload would.
func usageBlob(t testing.TB, d *db.DB, repo, name string, size int64) db.BlobRef {
	t.Helper()
	dgst := dgstOf("blob " + name)
	err := d.BlobCommit(context.Background(), db.BlobCommit{Repository: repo, Digest: dgst, Size: size},
		func(context.Context) error { return nil }, db.Actor{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return db.BlobRef{Digest: dgst, Size: size}
}

// usageManifest is a manifest push of repo referencing blobs (and
// children, subject), with a payload of exactly size bytes.
func usageManifest(repo, name string, size int, blobs []db.BlobRef, tags ...string) db.ManifestPut {
	payload := fmt.Appendf(nil, `{"schemaVersion":2,"name":%q}`, name)
	for len(payload) < size {
		payload = append(payload, ' ')
	}
	return db.ManifestPut{Repository: repo, Digest: dgstOf("manifest " + name), MediaType: "application/vnd.oci.image.manifest.v1+json",
		Payload: payload, Blobs: blobs, Tags: tags}
}

func store(t testing.TB, d *db.DB, p db.ManifestPut) {
	t.Helper()
	if _, err := d.ManifestStore(context.Background(), p, db.Actor{Name: "test"}); err != nil {
		t.Fatal(err)
	}
}

// noDrift fails the test if the bookkeeping differs from a count from
// scratch.
func noDrift(t testing.TB, d *db.DB) {
	t.Helper()
	drift, _, _, err := d.UsageCheck(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i, dr := range drift {
		if i < 20 {
			t.Errorf("drift: %s: recorded %s, counted %s", dr.What, dr.Recorded, dr.Counted)
		}
	}
}

func wantUsage(t testing.TB, d *db.DB, prefix string, blobs, manifests int64, n int64) {
	t.Helper()
	rep, err := d.UsageOf(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	got := rep.Namespace
	if got.BlobBytes != blobs || got.ManifestBytes != manifests || got.Manifests != n {
		t.Errorf("usage of %q: %d blob bytes, %d manifest bytes, %d manifests; want %d, %d, %d",
			prefix, got.BlobBytes, got.ManifestBytes, got.Manifests, blobs, manifests, n)
	}
}

// Every change of a manifest's liveness keeps usage exact: pushes, a
// re-push, an index and its children, a referrer, deletes, the revival of
// a tombstone, retention, garbage collection's delete of an untagged
// manifest and its purge; a blob shared by manifests, repositories and
// namespaces counts once in each.
func TestUsageFollowsLiveness(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d := evOpen(t, url, db.Options{GC: db.GCPolicy{CollectUntagged: true}})

	shared := usageBlob(t, d, "team/app", "shared", 1000)
	c1 := usageBlob(t, d, "team/app", "c1", 10)
	c2 := usageBlob(t, d, "team/app", "c2", 20)
	a := usageManifest("team/app", "a", 100, []db.BlobRef{c1, shared}, "v1")
	b := usageManifest("team/app", "b", 200, []db.BlobRef{c2, shared}, "v2")
	store(t, d, a)
	store(t, d, b)
	wantUsage(t, d, "team/app", 1030, 300, 2)
	store(t, d, a) // a re-push adds nothing
	a.Tags = []string{"v1", "again"}
	store(t, d, a) // nor does a new tag
	wantUsage(t, d, "team/app", 1030, 300, 2)

	// The shared blob in two more repositories of the namespace, and in
	// teamx, which "team" does not cover.
	for _, repo := range []string{"team/x/y", "team", "teamx/z"} {
		if _, err := d.BlobMount(ctx, "team/app", repo, shared.Digest, db.Actor{Name: "test"}); err != nil {
			t.Fatal(err)
		}
		store(t, d, usageManifest(repo, "s-"+repo, 50, []db.BlobRef{shared}, "v1"))
	}
	wantUsage(t, d, "team", 1030, 400, 4)
	wantUsage(t, d, "team/x", 1000, 50, 1)
	wantUsage(t, d, "teamx", 1000, 50, 1)
	wantUsage(t, d, "", 1030, 450, 5)
	noDrift(t, d)

	// An index over a and b, and a referrer of a with a blob of its own.
	idx := usageManifest("team/app", "idx", 300, nil, "multi")
	idx.MediaType, idx.Children = "application/vnd.oci.image.index.v1+json", []string{a.Digest, b.Digest}
	store(t, d, idx)
	sig := usageBlob(t, d, "team/app", "sig", 5)
	ref := usageManifest("team/app", "ref", 60, []db.BlobRef{sig})
	ref.SubjectDigest = a.Digest
	store(t, d, ref)
	wantUsage(t, d, "team/app", 1035, 660, 4)
	noDrift(t, d)

	// Delete b (the index lists it: refused, nothing changes), the index,
	// then b: the shared blob stays (a references it), c2 goes.
	if err := d.ManifestDelete(ctx, "team/app", b.Digest, db.Actor{Name: "test"}); err == nil {
		t.Fatal("deleted a manifest an index lists")
	}
	for _, m := range []db.ManifestPut{idx, b} {
		if err := d.ManifestDelete(ctx, "team/app", m.Digest, db.Actor{Name: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	wantUsage(t, d, "team/app", 1015, 160, 2)
	noDrift(t, d)
	// Reviving b's tombstone by pushing it again counts it again.
	store(t, d, b)
	wantUsage(t, d, "team/app", 1035, 360, 3)
	if err := d.ManifestDelete(ctx, "team/app", b.Digest, db.Actor{Name: "test"}); err != nil {
		t.Fatal(err)
	}

	// Retention removes team/x/y's only tag and, untagged, its manifest.
	p := policy("all-y", "team/x/y")
	p.KeepTags = []string{"^keep$"}
	zero := time.Duration(0)
	p.DeleteUntaggedAfter = &zero
	if err := d.RetentionAdd(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RetentionRun(ctx, "all-y"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RetentionRun(ctx, "all-y"); err != nil {
		t.Fatal(err)
	}
	wantUsage(t, d, "team/x", 0, 0, 0)
	wantUsage(t, d, "team", 1015, 210, 3)
	noDrift(t, d)

	// Garbage collection deletes the referrer once untagged... it is
	// attached to a live subject, so untag a's tags and delete a: the
	// referrer then goes as untagged, and the purge of the tombstones
	// changes nothing more.
	if err := d.ManifestDelete(ctx, "team/app", a.Digest, db.Actor{Name: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := evGCPass(ctx, d); err != nil {
		t.Fatal(err)
	}
	wantUsage(t, d, "team/app", 0, 0, 0)
	wantUsage(t, d, "team", 1000, 50, 1)
	noDrift(t, d)
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM manifests WHERE deleted_at IS NULL AND repository_id = (SELECT id FROM repositories WHERE name = 'team/app')`); n != 0 {
		t.Errorf("%d live manifests left in team/app; the test meant garbage collection to delete the referrer", n)
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM repository_blob_refs WHERE refs <= 0`); n != 0 {
		t.Errorf("%d reference rows without references", n)
	}

	// The check does see drift.
	dbtest.Exec(t, url, `UPDATE repository_usage SET blob_bytes = blob_bytes + 1 WHERE repository_id = (SELECT id FROM repositories WHERE name = 'team')`)
	dbtest.Exec(t, url, `DELETE FROM repository_blob_refs WHERE repository_id = (SELECT id FROM repositories WHERE name = 'teamx/z')`)
	drift, repos, _, err := d.UsageCheck(ctx)
	if err != nil || len(drift) != 2 || repos != 4 {
		t.Errorf("check after corrupting two repositories: %d repositories, %+v, %v", repos, drift, err)
	}
}

// A quota counts what its namespace held when it was set, refuses a push
// that would take it over the limit with the limit, the usage and the size
// of the push, never refuses a push that adds nothing, and warns once when
// usage crosses the threshold.
func TestQuotaEnforcedAtManifestCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)
	l1 := usageBlob(t, d, "team/app", "l1", 1000)
	a := usageManifest("team/app", "a", 100, []db.BlobRef{l1}, "v1")
	store(t, d, a)
	created, err := d.QuotaSet(ctx, "team", 2500, 80)
	if err != nil || !created {
		t.Fatalf("set quota: %v, %v", created, err)
	}
	qs, err := d.QuotaList(ctx)
	if err != nil || len(qs) != 1 || qs[0].Total() != 1100 || qs[0].Warned() {
		t.Fatalf("quotas %+v, %v", qs, err)
	}
	// Within the limit, above the warning (2100 ≥ 2000).
	l2 := usageBlob(t, d, "team/other", "l2", 900)
	store(t, d, usageManifest("team/other", "b", 100, []db.BlobRef{l2}, "v1"))
	qs, _ = d.QuotaList(ctx)
	if qs[0].Total() != 2100 || !qs[0].Warned() {
		t.Errorf("after the second push: %+v", qs[0])
	}
	// Over: 2100 + 500 + 100 > 2500.
	l3 := usageBlob(t, d, "team/other", "l3", 500)
	_, err = d.ManifestStore(ctx, usageManifest("team/other", "c", 100, []db.BlobRef{l3}, "v2"), db.Actor{Name: "test"})
	var qe *db.QuotaExceededError
	if !errors.As(err, &qe) || qe.Prefix != "team" || qe.Limit != 2500 || qe.Usage != 2100 || qe.Push != 600 {
		t.Fatalf("push over the quota: %v (%+v)", err, qe)
	}
	t.Log(err)
	// A push of blobs the namespace already holds costs only its manifest.
	if _, err := d.BlobMount(ctx, "team/app", "team/other", l1.Digest, db.Actor{Name: "test"}); err != nil {
		t.Fatal(err)
	}
	store(t, d, usageManifest("team/other", "d", 100, []db.BlobRef{l1}, "v3"))
	// Re-pushing a live manifest, and tagging it, add nothing: never refused,
	// even over the limit.
	if _, err := d.QuotaSet(ctx, "team", 10, 0); err != nil {
		t.Fatal(err)
	}
	a.Tags = []string{"v1", "v9"}
	store(t, d, a)
	// Outside the namespace, no quota applies.
	store(t, d, usageManifest("teamx", "e", 100, []db.BlobRef{usageBlob(t, d, "teamx", "l4", 5000)}, "v1"))
	qs, _ = d.QuotaList(ctx)
	if qs[0].Total() != 2200 || !qs[0].Over() {
		t.Errorf("quota after the pushes: %+v", qs[0])
	}
	noDrift(t, d)
	if err := d.QuotaDelete(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := d.QuotaDelete(ctx, "team"); !errors.Is(err, db.ErrQuotaUnknown) {
		t.Errorf("delete of a missing quota: %v", err)
	}
	store(t, d, usageManifest("team/other", "c", 100, []db.BlobRef{l3}, "v2"))
}

// 16 pushes at once, through two handles on one database, into a
// namespace with room for exactly 4 of them (distinct blobs each): exactly
// 4 succeed, usage stays within the limit, and no fifth would fit.
func TestQuotaRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	h := [2]*db.DB{evOpen(t, url, db.Options{}), evOpen(t, url, db.Options{})}
	const blobSize, manifestSize, pushes = 1000, 100, 16
	// Already there: one image of 1100 bytes.
	base := usageBlob(t, h[0], "ns/base", "base", blobSize)
	store(t, h[0], usageManifest("ns/base", "base", manifestSize, []db.BlobRef{base}, "v1"))
	limit := int64(5*(blobSize+manifestSize) + 50)
	if _, err := h[1].QuotaSet(ctx, "ns", limit, 0); err != nil {
		t.Fatal(err)
	}
	puts := make([]db.ManifestPut, pushes)
	for i := range puts {
		repo := fmt.Sprintf("ns/r%d", i%5)
		puts[i] = usageManifest(repo, fmt.Sprint("p", i), manifestSize,
			[]db.BlobRef{usageBlob(t, h[i%2], repo, fmt.Sprint("p", i), blobSize)}, fmt.Sprint("t", i))
	}
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, p := range puts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := h[i%2].ManifestStore(ctx, p, db.Actor{Name: "test"})
			var qe *db.QuotaExceededError
			switch {
			case err == nil:
				ok.Add(1)
			case errors.As(err, &qe):
				refused.Add(1)
				if qe.Usage+qe.Push <= qe.Limit {
					t.Errorf("refused although it fits: %v", err)
				}
			default:
				t.Errorf("push %d: %v", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if ok.Load() != 4 || refused.Load() != pushes-4 {
		t.Errorf("%d pushes succeeded, %d refused; want 4 and %d", ok.Load(), refused.Load(), pushes-4)
	}
	qs, err := h[0].QuotaList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u := qs[0].Total(); u > limit || u+blobSize+manifestSize <= limit {
		t.Errorf("usage %d with limit %d: over it, or room for another push", u, limit)
	}
	wantUsage(t, h[1], "ns", 5*blobSize, 5*manifestSize, 5)
	noDrift(t, h[0])
}

// Pushes, deletes, retention and garbage collection, through two handles,
// while quotas are created and deleted on the namespace: afterwards, the
// bookkeeping equals a count from scratch. The connections raise
// deadlock_timeout far above any legitimate wait (as TestEventsLockOrder
// does), so that a wait cycle, even one PostgreSQL would resolve by
// reordering a lock queue, stalls a change past its statement deadline
// and fails the test instead of being retried.
func TestUsageExactUnderChurn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base := dbtest.NewURL(t)
	url := dbtest.StallDeadlocks(t, base)
	policy := db.GCPolicy{CollectUntagged: true}
	h := [2]*db.DB{evOpen(t, url, db.Options{GC: policy}), evOpen(t, url, db.Options{GC: policy})}
	const repos, blobs = 4, 12
	refs := make([][]db.BlobRef, repos)
	for r := range repos {
		repo := fmt.Sprintf("churn/r%d", r)
		for b := range blobs { // the same blobs in every repository
			refs[r] = append(refs[r], usageBlob(t, h[r%2], repo, fmt.Sprint("b", b), int64(100+b)))
		}
	}
	p := policy2("churn", "churn/**")
	if err := h[0].RetentionAdd(ctx, p); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	var pushes, deletes, refused, quotaSets atomic.Int64
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			d := h[w%2]
			for i := 0; time.Now().Before(deadline); i++ {
				r := rng.IntN(repos)
				repo := fmt.Sprintf("churn/r%d", r)
				name := fmt.Sprintf("%s-w%d-%d", repo, w, rng.IntN(6))
				m := usageManifest(repo, name, 50+len(name)%7,
					[]db.BlobRef{refs[r][rng.IntN(blobs)], refs[r][rng.IntN(blobs)]}, fmt.Sprint("t", rng.IntN(5)))
				if rng.IntN(3) == 0 {
					err := d.ManifestDelete(ctx, repo, m.Digest, db.Actor{Name: "test"})
					if err == nil {
						deletes.Add(1)
					} else if !errors.Is(err, db.ErrManifestUnknown) {
						t.Error(err)
						return
					}
					continue
				}
				_, err := d.ManifestStore(ctx, m, db.Actor{Name: "test"})
				var qe *db.QuotaExceededError
				var missing *db.MissingReferenceError
				if errors.As(err, &missing) {
					// Garbage collection took the blob (no manifest
					// referenced it): upload it again, as a client would.
					for _, b := range m.Blobs {
						if err := d.BlobCommit(ctx, db.BlobCommit{Repository: repo, Digest: b.Digest, Size: b.Size},
							func(context.Context) error { return nil }, db.Actor{Name: "test"}); err != nil {
							t.Error(err)
							return
						}
					}
					continue
				}
				if errors.As(err, &qe) {
					refused.Add(1)
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				pushes.Add(1)
			}
		}()
	}
	wg.Add(2)
	go func() { // retention and garbage collection
		defer wg.Done()
		for time.Now().Before(deadline) {
			if _, err := h[0].RetentionRun(ctx, "churn"); err != nil && !errors.Is(err, db.ErrRetentionBusy) {
				t.Error(err)
				return
			}
			if err := evGCPass(ctx, h[1]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() { // quotas come and go
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			prefix := []string{"churn", "churn/r1"}[i%2]
			if _, err := h[i%2].QuotaSet(ctx, prefix, int64(3000+i%3*1000), 50); err != nil {
				t.Error(err)
				return
			}
			quotaSets.Add(1)
			time.Sleep(50 * time.Millisecond)
			if i%3 == 2 {
				if err := h[0].QuotaDelete(ctx, prefix); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	wg.Wait()
	t.Logf("%d pushes, %d refused by a quota, %d deletes, %d quotas set", pushes.Load(), refused.Load(), deletes.Load(), quotaSets.Load())
	noDrift(t, h[0])
}

// policy2 is a retention policy that keeps the two most recent tags and
// deletes untagged manifests at once.
func policy2(name, glob string) db.RetentionPolicy {
	p := policy(name, glob)
	p.KeepLast = 2
	zero := time.Duration(0)
	p.DeleteUntaggedAfter = &zero
	return p
}

// Migration 0012 computes the usage of a registry upgraded in place: with
// its tables dropped (migrated down) and created again (up), the usage of
// existing data is what the transactions had kept.
func TestUsageMigrationBackfill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d := evOpen(t, url, db.Options{})
	shared := usageBlob(t, d, "team/a", "shared", 1000)
	if _, err := d.BlobMount(ctx, "team/a", "team/b", shared.Digest, db.Actor{Name: "test"}); err != nil {
		t.Fatal(err)
	}
	own := usageBlob(t, d, "team/b", "own", 10)
	store(t, d, usageManifest("team/a", "a1", 100, []db.BlobRef{shared}, "v1"))
	store(t, d, usageManifest("team/b", "b1", 100, []db.BlobRef{shared, own}, "v1"))
	gone := usageManifest("team/b", "b2", 100, []db.BlobRef{own})
	store(t, d, gone)
	if err := d.ManifestDelete(ctx, "team/b", gone.Digest, db.Actor{Name: "test"}); err != nil {
		t.Fatal(err)
	}
	before, err := d.UsageOf(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	mg, err := db.NewMigrator(url)
	if err != nil {
		t.Fatal(err)
	}
	defer mg.Close()
	if err := mg.Down(); err != nil {
		t.Fatal(err)
	}
	if err := mg.Up(); err != nil {
		t.Fatal(err)
	}
	after, err := d.UsageOf(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after) != fmt.Sprint(before) || after.Namespace.Total() != 1210 {
		t.Errorf("after the backfill %+v, before %+v", after, before)
	}
	noDrift(t, d)
}
