package handlers_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/handlers"
	"github.com/berth-registry/berth/internal/manifestgen"
	"github.com/berth-registry/berth/manifest"
)

// BenchmarkManifestPut measures what one manifest PUT allocates on the
// server, end to end: reading the body, hashing, manifest.Parse, building
// db.ManifestPut, db.ManifestStore's slices and maps and pgx's encoding of
// the statements, against the real PostgreSQL. The handler is called
// directly, without a network, so no client allocation is counted.
//
//	go test ./handlers -run '^$' -bench ManifestPut -benchmem -benchtime 10x
//
// alloc/body is the bytes allocated per body byte. Each iteration pushes a
// manifest never pushed before (its sequence annotation rewritten in place,
// from putSeq) under one tag, so each one is inserted and moves the tag.
func BenchmarkManifestPut(b *testing.B) {
	blobs := manifestgen.FakeBlobs(30_000)
	cases := []struct {
		name, contentType string
		body              []byte
		chunked           bool // no Content-Length
	}{
		{"image-4MiB-layers", manifestgen.MediaTypeManifest, manifestgen.Image(blobs[0], blobs[1:], manifest.MaxSize), false},
		{"image-4MiB-layers-chunked", manifestgen.MediaTypeManifest, manifestgen.Image(blobs[0], blobs[1:], manifest.MaxSize), true},
		{"index-4MiB", manifestgen.MediaTypeIndex, manifestgen.Index(blobs, manifest.MaxSize), false},
		{"annotations-4MiB", manifestgen.MediaTypeManifest, manifestgen.Annotated(blobs[0], blobs[1], manifest.MaxSize), false},
	}
	h := newBenchRegistry(b, "bench/mem", blobs)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			put := func(seq uint64) {
				manifestgen.SetSeq(c.body, seq)
				var body io.Reader = bytes.NewReader(c.body)
				if c.chunked {
					body = io.MultiReader(body) // hides the length
				}
				req := httptest.NewRequest(http.MethodPut, "/v2/bench/mem/manifests/latest", body)
				req.Header.Set("Content-Type", c.contentType)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusCreated {
					b.Fatalf("PUT: %d %s", rec.Code, rec.Body)
				}
			}
			put(putSeq.Add(1)) // warm the pools and caches
			b.SetBytes(int64(len(c.body)))
			b.ReportAllocs()
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			n := 0
			for b.Loop() {
				put(putSeq.Add(1))
				n++
			}
			runtime.ReadMemStats(&m1)
			b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/float64(n)/float64(len(c.body)), "alloc/body")
		})
	}
}

// putSeq numbers the manifests BenchmarkManifestPut pushes: a manifest
// pushed again is not stored again, which would measure less than a push.
var putSeq atomic.Uint64

// newBenchRegistry returns the API on a fresh schema where repo holds
// blobs as blobs and as manifests (for the children of an index), all
// written straight into the tables: pushing 30,000 of each through the
// API would take longer than the measurement.
func newBenchRegistry(b *testing.B, repo string, blobs []manifestgen.Blob) http.Handler {
	b.Helper()
	url := dbtest.NewURL(b)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	digests := make([]string, len(blobs))
	sizes := make([]int64, len(blobs))
	for i, bl := range blobs {
		digests[i], sizes[i] = bl.Digest.String(), bl.Size
	}
	var repoID int64
	if err := conn.QueryRow(ctx, `INSERT INTO repositories (name) VALUES ($1) RETURNING id`, repo).Scan(&repoID); err != nil {
		b.Fatal(err)
	}
	for _, st := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO blobs (digest, size) SELECT unnest($1::text[]), unnest($2::bigint[])`, []any{digests, sizes}},
		{`INSERT INTO repository_blobs (repository_id, digest) SELECT $1, unnest($2::text[])`, []any{repoID, digests}},
		{`INSERT INTO manifests (repository_id, digest, media_type, size, payload)
		  SELECT $1, unnest($2::text[]), 'application/vnd.oci.image.manifest.v1+json', unnest($3::bigint[]), '\x7b7d'`,
			[]any{repoID, digests, sizes}},
	} {
		if _, err := conn.Exec(ctx, st.sql, st.args...); err != nil {
			b.Fatalf("%s: %v", st.sql, err)
		}
	}
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(d.Close)
	store, err := blobstore.NewFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	return handlers.New(handlers.Options{DB: d, Blobs: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}
