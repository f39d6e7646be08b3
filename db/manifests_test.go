package db_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// Batched manifest reads must be as fresh as single statements: a read
// that starts after a change has committed — on any replica — sees it.
// One replica moves a tag to manifest after manifest and deletes each
// previous one; many readers on another replica, sharing statements,
// check every answer against what had committed before they asked.
func TestBatchedReadsSeeCommittedChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	open := func() *db.DB {
		d, err := db.Open(ctx, url, db.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		return d
	}
	writer, reader := open(), open()
	digestOf := func(i int64) string { return fmt.Sprintf("sha256:%064x", i) }
	var index = func(dgst string) (i int64) {
		fmt.Sscanf(dgst, "sha256:%x", &i)
		return i
	}

	pushBare(t, writer, "repo", digestOf(1), "t")
	var moved, deleted atomic.Int64 // last manifest tagged, last deleted
	moved.Store(1)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var failures atomic.Int64
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
	}
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				want := moved.Load()
				m, err := reader.ManifestByTag(ctx, "repo", "t", true)
				switch {
				case err != nil:
					fail("read by tag: %v", err)
				case index(m.Digest) < want:
					fail("read by tag after the move to %d committed: got %d", want, index(m.Digest))
				case string(m.Payload) != m.Digest:
					fail("payload of %s is %q", m.Digest, m.Payload)
				}
				gone := deleted.Load()
				if gone == 0 {
					continue
				}
				if _, err := reader.ManifestByDigest(ctx, "repo", digestOf(gone), false); !errors.Is(err, db.ErrManifestUnknown) {
					fail("read by digest of manifest %d after its delete committed: err %v", gone, err)
				}
			}
		}()
	}

	deadline := time.Now().Add(2 * time.Second)
	for i := int64(2); time.Now().Before(deadline); i++ {
		pushBare(t, writer, "repo", digestOf(i), "t")
		moved.Store(i)
		if err := writer.ManifestDelete(ctx, "repo", digestOf(i-1), db.Actor{Name: "test"}); err != nil {
			t.Fatal(err)
		}
		deleted.Store(i - 1)
	}
	close(stop)
	wg.Wait()

	s := reader.Stats()
	t.Logf("%d moves, %d reads in %d statements", moved.Load()-1, s.ManifestReads, s.ManifestStatements)
	if s.ManifestStatements >= s.ManifestReads {
		t.Errorf("%d reads took %d statements: no read shared one, the race did not run", s.ManifestReads, s.ManifestStatements)
	}
}
