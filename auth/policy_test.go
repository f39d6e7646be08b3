package auth

import (
	"reflect"
	"testing"
)

func TestSubjects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		p    Principal
		want []string
	}{
		{Principal{}, []string{"anonymous"}},
		{Principal{Groups: []string{"devs"}}, []string{"anonymous"}},
		{Principal{Name: "alice"}, []string{"alice", "authenticated", "anonymous"}},
		{Principal{Name: "alice", Groups: []string{"devs", "ops"}}, []string{"alice", "group:devs", "group:ops", "authenticated", "anonymous"}},
	}
	for _, tt := range tests {
		if got := tt.p.Subjects(); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%+v.Subjects() = %q, want %q", tt.p, got, tt.want)
		}
		if tt.p.Anonymous() != (tt.p.Name == "") {
			t.Errorf("%+v.Anonymous() = %v", tt.p, tt.p.Anonymous())
		}
	}
}

// policyGrants is the grant table TestAllowed and TestAuthorize share.
var policyGrants = []Grant{
	{"anonymous", "public/**", []string{"pull"}},
	{"authenticated", "**", []string{"pull"}},
	{"authenticated", "private/**", nil}, // the longer glob wins: signed-in users lose pull on private/…
	{"group:devs", "team-a/**", []string{"pull", "push"}},
	{"group:devs", "team-a/frozen/**", []string{"pull"}},
	{"group:devs", "team-a/frozen/*", []string{"pull"}}, // shorter than team-a/frozen/**
	{"group:ops", "team-a/**", []string{"delete"}},
	{"alice", "team-a/frozen/**", []string{"push"}},
	{"alice", "private/alice/*", []string{"pull", "push", "delete"}},
	// Same length, both match: they unite.
	{"bob", "x/*/z", []string{"pull"}},
	{"bob", "x/y/*", []string{"push"}},
	// Unknown actions in a grant are never returned.
	{"bob", "odd", []string{"pull", "mount"}},
	{"carol", "team-a/**", []string{"pull"}},
	{"carol", "team-a/app", []string{"push"}}, // longest: push only, not pull
}

func TestAllowed(t *testing.T) {
	t.Parallel()
	var (
		anon  = Principal{}
		alice = Principal{Name: "alice", Groups: []string{"devs"}}
		bob   = Principal{Name: "bob"}
		carol = Principal{Name: "carol"}
		dave  = Principal{Name: "dave", Groups: []string{"devs", "ops"}}
		admin = Principal{Name: "root", Admin: true}
	)
	tests := []struct {
		name string
		p    Principal
		repo string
		want []string
	}{
		{"anonymous may pull public", anon, "public/busybox", []string{"pull"}},
		{"anonymous nothing elsewhere", anon, "team-a/app", nil},
		{"authenticated pull everywhere", bob, "other/thing", []string{"pull"}},
		{"longer glob takes pull away from authenticated", bob, "private/x", nil},
		{"anonymous grant applies to users too", bob, "public/busybox", []string{"pull"}},
		{"group grant", alice, "team-a/app", []string{"pull", "push"}},
		{"group's longest glob wins within the group", Principal{Name: "eve", Groups: []string{"devs"}}, "team-a/frozen/app", []string{"pull"}},
		{"user grant unites with group grant", alice, "team-a/frozen/app", []string{"pull", "push"}},
		{"two groups unite", dave, "team-a/app", []string{"delete", "pull", "push"}},
		{"user's own grant beats authenticated's empty longer glob", alice, "private/alice/notes", []string{"delete", "pull", "push"}},
		{"but not the next level down", alice, "private/alice/a/b", nil},
		{"same-length globs unite", bob, "x/y/z", []string{"pull", "push"}},
		{"same-length, one matches", bob, "x/q/z", []string{"pull"}},
		{"unknown actions dropped", bob, "odd", []string{"pull"}},
		{"longest wins even when it grants less", carol, "team-a/app", []string{"pull", "push"}}, // pull from authenticated's "**"
		{"longest wins, other repo", carol, "team-a/lib", []string{"pull"}},
		{"admin everything", admin, "private/x", []string{"delete", "pull", "push"}},
		{"no grants at all", Principal{Name: "zed"}, "private/y", nil},
		{"name with host:port matched only by **", bob, "localhost:5000/a", []string{"pull"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Allowed(tt.p, policyGrants, tt.repo); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Allowed(%s, %q) = %q, want %q", tt.p.Name, tt.repo, got, tt.want)
			}
		})
	}
}

func TestAllowedLongestWinsPerSubject(t *testing.T) {
	t.Parallel()
	// carol: "team-a/app" (push) is longer than "team-a/**" (pull), so her
	// own grants give push only; pull comes back from authenticated's "**".
	p := Principal{Name: "carol"}
	if got := Allowed(p, policyGrants[len(policyGrants)-2:], "team-a/app"); !reflect.DeepEqual(got, []string{"push"}) {
		t.Fatalf("carol's own grants: %q, want [push]", got)
	}
}

func TestAllowedWithToken(t *testing.T) {
	t.Parallel()
	alice := Principal{Name: "alice", Groups: []string{"devs"}}
	scoped := func(p Principal, scopes ...string) Principal {
		p.TokenScopes = []Scope{}
		for _, s := range scopes {
			sc, err := ParseGrantScope(s)
			if err != nil {
				t.Fatal(err)
			}
			p.TokenScopes = append(p.TokenScopes, sc)
		}
		return p
	}
	admin := Principal{Name: "root", Admin: true}
	tests := []struct {
		name string
		p    Principal
		repo string
		want []string
	}{
		{"unrestricted token", alice, "team-a/app", []string{"pull", "push"}},
		{"empty scopes allow nothing", scoped(alice), "public/x", nil},
		{"token narrows", scoped(alice, "repository:team-a/**:pull"), "team-a/app", []string{"pull"}},
		{"token cannot widen", scoped(alice, "repository:team-a/**:*"), "team-a/app", []string{"pull", "push"}},
		{"token scopes unite (no longest rule)", scoped(alice, "repository:team-a/**:pull", "repository:team-a/app:push"), "team-a/app", []string{"pull", "push"}},
		{"token glob does not match", scoped(alice, "repository:team-a/*:pull"), "team-a/x/y", nil},
		{"admin token narrows", scoped(admin, "repository:ci/**:push"), "ci/app", []string{"push"}},
		{"admin token elsewhere", scoped(admin, "repository:ci/**:push"), "prod/app", nil},
		{"catalog scope is not a repository scope", scoped(admin, "registry:catalog:*"), "catalog", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Allowed(tt.p, policyGrants, tt.repo); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Allowed = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAuthorize(t *testing.T) {
	t.Parallel()
	must := func(values ...string) []Scope {
		s, err := ParseScopes(values)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	alice := Principal{Name: "alice", Groups: []string{"devs"}}
	admin := Principal{Name: "root", Admin: true}
	tests := []struct {
		name      string
		p         Principal
		requested []Scope
		want      []Scope
	}{
		{"nothing asked", alice, nil, nil},
		{"granted in full", alice, must("repository:team-a/app:pull,push"), must("repository:team-a/app:pull,push")},
		{"down-scoped, not refused", alice, must("repository:team-a/frozen/app:pull,push,delete"), must("repository:team-a/frozen/app:pull,push")},
		{"nothing left: dropped", Principal{}, must("repository:team-a/app:push"), nil},
		{"anonymous pull", Principal{}, must("repository:public/x:pull,push"), must("repository:public/x:pull")},
		{"several, in order", alice, must("repository:public/x:push,pull repository:team-a/app:*"),
			must("repository:public/x:pull", "repository:team-a/app:pull,push")},
		{"unknown type dropped", alice, must("plugin:team-a/app:pull"), nil},
		{"unknown action dropped", alice, must("repository:team-a/app:pull,mount"), must("repository:team-a/app:pull")},
		{"catalog refused to users", alice, must("registry:catalog:*"), nil},
		{"catalog for admins", admin, must("registry:catalog:*"), must("registry:catalog:*")},
		{"catalog needs *", admin, must("registry:catalog:pull"), nil},
		{"other registry scopes dropped", admin, must("registry:other:*"), nil},
		{"catalog refused to an admin's scoped token", Principal{Name: "root", Admin: true, TokenScopes: must("repository:**:pull")}, must("registry:catalog:*"), nil},
		{"catalog for an admin's token that lists it", Principal{Name: "root", Admin: true, TokenScopes: must("registry:catalog:*")}, must("registry:catalog:*"), must("registry:catalog:*")},
		{"catalog refused to a user's token that lists it", Principal{Name: "alice", TokenScopes: must("registry:catalog:*")}, must("registry:catalog:*"), nil},
		{"duplicates merged", alice, []Scope{{"repository", "team-a/app", []string{"pull"}}, {"repository", "team-a/app", []string{"push"}}},
			must("repository:team-a/app:pull,push")},
		{"unsorted input", alice, []Scope{{"repository", "team-a/app", []string{"push", "pull", "push"}}}, must("repository:team-a/app:pull,push")},
		{"host:port name", Principal{Name: "bob"}, must("repository:localhost:5000/a:pull,push"), must("repository:localhost:5000/a:pull")},
		{"admin everything", admin, must("repository:private/x:*"), must("repository:private/x:*")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Authorize(tt.p, policyGrants, tt.requested)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Authorize = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAuthorizeDoesNotChangeRequest(t *testing.T) {
	t.Parallel()
	req := []Scope{{"repository", "team-a/app", []string{"push", "pull"}}}
	Authorize(Principal{Name: "alice", Groups: []string{"devs"}}, policyGrants, req)
	if !reflect.DeepEqual(req[0].Actions, []string{"push", "pull"}) {
		t.Fatalf("request changed: %v", req)
	}
}

func TestCovers(t *testing.T) {
	t.Parallel()
	granted := []Scope{
		{"repository", "a", []string{"pull"}},
		{"repository", "a", []string{"push"}},
		{"repository", "b", []string{"pull"}},
		{"registry", "catalog", []string{"*"}},
	}
	tests := []struct {
		need Scope
		want bool
	}{
		{Scope{"repository", "a", []string{"pull"}}, true},
		{Scope{"repository", "a", []string{"pull", "push"}}, true}, // across two granted scopes
		{Scope{"repository", "a", []string{"delete"}}, false},
		{Scope{"repository", "b", []string{"pull", "push"}}, false},
		{Scope{"repository", "c", []string{"pull"}}, false},
		{Scope{"repository", "*", []string{"pull"}}, false}, // names are compared, not matched
		{Scope{"plugin", "a", []string{"pull"}}, false},
		{Scope{"registry", "catalog", []string{"*"}}, true},
		{Scope{"repository", "a", nil}, false}, // fails closed
	}
	for _, tt := range tests {
		if got := Covers(granted, tt.need); got != tt.want {
			t.Errorf("Covers(%v) = %v, want %v", tt.need, got, tt.want)
		}
	}
	if Covers(nil, Scope{"repository", "a", []string{"pull"}}) {
		t.Error("nil covers")
	}
}
