package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// pullCounts is the pull statistics of one manifest and its two tags.
type pullCounts struct{ manifest, v1, v2 int64 }

func (c pullCounts) String() string {
	return fmt.Sprintf("manifest %d, v1 %d, v2 %d", c.manifest, c.v1, c.v2)
}

func readPullCounts(t *testing.T, d *db.DB, repo, dgst string) pullCounts {
	t.Helper()
	var c pullCounts
	for _, x := range []struct {
		n   *int64
		get func() (db.PullStats, error)
	}{
		{&c.manifest, func() (db.PullStats, error) { return d.ManifestPullStats(context.Background(), repo, dgst) }},
		{&c.v1, func() (db.PullStats, error) { return d.TagPullStats(context.Background(), repo, "v1") }},
		{&c.v2, func() (db.PullStats, error) { return d.TagPullStats(context.Background(), repo, "v2") }},
	} {
		st, err := x.get()
		if err != nil {
			t.Fatal(err)
		}
		*x.n = st.Count
	}
	return c
}

// pulls sends n manifest GETs to base, from workers goroutines: by tag v1,
// by tag v2 and by digest in turn, with a HEAD and a conditional GET
// answered 304 among them, which are no pulls. It returns the pulls made.
func pulls(t *testing.T, base, repo, dgst string, workers, n int) pullCounts {
	t.Helper()
	var v1, v2, byDigest atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				ref, counter := "v1", &v1
				switch i % 3 {
				case 1:
					ref, counter = "v2", &v2
				case 2:
					ref, counter = dgst, &byDigest
				}
				url := base + "/v2/" + repo + "/manifests/" + ref
				for _, req := range []struct {
					method, inm string
					want        int
				}{{"GET", "", 200}, {"HEAD", "", 200}, {"GET", `"` + dgst + `"`, 304}} {
					if req.method != "GET" || req.inm != "" {
						if i%10 != 0 {
							continue // a few of these suffice
						}
					}
					r, _ := http.NewRequest(req.method, url, nil)
					r.Header.Set("Accept", ociManifest)
					if req.inm != "" {
						r.Header.Set("If-None-Match", req.inm)
					}
					resp, err := http.DefaultClient.Do(r)
					if err != nil {
						errs <- err
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != req.want {
						errs <- fmt.Errorf("%s %s: %d, want %d", req.method, url, resp.StatusCode, req.want)
						return
					}
				}
				counter.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return pullCounts{manifest: v1.Load() + v2.Load() + byDigest.Load(), v1: v1.Load(), v2: v2.Load()}
}

func (c pullCounts) plus(d pullCounts) pullCounts {
	return pullCounts{c.manifest + d.manifest, c.v1 + d.v1, c.v2 + d.v2}
}

// TestPullStatsReplicas: many concurrent pulls across two replicas add up
// exactly once they flush; a replica stopped with SIGTERM flushes what it
// counted; one killed with SIGKILL loses at most the pulls it counted
// since its last flush, never what it flushed.
func TestPullStatsReplicas(t *testing.T) {
	t.Parallel()
	start := time.Now()
	dbURL := dbtest.NewURL(t)
	storage := storageFlags(t)
	fast := []string{"--gc-disabled", "--pull-stats-flush", "100ms"}
	a := startReplica(t, dbURL, storage, fast...)
	b := startReplica(t, dbURL, storage, fast...)
	d, err := db.Open(t.Context(), dbURL, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	const repo = "stats/app"
	md := pushImage(t, a.url(), repo).String()
	got := mustDo(t, "GET", a.url()+"/v2/"+repo+"/manifests/v1", nil, http.StatusOK, "Accept: "+ociManifest)
	mustDo(t, "PUT", b.url()+"/v2/"+repo+"/manifests/v2", got.body, http.StatusCreated, "Content-Type: "+ociManifest)
	want := pullCounts{manifest: 1, v1: 1}

	waitCounts := func(what string, want pullCounts) {
		t.Helper()
		var now pullCounts
		waitUntil(t, what, func() bool { now = readPullCounts(t, d, repo, md); return now == want })
	}

	// Many concurrent pulls on both replicas at once.
	var wg sync.WaitGroup
	var fromA, fromB pullCounts
	wg.Add(2)
	go func() { defer wg.Done(); fromA = pulls(t, a.url(), repo, md, 16, 3000) }()
	go func() { defer wg.Done(); fromB = pulls(t, b.url(), repo, md, 16, 3000) }()
	wg.Wait()
	want = want.plus(fromA).plus(fromB)
	waitCounts("the pulls of both replicas to be flushed", want)
	t.Logf("%s: %s after concurrent pulls on two replicas", time.Since(start).Round(time.Millisecond), want)
	metrics := string(mustDo(t, "GET", b.url()+"/metrics", nil, http.StatusOK).body)
	if line := fmt.Sprintf("berth_pull_stats_flushed_total{kind=\"manifest\"} %d\n", fromB.manifest); !strings.Contains(metrics, line) {
		t.Errorf("metrics of b lack %q", line)
	}

	// A replica that never flushes on its own: SIGTERM flushes at
	// shutdown; SIGKILL loses everything it counted, as README says.
	slow := []string{"--gc-disabled", "--pull-stats-flush", "1h"}
	c := startReplica(t, dbURL, storage, slow...)
	want = want.plus(pulls(t, c.url(), repo, md, 4, 300))
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-c.exited
	if got := readPullCounts(t, d, repo, md); got != want {
		t.Fatalf("after SIGTERM: %s, want %s", got, want)
	}
	k := startReplica(t, dbURL, storage, slow...)
	lost := pulls(t, k.url(), repo, md, 4, 300)
	if err := k.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-k.exited
	if got := readPullCounts(t, d, repo, md); got != want {
		t.Fatalf("after SIGKILL of a replica that had not flushed: %s, want %s (lost: %s)", got, want, lost)
	}

	// A replica killed while it flushes every 100ms: between nothing and
	// everything since its last flush is lost, and nothing it flushed.
	wg.Add(1)
	var more pullCounts
	go func() { defer wg.Done(); more = pulls(t, a.url(), repo, md, 8, 1500) }()
	wg.Wait()
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.exited
	// (A flush of a in flight at the kill either committed or not.)
	got2 := readPullCounts(t, d, repo, md)
	if got2.manifest < want.manifest || got2.manifest > want.manifest+more.manifest ||
		got2.v1 < want.v1 || got2.v1 > want.v1+more.v1 || got2.v2 < want.v2 || got2.v2 > want.v2+more.v2 {
		t.Fatalf("after SIGKILL of a flushing replica: %s, want between %s and %s", got2, want, want.plus(more))
	}
	t.Logf("%s: SIGKILL lost %d of the last %d pulls of a replica flushing every 100ms",
		time.Since(start).Round(time.Millisecond), want.plus(more).manifest-got2.manifest, more.manifest)
}
