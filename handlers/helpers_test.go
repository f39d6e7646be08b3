package handlers_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/handlers"
)

// registry is a Berth API on a fresh database schema and blob directory.
type registry struct {
	t       *testing.T
	srv     *httptest.Server
	db      *db.DB
	dbURL   string
	logs    *syncBuffer
	metrics *prometheus.Registry
}

func newRegistry(t *testing.T) *registry {
	t.Helper()
	return newRegistryWith(t, nil)
}

// newRegistryWith is newRegistry with options changed by configure before
// the API is built (nil: none). The API logs at debug level into r.logs.
func newRegistryWith(t *testing.T, configure func(*handlers.Options)) *registry {
	t.Helper()
	url := dbtest.NewURL(t)
	d, err := db.Open(t.Context(), url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	store, err := blobstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	var out io.Writer = logs
	if testing.Verbose() {
		out = io.MultiWriter(logs, &testWriter{t})
	}
	log := slog.New(handlers.LogHandler(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})))
	opts := handlers.Options{DB: d, Blobs: store, Logger: log, Registry: prometheus.NewRegistry()}
	if configure != nil {
		configure(&opts)
	}
	srv := httptest.NewServer(handlers.New(opts))
	t.Cleanup(srv.Close)
	return &registry{t: t, srv: srv, db: d, dbURL: url, logs: logs, metrics: opts.Registry}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// metric returns the value of the metric series whose text form starts
// with series (name and labels), or -1 when there is none.
func (r *registry) metric(series string) float64 {
	r.t.Helper()
	families, err := r.metrics.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	var text strings.Builder
	for _, f := range families {
		expfmt.MetricFamilyToText(&text, f)
	}
	for _, line := range strings.Split(text.String(), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				r.t.Fatal(err)
			}
			return f
		}
	}
	return -1
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// response is a finished exchange, body read.
type response struct {
	*http.Response
	body []byte
}

// do sends a request; header is "Name: value" pairs.
func (r *registry) do(method, path string, body []byte, header ...string) response {
	r.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, r.srv.URL+path, rd)
	if err != nil {
		r.t.Fatal(err)
	}
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := r.srv.Client().Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return response{resp, b}
}

// errorCode returns the code of the first error in an OCI error body.
func (resp response) errorCode() string {
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(resp.body, &body) != nil || len(body.Errors) == 0 {
		return ""
	}
	return body.Errors[0].Code
}

// expect checks the status and, for errors, the OCI code.
func (resp response) expect(t *testing.T, status int, code string) {
	t.Helper()
	if resp.StatusCode != status || resp.errorCode() != code {
		t.Fatalf("%s %s: got %d %q, want %d %q; body %s",
			resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, resp.errorCode(), status, code, resp.body)
	}
	if status >= 400 && resp.Request.Method != http.MethodHead {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("error response Content-Type %q, want application/json", ct)
		}
	}
}

// pushBlob uploads content monolithically into repo.
func (r *registry) pushBlob(repo string, content []byte) digest.Digest {
	r.t.Helper()
	d := digest.FromBytes(content)
	resp := r.do("POST", "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), content)
	resp.expect(r.t, http.StatusCreated, "")
	return d
}

// pushManifest puts a manifest and returns its digest.
func (r *registry) pushManifest(repo, ref, mediaType string, body []byte) digest.Digest {
	r.t.Helper()
	resp := r.do("PUT", "/v2/"+repo+"/manifests/"+ref, body, "Content-Type: "+mediaType)
	resp.expect(r.t, http.StatusCreated, "")
	return digest.FromBytes(body)
}

// image pushes a config and one layer and returns a manifest body
// referencing them (not yet pushed).
func (r *registry) image(repo, seed string) []byte {
	r.t.Helper()
	config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","seed":%q}`, seed))
	layer := []byte("layer of " + seed)
	cd := r.pushBlob(repo, config)
	ld := r.pushBlob(repo, layer)
	return ociManifest(cd, int64(len(config)), ld, int64(len(layer)))
}

func ociManifest(config digest.Digest, configSize int64, layer digest.Digest, layerSize int64) []byte {
	return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
		config, configSize, layer, layerSize))
}

func ociIndex(children ...[]byte) []byte {
	var entries []string
	for _, c := range children {
		entries = append(entries, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d}`,
			digest.FromBytes(c), len(c)))
	}
	return []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		strings.Join(entries, ",") + `]}`)
}

const (
	mtManifest = "application/vnd.oci.image.manifest.v1+json"
	mtIndex    = "application/vnd.oci.image.index.v1+json"
)
