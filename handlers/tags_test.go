package handlers_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db/dbtest"
)

func TestCacheHeaders(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	img := r.image("repo", "cache")
	d := r.pushManifest("repo", "v1", mtManifest, img)
	etag := `"` + d.String() + `"`

	for _, tt := range []struct{ ref, cache string }{
		{d.String(), "public, max-age=31536000, immutable"},
		{"v1", "no-cache"},
	} {
		for _, method := range []string{"GET", "HEAD"} {
			resp := r.do(method, "/v2/repo/manifests/"+tt.ref, nil)
			resp.expect(t, 200, "")
			if resp.Header.Get("Cache-Control") != tt.cache || resp.Header.Get("ETag") != etag {
				t.Errorf("%s by %s: Cache-Control %q ETag %q", method, tt.ref, resp.Header.Get("Cache-Control"), resp.Header.Get("ETag"))
			}
			notModified := r.do(method, "/v2/repo/manifests/"+tt.ref, nil, "If-None-Match: "+etag)
			notModified.expect(t, 304, "")
			if len(notModified.body) != 0 || notModified.Header.Get("ETag") != etag {
				t.Errorf("304 with body %q ETag %q", notModified.body, notModified.Header.Get("ETag"))
			}
			r.do(method, "/v2/repo/manifests/"+tt.ref, nil, `If-None-Match: "sha256:other", W/`+etag).expect(t, 304, "")
			r.do(method, "/v2/repo/manifests/"+tt.ref, nil, `If-None-Match: "sha256:other"`).expect(t, 200, "")
		}
	}
	// Once the tag moves, the old ETag no longer matches.
	img2 := r.image("repo", "cache two")
	r.pushManifest("repo", "v1", mtManifest, img2)
	r.do("GET", "/v2/repo/manifests/v1", nil, "If-None-Match: "+etag).expect(t, 200, "")
}

func TestConditionalTagChanges(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	a := r.image("repo", "a")
	b := r.image("repo", "b")
	da := r.pushManifest("repo", digest.FromBytes(a).String(), mtManifest, a)
	db := r.pushManifest("repo", digest.FromBytes(b).String(), mtManifest, b)
	put := func(body []byte, header ...string) response {
		return r.do("PUT", "/v2/repo/manifests/t", body, append([]string{"Content-Type: " + mtManifest}, header...)...)
	}
	current := func(resp response) any {
		var body struct {
			Errors []struct {
				Detail map[string]any `json:"detail"`
			} `json:"errors"`
		}
		json.Unmarshal(resp.body, &body)
		return body.Errors[0].Detail["current"]
	}

	// If-None-Match: * creates, and only creates.
	put(a, "If-None-Match: *").expect(t, 201, "")
	resp := put(b, "If-None-Match: *")
	resp.expect(t, 412, "DENIED")
	if current(resp) != da.String() {
		t.Errorf("412 says the tag points at %v, want %s", current(resp), da)
	}
	// If-Match moves only from the expected digest.
	resp = put(b, `If-Match: "`+db.String()+`"`)
	resp.expect(t, 412, "DENIED")
	if !strings.Contains(string(resp.body), da.String()) {
		t.Errorf("412 body does not say where the tag points: %s", resp.body)
	}
	put(b, `If-Match: "`+da.String()+`"`).expect(t, 201, "")
	put(a, `If-Match: "sha256:`+strings.Repeat("0", 64)+`", "`+db.String()+`"`).expect(t, 201, "")
	put(b, "If-Match: *").expect(t, 201, "")

	// Conditional untag on both routes.
	r.do("DELETE", "/v2/repo/tags/t", nil, `If-Match: "`+da.String()+`"`).expect(t, 412, "DENIED")
	r.do("DELETE", "/v2/repo/manifests/t", nil, `If-Match: "`+da.String()+`"`).expect(t, 412, "DENIED")
	r.do("GET", "/v2/repo/manifests/t", nil).expect(t, 200, "")
	r.do("DELETE", "/v2/repo/manifests/t", nil, `If-Match: "`+db.String()+`"`).expect(t, 202, "")
	resp = r.do("DELETE", "/v2/repo/tags/t", nil, `If-Match: "`+db.String()+`"`)
	resp.expect(t, 412, "DENIED")
	if current(resp) != nil {
		t.Errorf("412 for a missing tag says current %v, want null", current(resp))
	}
	put(a, "If-Match: *").expect(t, 412, "DENIED")

	// Malformed conditions are refused before anything changes.
	put(a, "If-Match: latest").expect(t, 400, "DIGEST_INVALID")
	put(a, `If-None-Match: "`+da.String()+`"`).expect(t, 400, "UNSUPPORTED")
	r.do("GET", "/v2/repo/manifests/t", nil).expect(t, 404, "MANIFEST_UNKNOWN")
}

func TestTagNamedList(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	img := r.image("repo", "list")
	d := r.pushManifest("repo", "list", mtManifest, img)
	r.pushManifest("repo", "_list", mtManifest, img)

	// GET of the list routes is always the listing...
	for _, p := range []string{"/v2/repo/tags/list", "/v2/repo/tags/_list"} {
		if got := string(r.do("GET", p, nil).body); got != `{"name":"repo","tags":["_list","list"]}` {
			t.Errorf("GET %s = %s", p, got)
		}
	}
	// ...while the tags themselves pull (HEAD for _list, whose GET is the
	// digest listing) and untag like any other.
	r.do("GET", "/v2/repo/manifests/list", nil).expect(t, 200, "")
	resp := r.do("HEAD", "/v2/repo/manifests/_list", nil)
	resp.expect(t, 200, "")
	if resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Errorf("HEAD _list resolved to %q", resp.Header.Get("Docker-Content-Digest"))
	}
	r.do("DELETE", "/v2/repo/tags/list", nil).expect(t, 202, "")
	r.do("DELETE", "/v2/repo/manifests/_list", nil).expect(t, 202, "")
	if got := string(r.do("GET", "/v2/repo/tags/list", nil).body); got != `{"name":"repo","tags":[]}` {
		t.Errorf("after untag: %s", got)
	}
}

func TestManifestListing(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	var digests []digest.Digest
	for i := range 4 {
		body := r.image("repo", fmt.Sprint("listing ", i))
		ref := digest.FromBytes(body).String()
		if i%2 == 0 {
			ref = fmt.Sprint("t", i)
		}
		digests = append(digests, r.pushManifest("repo", ref, mtManifest, body))
	}
	r.do("DELETE", "/v2/repo/manifests/"+digests[3].String(), nil).expect(t, 202, "")

	type entry struct {
		Digest    string   `json:"digest"`
		MediaType string   `json:"mediaType"`
		Size      int64    `json:"size"`
		Tags      []string `json:"tags"`
		Created   string   `json:"created"`
	}
	list := func(query string) ([]entry, string) {
		resp := r.do("GET", "/v2/repo/manifests/_list"+query, nil)
		resp.expect(t, 200, "")
		var body struct {
			Name      string  `json:"name"`
			Manifests []entry `json:"manifests"`
		}
		if err := json.Unmarshal(resp.body, &body); err != nil || body.Name != "repo" {
			t.Fatalf("listing %s: %s", query, resp.body)
		}
		return body.Manifests, resp.Header.Get("Link")
	}
	all, _ := list("")
	if len(all) != 3 {
		t.Fatalf("listing has %d manifests, want the 3 live ones: %+v", len(all), all)
	}
	for i, e := range all {
		if i > 0 && e.Digest <= all[i-1].Digest {
			t.Errorf("not in digest order: %s after %s", e.Digest, all[i-1].Digest)
		}
		if e.Digest == digests[3].String() {
			t.Errorf("deleted manifest %s listed", e.Digest)
		}
		if e.MediaType != mtManifest || e.Size == 0 || e.Created == "" || e.Tags == nil {
			t.Errorf("incomplete entry %+v", e)
		}
	}
	untagged, _ := list("?untagged=true")
	if len(untagged) != 1 || untagged[0].Digest != digests[1].String() || len(untagged[0].Tags) != 0 {
		t.Errorf("untagged = %+v, want only %s", untagged, digests[1])
	}
	first, link := list("?n=2")
	if len(first) != 2 || !strings.Contains(link, "last="+url.QueryEscape(first[1].Digest)) {
		t.Fatalf("first page %+v, Link %q", first, link)
	}
	rest, link := list("?n=2&last=" + first[1].Digest)
	if len(rest) != 1 || link != "" {
		t.Fatalf("second page %+v, Link %q", rest, link)
	}
	r.do("GET", "/v2/nothing/manifests/_list", nil).expect(t, 404, "NAME_UNKNOWN")
	r.do("GET", "/v2/repo/manifests/_list?untagged=maybe", nil).expect(t, 400, "UNSUPPORTED")
}

func TestTagHistoryAndRestore(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	a := r.image("repo", "history a")
	b := r.image("repo", "history b")
	da := r.pushManifest("repo", "t", mtManifest, a)
	db := r.pushManifest("repo", "t", mtManifest, b)
	r.pushManifest("repo", "t", mtManifest, b) // no change, no history
	r.do("DELETE", "/v2/repo/tags/t", nil).expect(t, 202, "")

	// Restore to the earlier digest, conditionally on the tag being absent.
	resp := r.do("PUT", "/v2/repo/tags/t", []byte(`{"digest":"`+da.String()+`"}`), "If-None-Match: *")
	resp.expect(t, 201, "")
	if !strings.Contains(string(resp.body), `"previous":null`) {
		t.Errorf("restore body %s", resp.body)
	}
	r.do("PUT", "/v2/repo/tags/t", []byte(`{"digest":"`+db.String()+`"}`), `If-Match: "`+db.String()+`"`).expect(t, 412, "DENIED")
	r.do("PUT", "/v2/repo/tags/t", []byte(`{"digest":"`+db.String()+`"}`)).expect(t, 200, "")
	if got := r.do("GET", "/v2/repo/manifests/t", nil); got.Header.Get("Docker-Content-Digest") != db.String() {
		t.Fatalf("tag points at %s after restore", got.Header.Get("Docker-Content-Digest"))
	}
	// Deleting the manifest removes the tag, and that is history too; until
	// garbage collection purges it, a restore brings it back (undelete).
	r.do("DELETE", "/v2/repo/manifests/"+db.String(), nil).expect(t, 202, "")
	r.do("GET", "/v2/repo/manifests/"+db.String(), nil).expect(t, 404, "MANIFEST_UNKNOWN")
	r.do("PUT", "/v2/repo/tags/t", []byte(`{"digest":"`+db.String()+`"}`)).expect(t, 201, "")
	r.do("GET", "/v2/repo/manifests/"+db.String(), nil).expect(t, 200, "")
	r.do("PUT", "/v2/repo/tags/t", []byte(`{"digest":"`+digest.FromString("never").String()+`"}`)).expect(t, 404, "MANIFEST_UNKNOWN")
	r.do("PUT", "/v2/repo/tags/t", []byte(`{"digest":"nope"}`)).expect(t, 400, "DIGEST_INVALID")
	r.do("PUT", "/v2/repo/tags/t", []byte(`not json`)).expect(t, 400, "MANIFEST_INVALID")

	type entry struct {
		ID        int64   `json:"id"`
		Action    string  `json:"action"`
		Digest    *string `json:"digest"`
		Previous  *string `json:"previous"`
		Actor     string  `json:"actor"`
		RequestID string  `json:"requestId"`
	}
	history := func(query string) ([]entry, string) {
		resp := r.do("GET", "/v2/repo/tags/t/history"+query, nil)
		resp.expect(t, 200, "")
		var body struct {
			History []entry `json:"history"`
		}
		if err := json.Unmarshal(resp.body, &body); err != nil {
			t.Fatal(err)
		}
		return body.History, resp.Header.Get("Link")
	}
	str := func(p *string) string {
		if p == nil {
			return "-"
		}
		return *p
	}
	got, _ := history("")
	var lines []string
	for _, e := range got {
		lines = append(lines, fmt.Sprintf("%s %s→%s", e.Action, str(e.Previous), str(e.Digest)))
		if e.Actor == "" || e.RequestID == "" {
			t.Errorf("entry without actor or request id: %+v", e)
		}
	}
	want := []string{ // newest first
		fmt.Sprintf("tag.restore -→%s", db),
		fmt.Sprintf("tag.delete %s→-", db),
		fmt.Sprintf("tag.restore %s→%s", da, db),
		fmt.Sprintf("tag.restore -→%s", da),
		fmt.Sprintf("tag.untag %s→-", db),
		fmt.Sprintf("tag.move %s→%s", da, db),
		fmt.Sprintf("tag.create -→%s", da),
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("history:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	page1, link := history("?n=4")
	page2, link2 := history(fmt.Sprintf("?n=4&last=%d", page1[3].ID))
	if len(page1) != 4 || len(page2) != 3 || link == "" || link2 != "" || page2[0].ID >= page1[3].ID {
		t.Fatalf("pages of 4: %d then %d entries, Links %q %q", len(page1), len(page2), link, link2)
	}
	r.do("GET", "/v2/repo/tags/never/history", nil).expect(t, 200, "")
	r.do("GET", "/v2/nothing/tags/t/history", nil).expect(t, 404, "NAME_UNKNOWN")
	r.do("GET", "/v2/repo/tags/t/history?last=abc", nil).expect(t, 400, "UNSUPPORTED")
}

// Every change writes its audit row in its own transaction: the log holds
// exactly the changes that happened, with who and which request.
func TestAuditTrail(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	img := r.image("repo", "audit") // two monolithic uploads
	d := r.pushManifest("repo", "v1", mtManifest, img)
	loc := r.do("POST", "/v2/repo/blobs/uploads/", nil).Header.Get("Location")
	r.do("DELETE", loc, nil).expect(t, 204, "")
	layer := digest.FromBytes([]byte("layer of audit"))
	r.do("POST", "/v2/other/blobs/uploads/?mount="+layer.String()+"&from=repo", nil).expect(t, 201, "")
	r.do("DELETE", "/v2/other/blobs/"+layer.String(), nil).expect(t, 202, "")
	r.do("DELETE", "/v2/repo/manifests/"+d.String(), nil).expect(t, 202, "")
	// Refused changes leave no trace.
	r.do("PUT", "/v2/repo/manifests/v1", img, "Content-Type: "+mtManifest, "If-Match: *").expect(t, 412, "DENIED")
	r.do("DELETE", "/v2/repo/manifests/"+d.String(), nil).expect(t, 404, "MANIFEST_UNKNOWN")

	want := map[string]int64{
		"blob.upload": 2, "manifest.push": 1, "tag.create": 1, "upload.start": 1, "upload.cancel": 1,
		"blob.mount": 1, "blob.unlink": 1, "tag.delete": 1, "manifest.delete": 1,
	}
	var total int64
	for action, n := range want {
		if got := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log WHERE action = $1`, action); got != n {
			t.Errorf("%d %s rows, want %d", got, action, n)
		}
		total += n
	}
	if got := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log`); got != total {
		t.Errorf("%d audit rows, want %d", got, total)
	}
	if got := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log WHERE actor = '' OR request_id = ''`); got != 0 {
		t.Errorf("%d audit rows without actor or request id", got)
	}
}
