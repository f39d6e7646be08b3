package retention_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/metrics"
	"github.com/berth-registry/berth/retention"
)

// Schedulers in several replicas, polling at once, run a due policy once
// between them; the metrics' counts and the last run time are recorded.
func TestSchedulersRunADuePolicyOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	var replicas []*db.DB
	for range 4 {
		d, err := db.Open(ctx, url, db.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		replicas = append(replicas, d)
	}
	d := replicas[0]
	for i := range 30 {
		m := fmt.Sprintf("sha256:%064x", i+1)
		if _, err := d.ManifestStore(ctx, db.ManifestPut{Repository: "demo/app", Digest: m, MediaType: "application/vnd.oci.image.index.v1+json",
			Payload: []byte(m), Tags: []string{fmt.Sprintf("v%02d", i)}}, db.Actor{Name: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	p := db.RetentionPolicy{Name: "nightly", Repos: []string{"demo/**"}, ReposRegexp: []string{auth.GlobRegex("demo/**")},
		KeepLast: 10, Schedule: 24 * 60 * 60 * 1e9}
	if err := d.RetentionAdd(ctx, p); err != nil {
		t.Fatal(err)
	}
	// Every replica reports the policy's counts from the database: one
	// that never runs it included.
	reg := metrics.Registry(replicas[3], nil, nil, nil, slog.New(slog.DiscardHandler))
	for name, want := range map[string]string{"tags_removed_total": "0", "manifests_removed_total": "0", "last_run_timestamp_seconds": "0"} {
		if got := scrape(t, reg, "berth_retention_"+name+`{policy="nightly"}`); got != want {
			t.Errorf("before any run, berth_retention_%s = %q, want %s", name, got, want)
		}
	}
	var mu sync.Mutex
	runs := map[string]int{}
	removedTotal := 0
	var wg sync.WaitGroup
	for _, r := range replicas {
		s := retention.New(r, retention.Config{Ran: func(policy string, removed []db.Removal) {
			mu.Lock()
			defer mu.Unlock()
			runs[policy]++
			removedTotal += len(removed)
		}})
		for range 3 {
			wg.Add(1)
			go func() { defer wg.Done(); s.RunDue(ctx) }()
		}
	}
	wg.Wait()
	if runs["nightly"] != 1 || removedTotal != 20 {
		t.Fatalf("runs %v removing %d tags: want one run removing 20", runs, removedTotal)
	}
	got, err := d.RetentionGet(ctx, "nightly")
	if err != nil {
		t.Fatal(err)
	}
	if got.LastRunAt.IsZero() || got.LastRunTags != 20 || got.TagsRemoved != 20 {
		t.Errorf("recorded run: %+v", got)
	}
	lastRun := strconv.FormatFloat(float64(got.LastRunAt.UnixNano())/1e9, 'g', -1, 64)
	for name, want := range map[string]string{"tags_removed_total": "20", "manifests_removed_total": "0", "last_run_timestamp_seconds": lastRun} {
		if got := scrape(t, reg, "berth_retention_"+name+`{policy="nightly"}`); got != want {
			t.Errorf("after the scheduled run, berth_retention_%s = %q, want %s", name, got, want)
		}
	}
	// Not due again before its schedule.
	if n := retention.New(replicas[1], retention.Config{}).RunDue(ctx); n != 0 {
		t.Errorf("ran %d policies again at once", n)
	}
}

// scrape returns the value of series in reg's text exposition, as a
// Prometheus server reads it ("" when absent).
func scrape(t *testing.T, reg *prometheus.Registry, series string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}
