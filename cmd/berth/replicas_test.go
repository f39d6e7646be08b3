package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/internal/roundrobin"
)

// The tests in this file run berth as separate processes, the way replicas
// run in production: several `berth serve` on one database and one blob
// store, behind a round-robin proxy, so that consecutive requests of one
// push land on different replicas.

var (
	buildOnce sync.Once
	binDir    string // removed by TestMain
	binPath   string
	buildErr  error
)

// TestMain removes the binary berthBinary built (about 27 MB) once every
// test has run, so test runs do not fill /tmp. (A run killed by -timeout or
// a signal still leaves it behind.)
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// berthBinary builds cmd/berth once per test run, into binDir.
func berthBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "berth-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binDir, binPath = dir, filepath.Join(dir, "berth")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// replica is one `berth serve` process.
type replica struct {
	cmd     *exec.Cmd
	addr    string
	logMu   sync.Mutex
	log     bytes.Buffer
	exited  chan struct{} // closed when the process has exited
	exitErr error
}

var servingAddr = regexp.MustCompile(`msg="berth serving" addr=(\S+)`)

// storageFlags are the blob store settings every replica shares: the S3
// bucket of the test environment when there is one (scripts/test.sh starts
// versitygw), else one directory.
func storageFlags(t *testing.T) []string {
	if ep := os.Getenv("BERTH_TEST_S3_ENDPOINT"); ep != "" {
		return []string{"--storage", "s3", "--s3-endpoint", ep, "--s3-bucket", os.Getenv("BERTH_TEST_S3_BUCKET"),
			"--s3-prefix", fmt.Sprintf("replicas-%d/", time.Now().UnixNano()), "--s3-force-path-style"}
	}
	return []string{"--storage-dir", t.TempDir()}
}

func startReplica(t *testing.T, dbURL string, storage []string, extra ...string) *replica {
	t.Helper()
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--database-url", dbURL,
		"--data-dir", t.TempDir(), "--log-level", "info"}, storage...)
	return startBerth(t, append(args, extra...)...)
}

// startBerth runs `berth <args>`, a serve logging at info level, and
// returns once it logs that it is serving. It is killed when the test ends.
func startBerth(t *testing.T, args ...string) *replica {
	t.Helper()
	cmd := exec.Command(berthBinary(t), args...)
	cmd.Env = append(os.Environ(),
		"AWS_ACCESS_KEY_ID="+os.Getenv("BERTH_TEST_S3_ACCESS_KEY"),
		"AWS_SECRET_ACCESS_KEY="+os.Getenv("BERTH_TEST_S3_SECRET_KEY"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &replica{cmd: cmd, exited: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			r.logMu.Lock()
			r.log.WriteString(sc.Text() + "\n")
			r.logMu.Unlock()
			if m := servingAddr.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		r.exitErr = cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-r.exited
		if t.Failed() {
			t.Logf("replica log:\n%s", r.logText())
		}
	})
	select {
	case r.addr = <-addr:
	case <-r.exited:
		t.Fatalf("replica exited: %v\n%s", r.exitErr, r.logText())
	case <-time.After(30 * time.Second):
		t.Fatalf("replica did not start:\n%s", r.logText())
	}
	return r
}

func (r *replica) logText() string {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	return r.log.String()
}

func (r *replica) url() string { return "http://" + r.addr }

// bytesRead is how many bytes the replica's process has read so far, from
// sockets and files alike (rchar of /proc/<pid>/io).
func (r *replica) bytesRead(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", r.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("read the I/O counters of the replica: %v", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "rchar: "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatalf("rchar of the replica: %v", err)
			}
			return n
		}
	}
	t.Fatalf("no rchar in /proc/%d/io:\n%s", r.cmd.Process.Pid, b)
	return 0
}

// waitRead waits until the replica has read at least n bytes since
// bytesRead returned before: a request body being sent to it has reached
// its handler. The replica's other reads (its database connections) count
// too, but they are far smaller than the bodies the tests wait for.
func (r *replica) waitRead(t *testing.T, before, n int64) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("the replica to read %d bytes", n), func() bool {
		select {
		case <-r.exited:
			t.Fatalf("replica exited: %v\n%s", r.exitErr, r.logText())
		default:
		}
		return r.bytesRead(t)-before >= n
	})
}

// waitUntil polls cond until it holds, failing the test after 30 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// roundRobin is a reverse proxy that sends each request to the next
// replica, as a load balancer without sticky sessions does.
func roundRobin(t *testing.T, replicas []*replica) *httptest.Server {
	targets := make([]*url.URL, len(replicas))
	for i, r := range replicas {
		targets[i], _ = url.Parse(r.url())
	}
	srv := httptest.NewServer(roundrobin.New(targets))
	t.Cleanup(srv.Close)
	return srv
}

// TestReplicasRoundRobin pushes and pulls through three replicas behind a
// round-robin proxy: every request of a chunked upload lands on another
// replica than the one before.
func TestReplicasRoundRobin(t *testing.T) {
	t.Parallel()
	dbURL := dbtest.NewURL(t)
	storage := storageFlags(t)
	var replicas []*replica
	for range 3 {
		replicas = append(replicas, startReplica(t, dbURL, storage))
	}
	lb := roundRobin(t, replicas)
	host := strings.TrimPrefix(lb.URL, "http://")

	// A chunked upload, one chunk per replica.
	content := bytes.Repeat([]byte("spread across replicas "), 50000)
	d := digest.FromBytes(content)
	resp := mustDo(t, "POST", lb.URL+"/v2/lb/chunked/blobs/uploads/", nil, 202)
	loc := resp.Header.Get("Location")
	chunk := len(content) / 4
	for off := 0; off < len(content); off += chunk {
		end := min(off+chunk, len(content))
		resp = mustDo(t, "PATCH", lb.URL+loc, content[off:end], 202, fmt.Sprintf("Content-Range: %d-%d", off, end-1))
		loc = resp.Header.Get("Location")
	}
	mustDo(t, "PUT", lb.URL+loc+"?digest="+d.String(), nil, 201)
	for range 3 { // each replica serves it
		if got := mustDo(t, "GET", lb.URL+"/v2/lb/chunked/blobs/"+d.String(), nil, 200); !bytes.Equal(got.body, content) {
			t.Fatal("blob differs")
		}
	}

	// A client library's push and pull.
	img, err := random.Image(2<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host+"/lb/image:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push through the proxy: %v", err)
	}
	pulled, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull through the proxy: %v", err)
	}
	want, _ := img.Digest()
	if got, _ := pulled.Digest(); got != want {
		t.Fatalf("pulled %s, pushed %s", got, want)
	}
	layers, _ := pulled.Layers()
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("read layer through the proxy: %v", err)
		}
		rc.Close()
	}
}

// TestKillReplicaMidUpload kills (SIGKILL) the replica that is receiving a
// chunk. What was acknowledged before survives, and the client finishes
// the upload through the other replicas.
func TestKillReplicaMidUpload(t *testing.T) {
	t.Parallel()
	dbURL := dbtest.NewURL(t)
	storage := storageFlags(t)
	a := startReplica(t, dbURL, storage)
	b := startReplica(t, dbURL, storage)
	c := startReplica(t, dbURL, storage)

	content := bytes.Repeat([]byte("survives a killed replica "), 40000)
	d := digest.FromBytes(content)
	first := len(content) / 3
	resp := mustDo(t, "POST", a.url()+"/v2/kill/blobs/uploads/", nil, 202)
	loc := resp.Header.Get("Location")
	mustDo(t, "PATCH", a.url()+loc, content[:first], 202, fmt.Sprintf("Content-Range: 0-%d", first-1))

	// The second chunk goes to b, which dies halfway through receiving it.
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("PATCH", b.url()+loc, pr)
	req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", first, len(content)-1))
	req.ContentLength = int64(len(content) - first)
	failed := make(chan error, 1)
	bBefore := b.bytesRead(t)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		failed <- err
	}()
	half := first + (len(content)-first)/2
	if _, err := pw.Write(content[first:half]); err != nil {
		t.Fatal(err)
	}
	b.waitRead(t, bBefore, int64(half-first)) // b has received that much of it
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	pw.CloseWithError(io.ErrUnexpectedEOF)
	if err := <-failed; err == nil {
		t.Fatal("the chunk sent to the killed replica succeeded")
	}

	// Another replica knows exactly what was acknowledged.
	status := mustDo(t, "GET", c.url()+loc, nil, 204)
	if got, want := status.Header.Get("Range"), fmt.Sprintf("0-%d", first-1); got != want {
		t.Fatalf("after the kill the upload stands at %q, want %q", got, want)
	}
	mustDo(t, "PATCH", c.url()+loc, content[first:], 202, fmt.Sprintf("Content-Range: %d-%d", first, len(content)-1))
	mustDo(t, "PUT", a.url()+loc+"?digest="+d.String(), nil, 201)
	if got := mustDo(t, "GET", c.url()+"/v2/kill/blobs/"+d.String(), nil, 200); !bytes.Equal(got.body, content) {
		t.Fatal("blob differs after the kill")
	}
}

// TestGracefulShutdown sends SIGTERM while a chunk is still arriving: the
// replica stops accepting new connections but finishes the request.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	r := startReplica(t, dbtest.NewURL(t), storageFlags(t))
	resp := mustDo(t, "POST", r.url()+"/v2/term/blobs/uploads/", nil, 202)
	loc := resp.Header.Get("Location")
	content := bytes.Repeat([]byte("in flight "), 10000)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("PATCH", r.url()+loc, pr)
	req.ContentLength = int64(len(content))
	result := make(chan *http.Response, 1)
	before := r.bytesRead(t)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("in-flight request failed: %v", err)
			result <- nil
			return
		}
		result <- resp
	}()
	pw.Write(content[:len(content)/2])
	r.waitRead(t, before, int64(len(content)/2)) // the request is in the handler
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "berth to stop accepting connections after SIGTERM", func() bool {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	pw.Write(content[len(content)/2:])
	pw.Close()
	if resp := <-result; resp == nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("in-flight request after SIGTERM: %v", resp)
	} else if got := resp.Header.Get("Range"); got != fmt.Sprintf("0-%d", len(content)-1) {
		t.Fatalf("Range %q", got)
	}
	select {
	case <-r.exited:
		if r.exitErr != nil {
			t.Fatalf("berth exited with %v after SIGTERM", r.exitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("berth did not exit after SIGTERM")
	}
}

type exchange struct {
	*http.Response
	body []byte
}

func mustDo(t *testing.T, method, u string, body []byte, want int, header ...string) exchange {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %s, want %d", method, u, resp.StatusCode, b, want)
	}
	return exchange{resp, b}
}

// With --s3-redirect a blob download is a redirect to a presigned S3 URL,
// which a client follows to the bytes.
func TestS3Redirect(t *testing.T) {
	t.Parallel()
	if os.Getenv("BERTH_TEST_S3_ENDPOINT") == "" {
		t.Skip("no S3 server: set BERTH_TEST_S3_ENDPOINT (scripts/test.sh starts versitygw)")
	}
	r := startReplica(t, dbtest.NewURL(t), storageFlags(t), "--s3-redirect")
	content := []byte("served by S3 itself")
	d := digest.FromBytes(content)
	mustDo(t, "POST", r.url()+"/v2/redirect/blobs/uploads/?digest="+d.String(), content, 201)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(r.url() + "/v2/redirect/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusTemporaryRedirect ||
		!strings.HasPrefix(loc, os.Getenv("BERTH_TEST_S3_ENDPOINT")) || !strings.Contains(loc, "X-Amz-Signature=") {
		t.Fatalf("GET answered %d Location %q, want a 307 to a presigned URL", resp.StatusCode, loc)
	}
	if got := mustDo(t, "GET", r.url()+"/v2/redirect/blobs/"+d.String(), nil, 200); !bytes.Equal(got.body, content) {
		t.Fatalf("following the redirect gave %q", got.body)
	}
	mustDo(t, "HEAD", r.url()+"/v2/redirect/blobs/"+d.String(), nil, 200) // HEAD is answered by berth
}
