package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/opencontainers/go-digest"
)

// params scale the benchmark; quick mode scales it down.
type params struct {
	Quick       bool
	Warmup      time.Duration // before each fixed-duration run, discarded
	Duration    time.Duration // of each fixed-duration run
	Conns       []int         // manifest GET concurrency
	Tags        int           // tags of bench/tags
	DeleteTags  int           // tags on the manifest deleted by digest
	Repos       int           // repositories for the catalog
	SmallSize   int64         // the small blob
	BigSize     int64         // the large blob
	ChunkSize   int64         // PATCH size of chunked pushes
	SmallPushes int           // small blobs pushed per push scenario
	BigReps     int           // large blob pushes per scenario
	PullReps    int           // large blob downloads
	Untags      int           // tags removed one by one
	SeedConns   int           // concurrency of the seeding
	PutLayers   int           // distinct layer blobs of the 4 MiB manifests
}

func fullParams() params {
	return params{
		Warmup: time.Second, Duration: 5 * time.Second, Conns: []int{1, 8, 32},
		Tags: 100_000, DeleteTags: 20_000, Repos: 10_000,
		SmallSize: 1 << 20, BigSize: 256 << 20, ChunkSize: 5 << 20,
		SmallPushes: 1000, BigReps: 4, PullReps: 10, Untags: 100, SeedConns: 16,
		PutLayers: 30_000, // more than fit: every layer distinct
	}
}

func quickParams() params {
	return params{
		Quick:  true,
		Warmup: 500 * time.Millisecond, Duration: 2 * time.Second, Conns: []int{1, 8, 32},
		Tags: 10_000, DeleteTags: 2_000, Repos: 1_000,
		SmallSize: 1 << 20, BigSize: 64 << 20, ChunkSize: 5 << 20,
		SmallPushes: 300, BigReps: 4, PullReps: 10, Untags: 30, SeedConns: 16,
		PutLayers: 2_000,
	}
}

// env is what scenarios run against: one registry, seeded on demand.
type env struct {
	o            *options
	p            params
	srv          *server
	seedClient   *client
	img          image
	appDigest    digest.Digest
	deleteDigest digest.Digest
	bigManifests *bigManifests // of the manifest PUT scenarios, once seeded
	notes        []string      // oddities to report
}

func (e *env) notef(format string, args ...any) {
	e.notes = append(e.notes, fmt.Sprintf(format, args...))
}

// metric is one number of one scenario on one registry.
type metric struct {
	ID      string // stable key, for ratios and targets
	Section string
	Name    string
	Unit    string
	Higher  bool // higher is better
	Value   float64
	Note    string
}

type scenario struct {
	Name  string // matched by -only
	Needs []string
	Blob  bool // report the server's peak RSS in the memory section
	Title string
	Run   func(ctx context.Context, e *env) ([]metric, error)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mib(n int64) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// errNote summarises the failed requests of a run.
func errNote(r *loadResult) string {
	if r.Errors == 0 {
		return ""
	}
	return fmt.Sprintf("%d failed requests, first: %v", r.Errors, r.FirstErr)
}

// check turns a run without a single success into an error.
func check(r *loadResult) error {
	if r.Requests == 0 {
		if r.FirstErr != nil {
			return r.FirstErr
		}
		return fmt.Errorf("no request completed")
	}
	return nil
}

// latencyMetrics are requests/s, p50 and p99 of a fixed-duration run.
func latencyMetrics(id, section, name string, r *loadResult) []metric {
	note := errNote(r)
	return []metric{
		{ID: id + ".rps", Section: section, Name: name + ": requests/s", Unit: "req/s", Higher: true, Value: r.rps(), Note: note},
		{ID: id + ".p50", Section: section, Name: name + ": p50", Unit: "ms", Value: ms(r.pct(50))},
		{ID: id + ".p99", Section: section, Name: name + ": p99", Unit: "ms", Value: ms(r.pct(99))},
	}
}

func scenarios(p params) []scenario {
	var list []scenario
	accept := http.Header{"Accept": acceptManifests}

	// Manifest GET by tag and by digest.
	for _, by := range []string{"tag", "digest"} {
		for _, c := range p.Conns {
			list = append(list, scenario{
				Name:  fmt.Sprintf("manifest/%s/c%d", by, c),
				Title: fmt.Sprintf("manifest GET by %s, %d conn", by, c),
				Needs: []string{"app"},
				Run: func(ctx context.Context, e *env) ([]metric, error) {
					ref := "/v2/bench/app/manifests/latest"
					if by == "digest" {
						ref = "/v2/bench/app/manifests/" + e.appDigest.String()
					}
					g := newRawGetter(e.srv.Base, c)
					defer g.close()
					req := g.request(ref, accept)
					r := runFor(ctx, c, e.p.Warmup, e.p.Duration, func(ctx context.Context, w, _ int) (int64, error) {
						return g.get(ctx, w, req)
					})
					return latencyMetrics(fmt.Sprintf("manifest.%s.c%d", by, c), "Manifest GET (bench/app:latest)",
						fmt.Sprintf("by %s, %d conn", by, c), r), check(r)
				},
			})
		}
	}

	// Manifest PUT of the largest manifests, many at once.
	list = append(list, manifestPutScenario(p, false), manifestPutScenario(p, true))

	// Blob push.
	type push struct {
		name    string
		chunked bool
		size    int64
		conns   int
		count   int
		seed    uint64
	}
	pushes := []push{
		{"monolithic", false, p.SmallSize, 1, p.SmallPushes, 10_000},
		{"monolithic", false, p.SmallSize, 8, p.SmallPushes * 2, 20_000},
		{"chunked", true, p.SmallSize, 1, p.SmallPushes, 30_000},
		{"monolithic", false, p.BigSize, 1, p.BigReps, 40_000},
		{"chunked", true, p.BigSize, 1, p.BigReps, 50_000},
	}
	for _, ps := range pushes {
		list = append(list, scenario{
			Name:  fmt.Sprintf("blob/push-%s/%s/c%d", ps.name, mibName(ps.size), ps.conns),
			Title: fmt.Sprintf("blob push %s %s, %d conn", ps.name, mib(ps.size), ps.conns),
			Blob:  true,
			Run: func(ctx context.Context, e *env) ([]metric, error) {
				digests := make([]digest.Digest, ps.count)
				for i := range digests {
					digests[i] = genDigest(ps.seed+uint64(i), ps.size)
				}
				cl := newClient(e.srv.Base, ps.conns)
				defer cl.close()
				r := runCount(ctx, ps.conns, ps.count, func(ctx context.Context, _, i int) (int64, error) {
					body := newGen(ps.seed+uint64(i), ps.size)
					var err error
					if ps.chunked {
						err = cl.pushChunked(ctx, "bench/push", digests[i], ps.size, body, e.p.ChunkSize)
					} else {
						err = cl.pushMonolithic(ctx, "bench/push", digests[i], ps.size, body)
					}
					return ps.size, err
				})
				how := fmt.Sprintf("%s %s, %d conn", ps.name, mib(ps.size), ps.conns)
				if ps.chunked {
					how = fmt.Sprintf("chunked (%s PATCHes) %s, %d conn", mib(e.p.ChunkSize), mib(ps.size), ps.conns)
				}
				id := fmt.Sprintf("push.%s.%s.c%d", ps.name, sizeID(ps.size, e.p), ps.conns)
				return []metric{
					{ID: id + ".mibps", Section: "Blob push", Name: how + ": throughput", Unit: "MiB/s", Higher: true, Value: r.mibps(), Note: errNote(r)},
					{ID: id + ".p50", Section: "Blob push", Name: how + ": p50 per blob", Unit: "ms", Value: ms(r.pct(50))},
				}, check(r)
			},
		})
	}

	// Blob pull.
	for _, c := range []int{1, 8} {
		list = append(list, scenario{
			Name:  fmt.Sprintf("blob/pull/%s/c%d", mibName(p.SmallSize), c),
			Title: fmt.Sprintf("blob pull %s, %d conn", mib(p.SmallSize), c),
			Needs: []string{"pull"},
			Blob:  true,
			Run: func(ctx context.Context, e *env) ([]metric, error) {
				g := newRawGetter(e.srv.Base, c)
				defer g.close()
				reqs := make([][]byte, e.pullSmall())
				for i := range reqs {
					reqs[i] = g.request("/v2/bench/pull/blobs/"+genDigest(smallSeed(i), e.p.SmallSize).String(), nil)
				}
				r := runFor(ctx, c, e.p.Warmup, e.p.Duration, func(ctx context.Context, w, i int) (int64, error) {
					return g.get(ctx, w, reqs[(w*7+i)%len(reqs)])
				})
				name := fmt.Sprintf("%s, %d conn", mib(e.p.SmallSize), c)
				id := fmt.Sprintf("pull.small.c%d", c)
				return []metric{
					{ID: id + ".mibps", Section: "Blob pull", Name: name + ": throughput", Unit: "MiB/s", Higher: true, Value: r.mibps(), Note: errNote(r)},
					{ID: id + ".p50", Section: "Blob pull", Name: name + ": p50", Unit: "ms", Value: ms(r.pct(50))},
					{ID: id + ".p99", Section: "Blob pull", Name: name + ": p99", Unit: "ms", Value: ms(r.pct(99))},
				}, check(r)
			},
		})
	}
	list = append(list, scenario{
		Name:  fmt.Sprintf("blob/pull/%s/c1", mibName(p.BigSize)),
		Title: fmt.Sprintf("blob pull %s, 1 conn", mib(p.BigSize)),
		Needs: []string{"pull"},
		Blob:  true,
		Run: func(ctx context.Context, e *env) ([]metric, error) {
			ref := "/v2/bench/pull/blobs/" + genDigest(bigPullSeed(), e.p.BigSize).String()
			cl := newClient(e.srv.Base, 1)
			defer cl.close()
			r := runCount(ctx, 1, e.p.PullReps, func(ctx context.Context, _, _ int) (int64, error) {
				return cl.get(ctx, ref, nil)
			})
			return []metric{{ID: "pull.big.c1.mibps", Section: "Blob pull", Name: mib(e.p.BigSize) + ", 1 conn: throughput",
				Unit: "MiB/s", Higher: true, Value: r.mibps(), Note: errNote(r)}}, check(r)
		},
	})

	// Tag list.
	pages := []struct{ name, id, query string }{
		{"first page (n=100)", "tags.first", "n=100"},
		{fmt.Sprintf("deep page (n=100, last=%s, 90%% in)", tagName(p.Tags*9/10)), "tags.deep", "n=100&last=" + tagName(p.Tags*9/10)},
	}
	for _, pg := range pages {
		list = append(list, scenario{
			Name:  "tags/" + pg.id[len("tags."):] + "-page",
			Title: "tag list " + pg.name,
			Needs: []string{"tags"},
			Run: func(ctx context.Context, e *env) ([]metric, error) {
				return listPage(ctx, e, "/v2/bench/tags/tags/list?"+pg.query, "tags", pg.id,
					fmt.Sprintf("Tags (bench/tags, %d tags)", e.p.Tags), pg.name)
			},
		})
	}
	list = append(list, scenario{
		Name:  "tags/untag",
		Title: "untag",
		Needs: []string{"tags"},
		Run: func(ctx context.Context, e *env) ([]metric, error) {
			cl := newClient(e.srv.Base, 1)
			defer cl.close()
			step := max(1, e.p.Tags/e.p.Untags)
			r := runCount(ctx, 1, e.p.Untags, func(ctx context.Context, _, i int) (int64, error) {
				return 0, cl.del(ctx, "/v2/bench/tags/manifests/"+tagName(i*step+step/2))
			})
			if st, err := cl.status(ctx, "GET", "/v2/bench/tags/manifests/"+tagName(step/2), accept); err == nil && st != 404 {
				e.notef("untag: GET of an untagged tag answered %d, not 404", st)
			}
			name := fmt.Sprintf("untag one tag of %d (DELETE /manifests/<tag>, %d in a row)", e.p.Tags, e.p.Untags)
			return []metric{
				{ID: "untag.p50", Section: fmt.Sprintf("Tags (bench/tags, %d tags)", e.p.Tags), Name: name + ": p50", Unit: "ms", Value: ms(r.pct(50)), Note: errNote(r)},
				{ID: "untag.max", Section: fmt.Sprintf("Tags (bench/tags, %d tags)", e.p.Tags), Name: name + ": max", Unit: "ms", Value: ms(r.max())},
			}, check(r)
		},
	})
	list = append(list, scenario{
		Name:  "tags/delete-by-digest",
		Title: "delete by digest",
		Needs: []string{"delete"},
		Run: func(ctx context.Context, e *env) ([]metric, error) {
			cl := newClient(e.srv.Base, 1)
			defer cl.close()
			t0 := time.Now()
			err := cl.del(ctx, "/v2/bench/delete/manifests/"+e.deleteDigest.String())
			d := time.Since(t0)
			if err != nil {
				return nil, err
			}
			var note string
			if st, err := cl.status(ctx, "GET", "/v2/bench/delete/manifests/"+deleteTag(0), accept); err == nil && st != 404 {
				note = fmt.Sprintf("afterwards GET of tag %s answered %d, not 404", deleteTag(0), st)
			}
			if b, _, err := cl.getBody(ctx, "/v2/bench/delete/tags/list?n=10", nil); err == nil {
				var l struct{ Tags []string }
				if json.Unmarshal(b, &l) == nil && len(l.Tags) > 0 {
					note += fmt.Sprintf("; tags still listed afterwards (first: %v)", l.Tags)
				}
			}
			if note != "" {
				e.notef("delete by digest: %s", note)
			}
			return []metric{{ID: "delete.digest", Section: fmt.Sprintf("Tags (bench/tags, %d tags)", e.p.Tags),
				Name: fmt.Sprintf("delete by digest a manifest %d tags point at (bench/delete)", e.p.DeleteTags),
				Unit: "ms", Value: ms(d), Note: note}}, nil
		},
	})

	// Catalog.
	cpages := []struct{ name, id, query string }{
		{"first page (n=100)", "catalog.first", "n=100"},
		{fmt.Sprintf("deep page (n=100, last=%s, 90%% in)", repoName(p.Repos*9/10)), "catalog.deep", "n=100&last=" + repoName(p.Repos*9/10)},
	}
	for _, pg := range cpages {
		list = append(list, scenario{
			Name:  "catalog/" + pg.id[len("catalog."):] + "-page",
			Title: "catalog " + pg.name,
			Needs: []string{"catalog"},
			Run: func(ctx context.Context, e *env) ([]metric, error) {
				return listPage(ctx, e, "/v2/_catalog?"+pg.query, "repositories", pg.id,
					fmt.Sprintf("Catalog (%d repositories)", e.p.Repos), pg.name)
			},
		})
	}
	return list
}

// listPage measures one listing page on 1 connection, after checking it
// once: 100 entries and a Link to the next page.
func listPage(ctx context.Context, e *env, ref, field, id, section, name string) ([]metric, error) {
	cl := newClient(e.srv.Base, 1)
	defer cl.close()
	b, hdr, err := cl.getBody(ctx, ref, nil)
	if err != nil {
		return nil, err
	}
	var page map[string]json.RawMessage
	var entries []string
	if err := json.Unmarshal(b, &page); err != nil {
		return nil, fmt.Errorf("GET %s: %v in %.200s", ref, err, b)
	}
	json.Unmarshal(page[field], &entries)
	var note string
	if len(entries) != 100 || hdr.Get("Link") == "" {
		note = fmt.Sprintf("the page held %d entries, Link %q", len(entries), hdr.Get("Link"))
		e.notef("%s %s: %s", section, name, note)
	}
	g := newRawGetter(e.srv.Base, 1)
	defer g.close()
	req := g.request(ref, nil)
	r := runFor(ctx, 1, e.p.Warmup, e.p.Duration, func(ctx context.Context, w, _ int) (int64, error) {
		return g.get(ctx, w, req)
	})
	out := latencyMetrics(id, section, name+", 1 conn", r)
	if note != "" {
		out[0].Note = note
	}
	return out, check(r)
}

func mibName(n int64) string { return fmt.Sprintf("%dMiB", n>>20) }

// sizeID names the blob size in metric ids by role, so quick and full runs
// share them.
func sizeID(n int64, p params) string {
	if n == p.BigSize {
		return "big"
	}
	return "small"
}

func copyClose(w io.Writer, r io.ReadCloser) (int64, error) {
	defer r.Close()
	return io.CopyBuffer(w, r, make([]byte, 256<<10))
}
