package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/berth-registry/berth/db/dbtest"
)

// The pull-through cache, end to end: the reference registry as the
// upstream, behind a counting reverse proxy written here (which can also
// answer 429/503, hang, or stall a blob), and three `berth serve` replicas
// on one database in front.

// registryBinary is in import_test.go.

// upstreamRegistry is a reference registry process.
type upstreamRegistry struct {
	url string
	cmd *exec.Cmd
}

func startUpstream(t *testing.T, extraConfig ...string) *upstreamRegistry {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	config := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n%s", filepath.Join(dir, "data"), addr, strings.Join(extraConfig, ""))
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(registryBinary(t), "serve", cfgPath)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	u := &upstreamRegistry{url: "http://" + addr, cmd: cmd}
	waitUntil(t, "the upstream registry to start", func() bool {
		resp, err := http.Get(u.url + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized
	})
	return u
}

// counter is a reverse proxy in front of the upstream that counts the GETs
// of manifests and blobs by path, and can misbehave on demand.
type counter struct {
	srv   *httptest.Server
	mu    sync.Mutex
	gets  map[string]int // "/v2/<repo>/manifests/<ref>" or ".../blobs/<digest>" → GETs
	mode  string         // "", "429", "503", "hang"
	stall string         // a blob path whose first GET sends half and then stalls
	// stalled is closed when the stalled GET has sent its half.
	stalled chan struct{}
}

func newCounter(t *testing.T, upstream string) *counter {
	target, _ := url.Parse(upstream)
	rp := httputil.NewSingleHostReverseProxy(target)
	c := &counter{gets: map[string]int{}}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		mode, stall := c.mode, c.stall
		counted := r.Method == http.MethodGet && (strings.Contains(r.URL.Path, "/manifests/") || strings.Contains(r.URL.Path, "/blobs/"))
		if counted && mode == "" {
			c.gets[r.URL.Path]++
		}
		first := r.URL.Path == stall && r.Method == http.MethodGet
		if first {
			c.stall = ""
		}
		c.mu.Unlock()
		switch mode {
		case "429":
			w.Header().Set("Retry-After", "7")
			http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit"}]}`, http.StatusTooManyRequests)
			return
		case "503":
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		case "hang":
			<-r.Context().Done()
			return
		}
		if first {
			// Half the blob, then nothing until the client goes away.
			rec := httptest.NewRecorder()
			rp.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.WriteHeader(rec.Code)
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			close(c.stalled)
			<-r.Context().Done()
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *counter) setMode(m string) { c.mu.Lock(); c.mode = m; c.mu.Unlock() }

func (c *counter) count(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets[path]
}

// Content pushed to the upstream.

func sha(b []byte) digest.Digest { return digest.FromBytes(b) }

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func pushUpstreamBlob(t *testing.T, base, repo string, b []byte) digest.Digest {
	t.Helper()
	d := sha(b)
	e := mustDo(t, http.MethodPost, fmt.Sprintf("%s/v2/%s/blobs/uploads/", base, repo), nil, http.StatusAccepted)
	loc, err := url.Parse(e.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	if !loc.IsAbs() {
		loc, _ = url.Parse(base + loc.String())
	}
	mustDo(t, http.MethodPut, loc.String(), b, http.StatusCreated, "Content-Type: application/octet-stream")
	return d
}

func pushUpstreamManifest(t *testing.T, base, repo, ref, mediaType string, body []byte) digest.Digest {
	t.Helper()
	mustDo(t, http.MethodPut, fmt.Sprintf("%s/v2/%s/manifests/%s", base, repo, ref), body, http.StatusCreated, "Content-Type: "+mediaType)
	return sha(body)
}

type upstreamImage struct {
	manifest []byte
	digest   digest.Digest
	blobs    []digest.Digest // config first
}

const (
	proxyOCIManifest = "application/vnd.oci.image.manifest.v1+json"
	proxyOCIIndex    = "application/vnd.oci.image.index.v1+json"
)

// pushUpstreamImage pushes an image of a config and layers of the given sizes
// (with subject and artifactType when given) and tags it ref.
func pushUpstreamImage(t *testing.T, base, repo, ref string, layers []int, extra string) upstreamImage {
	t.Helper()
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"n":%q}`, randomBytes(4)))
	img := upstreamImage{blobs: []digest.Digest{pushUpstreamBlob(t, base, repo, cfg)}}
	var descs []string
	for _, n := range layers {
		b := randomBytes(n)
		d := pushUpstreamBlob(t, base, repo, b)
		img.blobs = append(img.blobs, d)
		descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}`, d, n))
	}
	img.manifest = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]%s}`,
		proxyOCIManifest, img.blobs[0], len(cfg), strings.Join(descs, ","), extra))
	img.digest = pushUpstreamManifest(t, base, repo, ref, proxyOCIManifest, img.manifest)
	return img
}

// pull pulls an image through Berth as a client does, checking every
// digest, and returns the manifest's digest.
func pull(base, repo, ref string) (digest.Digest, error) {
	m, err := get(base+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		return "", err
	}
	var img struct {
		Config struct{ Digest digest.Digest }
		Layers []struct{ Digest digest.Digest }
	}
	if err := json.Unmarshal(m, &img); err != nil {
		return "", err
	}
	for _, d := range append([]digest.Digest{img.Config.Digest}, func() (l []digest.Digest) {
		for _, x := range img.Layers {
			l = append(l, x.Digest)
		}
		return
	}()...) {
		b, err := get(base+"/v2/"+repo+"/blobs/"+d.String(), nil)
		if err != nil {
			return "", err
		}
		if sha(b) != d {
			return "", fmt.Errorf("blob %s: got bytes of %s", d, sha(b))
		}
	}
	return sha(m), nil
}

// get returns the body of a 200, else an error with the status and body;
// hdr receives the response's headers.
func get(u string, hdr *http.Header) ([]byte, error) {
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Accept", proxyOCIManifest+", "+proxyOCIIndex)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if hdr != nil {
		*hdr = resp.Header
	}
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	return b, nil
}

func berthCommand(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	return berthCommandEnv(t, stdin, nil, args...)
}

// TestProxyPullThrough drives the cache through three replicas: 32
// concurrent pullers cause one upstream GET per manifest and blob; one
// platform of an index fetches only that child; the tag TTL; writes
// refused; referrers found through the fallback tag; the upstream failing
// (429, 503, hanging, stopped): cached tags served stale, uncached ones
// refused with the upstream's answer.
func TestProxyPullThrough(t *testing.T) {
	t.Parallel()
	up := startUpstream(t)
	ctr := newCounter(t, up.url)
	dbURL := dbtest.NewURL(t)
	storage := storageFlags(t)
	berthCommand(t, "", "proxy", "add", "hub", ctr.srv.URL, "--ttl", "2s", "--remote-prefix", "team", "--database-url", dbURL)
	// The same upstream with a TTL no test outlasts: what "within the TTL"
	// means, without depending on how fast the test runs.
	berthCommand(t, "", "proxy", "add", "hold", ctr.srv.URL, "--ttl", "1h", "--remote-prefix", "team", "--database-url", dbURL)
	var replicas []*replica
	for range 3 {
		replicas = append(replicas, startReplica(t, dbURL, storage, "--proxy-fetch-lease", "2s"))
	}
	// A fourth, whose upstream timeout is short, for the hanging upstream
	// (the others keep the default: a loaded machine must not make 32
	// pullers time out).
	impatient := startReplica(t, dbURL, storage, "--proxy-upstream-timeout", "1s", "--proxy-fetch-lease", "2s")
	list := berthCommand(t, "", "proxy", "list", "--database-url", dbURL)
	if !strings.Contains(list, "hub") || !strings.Contains(list, ctr.srv.URL) {
		t.Fatalf("proxy list:\n%s", list)
	}

	img := pushUpstreamImage(t, up.url, "team/app", "v1", []int{300 << 10, 1 << 20, 50}, "")
	t.Run("single flight", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for i := range 32 {
			wg.Go(func() {
				d, err := pull(replicas[i%3].url(), "hub/app", "v1")
				if err == nil && d != img.digest {
					err = fmt.Errorf("pulled %s, want %s", d, img.digest)
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if n := ctr.count("/v2/team/app/manifests/v1"); n != 1 {
			t.Errorf("upstream saw %d GETs of the manifest, want 1", n)
		}
		if n := ctr.count("/v2/team/app/manifests/" + img.digest.String()); n != 0 {
			t.Errorf("upstream saw %d GETs of the manifest by digest, want 0", n)
		}
		for _, b := range img.blobs {
			if n := ctr.count("/v2/team/app/blobs/" + b.String()); n != 1 {
				t.Errorf("upstream saw %d GETs of blob %s, want 1", n, b)
			}
		}
	})

	// What the cache stored is recorded as pushes by its actor: the
	// manifest with the tag it was pulled by, and each blob.
	t.Run("events", func(t *testing.T) {
		want := map[string]string{img.digest.String(): "v1"}
		for _, b := range img.blobs {
			want[b.String()] = ""
		}
		got := map[string]string{}
		for _, ev := range repoEvents(t, replicas[0].url(), "hub/app") {
			if ev.Action != "push" || ev.Actor.Name != "proxy" {
				t.Errorf("event %s of %s:%s by %q, want only pushes by proxy", ev.Action, ev.Target.Digest, ev.Target.Tag, ev.Actor.Name)
				continue
			}
			if _, dup := got[ev.Target.Digest]; dup {
				t.Errorf("%s pushed twice", ev.Target.Digest)
			}
			got[ev.Target.Digest] = ev.Target.Tag
		}
		if !maps.Equal(got, want) {
			t.Errorf("pushes by proxy (digest → tag) %v, want %v", got, want)
		}
	})

	t.Run("writes refused", func(t *testing.T) {
		base := replicas[0].url() + "/v2/hub/app"
		for _, c := range []struct{ method, path string }{
			{http.MethodPut, "/manifests/v2"},
			{http.MethodDelete, "/manifests/" + img.digest.String()},
			{http.MethodDelete, "/tags/v1"},
			{http.MethodPost, "/blobs/uploads/"},
			{http.MethodPost, "/blobs/uploads/?mount=" + img.blobs[0].String() + "&from=hub/app"},
			{http.MethodDelete, "/blobs/" + img.blobs[0].String()},
		} {
			e := mustDo(t, c.method, base+c.path, img.manifest, http.StatusForbidden, "Content-Type: "+proxyOCIManifest)
			if !strings.Contains(string(e.body), "DENIED") || !strings.Contains(string(e.body), "pull-through cache of "+ctr.srv.URL) {
				t.Errorf("%s %s: %s", c.method, c.path, e.body)
			}
		}
	})

	t.Run("unknown upstream", func(t *testing.T) {
		for path, code := range map[string]string{
			"/v2/hub/app/manifests/nope":                           "MANIFEST_UNKNOWN",
			"/v2/hub/app/blobs/" + sha([]byte("nothing")).String(): "BLOB_UNKNOWN",
			"/v2/hub/nothing/manifests/" + img.digest.String():     "MANIFEST_UNKNOWN",
			"/v2/hub/nothing/tags/list":                            "NAME_UNKNOWN",
		} {
			e := mustDo(t, http.MethodGet, replicas[2].url()+path, nil, http.StatusNotFound)
			if !strings.Contains(string(e.body), code) || !strings.Contains(string(e.body), "answered 404") {
				t.Errorf("%s: %s", path, e.body)
			}
		}
	})

	t.Run("sparse index", func(t *testing.T) {
		a := pushUpstreamImage(t, up.url, "team/multi", "amd64", []int{1000}, "")
		b := pushUpstreamImage(t, up.url, "team/multi", "arm64", []int{2000}, "")
		index := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[`+
			`{"mediaType":%q,"digest":%q,"size":%d,"platform":{"architecture":"amd64","os":"linux"}},`+
			`{"mediaType":%q,"digest":%q,"size":%d,"platform":{"architecture":"arm64","os":"linux"}}]}`,
			proxyOCIIndex, proxyOCIManifest, a.digest, len(a.manifest), proxyOCIManifest, b.digest, len(b.manifest)))
		idx := pushUpstreamManifest(t, up.url, "team/multi", "latest", proxyOCIIndex, index)
		if _, err := get(replicas[1].url()+"/v2/hub/multi/manifests/latest", nil); err != nil {
			t.Fatal(err)
		}
		if d, err := pull(replicas[2].url(), "hub/multi", a.digest.String()); err != nil || d != a.digest {
			t.Fatalf("pull of one platform: %v %s", err, d)
		}
		if n := ctr.count("/v2/team/multi/manifests/" + b.digest.String()); n != 0 {
			t.Errorf("the other platform was fetched %d times", n)
		}
		for _, d := range b.blobs {
			if n := ctr.count("/v2/team/multi/blobs/" + d.String()); n != 0 {
				t.Errorf("a blob of the other platform was fetched %d times", n)
			}
		}
		listing, err := get(replicas[0].url()+"/v2/hub/multi/manifests/_list", nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []digest.Digest{idx, a.digest} {
			if !strings.Contains(string(listing), want.String()) {
				t.Errorf("_list lacks %s: %s", want, listing)
			}
		}
		if strings.Contains(string(listing), b.digest.String()) {
			t.Errorf("_list shows the absent child: %s", listing)
		}
		page, err := get(replicas[0].url()+"/ui/r/hub/multi/-/manifests/"+idx.String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(page), "(not cached)") || !strings.Contains(string(page), "/ui/r/hub/multi/-/manifests/"+a.digest.String()) {
			t.Errorf("the web interface's index page does not show the cached child linked and the other one not cached:\n%s", page)
		}
	})

	t.Run("referrers", func(t *testing.T) {
		subject := fmt.Sprintf(`,"artifactType":"application/vnd.example.sbom","subject":{"mediaType":%q,"digest":%q,"size":%d}`,
			proxyOCIManifest, img.digest, len(img.manifest))
		art := pushUpstreamImage(t, up.url, "team/app", "sbom", []int{64}, subject)
		fallback := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":%d,"artifactType":"application/vnd.example.sbom"}]}`,
			proxyOCIIndex, proxyOCIManifest, art.digest, len(art.manifest)))
		pushUpstreamManifest(t, up.url, "team/app", "sha256-"+img.digest.Encoded(), proxyOCIIndex, fallback)
		body, err := get(replicas[2].url()+"/v2/hub/app/referrers/"+img.digest.String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(body), art.digest.String()) {
			t.Fatalf("referrers through the cache: %s", body)
		}
	})

	t.Run("ttl", func(t *testing.T) {
		if d, err := pull(replicas[0].url(), "hold/app", "v1"); err != nil || d != img.digest {
			t.Fatalf("before the move: %v, got %s, want %s", err, d, img.digest)
		}
		moved := pushUpstreamImage(t, up.url, "team/app", "v1", []int{10}, "")
		if d, err := pull(replicas[1].url(), "hold/app", "v1"); err != nil || d != img.digest {
			t.Fatalf("within the TTL: %v, got %s, want the old %s", err, d, img.digest)
		}
		time.Sleep(2100 * time.Millisecond) // more than hub's TTL
		if d, err := pull(replicas[1].url(), "hub/app", "v1"); err != nil || d != moved.digest {
			t.Fatalf("after the TTL: %v, got %s, want the new %s", err, d, moved.digest)
		}
		img = moved
	})

	t.Run("tag list", func(t *testing.T) {
		pushUpstreamImage(t, up.url, "team/app", "only-upstream", []int{10}, "")
		body, err := get(replicas[0].url()+"/v2/hub/app/tags/list", nil)
		if err != nil {
			t.Fatal(err)
		}
		var list struct{ Tags []string }
		json.Unmarshal(body, &list)
		if !slices.Contains(list.Tags, "only-upstream") || !slices.Contains(list.Tags, "v1") {
			t.Errorf("tag list through the cache: %s", body)
		}
		var hdr http.Header
		body, err = get(replicas[0].url()+"/v2/hub/app/tags/list?n=1", &hdr)
		if err != nil || !strings.Contains(hdr.Get("Link"), "last=") || strings.Count(string(body), ",") != 1 {
			t.Errorf("first page of one tag: %v %s %v", err, body, hdr)
		}
	})

	pushUpstreamImage(t, up.url, "team/app", "uncached-429", []int{10}, "")
	pushUpstreamImage(t, up.url, "team/app", "uncached-hang", []int{10}, "")
	pushUpstreamImage(t, up.url, "team/app", "uncached-down", []int{10}, "")
	t.Run("upstream failing", func(t *testing.T) {
		for _, c := range []struct {
			mode, tag string
			status    int
			message   string
			via       []*replica
		}{
			{"429", "uncached-429", http.StatusTooManyRequests, "answered 429", replicas},
			{"503", "uncached-429", http.StatusBadGateway, "answered 503", replicas},
			{"hang", "uncached-hang", http.StatusGatewayTimeout, "no answer within 1s", []*replica{impatient, impatient}},
		} {
			ctr.setMode(c.mode)
			time.Sleep(2100 * time.Millisecond) // the TTL of v1, and the memory of the last failure
			var hdr http.Header
			if d, err := pull(c.via[0].url(), "hub/app", "v1"); err != nil || d != img.digest {
				t.Fatalf("%s: cached pull: %v %s", c.mode, err, d)
			}
			if _, err := get(c.via[0].url()+"/v2/hub/app/manifests/v1", &hdr); err != nil || hdr.Get("Warning") != `110 - "Response is Stale"` ||
				!strings.Contains(hdr.Get("X-Berth-Proxy-Stale"), ctr.srv.URL) {
				t.Errorf("%s: cached pull not marked stale: %v %v", c.mode, err, hdr)
			}
			e := mustDo(t, http.MethodGet, c.via[1].url()+"/v2/hub/app/manifests/"+c.tag, nil, c.status)
			if !strings.Contains(string(e.body), ctr.srv.URL) || !strings.Contains(string(e.body), c.message) {
				t.Errorf("%s: uncached pull: %s", c.mode, e.body)
			}
		}
		ctr.setMode("")
		up.cmd.Process.Kill()
		up.cmd.Wait()
		time.Sleep(2100 * time.Millisecond)
		if d, err := pull(replicas[2].url(), "hub/app", "v1"); err != nil || d != img.digest {
			t.Fatalf("upstream stopped: cached pull: %v %s", err, d)
		}
		e := mustDo(t, http.MethodGet, replicas[2].url()+"/v2/hub/app/manifests/uncached-down", nil, http.StatusBadGateway)
		if !strings.Contains(string(e.body), "UNAVAILABLE") {
			t.Errorf("upstream stopped: uncached pull: %s", e.body)
		}
		var hdr http.Header
		body, err := get(replicas[2].url()+"/v2/hub/app/tags/list", &hdr)
		if err != nil || !strings.Contains(string(body), `"v1"`) || strings.Contains(string(body), "only-upstream") || hdr.Get("Warning") == "" {
			t.Errorf("upstream stopped: tag list: %v %s %v", err, body, hdr)
		}
	})
}

// TestProxyClaimantKilled kills the replica that is fetching a blob (the
// upstream stalls halfway through it); a client waiting on another replica
// gets the blob once the killed replica's lease has expired and its own
// replica has taken the fetch over.
func TestProxyClaimantKilled(t *testing.T) {
	t.Parallel()
	up := startUpstream(t)
	ctr := newCounter(t, up.url)
	dbURL := dbtest.NewURL(t)
	storage := storageFlags(t)
	berthCommand(t, "", "proxy", "add", "", ctr.srv.URL, "--database-url", dbURL)
	a := startReplica(t, dbURL, storage, "--proxy-fetch-lease", "2s")
	b := startReplica(t, dbURL, storage, "--proxy-fetch-lease", "2s")
	img := pushUpstreamImage(t, up.url, "library/big", "1", []int{4 << 20}, "")
	layer := "/v2/library/big/blobs/" + img.blobs[1].String()
	ctr.mu.Lock()
	ctr.stall, ctr.stalled = layer, make(chan struct{})
	ctr.mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.url()+layer, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	select {
	case <-ctr.stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("the fetch did not start")
	}
	waiter := make(chan error, 1)
	go func() {
		body, err := get(b.url()+layer, nil)
		if err == nil && sha(body) != img.blobs[1] {
			err = fmt.Errorf("got bytes of %s", sha(body))
		}
		waiter <- err
	}()
	time.Sleep(300 * time.Millisecond) // b is waiting on a's claim
	t.Logf("%s: killing the claimant", time.Now().Format(time.StampMilli))
	a.cmd.Process.Kill()
	select {
	case err := <-waiter:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: the waiter has the blob", time.Now().Format(time.StampMilli))
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting client did not get the blob")
	}
	if n := ctr.count(layer); n != 2 {
		t.Errorf("upstream saw %d GETs of the blob, want 2 (the killed fetch and the one that took over)", n)
	}
	// Mirror mode (empty prefix): the manifest pulls through too.
	if d, err := pull(b.url(), "library/big", "1"); err != nil || d != img.digest {
		t.Fatalf("pull through the mirror: %v %s", err, d)
	}
}

// TestProxyUpstreamAuth pulls through proxies whose upstreams want
// credentials: another Berth with --auth token (the Docker token
// protocol, with the stored user and password, sealed with
// --proxy-secret-key), and the reference registry with htpasswd (Basic).
// A proxy without credentials gets the upstream's refusal. The cache's own
// --auth applies to proxied repositories as to any: the pull grant to
// pull, and a push is refused even with the push grant.
func TestProxyUpstreamAuth(t *testing.T) {
	t.Parallel()
	// The token upstream: a Berth whose user alice may pull and push team/**.
	upURL := dbtest.NewURL(t)
	tokenUp := startReplica(t, upURL, []string{"--storage-dir", t.TempDir()}, "--auth", "token")
	berthCommand(t, "alice-secret\n", "user", "add", "alice", "--password-stdin", "--database-url", upURL)
	berthCommand(t, "", "grant", "alice", "team/**", "pull,push", "--database-url", upURL)
	alice := &authn.Basic{Username: "alice", Password: "alice-secret"}
	tokenImg := pushRandom(t, tokenUp.addr+"/team/app:v1", alice)

	// The Basic upstream: the reference registry with an htpasswd file.
	hash, err := bcrypt.GenerateFromPassword([]byte("bob-secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("bob:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	basicUp := startUpstream(t, fmt.Sprintf("auth:\n  htpasswd:\n    realm: test\n    path: %s\n", htpasswd))
	bob := &authn.Basic{Username: "bob", Password: "bob-secret"}
	basicImg := pushRandom(t, strings.TrimPrefix(basicUp.url, "http://")+"/vendor/tool:2", bob)

	dbURL := dbtest.NewURL(t)
	const key = "a-key-of-the-operator-0123456789"
	berthCommandEnv(t, "alice-secret\n", []string{"BERTH_PROXY_SECRET_KEY=" + key},
		"proxy", "add", "tok", tokenUp.url(), "--username", "alice", "--password-stdin", "--database-url", dbURL)
	berthCommand(t, "bob-secret\n", "proxy", "add", "basic", basicUp.url, "--username", "bob", "--password-stdin", "--database-url", dbURL)
	berthCommand(t, "", "proxy", "add", "anon", tokenUp.url(), "--database-url", dbURL)
	if list := berthCommand(t, "", "proxy", "list", "--database-url", dbURL); strings.Contains(list, "secret") {
		t.Fatalf("proxy list shows a password:\n%s", list)
	}
	// The cache has authentication of its own: carol may pull (and push)
	// everything, anonymous nothing.
	cache := startReplica(t, dbURL, []string{"--storage-dir", t.TempDir()}, "--proxy-secret-key", key, "--auth", "basic")
	berthCommand(t, "carol-pw\n", "user", "add", "carol", "--password-stdin", "--database-url", dbURL)
	berthCommand(t, "", "grant", "carol", "**", "pull,push", "--database-url", dbURL)
	carol := "http://carol:carol-pw@" + cache.addr
	mustDo(t, http.MethodGet, cache.url()+"/v2/tok/team/app/manifests/v1", nil, http.StatusUnauthorized)
	if d, err := pull(carol, "tok/team/app", "v1"); err != nil || d != tokenImg {
		t.Fatalf("through the token upstream: %v %s, want %s", err, d, tokenImg)
	}
	if d, err := pull(carol, "basic/vendor/tool", "2"); err != nil || d != basicImg {
		t.Fatalf("through the Basic upstream: %v %s, want %s", err, d, basicImg)
	}
	if e := mustDo(t, http.MethodPost, carol+"/v2/tok/team/app/blobs/uploads/", nil, http.StatusForbidden); !strings.Contains(string(e.body), "pull-through cache") {
		t.Errorf("a push with the push grant: %s", e.body)
	}
	e := mustDo(t, http.MethodGet, carol+"/v2/anon/team/app/manifests/v1", nil, http.StatusBadGateway)
	if !strings.Contains(string(e.body), "answered 401") {
		t.Errorf("without credentials: %s", e.body)
	}
	if strings.Contains(cache.logText(), "alice-secret") || strings.Contains(cache.logText(), "bob-secret") {
		t.Error("a password is in the log")
	}
}

// pushRandom pushes a small random image to ref with auth and returns
// its digest.
func pushRandom(t *testing.T, ref string, auth authn.Authenticator) digest.Digest {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(1<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithAuth(auth)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(d.String())
}

func berthCommandEnv(t *testing.T, stdin string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(berthBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// berth proxy: bad input is refused saying what is wrong; add, list
// (never the password), delete.
func TestProxyCLI(t *testing.T) {
	t.Parallel()
	dbURL := dbtest.NewURL(t)
	for _, tc := range []struct {
		args    []string
		stdin   string
		mention string
	}{
		{[]string{"add", "Hub", "https://registry-1.docker.io"}, "", `prefix "Hub" is not a repository name`},
		{[]string{"add", "hub", "ftp://example.com"}, "", "want http://host[:port] or https://host[:port]"},
		{[]string{"add", "hub", "https://u:p@example.com"}, "", "must not hold credentials"},
		{[]string{"add", "hub", "https://example.com", "--username", "u"}, "", "--username and --password-stdin go together"},
		{[]string{"add", "hub", "https://example.com", "--remote-prefix", "Lib"}, "", `--remote-prefix "Lib"`},
		{[]string{"add", "hub"}, "", "usage"},
		{[]string{"delete", "nothing"}, "", "no proxy has this prefix"},
		{[]string{"purge"}, "", "unknown command: proxy purge"},
	} {
		berthCLI(t, dbURL, tc.stdin, append([]string{"proxy"}, tc.args...)...).fails(t, tc.mention)
	}
	berthCLI(t, dbURL, "", "proxy", "add", "", "https://registry-1.docker.io").ok(t)
	berthCLI(t, dbURL, "hunter2-upstream\n", "proxy", "add", "ghcr", "https://ghcr.io", "--username", "bot", "--password-stdin", "--ttl", "10m").ok(t)
	berthCLI(t, dbURL, "", "proxy", "add", "ghcr", "https://ghcr.io").fails(t, "a proxy with this prefix exists")
	list := berthCLI(t, dbURL, "", "proxy", "list").ok(t).stdout
	if !strings.Contains(list, `"" (mirror)  https://registry-1.docker.io`) || !strings.Contains(list, "ghcr") ||
		!strings.Contains(list, "bot") || !strings.Contains(list, "10m0s") || strings.Contains(list, "hunter2") {
		t.Fatalf("proxy list:\n%s", list)
	}
	berthCLI(t, dbURL, "", "proxy", "delete", "ghcr").ok(t)
	if list := berthCLI(t, dbURL, "", "proxy", "list").ok(t).stdout; strings.Contains(list, "ghcr") {
		t.Fatalf("deleted proxy listed:\n%s", list)
	}
}
