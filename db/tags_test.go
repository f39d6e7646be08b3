package db_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// pushBare stores a manifest that references nothing, tagged with tags.
func pushBare(t *testing.T, d *db.DB, repo, dgst string, tags ...string) {
	t.Helper()
	_, err := d.ManifestStore(context.Background(), db.ManifestPut{Repository: repo, Digest: dgst,
		MediaType: "application/vnd.oci.image.index.v1+json", Payload: []byte(dgst), Tags: tags}, db.Actor{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
}

const (
	digestM = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	digestN = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

// A tag change that waits for a concurrent move of the same tag must see
// where the tag points once the move commits: the untag succeeds (and
// reports the new target), and If-Match on the new target holds.
func TestTagChangeWaitingForAMove(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cond db.TagCondition
	}{
		{"unconditional", db.TagCondition{}},
		{"if-match the new target", db.TagCondition{IfMatch: []string{digestN}}},
		{"if-match any", db.TagCondition{IfMatch: []string{"*"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			url := dbtest.NewURL(t)
			d, err := db.Open(ctx, url, db.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			pushBare(t, d, "repo", digestM, "t")
			pushBare(t, d, "repo", digestN)

			// Another transaction moves t to N and holds the row.
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			mover, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := mover.Exec(ctx, `UPDATE tags SET manifest_id = (SELECT id FROM manifests WHERE digest = $1)`, digestN); err != nil {
				t.Fatal(err)
			}
			type result struct {
				dgst string
				err  error
			}
			done := make(chan result, 1)
			go func() {
				dgst, err := d.TagDelete(ctx, "repo", "t", tc.cond, db.Actor{Name: "test"})
				done <- result{dgst, err}
			}()
			waitBlockedBy(t, url, conn.PgConn().PID(), func() bool { return len(done) > 0 })
			if err := mover.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			got := <-done
			if got.err != nil || got.dgst != digestN {
				t.Fatalf("untag after the move: %q, %v; want it to remove the tag from %s", got.dgst, got.err, digestN)
			}
			if tags, _, _ := d.TagList(ctx, "repo", "", 10); len(tags) != 0 {
				t.Fatalf("tags left: %v", tags)
			}
		})
	}
}

// waitBlockedBy waits until some backend waits for a lock held by the
// backend pid: until then the change under test has not reached the lock.
// finished reports whether that change already returned, which means it
// did not wait at all.
func waitBlockedBy(t *testing.T, url string, pid uint32, finished func() bool) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Each query is a transaction of its own, so it sees the lock
		// table as it is now, not a snapshot from an earlier query.
		var waiting bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks
			WHERE NOT granted AND $1::int = ANY(pg_blocking_pids(pid)))`, int32(pid)).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting {
			return
		}
		if finished() {
			t.Fatalf("the change returned without waiting for the lock of backend %d", pid)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no backend waits for a lock of backend %d", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
