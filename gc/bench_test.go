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
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/gc"
	"github.com/berth-registry/berth/handlers"
)

// danglingBlobs is the number of candidates the benchmark collects.
const danglingBlobs = 10_000

// BenchmarkCollectDanglingBlobs measures how fast one collector deletes
// unreferenced blobs from the filesystem store: each iteration seeds
// 10,000 blobs (bytes in the store, a row and a due candidate each, no
// link and no manifest), then times one pass, while a client keeps
// pushing images (blobs and a tagged manifest each) through the HTTP API.
// It reports blobs/s, and the pushes/s that went on meanwhile.
//
//	go test -run XXX -bench CollectDanglingBlobs -benchtime 3x ./gc/
func BenchmarkCollectDanglingBlobs(b *testing.B) {
	store, err := blobstore.NewFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	benchCollect(b, store)
}

// BenchmarkCollectDanglingBlobsS3 is BenchmarkCollectDanglingBlobs on the
// S3 server of BERTH_TEST_S3_* (see scripts/versitygw.sh), under a fresh
// prefix; skipped without one.
func BenchmarkCollectDanglingBlobsS3(b *testing.B) {
	endpoint := os.Getenv("BERTH_TEST_S3_ENDPOINT")
	if endpoint == "" {
		b.Skip("BERTH_TEST_S3_ENDPOINT is not set; start a server with scripts/versitygw.sh")
	}
	store, err := blobstore.NewS3(context.Background(), blobstore.S3Config{
		Bucket:         os.Getenv("BERTH_TEST_S3_BUCKET"),
		Endpoint:       endpoint,
		ForcePathStyle: true,
		AccessKey:      os.Getenv("BERTH_TEST_S3_ACCESS_KEY"),
		SecretKey:      os.Getenv("BERTH_TEST_S3_SECRET_KEY"),
		Prefix:         fmt.Sprintf("berth-bench-%d/", time.Now().UnixNano()),
	})
	if err != nil {
		b.Fatal(err)
	}
	benchCollect(b, store)
}

func benchCollect(b *testing.B, store blobstore.Store) {
	ctx := context.Background()
	url := dbtest.NewURL(b)
	// The review delay protects what the pusher pushes.
	policy := db.GCPolicy{ReviewDelay: time.Hour, TombstoneRetention: time.Hour}
	d, err := db.Open(ctx, url, db.Options{GC: policy})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	collector := gc.New(d, store, gc.Config{Policy: policy, UploadTimeout: time.Hour, Batch: 100, Logger: log})
	// Pushes continue while the collector works, through the HTTP API of
	// the same database and store: blobs and manifests that the review
	// delay protects, so the pass collects exactly the dangling blobs.
	api := httptest.NewServer(handlers.New(handlers.Options{DB: d, Blobs: store, Logger: log}))
	defer api.Close()
	var pushing atomic.Bool
	var pushes atomic.Int64
	pushErr := make(chan error, 1)
	stopPusher := make(chan struct{})
	pusherDone := make(chan struct{})
	go func() {
		defer close(pusherDone)
		for n := 0; ; n++ {
			select {
			case <-stopPusher:
				return
			default:
			}
			if err := pushImage(api.URL, "push/p", fmt.Sprint(n)); err != nil {
				select {
				case pushErr <- err:
				default:
				}
				return
			}
			if pushing.Load() {
				pushes.Add(1)
			}
		}
	}()
	defer func() { close(stopPusher); <-pusherDone }()
	var total time.Duration
	for i := range b.N {
		b.StopTimer()
		seedDangling(b, ctx, url, store, i)
		b.StartTimer()
		pushing.Store(true)
		start := time.Now()
		rep, err := collector.Pass(ctx, false)
		total += time.Since(start)
		pushing.Store(false)
		if err != nil || rep.BlobsDeleted != danglingBlobs {
			b.Fatalf("pass: %d deleted, %v", rep.BlobsDeleted, err)
		}
	}
	select {
	case err := <-pushErr:
		b.Fatalf("push during collection: %v", err)
	default:
	}
	b.ReportMetric(float64(danglingBlobs*b.N)/total.Seconds(), "blobs/s")
	b.ReportMetric(float64(pushes.Load())/total.Seconds(), "pushes/s")
}

// pushImage pushes a config, a layer and a manifest that references them,
// tagged, the way a client does; seed makes them unique.
func pushImage(base, repo, seed string) error {
	cfg := []byte(`{"bench":"` + seed + `"}`)
	layer := []byte("bench layer " + seed)
	for _, blob := range [][]byte{cfg, layer} {
		resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/?digest="+digest.FromBytes(blob).String(),
			"application/octet-stream", bytes.NewReader(blob))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 201 {
			return fmt.Errorf("upload blob: %d", resp.StatusCode)
		}
	}
	body := imageManifest(digest.FromBytes(cfg), len(cfg), digest.FromBytes(layer), len(layer))
	req, _ := http.NewRequest("PUT", base+"/v2/"+repo+"/manifests/t"+seed, bytes.NewReader(body))
	req.Header.Set("Content-Type", mtManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		return fmt.Errorf("push manifest: %d", resp.StatusCode)
	}
	return nil
}

// seedDangling publishes danglingBlobs small blobs (16 at a time) and
// records them as unreferenced candidates, the state a repository deletion
// leaves behind once its manifests are purged.
func seedDangling(b *testing.B, ctx context.Context, url string, store blobstore.Store, round int) {
	digests := make([]string, danglingBlobs)
	sizes := make([]int64, danglingBlobs)
	var wg sync.WaitGroup
	var failed atomic.Value
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				content := []byte(fmt.Sprintf("dangling blob %d of round %d", i, round))
				dg := digest.FromBytes(content)
				id := fmt.Sprintf("bench-%d-%d", round, i)
				state, _, err := store.AppendChunk(ctx, id, nil, bytes.NewReader(content))
				if err == nil {
					err = store.Publish(ctx, id, state, dg)
				}
				if err == nil {
					err = store.DeleteUpload(ctx, id, state)
				}
				if err != nil {
					failed.Store(err)
				}
				digests[i], sizes[i] = dg.String(), int64(len(content))
			}
		}()
	}
	for i := range danglingBlobs {
		next <- i
	}
	close(next)
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	dbtest.Exec(b, url, `INSERT INTO blobs (digest, size) SELECT * FROM unnest($1::text[], $2::bigint[])`, digests, sizes)
	dbtest.Exec(b, url, `INSERT INTO gc_queue (kind, key, review_after) SELECT 'blob', d, now() FROM unnest($1::text[]) d`, digests)
}
