package handlers_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/handlers"
	"github.com/berth-registry/berth/metrics"
)

// The tests in this file drive the API with authentication on, against
// users, grants and tokens written with the db functions the CLI uses.

func basicHeader(user, pass string) string {
	return "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func bearerHeader(token string) string { return "Authorization: Bearer " + token }

// authWorld creates alice (pull, push, delete on team-a/**), bob (pull on
// team-a/**), admin, and lets anonymous pull public/**.
func authWorld(t *testing.T, d *db.DB) {
	t.Helper()
	ctx := context.Background()
	for _, u := range []struct {
		name  string
		admin bool
	}{{"alice", false}, {"bob", false}, {"root", true}} {
		hash, err := auth.HashPassword(u.name + "-secret")
		if err != nil {
			t.Fatal(err)
		}
		if err := d.UserCreate(ctx, u.name, hash, u.admin); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []db.Grant{
		{Subject: "alice", RepoGlob: "team-a/**", Actions: []string{"delete", "pull", "push"}},
		{Subject: "bob", RepoGlob: "team-a/**", Actions: []string{"pull"}},
		{Subject: "anonymous", RepoGlob: "public/**", Actions: []string{"pull"}},
	} {
		if err := d.GrantSet(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
}

// apiToken creates an API token of user with scopes and returns its secret.
func apiToken(t *testing.T, d *db.DB, user string, scopes ...string) (id, secret string) {
	t.Helper()
	id, s := auth.NewAPIToken()
	if err := d.TokenCreate(context.Background(), db.APIToken{ID: id, User: user, SecretHash: auth.HashSecret(s), Scopes: scopes}); err != nil {
		t.Fatal(err)
	}
	return id, auth.FormatAPIToken(id, s)
}

func newBasicRegistry(t *testing.T) *registry {
	t.Helper()
	r := newRegistryWith(t, func(o *handlers.Options) { o.Auth = handlers.AuthConfig{Mode: handlers.AuthBasic} })
	authWorld(t, r.db)
	return r
}

func TestBasicAuth(t *testing.T) {
	t.Parallel()
	r := newBasicRegistry(t)
	alice, bob := basicHeader("alice", "alice-secret"), basicHeader("bob", "bob-secret")

	resp := r.do("GET", "/v2/", nil)
	resp.expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
	if got := resp.Header.Get("WWW-Authenticate"); got != `Basic realm="berth"` {
		t.Errorf("challenge %q", got)
	}
	r.do("GET", "/v2/", nil, alice).expect(t, http.StatusOK, "")
	r.do("GET", "/v2/", nil, basicHeader("alice", "wrong")).expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
	r.do("GET", "/v2/", nil, basicHeader("nobody", "wrong")).expect(t, http.StatusUnauthorized, "UNAUTHORIZED")

	// alice pushes; bob may pull but not push: 403, not a new password prompt.
	cfg := []byte(`{"os":"linux"}`)
	cd := digest.FromBytes(cfg)
	r.do("POST", "/v2/team-a/app/blobs/uploads/?digest="+cd.String(), cfg, alice).expect(t, http.StatusCreated, "")
	manifest := ociManifest(cd, int64(len(cfg)), cd, int64(len(cfg)))
	r.do("PUT", "/v2/team-a/app/manifests/v1", manifest, alice, "Content-Type: "+mtManifest).expect(t, http.StatusCreated, "")
	r.do("GET", "/v2/team-a/app/manifests/v1", nil, bob).expect(t, http.StatusOK, "")
	denied := r.do("PUT", "/v2/team-a/app/manifests/v2", manifest, bob, "Content-Type: "+mtManifest)
	denied.expect(t, http.StatusForbidden, "DENIED")
	if !strings.Contains(string(denied.body), `"Action":"push"`) {
		t.Errorf("the denial does not say what was needed: %s", denied.body)
	}
	r.do("DELETE", "/v2/team-a/app/tags/v1", nil, bob).expect(t, http.StatusForbidden, "DENIED")
	// Anonymous: the challenge, for the repository anonymous may not read.
	anon := r.do("GET", "/v2/team-a/app/manifests/v1", nil)
	anon.expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
	if anon.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("no challenge for anonymous")
	}
	// The audit trail names the user.
	if n := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log WHERE actor = 'alice' AND action = 'tag.create'`); n != 1 {
		t.Errorf("%d tag.create rows by alice", n)
	}

	// The catalog: an admin sees everything, alice what she may pull.
	r.do("POST", "/v2/team-b/other/blobs/uploads/?digest="+cd.String(), cfg, basicHeader("root", "root-secret")).expect(t, http.StatusCreated, "")
	var cat struct{ Repositories []string }
	json.Unmarshal(r.do("GET", "/v2/_catalog", nil, alice).body, &cat)
	if fmt.Sprint(cat.Repositories) != "[team-a/app]" {
		t.Errorf("alice's catalog: %v", cat.Repositories)
	}
	json.Unmarshal(r.do("GET", "/v2/_catalog", nil, basicHeader("root", "root-secret")).body, &cat)
	if fmt.Sprint(cat.Repositories) != "[team-a/app team-b/other]" {
		t.Errorf("the admin's catalog: %v", cat.Repositories)
	}
	// Empty Basic credentials, which skopeo and podman send when they have
	// none, are anonymous: the public pull works, the rest is challenged
	// as for no credentials, not refused as a failed login.
	root := basicHeader("root", "root-secret")
	r.do("POST", "/v2/public/app/blobs/uploads/?digest="+cd.String(), cfg, root).expect(t, http.StatusCreated, "")
	r.do("PUT", "/v2/public/app/manifests/v1", manifest, root, "Content-Type: "+mtManifest).expect(t, http.StatusCreated, "")
	empty := basicHeader("", "")
	r.do("GET", "/v2/public/app/manifests/v1", nil, empty).expect(t, http.StatusOK, "")
	for _, path := range []string{"/v2/team-a/app/manifests/v1", "/v2/"} {
		resp := r.do("GET", path, nil, empty)
		resp.expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
		if !strings.Contains(string(resp.body), "authentication required") || resp.Header.Get("WWW-Authenticate") != `Basic realm="berth"` {
			t.Errorf("GET %s with empty Basic credentials: %s, challenge %q", path, resp.body, resp.Header.Get("WWW-Authenticate"))
		}
	}
}

// An API token works as the Basic password, never grants more than its
// scopes or its owner, records its use in the audit trail, and once
// revoked fails at the very next request, in another instance too.
func TestAPITokens(t *testing.T) {
	t.Parallel()
	r := newBasicRegistry(t)
	d2, err := db.Open(t.Context(), r.dbURL, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d2.Close)
	other := httptest.NewServer(handlers.New(handlers.Options{DB: d2, Blobs: nil, Logger: discard(),
		Auth: handlers.AuthConfig{Mode: handlers.AuthBasic}}))
	t.Cleanup(other.Close)

	id, secret := apiToken(t, r.db, "alice")
	_, pullOnly := apiToken(t, r.db, "alice", "repository:team-a/**:pull")
	tok := basicHeader("alice", secret)
	cfg := []byte(`{"token":"push"}`)
	cd := digest.FromBytes(cfg)
	r.do("POST", "/v2/team-a/app/blobs/uploads/?digest="+cd.String(), cfg, tok).expect(t, http.StatusCreated, "")
	if n := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log WHERE actor = 'alice' AND token_id = $1`, id); n != 1 {
		t.Errorf("%d audit rows name the token", n)
	}
	r.do("HEAD", "/v2/team-a/app/blobs/"+cd.String(), nil, basicHeader("alice", pullOnly)).expect(t, http.StatusOK, "")
	r.do("POST", "/v2/team-a/app/blobs/uploads/", nil, basicHeader("alice", pullOnly)).expect(t, http.StatusForbidden, "DENIED")
	r.do("GET", "/v2/", nil, basicHeader("bob", secret)).expect(t, http.StatusUnauthorized, "UNAUTHORIZED") // another user's token

	// The tag history names the token a change was made with, and none
	// for a change made with the password.
	manifest := ociManifest(cd, int64(len(cfg)), cd, int64(len(cfg)))
	r.do("PUT", "/v2/team-a/app/manifests/v1", manifest, basicHeader("alice", "alice-secret"), "Content-Type: "+mtManifest).expect(t, http.StatusCreated, "")
	r.do("DELETE", "/v2/team-a/app/tags/v1", nil, tok).expect(t, http.StatusAccepted, "")
	hist := r.do("GET", "/v2/team-a/app/tags/v1/history", nil, tok)
	hist.expect(t, http.StatusOK, "")
	var history struct {
		History []map[string]any
	}
	if err := json.Unmarshal(hist.body, &history); err != nil || len(history.History) != 2 {
		t.Fatalf("history: %s", hist.body)
	}
	untag, create := history.History[0], history.History[1]
	if untag["action"] != "tag.untag" || untag["actor"] != "alice" || untag["tokenId"] != id {
		t.Errorf("the untag with the token: %v, want tokenId %s", untag, id)
	}
	if _, has := create["tokenId"]; has || create["actor"] != "alice" {
		t.Errorf("the push with the password: %v, want no tokenId", create)
	}

	if err := r.db.TokenRevoke(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", other.URL+"/v2/team-a/app/blobs/"+cd.String(), nil)
	req.SetBasicAuth("alice", secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a revoked token on another instance: %d", resp.StatusCode)
	}
}

// Upload sessions belong to who opened them; a mount from a repository
// the caller may not read falls back to an upload and says nothing about
// the blob.
func TestUploadOwnershipAndMounts(t *testing.T) {
	t.Parallel()
	r := newBasicRegistry(t)
	if err := r.db.GrantSet(t.Context(), db.Grant{Subject: "bob", RepoGlob: "bob/**", Actions: []string{"pull", "push", "delete"}}); err != nil {
		t.Fatal(err)
	}
	if err := r.db.GrantSet(t.Context(), db.Grant{Subject: "bob", RepoGlob: "team-a/**", Actions: []string{"delete", "pull", "push"}}); err != nil {
		t.Fatal(err)
	}
	alice, bob := basicHeader("alice", "alice-secret"), basicHeader("bob", "bob-secret")
	resp := r.do("POST", "/v2/team-a/app/blobs/uploads/", nil, alice)
	resp.expect(t, http.StatusAccepted, "")
	location := resp.Header.Get("Location")
	r.do("GET", location, nil, bob).expect(t, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")
	r.do("PATCH", location, []byte("x"), bob, "Content-Type: application/octet-stream").expect(t, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")
	r.do("DELETE", location, nil, bob).expect(t, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")
	r.do("GET", location, nil, alice).expect(t, http.StatusNoContent, "")

	// A secret blob in a repository bob cannot read.
	if err := r.db.GrantSet(t.Context(), db.Grant{Subject: "alice", RepoGlob: "secret/**", Actions: []string{"pull", "push"}}); err != nil {
		t.Fatal(err)
	}
	blob := []byte("secret layer")
	d := digest.FromBytes(blob)
	r.do("POST", "/v2/secret/app/blobs/uploads/?digest="+d.String(), blob, alice).expect(t, http.StatusCreated, "")
	mount := r.do("POST", "/v2/bob/app/blobs/uploads/?mount="+d.String()+"&from=secret/app", nil, bob)
	mount.expect(t, http.StatusAccepted, "") // an upload session, as for a blob that is not there
	r.do("HEAD", "/v2/bob/app/blobs/"+d.String(), nil, bob).expect(t, http.StatusNotFound, "")
}

// tokenRegistry is a registry in token mode, with ttl for its tokens and
// options changed further by configure.
func tokenRegistry(t *testing.T, ttl time.Duration, configure ...func(*handlers.Options)) (*registry, *auth.Issuer) {
	t.Helper()
	key, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	issuer := &auth.Issuer{Key: key, Name: "berth", Service: "berth", TTL: ttl}
	verifier, err := auth.NewVerifier(auth.VerifierConfig{Issuer: "berth", Service: "berth", Own: []auth.Key{key}})
	if err != nil {
		t.Fatal(err)
	}
	r := newRegistryWith(t, func(o *handlers.Options) {
		o.Auth = handlers.AuthConfig{Mode: handlers.AuthToken, Service: "berth", Issuer: issuer, Verifier: verifier, UploadGrace: time.Hour}
		for _, c := range configure {
			c(o)
		}
	})
	authWorld(t, r.db)
	return r, issuer
}

// getToken asks the token service for scopes with Basic credentials
// (header "" for anonymous).
func (r *registry) getToken(header string, scopes ...string) string {
	r.t.Helper()
	q := url.Values{"service": {"berth"}, "scope": scopes}
	var hdr []string
	if header != "" {
		hdr = append(hdr, header)
	}
	resp := r.do("GET", "/auth/token?"+q.Encode(), nil, hdr...)
	resp.expect(r.t, http.StatusOK, "")
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(resp.body, &body); err != nil || body.Token == "" || body.Token != body.AccessToken {
		r.t.Fatalf("token answer: %s", resp.body)
	}
	return body.Token
}

func TestTokenAuth(t *testing.T) {
	t.Parallel()
	r, _ := tokenRegistry(t, 15*time.Minute)
	realm := r.srv.URL + "/auth/token"

	resp := r.do("GET", "/v2/", nil)
	resp.expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
	if got, want := resp.Header.Get("WWW-Authenticate"), fmt.Sprintf(`Bearer realm=%q,service="berth"`, realm); got != want {
		t.Errorf("/v2/ challenge %q, want %q", got, want)
	}
	resp = r.do("GET", "/v2/team-a/app/tags/list", nil)
	if got, want := resp.Header.Get("WWW-Authenticate"), fmt.Sprintf(`Bearer realm=%q,service="berth",scope="repository:team-a/app:pull"`, realm); got != want {
		t.Errorf("challenge %q, want %q", got, want)
	}

	// alice gets what she asks for; bob asks for push and gets pull only.
	alice := r.getToken(basicHeader("alice", "alice-secret"), "repository:team-a/app:pull,push")
	cfg := []byte(`{"token":"mode"}`)
	cd := digest.FromBytes(cfg)
	r.do("POST", "/v2/team-a/app/blobs/uploads/?digest="+cd.String(), cfg, bearerHeader(alice)).expect(t, http.StatusCreated, "")
	bob := r.getToken(basicHeader("bob", "bob-secret"), "repository:team-a/app:pull,push")
	r.do("HEAD", "/v2/team-a/app/blobs/"+cd.String(), nil, bearerHeader(bob)).expect(t, http.StatusOK, "")
	resp = r.do("POST", "/v2/team-a/app/blobs/uploads/", nil, bearerHeader(bob))
	resp.expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
	if !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
		t.Errorf("insufficient scope challenge: %q", resp.Header.Get("WWW-Authenticate"))
	}
	// A wrong password at the token service; a garbled token at the API.
	r.do("GET", "/auth/token?service=berth&scope=repository:team-a/app:pull", nil, basicHeader("bob", "nope")).
		expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
	resp = r.do("GET", "/v2/team-a/app/tags/list", nil, bearerHeader(alice+"x"))
	if !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("invalid token challenge: %q", resp.Header.Get("WWW-Authenticate"))
	}
	// Anonymous tokens carry what anonymous may do.
	anon := r.getToken("", "repository:public/x:pull", "repository:team-a/app:pull")
	r.do("GET", "/v2/", nil, bearerHeader(anon)).expect(t, http.StatusOK, "")
	r.do("GET", "/v2/team-a/app/tags/list", nil, bearerHeader(anon)).expect(t, http.StatusUnauthorized, "UNAUTHORIZED")

	// A mount's challenge asks for its source too.
	resp = r.do("POST", "/v2/team-a/copy/blobs/uploads/?mount="+cd.String()+"&from=team-a/app", nil)
	if got := resp.Header.Get("WWW-Authenticate"); !strings.Contains(got, `scope="repository:team-a/copy:pull,push repository:team-a/app:pull"`) {
		t.Errorf("mount challenge %q", got)
	}

	// The catalog: a challenge with the catalog scope without a token;
	// with one, what its user may pull (alice is no admin).
	resp = r.do("GET", "/v2/_catalog", nil)
	if !strings.Contains(resp.Header.Get("WWW-Authenticate"), `scope="registry:catalog:*"`) {
		t.Errorf("catalog challenge %q", resp.Header.Get("WWW-Authenticate"))
	}
	cat := r.do("GET", "/v2/_catalog", nil, bearerHeader(r.getToken(basicHeader("alice", "alice-secret"), "registry:catalog:*")))
	if cat.StatusCode != http.StatusOK || !strings.Contains(string(cat.body), `"team-a/app"`) {
		t.Errorf("alice's catalog: %d %s", cat.StatusCode, cat.body)
	}
	// No refresh token for a login with an API token: it would outlive
	// the API token's scopes.
	_, scoped := apiToken(t, r.db, "alice", "repository:team-a/**:pull")
	q := url.Values{"service": {"berth"}, "scope": {"repository:team-a/app:pull"}, "offline_token": {"true"}}
	resp = r.do("GET", "/auth/token?"+q.Encode(), nil, basicHeader("alice", scoped))
	if resp.StatusCode != http.StatusOK || strings.Contains(string(resp.body), "refresh_token") {
		t.Errorf("offline login with an API token: %d %s", resp.StatusCode, resp.body)
	}

	// A grant revoked after the token was issued no longer holds.
	if err := r.db.GrantRevoke(t.Context(), "bob", "team-a/**"); err != nil {
		t.Fatal(err)
	}
	r.do("HEAD", "/v2/team-a/app/blobs/"+cd.String(), nil, bearerHeader(bob)).expect(t, http.StatusUnauthorized, "")

	// The OAuth2 form, with a refresh token that works once more.
	form := url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-secret"},
		"service": {"berth"}, "scope": {"repository:team-a/app:pull repository:team-a/other:push"}, "access_type": {"offline"}, "client_id": {"test"}}
	resp = r.do("POST", "/auth/token", []byte(form.Encode()), "Content-Type: application/x-www-form-urlencoded")
	resp.expect(t, http.StatusOK, "")
	var oauth struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
		Scope        string
	}
	json.Unmarshal(resp.body, &oauth)
	if oauth.AccessToken == "" || !strings.HasPrefix(oauth.RefreshToken, auth.TokenPrefix) ||
		oauth.Scope != "repository:team-a/app:pull repository:team-a/other:push" {
		t.Fatalf("OAuth2 answer: %s", resp.body)
	}
	form = url.Values{"grant_type": {"refresh_token"}, "refresh_token": {oauth.RefreshToken}, "service": {"berth"},
		"scope": {"repository:team-a/app:pull"}}
	r.do("POST", "/auth/token", []byte(form.Encode()), "Content-Type: application/x-www-form-urlencoded").expect(t, http.StatusOK, "")

	// The keys are published.
	resp = r.do("GET", "/auth/jwks", nil)
	var set struct{ Keys []map[string]any }
	if json.Unmarshal(resp.body, &set) != nil || len(set.Keys) != 1 || set.Keys[0]["kid"] == "" {
		t.Errorf("JWKS: %s", resp.body)
	}
}

// A chunked upload outlives its short token: its owner finishes it with
// the expired token; starting a new one needs a fresh token; and nobody
// else can use the session.
func TestUploadOutlivesItsToken(t *testing.T) {
	t.Parallel()
	r, issuer := tokenRegistry(t, time.Minute)
	if err := r.db.GrantSet(t.Context(), db.Grant{Subject: "bob", RepoGlob: "team-a/**", Actions: []string{"pull", "push"}}); err != nil {
		t.Fatal(err)
	}
	push := []auth.Scope{{Type: "repository", Name: "team-a/app", Actions: []string{"pull", "push"}}}
	token := func(user string, issued time.Time) string {
		tok, _, err := issuer.Issue(user, push, "", issued)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// Issued long enough ago to be expired beyond the verifier's leeway.
	longAgo := time.Now().Add(-time.Minute - 2*auth.DefaultLeeway)
	fresh, expired := token("alice", time.Now()), token("alice", longAgo)

	resp := r.do("POST", "/v2/team-a/app/blobs/uploads/", nil, bearerHeader(fresh))
	resp.expect(t, http.StatusAccepted, "")
	location := resp.Header.Get("Location")
	r.do("PATCH", location, []byte("first "), bearerHeader(fresh), "Content-Type: application/octet-stream").expect(t, http.StatusAccepted, "")
	r.do("PATCH", location, []byte("x"), bearerHeader(token("bob", longAgo)), "Content-Type: application/octet-stream").
		expect(t, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")
	r.do("PATCH", location, []byte("second"), bearerHeader(expired), "Content-Type: application/octet-stream").expect(t, http.StatusAccepted, "")
	whole := digest.FromBytes([]byte("first second"))
	r.do("PUT", location+"?digest="+whole.String(), nil, bearerHeader(expired)).expect(t, http.StatusCreated, "")
	r.do("POST", "/v2/team-a/app/blobs/uploads/", nil, bearerHeader(expired)).expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
	r.do("GET", "/v2/team-a/app/tags/list", nil, bearerHeader(expired)).expect(t, http.StatusUnauthorized, "UNAUTHORIZED")

	// Expired beyond the grace (an hour here): the session is not
	// continued, not even by its owner.
	open := func(tok string) string {
		resp := r.do("POST", "/v2/team-a/app/blobs/uploads/", nil, bearerHeader(tok))
		resp.expect(t, http.StatusAccepted, "")
		return resp.Header.Get("Location")
	}
	location = open(token("alice", time.Now()))
	stale := token("alice", time.Now().Add(-time.Minute-time.Hour-2*auth.DefaultLeeway))
	for _, req := range []struct {
		method, path string
		body         []byte
	}{{"PATCH", location, []byte("late")}, {"PUT", location + "?digest=" + whole.String(), nil}} {
		resp := r.do(req.method, req.path, req.body, bearerHeader(stale), "Content-Type: application/octet-stream")
		resp.expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
		if !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
			t.Errorf("%s with a token expired beyond the grace: challenge %q", req.method, resp.Header.Get("WWW-Authenticate"))
		}
	}

	// The push grant withdrawn mid-upload: the next PATCH and the
	// finishing PUT are refused, with a fresh token and with an expired one.
	bobFresh, bobExpired := token("bob", time.Now()), token("bob", longAgo)
	location = open(bobFresh)
	r.do("PATCH", location, []byte("first "), bearerHeader(bobFresh), "Content-Type: application/octet-stream").expect(t, http.StatusAccepted, "")
	if err := r.db.GrantSet(t.Context(), db.Grant{Subject: "bob", RepoGlob: "team-a/**", Actions: []string{"pull"}}); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{bobFresh, bobExpired} {
		for _, req := range []struct {
			method, path string
			body         []byte
		}{{"PATCH", location, []byte("second")}, {"PUT", location + "?digest=" + whole.String(), []byte("second")}} {
			resp := r.do(req.method, req.path, req.body, bearerHeader(tok), "Content-Type: application/octet-stream")
			resp.expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
			if !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
				t.Errorf("%s after the push grant was withdrawn: challenge %q", req.method, resp.Header.Get("WWW-Authenticate"))
			}
		}
	}
	r.do("HEAD", "/v2/team-a/app/blobs/"+whole.String(), nil, bearerHeader(bobFresh)).expect(t, http.StatusOK, "") // alice's, from above
}

// TestSlowUploadOutlivesItsToken pushes a layer in chunks with a token
// from the token service that lives a second, verified without leeway:
// the last chunk and the finishing PUT come once the token has expired
// (the registry refuses it for a pull by then), and the layer lands.
func TestSlowUploadOutlivesItsToken(t *testing.T) {
	t.Parallel()
	r, _ := tokenRegistry(t, time.Second, func(o *handlers.Options) {
		verifier, err := auth.NewVerifier(auth.VerifierConfig{Issuer: "berth", Service: "berth", Own: []auth.Key{o.Auth.Issuer.Key}, Leeway: -1})
		if err != nil {
			t.Fatal(err)
		}
		o.Auth.Verifier = verifier
	})
	alice := basicHeader("alice", "alice-secret")
	const scope = "repository:team-a/slow:pull,push"
	// Open the session with a token that still holds: on a slow machine a
	// token of one second may have expired before its first use, so ask
	// again until one opens the session.
	var tok, location string
	for attempt := 0; location == "" && attempt < 20; attempt++ {
		tok = r.getToken(alice, scope)
		resp := r.do("POST", "/v2/team-a/slow/blobs/uploads/", nil, bearerHeader(tok))
		if resp.StatusCode == http.StatusAccepted {
			location = resp.Header.Get("Location")
		}
	}
	if location == "" {
		t.Fatal("no token of one second lived long enough to open an upload session")
	}
	chunk := func(body string) {
		r.do("PATCH", location, []byte(body), bearerHeader(tok), "Content-Type: application/octet-stream").expect(t, http.StatusAccepted, "")
	}
	chunk("the first chunk, ")

	var claims jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(tok, &claims); err != nil || claims.ExpiresAt == nil {
		t.Fatalf("token claims: %v", err)
	}
	time.Sleep(time.Until(claims.ExpiresAt.Time))
	// The token has expired once the registry refuses it for a pull.
	deadline := time.Now().Add(time.Minute)
	for r.do("GET", "/v2/team-a/slow/tags/list", nil, bearerHeader(tok)).StatusCode != http.StatusUnauthorized {
		if time.Now().After(deadline) {
			t.Fatal("the token of one second is still accepted for a pull a minute after its exp")
		}
		time.Sleep(50 * time.Millisecond)
	}

	chunk("the second, after the token expired")
	whole := digest.FromString("the first chunk, the second, after the token expired")
	r.do("PUT", location+"?digest="+whole.String(), nil, bearerHeader(tok)).expect(t, http.StatusCreated, "")
	fresh := r.getToken(alice, scope)
	resp := r.do("GET", "/v2/team-a/slow/blobs/"+whole.String(), nil, bearerHeader(fresh))
	resp.expect(t, http.StatusOK, "")
	if string(resp.body) != "the first chunk, the second, after the token expired" {
		t.Errorf("the layer: %q", resp.body)
	}
}

// A token of an external token server (docker_auth, GitLab, Harbor style:
// RS256, a key in a JWKS file, the access claim) is taken at its word.
func TestExternalIssuerToken(t *testing.T) {
	t.Parallel()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	jwks := fmt.Sprintf(`{"keys":[{"kty":"RSA","kid":"ext-1","alg":"RS256","use":"sig","n":%q,"e":"AQAB"}]}`,
		base64.RawURLEncoding.EncodeToString(rsaKey.N.Bytes()))
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, []byte(jwks), 0o644); err != nil {
		t.Fatal(err)
	}
	verifier, err := auth.NewVerifier(auth.VerifierConfig{Issuer: "gitlab", Service: "container_registry", JWKSFile: file})
	if err != nil {
		t.Fatal(err)
	}
	r := newRegistryWith(t, func(o *handlers.Options) {
		o.Auth = handlers.AuthConfig{Mode: handlers.AuthToken, Service: "container_registry", Realm: "https://gitlab.example/jwt/auth",
			Verifier: verifier}
	})
	sign := func(aud string, actions ...string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
			"iss": "gitlab", "sub": "carol", "aud": aud, "exp": time.Now().Add(time.Minute).Unix(),
			"nbf": time.Now().Unix(), "iat": time.Now().Unix(), "jti": "x",
			"access": []map[string]any{{"type": "repository", "name": "group/app", "actions": actions}},
		})
		tok.Header["kid"] = "ext-1"
		s, err := tok.SignedString(rsaKey)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	resp := r.do("GET", "/v2/group/app/tags/list", nil)
	if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), `Bearer realm="https://gitlab.example/jwt/auth",service="container_registry"`) {
		t.Errorf("challenge %q", resp.Header.Get("WWW-Authenticate"))
	}
	r.do("POST", "/v2/group/app/blobs/uploads/", nil, bearerHeader(sign("container_registry", "pull", "push"))).expect(t, http.StatusAccepted, "")
	r.do("POST", "/v2/group/app/blobs/uploads/", nil, bearerHeader(sign("container_registry", "pull"))).expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
	r.do("POST", "/v2/group/app/blobs/uploads/", nil, bearerHeader(sign("another", "pull", "push"))).expect(t, http.StatusUnauthorized, "UNAUTHORIZED")
	if n := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM audit_log WHERE actor = 'carol' AND action = 'upload.start'`); n != 1 {
		t.Errorf("%d upload.start rows name the external subject", n)
	}
}

// Failed logins slow down the address they come from, but not the
// credentials already known good: a guesser behind the same address (a
// proxy, a NAT) cannot slow down every user.
func TestThrottleSparesKnownCredentials(t *testing.T) {
	t.Parallel()
	r := newRegistryWith(t, func(o *handlers.Options) {
		// An hour: a request that waits for it shows as a client timeout.
		o.Auth = handlers.AuthConfig{Mode: handlers.AuthBasic, Throttle: auth.NewThrottle(time.Hour, time.Hour)}
	})
	authWorld(t, r.db)
	_, token := apiToken(t, r.db, "alice")
	r.do("GET", "/v2/", nil, basicHeader("alice", "alice-secret")).expect(t, http.StatusOK, "")
	r.do("GET", "/v2/", nil, basicHeader("mallory", "guess")).expect(t, http.StatusUnauthorized, "UNAUTHORIZED")

	client := &http.Client{Timeout: 30 * time.Second}
	for _, pass := range []string{"alice-secret", token} {
		req, _ := http.NewRequest("GET", r.srv.URL+"/v2/", nil)
		req.SetBasicAuth("alice", pass)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("alice's known credentials were held back after mallory's failure: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("alice after mallory's failure: %d", resp.StatusCode)
		}
	}
	// Another guess from the address is held back.
	req, _ := http.NewRequest("GET", r.srv.URL+"/v2/", nil)
	req.SetBasicAuth("mallory", "guess2")
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if resp, err := http.DefaultClient.Do(req.WithContext(ctx)); err == nil {
		resp.Body.Close()
		t.Errorf("a second guess was answered at once: %d", resp.StatusCode)
	}
}

// routeUsers are users holding each combination of actions the route
// table below needs or lacks, on route/**.
var routeUsers = map[string][]string{
	"puller":      {"pull"},
	"pullpusher":  {"pull", "push"},
	"pulldeleter": {"pull", "delete"},
	"pushdeleter": {"push", "delete"},
	"deleter":     {"delete"},
}

// routeCase is one API route: what it needs, who lacks it, who has it and
// what the one who has it gets once past the authorization check.
type routeCase struct {
	method, path string
	body         []byte
	header       []string
	need         string   // the scope's actions, as the challenge names them
	lacking      []string // users without one of the actions needed
	having       string   // a user with exactly the actions needed
	status       int      // what having gets
	code         string
}

// routeCases lists every repository route of the API on route/app, where
// root pushed the manifest m (tag v1) with the blob b.
func routeCases(m, b digest.Digest, manifest []byte) []routeCase {
	const repo = "/v2/route/app"
	absent := digest.FromString("absent").String()
	upload := repo + "/blobs/uploads/0123456789abcdef0123456789abcdef"
	pull := func(method, path string, status int, code string) routeCase {
		return routeCase{method: method, path: path, need: "pull", lacking: []string{"pushdeleter", "deleter"},
			having: "puller", status: status, code: code}
	}
	push := func(method, path string, body []byte, status int, code string, header ...string) routeCase {
		return routeCase{method: method, path: path, body: body, header: header, need: "pull,push",
			lacking: []string{"puller", "pulldeleter", "pushdeleter"}, having: "pullpusher", status: status, code: code}
	}
	del := func(path string, status int, code string) routeCase {
		return routeCase{method: "DELETE", path: path, need: "delete", lacking: []string{"puller", "pullpusher"},
			having: "deleter", status: status, code: code}
	}
	return []routeCase{
		pull("GET", repo+"/manifests/v1", http.StatusOK, ""),
		pull("HEAD", repo+"/manifests/v1", http.StatusOK, ""),
		push("PUT", repo+"/manifests/v2", manifest, http.StatusCreated, "", "Content-Type: "+mtManifest),
		del(repo+"/manifests/"+absent, http.StatusNotFound, "MANIFEST_UNKNOWN"),
		del(repo+"/manifests/absent", http.StatusNotFound, "MANIFEST_UNKNOWN"), // untag
		del(repo+"/tags/absent", http.StatusNotFound, "MANIFEST_UNKNOWN"),      // untag, Berth's route
		pull("GET", repo+"/tags/v1/history", http.StatusOK, ""),
		pull("GET", repo+"/tags/list", http.StatusOK, ""),
		pull("GET", repo+"/tags/_list", http.StatusOK, ""),
		pull("GET", repo+"/manifests/_list", http.StatusOK, ""),
		pull("GET", repo+"/referrers/"+m.String(), http.StatusOK, ""),
		push("PUT", repo+"/tags/v3", []byte(`{"digest":"`+m.String()+`"}`), http.StatusCreated, ""), // restore
		pull("GET", repo+"/blobs/"+b.String(), http.StatusOK, ""),
		pull("HEAD", repo+"/blobs/"+b.String(), http.StatusOK, ""),
		del(repo+"/blobs/"+absent, http.StatusNotFound, "BLOB_UNKNOWN"),
		push("POST", repo+"/blobs/uploads/", nil, http.StatusAccepted, ""),
		push("PATCH", upload, []byte("x"), http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "Content-Type: application/octet-stream"),
		push("PUT", upload+"?digest="+absent, nil, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN"),
		del(upload, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN"),
		pull("GET", upload, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN"),
		pull("GET", "/berth/v1/events?repository=route/app", http.StatusOK, ""),
	}
}

// bodyCode is the error code an answer to method carries: none for HEAD,
// which has no body.
func bodyCode(method, code string) string {
	if method == http.MethodHead {
		return ""
	}
	return code
}

// TestEveryRouteNeedsItsScope walks every route of the API in both modes:
// anonymous gets the challenge, a user lacking one of the actions the
// route needs is refused (403 DENIED with Basic, 401 insufficient_scope
// with a token), and a user with exactly those actions gets past the
// check to the route's own answer.
func TestEveryRouteNeedsItsScope(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{handlers.AuthBasic, handlers.AuthToken} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			var r *registry
			if mode == handlers.AuthBasic {
				r = newBasicRegistry(t)
			} else {
				r, _ = tokenRegistry(t, 15*time.Minute)
			}
			for user, actions := range routeUsers {
				// The cheapest bcrypt cost: the test is about the grants.
				hash, err := bcrypt.GenerateFromPassword([]byte(user+"-secret"), bcrypt.MinCost)
				if err != nil {
					t.Fatal(err)
				}
				if err := r.db.UserCreate(t.Context(), user, string(hash), false); err != nil {
					t.Fatal(err)
				}
				if err := r.db.GrantSet(t.Context(), db.Grant{Subject: user, RepoGlob: "route/**", Actions: actions}); err != nil {
					t.Fatal(err)
				}
			}
			// credentials are what user sends: Basic credentials, or a
			// token asked for with everything (and cut down to what the
			// user has).
			credentials := func(user, scope string) string {
				basic := basicHeader(user, user+"-secret")
				if mode == handlers.AuthBasic {
					return basic
				}
				return bearerHeader(r.getToken(basic, scope))
			}
			root := credentials("root", "repository:route/app:pull,push,delete")
			cfg := []byte(`{"route":"table"}`)
			b := digest.FromBytes(cfg)
			r.do("POST", "/v2/route/app/blobs/uploads/?digest="+b.String(), cfg, root).expect(t, http.StatusCreated, "")
			manifest := ociManifest(b, int64(len(cfg)), b, int64(len(cfg)))
			r.do("PUT", "/v2/route/app/manifests/v1", manifest, root, "Content-Type: "+mtManifest).expect(t, http.StatusCreated, "")
			m := digest.FromBytes(manifest)

			everything := "repository:route/app:pull,push,delete"
			for _, c := range routeCases(m, b, manifest) {
				what := c.method + " " + c.path
				need := "repository:route/app:" + c.need

				anon := r.do(c.method, c.path, c.body, c.header...)
				challenge := anon.Header.Get("WWW-Authenticate")
				wantChallenge := `Basic realm="berth"`
				if mode == handlers.AuthToken {
					wantChallenge = fmt.Sprintf(`Bearer realm=%q,service="berth",scope=%q`, r.srv.URL+"/auth/token", need)
				}
				if anon.StatusCode != http.StatusUnauthorized || challenge != wantChallenge {
					t.Errorf("%s anonymous: %d, challenge %q, want 401 and %q", what, anon.StatusCode, challenge, wantChallenge)
				}
				if mode == handlers.AuthToken {
					// An anonymous token carries nothing here: 401 as well.
					tok := bearerHeader(r.getToken("", everything))
					resp := r.do(c.method, c.path, c.body, append([]string{tok}, c.header...)...)
					if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
						t.Errorf("%s with an anonymous token: %d, challenge %q", what, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
					}
				}

				for _, user := range c.lacking {
					resp := r.do(c.method, c.path, c.body, append([]string{credentials(user, everything)}, c.header...)...)
					if mode == handlers.AuthBasic {
						if resp.StatusCode != http.StatusForbidden || resp.errorCode() != bodyCode(c.method, "DENIED") || resp.Header.Get("WWW-Authenticate") != "" {
							t.Errorf("%s by %s: %d %s, want 403 DENIED without a challenge", what, user, resp.StatusCode, resp.body)
						}
						continue
					}
					want := fmt.Sprintf(`Bearer realm=%q,service="berth",scope=%q,error="insufficient_scope"`, r.srv.URL+"/auth/token", need)
					if resp.StatusCode != http.StatusUnauthorized || resp.errorCode() != bodyCode(c.method, "UNAUTHORIZED") || resp.Header.Get("WWW-Authenticate") != want {
						t.Errorf("%s by %s: %d %s, challenge %q, want 401 and %q", what, user, resp.StatusCode, resp.body,
							resp.Header.Get("WWW-Authenticate"), want)
					}
				}

				resp := r.do(c.method, c.path, c.body, append([]string{credentials(c.having, everything)}, c.header...)...)
				if resp.StatusCode != c.status || c.code != "" && resp.errorCode() != c.code {
					t.Errorf("%s by %s: %d %s, want %d %s", what, c.having, resp.StatusCode, resp.body, c.status, c.code)
				}
			}

			// The catalog: anonymous is challenged for the catalog scope; a
			// user who may not pull route/app does not see it; an admin
			// sees everything.
			anon := r.do("GET", "/v2/_catalog", nil)
			wantChallenge := `Basic realm="berth"`
			if mode == handlers.AuthToken {
				wantChallenge = fmt.Sprintf(`Bearer realm=%q,service="berth",scope="registry:catalog:*"`, r.srv.URL+"/auth/token")
			}
			if anon.StatusCode != http.StatusUnauthorized || anon.Header.Get("WWW-Authenticate") != wantChallenge {
				t.Errorf("catalog, anonymous: %d, challenge %q", anon.StatusCode, anon.Header.Get("WWW-Authenticate"))
			}
			for user, want := range map[string]string{"deleter": "[]", "puller": "[route/app]", "root": "[route/app]"} {
				resp := r.do("GET", "/v2/_catalog", nil, credentials(user, "registry:catalog:*"))
				var cat struct{ Repositories []string }
				if resp.StatusCode != http.StatusOK || json.Unmarshal(resp.body, &cat) != nil || fmt.Sprint(cat.Repositories) != want {
					t.Errorf("catalog of %s: %d %s, want %s", user, resp.StatusCode, resp.body, want)
				}
			}
		})
	}
}

// TestMetricsNeedAnAdmin: with authentication on, /metrics on the API
// port names namespaces and quota prefixes, so only an admin may scrape
// it: with Basic credentials (a password or an unscoped API token, what
// Prometheus's basic_auth sends) in both modes, or a Bearer token in token
// mode. The admin listener, the private port, asks for nothing; nor does
// the API with authentication off.
func TestMetricsNeedAnAdmin(t *testing.T) {
	t.Parallel()
	withUsage := func(o *handlers.Options) {
		o.Registry = prometheus.NewRegistry()
		o.Registry.MustRegister(metrics.Usage(o.DB, discard()))
	}
	secretQuota := func(r *registry) {
		if _, err := r.db.QuotaSet(t.Context(), "secret-team", 1<<30, 80); err != nil {
			t.Fatal(err)
		}
	}
	scrape := func(r *registry, what string, want int, code string, header ...string) response {
		t.Helper()
		resp := r.do("GET", "/metrics", nil, header...)
		if resp.StatusCode != want || code != "" && resp.errorCode() != code {
			t.Errorf("%s: %d %.200s, want %d %s", what, resp.StatusCode, resp.body, want, code)
		}
		leaks := strings.Contains(string(resp.body), "secret-team")
		if leaks != (want == http.StatusOK) {
			t.Errorf("%s: the quota's prefix shown: %v", what, leaks)
		}
		return resp
	}

	t.Run("basic", func(t *testing.T) {
		t.Parallel()
		r := newRegistryWith(t, func(o *handlers.Options) {
			withUsage(o)
			o.Auth = handlers.AuthConfig{Mode: handlers.AuthBasic}
		})
		authWorld(t, r.db)
		secretQuota(r)
		_, rootToken := apiToken(t, r.db, "root")
		_, rootScoped := apiToken(t, r.db, "root", "repository:team-a/**:pull")
		resp := scrape(r, "anonymous", http.StatusUnauthorized, "UNAUTHORIZED")
		if got := resp.Header.Get("WWW-Authenticate"); got != `Basic realm="berth"` {
			t.Errorf("challenge %q", got)
		}
		scrape(r, "a wrong password", http.StatusUnauthorized, "UNAUTHORIZED", basicHeader("root", "wrong"))
		scrape(r, "alice, no admin", http.StatusForbidden, "DENIED", basicHeader("alice", "alice-secret"))
		scrape(r, "root's API token with scopes", http.StatusForbidden, "DENIED", basicHeader("root", rootScoped))
		scrape(r, "root", http.StatusOK, "", basicHeader("root", "root-secret"))
		scrape(r, "root's API token", http.StatusOK, "", basicHeader("root", rootToken))
		_, rootCatalog := apiToken(t, r.db, "root", "registry:catalog:*")
		scrape(r, "root's API token scoped to the catalog", http.StatusOK, "", basicHeader("root", rootCatalog))

		// The database goes away (its pool closed: every statement is
		// ErrUnavailable): the scraper that passed a moment ago is still
		// served, without the usage series the database gives; credentials
		// not seen before cannot be checked and get 503.
		r.db.Close()
		resp = r.do("GET", "/metrics", nil, basicHeader("root", "root-secret"))
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(resp.body), "berth_http_requests_total") {
			t.Errorf("root's scrape in an outage: %d %.300s", resp.StatusCode, resp.body)
		}
		for what, h := range map[string]string{"root, a wrong password": basicHeader("root", "wrong"), "alice": basicHeader("alice", "alice-secret"), "anonymous": ""} {
			var header []string
			if h != "" {
				header = append(header, h)
			}
			if resp := r.do("GET", "/metrics", nil, header...); resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s in an outage: %d %.300s, want 503 (or 401 with no credentials)", what, resp.StatusCode, resp.body)
			}
		}
	})

	t.Run("token", func(t *testing.T) {
		t.Parallel()
		r, issuer := tokenRegistry(t, 15*time.Minute, withUsage)
		secretQuota(r)
		_, rootToken := apiToken(t, r.db, "root")
		resp := scrape(r, "anonymous", http.StatusUnauthorized, "UNAUTHORIZED")
		if got, want := resp.Header.Get("WWW-Authenticate"), fmt.Sprintf(`Bearer realm=%q,service="berth"`, r.srv.URL+"/auth/token"); got != want {
			t.Errorf("challenge %q, want %q", got, want)
		}
		bearer := func(user string) string {
			tok, _, err := issuer.Issue(user, nil, "", time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return bearerHeader(tok)
		}
		scrape(r, "an anonymous token", http.StatusUnauthorized, "UNAUTHORIZED", bearer(""))
		scrape(r, "alice's token", http.StatusForbidden, "DENIED", bearer("alice"))
		scrape(r, "alice's password", http.StatusForbidden, "DENIED", basicHeader("alice", "alice-secret"))
		scrape(r, "root's token", http.StatusOK, "", bearer("root"))
		scrape(r, "root's password", http.StatusOK, "", basicHeader("root", "root-secret"))
		scrape(r, "root's API token", http.StatusOK, "", basicHeader("root", rootToken))
	})

	t.Run("none", func(t *testing.T) {
		t.Parallel()
		r := newRegistryWith(t, withUsage)
		secretQuota(r)
		scrape(r, "anonymous", http.StatusOK, "")
	})

	t.Run("admin listener", func(t *testing.T) {
		t.Parallel()
		d, err := db.Open(t.Context(), dbtest.NewURL(t), db.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		opts := handlers.Options{DB: d, Logger: discard(), Auth: handlers.AuthConfig{Mode: handlers.AuthBasic}, AdminSeparate: true}
		withUsage(&opts)
		if _, err := d.QuotaSet(t.Context(), "secret-team", 1<<30, 80); err != nil {
			t.Fatal(err)
		}
		h := handlers.New(opts)
		t.Cleanup(func() { h.Close(context.Background()) })
		api, admin := httptest.NewServer(h), httptest.NewServer(h.Admin())
		t.Cleanup(api.Close)
		t.Cleanup(admin.Close)
		for _, c := range []struct {
			url  string
			want int
		}{{api.URL, http.StatusNotFound}, {admin.URL, http.StatusOK}} {
			resp, err := http.Get(c.url + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want || strings.Contains(string(body), "secret-team") != (c.want == http.StatusOK) {
				t.Errorf("%s/metrics: %d %.200s, want %d", c.url, resp.StatusCode, body, c.want)
			}
		}
	})
}
