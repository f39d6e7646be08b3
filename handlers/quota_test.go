package handlers_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// A manifest push that would take its namespace over its quota gets 403
// DENIED, with the limit, the usage and the size of the push in the
// message and, in bytes, in the detail; nothing of it is stored. A push
// that adds nothing (a new tag on a live manifest) goes through.
func TestQuotaDeniedOnTheWire(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	img1 := r.image("team/app", "one")
	r.pushManifest("team/app", "v1", mtManifest, img1)
	rep, err := r.db.UsageOf(t.Context(), "team")
	if err != nil {
		t.Fatal(err)
	}
	used := rep.Namespace.Total()
	if _, err := r.db.QuotaSet(t.Context(), "team", used+10, 0); err != nil {
		t.Fatal(err)
	}
	img2 := r.image("team/other", "two")
	resp := r.do("PUT", "/v2/team/other/manifests/v1", img2, "Content-Type: "+mtManifest)
	resp.expect(t, http.StatusForbidden, "DENIED")
	var body struct {
		Errors []struct {
			Message string
			Detail  struct {
				Quota              string
				Limit, Usage, Push int64
			}
		}
	}
	if err := json.Unmarshal(resp.body, &body); err != nil || len(body.Errors) != 1 {
		t.Fatalf("body %s: %v", resp.body, err)
	}
	push := int64(len(img2)) + int64(len(`{"architecture":"amd64","os":"linux","seed":"two"}`)) + int64(len("layer of two"))
	e := body.Errors[0]
	want := fmt.Sprintf("quota of team exceeded: limit %d B (%d bytes), usage %d B (%d bytes), this push adds %d B (%d bytes)",
		used+10, used+10, used, used, push, push)
	if e.Message != want || e.Detail.Quota != "team" || e.Detail.Limit != used+10 || e.Detail.Usage != used || e.Detail.Push != push {
		t.Errorf("got %s\nwant message %q", resp.body, want)
	}
	r.do("GET", "/v2/team/other/manifests/v1", nil).expect(t, http.StatusNotFound, "MANIFEST_UNKNOWN")
	r.pushManifest("team/app", "v2", mtManifest, img1) // adds nothing

	// The web interface shows the usage and the quota.
	b := r.browser()
	list := b.get("/ui/")
	if !strings.Contains(list.body, fmt.Sprintf(`title="%d bytes: blobs`, used)) {
		t.Errorf("repositories page lacks the usage of team/app: %s", list.body)
	}
	repo := b.get("/ui/r/team/app/")
	if !strings.Contains(repo.body, fmt.Sprintf(`Uses <span title="%d bytes">`, used)) || !strings.Contains(repo.body, "Quota of team:") {
		t.Errorf("repository page lacks the usage or the quota: %s", repo.body)
	}
	gc := b.get("/ui/gc")
	if !strings.Contains(gc.body, "<td>team</td>") || !strings.Contains(gc.body, fmt.Sprintf(`title="%d bytes"`, used+10)) {
		t.Errorf("storage page lacks the quota: %s", gc.body)
	}
}
