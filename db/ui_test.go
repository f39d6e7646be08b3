package db_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// uiBlob records a blob of size bytes in repo, as an upload would.
func uiBlob(t *testing.T, d *db.DB, repo string, n int, size int64) string {
	t.Helper()
	dgst := fmt.Sprintf("sha256:%064x", 0xb10b000+n)
	err := d.BlobCommit(context.Background(), db.BlobCommit{Repository: repo, Digest: dgst, Size: size},
		func(context.Context) error { return nil }, db.Actor{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return dgst
}

// uiImage pushes manifest n of repo, referencing blobs, with tags.
func uiImage(t *testing.T, d *db.DB, repo string, n int, blobs []db.BlobRef, tags ...string) string {
	t.Helper()
	dgst := fmt.Sprintf("sha256:%064x", 0x1a6e000+n)
	payload := fmt.Appendf(nil, `{"schemaVersion":2,"n":%d}`, n)
	_, err := d.ManifestStore(context.Background(), db.ManifestPut{Repository: repo, Digest: dgst,
		MediaType: "application/vnd.oci.image.manifest.v1+json", Payload: payload, Blobs: blobs, Tags: tags},
		db.Actor{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	return dgst
}

func TestUIRepositorySummaries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)

	// team-a/app: two images sharing a 1000-byte layer, three tags.
	shared := uiBlob(t, d, "team-a/app", 1, 1000)
	c1 := uiBlob(t, d, "team-a/app", 2, 10)
	c2 := uiBlob(t, d, "team-a/app", 3, 20)
	uiImage(t, d, "team-a/app", 1, []db.BlobRef{{Digest: c1, Size: 10}, {Digest: shared, Size: 1000}}, "v1", "latest")
	uiImage(t, d, "team-a/app", 2, []db.BlobRef{{Digest: c2, Size: 20}, {Digest: shared, Size: 1000}}, "v2")
	// team-a/blobs: a blob and nothing else.
	uiBlob(t, d, "team-a/blobs", 4, 5)
	// team-b/x and public/y, one image each.
	for i, repo := range []string{"team-b/x", "public/y"} {
		b := uiBlob(t, d, repo, 10+i, 7)
		uiImage(t, d, repo, 10+i, []db.BlobRef{{Digest: b, Size: 7}}, "v1")
	}

	all, more, err := d.RepositorySummaries(ctx, db.RepositoryQuery{All: true, Limit: 10})
	if err != nil || more {
		t.Fatal(err, more)
	}
	byName := map[string]db.RepositorySummary{}
	var names []string
	for _, s := range all {
		byName[s.Name] = s
		names = append(names, s.Name)
	}
	if fmt.Sprint(names) != "[public/y team-a/app team-a/blobs team-b/x]" {
		t.Fatalf("names %v", names)
	}
	app := byName["team-a/app"]
	if app.Tags != 3 || app.Manifests != 2 || app.Size != 1030 || app.LastPush == nil {
		t.Errorf("team-a/app: %+v, want 3 tags, 2 manifests, 1030 bytes (the shared layer once), a last push", app)
	}
	if b := byName["team-a/blobs"]; b.Tags != 0 || b.Manifests != 0 || b.Size != 0 || b.LastPush != nil {
		t.Errorf("team-a/blobs: %+v, want nothing", b)
	}

	t.Run("pagination", func(t *testing.T) {
		var got []string
		after := ""
		for pages := 0; ; pages++ {
			page, more, err := d.RepositorySummaries(ctx, db.RepositoryQuery{All: true, After: after, Limit: 3})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range page {
				got = append(got, s.Name)
			}
			if !more {
				if pages != 1 {
					t.Errorf("%d pages, want 2", pages+1)
				}
				break
			}
			after = page[len(page)-1].Name
		}
		if fmt.Sprint(got) != fmt.Sprint(names) {
			t.Errorf("pages gave %v, want %v", got, names)
		}
	})

	t.Run("search", func(t *testing.T) {
		page, _, err := d.RepositorySummaries(ctx, db.RepositoryQuery{All: true, Search: "team-a", Limit: 10})
		if err != nil || len(page) != 2 || page[0].Name != "team-a/app" || page[1].Name != "team-a/blobs" {
			t.Fatalf("search team-a: %+v %v", page, err)
		}
		page, more, err := d.RepositorySummaries(ctx, db.RepositoryQuery{All: true, Search: "nothing", Limit: 10})
		if err != nil || len(page) != 0 || more {
			t.Fatalf("search nothing: %+v %v", page, err)
		}
	})

	t.Run("visibility", func(t *testing.T) {
		pattern := func(subject, glob string, pull bool) db.GrantPattern {
			return db.GrantPattern{Subject: subject, Regex: auth.GlobRegex(glob), Length: len(glob), Pull: pull}
		}
		for _, tc := range []struct {
			name     string
			patterns []db.GrantPattern
			want     string
		}{
			{"none", nil, "[]"},
			{"team-a", []db.GrantPattern{pattern("alice", "team-a/**", true), pattern("anonymous", "public/**", true)},
				"[public/y team-a/app team-a/blobs]"},
			// The longer glob of a subject decides: no pull on team-a/blobs.
			{"narrowed", []db.GrantPattern{pattern("bob", "team-a/**", true), pattern("bob", "team-a/blobs", false)},
				"[team-a/app]"},
			{"push only", []db.GrantPattern{pattern("carol", "**", false)}, "[]"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				page, _, err := d.RepositorySummaries(ctx, db.RepositoryQuery{Visible: tc.patterns, Limit: 10})
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, s := range page {
					got = append(got, s.Name)
				}
				if fmt.Sprint(got) != tc.want && !(tc.want == "[]" && len(got) == 0) {
					t.Errorf("visible %v, want %s", got, tc.want)
				}
			})
		}
	})
}

func TestUITagSummaries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)
	layer := uiBlob(t, d, "demo/app", 1, 4096)
	var tags []string
	for i := range 25 {
		tags = append(tags, fmt.Sprintf("v%02d", i))
	}
	m := uiImage(t, d, "demo/app", 1, []db.BlobRef{{Digest: layer, Size: 4096}}, tags...)

	var got []string
	after := ""
	for {
		page, more, err := d.TagSummaries(ctx, "demo/app", db.TagQuery{After: after, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		for _, ts := range page {
			got = append(got, ts.Name)
			if ts.Digest != m || ts.MediaType != "application/vnd.oci.image.manifest.v1+json" || ts.Size != 4096+int64(len(`{"schemaVersion":2,"n":1}`)) || ts.PushedAt.IsZero() {
				t.Errorf("tag %+v", ts)
			}
		}
		if !more {
			break
		}
		after = page[len(page)-1].Name
	}
	if fmt.Sprint(got) != fmt.Sprint(tags) {
		t.Errorf("pages gave %v, want %v", got, tags)
	}

	page, more, err := d.TagSummaries(ctx, "demo/app", db.TagQuery{Search: "1", Limit: 3})
	if err != nil || !more || len(page) != 3 || page[0].Name != "v01" || page[1].Name != "v10" || page[2].Name != "v11" {
		t.Errorf("search 1: %+v more %v %v", page, more, err)
	}
	page, more, err = d.TagSummaries(ctx, "demo/app", db.TagQuery{Search: "zz", Limit: 3})
	if err != nil || more || len(page) != 0 {
		t.Errorf("search zz: %+v %v", page, err)
	}
	if _, _, err := d.TagSummaries(ctx, "demo/none", db.TagQuery{Limit: 3}); !errors.Is(err, db.ErrRepositoryUnknown) {
		t.Errorf("unknown repository: %v", err)
	}
}

func TestUIManifestDetailAndAudit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)
	layer := uiBlob(t, d, "demo/app", 1, 100)
	m := uiImage(t, d, "demo/app", 1, []db.BlobRef{{Digest: layer, Size: 100}}, "b", "a")
	detail, err := d.ManifestDetailGet(ctx, "demo/app", m)
	if err != nil || fmt.Sprint(detail.Tags) != "[a b]" || detail.TotalSize != detail.Size+100 || len(detail.Payload) == 0 {
		t.Fatalf("detail %+v %v", detail, err)
	}
	if _, err := d.TagDelete(ctx, "demo/app", "a", db.TagCondition{}, db.Actor{Name: "bob"}); err != nil {
		t.Fatal(err)
	}
	if err := d.ManifestDelete(ctx, "demo/app", m, db.Actor{Name: "carol"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ManifestDetailGet(ctx, "demo/app", m); !errors.Is(err, db.ErrManifestUnknown) {
		t.Errorf("deleted manifest: %v", err)
	}

	all, more, err := d.AuditList(ctx, "demo/app", db.AuditQuery{Limit: 100})
	if err != nil || more {
		t.Fatal(err)
	}
	// blob.upload, manifest.push, tag.create ×2, tag.untag, manifest.delete, tag.delete
	if len(all) != 7 || all[0].Action != db.ActionTagDelete && all[0].Action != db.ActionManifestDelete {
		t.Fatalf("audit %+v", all)
	}
	for i := 1; i < len(all); i++ {
		if all[i].At.After(all[i-1].At) {
			t.Errorf("entry %d is newer than %d", i, i-1)
		}
	}
	var got []int64
	before := int64(0)
	for {
		page, more, err := d.AuditList(ctx, "demo/app", db.AuditQuery{Before: before, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page {
			got = append(got, e.ID)
		}
		if !more {
			break
		}
		before = page[len(page)-1].ID
	}
	var want []int64
	for _, e := range all {
		want = append(want, e.ID)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pages gave %v, want %v", got, want)
	}

	untags, _, err := d.AuditList(ctx, "demo/app", db.AuditQuery{Action: db.ActionTagUntag, Limit: 10})
	if err != nil || len(untags) != 1 || untags[0].Actor != "bob" || untags[0].Tag != "a" || untags[0].OldDigest != m {
		t.Errorf("untags %+v %v", untags, err)
	}
	none, _, err := d.AuditList(ctx, "other/repo", db.AuditQuery{Limit: 10})
	if err != nil || len(none) != 0 {
		t.Errorf("audit of an unknown repository: %+v %v", none, err)
	}
}

func TestUIStorageSummary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)
	a := uiBlob(t, d, "demo/a", 1, 100)
	uiBlob(t, d, "demo/b", 1, 100) // the same blob, linked twice
	b := uiBlob(t, d, "demo/b", 2, 50)
	m := uiImage(t, d, "demo/a", 1, []db.BlobRef{{Digest: a, Size: 100}}, "v1")
	uiImage(t, d, "demo/b", 2, []db.BlobRef{{Digest: b, Size: 50}}, "v1", "v2")
	if err := d.ManifestDelete(ctx, "demo/a", m, db.Actor{Name: "test"}); err != nil {
		t.Fatal(err)
	}
	s, err := d.StorageSummaryGet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := db.StorageSummary{Repositories: 2, Manifests: 1, DeletedManifests: 1, Tags: 2, Blobs: 2, BlobBytes: 150,
		GCQueued: s.GCQueued, GCDue: s.GCDue}
	if s != want || s.GCQueued == 0 {
		t.Errorf("summary %+v, want %+v and candidates queued", s, want)
	}
}
