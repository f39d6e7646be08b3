package db_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

func dgstOf(s string) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(s)))
}

// policy is a retention policy for the repositories of glob.
func policy(name, glob string) db.RetentionPolicy {
	return db.RetentionPolicy{Name: name, Repos: []string{glob}, ReposRegexp: []string{auth.GlobRegex(glob)}}
}

func ago(t *testing.T, url, repo, tag string, d time.Duration) {
	t.Helper()
	dbtest.Exec(t, url, `
UPDATE tags SET updated_at = now() - $3 * interval '1 second'
WHERE name = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)`, repo, tag, int64(d.Seconds()))
}

// ageManifest makes manifest dgst, and every audit row naming it, d older.
func ageManifest(t *testing.T, url, dgst string, d time.Duration) {
	t.Helper()
	dbtest.Exec(t, url, `UPDATE manifests SET created_at = created_at - $2 * interval '1 second' WHERE digest = $1`, dgst, int64(d.Seconds()))
	dbtest.Exec(t, url, `UPDATE audit_log SET at = at - $2 * interval '1 second' WHERE digest = $1 OR old_digest = $1`, dgst, int64(d.Seconds()))
}

func names(rs []db.Removal) []string {
	out := []string{}
	for _, r := range rs {
		if r.Tag != "" {
			out = append(out, r.Repository+":"+r.Tag)
		} else {
			out = append(out, r.Repository+"@"+r.Digest)
		}
	}
	return out
}

const day = 24 * time.Hour

// The keep rules, alone and together: a tag goes when none keeps it.
func TestRetentionTagRules(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		policy func(p *db.RetentionPolicy)
		want   []string
		rule   string // of the first removal
	}{
		{"keep-last", func(p *db.RetentionPolicy) { p.KeepLast = 2 }, []string{"app:c", "app:d"}, "keep-last"},
		{"keep-pushed-within", func(p *db.RetentionPolicy) { p.KeepPushedWithin = 36 * time.Hour }, []string{"app:b", "app:c", "app:d"}, "keep-pushed-within"},
		{"keep-tags", func(p *db.RetentionPolicy) { p.KeepTags = []string{"^(a|c)$"} }, []string{"app:b", "app:d"}, "keep-tags"},
		{"several patterns", func(p *db.RetentionPolicy) { p.KeepTags = []string{"^a$", "^d"} }, []string{"app:b", "app:c"}, "keep-tags"},
		{"any rule keeps", func(p *db.RetentionPolicy) {
			p.KeepLast, p.KeepPushedWithin, p.KeepTags = 1, 50*time.Hour, []string{"^d$"}
		}, []string{"app:c"}, "keep-last"},
		{"no tag rule removes no tag", func(p *db.RetentionPolicy) { u := time.Hour; p.DeleteUntaggedAfter = &u }, []string{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			url := dbtest.NewURL(t)
			d, err := db.Open(ctx, url, db.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			for i, tag := range []string{"a", "b", "c", "d"} {
				pushBare(t, d, "app", dgstOf(tag), tag)
				ago(t, url, "app", tag, time.Duration(i+1)*day)
			}
			pushBare(t, d, "other", dgstOf("x"), "x") // not matched by the glob
			ago(t, url, "other", "x", 100*day)
			p := policy("p", "app")
			tc.policy(&p)
			if err := d.RetentionAdd(ctx, p); err != nil {
				t.Fatal(err)
			}
			preview, err := d.RetentionPreview(ctx, "p")
			if err != nil {
				t.Fatal(err)
			}
			if got := names(preview); !slices.Equal(got, tc.want) {
				t.Fatalf("preview: %v, want %v", got, tc.want)
			}
			if len(preview) > 0 && preview[0].Rule != tc.rule {
				t.Errorf("rule %q, want %q (%s)", preview[0].Rule, tc.rule, preview[0].Reason)
			}
			run, err := d.RetentionRun(ctx, "p")
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(run, preview) {
				t.Fatalf("run %v differs from preview %v", run, preview)
			}
			if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM tags`); n != int64(5-len(tc.want)) {
				t.Errorf("%d tags left, want %d", n, 5-len(tc.want))
			}
			if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM audit_log WHERE actor = 'retention:p' AND action = 'tag.untag'`); n != int64(len(tc.want)) {
				t.Errorf("%d tag.untag audit rows by retention:p, want %d", n, len(tc.want))
			}
			if got := untagEvents(t, d, "app", "retention:p"); !slices.Equal(got, tc.want) {
				t.Errorf("untag events by retention:p %v, want %v", got, tc.want)
			}
			again, err := d.RetentionPreview(ctx, "p")
			if err != nil || len(again) != 0 {
				t.Errorf("after the run the preview is %v, %v: want nothing", names(again), err)
			}
		})
	}
}

// Each policy's reasons, in words.
func TestRetentionReason(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pushBare(t, d, "demo/app", dgstOf("1"), "v1")
	pushBare(t, d, "demo/app", dgstOf("2"), "v2")
	ago(t, url, "demo/app", "v1", 40*day)
	p := policy("p", "demo/*")
	p.KeepLast, p.KeepPushedWithin, p.KeepTags = 1, 30*day, []string{"^latest$"}
	if err := d.RetentionAdd(ctx, p); err != nil {
		t.Fatal(err)
	}
	rs, err := d.RetentionPreview(ctx, "p")
	if err != nil || len(rs) != 1 {
		t.Fatalf("preview %v, %v", rs, err)
	}
	if !strings.HasPrefix(rs[0].Reason, "not among the 1 most recent; pushed over 30d ago; matches no keep pattern (pushed ") {
		t.Errorf("reason %q", rs[0].Reason)
	}
}

// A tag that moves counts as pushed when it moved.
func TestRetentionMovedTag(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pushBare(t, d, "app", dgstOf("1"), "old")
	pushBare(t, d, "app", dgstOf("2"), "new")
	ago(t, url, "app", "old", 10*day)
	ago(t, url, "app", "new", 5*day)
	pushBare(t, d, "app", dgstOf("3"), "old") // moved now
	p := policy("p", "app")
	p.KeepLast = 1
	if err := d.RetentionAdd(ctx, p); err != nil {
		t.Fatal(err)
	}
	rs, err := d.RetentionPreview(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(rs); !slices.Equal(got, []string{"app:new"}) {
		t.Fatalf("preview %v, want app:new", got)
	}
}

// Untagged manifests: removed after the policy's time, unless a live index
// lists them or they are tied, as subject or referrer, to a kept manifest.
func TestRetentionUntagged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	put := func(p db.ManifestPut) {
		t.Helper()
		p.Repository, p.MediaType = "app", "application/vnd.oci.image.index.v1+json"
		p.Payload = []byte(p.Digest)
		if _, err := d.ManifestStore(ctx, p, db.Actor{Name: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	old := map[string]bool{}
	for _, m := range []struct {
		name, subject string
		children      []string
		tags          []string
		fresh         bool
	}{
		{name: "lonely"},             // removed
		{name: "fresh", fresh: true}, // too young
		{name: "child"},              // listed by a live index
		{name: "index", children: []string{"child"}, tags: []string{"i"}},
		{name: "tagged-subject", tags: []string{"t"}},
		{name: "sig-of-tagged", subject: "tagged-subject"}, // attached to a kept subject
		{name: "subject"},                    // removed with its referrer
		{name: "sig", subject: "subject"},    // removed
		{name: "sig-of-sig", subject: "sig"}, // removed
		{name: "subject-of-kept"},            // its referrer is tagged
		{name: "tagged-sig", subject: "subject-of-kept", tags: []string{"s"}},
		{name: "untagged-now", tags: []string{"u"}}, // untagged below, just now
	} {
		var children []string
		for _, c := range m.children {
			children = append(children, dgstOf(c))
		}
		sub := ""
		if m.subject != "" {
			sub = dgstOf(m.subject)
		}
		put(db.ManifestPut{Digest: dgstOf(m.name), SubjectDigest: sub, Children: children, Tags: m.tags})
		if !m.fresh {
			old[m.name] = true
		}
	}
	for n := range old {
		ageManifest(t, url, dgstOf(n), 10*day)
	}
	if _, err := d.TagDelete(ctx, "app", "u", db.TagCondition{}, db.Actor{Name: "test"}); err != nil {
		t.Fatal(err)
	}
	p := policy("p", "app")
	week := 7 * day
	p.DeleteUntaggedAfter = &week
	if err := d.RetentionAdd(ctx, p); err != nil {
		t.Fatal(err)
	}
	preview, err := d.RetentionPreview(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, n := range []string{"lonely", "subject", "sig", "sig-of-sig"} {
		want = append(want, "app@"+dgstOf(n))
	}
	slices.Sort(want)
	if got := names(preview); !slices.Equal(got, want) {
		t.Fatalf("preview %v\nwant %v", got, want)
	}
	if !strings.HasPrefix(preview[0].Reason, "untagged for over 7d (since ") || preview[0].Rule != "delete-untagged-after" {
		t.Errorf("reason %q, rule %q", preview[0].Reason, preview[0].Rule)
	}
	run, err := d.RetentionRun(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(run, preview) {
		t.Fatalf("run %v differs from preview %v", names(run), want)
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM manifests WHERE deleted_by = 'retention:p'`); n != 4 {
		t.Errorf("%d manifests tombstoned by retention:p, want 4", n)
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM audit_log WHERE actor = 'retention:p' AND action = 'manifest.delete'`); n != 4 {
		t.Errorf("%d manifest.delete audit rows by retention:p, want 4", n)
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM events WHERE action = 'delete' AND body->'actor'->>'name' = 'retention:p'`); n != 4 {
		t.Errorf("%d delete events by retention:p, want 4", n)
	}
}

// untagEvents are the untag events of repo, as repo:tag in seq order,
// failing the test if one is not by actor.
func untagEvents(t *testing.T, d *db.DB, repo, actor string) []string {
	t.Helper()
	evs, more, err := d.EventList(context.Background(), repo, 0, 1000)
	if err != nil || more {
		t.Fatalf("events of %s: %v (more: %v)", repo, err, more)
	}
	out := []string{}
	for _, ev := range evs {
		if ev.Action != db.EventUntag {
			continue
		}
		if ev.Actor.Name != actor {
			t.Errorf("untag of %s:%s by %q, want %q", repo, ev.Target.Tag, ev.Actor.Name, actor)
		}
		out = append(out, ev.Target.Repository+":"+ev.Target.Tag)
	}
	slices.Sort(out)
	return out
}

func TestRetentionAdmin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)
	p := policy("p", "app/**")
	p.KeepLast, p.Schedule = 3, time.Hour
	if err := d.RetentionAdd(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := d.RetentionAdd(ctx, p); !errors.Is(err, db.ErrRetentionExists) {
		t.Errorf("second add: %v, want ErrRetentionExists", err)
	}
	bad := policy("bad", "app")
	bad.KeepTags = []string{"("}
	if err := d.RetentionAdd(ctx, bad); err == nil || !strings.Contains(err.Error(), "not a valid regular expression") {
		t.Errorf("bad pattern: %v", err)
	}
	ps, err := d.RetentionList(ctx)
	if err != nil || len(ps) != 1 || ps[0].KeepLast != 3 || ps[0].Schedule != time.Hour || ps[0].DeleteUntaggedAfter != nil {
		t.Fatalf("list %+v, %v", ps, err)
	}
	due, err := d.RetentionDue(ctx)
	if err != nil || !slices.Equal(due, []string{"p"}) {
		t.Fatalf("due %v, %v", due, err)
	}
	if _, ran, err := d.RetentionRunDue(ctx, "p"); err != nil || !ran {
		t.Fatalf("scheduled run: %v, %v", ran, err)
	}
	if _, ran, err := d.RetentionRunDue(ctx, "p"); err != nil || ran {
		t.Fatalf("second scheduled run ran %v, %v: want not due", ran, err)
	}
	if err := d.RetentionDelete(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if err := d.RetentionDelete(ctx, "p"); !errors.Is(err, db.ErrRetentionUnknown) {
		t.Errorf("second delete: %v", err)
	}
	if _, err := d.RetentionPreview(ctx, "p"); !errors.Is(err, db.ErrRetentionUnknown) {
		t.Errorf("preview of a deleted policy: %v", err)
	}
}

// Retention never removes an immutable or a protected tag.
func TestRetentionRespectsTagRules(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i, tag := range []string{"a", "b", "c", "d"} {
		pushBare(t, d, "app", dgstOf(tag), tag)
		ago(t, url, "app", tag, time.Duration(i+1)*day)
	}
	for _, r := range []db.TagRule{
		{Repos: "app", ReposRegexp: auth.GlobRegex("app"), Tags: "^c$", Kind: db.TagRuleImmutable},
		{Repos: "app", ReposRegexp: auth.GlobRegex("app"), Tags: "^d$", Kind: db.TagRuleProtected},
	} {
		if _, err := d.TagRuleAdd(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	p := policy("p", "app")
	p.KeepLast = 1
	if err := d.RetentionAdd(ctx, p); err != nil {
		t.Fatal(err)
	}
	preview, err := d.RetentionPreview(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(preview); !slices.Equal(got, []string{"app:b"}) {
		t.Fatalf("preview %v, want app:b only", got)
	}
	run, err := d.RetentionRun(ctx, "p")
	if err != nil || !slices.Equal(run, preview) {
		t.Fatalf("run %v, %v", names(run), err)
	}
}

// --keep-pulled-within keeps tags pulled within its time; a tag never
// pulled is kept by no pull. Needs the pull statistics' table.
func TestRetentionKeepPulledWithin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if dbtest.QueryInt(t, url, `SELECT (to_regclass('tag_pulls') IS NOT NULL)::int`) == 0 {
		t.Skip("this schema records no pull statistics (tag_pulls)")
	}
	for i, tag := range []string{"a", "b", "c"} {
		pushBare(t, d, "app", dgstOf(tag), tag)
		ago(t, url, "app", tag, time.Duration(i+40)*day)
	}
	// a pulled a day ago, b 20 days ago, c never.
	dbtest.Exec(t, url, `
INSERT INTO tag_pulls (repository_id, name, pull_count, last_pulled_at)
SELECT repository_id, name, 1, now() - CASE name WHEN 'a' THEN interval '1 day' ELSE interval '20 days' END
FROM tags WHERE name IN ('a', 'b')`)
	p := policy("p", "app")
	p.KeepPulledWithin = 7 * day
	if err := d.RetentionAdd(ctx, p); err != nil {
		t.Fatal(err)
	}
	preview, err := d.RetentionPreview(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(preview); !slices.Equal(got, []string{"app:b", "app:c"}) {
		t.Fatalf("preview %v, want app:b app:c", got)
	}
	if !strings.HasPrefix(preview[0].Reason, "last pulled ") || !strings.HasPrefix(preview[1].Reason, "never pulled") {
		t.Errorf("reasons %q, %q", preview[0].Reason, preview[1].Reason)
	}
	run, err := d.RetentionRun(ctx, "p")
	if err != nil || !slices.Equal(run, preview) {
		t.Fatalf("run %v, %v", names(run), err)
	}
}

// On a schema without pull statistics (not migrated, say),
// --keep-pulled-within is refused saying so, and a policy that has it
// fails to run rather than keep nothing by pulls.
func TestRetentionWithoutPullStatistics(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pushBare(t, d, "app", dgstOf("a"), "a")
	p := policy("pulled", "app")
	p.KeepPulledWithin = day
	if err := d.RetentionAdd(ctx, p); err != nil {
		t.Fatal(err)
	}
	dbtest.Exec(t, url, `DROP TABLE tag_pulls`)
	if _, err := d.RetentionPreview(ctx, "pulled"); !errors.Is(err, db.ErrPullStatsMissing) {
		t.Errorf("preview without tag_pulls: %v", err)
	}
	if _, err := d.RetentionRun(ctx, "pulled"); !errors.Is(err, db.ErrPullStatsMissing) {
		t.Errorf("run without tag_pulls: %v", err)
	}
	p.Name = "again"
	if err := d.RetentionAdd(ctx, p); !errors.Is(err, db.ErrPullStatsMissing) {
		t.Errorf("add without tag_pulls: %v", err)
	}
}
