package proxy_test

// Regressions found by a review of the cache: a client that does not read
// held up the fetch every other request waited for; a repository's 404
// for a blob was handed to other repositories' requests of the same
// digest, and a request of a second repository sharing a layer got 404;
// a cached tag removed within its TTL answered 404 until the TTL ran out.
// Each runs against a real upstream (Berth's own API on a database of
// its own) and a real cache on another.

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/handlers"
	"github.com/berth-registry/berth/proxy"
)

// cacheOf starts an upstream holding img in each of repos (team/<repo>),
// and a cache with prefix c in front of it; it returns the cache's URL and
// database.
func cacheOf(t *testing.T, img v1.Image, ttl, timeout time.Duration, upstreamDelay func(*http.Request), repos ...string) (string, *db.DB) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	upStore, err := blobstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	upAPI := handlers.New(handlers.Options{DB: dbtest.New(t), Blobs: upStore, Logger: log})
	var delay sync.Mutex
	delaying := false
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		delay.Lock()
		d := delaying
		delay.Unlock()
		if d && upstreamDelay != nil {
			upstreamDelay(r)
		}
		upAPI.ServeHTTP(w, r)
	}))
	t.Cleanup(up.Close)
	for _, repo := range repos {
		ref, err := name.ParseReference(strings.TrimPrefix(up.URL, "http://")+"/team/"+repo+":v1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	delay.Lock()
	delaying = true
	delay.Unlock()
	d := dbtest.New(t)
	if err := d.ProxyAdd(t.Context(), db.Proxy{Prefix: "c", Upstream: up.URL, RemotePrefix: "team", TTL: ttl}); err != nil {
		t.Fatal(err)
	}
	store, err := blobstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cache := proxy.New(proxy.Config{DB: d, Blobs: store, Timeout: timeout, Lease: 2 * time.Second, Logger: log, Registry: reg})
	srv := httptest.NewServer(handlers.New(handlers.Options{DB: d, Blobs: store, Logger: log, Registry: reg, Proxy: cache}))
	t.Cleanup(srv.Close)
	return srv.URL, d
}

func getBody(t *testing.T, url string) (int, []byte) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Minute} // a bound for a hang, not a timing assertion
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, b
}

// A client that asks for an uncached blob and never reads must not hold
// up the fetch: it is cut off after the timeout, and the next client gets
// the blob whole.
func TestCacheStalledClientDoesNotHoldTheFetch(t *testing.T) {
	t.Parallel()
	img, err := random.Image(32<<20, 1) // more than the sockets' buffers hold
	if err != nil {
		t.Fatal(err)
	}
	base, _ := cacheOf(t, img, time.Minute, time.Second, nil, "a")
	layers, _ := img.Layers()
	dgst, _ := layers[0].Digest()
	path := "/v2/c/a/blobs/" + dgst.String()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path) // and never read
	time.Sleep(300 * time.Millisecond)                            // let it claim the fetch (not an assertion)
	status, body := getBody(t, base+path)
	if status != http.StatusOK || digestOf(body) != dgst.String() {
		t.Fatalf("the second client got %d and %d bytes (digest %s), want the blob %s", status, len(body), digestOf(body), dgst)
	}
}

// A repository the upstream lacks answers 404 for a digest; that answer is
// not another repository's, and two repositories sharing the layers pulled
// at once both get them.
func TestCacheBlobAnswersStayWithTheirRepository(t *testing.T) {
	t.Parallel()
	img, err := random.Image(64<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	slow := func(r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			time.Sleep(300 * time.Millisecond) // so that the pulls below overlap
		}
	}
	base, _ := cacheOf(t, img, time.Minute, 10*time.Second, slow, "a", "b")
	layers, _ := img.Layers()
	dgst, _ := layers[0].Digest()
	if status, _ := getBody(t, base+"/v2/c/nothere/blobs/"+dgst.String()); status != http.StatusNotFound {
		t.Errorf("a blob of a repository the upstream lacks: %d, want 404", status)
	}
	if status, _ := getBody(t, base+"/v2/c/a/manifests/v1"); status != http.StatusOK {
		t.Fatalf("manifest of c/a: %d", status)
	}
	if status, body := getBody(t, base+"/v2/c/a/blobs/"+dgst.String()); status != http.StatusOK {
		t.Errorf("c/a's blob right after c/nothere's 404: %d %.200s", status, body)
	}
	host := strings.TrimPrefix(base, "http://")
	var wg sync.WaitGroup
	for _, repo := range []string{"a", "b", "a", "b"} {
		wg.Go(func() {
			ref, _ := name.ParseReference(host+"/c/"+repo+":v1", name.Insecure)
			got, err := remote.Image(ref)
			if err != nil {
				t.Errorf("%s: %v", repo, err)
				return
			}
			ls, _ := got.Layers()
			for _, l := range ls {
				rc, err := l.Compressed()
				if err != nil {
					t.Errorf("c/%s: %v", repo, err)
					return
				}
				if _, err := io.Copy(io.Discard, rc); err != nil {
					t.Errorf("c/%s: %v", repo, err)
				}
				rc.Close()
			}
		})
	}
	wg.Wait()
}

// A cached tag removed within its TTL (retention, an untag) is fetched
// again at the next pull, not answered 404 until the TTL ends.
func TestCacheTagRemovedWithinTTL(t *testing.T) {
	t.Parallel()
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	base, d := cacheOf(t, img, time.Hour, 10*time.Second, nil, "a")
	if status, _ := getBody(t, base+"/v2/c/a/manifests/v1"); status != http.StatusOK {
		t.Fatalf("first pull: %d", status)
	}
	if _, err := d.TagDelete(t.Context(), "c/a", "v1", db.TagCondition{}, db.Actor{Name: "retention:test", MayDelete: true}); err != nil {
		t.Fatal(err)
	}
	if status, body := getBody(t, base+"/v2/c/a/manifests/v1"); status != http.StatusOK {
		t.Errorf("pull after the cached tag was removed, within the TTL: %d %.200s", status, body)
	}
}

func digestOf(b []byte) string {
	h, _, _ := v1.SHA256(strings.NewReader(string(b)))
	return h.String()
}
