package db_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/berth-registry/berth/db"
)

// BenchmarkManifestStoreWebhooks is BenchmarkManifestStore with 1 and 10
// webhooks that want every event: a delivery row each per push.
func BenchmarkManifestStoreWebhooks(b *testing.B) {
	for _, n := range []int{1, 10} {
		b.Run(fmt.Sprintf("webhooks-%d", n), func(b *testing.B) {
			benchmarkManifestStore(b, func(d *db.DB) {
				for i := range n {
					if err := d.WebhookAdd(context.Background(), db.Webhook{Name: fmt.Sprintf("h%d", i), URL: "http://127.0.0.1:1/", Timeout: time.Second}); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
