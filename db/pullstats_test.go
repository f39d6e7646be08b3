package db_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

func pullStatsDB(t *testing.T) (*db.DB, string) {
	t.Helper()
	url := dbtest.NewURL(t)
	d, err := db.Open(t.Context(), url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d, url
}

func wantPulls(t *testing.T, got db.PullStats, err error, count int64, last time.Time) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if got.Count != count || !got.LastPulled.Equal(last) {
		t.Fatalf("pull statistics %d at %v, want %d at %v", got.Count, got.LastPulled, count, last)
	}
}

func TestPullStatsAdd(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

	t.Run("counts add up, the last time is the latest", func(t *testing.T) {
		t.Parallel()
		d, _ := pullStatsDB(t)
		pushBare(t, d, "repo", digestM, "a", "b")
		st, err := d.TagPullStats(ctx, "repo", "a")
		wantPulls(t, st, err, 0, time.Time{})

		res, err := d.PullStatsAdd(ctx,
			[]db.PullCount{{Repository: "repo", Ref: digestM, Count: 3, Last: t0.Add(time.Second)}},
			[]db.PullCount{{Repository: "repo", Ref: "a", Count: 2, Last: t0}})
		if err != nil || res.Added != 3 || res.TagsAdded != 2 || res.Dropped+res.TagsDropped != 0 {
			t.Fatalf("first flush: %+v, %v", res, err)
		}
		// A second replica's flush, with an older last pull.
		if _, err := d.PullStatsAdd(ctx,
			[]db.PullCount{{Repository: "repo", Ref: digestM, Count: 4, Last: t0}},
			[]db.PullCount{{Repository: "repo", Ref: "a", Count: 1, Last: t0.Add(time.Minute)}, {Repository: "repo", Ref: "b", Count: 4, Last: t0}}); err != nil {
			t.Fatal(err)
		}
		st, err = d.ManifestPullStats(ctx, "repo", digestM)
		wantPulls(t, st, err, 7, t0.Add(time.Second))
		st, err = d.TagPullStats(ctx, "repo", "a")
		wantPulls(t, st, err, 3, t0.Add(time.Minute))
		st, err = d.TagPullStats(ctx, "repo", "b")
		wantPulls(t, st, err, 4, t0)
	})

	t.Run("a moved tag keeps counting; a removed one is dropped", func(t *testing.T) {
		t.Parallel()
		d, _ := pullStatsDB(t)
		pushBare(t, d, "repo", digestM, "moves", "goes")
		add := func(tag string) db.PullStatsResult {
			t.Helper()
			res, err := d.PullStatsAdd(ctx, nil, []db.PullCount{{Repository: "repo", Ref: tag, Count: 5, Last: t0}})
			if err != nil {
				t.Fatal(err)
			}
			return res
		}
		add("moves")
		add("goes")
		pushBare(t, d, "repo", digestN, "moves")
		if res := add("moves"); res.TagsAdded != 5 {
			t.Fatalf("after the move: %+v", res)
		}
		st, err := d.TagPullStats(ctx, "repo", "moves")
		wantPulls(t, st, err, 10, t0)

		if _, err := d.TagDelete(ctx, "repo", "goes", db.TagCondition{}, db.Actor{Name: "test"}); err != nil {
			t.Fatal(err)
		}
		if res := add("goes"); res.TagsAdded != 0 || res.TagsDropped != 5 || len(res.RetryTags) != 0 {
			t.Fatalf("after the untag: %+v", res)
		}
		// Pushed again, the tag starts from nothing: its statistics went
		// with it.
		pushBare(t, d, "repo", digestM, "goes")
		st, err = d.TagPullStats(ctx, "repo", "goes")
		wantPulls(t, st, err, 0, time.Time{})
		if res := add("nowhere"); res.TagsDropped != 5 {
			t.Fatalf("a tag that never was: %+v", res)
		}
	})

	t.Run("a deleted manifest is dropped", func(t *testing.T) {
		t.Parallel()
		d, _ := pullStatsDB(t)
		pushBare(t, d, "repo", digestM, "t")
		if err := d.ManifestDelete(ctx, "repo", digestM, db.Actor{Name: "test"}); err != nil {
			t.Fatal(err)
		}
		res, err := d.PullStatsAdd(ctx,
			[]db.PullCount{{Repository: "repo", Ref: digestM, Count: 2, Last: t0}, {Repository: "other", Ref: digestM, Count: 1, Last: t0}},
			[]db.PullCount{{Repository: "repo", Ref: "t", Count: 2, Last: t0}})
		if err != nil || res.Added != 0 || res.Dropped != 3 || res.TagsDropped != 2 || len(res.Retry)+len(res.RetryTags) != 0 {
			t.Fatalf("%+v, %v", res, err)
		}
	})

	t.Run("rows a change holds are left for the next flush, without waiting", func(t *testing.T) {
		t.Parallel()
		d, url := pullStatsDB(t)
		pushBare(t, d, "repo", digestM, "held", "free")
		pushBare(t, d, "repo", digestN)
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// What a push holds: the manifest and the tag FOR UPDATE.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM manifests WHERE digest = $1 FOR UPDATE`, digestN); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `SELECT 1 FROM tags WHERE name = 'held' FOR UPDATE`); err != nil {
			t.Fatal(err)
		}
		res, err := d.PullStatsAdd(ctx,
			[]db.PullCount{{Repository: "repo", Ref: digestM, Count: 1, Last: t0}, {Repository: "repo", Ref: digestN, Count: 2, Last: t0}},
			[]db.PullCount{{Repository: "repo", Ref: "held", Count: 3, Last: t0}, {Repository: "repo", Ref: "free", Count: 4, Last: t0}})
		if err != nil {
			t.Fatal(err)
		}
		if res.Added != 1 || res.TagsAdded != 4 || res.Dropped+res.TagsDropped != 0 ||
			len(res.Retry) != 1 || res.Retry[0].Ref != digestN || len(res.RetryTags) != 1 || res.RetryTags[0].Ref != "held" {
			t.Fatalf("%+v", res)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if res, err = d.PullStatsAdd(ctx, res.Retry, res.RetryTags); err != nil || res.Added != 2 || res.TagsAdded != 3 {
			t.Fatalf("the retry: %+v, %v", res, err)
		}
	})
}

// Flushes from two handles (two replicas) at once, over the same manifests
// and tags in random orders, while pushes move the tags and hold their
// rows, and a manifest with tags is deleted and pushed again (its delete
// removes statistics rows by cascade): every count of a live manifest or
// tag is added exactly once (retrying what a push or another flush held),
// and no flush or push fails, with a deadlock or otherwise.
func TestPullStatsConcurrentFlushes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A deadlock is not broken by PostgreSQL and retried by withTx, but
	// stalls until the statement deadline, and the failed change fails the
	// test.
	stalling := dbtest.StallDeadlocks(t, dbtest.NewURL(t))
	var handles [2]*db.DB
	for i := range handles {
		d, err := db.Open(ctx, stalling, db.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		handles[i] = d
	}
	const (
		manifests = 4
		tags      = 12
		flushers  = 8
		rounds    = 40
		minPushes = 40
	)
	digests := make([]string, manifests)
	for i := range digests {
		digests[i] = fmt.Sprintf("sha256:%064x", i+1)
		pushBare(t, handles[0], "repo", digests[i])
	}
	tagNames := make([]string, tags)
	for i := range tagNames {
		tagNames[i] = fmt.Sprintf("t%02d", i)
		pushBare(t, handles[0], "repo", digests[0], tagNames[i])
	}
	const gone = "sha256:00000000000000000000000000000000000000000000000000000000000000ff"
	goneTags := []string{"g0", "g1", "g2", "g3"}
	pushBare(t, handles[0], "repo", gone, goneTags...)
	t0 := time.Now().UTC().Truncate(time.Microsecond)

	stop := make(chan struct{})
	var pushes atomic.Int64
	var stopped atomic.Bool // a pusher failed
	var pushers sync.WaitGroup
	for p := range 2 {
		pushers.Add(1)
		go func() {
			defer pushers.Done()
			rng := rand.New(rand.NewPCG(uint64(p), 7))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Several tags at once, as a push with ?tag= moves them.
				a, b := tagNames[rng.IntN(tags)], tagNames[rng.IntN(tags)]
				_, err := handles[p].ManifestStore(ctx, db.ManifestPut{Repository: "repo", Digest: digests[i%manifests],
					MediaType: "application/vnd.oci.image.index.v1+json", Payload: []byte(digests[i%manifests]), Tags: []string{a, b}},
					db.Actor{Name: "test"})
				if err != nil {
					t.Error(err)
					stopped.Store(true)
					return
				}
				pushes.Add(1)
			}
		}()
	}

	pushers.Add(1)
	go func() {
		defer pushers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := handles[1].ManifestDelete(ctx, "repo", gone, db.Actor{Name: "test"}); err != nil {
				t.Error(err)
				stopped.Store(true)
				return
			}
			pushBare(t, handles[1], "repo", gone, goneTags...)
		}
	}()

	var flushes sync.WaitGroup
	var retried, added, busy atomic.Int64
	errs := make(chan error, flushers)
	for f := range flushers {
		flushes.Add(1)
		go func() {
			defer flushes.Done()
			d := handles[f%2]
			rng := rand.New(rand.NewPCG(uint64(f), 11))
			var retry, retryTags []db.PullCount
			// At least rounds, and on until the pushes have moved tags
			// often enough to have held some of them.
			adding := func(r int) bool { return r < rounds || pushes.Load() < minPushes && !stopped.Load() }
			for r := 0; adding(r) || len(retry)+len(retryTags) > 0; r++ {
				ms, ts := retry, retryTags
				if adding(r) {
					added.Add(1)
					ms = merge(ms, append([]string{gone}, digests...), rng, t0)
					ts = merge(ts, append(goneTags[:len(goneTags):len(goneTags)], tagNames...), rng, t0)
				}
				res, err := d.PullStatsAdd(ctx, ms, ts)
				if err != nil {
					errs <- err
					return
				}
				retry, retryTags = res.Retry, res.RetryTags
				if res.Busy {
					busy.Add(1)
				}
				retried.Add(int64(len(retry) + len(retryTags)))
			}
		}()
	}
	flushes.Wait()
	close(stop)
	pushers.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("counts left for the next flush because a push, a delete or another flush held them: %d, pushes: %d, flushes that gave up waiting: %d", retried.Load(), pushes.Load(), busy.Load())
	// Each flusher adds, per round, one pull of every manifest and tag.
	want := added.Load()
	for _, dgst := range digests {
		st, err := handles[0].ManifestPullStats(ctx, "repo", dgst)
		if err != nil || st.Count != want {
			t.Fatalf("%s: %d pulls (%v), want %d", dgst, st.Count, err, want)
		}
	}
	for _, tag := range tagNames {
		st, err := handles[1].TagPullStats(ctx, "repo", tag)
		wantPulls(t, st, err, want, t0)
	}
}

// merge adds one pull of each ref, in a random order, to what is left to
// retry (a ref at most once, as a replica's buffer aggregates them).
func merge(retry []db.PullCount, refs []string, rng *rand.Rand, at time.Time) []db.PullCount {
	out := make([]db.PullCount, 0, len(refs))
	for _, i := range rng.Perm(len(refs)) {
		c := db.PullCount{Repository: "repo", Ref: refs[i], Count: 1, Last: at}
		for _, r := range retry {
			if r.Ref == c.Ref {
				c.Count += r.Count
				if r.Last.After(c.Last) {
					c.Last = r.Last
				}
			}
		}
		out = append(out, c)
	}
	return out
}
