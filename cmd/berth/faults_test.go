package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/pgembed"
)

// The tests in this file take the database away from a running Berth, as
// an operator's outage would: a private PostgreSQL cluster (pgembed, the
// embedded server) stopped, or frozen with SIGSTOP as a stuck host or
// network leaves it. Nothing is simulated: Berth's pool meets a refused
// socket, or a socket that never answers.

// privateDatabase starts a PostgreSQL cluster of the test's own.
func privateDatabase(t *testing.T) (dir string, srv *pgembed.Server) {
	t.Helper()
	if _, err := pgembed.FindBinaries(); err != nil {
		t.Skip(err)
	}
	dir = filepath.Join(dataDir(t), "pg")
	srv = startCluster(t, dir)
	return dir, srv
}

func startCluster(t *testing.T, dir string) *pgembed.Server {
	t.Helper()
	srv, err := pgembed.Start(t.Context(), pgembed.Options{Dir: dir, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop(context.Background()) })
	return srv
}

// logBuffer collects a Main's log lines, safe for concurrent writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// count returns how many lines contain s.
func (b *logBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startLogged is startMain with the log (at info level) captured.
func startLogged(t *testing.T, dbURL string, extra ...string) (*Main, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	m := NewMain()
	args := append([]string{"--listen", "127.0.0.1:0", "--data-dir", dataDir(t), "--database-url", dbURL}, extra...)
	if err := m.ParseFlags(args, envOf(nil), io.Discard); err != nil {
		t.Fatal(err)
	}
	m.Logger = newLogger(m.Config, logs)
	if err := m.Run(t.Context()); err != nil {
		m.Close(context.Background())
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m.Close(ctx)
	})
	return m, logs
}

// pushImage pushes a config blob and a manifest tagged v1 to repo and
// returns the manifest's digest.
func pushImage(t *testing.T, base, repo string) digest.Digest {
	t.Helper()
	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := digest.FromBytes(config)
	mustDo(t, "POST", base+"/v2/"+repo+"/blobs/uploads/?digest="+cd.String(), config, http.StatusCreated)
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`, cd, len(config)))
	mustDo(t, "PUT", base+"/v2/"+repo+"/manifests/v1", manifest, http.StatusCreated,
		"Content-Type: application/vnd.oci.image.manifest.v1+json")
	return digest.FromBytes(manifest)
}

// outageRequests are requests of every kind that need the database.
func outageRequests(base, repo string, manifest digest.Digest) []struct{ method, url string } {
	return []struct{ method, url string }{
		{"GET", base + "/v2/" + repo + "/manifests/v1"},
		{"HEAD", base + "/v2/" + repo + "/manifests/" + manifest.String()},
		{"GET", base + "/v2/" + repo + "/blobs/" + manifest.String()},
		{"POST", base + "/v2/" + repo + "/blobs/uploads/"},
		{"GET", base + "/v2/" + repo + "/tags/list"},
		{"DELETE", base + "/v2/" + repo + "/tags/v1"},
		{"GET", base + "/v2/_catalog"},
	}
}

// expectUnavailable sends a request that needs the database and checks the
// clean answer: 503, Retry-After, the OCI body with UNAVAILABLE, and
// nothing about where the database is. It returns how long it took.
func expectUnavailable(t *testing.T, method, url string) time.Duration {
	t.Helper()
	// The client's own timeout only catches a hang; the test asserts no
	// duration.
	client := &http.Client{Timeout: 60 * time.Second}
	req, _ := http.NewRequest(method, url, nil)
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s during the outage: %v", method, url, err)
	}
	took := time.Since(start)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%s %s during the outage: %d (Retry-After %q) %s", method, url, resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if method == "HEAD" {
		return took
	}
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if json.Unmarshal(body, &e) != nil || len(e.Errors) != 1 || e.Errors[0].Code != "UNAVAILABLE" ||
		!strings.Contains(e.Errors[0].Message, "metadata database is unreachable") {
		t.Fatalf("%s %s during the outage: body %s", method, url, body)
	}
	if strings.Contains(string(body), "berth@") || strings.Contains(string(body), "postgres") {
		t.Errorf("the 503 body tells where the database is: %s", body)
	}
	return took
}

func status(method, url string) int {
	req, _ := http.NewRequest(method, url, nil)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func metric(t *testing.T, base, name string) string {
	t.Helper()
	v, err := tryMetric(base, name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// tryMetric is metric for a caller that retries: under --max-connections a
// scrape may be refused, even on a connection the client thought idle.
func tryMetric(base, name string) (string, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v, nil
		}
	}
	return "", nil
}

// A database that is down: every request that needs it gets a clean 503
// at once, the log says once that it is down and once that it is back, and
// service resumes by itself when it is back.
func TestDatabaseDown(t *testing.T) {
	t.Parallel()
	dir, srv := privateDatabase(t)
	m, logs := startLogged(t, srv.URL(), "--db-timeout", "2s", "--gc-interval", "100ms", "--admin-listen", "127.0.0.1:0")
	base, admin := "http://"+m.Addr().String(), "http://"+m.AdminAddr().String()
	manifest := pushImage(t, base, "outage/app")

	if err := srv.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	// A burst of every kind of request, many times over.
	var wg sync.WaitGroup
	for range 20 {
		for _, r := range outageRequests(base, "outage/app", manifest) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				expectUnavailable(t, r.method, r.url)
			}()
		}
	}
	wg.Wait()
	checkReadyzDuringOutage(t, base, admin, srv)
	if got := metric(t, admin, "berth_db_up"); got != "0" {
		t.Errorf("berth_db_up during the outage = %q", got)
	}

	startCluster(t, dir)
	waitUntil(t, "the manifest to be served again", func() bool {
		return status("GET", base+"/v2/outage/app/manifests/v1") == http.StatusOK
	})
	waitUntil(t, "the end of the outage to be logged", func() bool { return logs.count("metadata database reachable again") == 1 })
	if n := logs.count("metadata database unreachable"); n != 1 {
		t.Errorf("the outage start was logged %d times, want once", n)
	}
	if n := logs.count("level=ERROR"); n != 1 {
		t.Errorf("%d ERROR lines for one outage of 140 requests, want the one saying the database is down:\n%s", n, logs)
	}
	if got := metric(t, admin, "berth_db_outages_total"); got != "1" {
		t.Errorf("berth_db_outages_total = %q, want 1", got)
	}
	if got := metric(t, admin, "berth_db_up"); got != "1" {
		t.Errorf("berth_db_up after the outage = %q", got)
	}
	// The counter counts statements, and concurrent manifest reads share
	// one (db/coalesce.go): of the 140 refused requests, the 40 manifest
	// reads may have taken as few as one statement, the 100 others one each.
	failures, _ := strconv.Atoi(metric(t, admin, "berth_db_unavailable_total"))
	if failures < 101 {
		t.Errorf("berth_db_unavailable_total = %d, want at least 101 for the 140 refused requests (100 that are not manifest reads, one statement at least for the 40 that are)", failures)
	}
}

// checkReadyzDuringOutage is issue 12's first complaint: the API port's
// /readyz, open to anyone, named the database's user, host and port when the
// database was down. It must say only which part is not ready; the admin
// listener, which the operator keeps private, says why.
func checkReadyzDuringOutage(t *testing.T, api, admin string, srv *pgembed.Server) {
	t.Helper()
	u, err := url.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	where := []string{"postgres", "@", u.User.Username(), u.Query().Get("host"), u.Query().Get("port")}
	code, body := getBody(t, api+"/readyz")
	if code != http.StatusServiceUnavailable || body != "not ready: database\n" {
		t.Errorf("API port /readyz during the outage: %d %q, want 503 \"not ready: database\"", code, body)
	}
	for _, s := range where {
		if strings.Contains(body, s) {
			t.Errorf("API port /readyz during the outage names %q: %q", s, body)
		}
	}
	code, body = getBody(t, admin+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: database: the metadata database is unreachable") {
		t.Errorf("admin /readyz during the outage: %d %q, want 503 with the reason", code, body)
	}
	// The details are what an operator needs to find the database.
	for _, s := range []string{"user=" + u.User.Username(), u.Query().Get("host")} {
		if !strings.Contains(body, s) {
			t.Errorf("admin /readyz during the outage lacks %q: %q", s, body)
		}
	}
}

// getBody returns the status and body of a GET.
func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// freeze stops (SIGSTOP) or resumes (SIGCONT) the postmaster and every
// process it started: a database host that hangs, with its connections
// open and its socket accepting.
func freeze(t *testing.T, srv *pgembed.Server, sig syscall.Signal) {
	t.Helper()
	pids := []int{srv.PID()}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces, so split after it.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(srv.PID()) {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil {
			t.Logf("signal %d: %v", pid, err)
		}
	}
}

// A database that hangs: requests get the same clean 503 once the
// statement deadline passes (--db-timeout), /readyz answers 503 within its
// own shorter deadline, and the registry serves again once the database
// wakes up. While it hangs, the registry still shuts down.
func TestDatabaseHung(t *testing.T) {
	t.Parallel()
	_, srv := privateDatabase(t)
	m, logs := startLogged(t, srv.URL(), "--db-timeout", "1s", "--gc-interval", "100ms")
	base := "http://" + m.Addr().String()
	manifest := pushImage(t, base, "hung/app")

	freeze(t, srv, syscall.SIGSTOP)
	thawed := false
	thaw := func() {
		if !thawed {
			freeze(t, srv, syscall.SIGCONT)
			thawed = true
		}
	}
	t.Cleanup(thaw)
	var wg sync.WaitGroup
	for _, r := range outageRequests(base, "hung/app", manifest) {
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				took := expectUnavailable(t, r.method, r.url)
				t.Logf("%s %s: 503 after %v", r.method, r.url[len(base):], took.Round(time.Millisecond))
			}()
		}
	}
	wg.Wait()
	start := time.Now()
	if code := status("GET", base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with the database hung: %d", code)
	}
	t.Logf("/readyz: 503 after %v", time.Since(start).Round(time.Millisecond))

	thaw()
	waitUntil(t, "the manifest to be served again", func() bool {
		return status("GET", base+"/v2/hung/app/manifests/v1") == http.StatusOK
	})
	waitUntil(t, "the end of the outage to be logged", func() bool { return logs.count("metadata database reachable again") == 1 })
	if n := logs.count("metadata database unreachable"); n != 1 {
		t.Errorf("the outage start was logged %d times, want once:\n%s", n, logs)
	}

	// Shutting down while the database hangs: nothing may wait for it
	// forever, neither the requests in flight nor the collector.
	freeze(t, srv, syscall.SIGSTOP)
	thawed = false
	go status("GET", base+"/v2/hung/app/manifests/v1") // in flight during the shutdown
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		closed <- m.Close(ctx)
	}()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("shutdown with the database hung: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("shutdown hangs while the database does")
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// With --max-connections N, the N+1st connection is answered 503 with the
// OCI body at once and closed, instead of waiting unanswered; once a
// connection closes, a new one is served.
func TestConnectionLimit(t *testing.T) {
	t.Parallel()
	m := startMain(t, dbtest.NewURL(t), "--max-connections", "3")
	addr := m.Addr().String()
	var held []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	get := func() (*http.Response, string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second)) // a hang detector
		fmt.Fprintf(c, "GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := get()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(body, `"code":"UNAVAILABLE"`) || !strings.Contains(body, "--max-connections") {
		t.Fatalf("over the limit: %d %s", resp.StatusCode, body)
	}
	held[0].Close()
	waitUntil(t, "a connection to be served again", func() bool {
		resp, _ := get()
		return resp.StatusCode == http.StatusOK
	})
	// /metrics needs a connection too: retried until one is free.
	waitUntil(t, "berth_connections_refused_total to count the refusal", func() bool {
		got, err := tryMetric("http://"+addr, "berth_connections_refused_total")
		return err == nil && got != "" && got != "0"
	})
}
