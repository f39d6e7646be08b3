package gc_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/gc"
	"github.com/berth-registry/berth/handlers"
)

// env is a registry (API, database, blob store) with a collector, all on a
// fresh schema and directory.
type env struct {
	t         *testing.T
	dbURL     string
	blobDir   string
	db        *db.DB
	store     *blobstore.FS
	api       *httptest.Server
	collector *gc.Collector
}

func newEnv(t *testing.T, policy db.GCPolicy, uploadTimeout time.Duration) *env {
	t.Helper()
	e := &env{t: t, dbURL: dbtest.NewURL(t), blobDir: t.TempDir()}
	e.attach(policy, uploadTimeout)
	return e
}

// attach opens a database pool, store, API and collector on the env's
// schema and directory; called again it makes a second instance of the
// registry on the same state, as a second replica would be.
func (e *env) attach(policy db.GCPolicy, uploadTimeout time.Duration) *env {
	t := e.t
	d, err := db.Open(context.Background(), e.dbURL, db.Options{MaxConns: 8, GC: policy})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	store, err := blobstore.NewFS(e.blobDir)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	api := httptest.NewServer(handlers.New(handlers.Options{DB: d, Blobs: store, Logger: log}))
	t.Cleanup(api.Close)
	inst := &env{t: t, dbURL: e.dbURL, blobDir: e.blobDir, db: d, store: store, api: api,
		collector: gc.New(d, store, gc.Config{Policy: policy, UploadTimeout: uploadTimeout, Batch: 10,
			Lease: time.Minute, Logger: log})}
	if e.db == nil {
		*e = *inst
	}
	return inst
}

func (e *env) do(method, path string, body []byte, header ...string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.api.URL+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := e.api.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func (e *env) expect(want int, method, path string, body []byte, header ...string) []byte {
	e.t.Helper()
	resp, b := e.do(method, path, body, header...)
	if resp.StatusCode != want {
		e.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	return b
}

func (e *env) pushBlob(repo string, content []byte) digest.Digest {
	e.t.Helper()
	d := digest.FromBytes(content)
	e.expect(201, "POST", "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), content)
	return d
}

const mtManifest = "application/vnd.oci.image.manifest.v1+json"

// image is a pushed manifest with its config and layer.
type image struct {
	manifest, config, layer digest.Digest
	body                    []byte
}

// pushImage pushes a config, a layer and a manifest referencing them,
// tagged tag (or by digest when tag is empty), with an optional subject.
func (e *env) pushImage(repo, tag, seed string, subject ...digest.Digest) image {
	e.t.Helper()
	cfg := []byte(`{"seed":"` + seed + `"}`)
	lay := []byte("layer " + seed)
	img := image{config: e.pushBlob(repo, cfg), layer: e.pushBlob(repo, lay)}
	img.body = imageManifest(img.config, len(cfg), img.layer, len(lay), subject...)
	img.manifest = digest.FromBytes(img.body)
	e.pushManifest(repo, tag, img)
	return img
}

// pushManifest pushes img's manifest again, by tag or by digest.
func (e *env) pushManifest(repo, tag string, img image) {
	e.t.Helper()
	ref := tag
	if ref == "" {
		ref = img.manifest.String()
	}
	e.expect(201, "PUT", "/v2/"+repo+"/manifests/"+ref, img.body, "Content-Type: "+mtManifest)
}

func imageManifest(config digest.Digest, configSize int, layer digest.Digest, layerSize int, subject ...digest.Digest) []byte {
	s := ""
	if len(subject) > 0 {
		s = fmt.Sprintf(`,"subject":{"mediaType":%q,"digest":%q,"size":1}`, mtManifest, subject[0])
	}
	return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]%s}`,
		mtManifest, config, configSize, layer, layerSize, s))
}

// blobFile is where the filesystem store keeps dgst.
func (e *env) blobFile(dgst digest.Digest) string {
	return filepath.Join(e.blobDir, "blobs", string(dgst.Algorithm()), dgst.Encoded()[:2], dgst.Encoded())
}

func (e *env) hasBytes(dgst digest.Digest) bool {
	_, err := os.Stat(e.blobFile(dgst))
	return err == nil
}

func (e *env) count(sql string, args ...any) int64 {
	e.t.Helper()
	return dbtest.QueryInt(e.t, e.dbURL, sql, args...)
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	dbtest.Exec(e.t, e.dbURL, sql, args...)
}

func (e *env) pass() gc.Report {
	e.t.Helper()
	rep, err := e.collector.Pass(context.Background(), false)
	if err != nil {
		e.t.Fatalf("gc pass: %v", err)
	}
	return rep
}
