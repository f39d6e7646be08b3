package pgembed

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binDir returns the PostgreSQL bin dir or skips the test.
func binDir(t *testing.T) string {
	t.Helper()
	d, err := FindBinaries()
	if err != nil {
		t.Skipf("skipping: PostgreSQL is not installed: %v", err)
	}
	return d
}

// clusterDir returns a not-yet-existing cluster directory under a fresh
// parent. The parent is 0755 rather than t.TempDir's 0700 because, when the
// test runs as root, the server runs as the postgres user and must be able
// to reach the cluster.
func clusterDir(t *testing.T, name string) string {
	t.Helper()
	parent, err := os.MkdirTemp("", "pgembed-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(parent, name)
}

func start(t *testing.T, dir string) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { // tests check Stop's result themselves where it matters
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s.Stop(ctx)
	})
	return s
}

func stop(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// query runs sql with psql against s.URL(), which also proves that libpq
// understands the URL.
func query(t *testing.T, s *Server, sql string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir(t), "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-d", s.URL(), "-c", sql).CombinedOutput()
	if err != nil {
		t.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}

func socketDir(t *testing.T, s *Server) string {
	t.Helper()
	u, err := url.Parse(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	return u.Query().Get("host")
}

func postmasterPID(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(line)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// writePIDFile fakes a postmaster.pid as a crashed server leaves it: owned
// by the server user, like the rest of the cluster.
func writePIDFile(t *testing.T, dir string, pid int) {
	t.Helper()
	path := filepath.Join(dir, "postmaster.pid")
	if err := os.WriteFile(path, []byte(fmt.Sprintf("%d\n%s\n", pid, dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
		t.Fatal(err)
	}
}

func TestFindBinariesWithoutPath(t *testing.T) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	if len(dirs) == 0 {
		t.Skip("skipping: no /usr/lib/postgresql/*/bin on this machine")
	}
	t.Setenv("PATH", "/nonexistent")
	d, err := FindBinaries()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(d, "/usr/lib/postgresql/") {
		t.Errorf("FindBinaries() = %q, want a dir under /usr/lib/postgresql", d)
	}
	for _, name := range []string{"initdb", "postgres"} {
		if !isExecutable(filepath.Join(d, name)) {
			t.Errorf("%s has no %s", d, name)
		}
	}
}

func TestFindBinariesResolvesSymlinks(t *testing.T) {
	real := binDir(t)
	links := t.TempDir()
	for _, name := range []string{"initdb", "postgres"} {
		if err := os.Symlink(filepath.Join(real, name), filepath.Join(links, name)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", links)
	d, err := FindBinaries()
	if err != nil {
		t.Fatal(err)
	}
	if d != real {
		t.Errorf("FindBinaries() = %q, want the link target's dir %q", d, real)
	}
}

func TestVersionOrder(t *testing.T) {
	if v := versionOf("/usr/lib/postgresql/9.6/bin"); len(v) != 2 || v[0] != 9 || v[1] != 6 {
		t.Errorf("versionOf(9.6) = %v", v)
	}
	if versionOf("/usr/lib/postgresql/15/bin")[0] <= versionOf("/usr/lib/postgresql/9.6/bin")[0] {
		t.Error("15 must sort above 9.6")
	}
}

// TestStartStopRestart checks the whole life cycle: first start runs initdb,
// the second start keeps the data, a stale pid file does not get in the way,
// and Stop may be called twice.
func TestStartStopRestart(t *testing.T) {
	binDir(t)
	t.Parallel()
	dir := clusterDir(t, "postgres")

	s := start(t, dir)
	if got := query(t, s, "SELECT 1"); got != "1" {
		t.Fatalf("SELECT 1 = %q", got)
	}
	if got := query(t, s, "SELECT current_database() || ' ' || current_user"); got != "berth berth" {
		t.Errorf("database and user = %q, want berth berth", got)
	}
	if got := socketDir(t, s); got != dir {
		t.Errorf("socket dir = %q, want the data dir %q", got, dir)
	}
	if got := query(t, s, "SHOW listen_addresses"); got != "" {
		t.Errorf("listen_addresses = %q, want none", got)
	}
	query(t, s, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
	stop(t, s)
	stop(t, s) // second Stop is a no-op
	if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); !os.IsNotExist(err) {
		t.Fatalf("postmaster.pid after Stop: %v", err)
	}

	// A pid file naming a dead process (e.g. after a power cut) must not
	// block the next start.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	writePIDFile(t, dir, dead.Process.Pid)

	s2 := start(t, dir)
	if got := query(t, s2, "SELECT v FROM kept"); got != "still here" {
		t.Errorf("after restart, kept = %q", got)
	}
	stop(t, s2)

	log, err := os.ReadFile(dir + ".log")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "Success. You can now start the database server"); n != 1 {
		t.Errorf("initdb ran %d times, want once", n)
	}
}

// TestLongDir exercises the fallback for data directories too deep for a
// unix socket path.
func TestLongDir(t *testing.T) {
	binDir(t)
	t.Parallel()
	dir := clusterDir(t, strings.Repeat("a-very-long-directory-name-", 5))
	if len(filepath.Join(dir, socketName)) <= maxSocketPath {
		t.Fatalf("test dir %q is not long enough", dir)
	}
	s := start(t, dir)
	sock := socketDir(t, s)
	if !strings.HasPrefix(sock, "/tmp/berth-pg-") {
		t.Errorf("socket dir = %q, want a short one under /tmp", sock)
	}
	if got := query(t, s, "SELECT 1"); got != "1" {
		t.Fatalf("SELECT 1 = %q", got)
	}
	stop(t, s)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket dir %s still there after Stop (err %v)", sock, err)
	}
}

// TestStopDeadline: when ctx ends before the fast shutdown finishes, Stop
// sends SIGQUIT, and the next start recovers.
func TestStopDeadline(t *testing.T) {
	binDir(t)
	t.Parallel()
	dir := clusterDir(t, "postgres")
	s := start(t, dir)
	query(t, s, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Stop(ctx)
	if err == nil || !strings.Contains(err.Error(), "SIGQUIT") {
		t.Fatalf("Stop with expired ctx = %v, want an error about SIGQUIT", err)
	}
	if err2 := s.Stop(context.Background()); err2 != err {
		t.Errorf("second Stop = %v, want the first result %v", err2, err)
	}
	s2 := start(t, dir)
	if got := query(t, s2, "SELECT v FROM kept"); got != "42" {
		t.Errorf("after immediate shutdown, kept = %q", got)
	}
}

// TestStartFailureShowsLog: a directory with foreign files cannot become a
// cluster; the error must carry initdb's explanation.
func TestStartFailureShowsLog(t *testing.T) {
	binDir(t)
	t.Parallel()
	dir := clusterDir(t, "postgres")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "something-else"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), Options{Dir: dir})
	if err == nil {
		t.Fatal("Start succeeded on a non-empty, non-cluster directory")
	}
	if !strings.Contains(err.Error(), "initdb") || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("error lacks initdb's reason: %v", err)
	}
	t.Logf("error as the operator sees it:\n%v", err)
}

// runAsServerUser starts a process the way Start would run postgres.
func runAsServerUser(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	cred, err := serverCredential()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// TestPidReused: the pid in a stale postmaster.pid now belongs to another
// process of the server user. postgres alone would refuse to start.
func TestPidReused(t *testing.T) {
	binDir(t)
	t.Parallel()
	dir := clusterDir(t, "postgres")
	stop(t, start(t, dir)) // create the cluster

	other := runAsServerUser(t, "sleep", "300")
	defer other.Wait()
	defer other.Process.Kill()
	writePIDFile(t, dir, other.Process.Pid)

	s := start(t, dir)
	query(t, s, "SELECT 1")
	if !running(other.Process.Pid) {
		t.Error("the unrelated process was stopped")
	}
}

// TestLeftoverPostmaster: a postgres for this directory that a dead berth
// left running is shut down and replaced.
func TestLeftoverPostmaster(t *testing.T) {
	bin := binDir(t)
	t.Parallel()
	dir := clusterDir(t, "postgres")
	stop(t, start(t, dir)) // create the cluster

	old := runAsServerUser(t, filepath.Join(bin, "postgres"), "-D", dir, "-k", dir, "-c", "listen_addresses=")
	exited := make(chan error, 1)
	go func() { exited <- old.Wait() }()
	t.Cleanup(func() { old.Process.Kill() })
	waitFor(t, "leftover postgres to write its pid file", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
		return strings.HasPrefix(string(b), strconv.Itoa(old.Process.Pid)+"\n")
	})

	s := start(t, dir)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("leftover postgres still running after Start")
	}
	if pid := postmasterPID(t, dir); pid == old.Process.Pid {
		t.Fatalf("postmaster.pid still names the leftover %d", pid)
	}
	query(t, s, "SELECT 1")
}

// TestParentKilled: when berth is SIGKILLed, its postgres gets the parent
// death signal and goes away; the next start works.
func TestParentKilled(t *testing.T) {
	binDir(t)
	t.Parallel()
	dir := clusterDir(t, "postgres")

	helper := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	helper.Env = append(os.Environ(), "PGEMBED_HELPER_DIR="+dir)
	helper.Stderr = os.Stderr
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer helper.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("helper said %q (%v)", line, err)
	}
	pid := postmasterPID(t, dir)

	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()
	waitFor(t, "orphaned postgres to exit", func() bool { return !running(pid) })
	// Nobody but the kernel's parent-death signal (SIGTERM) can have asked it.
	if log, _ := os.ReadFile(dir + ".log"); !strings.Contains(string(log), "received smart shutdown request") {
		t.Errorf("postgres did not log a smart shutdown (SIGTERM):\n%s", log)
	}

	s := start(t, dir)
	query(t, s, "SELECT 1")
}

// TestHelperProcess is the "berth" of TestParentKilled: it starts a server
// and waits to be killed.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv("PGEMBED_HELPER_DIR")
	if dir == "" {
		t.Skip("helper for TestParentKilled")
	}
	if _, err := Start(context.Background(), Options{Dir: dir}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	select {}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
