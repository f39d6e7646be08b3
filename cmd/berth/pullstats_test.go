package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
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
	var tally pullTally
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				ref, counter := tally.pick(i, dgst)
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
	return tally.counts()
}

// pullTally counts the manifest pulls of the load loops by reference.
type pullTally struct{ v1, v2, byDigest atomic.Int64 }

// pick is the reference of the i-th pull — tag v1, tag v2 and digest dgst
// in turn — and its counter.
func (t *pullTally) pick(i int, dgst string) (string, *atomic.Int64) {
	switch i % 3 {
	case 1:
		return "v2", &t.v2
	case 2:
		return dgst, &t.byDigest
	}
	return "v1", &t.v1
}

func (t *pullTally) counts() pullCounts {
	v1, v2 := t.v1.Load(), t.v2.Load()
	return pullCounts{manifest: v1 + v2 + t.byDigest.Load(), v1: v1, v2: v2}
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

	// A replica killed once it has flushed every pull it counted loses
	// nothing. Its own metric says when that is: no waiting on the clock.
	more := pulls(t, a.url(), repo, md, 8, 1500)
	want = want.plus(more)
	countedByA := 1 + fromA.manifest + more.manifest // the first GET above was a's
	waitUntil(t, "a to flush every pull it counted", func() bool {
		return flushedOf(a, "manifest") == countedByA
	})
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.exited
	if got := readPullCounts(t, d, repo, md); got != want {
		t.Fatalf("after SIGKILL of a replica that had flushed everything: %s, want %s", got, want)
	}

	// A replica killed while pulls go on and it flushes every 100ms loses
	// at most the pulls it counted after its last flush: everything its
	// metric says it flushed, read just before the kill, is in the
	// database, and nothing is counted that was not requested.
	f := startReplica(t, dbURL, storage, fast...)
	stop := make(chan struct{})
	var attempted pullCounts
	wg.Add(1)
	go func() { defer wg.Done(); attempted = pullsUntil(f.url(), repo, md, 8, stop) }()
	waitUntil(t, "f to flush some pulls", func() bool { return flushedOf(f, "manifest") >= 50 }) // few enough for a loaded machine
	flushed, tagsFlushed := flushedOf(f, "manifest"), flushedOf(f, "tag")
	if err := f.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-f.exited
	close(stop)
	wg.Wait()
	after := readPullCounts(t, d, repo, md)
	added := pullCounts{after.manifest - want.manifest, after.v1 - want.v1, after.v2 - want.v2}
	if added.manifest < flushed || added.v1+added.v2 < tagsFlushed {
		t.Errorf("after SIGKILL of a flushing replica: it added %s, less than the %d pulls (%d by tag) its metric said it had flushed", added, flushed, tagsFlushed)
	}
	if added.manifest > attempted.manifest || added.v1 > attempted.v1 || added.v2 > attempted.v2 {
		t.Errorf("after SIGKILL of a flushing replica: it added %s, more than the %s requested", added, attempted)
	}
	t.Logf("%s: SIGKILL of a replica flushing every 100ms during pulls: %d requested, %d flushed by the metric before the kill, %d in the database",
		time.Since(start).Round(time.Millisecond), attempted.manifest, flushed, added.manifest)
}

// flushedOf reads berth_pull_stats_flushed_total{kind} of replica r.
func flushedOf(r *replica, kind string) int64 {
	v, err := tryMetric(r.url(), `berth_pull_stats_flushed_total{kind="`+kind+`"}`)
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// pullsUntil GETs the manifest by tag v1, tag v2 and digest in turn, from
// workers goroutines, until stop is closed or the replica stops answering
// (it was killed). It returns the pulls requested, answered or not: a pull
// the replica counted may not have reached the client before the kill.
func pullsUntil(base, repo, dgst string, workers int, stop <-chan struct{}) pullCounts {
	var tally pullTally
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i += workers {
				select {
				case <-stop:
					return
				default:
				}
				ref, counter := tally.pick(i, dgst)
				counter.Add(1)
				r, _ := http.NewRequest("GET", base+"/v2/"+repo+"/manifests/"+ref, nil)
				r.Header.Set("Accept", ociManifest)
				resp, err := http.DefaultClient.Do(r)
				if err != nil {
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	return tally.counts()
}
