package db_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// BenchmarkManifestStoreLayers is BenchmarkManifestStore with image
// manifests of a config and three layers, drawn from 64 blobs in each
// repository: the usage bookkeeping counts four blob references per push
// (see usage.go). Runs before usage existed too, for the comparison.
func BenchmarkManifestStoreLayers(b *testing.B) {
	benchmarkManifestStoreLayers(b, func(*db.DB) {})
}

// BenchmarkManifestStoreLayersQuota is BenchmarkManifestStoreLayers with a
// quota over every repository pushed to (bench), large enough never to
// refuse: every push locks the quota row until it commits.
func BenchmarkManifestStoreLayersQuota(b *testing.B) {
	benchmarkManifestStoreLayers(b, func(d *db.DB) {
		if _, err := d.QuotaSet(context.Background(), "bench", 1<<50, 80); err != nil {
			b.Fatal(err)
		}
	})
}

func benchmarkManifestStoreLayers(b *testing.B, setup func(*db.DB)) {
	const blobs = 64
	for _, tc := range []struct {
		name  string
		repos int
		par   int
	}{{"serial", 1, 1}, {"parallel-8-repos", 8, 8}, {"parallel-1-repo", 1, 8}} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			d, err := db.Open(ctx, dbtest.NewURL(b), db.Options{MaxConns: 16})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			refs := make([]db.BlobRef, blobs)
			for r := range tc.repos {
				for i := range refs {
					refs[i] = db.BlobRef{Digest: fmt.Sprintf("sha256:%064x", 0xb10b0000+i), Size: int64(1000 + i)}
					if err := d.BlobCommit(ctx, db.BlobCommit{Repository: fmt.Sprintf("bench/app%d", r), Digest: refs[i].Digest, Size: refs[i].Size},
						func(context.Context) error { return nil }, db.Actor{Name: "bench"}); err != nil {
						b.Fatal(err)
					}
				}
			}
			setup(d)
			var seq atomic.Int64
			b.SetParallelism(tc.par)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := seq.Add(1)
					dgst := fmt.Sprintf("sha256:%064x", i)
					_, err := d.ManifestStore(ctx, db.ManifestPut{
						Repository: fmt.Sprintf("bench/app%d", i%int64(tc.repos)), Digest: dgst,
						MediaType: "application/vnd.oci.image.manifest.v1+json", Payload: []byte(dgst),
						Blobs: []db.BlobRef{refs[i%blobs], refs[(i*7+1)%blobs], refs[(i*13+2)%blobs], refs[(i*29+3)%blobs]},
						Tags:  []string{fmt.Sprintf("t%d", i%100)},
					}, db.Actor{Name: "bench"})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
