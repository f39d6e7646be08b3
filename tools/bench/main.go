// Command bench measures Berth against the reference registry, CNCF
// Distribution, on this machine, in one run: manifest GETs, PUTs of the
// largest manifests many at once, blob pushes and pulls, tag lists,
// deletes and the catalog, each against both registries
// one at a time, plus the physical limits of the machine (hashing, copying,
// loopback HTTP) for context. It writes a markdown report with the ratios
// and prints it.
//
//	go run ./tools/bench [-quick] [-only <regexp>] [-out bench/results.md]
//
// scripts/bench.sh builds both registries and runs it; see there.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

type options struct {
	quick       bool
	out         string
	only        string
	berthBin    string
	registryBin string
	dbURL       string
	workDir     string
	registries  string
	seedConns   int
	profile     string
	berthArgs   string
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func main() {
	if cfg := os.Getenv(physServerEnv); cfg != "" {
		if err := runPhysServer(cfg); err != nil {
			fmt.Fprintln(os.Stderr, "bench: minimal server:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	defDB := os.Getenv("BERTH_TEST_DATABASE_URL")
	if defDB == "" {
		defDB = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	flag.BoolVar(&o.quick, "quick", false, "scaled-down run (fewer tags, repositories and requests, 64 MiB blobs), a few minutes")
	flag.StringVar(&o.out, "out", "bench/results.md", "where to write the markdown report (empty: do not write)")
	flag.StringVar(&o.only, "only", "", "run only the scenarios whose name matches this regexp (e.g. 'manifest/|phys/'); -list shows the names")
	flag.StringVar(&o.berthBin, "berth", ".cache/berth", "the berth binary")
	flag.StringVar(&o.registryBin, "registry", ".cache/bin/registry", "the CNCF Distribution registry binary")
	flag.StringVar(&o.dbURL, "database-url", defDB, "PostgreSQL for Berth (a schema is created and dropped); default $BERTH_TEST_DATABASE_URL")
	flag.StringVar(&o.workDir, "work-dir", "", "directory for the blob stores and test files (default: a new temporary directory, removed afterwards)")
	flag.StringVar(&o.registries, "registries", "berth,distribution", "which registries to measure, comma-separated")
	flag.IntVar(&o.seedConns, "seed-conns", 16, "concurrent requests while seeding")
	flag.StringVar(&o.berthArgs, "berth-args", "", "more arguments for berth serve, space-separated (e.g. --manifest-budget=1GiB)")
	flag.StringVar(&o.profile, "profile", "", "record a system-wide perf profile of the scenarios matching this regexp, summarised in <dir of -out>/profiles/")
	list := flag.Bool("list", false, "print the scenario names and exit")
	flag.Parse()

	p := fullParams()
	if o.quick {
		p = quickParams()
	}
	p.SeedConns = o.seedConns
	only, err := regexp.Compile(o.only)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: -only:", err)
		os.Exit(2)
	}
	all := scenarios(p)
	if *list {
		for _, n := range physNames {
			fmt.Println(n)
		}
		for _, s := range all {
			fmt.Println(s.Name)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, &o, p, only, all); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o *options, p params, only *regexp.Regexp, all []scenario) error {
	began := time.Now()
	work := o.workDir
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "berth-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	var selected []scenario
	for _, s := range all {
		if only.MatchString(s.Name) {
			selected = append(selected, s)
		}
	}
	rep := newReport(o, p, selected)
	rep.Machine = machineInfo(work)
	rep.Versions = versions(ctx, o)
	rep.LoadBefore = loadAvg()

	physDir := filepath.Join(work, "phys")
	os.MkdirAll(physDir, 0o755)
	logf("bench: physical limits (%s file in %s)", mib(p.BigSize), physDir)
	rep.Phys = physical(ctx, p, physDir, only)
	os.RemoveAll(physDir)

	var regs []*regRun
	defer func() {
		for _, rr := range regs {
			rr.stop(work)
		}
	}()
	if len(selected) > 0 {
		for _, name := range strings.Split(o.registries, ",") {
			var start func(context.Context, *options, string) (*server, error)
			var display string
			switch strings.TrimSpace(name) {
			case "berth":
				start, display = startBerth, berthName
			case "distribution":
				start, display = startDistribution, peerName
			default:
				return fmt.Errorf("unknown registry %q (berth, distribution)", name)
			}
			rep.addRegistry(display)
			srv, err := start(ctx, o, work)
			if err != nil {
				rep.failure(display, "start", err)
				logf("bench: %v", err)
				continue
			}
			logf("bench: %s serving at %s (pid %d)", srv.Name, srv.Base, srv.pid())
			_, idle, _ := srv.memory()
			rep.mem(srv.Name, "idle after start", idle)
			rr := &regRun{srv: srv, seeded: map[string]error{}, profileDir: filepath.Join(filepath.Dir(o.out), "profiles"),
				e: &env{o: o, p: p, srv: srv, seedClient: newClient(srv.Base, p.SeedConns), img: newImage()}}
			if o.profile != "" {
				if rr.profile, err = regexp.Compile(o.profile); err != nil {
					return fmt.Errorf("-profile: %w", err)
				}
			}
			regs = append(regs, rr)
		}
	}
	// Scenario by scenario, each registry in turn while the other idles:
	// both face the same background load of the machine, whatever it is.
	for i, sc := range selected {
		for _, rr := range regs {
			if ctx.Err() != nil || rr.gone {
				continue
			}
			rr.run(ctx, i, sc, rep)
		}
	}
	for _, rr := range regs {
		if !rr.gone {
			_, rss, _ := rr.srv.memory()
			rep.mem(rr.srv.Name, "at the end", rss)
		}
		rep.Notes[rr.srv.Name] = append(rep.Notes[rr.srv.Name], rr.e.notes...)
		if n := rr.srv.logSize(); n > 0 {
			why := ""
			if rr.srv.Name == peerName {
				why = " (Distribution logs every 4xx answer at level error, among them the 404s of the bench's own checks that untagged and deleted tags are gone)"
			}
			rep.Notes[rr.srv.Name] = append(rep.Notes[rr.srv.Name], fmt.Sprintf("the server logged %d bytes at level warn%s; last lines:\n\n```\n%s\n```", n, why, rr.srv.logTail(8)))
		}
	}
	rep.LoadAfter = loadAvg()
	rep.Took = time.Since(began)
	text := rep.markdown()
	fmt.Println(text)
	if o.out != "" {
		if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
			return err
		}
		logf("bench: wrote %s (%s in all)", o.out, rep.Took.Round(time.Second))
	}
	return nil
}

// regRun is one registry under test.
type regRun struct {
	profile    *regexp.Regexp
	profileDir string
	srv        *server
	e          *env
	seeded     map[string]error
	gone       bool // the process died
}

func (rr *regRun) stop(work string) {
	t0 := time.Now()
	rr.e.seedClient.close()
	rr.srv.stop()
	os.RemoveAll(filepath.Join(work, strings.ToLower(rr.srv.Name)))
	logf("bench: %s stopped, its data removed in %s", rr.srv.Name, time.Since(t0).Round(time.Millisecond))
}

// ensure runs a seeding step (and the steps it needs) once.
func (rr *regRun) ensure(ctx context.Context, step string, rep *report) error {
	if err, done := rr.seeded[step]; done {
		return err
	}
	for _, dep := range seedDeps[step] {
		if err := rr.ensure(ctx, dep, rep); err != nil {
			return err
		}
	}
	t0 := time.Now()
	err := rr.e.seed(ctx, step)
	rr.seeded[step] = err
	rep.seedTime(rr.srv.Name, step, time.Since(t0), err)
	logf("bench: %s: seeded %s in %s (err: %v)", rr.srv.Name, step, time.Since(t0).Round(time.Millisecond), err)
	return err
}

// run runs one scenario against the registry, with what it costs the
// machine.
func (rr *regRun) run(ctx context.Context, idx int, sc scenario, rep *report) {
	srv, e := rr.srv, rr.e
	for _, step := range sc.Needs {
		if err := rr.ensure(ctx, step, rep); err != nil {
			rep.failure(srv.Name, sc.Name, fmt.Errorf("seeding: %w", err))
			return
		}
	}
	// Write back what earlier scenarios left dirty in the page cache, so
	// that its write-back does not land in this scenario's time.
	syscall.Sync()
	if err := srv.resetPeakRSS(); err != nil {
		e.notef("cannot reset the peak RSS: %v", err)
	}
	var stopPerf func() (string, error)
	if rr.profile != nil && rr.profile.MatchString(sc.Name) {
		var err error
		if stopPerf, err = startPerf(rr.profileDir, srv.Name, sc.Name); err != nil {
			e.notef("profile of %s: %v", sc.Name, err)
		}
	}
	self := os.Getpid()
	cpu0, pg0, cl0, io0 := cpuSeconds(srv.pid()), postgresCPUSeconds(), cpuSeconds(self), writeBytes(srv.pid())
	t0 := time.Now()
	ms, err := sc.Run(ctx, e)
	wall := time.Since(t0)
	cpu1, pg1, cl1, io1 := cpuSeconds(srv.pid()), postgresCPUSeconds(), cpuSeconds(self), writeBytes(srv.pid())
	if stopPerf != nil {
		txt, err := stopPerf()
		if err != nil {
			e.notef("profile of %s: %v", sc.Name, err)
		} else {
			e.notef("%s ran under perf (numbers perturbed); profile: %s", sc.Name, txt)
		}
	}
	peak, _, merr := srv.memory()
	if merr != nil {
		rr.gone = true
		err = fmt.Errorf("%v (and the server is gone: %v)\n%s", err, merr, srv.logTail(30))
	}
	rep.result(srv.Name, idx, sc, ms, err, usage{Wall: wall, ServerCPU: cpu1 - cpu0, PostgresCPU: pg1 - pg0,
		ClientCPU: cl1 - cl0, PeakRSS: peak, Written: io1 - io0})
	status := "ok"
	if err != nil {
		status = "FAILED: " + firstLine(err.Error())
	}
	logf("bench: %-12s %-32s %6.1fs  %s", srv.Name, sc.Name, wall.Seconds(), status)
}
