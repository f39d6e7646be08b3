package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/pgembed"
)

// startMain runs a registry the way `berth serve` does, on the given
// database URL ("" for the embedded one), and stops it at the end.
func startMain(t *testing.T, dbURL string, extra ...string) *Main {
	t.Helper()
	m, err := launch(t, dataDir(t), dbURL, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// launch is startMain without t.Fatal, for use from several goroutines.
func launch(t *testing.T, dir, dbURL string, extra ...string) (*Main, error) {
	m := NewMain()
	args := append([]string{"--listen", "127.0.0.1:0", "--data-dir", dir, "--database-url", dbURL, "--log-level", "warn"}, extra...)
	if err := m.ParseFlags(args, envOf(nil), io.Discard); err != nil {
		return nil, err
	}
	if err := m.Run(t.Context()); err != nil {
		m.Close(context.Background())
		return nil, err
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return m, nil
}

// dataDir is a temporary data directory that the embedded PostgreSQL can
// use when the test runs as root: the server then runs as the postgres
// user, which cannot enter t.TempDir()'s private parent.
func dataDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "berth-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func pushAndPull(t *testing.T, m *Main) {
	t.Helper()
	base := "http://" + m.Addr().String()
	content := []byte("end to end")
	d := digest.FromBytes(content)
	resp, err := http.Post(base+"/v2/e2e/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(content))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("push blob: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = http.Get(base + "/v2/e2e/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, content) {
		t.Fatalf("pulled %q", got)
	}
}

// Several replicas starting at once on an empty schema must not collide
// while migrating: the advisory lock lets one migrate, the others wait.
func TestReplicasMigrateConcurrently(t *testing.T) {
	t.Parallel()
	url := emptySchemaURL(t)
	blobs := t.TempDir() // replicas share one blob store, as they must
	var wg sync.WaitGroup
	mains := make([]*Main, 4)
	errs := make([]error, len(mains))
	for i := range mains {
		dir := dataDir(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			mains[i], errs[i] = launch(t, dir, url, "--storage-dir", blobs)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, m := range mains {
		pushAndPull(t, m)
	}
	var out bytes.Buffer
	if err := run(t.Context(), []string{"migrate", "version", "--database-url", url}, envOf(nil), &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "schema version ") || strings.Contains(out.String(), "dirty") {
		t.Fatalf("migrate version printed %q", out.String())
	}
}

func TestMigrateUpDown(t *testing.T) {
	t.Parallel()
	url := emptySchemaURL(t)
	migrate := func(action string) string {
		var out bytes.Buffer
		if err := run(t.Context(), []string{"migrate", action, "--database-url", url}, envOf(nil), &out, io.Discard); err != nil {
			t.Fatalf("migrate %s: %v", action, err)
		}
		return out.String()
	}
	if got := migrate("version"); !strings.HasPrefix(got, "schema version 0 of ") {
		t.Fatalf("fresh schema: %q", got)
	}
	up := migrate("up")
	latest := strings.TrimSpace(strings.TrimPrefix(up, "schema version "))
	if v, total, _ := strings.Cut(latest, " of "); v != total {
		t.Fatalf("after up: %q", up)
	}
	migrate("down")
	if got := migrate("up"); got != up {
		t.Fatalf("down then up: %q, want %q", got, up)
	}
}

// emptySchemaURL is a fresh schema with no migrations applied.
func emptySchemaURL(t *testing.T) string {
	t.Helper()
	url := dbtest.NewURL(t)
	dbtest.Exec(t, url, "DROP SCHEMA "+schemaOf(url)+" CASCADE")
	dbtest.Exec(t, dbtest.ServerURL(), "CREATE SCHEMA "+schemaOf(url))
	return url
}

func schemaOf(url string) string {
	_, after, _ := strings.Cut(url, "search_path=")
	schema, _, _ := strings.Cut(after, "&")
	return schema
}

// With no database URL, berth starts its own PostgreSQL and stops it again.
func TestEmbeddedDatabase(t *testing.T) {
	if _, err := pgembed.FindBinaries(); err != nil {
		t.Skip("no PostgreSQL binaries on this machine:", err)
	}
	t.Parallel()
	m := startMain(t, "")
	if m.database.embedded == nil {
		t.Fatal("no embedded database started")
	}
	pushAndPull(t, m)
}

func TestEmbeddedDatabaseWithoutBinaries(t *testing.T) {
	t.Parallel()
	m := NewMain()
	err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--postgres-bin-dir", t.TempDir()}, envOf(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	err = m.Run(t.Context())
	m.Close(context.Background())
	if !errors.Is(err, pgembed.ErrNoBinaries) || !strings.Contains(err.Error(), "BERTH_DATABASE_URL") {
		t.Fatalf("error %v: it must say how to give a database URL", err)
	}
}

// berth gc --dry-run reports, berth gc --once collects, berth check finds
// what is broken and --repair fixes it: all against the state a running
// registry left.
func TestGCAndCheckCommands(t *testing.T) {
	t.Parallel()
	url := dbtest.NewURL(t)
	blobs := t.TempDir()
	gcFlags := []string{"--database-url", url, "--storage-dir", blobs, "--gc-review-delay", "0s",
		"--gc-tombstone-retention", "0s", "--log-level", "error"}
	m := startMain(t, url, append(gcFlags[2:], "--gc-disabled")...)
	base := "http://" + m.Addr().String()
	content := []byte("dangling")
	d := digest.FromBytes(content)
	resp, err := http.Post(base+"/v2/cmd/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(content))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %v %v", resp, err)
	}
	resp.Body.Close()
	berth := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := run(t.Context(), append(args, gcFlags...), envOf(nil), &out, io.Discard); err != nil {
			t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}

	out := berth("gc", "--dry-run")
	if !strings.Contains(out, "would delete blob "+d.String()) || !strings.Contains(out, "would collect: ") {
		t.Fatalf("dry run printed:\n%s", out)
	}
	if resp, _ := http.Head(base + "/v2/cmd/blobs/" + d.String()); resp.StatusCode != http.StatusOK {
		t.Fatalf("the dry run collected: HEAD %d", resp.StatusCode)
	}
	out = berth("gc", "--once")
	if !strings.Contains(out, "delete blob "+d.String()) || !strings.Contains(out, "1 blobs deleted") {
		t.Fatalf("gc --once printed:\n%s", out)
	}
	if resp, _ := http.Head(base + "/v2/cmd/blobs/" + d.String()); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("after gc: HEAD %d", resp.StatusCode)
	}

	// A blob whose file vanished: check reports it, --repair hides it until
	// it is pushed again.
	kept := []byte("kept")
	kd := digest.FromBytes(kept)
	resp, _ = http.Post(base+"/v2/cmd/blobs/uploads/?digest="+kd.String(), "application/octet-stream", bytes.NewReader(kept))
	resp.Body.Close()
	if err := os.Remove(filepath.Join(blobs, "blobs", "sha256", kd.Encoded()[:2], kd.Encoded())); err != nil {
		t.Fatal(err)
	}
	out = berth("check")
	if !strings.Contains(out, "blob "+kd.String()+": row without bytes") || !strings.Contains(out, "1 blobs without bytes") {
		t.Fatalf("check printed:\n%s", out)
	}
	out = berth("check", "--repair")
	if !strings.Contains(out, "marked missing") || !strings.Contains(out, "repaired") {
		t.Fatalf("check --repair printed:\n%s", out)
	}
	if resp, _ := http.Head(base + "/v2/cmd/blobs/" + kd.String()); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a blob without bytes is still served: HEAD %d", resp.StatusCode)
	}
}

// Right after a crash, the bytes it left are as young as the uploads in
// progress: berth check counts them as skipped and says why, and
// --min-age 0s (for a stopped registry) takes them for orphans.
func TestCheckAfterACrash(t *testing.T) {
	t.Parallel()
	url := dbtest.NewURL(t)
	blobs := t.TempDir()
	// What a crash between publishing a blob and committing its row leaves:
	// the blob's bytes and its staging data, and no row.
	store, err := blobstore.NewFS(blobs)
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("published just before the crash")
	d := digest.FromBytes(content)
	state, _, err := store.AppendChunk(t.Context(), "m-crash", nil, bytes.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Publish(t.Context(), "m-crash", state, d); err != nil {
		t.Fatal(err)
	}
	check := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		args = append([]string{"check", "--database-url", url, "--storage-dir", blobs, "--log-level", "error"}, args...)
		if err := run(t.Context(), args, envOf(nil), &out, io.Discard); err != nil {
			t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	n := len(content)
	out := check()
	for _, want := range []string{
		"0 blobs without bytes, 0 orphaned blobs (0 bytes), 0 orphaned uploads\n",
		fmt.Sprintf("skipped 1 blobs (%d bytes) and 1 uploads (%d bytes) without rows, younger than 24h0m0s: "+
			"they may belong to uploads in progress; with the registry stopped, --min-age 0s counts them as orphans\n", n, n),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("berth check printed\n%s\nwithout\n%s", out, want)
		}
	}
	var gcOut bytes.Buffer
	if err := run(t.Context(), []string{"gc", "--dry-run", "--database-url", url, "--storage-dir", blobs, "--log-level", "error"},
		envOf(nil), &gcOut, io.Discard); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("left 1 blobs (%d bytes) and 1 uploads (%d bytes) without rows to a later sweep", n, n); !strings.Contains(gcOut.String(), want) {
		t.Errorf("berth gc --dry-run printed\n%s\nwithout\n%s", gcOut.String(), want)
	}
	out = check("--min-age", "0s")
	for _, want := range []string{
		"found: delete orphaned bytes of " + d.String(),
		fmt.Sprintf("0 blobs without bytes, 1 orphaned blobs (%d bytes), 1 orphaned uploads\n", n),
		"skipped 0 blobs (0 bytes) and 0 uploads (0 bytes) without rows, younger than 0s: they may belong to uploads in progress\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("berth check --min-age 0s printed\n%s\nwithout\n%s", out, want)
		}
	}
	if _, err := store.Stat(t.Context(), d); err != nil {
		t.Fatalf("check without --repair deleted the orphan: %v", err)
	}
	out = check("--min-age", "0s", "--repair")
	if !strings.Contains(out, "1 orphaned blobs") || !strings.Contains(out, "repaired") {
		t.Fatalf("berth check --min-age 0s --repair printed\n%s", out)
	}
	if _, err := store.Stat(t.Context(), d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("the orphan is still there after --repair: %v", err)
	}
	for _, bad := range []string{"-1s", "soon"} {
		if err := run(t.Context(), []string{"check", "--database-url", url, "--storage-dir", blobs, "--min-age", bad}, envOf(nil), io.Discard, io.Discard); err == nil {
			t.Errorf("--min-age %s accepted", bad)
		}
	}
}

// berth serve collects on its own, continuously: a blob nothing references
// disappears without anyone running berth gc.
func TestServeCollectsContinuously(t *testing.T) {
	t.Parallel()
	m := startMain(t, dbtest.NewURL(t), "--gc-interval", "50ms", "--gc-review-delay", "0s")
	base := "http://" + m.Addr().String()
	content := []byte("collected by serve")
	d := digest.FromBytes(content)
	resp, err := http.Post(base+"/v2/serve/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(content))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %v %v", resp, err)
	}
	resp.Body.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Head(base + "/v2/serve/blobs/" + d.String())
		if err == nil && resp.StatusCode == http.StatusNotFound {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the unreferenced blob was not collected: HEAD %v %v", resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestHealthReadinessAndMetrics(t *testing.T) {
	t.Parallel()
	url := dbtest.NewURL(t)
	m := startMain(t, url)
	base := "http://" + m.Addr().String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz %d %s", code, body)
	}
	content := []byte("metered")
	resp, _ := http.Post(base+"/v2/m/blobs/uploads/?digest="+digest.FromBytes(content).String(), "application/octet-stream", bytes.NewReader(content))
	resp.Body.Close()
	resp, err := http.Post(base+"/v2/m/blobs/uploads/", "", nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("open a session: %v %v", resp, err)
	}
	resp.Body.Close()
	location, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	session := location.String()
	code, metricsText := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics %d", code)
	}
	for _, want := range []string{
		`berth_http_requests_total{method="POST",route="upload",status="201"} 1`,
		`berth_http_request_bytes_total{route="upload"} 7`,
		`berth_http_request_duration_seconds_bucket{method="POST",route="upload",le=`,
		`berth_db_pool_connections{pool="main",state="idle"}`,
		`berth_db_pool_connections{pool="reads",state="idle"}`,
		`berth_db_manifest_reads_total `,
		`berth_db_manifest_read_statements_total `,
		`berth_upload_sessions 1`,
		"berth_upload_session_bytes 0\n",
		`berth_gc_candidates{state="queued"} 1`,
		`berth_gc_items_total{kind="blob"} 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(metricsText, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// The partial data of open sessions shows in berth_upload_session_bytes
	// (issue 12), and cancelling the session takes it out again.
	const chunk = 1000
	mustDo(t, "PATCH", session, bytes.Repeat([]byte("b"), chunk), http.StatusAccepted, "Content-Type: application/octet-stream")
	if got := metric(t, base, "berth_upload_session_bytes"); got != strconv.Itoa(chunk) {
		t.Errorf("berth_upload_session_bytes after a PATCH of %d bytes = %q", chunk, got)
	}
	mustDo(t, "DELETE", session, nil, http.StatusNoContent)
	if got := metric(t, base, "berth_upload_session_bytes"); got != "0" {
		t.Errorf("berth_upload_session_bytes after the session was cancelled = %q, want 0", got)
	}
	if got := metric(t, base, "berth_upload_sessions"); got != "0" {
		t.Errorf("berth_upload_sessions after the session was cancelled = %q, want 0", got)
	}

	// A replica whose schema is older than its code is not ready. The API
	// port says which part; the admin listener says why.
	old := dbtest.NewURL(t)
	if err := run(t.Context(), []string{"migrate", "down", "--database-url", old}, envOf(nil), io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	stale := startMain(t, old, "--auto-migrate=false", "--gc-disabled", "--admin-listen", "127.0.0.1:0")
	for _, tc := range []struct{ addr, want, notWant string }{
		{stale.Addr().String(), "not ready: database schema\n", ""},
		{stale.AdminAddr().String(), "not ready: database schema: schema version ", ""},
	} {
		resp, err := http.Get("http://" + tc.addr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.HasPrefix(string(b), tc.want) {
			t.Errorf("/readyz of %s on an old schema: %d %q, want 503 %q…", tc.addr, resp.StatusCode, b, tc.want)
		}
	}
}

// With --admin-listen, metrics and the profiler are on the admin listener
// and not on the API port; without it, /metrics stays on the API port.
func TestAdminListener(t *testing.T) {
	t.Parallel()
	m := startMain(t, dbtest.NewURL(t), "--admin-listen", "127.0.0.1:0")
	api, admin := "http://"+m.Addr().String(), "http://"+m.AdminAddr().String()
	for _, tc := range []struct {
		url  string
		want int
	}{
		{api + "/metrics", http.StatusNotFound},
		{api + "/debug/pprof/", http.StatusNotFound},
		{api + "/healthz", http.StatusOK},
		{api + "/readyz", http.StatusOK},
		{admin + "/metrics", http.StatusOK},
		{admin + "/readyz", http.StatusOK},
		{admin + "/healthz", http.StatusOK},
		{admin + "/debug/pprof/", http.StatusOK},
		{admin + "/debug/pprof/cmdline", http.StatusOK},
		{admin + "/v2/", http.StatusNotFound},
	} {
		if got := status("GET", tc.url); got != tc.want {
			t.Errorf("GET %s: %d, want %d", tc.url, got, tc.want)
		}
	}
	if m.AdminAddr() == nil || startMain(t, dbtest.NewURL(t)).AdminAddr() != nil {
		t.Errorf("AdminAddr should be set exactly with --admin-listen")
	}
}

func TestHealthcheckCommand(t *testing.T) {
	t.Parallel()
	m := startMain(t, dbtest.NewURL(t))
	var out bytes.Buffer
	if err := run(t.Context(), []string{"healthcheck", "--url", "http://" + m.Addr().String() + "/readyz"}, envOf(nil), &out, io.Discard); err != nil {
		t.Fatalf("healthcheck of a ready replica: %v", err)
	}
	if err := run(t.Context(), []string{"healthcheck", "--url", "http://" + m.Addr().String() + "/nothing"}, envOf(nil), &out, io.Discard); err == nil {
		t.Fatal("healthcheck accepted a 404")
	}
}
