package db_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// BenchmarkManifestStore measures a manifest push by tag, the transaction
// behind PUT /v2/<name>/manifests/<tag>, against the real PostgreSQL:
// serial, and with parallelism 8 into 8 repositories or all into one
// (where the pushes' events queue on the repository's event stream row).
// RunParallel starts parallelism × GOMAXPROCS goroutines: "serial" is
// GOMAXPROCS concurrent pushes and the others 8 × GOMAXPROCS, unless run
// with -cpu 1 (1 and 8). Compare
// it with webhooks (BenchmarkManifestStoreWebhooks) and with a commit
// before the outbox to see what events cost (README, Webhooks).
func BenchmarkManifestStore(b *testing.B) {
	benchmarkManifestStore(b, func(*db.DB) {})
}

func benchmarkManifestStore(b *testing.B, setup func(*db.DB)) {
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
						MediaType: "application/vnd.oci.image.index.v1+json", Payload: []byte(dgst),
						Tags: []string{fmt.Sprintf("t%d", i%100)},
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

// BenchmarkManifestStoreTagRules is BenchmarkManifestStore with ten tag
// rules covering the repositories but none of the tags pushed: every push
// after the first hundred moves a tag, so each reads the rules (one
// statement) and matches them. Compare with BenchmarkManifestStore.
func BenchmarkManifestStoreTagRules(b *testing.B) {
	benchmarkManifestStore(b, func(d *db.DB) {
		for i := range 10 {
			kind := db.TagRuleImmutable
			if i%2 == 1 {
				kind = db.TagRuleProtected
			}
			if _, err := d.TagRuleAdd(context.Background(), db.TagRule{Repos: "bench/**", ReposRegexp: "^bench/.*$",
				Tags: fmt.Sprintf("^release-%d[.][0-9]+$", i), Kind: kind}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
