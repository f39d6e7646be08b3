package proxy_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/handlers"
	"github.com/berth-registry/berth/proxy"
)

// In one process, so that the race detector sees the cache's own
// concurrency (the in-process group, the claim loop, the streaming tee):
// two caches ("replicas") on one database and one blob store in front of
// an upstream (a Berth, a real registry), 32 pullers through both. The
// upstream must see one GET per manifest and per blob. The end-to-end
// tests with separate processes and the reference registry are in
// cmd/berth (proxy_test.go).
func TestCacheSingleFlightInProcess(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	upDB := dbtest.New(t)
	upStore, err := blobstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	gets := map[string]int{}
	upAPI := handlers.New(handlers.Options{DB: upDB, Blobs: upStore, Logger: log})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && (strings.Contains(r.URL.Path, "/blobs/") || strings.Contains(r.URL.Path, "/manifests/")) {
			mu.Lock()
			gets[r.URL.Path]++
			mu.Unlock()
		}
		upAPI.ServeHTTP(w, r)
	}))
	defer up.Close()
	host := strings.TrimPrefix(up.URL, "http://")
	img, err := random.Image(256<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	upRef, err := name.ParseReference(host+"/team/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(upRef, img); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	clear(gets)
	mu.Unlock()

	url := dbtest.NewURL(t)
	storeDir := t.TempDir()
	var caches []string
	for i := range 2 {
		d, err := db.Open(t.Context(), url, db.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		if i == 0 {
			if err := d.ProxyAdd(t.Context(), db.Proxy{Prefix: "c", Upstream: up.URL, RemotePrefix: "team", TTL: time.Minute}); err != nil {
				t.Fatal(err)
			}
		}
		store, err := blobstore.NewFS(storeDir)
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		cache := proxy.New(proxy.Config{DB: d, Blobs: store, Lease: 2 * time.Second, Logger: log, Registry: reg})
		srv := httptest.NewServer(handlers.New(handlers.Options{DB: d, Blobs: store, Logger: log, Registry: reg, Proxy: cache}))
		t.Cleanup(srv.Close)
		caches = append(caches, strings.TrimPrefix(srv.URL, "http://"))
	}

	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			ref, err := name.ParseReference(caches[i%2]+"/c/app:v1", name.Insecure)
			if err != nil {
				t.Error(err)
				return
			}
			got, err := remote.Image(ref)
			if err != nil {
				t.Error(err)
				return
			}
			layers, err := got.Layers()
			if err != nil {
				t.Error(err)
				return
			}
			for _, l := range layers {
				rc, err := l.Compressed() // verified against its digest at EOF
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := io.Copy(io.Discard, rc); err != nil {
					t.Error(err)
				}
				rc.Close()
			}
			if _, err := got.RawConfigFile(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(gets) != 5 { // the manifest by tag, the config, three layers
		t.Errorf("upstream GETs of %d paths, want 5: %v", len(gets), gets)
	}
	for path, n := range gets {
		if n != 1 {
			t.Errorf("upstream saw %d GETs of %s, want 1", n, path)
		}
	}
}
