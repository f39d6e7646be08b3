package gc_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/gc"
)

// danglingBlobs is the number of candidates the benchmark collects.
const danglingBlobs = 10_000

// BenchmarkCollectDanglingBlobs measures how fast one collector deletes
// unreferenced blobs from the filesystem store: each iteration seeds
// 10,000 blobs (bytes in the store, a row and a due candidate each, no
// link and no manifest), then times one pass. It reports blobs/s.
//
//	go test -run XXX -bench CollectDanglingBlobs -benchtime 3x ./gc/
func BenchmarkCollectDanglingBlobs(b *testing.B) {
	ctx := context.Background()
	url := dbtest.NewURL(b)
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	store, err := blobstore.NewFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	collector := gc.New(d, store, gc.Config{UploadTimeout: time.Hour, Batch: 100,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	var total time.Duration
	for i := range b.N {
		b.StopTimer()
		seedDangling(b, ctx, url, store, i)
		b.StartTimer()
		start := time.Now()
		rep, err := collector.Pass(ctx, false)
		total += time.Since(start)
		if err != nil || rep.BlobsDeleted != danglingBlobs {
			b.Fatalf("pass: %d deleted, %v", rep.BlobsDeleted, err)
		}
	}
	b.ReportMetric(float64(danglingBlobs*b.N)/total.Seconds(), "blobs/s")
}

// seedDangling publishes danglingBlobs small blobs and records them as
// unreferenced candidates, the state a repository deletion leaves behind
// once its manifests are purged.
func seedDangling(b *testing.B, ctx context.Context, url string, store *blobstore.FS, round int) {
	digests := make([]string, danglingBlobs)
	sizes := make([]int64, danglingBlobs)
	for i := range danglingBlobs {
		content := []byte(fmt.Sprintf("dangling blob %d of round %d", i, round))
		dg := digest.FromBytes(content)
		id := fmt.Sprintf("bench-%d-%d", round, i)
		state, _, err := store.AppendChunk(ctx, id, nil, bytes.NewReader(content))
		if err != nil {
			b.Fatal(err)
		}
		if err := store.Publish(ctx, id, state, dg); err != nil {
			b.Fatal(err)
		}
		if err := store.DeleteUpload(ctx, id, state); err != nil {
			b.Fatal(err)
		}
		digests[i], sizes[i] = dg.String(), int64(len(content))
	}
	dbtest.Exec(b, url, `INSERT INTO blobs (digest, size) SELECT * FROM unnest($1::text[], $2::bigint[])`, digests, sizes)
	dbtest.Exec(b, url, `INSERT INTO gc_queue (kind, key, review_after) SELECT 'blob', d, now() FROM unnest($1::text[]) d`, digests)
}
