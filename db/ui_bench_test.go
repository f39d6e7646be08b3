package db_test

import (
	"context"
	"testing"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// BenchmarkUIPages times the pages of the web interface over 10,000
// repositories and a repository of 100,000 tags, seeded by SQL: the first
// page, a deep page, and a search; the repositories as an admin sees them
// (every one) and as a user with a few grants (the query then tests each
// name it walks against the grants' patterns).
//
// The seed writes tables directly, past the bookkeeping of usage and pull
// statistics, so it then fills repository_usage and repository_blob_refs
// as migration 0012 does for an existing registry (UsageCheck confirms
// they match), and gives a third of the tags pull statistics, so that the
// pages read those rows as in a registry in use.
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
    SELECT r.id, 'build-' || lpad(j::text, 6, '0'), r.first + j % 1000
    FROM (SELECT r.id, min(m.id) AS first FROM repositories r JOIN manifests m ON m.repository_id = r.id
          WHERE r.name = 'big/app' GROUP BY r.id) r, generate_series(1, 100000) j;
INSERT INTO repository_blob_refs (repository_id, digest, refs)
    SELECT m.repository_id, mb.digest, count(*)
    FROM manifests m JOIN manifest_blobs mb ON mb.manifest_id = m.id
    WHERE m.deleted_at IS NULL GROUP BY m.repository_id, mb.digest;
INSERT INTO repository_usage (repository_id, blob_bytes, manifest_bytes, manifests)
    SELECT r.id,
           coalesce((SELECT sum(b.size) FROM repository_blob_refs rb JOIN blobs b ON b.digest = rb.digest
                     WHERE rb.repository_id = r.id), 0),
           coalesce(sum(m.size), 0), count(m.id)
    FROM repositories r LEFT JOIN manifests m ON m.repository_id = r.id AND m.deleted_at IS NULL
    GROUP BY r.id;
INSERT INTO tag_pulls (repository_id, name, pull_count, last_pulled_at)
    SELECT t.repository_id, t.name, 1 + abs(hashtext(t.name)) % 97, now() - (abs(hashtext(t.name)) % 10000) * interval '1 minute'
    FROM tags t WHERE abs(hashtext(t.name)) % 3 = 0;
ANALYZE;`)
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	if drift, repos, _, err := d.UsageCheck(ctx); err != nil || len(drift) > 0 || repos != 10001 {
		b.Fatalf("the seeded usage: %d repositories, drift %v, %v", repos, drift, err)
	}
	// A user's grants, as the interface passes them: two namespaces and a
	// repository, and a narrower grant without pull that hides part of one.
	var grants []db.GrantPattern
	for _, g := range []struct {
		glob string
		pull bool
	}{{"team-3/**", true}, {"team-17/**", true}, {"team-3/app-1*", false}, {"big/app", true}} {
		grants = append(grants, db.GrantPattern{Subject: "viewer", Regex: auth.GlobRegex(g.glob), Length: len(g.glob), Pull: g.pull})
	}
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
		{"repositories-user/first", func() error {
			_, _, err := d.RepositorySummaries(ctx, db.RepositoryQuery{Limit: 100, Visible: grants})
			return err
		}},
		{"repositories-user/deep", func() error {
			_, _, err := d.RepositorySummaries(ctx, db.RepositoryQuery{After: "team-3/app-5", Limit: 100, Visible: grants})
			return err
		}},
		{"repositories-user/search", func() error {
			_, _, err := d.RepositorySummaries(ctx, db.RepositoryQuery{Search: "app-99", Limit: 100, Visible: grants})
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
