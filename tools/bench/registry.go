package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// server is one registry process under test.
type server struct {
	Name    string // as shown in the report: "Berth", "Distribution"
	Base    string // http://127.0.0.1:<port>
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
	cleanup []func()
}

// freePort asks the kernel for a free port on 127.0.0.1. Neither registry
// prints its address at log level warn, so the bench picks the port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs the command, logging to logPath, and waits for GET /v2/.
func (s *server) start(ctx context.Context, bin string, args []string, env []string) error {
	logf, err := os.Create(s.logPath)
	if err != nil {
		return err
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", bin, err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); logf.Close(); close(s.exited) }()
	alive := func() error {
		select {
		case <-s.exited:
			return fmt.Errorf("%s exited: %s\n%s", s.Name, s.cmd.ProcessState, s.logTail(40))
		default:
			return nil
		}
	}
	if err := waitReady(ctx, s.Base, alive); err != nil {
		s.stop()
		return fmt.Errorf("%s: %w\n%s", s.Name, err, s.logTail(40))
	}
	return nil
}

// stop sends SIGTERM, then SIGKILL after 10 s, and runs the cleanups.
func (s *server) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-s.exited
		}
	}
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		s.cleanup[i]()
	}
	s.cleanup = nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) logTail(lines int) string {
	b, _ := os.ReadFile(s.logPath)
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// logSize is the size of the server's log, to report what it logged.
func (s *server) logSize() int64 {
	fi, err := os.Stat(s.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// resetPeakRSS resets VmHWM to the current RSS (clear_refs 5).
func (s *server) resetPeakRSS() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", s.pid()), []byte("5"), 0)
}

// memory returns VmHWM and VmRSS in bytes.
func (s *server) memory() (peak, rss int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.pid()))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmHWM:":
			peak = kb << 10
		case "VmRSS:":
			rss = kb << 10
		}
	}
	return peak, rss, sc.Err()
}

// cpuSeconds is the CPU time of the process so far: the scheduler's
// precise run time of each of its threads (/proc/<pid>/task/*/schedstat),
// not the tick-sampled utime and stime.
func cpuSeconds(pid int) float64 {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0
	}
	total := 0.0
	for _, e := range ents {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, e.Name()))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			ns, _ := strconv.ParseFloat(f[0], 64)
			total += ns / 1e9
		}
	}
	return total
}

// postgresCPUSeconds sums the CPU time of every postgres process on the
// machine (the server Berth uses runs here; other users of it count too).
func postgresCPUSeconds() float64 {
	ents, _ := os.ReadDir("/proc")
	total := 0.0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		total += cpuSeconds(pid)
	}
	return total
}

// startBerth runs `berth serve` on a fresh schema of the test database.
func startBerth(ctx context.Context, o *options, work string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "berth")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	schema := fmt.Sprintf("bench_%d_%d", os.Getpid(), time.Now().Unix())
	if err := pgExec(ctx, o.dbURL, "CREATE SCHEMA "+schema); err != nil {
		return nil, fmt.Errorf("create schema: %w", err)
	}
	s := &server{Name: "Berth", Base: fmt.Sprintf("http://127.0.0.1:%d", port), logPath: filepath.Join(work, "berth.log")}
	s.cleanup = append(s.cleanup, func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := pgExec(ctx, o.dbURL, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			logf("bench: drop schema %s: %v", schema, err)
		}
	})
	sep := "?"
	if strings.Contains(o.dbURL, "?") {
		sep = "&"
	}
	args := []string{"serve",
		"--database-url", o.dbURL + sep + "search_path=" + schema,
		"--storage-dir", filepath.Join(dir, "blobs"),
		"--data-dir", filepath.Join(dir, "data"),
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--log-level", "warn",
		"--gc-disabled",
	}
	args = append(args, strings.Fields(o.berthArgs)...)
	if err := s.start(ctx, o.berthBin, args, nil); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// distributionConfig is the reference registry's configuration: the
// filesystem driver, deletes enabled, the inmemory blob descriptor cache
// (as in its example configuration and its container image), no access
// log (Berth at warn does not log requests either), no upload purging
// (Berth runs with --gc-disabled).
const distributionConfig = `version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:%d
  secret: berth-bench-not-a-secret
`

// startDistribution runs `registry serve` on a fresh directory.
func startDistribution(ctx context.Context, o *options, work string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "distribution")
	if err := os.MkdirAll(filepath.Join(dir, "root"), 0o755); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, distributionConfig, filepath.Join(dir, "root"), port), 0o644); err != nil {
		return nil, err
	}
	s := &server{Name: "Distribution", Base: fmt.Sprintf("http://127.0.0.1:%d", port), logPath: filepath.Join(work, "distribution.log")}
	// The documented way to stop the registry exporting traces to an
	// OTLP collector on localhost:4318 (docs/content/about/deploying.md).
	env := []string{"OTEL_TRACES_EXPORTER=none"}
	if err := s.start(ctx, o.registryBin, []string{"serve", cfg}, env); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

func pgExec(ctx context.Context, url, sql string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

func pgVersion(ctx context.Context, url string) (string, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var v string
	err = conn.QueryRow(ctx, "SELECT version()").Scan(&v)
	return v, err
}

var errSkipped = errors.New("skipped")

// writeBytes is what the process caused to be written to storage
// (/proc/<pid>/io write_bytes), in bytes.
func writeBytes(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "write_bytes: "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}
