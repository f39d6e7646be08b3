package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db/dbtest"
)

// berth tag-rule: add prints the id, list the table, delete by id; bad
// input is refused saying what is wrong; a rule added by the command
// holds for the server at once, and a deleted one no longer.
func TestTagRuleCLI(t *testing.T) {
	t.Parallel()
	dbURL := dbtest.NewURL(t)
	for _, tc := range []struct {
		args    []string
		mention string
	}{
		{[]string{"add", "--repos", "demo/**", "--tags", "^v"}, "give one of --immutable and --protected"},
		{[]string{"add", "--repos", "demo/**", "--tags", "^v", "--immutable", "--protected"}, "give one of --immutable and --protected"},
		{[]string{"add", "--tags", "^v", "--immutable"}, "--repos is required"},
		{[]string{"add", "--repos", "Demo/*", "--tags", "^v", "--immutable"}, `repository glob "Demo/*"`},
		{[]string{"add", "--repos", "demo/***", "--tags", "^v", "--immutable"}, "more than two '*' in a row"},
		{[]string{"add", "--repos", "demo/**", "--tags", "^(v", "--immutable"}, "--tags: tag expression \"^(v\": error parsing regexp: missing closing )"},
		{[]string{"add", "--repos", "demo/**", "--immutable"}, "--tags: empty tag expression"},
		{[]string{"add", "extra", "--repos", "demo/**", "--tags", "^v", "--immutable"}, "usage"},
		{[]string{"delete", "99"}, "tag rule 99 does not exist"},
		{[]string{"delete", "x"}, `tag rule id "x"`},
		{[]string{"freeze"}, "unknown command: tag-rule freeze"},
	} {
		berthCLI(t, dbURL, "", append([]string{"tag-rule"}, tc.args...)...).fails(t, tc.mention)
	}

	add := berthCLI(t, dbURL, "", "tag-rule", "add", "--repos", "demo/**", "--tags", "^v", "--immutable").ok(t)
	id := strings.TrimSpace(add.stdout)
	if add.stdout != id+"\n" || !strings.Contains(add.stderr, "added tag rule "+id+": repos 'demo/**', tags '^v', immutable") {
		t.Fatalf("add printed %q, %q", add.stdout, add.stderr)
	}
	id2 := strings.TrimSpace(berthCLI(t, dbURL, "", "tag-rule", "add", "--repos", "*", "--tags", "^release-[0-9]+$", "--protected").ok(t).stdout)
	list := strings.Split(strings.TrimSpace(berthCLI(t, dbURL, "", "tag-rule", "list").ok(t).stdout), "\n")
	if len(list) != 3 || strings.Join(strings.Fields(list[0]), " ") != "ID REPOS TAGS KIND CREATED" {
		t.Fatalf("list: %q", list)
	}
	for i, want := range []string{id + " demo/** ^v immutable ", id2 + " * ^release-[0-9]+$ protected "} {
		if got := strings.Join(strings.Fields(list[i+1]), " "); !strings.HasPrefix(got, want) || !strings.Contains(got, "T") {
			t.Errorf("list row %q, want %q and the time", got, want)
		}
	}

	m := startMain(t, dbURL, "--gc-disabled")
	base := "http://" + m.Addr().String()
	pushImage(t, base, "demo/app") // v1
	config := []byte(`{"architecture":"arm64","os":"linux"}`)
	cd := digest.FromBytes(config)
	mustDo(t, "POST", base+"/v2/demo/app/blobs/uploads/?digest="+cd.String(), config, http.StatusCreated)
	other := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`, cd, len(config)))
	refused := mustDo(t, "PUT", base+"/v2/demo/app/manifests/v1", other, http.StatusForbidden, "Content-Type: application/vnd.oci.image.manifest.v1+json")
	want := `{"code":"DENIED","message":"tag v1 of demo/app is immutable (tag rule ` + id + `: repos 'demo/**', tags '^v'): it cannot be moved or untagged"`
	if !strings.Contains(string(refused.body), want) {
		t.Errorf("refusal %s, want %s", refused.body, want)
	}
	if r := berthCLI(t, dbURL, "", "tag-rule", "delete", id).ok(t); r.stdout != "deleted tag rule "+id+"\n" {
		t.Errorf("delete printed %q", r.stdout)
	}
	mustDo(t, "PUT", base+"/v2/demo/app/manifests/v1", other, http.StatusCreated, "Content-Type: application/vnd.oci.image.manifest.v1+json")
}
