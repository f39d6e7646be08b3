package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/pgembed"
)

// runBerth runs `berth <args>` to its end, without the BERTH_* variables of
// the environment the tests run in.
func runBerth(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(berthBinary(t), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BERTH_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// While `berth serve` runs the embedded database of a data directory, the
// maintenance commands on that directory use its server; a second serve is
// refused. Once serve is gone (killed, so its record in berth.lock stays
// behind), the next command starts the database itself.
func TestMaintenanceBesideEmbeddedServe(t *testing.T) {
	if _, err := pgembed.FindBinaries(); err != nil {
		t.Skip("no PostgreSQL binaries on this machine:", err)
	}
	t.Parallel()
	dir := dataDir(t)
	t.Cleanup(func() { waitPostmasterGone(t, filepath.Join(dir, "postgres")) }) // before dir is removed
	local := []string{"--data-dir", dir, "--database-url=", "--log-level", "info"}
	serve := startBerth(t, append([]string{"serve", "--listen", "127.0.0.1:0", "--gc-disabled", "--gc-review-delay", "0s"}, local...)...)
	berth := func(args ...string) (string, string) {
		t.Helper()
		stdout, stderr, err := runBerth(t, append(args, local...)...)
		if err != nil {
			t.Fatalf("berth %s: %v\n%s%s", strings.Join(args, " "), err, stdout, stderr)
		}
		return stdout, stderr
	}

	// A blob nothing references: what gc reports.
	content := []byte("beside serve")
	d := digest.FromBytes(content)
	mustDo(t, "POST", serve.url()+"/v2/beside/blobs/uploads/?digest="+d.String(), content, 201)

	version, log := berth("migrate", "version")
	v, total, _ := strings.Cut(strings.TrimSpace(strings.TrimPrefix(version, "schema version ")), " of ")
	if !strings.HasPrefix(version, "schema version ") || v != total || strings.Contains(version, "dirty") {
		t.Fatalf("migrate version printed %q", version)
	}
	if want := fmt.Sprintf("run by berth process %d", serve.cmd.Process.Pid); !strings.Contains(log, want) {
		t.Errorf("migrate did not say it uses the server of serve (%q):\n%s", want, log)
	}
	if out, _ := berth("gc", "--dry-run", "--gc-review-delay", "0s"); !strings.Contains(out, "would delete blob "+d.String()) {
		t.Errorf("gc --dry-run printed:\n%s", out)
	}
	if out, _ := berth("check"); !strings.Contains(out, "checked 1 blobs") {
		t.Errorf("check printed:\n%s", out)
	}

	// The commands that manage users, grants and tokens work beside serve
	// too (the settings after their own arguments).
	hash, err := auth.HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("alice:"+hash+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, _ := berth("user", "import-htpasswd", htpasswd); !strings.Contains(out, "created user alice") {
		t.Errorf("user import-htpasswd printed %q", out)
	}
	berth("grant", "alice", "beside", "pull,push")
	if out, _ := berth("grant", "list"); !strings.Contains(out, "pull,push") {
		t.Errorf("grant list printed %q", out)
	}
	if out, _ := berth("token", "create", "--user", "alice"); !strings.HasPrefix(out, auth.TokenPrefix) || strings.Count(out, "\n") != 1 {
		t.Errorf("token create printed %q", out)
	}

	_, stderr, err := runBerth(t, append([]string{"serve", "--listen", "127.0.0.1:0"}, local...)...)
	want := fmt.Sprintf("another berth process (pid %d) is using the embedded database in %s", serve.cmd.Process.Pid, dir)
	if err == nil || !strings.Contains(stderr, want) {
		t.Errorf("a second serve on the data directory: %v, want an error saying %q:\n%s", err, want, stderr)
	}

	// serve still has its database, and the blob the dry run left.
	mustDo(t, "HEAD", serve.url()+"/v2/beside/blobs/"+d.String(), nil, http.StatusOK)

	if err := serve.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-serve.exited
	if rec, _ := os.ReadFile(filepath.Join(dir, lockFileName)); !strings.Contains(string(rec), "url ") {
		t.Fatalf("berth.lock lost its record when serve was killed, so this test no longer tests a stale one: %q", rec)
	}
	if out, log := berth("migrate", "version"); out != version || !strings.Contains(log, "starting embedded PostgreSQL") {
		t.Errorf("migrate version after serve was killed printed %q (want %q); did it start the database itself?\n%s", out, version, log)
	}
}

// waitPostmasterGone waits until no postgres runs the cluster in dir: the
// one of a berth killed by the test exits on its own, shortly after.
func waitPostmasterGone(t *testing.T, dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(line)
	if err != nil {
		return
	}
	waitUntil(t, "the embedded postgres to exit", func() bool { return syscall.Kill(pid, 0) != nil })
}

// A maintenance command that finds the lock taken before the URL is
// published waits for the URL; serve refuses at once.
func TestJoinWaitsForTheURL(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	lock, err := os.OpenFile(filepath.Join(dir, lockFileName), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	c := Config{DataDir: dir}
	if _, err := openDatabase(t.Context(), c, slog.New(slog.DiscardHandler)); err == nil ||
		!strings.Contains(err.Error(), "another berth process is using the embedded database in "+dir) {
		t.Fatalf("serve beside a starting one: %v", err)
	}

	waiting := &signalWriter{substr: []byte("waiting for the berth process"), ch: make(chan struct{})}
	type result struct {
		d   *database
		err error
	}
	joined := make(chan result, 1)
	go func() {
		d, err := joinDatabase(t.Context(), c, slog.New(slog.NewTextHandler(waiting, nil)))
		joined <- result{d, err}
	}()
	select {
	case <-waiting.ch:
	case r := <-joined:
		t.Fatalf("joined before a URL was published: %+v", r)
	case <-time.After(30 * time.Second):
		t.Fatal("the maintenance command neither waited nor returned")
	}
	const url = "postgres://berth@/berth?host=/somewhere&port=5432&sslmode=disable"
	if _, err := lock.WriteAt([]byte("# berth\npid 42\nurl "+url+"\n"), 0); err != nil {
		t.Fatal(err)
	}
	r := <-joined
	if r.err != nil || r.d.url != url || r.d.owner != 42 || r.d.embedded != nil {
		t.Fatalf("joined %+v, %v; want the published URL of pid 42", r.d, r.err)
	}
	if err := r.d.close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rec, _ := os.ReadFile(lock.Name()); !strings.Contains(string(rec), url) {
		t.Fatalf("closing a joined database changed the owner's record: %q", rec)
	}
}

// signalWriter closes ch once something containing substr is written.
type signalWriter struct {
	substr []byte
	ch     chan struct{}
	once   sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	if bytes.Contains(p, w.substr) {
		w.once.Do(func() { close(w.ch) })
	}
	return len(p), nil
}

// A record being written is read only up to its last complete line.
func TestReadOwner(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		content string
		want    owner
	}{
		{"", owner{}},
		{"# berth\npid 7\n", owner{pid: 7}},
		{"# berth\npid 7\nurl postgres://berth@/ber", owner{pid: 7}},
		{"# berth\npid 7\nurl postgres://berth@/berth\n", owner{pid: 7, url: "postgres://berth@/berth"}},
	} {
		f, err := os.Create(filepath.Join(t.TempDir(), lockFileName))
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(tc.content)
		if got := readOwner(f); got != tc.want {
			t.Errorf("readOwner(%q) = %+v, want %+v", tc.content, got, tc.want)
		}
		f.Close()
	}
}
