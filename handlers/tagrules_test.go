package handlers_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
)

func addTagRule(t *testing.T, d *db.DB, repos, tags, kind string) db.TagRule {
	t.Helper()
	r, err := d.TagRuleAdd(context.Background(), db.TagRule{Repos: repos, ReposRegexp: auth.GlobRegex(repos), Tags: tags, Kind: kind})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// errorMessage is the message of the first error in an OCI error body.
func (resp response) errorMessage() string {
	var body struct {
		Errors []struct {
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(resp.body, &body) != nil || len(body.Errors) == 0 {
		return ""
	}
	return body.Errors[0].Message
}

// An immutable tag refuses, with 403 DENIED naming the rule, every way of
// moving or removing it, over the API and through the web interface; it
// is created, and pushed again with its digest, as any tag.
func TestImmutableTagOnTheWire(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	rule := addTagRule(t, r.db, "demo/**", "^v", db.TagRuleImmutable)
	img1, img2 := r.image("demo/app", "one"), r.image("demo/app", "two")
	m1 := r.pushManifest("demo/app", "v1", mtManifest, img1)
	r.pushManifest("demo/app", "v1", mtManifest, img1) // same digest: no change
	m2 := r.pushManifest("demo/app", "latest", mtManifest, img2)
	r.pushManifest("demo/app", "latest", mtManifest, img1) // not covered: moves

	want := "tag v1 of demo/app is immutable (tag rule " + itoa(rule.ID) + ": repos 'demo/**', tags '^v'): it cannot be moved or untagged"
	for _, tc := range []struct {
		name, method, path string
		body               []byte
		header             []string
		message            string
	}{
		{"push", "PUT", "/v2/demo/app/manifests/v1", img2, []string{"Content-Type: " + mtManifest}, want},
		{"push with ?tag=", "PUT", "/v2/demo/app/manifests/" + m2.String() + "?tag=v1&tag=v9", img2, []string{"Content-Type: " + mtManifest}, want},
		{"untag", "DELETE", "/v2/demo/app/tags/v1", nil, nil, want},
		{"untag by reference", "DELETE", "/v2/demo/app/manifests/v1", nil, nil, want},
		{"restore", "PUT", "/v2/demo/app/tags/v1", []byte(`{"digest":"` + m2.String() + `"}`), nil, want},
		{"delete by digest", "DELETE", "/v2/demo/app/manifests/" + m1.String(), nil, nil,
			"manifest " + m1.String() + " cannot be deleted: that would remove tag v1 of demo/app, which is immutable (tag rule " +
				itoa(rule.ID) + ": repos 'demo/**', tags '^v'): it cannot be moved or untagged"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := r.do(tc.method, tc.path, tc.body, tc.header...)
			resp.expect(t, http.StatusForbidden, "DENIED")
			if got := resp.errorMessage(); got != tc.message {
				t.Errorf("message %q, want %q", got, tc.message)
			}
			if !strings.Contains(string(resp.body), `"rule":`+itoa(rule.ID)) || !strings.Contains(string(resp.body), `"tag":"v1"`) {
				t.Errorf("detail does not name the rule and the tag: %s", resp.body)
			}
			if got := r.do("HEAD", "/v2/demo/app/manifests/v1", nil); got.Header.Get("Docker-Content-Digest") != m1.String() {
				t.Fatalf("v1 at %q after the refusal", got.Header.Get("Docker-Content-Digest"))
			}
		})
	}
	r.do("GET", "/v2/demo/app/manifests/v9", nil).expect(t, http.StatusNotFound, "MANIFEST_UNKNOWN")

	t.Run("web interface", func(t *testing.T) {
		b := r.browser()
		for _, path := range []string{"/ui/r/demo/app/-/untag/v1", "/ui/r/demo/app/-/delete/" + m1.String(),
			"/ui/r/demo/app/-/restore/v1?digest=" + m2.String()} {
			p := b.confirm(path, nil)
			if p.status != http.StatusForbidden || !strings.Contains(p.alert(), "tag v1 of demo/app") ||
				!strings.Contains(p.alert(), "is immutable (tag rule "+itoa(rule.ID)+": repos 'demo/**', tags '^v')") {
				t.Errorf("%s: %d, alert %q", path, p.status, p.alert())
			}
		}
		if got := r.do("HEAD", "/v2/demo/app/manifests/v1", nil); got.Header.Get("Docker-Content-Digest") != m1.String() {
			t.Fatalf("v1 at %q after the refusals", got.Header.Get("Docker-Content-Digest"))
		}
	})
}

// A protected tag moves, or goes, only for a principal with delete on the
// repository; one that may only push can create tags the rule covers, not
// move them; an API token without delete narrows its owner likewise.
func TestProtectedTagNeedsDelete(t *testing.T) {
	t.Parallel()
	r := newBasicRegistry(t)
	ctx := context.Background()
	hash, err := auth.HashPassword("carol-secret")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.db.UserCreate(ctx, "carol", hash, false); err != nil {
		t.Fatal(err)
	}
	if err := r.db.GrantSet(ctx, db.Grant{Subject: "carol", RepoGlob: "team-a/**", Actions: []string{"pull", "push"}}); err != nil {
		t.Fatal(err)
	}
	rule := addTagRule(t, r.db, "team-a/*", "^release", db.TagRuleProtected)
	alice, carol := basicHeader("alice", "alice-secret"), basicHeader("carol", "carol-secret")
	_, pushOnly := apiToken(t, r.db, "alice", "repository:team-a/**:pull,push")
	aliceToken := basicHeader("alice", pushOnly)

	push := func(who, tag string, body []byte) response {
		return r.do("PUT", "/v2/team-a/app/manifests/"+tag, body, who, "Content-Type: "+mtManifest)
	}
	blob := func(content string) []byte {
		r.do("POST", "/v2/team-a/app/blobs/uploads/?digest="+digest.FromString(content).String(), []byte(content), alice).expect(t, http.StatusCreated, "")
		return []byte(content)
	}
	c1, c2 := blob(`{"os":"linux","n":1}`), blob(`{"os":"linux","n":2}`)
	img1 := ociManifest(digest.FromBytes(c1), int64(len(c1)), digest.FromBytes(c1), int64(len(c1)))
	img2 := ociManifest(digest.FromBytes(c2), int64(len(c2)), digest.FromBytes(c2), int64(len(c2)))

	push(carol, "release", img1).expect(t, http.StatusCreated, "") // creating is no move
	for _, who := range []string{carol, aliceToken} {
		denied := push(who, "release", img2)
		denied.expect(t, http.StatusForbidden, "DENIED")
		want := "tag release of team-a/app is protected (tag rule " + itoa(rule.ID) +
			": repos 'team-a/*', tags '^release'): only a principal with delete on team-a/app may move or untag it"
		if got := denied.errorMessage(); got != want {
			t.Errorf("message %q, want %q", got, want)
		}
	}
	push(carol, "latest", img2).expect(t, http.StatusCreated, "")
	push(carol, "latest", img1).expect(t, http.StatusCreated, "") // not covered: moves
	push(alice, "release", img2).expect(t, http.StatusCreated, "")
	r.do("DELETE", "/v2/team-a/app/tags/release", nil, alice).expect(t, http.StatusAccepted, "")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
