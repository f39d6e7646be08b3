package db_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/gc"
)

var proxyActor = db.Actor{Name: "proxy"}

func sparsePut(repo, dgst string, blobs []string, children []string, tags ...string) db.ManifestPut {
	p := db.ManifestPut{Repository: repo, Digest: dgst, MediaType: "application/vnd.oci.image.index.v1+json",
		Payload: []byte(dgst), Children: children, Tags: tags, Sparse: true}
	for _, b := range blobs {
		p.Blobs = append(p.Blobs, db.BlobRef{Digest: b, Size: 1})
	}
	return p
}

func noBytes(context.Context) error { return nil }

// A sparse index of a pull-through cache: its absent children and blobs
// become ordinary references once cached; a child then cannot be deleted
// before its index (409), the index can; garbage collection purges them
// all, absent references included. Outside a proxy's prefix a sparse
// manifest is refused.
func TestSparseManifests(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{GC: db.GCPolicy{}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	idx, a, b, layer := fmt.Sprintf("sha256:%064x", 1), fmt.Sprintf("sha256:%064x", 2), fmt.Sprintf("sha256:%064x", 3), fmt.Sprintf("sha256:%064x", 4)

	if _, err := d.ManifestStore(ctx, sparsePut("plain", idx, nil, []string{a}), proxyActor); !errors.Is(err, db.ErrNotProxied) {
		t.Fatalf("sparse outside a proxy: %v", err)
	}
	if err := d.ProxyAdd(ctx, db.Proxy{Prefix: "hub", Upstream: "http://up.example", TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := d.ProxyAdd(ctx, db.Proxy{Prefix: "hub", Upstream: "http://other.example"}); !errors.Is(err, db.ErrProxyExists) {
		t.Fatalf("second proxy on a prefix: %v", err)
	}
	// A quota over the cache: its usage, like the repository's, follows
	// the references the cached manifests gain as their blobs arrive.
	if _, err := d.QuotaSet(ctx, "hub", 1<<30, 0); err != nil {
		t.Fatal(err)
	}
	const repo = "hub/x"
	if _, err := d.ManifestStore(ctx, sparsePut(repo, idx, nil, []string{a, b}, "latest"), proxyActor); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ManifestStore(ctx, sparsePut(repo, a, []string{layer}, nil), proxyActor); err != nil {
		t.Fatal(err)
	}
	if ok, err := d.ProxyResolve(ctx, repo, a, true); err != nil || !ok {
		t.Fatalf("resolve child: %v %v", ok, err)
	}
	if absent, err := d.ManifestAbsentChildren(ctx, repo, idx); err != nil || len(absent) != 1 || absent[0] != b {
		t.Fatalf("absent children: %v %v", absent, err)
	}
	var refd *db.ReferencedError
	if err := d.ManifestDelete(ctx, repo, a, proxyActor); !errors.As(err, &refd) || refd.ReferrerOf != idx {
		t.Fatalf("delete of a cached child of a live index: %v", err)
	}
	if err := d.ProxyBlobCommit(ctx, repo, layer, 1, noBytes, proxyActor); err != nil {
		t.Fatal(err)
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM manifest_blobs mb JOIN manifests m ON m.id = mb.manifest_id WHERE m.digest = $1`, a); n != 1 {
		t.Fatalf("%d manifest_blobs rows for the cached layer, want 1", n)
	}
	// The layer (1 byte) counts now, in the repository and the quota.
	if u, quotas, err := d.UsageRepository(ctx, repo); err != nil || u.BlobBytes != 1 || len(quotas) != 1 || quotas[0].BlobBytes != 1 {
		t.Errorf("usage once the layer is cached: %+v %+v %v", u, quotas, err)
	}
	noDrift(t, d)
	if err := d.ManifestDelete(ctx, repo, idx, proxyActor); err != nil {
		t.Fatalf("delete of the sparse index: %v", err)
	}
	if err := d.ManifestDelete(ctx, repo, a, proxyActor); err != nil {
		t.Fatalf("delete of the child after its index: %v", err)
	}
	store, err := blobstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	collector := gc.New(d, store, gc.Config{Policy: db.GCPolicy{}})
	for range 3 {
		if _, err := collector.Pass(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	noDrift(t, d)
	for q, want := range map[string]int64{
		`SELECT count(*) FROM manifests`:            0,
		`SELECT count(*) FROM manifest_absent_refs`: 0,
		`SELECT count(*) FROM blobs`:                0,
	} {
		if n := dbtest.QueryInt(t, url, q); n != want {
			t.Errorf("after gc, %s: %d, want %d", q, n, want)
		}
	}
}

// Many goroutines on two handles (two replicas) claim one key: exactly one
// wins; a failure is shared until its memory ends; a lease that expires is
// taken over, once.
func TestProxyClaims(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	handles := replicaHandles(t, url, 2)
	round := 0
	race := func(key string, lease time.Duration) (winners []string) {
		round++ // claimants are new replicas in every round
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range 32 {
			wg.Go(func() {
				me := fmt.Sprintf("round%d-r%d", round, i)
				st, err := handles[i%2].ProxyClaim(ctx, key, me, lease)
				if err != nil {
					t.Error(err)
					return
				}
				if st.Won {
					mu.Lock()
					winners = append(winners, me)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return winners
	}
	w := race("b:x", time.Minute)
	if len(w) != 1 {
		t.Fatalf("%d winners, want 1", len(w))
	}
	if w2 := race("b:x", time.Minute); len(w2) != 0 {
		t.Fatalf("%d winners while the lease runs", len(w2))
	}
	// The claimant dies: its lease runs out.
	dbtest.Exec(t, url, `UPDATE proxy_claims SET lease_until = now() - interval '1 second'`)
	w3 := race("b:x", time.Minute)
	if len(w3) != 1 {
		t.Fatalf("%d took over the expired lease, want 1", len(w3))
	}
	if ok, err := handles[0].ProxyRenew(ctx, "b:x", w[0], time.Minute); err != nil || ok {
		t.Fatalf("the first claimant renewed a claim taken over: %v %v", ok, err)
	}
	if err := handles[0].ProxyFail(ctx, "b:x", w3[0], "upstream answered 503", 503, time.Minute); err != nil {
		t.Fatal(err)
	}
	var failed atomic.Int64
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			st, err := handles[i%2].ProxyClaim(ctx, "b:x", "late", time.Minute)
			if err == nil && st.Failed && st.Status == 503 {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if failed.Load() != 8 {
		t.Fatalf("%d of 8 saw the shared failure", failed.Load())
	}
	dbtest.Exec(t, url, `UPDATE proxy_claims SET lease_until = now() - interval '1 second'`) // the memory ends
	if w := race("b:x", time.Minute); len(w) != 1 {
		t.Fatalf("%d claimed after the failure's memory, want 1", len(w))
	}
}

// A manifest that names a blob as absent and the commit of that blob race
// (two replicas, many rounds): whichever commits last records the
// reference, so no manifest is left naming as absent a blob that is
// linked into its repository.
func TestProxyResolveRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	handles := replicaHandles(t, url, 2)
	if err := handles[0].ProxyAdd(ctx, db.Proxy{Prefix: "", Upstream: "http://up.example"}); err != nil {
		t.Fatal(err)
	}
	const rounds = 40
	var wg sync.WaitGroup
	for i := range rounds {
		m, l := fmt.Sprintf("sha256:%064x", 1000+i), fmt.Sprintf("sha256:%064x", 5000+i)
		repo := fmt.Sprintf("library/r%d", i%4)
		wg.Go(func() {
			if _, err := handles[0].ManifestStore(ctx, sparsePut(repo, m, []string{l}, nil), proxyActor); err != nil {
				t.Error(err)
				return
			}
			if _, err := handles[0].ProxyResolve(ctx, repo, m, true); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			if err := handles[1].ProxyBlobCommit(ctx, repo, l, 1, noBytes, proxyActor); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM manifest_absent_refs`); n != 0 {
		t.Fatalf("%d absent references left to linked blobs", n)
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM manifest_blobs`); n != rounds {
		t.Fatalf("%d manifest_blobs rows, want %d", n, rounds)
	}
}

// replicaHandles opens n handles on the database at url, as n replicas
// would have.
func replicaHandles(t *testing.T, url string, n int) []*db.DB {
	t.Helper()
	handles := make([]*db.DB, n)
	for i := range handles {
		d, err := db.Open(t.Context(), url, db.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		handles[i] = d
	}
	return handles
}
