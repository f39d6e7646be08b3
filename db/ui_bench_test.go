package db_test

import (
	"context"
	"testing"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// BenchmarkUIPages times the pages of the web interface over 10,000
// repositories and a repository of 100,000 tags, seeded by SQL: the first
// page, a deep page, and a search.
func BenchmarkUIPages(b *testing.B) {
	ctx := context.Background()
	url := dbtest.NewURL(b)
	dbtest.Exec(b, url, `
INSERT INTO blobs (digest, size) SELECT 'sha256:' || lpad(to_hex(i), 64, '0'), 1000 + i FROM generate_series(1, 1000) i;
INSERT INTO repositories (name) SELECT 'team-' || (i % 50) || '/app-' || i FROM generate_series(1, 10000) i;
INSERT INTO manifests (repository_id, digest, media_type, size, payload)
    SELECT r.id, 'sha256:' || lpad(to_hex(r.id * 10 + k), 64, '0'), 'application/vnd.oci.image.manifest.v1+json', 500, '\x00'
    FROM repositories r, generate_series(1, 3) k;
INSERT INTO manifest_blobs (manifest_id, digest) SELECT m.id, 'sha256:' || lpad(to_hex(1 + m.id % 1000), 64, '0') FROM manifests m;
INSERT INTO tags (repository_id, name, manifest_id) SELECT m.repository_id, 'v' || m.id, m.id FROM manifests m;
INSERT INTO repositories (name) VALUES ('big/app');
INSERT INTO manifests (repository_id, digest, media_type, size, payload)
    SELECT r.id, 'sha256:' || lpad(to_hex(1000000 + k), 64, '0'), 'application/vnd.oci.image.manifest.v1+json', 500, '\x00'
    FROM repositories r, generate_series(1, 1000) k WHERE r.name = 'big/app';
INSERT INTO tags (repository_id, name, manifest_id)
    SELECT r.id, 'build-' || lpad(j::text, 6, '0'), (SELECT min(id) FROM manifests WHERE repository_id = r.id) + j % 1000
    FROM repositories r, generate_series(1, 100000) j WHERE r.name = 'big/app';
ANALYZE;`)
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for _, tc := range []struct {
		name string
		run  func() error
	}{
		{"repositories/first", func() error {
			_, _, err := d.RepositorySummaries(ctx, db.RepositoryQuery{Limit: 100, All: true})
			return err
		}},
		{"repositories/deep", func() error {
			_, _, err := d.RepositorySummaries(ctx, db.RepositoryQuery{After: "team-48/", Limit: 100, All: true})
			return err
		}},
		{"repositories/search", func() error {
			_, _, err := d.RepositorySummaries(ctx, db.RepositoryQuery{Search: "app-999", Limit: 100, All: true})
			return err
		}},
		{"tags/first", func() error {
			_, _, err := d.TagSummaries(ctx, "big/app", db.TagQuery{Limit: 100})
			return err
		}},
		{"tags/deep", func() error {
			_, _, err := d.TagSummaries(ctx, "big/app", db.TagQuery{After: "build-000090", Limit: 100})
			return err
		}},
		{"tags/search", func() error {
			_, _, err := d.TagSummaries(ctx, "big/app", db.TagQuery{Search: "000042", Limit: 100})
			return err
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if err := tc.run(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
