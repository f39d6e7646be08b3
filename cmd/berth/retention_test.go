package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// berth retention: add, list, preview, run (printing the preview's lines
// and leaving audit rows by retention:NAME), delete; bad input refused.
func TestRetentionCLI(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i := range 5 {
		m := fmt.Sprintf("sha256:%064x", i+1)
		if _, err := d.ManifestStore(ctx, db.ManifestPut{Repository: "demo/app", Digest: m, MediaType: "application/vnd.oci.image.index.v1+json",
			Payload: []byte(m), Tags: []string{fmt.Sprintf("v%d", i+1)}}, db.Actor{Name: "alice"}); err != nil {
			t.Fatal(err)
		}
		dbtest.Exec(t, url, `UPDATE tags SET updated_at = now() - $1 * interval '10 days' WHERE name = $2`, 5-i, fmt.Sprintf("v%d", i+1))
	}
	// v1..v5 pushed 50, 40, 30, 20, 10 days ago.

	for _, tc := range []struct {
		args    []string
		mention string
	}{
		{[]string{"add", "p", "--keep-last", "2"}, "--repos GLOB"},
		{[]string{"add", "p", "--repos", "demo/**"}, "give a keep rule"},
		{[]string{"add", "p", "--repos", "Demo/*", "--keep-last", "2"}, "--repos Demo/*"},
		{[]string{"add", "p", "--repos", "demo/**", "--keep-tags", "(", "--keep-last", "1"}, "not a valid regular expression"},
		{[]string{"add", "p", "--repos", "demo/**", "--keep-pushed-within", "3x"}, "keep-pushed-within"},
		{[]string{"preview", "nope"}, "retention policy nope is not known"},
		{[]string{"delete", "nope"}, "retention policy nope is not known"},
		{[]string{"prune"}, "unknown command: retention prune"},
	} {
		berthCLI(t, url, "", append([]string{"retention"}, tc.args...)...).fails(t, tc.mention)
	}

	add := berthCLI(t, url, "", "retention", "add", "tidy", "--repos", "demo/**", "--keep-last", "2", "--keep-pushed-within", "25d", "--keep-pulled-within", "7d",
		"--keep-tags", "^v1$", "--delete-untagged-after", "30d", "--schedule", "24h").ok(t)
	if !strings.Contains(add.stdout, "added retention policy tidy for demo/**: keeps last 2, pushed within 25d, pulled within 7d, tags ~ ^v1$; untagged manifests deleted after 30d; runs every 1d") {
		t.Errorf("add printed %q", add.stdout)
	}
	list := berthCLI(t, url, "", "retention", "list").ok(t)
	for _, want := range []string{"tidy", "demo/**", "last 2, pushed within 25d, pulled within 7d, tags ~ ^v1$", "after 30d", "every 1d", "never"} {
		if !strings.Contains(list.stdout, want) {
			t.Errorf("list lacks %q:\n%s", want, list.stdout)
		}
	}
	preview := berthCLI(t, url, "", "retention", "preview", "tidy").ok(t)
	lines := strings.Split(strings.TrimSpace(preview.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "demo/app  tag v2  not among the 2 most recent; pushed over 25d ago; never pulled; matches no keep pattern (pushed ") ||
		!strings.HasPrefix(lines[1], "demo/app  tag v3  not among") {
		t.Fatalf("preview printed:\n%s", preview.stdout)
	}
	if !strings.Contains(preview.stderr, "retention policy tidy would remove 2 tags and 0 manifests") {
		t.Errorf("preview summary %q", preview.stderr)
	}
	run := berthCLI(t, url, "", "retention", "run", "tidy").ok(t)
	if run.stdout != preview.stdout {
		t.Errorf("run printed\n%s\npreview printed\n%s", run.stdout, preview.stdout)
	}
	if !strings.Contains(run.stderr, "retention policy tidy removed 2 tags and 0 manifests") {
		t.Errorf("run summary %q", run.stderr)
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM audit_log WHERE actor = 'retention:tidy' AND action = 'tag.untag' AND tag IN ('v2', 'v3')`); n != 2 {
		t.Errorf("%d audit rows by retention:tidy, want 2", n)
	}
	hist, _, err := d.TagHistory(ctx, "demo/app", "v2", 0, 10)
	if err != nil || len(hist) != 2 || hist[0].Action != db.ActionTagUntag || hist[0].Actor != "retention:tidy" {
		t.Errorf("history of v2: %+v, %v", hist, err)
	}
	list = berthCLI(t, url, "", "retention", "list").ok(t)
	if !strings.Contains(list.stdout, "2 tags, 0 manifests") || strings.Contains(list.stdout, "never") {
		t.Errorf("list after the run:\n%s", list.stdout)
	}
	again := berthCLI(t, url, "", "retention", "preview", "tidy").ok(t)
	if again.stdout != "" {
		t.Errorf("a second preview printed %q", again.stdout)
	}
	del := berthCLI(t, url, "", "retention", "delete", "tidy").ok(t)
	if del.stdout != "deleted retention policy tidy\n" {
		t.Errorf("delete printed %q", del.stdout)
	}
	if out := berthCLI(t, url, "", "retention", "list").ok(t).stdout; strings.Contains(out, "tidy") {
		t.Errorf("list after delete:\n%s", out)
	}
}
