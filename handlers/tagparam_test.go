package handlers_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db/dbtest"
)

// tagQuery builds ?tag=a&tag=b…
func tagQuery(tags ...string) string {
	q := url.Values{"tag": tags}
	return "?" + q.Encode()
}

// resolve returns the digest tag points at, or "" when it answers 404.
func (r *registry) resolve(repo, tag string) string {
	r.t.Helper()
	resp := r.do("HEAD", "/v2/"+repo+"/manifests/"+tag, nil)
	if resp.StatusCode == 404 {
		return ""
	}
	resp.expect(r.t, 200, "")
	return resp.Header.Get("Docker-Content-Digest")
}

// tagHistory returns the tag's history, oldest first, as "action old→new".
func (r *registry) tagHistory(repo, tag string) []string {
	r.t.Helper()
	resp := r.do("GET", "/v2/"+repo+"/tags/"+tag+"/history", nil)
	resp.expect(r.t, 200, "")
	var body struct {
		History []struct {
			Action    string  `json:"action"`
			Digest    *string `json:"digest"`
			Previous  *string `json:"previous"`
			RequestID string  `json:"requestId"`
		} `json:"history"`
	}
	if err := json.Unmarshal(resp.body, &body); err != nil {
		r.t.Fatal(err)
	}
	str := func(p *string) string {
		if p == nil {
			return "-"
		}
		return *p
	}
	var lines []string
	for _, e := range slices.Backward(body.History) {
		lines = append(lines, fmt.Sprintf("%s %s→%s", e.Action, str(e.Previous), str(e.Digest)))
	}
	return lines
}

func TestPushWithTagParameters(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	a := r.image("repo", "tag params a")
	b := r.image("repo", "tag params b")
	da, db := digest.FromBytes(a), digest.FromBytes(b)

	// The spec's example: four tags on one push by digest.
	resp := r.do("PUT", "/v2/repo/manifests/"+da.String()+tagQuery("1.2.3", "1.2", "1", "latest"), a, "Content-Type: "+mtManifest)
	resp.expect(t, 201, "")
	if got := resp.Header.Values("OCI-Tag"); !slices.Equal(got, []string{"1.2.3", "1.2", "1", "latest"}) {
		t.Errorf("OCI-Tag headers %q, want one per tag in the order given", got)
	}
	if resp.Header.Get("Location") != "/v2/repo/manifests/"+da.String() || resp.Header.Get("Docker-Content-Digest") != da.String() {
		t.Errorf("Location %q Docker-Content-Digest %q", resp.Header.Get("Location"), resp.Header.Get("Docker-Content-Digest"))
	}
	firstRequest := resp.Header.Get("X-Request-Id")
	for _, tag := range []string{"1.2.3", "1.2", "1", "latest"} {
		if got := r.resolve("repo", tag); got != da.String() {
			t.Errorf("tag %s points at %q, want %s", tag, got, da)
		}
	}

	// A second push moves some tags, creates one, leaves the others.
	resp = r.do("PUT", "/v2/repo/manifests/"+db.String()+tagQuery("latest", "2", "1"), b, "Content-Type: "+mtManifest)
	resp.expect(t, 201, "")
	if got := resp.Header.Values("OCI-Tag"); !slices.Equal(got, []string{"latest", "2", "1"}) {
		t.Errorf("OCI-Tag headers %q", got)
	}
	want := map[string][]string{
		"1.2.3":  {"tag.create -→" + da.String()},
		"1.2":    {"tag.create -→" + da.String()},
		"1":      {"tag.create -→" + da.String(), "tag.move " + da.String() + "→" + db.String()},
		"latest": {"tag.create -→" + da.String(), "tag.move " + da.String() + "→" + db.String()},
		"2":      {"tag.create -→" + db.String()},
	}
	for tag, w := range want {
		if got := r.tagHistory("repo", tag); !slices.Equal(got, w) {
			t.Errorf("history of %s:\n%s\nwant:\n%s", tag, strings.Join(got, "\n"), strings.Join(w, "\n"))
		}
	}
	if got := string(r.do("GET", "/v2/repo/tags/list", nil).body); got != `{"name":"repo","tags":["1","1.2","1.2.3","2","latest"]}` {
		t.Errorf("tag list %s", got)
	}
	// The audit log has one row per tag change, each with the request that
	// made it, and one manifest.push per new manifest.
	if n := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log WHERE action LIKE 'tag.%' AND request_id = $1`, firstRequest); n != 4 {
		t.Errorf("%d tag rows in the audit log for the first push, want 4", n)
	}
	if n := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log WHERE action LIKE 'tag.%'`); n != 7 {
		t.Errorf("%d tag rows in the audit log, want 7", n)
	}
	if n := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log WHERE action = 'manifest.push'`); n != 2 {
		t.Errorf("%d manifest.push rows, want 2", n)
	}

	t.Run("duplicates count once", func(t *testing.T) {
		resp := r.do("PUT", "/v2/repo/manifests/"+da.String()+tagQuery("dup", "x", "dup", "dup", "x"), a, "Content-Type: "+mtManifest)
		resp.expect(t, 201, "")
		if got := resp.Header.Values("OCI-Tag"); !slices.Equal(got, []string{"dup", "x"}) {
			t.Errorf("OCI-Tag headers %q, want dup and x once each", got)
		}
		if got := r.tagHistory("repo", "dup"); len(got) != 1 {
			t.Errorf("history of dup: %q, want one creation", got)
		}
	})
	t.Run("pushing again changes nothing", func(t *testing.T) {
		before := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log`)
		resp := r.do("PUT", "/v2/repo/manifests/"+da.String()+tagQuery("1.2.3", "1.2"), a, "Content-Type: "+mtManifest)
		resp.expect(t, 201, "")
		if got := resp.Header.Values("OCI-Tag"); !slices.Equal(got, []string{"1.2.3", "1.2"}) {
			t.Errorf("OCI-Tag headers %q: a tag already there is accepted too", got)
		}
		if after := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log`); after != before {
			t.Errorf("%d audit rows for a push that changed nothing", after-before)
		}
	})
	t.Run("path tag and parameters together", func(t *testing.T) {
		resp := r.do("PUT", "/v2/repo/manifests/v9"+tagQuery("v10", "v9"), b, "Content-Type: "+mtManifest)
		resp.expect(t, 201, "")
		if got := resp.Header.Values("OCI-Tag"); !slices.Equal(got, []string{"v9", "v10"}) {
			t.Errorf("OCI-Tag headers %q, want the path's tag then the parameter", got)
		}
		if r.resolve("repo", "v9") != db.String() || r.resolve("repo", "v10") != db.String() {
			t.Errorf("v9 → %q, v10 → %q, want both %s", r.resolve("repo", "v9"), r.resolve("repo", "v10"), db)
		}
	})
	t.Run("plain push by tag says which tag", func(t *testing.T) {
		resp := r.do("PUT", "/v2/repo/manifests/plain", b, "Content-Type: "+mtManifest)
		resp.expect(t, 201, "")
		if got := resp.Header.Values("OCI-Tag"); !slices.Equal(got, []string{"plain"}) {
			t.Errorf("OCI-Tag headers %q", got)
		}
		resp = r.do("PUT", "/v2/repo/manifests/"+db.String(), b, "Content-Type: "+mtManifest)
		resp.expect(t, 201, "")
		if got := resp.Header.Values("OCI-Tag"); len(got) != 0 {
			t.Errorf("a push by digest without tags answers OCI-Tag %q", got)
		}
	})
	// A manifest pushed by sha512 digest can be tagged only this way: a push
	// by tag digests the body with sha256.
	t.Run("sha512", func(t *testing.T) {
		d512 := digest.SHA512.FromBytes(a)
		resp := r.do("PUT", "/v2/repo/manifests/"+d512.String()+tagQuery("s512", "s512-b"), a, "Content-Type: "+mtManifest)
		resp.expect(t, 201, "")
		if got := resp.Header.Values("OCI-Tag"); !slices.Equal(got, []string{"s512", "s512-b"}) {
			t.Errorf("OCI-Tag headers %q", got)
		}
		for _, tag := range []string{"s512", "s512-b"} {
			if got := r.resolve("repo", tag); got != d512.String() {
				t.Errorf("tag %s points at %q, want %s", tag, got, d512)
			}
		}
	})
}

// A push with several tags is one transaction: when the condition fails
// for one tag, no tag moves and the manifest is not stored.
func TestTagParametersAllOrNothing(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	a := r.image("repo", "all or nothing a")
	b := r.image("repo", "all or nothing b")
	da, db := digest.FromBytes(a), digest.FromBytes(b)
	r.do("PUT", "/v2/repo/manifests/"+da.String()+tagQuery("a", "z"), a, "Content-Type: "+mtManifest).expect(t, 201, "")

	failed := func(name string, tags []string, header string, wantTag string, wantCurrent any) {
		t.Run(name, func(t *testing.T) {
			audit := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log`)
			resp := r.do("PUT", "/v2/repo/manifests/"+db.String()+tagQuery(tags...), b, "Content-Type: "+mtManifest, header)
			resp.expect(t, 412, "DENIED")
			var body struct {
				Errors []struct {
					Message string         `json:"message"`
					Detail  map[string]any `json:"detail"`
				} `json:"errors"`
			}
			json.Unmarshal(resp.body, &body)
			if d := body.Errors[0].Detail; d["tag"] != wantTag || d["current"] != wantCurrent {
				t.Errorf("412 detail %v, want tag %s current %v", d, wantTag, wantCurrent)
			}
			if !strings.Contains(body.Errors[0].Message, "tag "+wantTag+" ") {
				t.Errorf("412 message does not name tag %s: %s", wantTag, body.Errors[0].Message)
			}
			if len(resp.Header.Values("OCI-Tag")) != 0 {
				t.Errorf("refused push answers OCI-Tag %q", resp.Header.Values("OCI-Tag"))
			}
			for _, tag := range []string{"a", "z"} {
				if got := r.resolve("repo", tag); got != da.String() {
					t.Errorf("tag %s moved to %q", tag, got)
				}
			}
			if got := r.resolve("repo", "c"); got != "" {
				t.Errorf("tag c created, pointing at %s", got)
			}
			r.do("HEAD", "/v2/repo/manifests/"+db.String(), nil).expect(t, 404, "")
			if after := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log`); after != audit {
				t.Errorf("a refused push wrote %d audit rows", after-audit)
			}
		})
	}
	// c sorts after a and z before it: the failing tag is refused whether
	// it is locked first or last.
	failed("If-Match, one tag missing", []string{"a", "c", "z"}, `If-Match: "`+da.String()+`"`, "c", nil)
	failed("If-None-Match, one tag present", []string{"c", "z"}, "If-None-Match: *", "z", da.String())
	failed("If-Match another digest", []string{"z", "a"}, `If-Match: "`+db.String()+`"`, "a", da.String())

	// When the condition holds for every tag, every tag moves.
	resp := r.do("PUT", "/v2/repo/manifests/"+db.String()+tagQuery("z", "a"), b, "Content-Type: "+mtManifest, `If-Match: "`+da.String()+`"`)
	resp.expect(t, 201, "")
	if r.resolve("repo", "a") != db.String() || r.resolve("repo", "z") != db.String() {
		t.Errorf("after a conditional push that holds: a → %q, z → %q", r.resolve("repo", "a"), r.resolve("repo", "z"))
	}
	// Conditional headers without tags do nothing (a push by digest has
	// no tag to compare), as before.
	r.do("PUT", "/v2/repo/manifests/"+da.String(), a, "Content-Type: "+mtManifest, "If-None-Match: *").expect(t, 201, "")
}

func TestTagParametersRefused(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	a := r.image("repo", "refused")
	da := digest.FromBytes(a)
	put := func(query string) response {
		return r.do("PUT", "/v2/repo/manifests/"+da.String()+query, a, "Content-Type: "+mtManifest)
	}

	for _, bad := range []string{"", ".hidden", "-dash", "has space", "a/b", strings.Repeat("x", 129), "ok:no"} {
		t.Run(fmt.Sprintf("invalid %q", bad), func(t *testing.T) {
			resp := put(tagQuery("good", bad))
			resp.expect(t, 400, "MANIFEST_INVALID")
			var body struct {
				Errors []struct {
					Detail map[string]string `json:"detail"`
				} `json:"errors"`
			}
			json.Unmarshal(resp.body, &body)
			if body.Errors[0].Detail["tag"] != bad {
				t.Errorf("error does not name the tag %q: %s", bad, resp.body)
			}
		})
	}
	t.Run("too many", func(t *testing.T) {
		var tags []string
		for i := range 101 {
			tags = append(tags, fmt.Sprint("t", i))
		}
		resp := put(tagQuery(tags...))
		resp.expect(t, 414, "MANIFEST_INVALID")
		if !strings.Contains(string(resp.body), "100") {
			t.Errorf("414 does not say the limit: %s", resp.body)
		}
		// The path's tag counts too: with t0 it makes 100, with another 101.
		r.do("PUT", "/v2/repo/manifests/t0"+tagQuery(tags[:100]...), a, "Content-Type: "+mtManifest).expect(t, 201, "")
		r.do("PUT", "/v2/repo/manifests/extra"+tagQuery(tags[:100]...), a, "Content-Type: "+mtManifest).expect(t, 414, "MANIFEST_INVALID")
	})
	// Nothing refused was stored: only the 100 tags of the push that fit.
	if n := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM tags`); n != 100 {
		t.Errorf("%d tags stored, want the 100 of the one accepted push", n)
	}

	t.Run("a hundred, with repeats", func(t *testing.T) {
		var tags []string
		for i := range 300 {
			tags = append(tags, fmt.Sprint("r", i%100))
		}
		resp := put(tagQuery(tags...))
		resp.expect(t, 201, "")
		if got := len(resp.Header.Values("OCI-Tag")); got != 100 {
			t.Errorf("%d OCI-Tag headers, want 100", got)
		}
	})
}
