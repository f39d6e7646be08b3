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

	reads, statements := reader.ManifestReadStats()
	t.Logf("%d moves, %d reads in %d statements", moved.Load()-1, reads, statements)
	if statements >= reads {
		t.Errorf("%d reads took %d statements: no read shared one, the race did not run", reads, statements)
	}
}

// Concurrent reads of different keys share statements; each must get the
// answer to its own key: its repository's manifest, the payload only when
// asked for, and ErrManifestUnknown for what does not exist.
func TestBatchedReadsAnswerEachKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)
	digestOf := func(repo, tag int) string { return fmt.Sprintf("sha256:%032x%032x", repo, tag) }
	const repos, tags = 3, 5
	for r := range repos {
		for g := range tags {
			pushBare(t, d, fmt.Sprint("repo", r), digestOf(r, g), fmt.Sprint("t", g))
		}
	}

	var wg sync.WaitGroup
	var failures atomic.Int64
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
	}
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				// tag tags (one past the last) and repo repos do not exist.
				r, g, payload := (w+i)%(repos+1), (w*7+i)%(tags+1), (w+i)%2 == 0
				repo, want := fmt.Sprint("repo", r), digestOf(r, g)
				exists := r < repos && g < tags
				var m db.Manifest
				var err error
				if i%3 == 0 {
					m, err = d.ManifestByDigest(ctx, repo, want, payload)
				} else {
					m, err = d.ManifestByTag(ctx, repo, fmt.Sprint("t", g), payload)
				}
				switch {
				case !exists && !errors.Is(err, db.ErrManifestUnknown):
					fail("%s %d/%d does not exist: got %v, %v", repo, r, g, m.Digest, err)
				case exists && err != nil:
					fail("%s t%d: %v", repo, g, err)
				case exists && m.Digest != want:
					fail("%s t%d: got %s, want %s", repo, g, m.Digest, want)
				case exists && payload && string(m.Payload) != want:
					fail("%s t%d: payload %q", repo, g, m.Payload)
				case exists && !payload && m.Payload != nil:
					fail("%s t%d: payload returned although not asked for", repo, g)
				}
			}
		}()
	}
	wg.Wait()
	reads, statements := d.ManifestReadStats()
	t.Logf("%d reads in %d statements", reads, statements)
	if statements >= reads {
		t.Errorf("%d reads took %d statements: nothing was batched", reads, statements)
	}
}
