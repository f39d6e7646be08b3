package handlers_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/handlers"
)

// A repository holds at most --max-upload-sessions open sessions: one more
// is refused with 429 naming the limit, cancelling one frees its slot,
// and other repositories are not affected.
func TestUploadSessionLimit(t *testing.T) {
	t.Parallel()
	r := newRegistryWith(t, func(o *handlers.Options) { o.Limits.UploadSessions = 3 })
	var locations []string
	for range 3 {
		resp := r.do("POST", "/v2/capped/blobs/uploads/", nil)
		resp.expect(t, http.StatusAccepted, "")
		locations = append(locations, resp.Header.Get("Location"))
	}
	resp := r.do("POST", "/v2/capped/blobs/uploads/", nil)
	resp.expect(t, http.StatusTooManyRequests, "TOOMANYREQUESTS")
	if resp.Header.Get("Retry-After") == "" || !strings.Contains(string(resp.body), "3 open upload sessions, the limit (--max-upload-sessions)") {
		t.Errorf("refusal: Retry-After %q, body %s", resp.Header.Get("Retry-After"), resp.body)
	}
	// A monolithic upload opens no session, so the limit does not apply.
	r.pushBlob("capped", []byte("monolithic"))
	r.do("POST", "/v2/other/blobs/uploads/", nil).expect(t, http.StatusAccepted, "")

	r.do("DELETE", locations[0], nil).expect(t, http.StatusNoContent, "")
	r.do("POST", "/v2/capped/blobs/uploads/", nil).expect(t, http.StatusAccepted, "")
	r.do("POST", "/v2/capped/blobs/uploads/", nil).expect(t, http.StatusTooManyRequests, "TOOMANYREQUESTS")
}

// The limit holds exactly under concurrency, across two API instances on
// one database: of many sessions opened at once, exactly the limit are
// granted.
func TestUploadSessionLimitRace(t *testing.T) {
	t.Parallel()
	const limit, clients = 5, 40
	r := newRegistryWith(t, func(o *handlers.Options) { o.Limits.UploadSessions = limit })
	d2, err := db.Open(t.Context(), r.dbURL, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d2.Close)
	other := httptest.NewServer(handlers.New(handlers.Options{DB: d2, Blobs: nil, Logger: discard(),
		Limits: handlers.Limits{UploadSessions: limit}}))
	t.Cleanup(other.Close)
	for _, repo := range []string{"race/a", "race/b"} {
		var granted, refused atomic.Int64
		var wg sync.WaitGroup
		for i := range clients {
			base := r.srv.URL
			if i%2 == 1 {
				base = other.URL
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusAccepted:
					granted.Add(1)
				case http.StatusTooManyRequests:
					refused.Add(1)
				default:
					t.Errorf("POST: %d", resp.StatusCode)
				}
			}()
		}
		wg.Wait()
		if granted.Load() != limit || refused.Load() != clients-limit {
			t.Errorf("%s: %d granted, %d refused; want %d and %d", repo, granted.Load(), refused.Load(), limit, clients-limit)
		}
	}
}

// slowClient sends a PATCH whose body trickles: one byte every interval,
// forever, and returns the response.
func slowPatch(t *testing.T, base, location string, every time.Duration) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: registry\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n", location)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(every):
				if _, err := conn.Write([]byte("1\r\nx\r\n")); err != nil {
					return
				}
			}
		}
	}()
	conn.SetReadDeadline(time.Now().Add(time.Minute)) // a hang detector, not an assertion
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("slow PATCH got no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// A body slower than the minimum rate is cut off with 408, the upload
// keeps the bytes it had acknowledged, and the client resumes from there.
// A fast body is not affected by the same limits.
func TestSlowBodyIsCutOff(t *testing.T) {
	t.Parallel()
	r := newRegistryWith(t, func(o *handlers.Options) {
		o.Limits.MinBodyRate, o.Limits.BodyRateWindow = 1024, 300*time.Millisecond
	})
	first := bytes.Repeat([]byte("a"), 100_000)
	second := bytes.Repeat([]byte("b"), 4<<20)
	resp := r.do("POST", "/v2/slow/blobs/uploads/", nil)
	resp.expect(t, http.StatusAccepted, "")
	location := resp.Header.Get("Location")
	resp = r.do("PATCH", location, first, "Content-Type: application/octet-stream")
	resp.expect(t, http.StatusAccepted, "")

	slow, body := slowPatch(t, r.srv.URL, location, 20*time.Millisecond)
	if slow.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "slower than 1024 bytes per second") ||
		!slow.Close {
		t.Fatalf("slow PATCH: %d (close %v) %s", slow.StatusCode, slow.Close, body)
	}
	status := r.do("GET", location, nil)
	status.expect(t, http.StatusNoContent, "")
	if got := status.Header.Get("Range"); got != fmt.Sprintf("0-%d", len(first)-1) {
		t.Fatalf("after the cut-off the upload holds %s, want the first chunk", got)
	}
	// At full speed, 4 MiB take far less than a window each.
	r.do("PATCH", location, second, "Content-Type: application/octet-stream").expect(t, http.StatusAccepted, "")
	whole := digest.FromBytes(append(first, second...))
	r.do("PUT", location+"?digest="+whole.String(), nil).expect(t, http.StatusCreated, "")
	got := r.do("GET", "/v2/slow/blobs/"+whole.String(), nil)
	if !bytes.Equal(got.body, append(first, second...)) {
		t.Fatalf("the resumed blob has %d bytes", len(got.body))
	}
	// A manifest PUT whose body trickles is cut off the same way.
	conn, err := net.Dial("tcp", strings.TrimPrefix(r.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /v2/slow/manifests/v1 HTTP/1.1\r\nHost: registry\r\nContent-Type: %s\r\nContent-Length: 100\r\n\r\n{", mtManifest)
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	mresp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || mresp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("stalled manifest PUT: %v %v", mresp, err)
	}
}

// A client that goes away is counted and logged as 499, not as the 200
// net/http assumes when nothing was written.
func TestClientGoneIs499(t *testing.T) {
	t.Parallel()
	r := newRegistryWith(t, nil)
	r.pushManifest("gone/app", "v1", mtManifest, r.image("gone/app", "gone"))

	// An untag that waits for a row lock another transaction holds; the
	// client gives up meanwhile.
	conn, err := pgx.Connect(t.Context(), r.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `SELECT 1 FROM tags FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "DELETE", r.srv.URL+"/v2/gone/app/tags/v1", nil)
		_, err := http.DefaultClient.Do(req)
		done <- err
	}()
	// Wait until the untag waits for the lock, then hang up.
	for {
		var waiting int
		if err := tx.QueryRow(t.Context(), `SELECT count(*) FROM pg_locks WHERE NOT granted`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	tx.Rollback(t.Context())

	// A chunk whose client hangs up in the middle of the body.
	resp := r.do("POST", "/v2/gone/app/blobs/uploads/", nil)
	raw, err := net.Dial("tcp", strings.TrimPrefix(r.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(raw, "PATCH %s HTTP/1.1\r\nHost: registry\r\nContent-Length: 1000\r\n\r\nhalf", resp.Header.Get("Location"))
	raw.Close()

	waitFor(t, "two requests logged as 499", func() bool {
		return strings.Count(r.logs.String(), "status=499") == 2
	})
	if got := r.metric(`berth_http_requests_total{method="DELETE",route="tags",status="499"}`); got != 1 {
		t.Errorf("metric of the abandoned untag: %v", got)
	}
	if got := r.metric(`berth_http_requests_total{method="PATCH",route="upload",status="499"}`); got != 1 {
		t.Errorf("metric of the abandoned chunk: %v", got)
	}
	if strings.Contains(r.logs.String(), "status=200 ") {
		t.Errorf("a request was logged as 200:\n%s", r.logs)
	}
}

// The access log and the error body echo at most a few hundred bytes of a
// 500 KB URL.
func TestLongURLIsNotEchoed(t *testing.T) {
	t.Parallel()
	r := newRegistryWith(t, nil)
	long := strings.Repeat("a", 500_000)
	resp := r.do("DELETE", "/v2/"+long+"/tags/x", nil)
	if len(resp.body) > 2048 {
		t.Errorf("the error body is %d bytes", len(resp.body))
	}
	for _, line := range strings.Split(r.logs.String(), "\n") {
		if len(line) > 4096 {
			t.Errorf("a log line of %d bytes: %.200s…", len(line), line)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// mountTmpfs mounts a tmpfs of size bytes, a real disk that fills up.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// A push onto a full disk is answered 507 with the OCI body, counted, and
// logged once for the episode; the upload keeps what it had.
func TestStorageFull(t *testing.T) {
	t.Parallel()
	dir := mountTmpfs(t, 2<<20)
	store, err := blobstore.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := newRegistryWith(t, func(o *handlers.Options) { o.Blobs = store })
	var refused int
	for i := range 6 {
		blob := bytes.Repeat([]byte{byte(i)}, 700_000)
		resp := r.do("POST", "/v2/full/blobs/uploads/?digest="+digest.FromBytes(blob).String(), blob)
		if resp.StatusCode == http.StatusCreated {
			continue
		}
		resp.expect(t, http.StatusInsufficientStorage, "STORAGE_FULL")
		if resp.Header.Get("Retry-After") == "" || !strings.Contains(string(resp.body), "blob storage is full") ||
			strings.Contains(string(resp.body), dir) {
			t.Errorf("507: Retry-After %q, body %s", resp.Header.Get("Retry-After"), resp.body)
		}
		refused++
	}
	if refused < 2 {
		t.Fatalf("%d pushes of 700 kB refused on a 2 MiB disk", refused)
	}
	// A chunk onto the full disk: refused, and the session is unchanged.
	resp := r.do("POST", "/v2/full/blobs/uploads/", nil)
	location := resp.Header.Get("Location")
	r.do("PATCH", location, []byte("small"), "Content-Type: application/octet-stream").expect(t, http.StatusAccepted, "")
	r.do("PATCH", location, bytes.Repeat([]byte("x"), 1<<20), "Content-Type: application/octet-stream").
		expect(t, http.StatusInsufficientStorage, "STORAGE_FULL")
	if got := r.do("GET", location, nil).Header.Get("Range"); got != "0-4" {
		t.Errorf("after the refused chunk the upload holds %s, want 0-4", got)
	}
	if n := strings.Count(r.logs.String(), `msg="blob storage is full`); n != 1 {
		t.Errorf("the full disk was logged %d times for %d refusals, want once", n, refused+1)
	}
	if got := r.metric("berth_storage_full_refusals_total"); got != float64(refused+1) {
		t.Errorf("berth_storage_full_refusals_total = %v, want %d", got, refused+1)
	}
	if got := r.metric("berth_storage_full"); got != 1 {
		t.Errorf("berth_storage_full = %v", got)
	}
}
