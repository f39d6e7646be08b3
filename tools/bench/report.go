package main

import (
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"
)

// usage is what one scenario cost on the machine.
type usage struct {
	Wall        time.Duration
	ServerCPU   float64 // seconds, the registry process
	PostgresCPU float64 // seconds, every postgres process of the machine
	ClientCPU   float64 // seconds, this process (the load generator)
	PeakRSS     int64   // bytes, VmHWM of the registry during the scenario
	Written     int64   // bytes the registry wrote to storage (/proc/<pid>/io write_bytes)
}

type row struct {
	metric
	order  [2]int
	values map[string]float64
	notes  map[string]string
}

type usageRow struct {
	Registry, Scenario string
	U                  usage
}

type failure struct {
	Registry, Scenario string
	Err                error
}

type seedRow struct {
	Registry, Step string
	Took           time.Duration
	Err            error
}

type kv struct{ K, V string }

type report struct {
	o          *options
	p          params
	selected   []scenario
	Registries []string
	Machine    []kv
	Versions   []kv
	Phys       []physResult
	rows       map[string]*row
	Usage      []usageRow
	Failures   []failure
	Seeds      []seedRow
	Mem        []kv // "<registry>: <when>" → RSS
	Notes      map[string][]string
	LoadBefore string
	LoadAfter  string
	Took       time.Duration
}

func newReport(o *options, p params, selected []scenario) *report {
	return &report{o: o, p: p, selected: selected, rows: map[string]*row{}, Notes: map[string][]string{}}
}

func (r *report) addRegistry(name string) {
	if !slices.Contains(r.Registries, name) {
		r.Registries = append(r.Registries, name)
	}
}

func (r *report) failure(reg, scenario string, err error) {
	r.Failures = append(r.Failures, failure{reg, scenario, err})
}

func (r *report) seedTime(reg, step string, d time.Duration, err error) {
	r.Seeds = append(r.Seeds, seedRow{reg, step, d, err})
}

func (r *report) mem(reg, when string, rss int64) {
	r.Mem = append(r.Mem, kv{reg + ", " + when, fmt.Sprintf("%.0f MiB", float64(rss)/(1<<20))})
}

func (r *report) result(reg string, idx int, sc scenario, ms []metric, err error, u usage) {
	r.Usage = append(r.Usage, usageRow{reg, sc.Name, u})
	if err != nil {
		r.failure(reg, sc.Name, err)
	}
	if sc.Blob && err == nil {
		ms = append(ms, metric{ID: "mem." + sc.Name, Section: "Server peak RSS during blob transfers",
			Name: sc.Title, Unit: "MiB", Value: float64(u.PeakRSS) / (1 << 20)})
	}
	for j, m := range ms {
		rw := r.rows[m.ID]
		if rw == nil {
			rw = &row{metric: m, order: [2]int{idx, j}, values: map[string]float64{}, notes: map[string]string{}}
			r.rows[m.ID] = rw
		}
		rw.values[reg] = m.Value
		if m.Note != "" {
			rw.notes[reg] = m.Note
		}
	}
}

// value returns a registry's value of a metric.
func (r *report) value(id, reg string) (float64, bool) {
	rw := r.rows[id]
	if rw == nil {
		return 0, false
	}
	v, ok := rw.values[reg]
	return v, ok
}

func (r *report) phys(id string) (float64, bool) {
	for _, p := range r.Phys {
		if p.ID == id && p.Err == nil {
			return p.Value, true
		}
	}
	return 0, false
}

func fmtVal(unit string, v float64) string {
	switch unit {
	case "req/s", "MiB", "PUTs":
		return fmt.Sprintf("%.0f", v)
	case "ms":
		switch {
		case v < 1:
			return fmt.Sprintf("%.3f", v)
		case v < 10:
			return fmt.Sprintf("%.2f", v)
		case v < 100:
			return fmt.Sprintf("%.1f", v)
		}
		return fmt.Sprintf("%.0f", v)
	}
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// advantage is how many times better Berth is than the peer on a metric
// (>1: Berth better), whichever direction is better.
func advantage(m metric, berth, peer float64) float64 {
	if m.Higher {
		return berth / peer
	}
	return peer / berth
}

func fmtAdv(a float64) string {
	switch {
	case math.IsNaN(a) || math.IsInf(a, 0) || a == 0:
		return "n/a"
	case a >= 0.98 && a <= 1.02:
		return fmt.Sprintf("even (%.2f×)", a)
	case a >= 1:
		return fmt.Sprintf("better %.2f×", a)
	}
	return fmt.Sprintf("WORSE %.2f×", 1/a)
}

const (
	berthName = "Berth"
	peerName  = "Distribution"
)

func (r *report) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p := r.p
	w("# Berth vs CNCF Distribution: benchmark\n\n")
	mode := "full"
	cmd := "scripts/bench.sh"
	if p.Quick {
		mode = "**quick** (scaled down, not the numbers of the issue)"
		cmd = "scripts/bench.sh --quick"
	}
	w("Generated %s by `%s` (mode: %s) in %s.\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), cmd, mode, r.Took.Round(time.Second))
	if r.o.only != "" {
		w("Only the scenarios matching `-only %s` ran.\n", r.o.only)
	}
	w("\nScale: %d tags in bench/tags, %d tags on the manifest deleted by digest, %d repositories in the catalog, blobs of %s and %s, chunked pushes in %s PATCHes; %s warm-up + %s measured per fixed-duration point, %d pushes per small-blob push scenario (twice as many with 8 connections), %d per large-blob push scenario, %d large-blob downloads.",
		p.Tags, p.DeleteTags, p.Repos, mib(p.SmallSize), mib(p.BigSize), mib(p.ChunkSize), p.Warmup, p.Duration, p.SmallPushes, p.BigReps, p.PullReps)
	if p.Quick {
		w(" The full run uses 100,000 tags, 20,000 tags for the delete, 10,000 repositories, 256 MiB blobs and 5 s per point.")
	}
	w("\n\n")

	w("## Machine and versions\n\n| | |\n|---|---|\n")
	for _, e := range append(append([]kv{}, r.Machine...), r.Versions...) {
		w("| %s | %s |\n", e.K, e.V)
	}
	w("| load average before / after | %s / %s |\n", r.LoadBefore, r.LoadAfter)
	w("\nThe load generator (this Go program, HTTP/1.1 keep-alive, every request recorded), the registry under test and PostgreSQL share the same %d cores; both registries are started, then each scenario runs against Berth and right after against Distribution, the other registry idle (so both face the same background load), each on 127.0.0.1, each seeded through its own API. Berth: `berth serve` on a fresh schema of the local PostgreSQL, filesystem blob store, `--log-level warn --gc-disabled`. Distribution: `registry serve` with the filesystem driver, `storage.delete.enabled: true`, the inmemory blob descriptor cache (as in its example configuration and image), access log off, log level warn, upload purging off, `OTEL_TRACES_EXPORTER=none` (its documented way to stop exporting traces; spans are still created).\n\n", numCPU())

	if r.o.berthArgs != "" {
		w("Berth ran with the extra arguments `%s`.\n\n", r.o.berthArgs)
	}
	w("How to read: **Berth/Dist.** is the plain ratio of the two numbers. **Berth vs Dist.** says which registry is better on that row and by how much, whatever the direction (throughput: higher is better; latency, time, memory: lower is better); within 2%% it says even. Fixed-duration points on a shared 2-core machine vary by about ±10%% from run to run: read single-digit percentages as noise. MiB = 2^20 bytes.\n\n")

	r.targets(&b)

	// Result sections, in scenario order.
	rows := make([]*row, 0, len(r.rows))
	for _, rw := range r.rows {
		rows = append(rows, rw)
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Section != rows[j].Section && strings.HasPrefix(rows[i].Section, "Server peak") != strings.HasPrefix(rows[j].Section, "Server peak") {
			return !strings.HasPrefix(rows[i].Section, "Server peak")
		}
		if rows[i].order[0] != rows[j].order[0] {
			return rows[i].order[0] < rows[j].order[0]
		}
		return rows[i].order[1] < rows[j].order[1]
	})
	var sections []string
	bySection := map[string][]*row{}
	for _, rw := range rows {
		if _, ok := bySection[rw.Section]; !ok {
			sections = append(sections, rw.Section)
		}
		bySection[rw.Section] = append(bySection[rw.Section], rw)
	}
	for _, s := range sections {
		w("## %s\n\n", s)
		w("| metric | unit | better | Berth | Distribution | Berth/Dist. | Berth vs Dist. |\n|---|---|---|--:|--:|--:|---|\n")
		var notes []string
		for _, rw := range bySection[s] {
			dir := "lower"
			if rw.Higher {
				dir = "higher"
			}
			cell := func(reg string) string {
				v, ok := rw.values[reg]
				if !ok {
					if !slices.Contains(r.Registries, reg) {
						return "not run"
					}
					return "failed"
				}
				s := fmtVal(rw.Unit, v)
				if n := rw.notes[reg]; n != "" {
					notes = append(notes, fmt.Sprintf("%s, %s: %s", reg, rw.Name, n))
					s += " ⚠"
				}
				return s
			}
			bv, bok := rw.values[berthName]
			pv, pok := rw.values[peerName]
			ratio, adv := "n/a", "n/a"
			if bok && pok && pv != 0 {
				ratio = fmt.Sprintf("%.2f", bv/pv)
				adv = fmtAdv(advantage(rw.metric, bv, pv))
			}
			w("| %s | %s | %s | %s | %s | %s | %s |\n", rw.Name, rw.Unit, dir, cell(berthName), cell(peerName), ratio, adv)
		}
		for _, n := range notes {
			w("\n⚠ %s\n", n)
		}
		w("\n")
	}

	if len(r.Phys) > 0 {
		w("## Physical limits of this machine\n\nFor context, not a registry: the same %s of bytes hashed, copied and sent over loopback, and the request rate of a minimal Go HTTP server (a process of its own, as a registry is) with the same load generator.\n\n| measurement | value | unit | note |\n|---|--:|---|---|\n", mib(p.BigSize))
		for _, ph := range r.Phys {
			if ph.Err != nil {
				w("| %s | failed | | %v |\n", ph.Title, ph.Err)
				continue
			}
			w("| %s | %s | %s | %s |\n", ph.Title, fmtVal(ph.Unit, ph.Value), ph.Unit, ph.Note)
		}
		w("\n")
	}

	if len(r.Usage) > 0 {
		w("## Resources per scenario\n\nCPU seconds (the scheduler's run time of every thread, /proc/<pid>/task/*/schedstat) spent during each scenario: by the registry process, by every `postgres` process of the machine (Berth's database; near zero for Distribution unless something else uses PostgreSQL), by the load generator; with 2 cores, wall × 2 is the whole machine. Peak RSS is the registry's VmHWM, reset before each scenario. Written is what the registry process wrote to storage (write_bytes of /proc/<pid>/io; PostgreSQL's writes are not in it).\n\n")
		w("| scenario | registry | wall s | registry CPU s | PostgreSQL CPU s | client CPU s | peak RSS MiB | written MiB |\n|---|---|--:|--:|--:|--:|--:|--:|\n")
		us := slices.Clone(r.Usage)
		order := map[string]int{}
		for i, s := range r.selected {
			order[s.Name] = i
		}
		sort.SliceStable(us, func(i, j int) bool { return order[us[i].Scenario] < order[us[j].Scenario] })
		for _, u := range us {
			w("| %s | %s | %.1f | %.2f | %.2f | %.2f | %.0f | %.0f |\n", u.Scenario, u.Registry, u.U.Wall.Seconds(), u.U.ServerCPU, u.U.PostgresCPU, u.U.ClientCPU, float64(u.U.PeakRSS)/(1<<20), float64(u.U.Written)/(1<<20))
		}
		w("\n")
	}

	if len(r.Mem) > 0 {
		w("## Registry RSS\n\n| when | RSS |\n|---|--:|\n")
		for _, m := range r.Mem {
			w("| %s | %s |\n", m.K, m.V)
		}
		w("\n")
	}

	if len(r.Seeds) > 0 {
		w("## Seeding (not measured)\n\nThrough each registry's API, %d concurrent requests.\n\n| registry | step | took | error |\n|---|---|--:|---|\n", p.SeedConns)
		for _, s := range r.Seeds {
			e := ""
			if s.Err != nil {
				e = strings.ReplaceAll(s.Err.Error(), "\n", " ")
			}
			w("| %s | %s | %.1f s | %s |\n", s.Registry, s.Step, s.Took.Seconds(), e)
		}
		w("\n")
	}

	w("## Failures and oddities\n\n")
	if len(r.Failures) == 0 && len(r.Notes[berthName]) == 0 && len(r.Notes[peerName]) == 0 {
		w("None.\n")
	}
	if len(r.Failures) == 0 {
		w("No scenario failed on either registry.\n\n")
	}
	for _, f := range r.Failures {
		w("- **%s, %s** failed: %s\n", f.Registry, f.Scenario, firstLine(f.Err.Error()))
		if ex := exchangeOf(f.Err); ex != "" {
			w("\n  ```\n%s  ```\n", indent(ex, "  "))
		} else if strings.Contains(f.Err.Error(), "\n") {
			w("\n  ```\n%s\n  ```\n", indent(f.Err.Error(), "  "))
		}
	}
	// Distribution does not use PostgreSQL: PostgreSQL CPU during one of
	// its scenarios is somebody else's work on this machine.
	for _, u := range r.Usage {
		if u.Registry == peerName && u.U.PostgresCPU > 0.05*u.U.Wall.Seconds()+0.05 {
			w("- **noise**: %s, %s: PostgreSQL used %.2f s of CPU during a Distribution scenario (%.1f s), so something else was running on the machine; treat that row as disturbed.\n",
				u.Registry, u.Scenario, u.U.PostgresCPU, u.U.Wall.Seconds())
		}
	}
	for _, reg := range r.Registries {
		for _, n := range r.Notes[reg] {
			w("- %s: %s\n", reg, n)
		}
	}
	return b.String()
}

// targets checks the numbers Berth is held to.
func (r *report) targets(b *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	type target struct{ what, measured, status string }
	var ts []target
	ratio := func(id string) (float64, float64, float64, bool) {
		bv, ok1 := r.value(id, berthName)
		pv, ok2 := r.value(id, peerName)
		if !ok1 || !ok2 || pv == 0 {
			return bv, pv, 0, false
		}
		return bv, pv, bv / pv, true
	}
	pass := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**NOT MET**"
	}
	if bv, pv, q, ok := ratio("manifest.tag.c32.rps"); ok {
		ts = append(ts, target{"manifest GET by tag, 32 conn: ≥ 2.5× Distribution's requests/s",
			fmt.Sprintf("%.0f vs %.0f req/s = %.2f×", bv, pv, q), pass(q >= 2.5)})
	}
	// ceiling shows what the minimal Go server of the physical limits
	// reaches on the same row, against Distribution: whether the target is
	// within reach of this machine at all.
	ceiling := func(what, physID, rowID, unit string) {
		lim, ok1 := r.phys(physID)
		pv, ok2 := r.value(rowID, peerName)
		if ok1 && ok2 && pv > 0 {
			ts = append(ts, target{"(ceiling) " + what, fmt.Sprintf("%.0f %s = %.2f× Distribution", lim, unit, lim/pv), "context"})
		}
	}
	ceiling("minimal Go net/http server, GET of a manifest-sized body from memory, 32 conn", "phys.tiny.c32", "manifest.tag.c32.rps", "req/s")
	for _, c := range []int{1, 8} {
		if bv, pv, q, ok := ratio(fmt.Sprintf("pull.small.c%d.mibps", c)); ok {
			ts = append(ts, target{fmt.Sprintf("%s blob GET, %d conn: ≥ 3.5× Distribution's throughput", mib(r.p.SmallSize), c),
				fmt.Sprintf("%.0f vs %.0f MiB/s = %.2f×", bv, pv, q), pass(q >= 3.5)})
		}
		ceiling(fmt.Sprintf("minimal Go net/http server, sendfile of a %s file, %d conn", mib(r.p.SmallSize), c),
			fmt.Sprintf("phys.small.c%d", c), fmt.Sprintf("pull.small.c%d.mibps", c), "MiB/s")
	}
	gosha, haveSha := r.phys("phys.gosha256")
	for _, rw := range r.sortedRows("push.") {
		if !strings.HasSuffix(rw.ID, ".mibps") {
			continue
		}
		if bv, pv, q, ok := ratio(rw.ID); ok {
			ts = append(ts, target{"blob push " + strings.TrimSuffix(rw.Name, ": throughput") + ": ≥ 1× Distribution",
				fmt.Sprintf("%.0f vs %.0f MiB/s = %.2f×", bv, pv, q), pass(q >= 1)})
		}
		if bv, ok := r.value(rw.ID, berthName); ok && haveSha {
			ts = append(ts, target{"blob push " + strings.TrimSuffix(rw.Name, ": throughput") + ": ≥ 0.8× Go's sha256 rate",
				fmt.Sprintf("%.0f MiB/s = %.2f× of %.0f MiB/s", bv, bv/gosha, gosha), pass(bv >= 0.8*gosha)})
		}
	}
	if put, ok := r.phys("phys.httpput"); ok && haveSha {
		ts = append(ts, target{"(ceiling) minimal Go net/http server, PUT of the large blob: writes and hashes each MiB in turn, then fsyncs (one goroutine)",
			fmt.Sprintf("%.0f MiB/s = %.2f× Go's sha256 rate", put, put/gosha), "context"})
	}
	// A registry that acknowledges a push only once the bytes are durable
	// cannot beat the durable copy of a file, which neither hashes nor
	// reads a socket.
	if cp, ok := r.phys("phys.cpsync"); ok && haveSha {
		ts = append(ts, target{"(ceiling) cp of the large blob's file, then sync: a durable write alone, no network, no hashing",
			fmt.Sprintf("%.0f MiB/s = %.2f× Go's sha256 rate", cp, cp/gosha), "context"})
	}
	for _, id := range []string{"tags.first", "tags.deep"} {
		p50, ok1 := r.value(id+".p50", berthName)
		p99, ok2 := r.value(id+".p99", berthName)
		if ok1 && ok2 {
			ts = append(ts, target{"tag list " + strings.TrimSuffix(r.rows[id+".p50"].Name, ", 1 conn: p50") + ": < 10 ms",
				fmt.Sprintf("p50 %s ms, p99 %s ms", fmtVal("ms", p50), fmtVal("ms", p99)), pass(p99 < 10)})
		}
	}
	if v, ok := r.value("delete.digest", berthName); ok {
		what := "delete by digest of a manifest 20,000 tags point at: < 1 s"
		if r.p.DeleteTags != 20_000 {
			what = fmt.Sprintf("delete by digest of a manifest %d tags point at (target is for 20,000): < 1 s", r.p.DeleteTags)
		}
		ts = append(ts, target{what, fmt.Sprintf("%s ms", fmtVal("ms", v)), pass(v < 1000)})
	}
	// Flat memory: the large-blob scenarios against the small-blob ones.
	for _, pair := range [][2]string{
		{"blob/push-monolithic/%s/c1", "monolithic push"},
		{"blob/push-chunked/%s/c1", "chunked push"},
		{"blob/pull/%s/c1", "pull"},
	} {
		small, ok1 := r.value("mem."+fmt.Sprintf(pair[0], mibName(r.p.SmallSize)), berthName)
		big, ok2 := r.value("mem."+fmt.Sprintf(pair[0], mibName(r.p.BigSize)), berthName)
		if ok1 && ok2 {
			ts = append(ts, target{fmt.Sprintf("flat server memory, %s: peak RSS with %s ≤ with %s + 32 MiB", pair[1], mib(r.p.BigSize), mib(r.p.SmallSize)),
				fmt.Sprintf("%.0f MiB vs %.0f MiB", big, small), pass(big <= small+32)})
		}
	}
	for _, m := range []struct{ id, what string }{{"manifestput.c64", "27k layers"}, {"manifestput.annotations.c64", "40k annotations"}} {
		if peak, ok := r.value(m.id+".peakrss", berthName); ok {
			fives, _ := r.value(m.id+".5xx", berthName)
			ts = append(ts, target{fmt.Sprintf("64 concurrent PUTs of 4 MiB manifests (%s): server peak RSS < 256 MiB, no 5xx", m.what),
				fmt.Sprintf("%.0f MiB, %.0f answered 5xx", peak, fives), pass(peak < 256 && fives == 0)})
		}
	}
	if len(ts) == 0 {
		return
	}
	w("## Targets\n\nWhat Berth is held to, checked on this run (informative: nothing fails on them).\n\n| target | measured (Berth vs Distribution) | status |\n|---|---|---|\n")
	for _, t := range ts {
		w("| %s | %s | %s |\n", t.what, t.measured, t.status)
	}
	w("\n")
}

func (r *report) sortedRows(prefix string) []*row {
	var out []*row
	for id, rw := range r.rows {
		if strings.HasPrefix(id, prefix) {
			out = append(out, rw)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].order[0] != out[j].order[0] {
			return out[i].order[0] < out[j].order[0]
		}
		return out[i].order[1] < out[j].order[1]
	})
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n") + "\n"
}

func sortedKeys(h http.Header) []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
