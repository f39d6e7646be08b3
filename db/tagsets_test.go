package db_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// Pushes that set several tags each, with overlapping tag sets given in
// random orders, on two instances against one schema, must never wait on
// each other in a cycle. PostgreSQL would break such a deadlock after
// deadlock_timeout and withTx would retry, hiding it; so the test's
// connections raise deadlock_timeout far above the time any push may
// take, and a push that stalls fails the test. Deletes of manifests that
// several tags point at run alongside in one variant, since they lock
// those tags too.
func TestMultiTagPushesDoNotDeadlock(t *testing.T) {
	t.Parallel()
	for _, withDeletes := range []bool{false, true} {
		name := "pushes"
		if withDeletes {
			name = "pushes and deletes"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			multiTagRace(t, withDeletes)
		})
	}
}

func multiTagRace(t *testing.T, withDeletes bool) {
	const (
		manifests = 6
		tags      = 8
		workers   = 6 // per instance
		pushes    = 25
		stall     = 20 * time.Second // far above any legitimate lock wait
	)
	ctx := context.Background()
	base := dbtest.NewURL(t)
	stalling := dbtest.StallDeadlocks(t, base)
	var instances []*db.DB
	for range 2 {
		d, err := db.Open(ctx, stalling, db.Options{MaxConns: workers + 2})
		if err != nil {
			// A role that may not set deadlock_timeout: PostgreSQL then
			// breaks deadlocks and withTx retries them, so only pushes
			// that fail outright are caught.
			t.Logf("cannot raise deadlock_timeout (%v); deadlocks will be retried, not caught", err)
			if d, err = db.Open(ctx, base, db.Options{MaxConns: workers + 2}); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(d.Close)
		instances = append(instances, d)
	}
	digestOf := func(i int) string { return fmt.Sprintf("sha256:%064x", i+1) }
	tagOf := func(i int) string { return fmt.Sprintf("t%d", i) }

	var wg sync.WaitGroup
	errs := make(chan error, 2*workers+2)
	push := func(d *db.DB, rng *rand.Rand) error {
		m := digestOf(rng.IntN(manifests))
		set := rng.Perm(tags)[:2+rng.IntN(tags-1)] // 2 to all 8 tags, in random order
		names := make([]string, len(set))
		for i, n := range set {
			names[i] = tagOf(n)
		}
		cctx, cancel := context.WithTimeout(ctx, stall)
		defer cancel()
		_, err := d.ManifestStore(cctx, db.ManifestPut{Repository: "repo", Digest: m,
			MediaType: "application/vnd.oci.image.index.v1+json", Payload: []byte(m), Tags: names}, db.Actor{Name: "test"})
		if err != nil {
			return fmt.Errorf("push %s with tags %v: %w", m, names, err)
		}
		return nil
	}
	for i, d := range instances {
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(i), uint64(w)))
				for range pushes {
					if err := push(d, rng); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		if !withDeletes {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 99))
			for range pushes {
				m := digestOf(rng.IntN(manifests))
				cctx, cancel := context.WithTimeout(ctx, stall)
				err := d.ManifestDelete(cctx, "repo", m, db.Actor{Name: "test"})
				cancel()
				if err != nil && !errors.Is(err, db.ErrManifestUnknown) {
					errs <- fmt.Errorf("delete %s: %w", m, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("stalled for %v, two transactions waiting on each other: %v", stall, err)
		} else {
			t.Error(err)
		}
	}
	if t.Failed() {
		return
	}

	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Every tag points at a live manifest; without deletes, every tag
	// exists (each was pushed many times and nothing removes tags).
	final := map[string]string{}
	rows, err := conn.Query(ctx, `
SELECT t.name, m.digest, m.deleted_at IS NOT NULL FROM tags t JOIN manifests m ON m.id = t.manifest_id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name, dgst string
		var deleted bool
		if err := rows.Scan(&name, &dgst, &deleted); err != nil {
			t.Fatal(err)
		}
		if deleted {
			t.Errorf("tag %s points at deleted manifest %s", name, dgst)
		}
		final[name] = dgst
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !withDeletes && len(final) != tags {
		t.Errorf("%d tags exist, want all %d: %v", len(final), tags, final)
	}
	// Each tag's history replays to its final state, every change starting
	// where the one before ended.
	rows, err = conn.Query(ctx, `
SELECT id, tag, action, coalesce(digest, ''), coalesce(old_digest, '') FROM audit_log
WHERE action LIKE 'tag.%' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	state := map[string]string{}
	changes := 0
	for rows.Next() {
		var id int64
		var tag, action, dgst, old string
		if err := rows.Scan(&id, &tag, &action, &dgst, &old); err != nil {
			t.Fatal(err)
		}
		if old != state[tag] {
			t.Errorf("history entry %d (%s of %s) starts from %q, but the tag was at %q", id, action, tag, old, state[tag])
		}
		state[tag] = dgst
		changes++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for i := range tags {
		if tag := tagOf(i); state[tag] != final[tag] {
			t.Errorf("history of %s replays to %q, the tag is at %q", tag, state[tag], final[tag])
		}
	}
	t.Logf("%d tag changes", changes)
	if changes < pushes {
		t.Errorf("only %d tag changes: the race did not run", changes)
	}
}
