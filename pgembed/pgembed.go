// Package pgembed runs a private PostgreSQL server from the PostgreSQL
// binaries installed on the machine.
//
// Berth keeps its metadata in PostgreSQL. Operators who already run a server
// point berth at it with BERTH_DATABASE_URL (--database-url); everyone else (a
// laptop, a single VM, CI) should not have to set up a database just to run
// a registry. For them `berth serve` starts its own server in
// <data dir>/postgres: the cluster is created on first use, listens on a unix
// socket only (no TCP port to collide with or to secure), trusts the local
// role "berth", and is stopped when berth stops. Nothing is downloaded or
// bundled; the server is whatever PostgreSQL the machine has installed.
//
// The package talks to the server only through PostgreSQL's own programs
// (initdb, postgres, pg_isready, psql), so it does not import a database
// driver; only package db does that.
package pgembed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNoBinaries is returned when no PostgreSQL server installation is found.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries (initdb, postgres) found on PATH or under /usr/lib/postgresql/*/bin; install PostgreSQL or set BERTH_DATABASE_URL (--database-url) to use an existing server")

const (
	role     = "berth" // superuser created by initdb, trusted over the socket
	database = "berth" // database berth uses; created on first start

	// port only names the socket file (.s.PGSQL.5432): there is no TCP
	// listener, and the socket directory is private, so it cannot clash
	// with another server.
	port = 5432

	// maxSocketPath is the longest unix socket path we hand to postgres:
	// sun_path holds 108 bytes on Linux and 104 on the BSDs and macOS,
	// including the terminating NUL.
	maxSocketPath = 103
)

// Options configures Start.
type Options struct {
	// Dir is the data directory of the cluster, e.g. <data dir>/postgres.
	// It is created if missing; initdb runs when it holds no cluster yet.
	Dir string

	// BinDir is the directory holding initdb and postgres. When empty,
	// FindBinaries chooses it.
	BinDir string

	// Logger receives pgembed's own messages; nil means slog.Default().
	// The output of initdb and postgres goes to the file <Dir>.log next to
	// the cluster (e.g. <data dir>/postgres.log). It is not inside Dir
	// because initdb insists on an empty directory.
	Logger *slog.Logger
}

// Server is a running PostgreSQL server started by Start.
type Server struct {
	dir     string // absolute data directory
	binDir  string
	sockDir string // directory of the unix socket
	tmpSock bool   // sockDir was created by Start and is removed by Stop
	cred    *syscall.Credential
	log     *slog.Logger

	logPath  string
	logFile  *os.File
	logStart int64 // size of the log file when Start began

	cmd     *exec.Cmd
	exited  chan struct{} // closed once postgres has exited
	waitErr error         // postgres's exit status; read after exited is closed

	stopMu  sync.Mutex
	stopped bool
	stopErr error
}

// FindBinaries returns the directory holding initdb and postgres: PATH first,
// then the highest version under /usr/lib/postgresql/*/bin (Debian layout).
func FindBinaries() (string, error) {
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		if d == "" || !filepath.IsAbs(d) {
			continue
		}
		initdb := filepath.Join(d, "initdb")
		if !isExecutable(initdb) {
			continue
		}
		// Prefer the directory the symlink points into (/usr/local/bin/initdb
		// may link to /usr/lib/postgresql/15/bin/initdb): pg_isready and psql
		// of the same version live there, not next to the link.
		candidates := []string{d}
		if real, err := filepath.EvalSymlinks(initdb); err == nil {
			candidates = []string{filepath.Dir(real), d}
		}
		for _, c := range candidates {
			if isExecutable(filepath.Join(c, "postgres")) {
				return c, nil
			}
		}
	}

	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { // highest version first
		return slices.Compare(versionOf(b), versionOf(a))
	})
	for _, d := range dirs {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", ErrNoBinaries
}

// versionOf parses "/usr/lib/postgresql/9.6/bin" into [9 6]; nil if the
// directory is not named like a version.
func versionOf(binDir string) []int {
	var v []int
	for _, part := range strings.Split(filepath.Base(filepath.Dir(binDir)), ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			return nil
		}
		v = append(v, n)
	}
	return v
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Start initialises the cluster on first use (initdb with trust auth for a
// local role named "berth", UTF8, locale C), starts postgres listening on a
// unix socket only, waits until it accepts connections, makes sure a database
// named "berth" exists, and returns. ctx bounds the start-up only; the server
// runs until Stop.
//
// If berth is running as root, the server runs as the "postgres" user (or
// "nobody"), and every parent directory of Dir must be searchable by that user.
func Start(ctx context.Context, opts Options) (_ *Server, err error) {
	if opts.Dir == "" {
		return nil, errors.New("pgembed: Options.Dir is empty")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	s := &Server{dir: dir, binDir: opts.BinDir, log: opts.Logger, logPath: dir + ".log"}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.binDir == "" {
		if s.binDir, err = FindBinaries(); err != nil {
			return nil, err
		}
	}
	for _, name := range []string{"initdb", "postgres"} {
		if !isExecutable(filepath.Join(s.binDir, name)) {
			return nil, fmt.Errorf("pgembed: %s not found in %s: %w", name, s.binDir, ErrNoBinaries)
		}
	}
	if s.tool("psql") == "" {
		return nil, fmt.Errorf("pgembed: psql not found in %s or on PATH; it is needed to create the %q database", s.binDir, database)
	}
	if s.cred, err = serverCredential(); err != nil {
		return nil, err
	}

	// Parents we create must be searchable by the server user; the cluster
	// directory itself must be private to it (postgres checks for 0700/0750).
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	if err := s.chown(dir); err != nil {
		return nil, err
	}

	// The log is opened by us and inherited by the children, so its
	// ownership does not matter to them.
	if s.logFile, err = os.OpenFile(s.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640); err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	if fi, err := s.logFile.Stat(); err == nil {
		s.logStart = fi.Size()
	}
	fmt.Fprintf(s.logFile, "--- pgembed: starting PostgreSQL in %s at %s ---\n", dir, time.Now().Format(time.RFC3339))
	defer func() {
		if err != nil {
			if s.cmd != nil { // started but not usable: take it down again
				stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				_ = s.stop(stopCtx)
			} else {
				s.cleanup()
			}
			tail := s.logTail()
			err = fmt.Errorf("pgembed: %w%s%s", err, s.userHint(err.Error()+tail), tail)
		}
	}()

	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); errors.Is(err, fs.ErrNotExist) {
		s.log.Info("initialising PostgreSQL cluster", "dir", dir, "bin", s.binDir)
		initdb := s.command(ctx, true, "initdb",
			"--pgdata="+dir, "--username="+role, "--auth=trust",
			"--encoding=UTF8", "--locale=C")
		initdb.Stdout, initdb.Stderr = s.logFile, s.logFile
		if err := runLocked(initdb); err != nil {
			return nil, fmt.Errorf("initdb: %w", err)
		}
	}

	if err := s.chooseSocketDir(); err != nil {
		return nil, err
	}
	if err := s.clearLeftover(ctx); err != nil {
		return nil, err
	}
	if err := s.startServer(); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	if err := s.ensureDatabase(ctx); err != nil {
		return nil, err
	}
	s.log.Info("PostgreSQL started", "dir", dir, "socket_dir", s.sockDir, "pid", s.cmd.Process.Pid, "log", s.logPath)
	return s, nil
}

// serverCredential returns whom to run initdb and postgres as: nil (ourselves)
// unless we are root. Both programs refuse to run as root, because a
// superuser-owned server could be turned against the whole machine through
// SQL (COPY ... TO PROGRAM, untrusted languages). Berth itself often runs as
// root in containers and CI, so there the server gets an unprivileged
// account: "postgres", which PostgreSQL packages create for exactly this
// purpose, else "nobody".
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		// Groups is empty, so the child also drops root's supplementary groups.
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New(`pgembed: running as root, but neither a "postgres" nor a "nobody" user exists to run PostgreSQL as`)
}

func (s *Server) chown(path string) error {
	if s.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
		return fmt.Errorf("pgembed: %w", err)
	}
	return nil
}

// chooseSocketDir puts the socket in the data directory when the path fits
// into a sockaddr_un, and otherwise in a short private directory under /tmp.
func (s *Server) chooseSocketDir() error {
	if len(filepath.Join(s.dir, socketName)) <= maxSocketPath {
		s.sockDir = s.dir
		return nil
	}
	d, err := os.MkdirTemp("/tmp", "berth-pg-")
	if err != nil {
		return err
	}
	s.sockDir, s.tmpSock = d, true
	return s.chown(d)
}

var socketName = ".s.PGSQL." + strconv.Itoa(port)

// clearLeftover deals with a postmaster.pid left behind by an earlier run.
//
// If the process it names is gone, postgres replaces the file itself. If the
// pid now belongs to an unrelated process, postgres would refuse to start
// when that process runs as the same user, so the file is removed. If it is
// a postmaster for this directory, it is left over from a berth that died
// without stopping it: it is shut down (fast) and we wait for it, bounded by
// ctx. A postmaster changes into its data directory at start and never
// leaves, so its /proc/<pid>/cwd tells which cluster it serves.
func (s *Server) clearLeftover(ctx context.Context) error {
	pidFile := filepath.Join(s.dir, "postmaster.pid")
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return nil // no pid file, or unreadable: postgres will say what is wrong
	}
	line, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 || pid == os.Getpid() || !running(pid) {
		return nil
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return fmt.Errorf("%s names running process %d, which could not be inspected (%v); stop it, or delete the file if it is not a PostgreSQL server for this directory", pidFile, pid, err)
	}
	realDir, _ := filepath.EvalSymlinks(s.dir)
	if cwd != s.dir && cwd != realDir {
		s.log.Info("removing stale postmaster.pid; its pid now belongs to another process", "file", pidFile, "pid", pid)
		_ = os.Remove(filepath.Join(s.sockDir, socketName+".lock")) // holds the same pid
		return os.Remove(pidFile)
	}
	argv0, _, _ := bytes.Cut(readFile(fmt.Sprintf("/proc/%d/cmdline", pid)), []byte{0})
	if name := filepath.Base(string(argv0)); name != "postgres" && name != "postmaster" {
		return fmt.Errorf("%s names process %d (%q), which works in this directory but is not a postmaster; stop it first", pidFile, pid, argv0)
	}

	// With Pdeathsig the leftover was already asked to stop (smart shutdown)
	// when its berth died; SIGINT makes it stop without waiting for sessions.
	s.log.Warn("stopping PostgreSQL left over from an earlier run", "pid", pid, "dir", s.dir)
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping leftover postgres (pid %d): %w", pid, err)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for running(pid) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for leftover postgres (pid %d) to exit: %w", pid, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// running reports whether pid is a live process (not a zombie). Like
// postgres, it treats a process we may not signal as someone else's.
func running(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat := string(readFile(fmt.Sprintf("/proc/%d/stat", pid)))
	if i := strings.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	return true
}

func readFile(path string) []byte {
	b, _ := os.ReadFile(path)
	return b
}

// startServer starts postgres in the background.
func (s *Server) startServer() error {
	s.cmd = s.command(context.Background(), true, "postgres",
		"-D", s.dir, "-k", s.sockDir, "-p", strconv.Itoa(port), "-c", "listen_addresses=")
	s.cmd.Stdout, s.cmd.Stderr = s.logFile, s.logFile
	// Own process group: a Ctrl-C in berth's terminal must reach berth only,
	// so berth can finish its requests before it stops the database.
	s.cmd.SysProcAttr.Setpgid = true
	s.exited = make(chan struct{})
	err := startLocked(s.cmd, func(err error) {
		s.waitErr = err
		close(s.exited)
	})
	if err != nil {
		s.cmd = nil
		return fmt.Errorf("starting postgres: %w", err)
	}
	return nil
}

// waitReady polls until the server accepts connections, it exits, or ctx
// ends. The socket file appears before the server has finished recovery, so
// a successful connect alone does not mean ready; pg_isready and psql wait for
// the real answer.
func (s *Server) waitReady(ctx context.Context) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var probe *exec.Cmd
		if s.tool("pg_isready") != "" {
			probe = s.command(ctx, false, "pg_isready", "-q", "-t", "5", "-d", s.url("postgres"))
		} else {
			probe = s.psql(ctx, "postgres", "SELECT 1")
		}
		if runLocked(probe) == nil {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("postgres exited during start-up: %v", s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("waiting for postgres to accept connections: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// ensureDatabase creates the "berth" database unless it exists. It asks
// first rather than matching "already exists" in an error message, which
// may be translated.
func (s *Server) ensureDatabase(ctx context.Context) error {
	q := s.psql(ctx, "postgres", "SELECT count(*) FROM pg_database WHERE datname = '"+database+"'")
	out, err := output(q)
	if err != nil {
		return fmt.Errorf("looking for database %q: %w", database, err)
	}
	if strings.TrimSpace(out) == "1" {
		return nil
	}
	s.log.Info("creating database", "name", database)
	if _, err := output(s.psql(ctx, "postgres", "CREATE DATABASE "+database)); err != nil {
		return fmt.Errorf("creating database %q: %w", database, err)
	}
	return nil
}

// psql builds a psql command that runs one SQL statement in db.
func (s *Server) psql(ctx context.Context, db, sql string) *exec.Cmd {
	return s.command(ctx, false, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-d", s.url(db), "-c", sql)
}

// output runs cmd and returns its stdout; the error carries its stderr.
func output(cmd *exec.Cmd) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := runLocked(cmd); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return "", fmt.Errorf("%w: %s", err, msg)
		}
		return "", err
	}
	return stdout.String(), nil
}

// tool returns the path of a PostgreSQL program: from the bin dir, else from
// PATH (distributions may put the client programs elsewhere), else "".
func (s *Server) tool(name string) string {
	if p := filepath.Join(s.binDir, name); isExecutable(p) {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return ""
}

// command builds a command for a PostgreSQL program. asServer programs
// (initdb, postgres) run as the server user; clients run as ourselves.
func (s *Server) command(ctx context.Context, asServer bool, name string, args ...string) *exec.Cmd {
	path := s.tool(name)
	if asServer {
		path = filepath.Join(s.binDir, name)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	// "/" because the server user may not be allowed into our working
	// directory, and initdb fails when it cannot resolve it.
	cmd.Dir = "/"
	// Drop PGHOST, PGDATA, PGOPTIONS, ... meant for some other server.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var cred *syscall.Credential
	if asServer {
		cred = s.cred
	}
	cmd.SysProcAttr = sysProcAttr(cred)
	// On cancellation, SIGTERM lets initdb remove a half-made cluster.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// startLocked starts cmd and waits for it on one goroutine locked to its OS
// thread, calling done with the result of Wait.
//
// The kernel sends the Pdeathsig signal (see sysProcAttr) when the *thread*
// that forked the child exits, not the process. The Go runtime ends a thread
// when a goroutine locked to it exits, and an unlocked goroutine may fork on
// a thread that some other goroutine later locks and retires. Keeping the
// forking goroutine locked to its thread until the child is gone makes sure
// that thread outlives the child (golang/go#27505).
func startLocked(cmd *exec.Cmd, done func(error)) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done(cmd.Wait())
	}()
	return <-started
}

func runLocked(cmd *exec.Cmd) error {
	result := make(chan error, 1)
	if err := startLocked(cmd, func(err error) { result <- err }); err != nil {
		return err
	}
	return <-result
}

// URL returns a libpq/pgx connection URL for the database "berth" over the
// unix socket, e.g.
// "postgres://berth@/berth?host=/path/to/socketdir&port=5432&sslmode=disable".
func (s *Server) URL() string { return s.url(database) }

// PID is the process id of the postmaster, for tests that stop or freeze
// the server behind Berth's back.
func (s *Server) PID() int { return s.cmd.Process.Pid }

func (s *Server) url(db string) string {
	// Neither libpq nor pgx decodes '+' as a space in the query, so spaces
	// must be %20; '/' is left readable.
	host := strings.NewReplacer("+", "%20", "%2F", "/").Replace(url.QueryEscape(s.sockDir))
	return fmt.Sprintf("postgres://%s@/%s?host=%s&port=%d&sslmode=disable", role, db, host, port)
}

// Stop shuts the server down with a fast shutdown (SIGINT: open transactions
// are rolled back, a checkpoint is written) and waits for it to exit. If ctx
// ends first it sends SIGQUIT (immediate shutdown: no checkpoint, so the next
// start replays the WAL, which is safe). Stop may be called more than once;
// later calls return the first call's result.
func (s *Server) Stop(ctx context.Context) error {
	s.stopMu.Lock()
	defer s.stopMu.Unlock()
	if !s.stopped {
		s.stopped = true
		s.stopErr = s.stop(ctx)
	}
	return s.stopErr
}

func (s *Server) stop(ctx context.Context) error {
	defer s.cleanup()
	select {
	case <-s.exited:
		if s.waitErr != nil {
			return fmt.Errorf("pgembed: postgres had already exited: %w", s.waitErr)
		}
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exited:
		if s.waitErr != nil {
			return fmt.Errorf("pgembed: postgres: %w", s.waitErr)
		}
		s.log.Info("PostgreSQL stopped", "dir", s.dir)
		return nil
	case <-ctx.Done():
	}
	s.log.Warn("PostgreSQL did not shut down in time; sending SIGQUIT", "dir", s.dir)
	_ = s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.exited:
		return fmt.Errorf("pgembed: fast shutdown did not finish (%w); PostgreSQL was stopped with SIGQUIT and will recover on next start", ctx.Err())
	case <-time.After(10 * time.Second):
		return fmt.Errorf("pgembed: postgres (pid %d) did not exit after SIGQUIT", s.cmd.Process.Pid)
	}
}

// cleanup releases what Start created besides the cluster itself.
func (s *Server) cleanup() {
	if s.tmpSock {
		_ = os.RemoveAll(s.sockDir)
	}
	if s.logFile != nil {
		_ = s.logFile.Close()
	}
}

// userHint explains "Permission denied" in msg when the server runs as
// another user.
func (s *Server) userHint(msg string) string {
	if s.cred == nil || !strings.Contains(msg, "ermission denied") {
		return ""
	}
	u, err := user.LookupId(strconv.Itoa(int(s.cred.Uid)))
	name := strconv.Itoa(int(s.cred.Uid))
	if err == nil {
		name = u.Username
	}
	return fmt.Sprintf(" (PostgreSQL runs as user %q because berth runs as root; every parent directory of %s must be searchable by it)", name, s.dir)
}

// logTail returns the last lines this start wrote to the server log, for
// error messages.
func (s *Server) logTail() string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	from := max(s.logStart, fi.Size()-4096)
	b, err := io.ReadAll(io.NewSectionReader(f, from, fi.Size()-from))
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return fmt.Sprintf("\nlast lines of %s:\n%s", s.logPath, strings.Join(lines, "\n"))
}
