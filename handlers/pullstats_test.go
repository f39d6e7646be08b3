package handlers_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/handlers"
	"github.com/berth-registry/berth/pullstats"
)

// A manifest GET that serves content counts a pull, of the manifest and
// of the tag it was pulled by; a HEAD and a 304 do not. The repository
// page shows the tag's count and last pull.
func TestPullStatsCounted(t *testing.T) {
	t.Parallel()
	var stats *pullstats.Stats
	r := newRegistryWith(t, func(o *handlers.Options) {
		stats = pullstats.New(o.DB, time.Hour, nil) // flushed by the test
		o.PullStats = stats
	})
	img := r.image("pulled/app", "one")
	m := r.pushManifest("pulled/app", "v1", mtManifest, img)
	r.pushManifest("pulled/app", "v2", mtManifest, img)
	for range 3 {
		r.do("GET", "/v2/pulled/app/manifests/v1", nil).expect(t, http.StatusOK, "")
	}
	r.do("GET", "/v2/pulled/app/manifests/"+m.String(), nil).expect(t, http.StatusOK, "")
	r.do("HEAD", "/v2/pulled/app/manifests/v2", nil).expect(t, http.StatusOK, "")
	r.do("GET", "/v2/pulled/app/manifests/v2", nil, `If-None-Match: "`+m.String()+`"`).expect(t, http.StatusNotModified, "")
	r.do("GET", "/v2/pulled/app/manifests/v3", nil).expect(t, http.StatusNotFound, "MANIFEST_UNKNOWN")

	ctx := context.Background()
	if err := stats.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ref  string
		want int64
		get  func() (db.PullStats, error)
	}{
		{"manifest", 4, func() (db.PullStats, error) { return r.db.ManifestPullStats(ctx, "pulled/app", m.String()) }},
		{"v1", 3, func() (db.PullStats, error) { return r.db.TagPullStats(ctx, "pulled/app", "v1") }},
		{"v2", 0, func() (db.PullStats, error) { return r.db.TagPullStats(ctx, "pulled/app", "v2") }},
	} {
		st, err := c.get()
		if err != nil || st.Count != c.want || st.LastPulled.IsZero() != (c.want == 0) {
			t.Errorf("%s: %+v, %v; want %d pulls", c.ref, st, err, c.want)
		}
	}
	if stats.Flushed() != 4 || stats.TagsFlushed() != 3 || stats.Buffered() != 0 {
		t.Errorf("flushed %d (%d by tag), %d buffered", stats.Flushed(), stats.TagsFlushed(), stats.Buffered())
	}

	page := r.browser().get("/ui/r/pulled/app/")
	page.expect(t, http.StatusOK, "pulled/app")
	for _, want := range []string{">Last pulled</th>", ">Pulls</th>", `<td class="num">3</td>`, "<td>never</td>\n<td class=\"num\">0</td>"} {
		if !strings.Contains(page.body, want) {
			t.Errorf("repository page lacks %q", want)
		}
	}
}

// BenchmarkManifestGetPullStats measures manifest GET throughput with pull
// statistics off and on: parallel GETs by tag through the real handler and
// the real PostgreSQL (called directly, without a network, so that the
// statistics' cost is not hidden in the client's and the kernel's), with
// the counts flushed every 100ms while the benchmark runs.
//
//	go test ./handlers -run '^$' -bench ManifestGetPullStats -count 6
func BenchmarkManifestGetPullStats(b *testing.B) {
	ctx := context.Background()
	d, err := db.Open(ctx, dbtest.NewURL(b), db.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	store, err := blobstore.NewFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	const tags = 64 // distinct keys, as several images are pulled at once
	stats := pullstats.New(d, 100*time.Millisecond, nil)
	for _, on := range []bool{false, true} {
		opts := handlers.Options{DB: d, Blobs: store, Logger: slog.New(slog.DiscardHandler)}
		if on {
			opts.PullStats = stats
		}
		h := handlers.New(opts)
		body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
		for i := range tags {
			req := httptest.NewRequest(http.MethodPut, fmt.Sprintf("/v2/bench/pulls/manifests/t%d", i), strings.NewReader(string(body)))
			req.Header.Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusCreated {
				b.Fatalf("PUT: %d %s", rec.Code, rec.Body)
			}
		}
		b.Run(fmt.Sprintf("stats=%v", on), func(b *testing.B) {
			if on {
				rctx, cancel := context.WithCancel(ctx)
				done := make(chan struct{})
				go func() { defer close(done); stats.Run(rctx) }()
				defer func() { cancel(); <-done }()
			}
			b.SetParallelism(4) // requests in flight per core, as a loaded replica has
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					req := httptest.NewRequest(http.MethodGet, fmt.Sprintf("/v2/bench/pulls/manifests/t%d", i%tags), nil)
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, req)
					if rec.Code != http.StatusOK {
						b.Fatalf("GET: %d %s", rec.Code, rec.Body)
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "GETs/s")
		})
		if err := h.Close(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
