package db_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// hash stands for a bcrypt hash: db stores it as given.
const hash = "$2y$10$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234"

func wantErr(t *testing.T, err, sentinel error, mentions string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("got %v, want %v", err, sentinel)
	}
	if !strings.Contains(err.Error(), mentions) {
		t.Fatalf("error %q does not mention %q", err, mentions)
	}
}

func TestUsers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	mustDo(t, err)
	defer d.Close()

	mustDo(t, d.UserCreate(ctx, "bob", hash, false))
	mustDo(t, d.UserCreate(ctx, "alice", hash, true))
	wantErr(t, d.UserCreate(ctx, "alice", "other", false), db.ErrUserExists, "alice")

	created, err := d.UserSetPassword(ctx, "carol", "h1")
	mustDo(t, err)
	if !created {
		t.Error("carol: want created")
	}
	created, err = d.UserSetPassword(ctx, "carol", "h2")
	mustDo(t, err)
	if created {
		t.Error("carol again: want updated")
	}
	info, err := d.AuthLookup(ctx, "carol", "")
	mustDo(t, err)
	if info.User.PasswordHash != "h2" || info.User.Admin {
		t.Errorf("carol after import: %+v", info.User)
	}

	mustDo(t, d.GroupAdd(ctx, "devs", []string{"alice", "bob"}))
	mustDo(t, d.GroupAdd(ctx, "ops", []string{"alice"}))
	users, err := d.UserList(ctx)
	mustDo(t, err)
	var got []string
	for _, u := range users {
		if u.PasswordHash != "" || u.CreatedAt.IsZero() {
			t.Errorf("listed %+v: want a creation time and no hash", u)
		}
		got = append(got, fmt.Sprintf("%s %v %v", u.Name, u.Admin, u.Groups))
	}
	want := []string{"alice true [devs ops]", "bob false [devs]", "carol false []"}
	if !slices.Equal(got, want) {
		t.Errorf("UserList = %q, want %q", got, want)
	}

	// Deleting alice deletes her tokens, memberships and grants, and
	// nobody else's.
	mustDo(t, d.GrantSet(ctx, db.Grant{Subject: "alice", RepoGlob: "a/*", Actions: []string{"pull"}}))
	mustDo(t, d.GrantSet(ctx, db.Grant{Subject: "bob", RepoGlob: "a/*", Actions: []string{"pull"}}))
	mustDo(t, d.TokenCreate(ctx, db.APIToken{ID: "t1", User: "alice", SecretHash: []byte{1}}))
	mustDo(t, d.TokenCreate(ctx, db.APIToken{ID: "t2", User: "bob", SecretHash: []byte{2}}))
	mustDo(t, d.UserDelete(ctx, "alice"))
	wantErr(t, d.UserDelete(ctx, "alice"), db.ErrUserUnknown, "alice")
	grants, err := d.GrantList(ctx)
	mustDo(t, err)
	if len(grants) != 1 || grants[0].Subject != "bob" {
		t.Errorf("grants after deleting alice: %+v", grants)
	}
	tokens, err := d.TokenList(ctx)
	mustDo(t, err)
	if len(tokens) != 1 || tokens[0].ID != "t2" {
		t.Errorf("tokens after deleting alice: %+v", tokens)
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM group_members WHERE user_name = 'alice'`); n != 0 {
		t.Errorf("%d memberships of alice left", n)
	}
	// A user created later under the name inherits nothing.
	mustDo(t, d.UserCreate(ctx, "alice", hash, false))
	info, err = d.AuthLookup(ctx, "alice", "t1")
	mustDo(t, err)
	if len(info.User.Groups) != 0 || info.Token != nil || len(info.Grants) != 0 {
		t.Errorf("new alice: %+v", info)
	}
}

func TestGroups(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	mustDo(t, err)
	defer d.Close()
	mustDo(t, d.UserCreate(ctx, "alice", hash, false))
	mustDo(t, d.UserCreate(ctx, "bob", hash, false))

	// An unknown user: an error naming it, and nothing changes.
	err = d.GroupAdd(ctx, "devs", []string{"alice", "ghost", "bob"})
	wantErr(t, err, db.ErrUserUnknown, "ghost")
	wantErr(t, d.GroupAdd(ctx, "devs", []string{"ghost", "alice", "phantom"}), db.ErrUserUnknown, "ghost, phantom")
	if n := dbtest.QueryInt(t, url, `SELECT (SELECT count(*) FROM groups) + (SELECT count(*) FROM group_members)`); n != 0 {
		t.Fatalf("%d rows written by failed GroupAdds", n)
	}

	mustDo(t, d.GroupAdd(ctx, "devs", []string{"alice"}))
	mustDo(t, d.GroupAdd(ctx, "devs", []string{"alice", "bob", "bob"})) // repeats and members already in: fine
	mustDo(t, d.GroupAdd(ctx, "empty", nil))
	groupsOf := func() map[string][]string {
		users, err := d.UserList(ctx)
		mustDo(t, err)
		m := map[string][]string{}
		for _, u := range users {
			m[u.Name] = u.Groups
		}
		return m
	}
	if g := groupsOf(); !slices.Equal(g["alice"], []string{"devs"}) || !slices.Equal(g["bob"], []string{"devs"}) {
		t.Fatalf("groups: %v", g)
	}

	mustDo(t, d.GroupRemove(ctx, "devs", []string{"bob", "alice-not-member"}))
	wantErr(t, d.GroupRemove(ctx, "nope", []string{"bob"}), db.ErrGroupUnknown, "nope")
	if g := groupsOf(); len(g["bob"]) != 0 || len(g["alice"]) != 1 {
		t.Fatalf("groups after removing bob: %v", g)
	}

	mustDo(t, d.GrantSet(ctx, db.Grant{Subject: "group:devs", RepoGlob: "x/*", Actions: []string{"pull"}}))
	mustDo(t, d.GrantSet(ctx, db.Grant{Subject: "group:empty", RepoGlob: "x/*", Actions: []string{"pull"}}))
	mustDo(t, d.GroupDelete(ctx, "devs"))
	wantErr(t, d.GroupDelete(ctx, "devs"), db.ErrGroupUnknown, "devs")
	grants, err := d.GrantList(ctx)
	mustDo(t, err)
	if len(grants) != 1 || grants[0].Subject != "group:empty" {
		t.Errorf("grants after deleting devs: %+v", grants)
	}
	if g := groupsOf(); len(g["alice"]) != 0 {
		t.Errorf("alice still in %v", g["alice"])
	}
}

func TestGrants(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)
	mustDo(t, d.UserCreate(ctx, "alice", hash, false))
	mustDo(t, d.GroupAdd(ctx, "devs", nil))

	mustDo(t, d.GrantSet(ctx, db.Grant{Subject: "alice", RepoGlob: "team/*", Actions: []string{"pull", "push"}}))
	mustDo(t, d.GrantSet(ctx, db.Grant{Subject: "alice", RepoGlob: "team/*", Actions: []string{"delete"}})) // replaces
	mustDo(t, d.GrantSet(ctx, db.Grant{Subject: "anonymous", RepoGlob: "public/*", Actions: []string{"pull"}}))
	mustDo(t, d.GrantSet(ctx, db.Grant{Subject: "authenticated", RepoGlob: "*", Actions: []string{"pull"}}))
	mustDo(t, d.GrantSet(ctx, db.Grant{Subject: "group:devs", RepoGlob: "team/secret", Actions: nil}))

	wantErr(t, d.GrantSet(ctx, db.Grant{Subject: "ghost", RepoGlob: "*", Actions: []string{"pull"}}), db.ErrUserUnknown, "ghost")
	wantErr(t, d.GrantSet(ctx, db.Grant{Subject: "group:nobody", RepoGlob: "*", Actions: []string{"pull"}}), db.ErrGroupUnknown, "nobody")
	if err := d.GrantSet(ctx, db.Grant{Subject: "alice", RepoGlob: "*", Actions: []string{"pull", "admin"}}); err == nil {
		t.Error("an action beyond pull, push and delete was stored")
	}

	grants, err := d.GrantList(ctx)
	mustDo(t, err)
	var got []string
	for _, g := range grants {
		got = append(got, fmt.Sprintf("%s %s %v", g.Subject, g.RepoGlob, g.Actions))
	}
	want := []string{"alice team/* [delete]", "anonymous public/* [pull]", "authenticated * [pull]", "group:devs team/secret []"}
	if !slices.Equal(got, want) {
		t.Errorf("GrantList = %q, want %q", got, want)
	}

	mustDo(t, d.GrantRevoke(ctx, "alice", "team/*"))
	wantErr(t, d.GrantRevoke(ctx, "alice", "team/*"), db.ErrGrantUnknown, "team/*")
}

func TestTokens(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	mustDo(t, err)
	defer d.Close()
	mustDo(t, d.UserCreate(ctx, "alice", hash, false))

	expires := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	mustDo(t, d.TokenCreate(ctx, db.APIToken{ID: "tok1", User: "alice", SecretHash: []byte("hash1"),
		Scopes: []string{"repository:a/*:pull"}, Description: "CI", ExpiresAt: &expires}))
	mustDo(t, d.TokenCreate(ctx, db.APIToken{ID: "tok2", User: "alice", SecretHash: []byte("hash2")}))
	wantErr(t, d.TokenCreate(ctx, db.APIToken{ID: "tok3", User: "ghost", SecretHash: []byte("x")}), db.ErrUserUnknown, "ghost")

	tokens, err := d.TokenList(ctx)
	mustDo(t, err)
	if len(tokens) != 2 {
		t.Fatalf("TokenList: %+v", tokens)
	}
	t1 := tokens[0]
	if t1.ID != "tok1" || t1.User != "alice" || t1.SecretHash != nil || !slices.Equal(t1.Scopes, []string{"repository:a/*:pull"}) ||
		t1.Description != "CI" || t1.ExpiresAt == nil || !t1.ExpiresAt.Equal(expires) || t1.LastUsedAt != nil || t1.RevokedAt != nil {
		t.Errorf("tok1 listed as %+v", t1)
	}
	if t2 := tokens[1]; t2.Scopes == nil || len(t2.Scopes) != 0 || t2.ExpiresAt != nil {
		t.Errorf("tok2 listed as %+v", t2)
	}

	mustDo(t, d.TokenRevoke(ctx, "tok2"))
	first := dbtest.QueryInt(t, url, `SELECT extract(epoch FROM revoked_at)::bigint * 1000000 + extract(microseconds FROM revoked_at)::bigint FROM api_tokens WHERE id = 'tok2'`)
	mustDo(t, d.TokenRevoke(ctx, "tok2")) // again: keeps the first time
	if again := dbtest.QueryInt(t, url, `SELECT extract(epoch FROM revoked_at)::bigint * 1000000 + extract(microseconds FROM revoked_at)::bigint FROM api_tokens WHERE id = 'tok2'`); again != first {
		t.Error("a second revocation moved revoked_at")
	}
	wantErr(t, d.TokenRevoke(ctx, "nope"), db.ErrTokenUnknown, "nope")

	// Uses are recorded; an older one than stored changes nothing; unknown
	// ids are passed over.
	t0 := time.Now().Truncate(time.Microsecond)
	mustDo(t, d.TokenTouch(ctx, map[string]time.Time{"tok1": t0, "ghost": t0}))
	mustDo(t, d.TokenTouch(ctx, map[string]time.Time{"tok1": t0.Add(-time.Minute), "tok2": t0.Add(time.Second)}))
	mustDo(t, d.TokenTouch(ctx, nil))
	info, err := d.AuthLookup(ctx, "alice", "tok1")
	mustDo(t, err)
	if info.Token.LastUsedAt == nil || !info.Token.LastUsedAt.Equal(t0) {
		t.Errorf("tok1 last used %v, want %v", info.Token.LastUsedAt, t0)
	}
	info, err = d.AuthLookup(ctx, "alice", "tok2")
	mustDo(t, err)
	if info.Token.LastUsedAt == nil || !info.Token.LastUsedAt.Equal(t0.Add(time.Second)) || info.Token.RevokedAt == nil {
		t.Errorf("tok2: %+v", info.Token)
	}
}

// Replicas starting at once on an empty table create one signing key
// between them, and all of them get it.
func TestSigningKeysRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	var instances [2]*db.DB
	for i := range instances {
		d, err := db.Open(ctx, url, db.Options{})
		mustDo(t, err)
		defer d.Close()
		instances[i] = d
	}
	var mu sync.Mutex
	created := 0
	ids := make([]string, 8)
	errs := make([]error, 8)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			<-start
			keys, err := instances[i%2].SigningKeys(ctx, func() (db.SigningKey, error) {
				mu.Lock()
				defer mu.Unlock()
				created++
				return db.SigningKey{ID: fmt.Sprintf("key-%d", i), Private: []byte{byte(i)}}, nil
			})
			if err == nil && len(keys) != 1 {
				err = fmt.Errorf("got %d keys", len(keys))
			}
			if err == nil {
				ids[i] = keys[0].ID
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	mustDo(t, errors.Join(errs...))
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM signing_keys`); n != 1 || created != 1 {
		t.Fatalf("%d keys stored, %d created", n, created)
	}
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("replicas got different keys: %q", ids)
		}
	}

	// With a key present, create is not called; keys come newest first.
	dbtest.Exec(t, url, `INSERT INTO signing_keys (id, private_key, created_at) VALUES ('newer', '\x01', now() + interval '1 hour')`)
	keys, err := instances[0].SigningKeys(ctx, func() (db.SigningKey, error) {
		t.Error("create called with keys present")
		return db.SigningKey{}, errors.New("unexpected")
	})
	mustDo(t, err)
	if len(keys) != 2 || keys[0].ID != "newer" || keys[1].ID != ids[0] || len(keys[1].Private) != 1 {
		t.Errorf("keys: %+v", keys)
	}
	// A failing create fails the call and stores nothing.
	d2 := dbtest.New(t)
	if _, err := d2.SigningKeys(ctx, func() (db.SigningKey, error) { return db.SigningKey{}, errors.New("no entropy") }); err == nil ||
		!strings.Contains(err.Error(), "no entropy") {
		t.Errorf("failing create: %v", err)
	}
}

func TestAuthLookup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)
	mustDo(t, d.UserCreate(ctx, "alice", "alice-hash", true))
	mustDo(t, d.UserCreate(ctx, "bob", "bob-hash", false))
	mustDo(t, d.GroupAdd(ctx, "devs", []string{"alice", "bob"}))
	mustDo(t, d.GroupAdd(ctx, "ops", []string{"alice"}))
	mustDo(t, d.GroupAdd(ctx, "qa", []string{"bob"}))
	for _, g := range []db.Grant{
		{"alice", "alice/*", []string{"pull", "push", "delete"}},
		{"bob", "bob/*", []string{"pull"}},
		{"group:devs", "dev/*", []string{"pull", "push"}},
		{"group:devs", "dev/secret", nil},
		{"group:ops", "*", []string{"pull"}},
		{"group:qa", "qa/*", []string{"pull"}},
		{"authenticated", "shared/*", []string{"pull"}},
		{"anonymous", "public/*", []string{"pull"}},
	} {
		mustDo(t, d.GrantSet(ctx, g))
	}
	expires := time.Now().Add(-time.Hour).Truncate(time.Microsecond) // expired: still returned
	mustDo(t, d.TokenCreate(ctx, db.APIToken{ID: "bobtok", User: "bob", SecretHash: []byte("secret-hash"),
		Scopes: []string{"repository:bob/*:pull"}, Description: "laptop", ExpiresAt: &expires}))

	grantsOf := func(info db.AuthInfo) []string {
		var s []string
		for _, g := range info.Grants {
			s = append(s, g.Subject+" "+g.RepoGlob+" "+strings.Join(g.Actions, ","))
		}
		return s
	}
	for _, tc := range []struct {
		name, user, token string
		wantUser          string
		wantGroups        []string
		wantToken         bool
		wantGrants        []string
	}{
		{"user in two groups, with another user's token", "alice", "bobtok", "alice", []string{"devs", "ops"}, true, []string{
			"alice alice/* pull,push,delete",
			"anonymous public/* pull",
			"authenticated shared/* pull",
			"group:devs dev/* pull,push",
			"group:devs dev/secret ",
			"group:ops * pull",
		}},
		{"user and own token", "bob", "bobtok", "bob", []string{"devs", "qa"}, true, []string{
			"anonymous public/* pull",
			"authenticated shared/* pull",
			"bob bob/* pull",
			"group:devs dev/* pull,push",
			"group:devs dev/secret ",
			"group:qa qa/* pull",
		}},
		{"unknown user, unknown token", "mallory", "nope", "", nil, false, []string{"anonymous public/* pull"}},
		{"anonymous", "", "", "", nil, false, []string{"anonymous public/* pull"}},
		{"token alone", "", "bobtok", "", nil, true, []string{"anonymous public/* pull"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := d.AuthLookup(ctx, tc.user, tc.token)
			mustDo(t, err)
			if tc.wantUser == "" {
				if info.User != nil {
					t.Errorf("user %+v, want none", info.User)
				}
			} else if info.User == nil || info.User.Name != tc.wantUser || !slices.Equal(info.User.Groups, tc.wantGroups) ||
				info.User.PasswordHash != tc.wantUser+"-hash" || info.User.Admin != (tc.wantUser == "alice") || info.User.CreatedAt.IsZero() {
				t.Errorf("user %+v, want %s in %v", info.User, tc.wantUser, tc.wantGroups)
			}
			if !tc.wantToken {
				if info.Token != nil {
					t.Errorf("token %+v, want none", info.Token)
				}
			} else if tok := info.Token; tok == nil || tok.ID != "bobtok" || tok.User != "bob" || string(tok.SecretHash) != "secret-hash" ||
				!slices.Equal(tok.Scopes, []string{"repository:bob/*:pull"}) || tok.Description != "laptop" ||
				tok.ExpiresAt == nil || !tok.ExpiresAt.Equal(expires) || tok.RevokedAt != nil || tok.LastUsedAt != nil {
				t.Errorf("token %+v", info.Token)
			}
			if got := grantsOf(info); !slices.Equal(got, tc.wantGrants) {
				t.Errorf("grants\n%q, want\n%q", got, tc.wantGrants)
			}
		})
	}
}

// visible is the rule RepositoryListVisible implements, in Go: for some
// subject, of its patterns matching name, those of the greatest length
// include one allowing pull.
func visible(name string, patterns []db.GrantPattern) bool {
	best := map[string]int{}
	pull := map[string]bool{}
	for _, p := range patterns {
		if !regexp.MustCompile(p.Regex).MatchString(name) {
			continue
		}
		if l, ok := best[p.Subject]; !ok || p.Length > l {
			best[p.Subject], pull[p.Subject] = p.Length, p.Pull
		} else if p.Length == l {
			pull[p.Subject] = pull[p.Subject] || p.Pull
		}
	}
	for _, ok := range pull {
		if ok {
			return true
		}
	}
	return false
}

// The catalog of a caller with grants agrees with the rule in Go, page by
// page, for random names and patterns.
func TestRepositoryListVisible(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	mustDo(t, err)
	defer d.Close()
	rng := rand.New(rand.NewPCG(13, 13))
	parts := []string{"a", "b", "ab", "team", "x-1", "a.b"}
	component := func() string { return parts[rng.IntN(len(parts))] }
	name := func() string {
		n := component()
		for range rng.IntN(4) {
			n += "/" + component()
		}
		return n
	}
	names := map[string]bool{}
	for len(names) < 300 {
		names[name()] = true
	}
	all := make([]string, 0, len(names))
	for n := range names {
		all = append(all, n)
	}
	dbtest.Exec(t, url, `INSERT INTO repositories (name) SELECT unnest($1::text[])`, all)
	slices.Sort(all)

	// A glob of components, each a literal or "*" (one component), or a
	// final "**" (anything below), as an anchored POSIX regex; Length is
	// the glob's length.
	pattern := func(subject string) db.GrantPattern {
		var glob, re []string
		for i := range 1 + rng.IntN(3) {
			switch r := rng.IntN(5); {
			case r == 0:
				glob, re = append(glob, "*"), append(re, "[^/]*")
			case r == 1 && i > 0:
				glob, re = append(glob, "**"), append(re, ".*")
			default:
				c := component()
				glob, re = append(glob, c), append(re, regexp.QuoteMeta(c))
			}
			if glob[len(glob)-1] == "**" {
				break
			}
		}
		return db.GrantPattern{Subject: subject, Regex: "^" + strings.Join(re, "/") + "$",
			Length: len(strings.Join(glob, "/")), Pull: rng.IntN(2) == 0}
	}
	for round := range 40 {
		var patterns []db.GrantPattern
		for s := range 1 + rng.IntN(3) {
			for range 1 + rng.IntN(4) {
				patterns = append(patterns, pattern(fmt.Sprintf("s%d", s)))
			}
		}
		var want []string
		for _, n := range all {
			if visible(n, patterns) {
				want = append(want, n)
			}
		}
		t.Logf("round %d: %d patterns, %d of %d visible", round, len(patterns), len(want), len(all))
		pageSize := 1 + rng.IntN(40)
		var got []string
		last := ""
		for pages := 0; ; pages++ {
			page, more, err := d.RepositoryListVisible(ctx, last, pageSize, patterns)
			mustDo(t, err)
			if len(page) > pageSize || (more && len(page) != pageSize) {
				t.Fatalf("round %d: page of %d (size %d), more %v", round, len(page), pageSize, more)
			}
			got = append(got, page...)
			if !more {
				break
			}
			last = page[len(page)-1]
		}
		if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("round %d, patterns %+v:\ngot  %q\nwant %q", round, patterns, got, want)
		}
	}
	// No grants, or none allowing pull: nothing.
	for _, patterns := range [][]db.GrantPattern{nil, {{Subject: "s", Regex: "^.*$", Length: 2}}} {
		page, more, err := d.RepositoryListVisible(ctx, "", 10, patterns)
		mustDo(t, err)
		if len(page) != 0 || more || page == nil {
			t.Errorf("patterns %+v: %q, %v", patterns, page, more)
		}
	}
	// A longer glob with no pull hides what a shorter one shows, for its
	// subject only.
	everything := db.GrantPattern{Subject: "s1", Regex: "^.*$", Length: 2, Pull: true}
	hideA := db.GrantPattern{Subject: "s1", Regex: "^a(/.*)?$", Length: 4}
	page, _, err := d.RepositoryListVisible(ctx, "", 1000, []db.GrantPattern{everything, hideA})
	mustDo(t, err)
	if slices.ContainsFunc(page, func(n string) bool { return n == "a" || strings.HasPrefix(n, "a/") }) || len(page) == 0 {
		t.Errorf("a hidden: %q", page)
	}
	page, _, err = d.RepositoryListVisible(ctx, "", 1000, []db.GrantPattern{everything, hideA, {Subject: "s2", Regex: "^a$", Length: 1, Pull: true}})
	mustDo(t, err)
	if !slices.Contains(page, "a") || slices.ContainsFunc(page, func(n string) bool { return strings.HasPrefix(n, "a/") }) {
		t.Errorf("a shown by s2: %q", page)
	}
}

// The catalog statement with the globs of package auth, as the API calls
// it, agrees with auth.Allowed: PostgreSQL's regular expressions read
// auth.GlobRegex as MatchGlob does.
func TestRepositoryListVisibleAgreesWithAuth(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	mustDo(t, err)
	defer d.Close()
	names := []string{"a", "a.b", "a-b", "a_b", "a/b", "a/b/c", "a/bc", "ab", "axb", "team-a/app", "team-a/frozen/app",
		"team-a/frozen", "team-a", "team-ab/x", "x/cache", "x/y/cache", "cache", "public/busybox", "b/a.b/c"}
	dbtest.Exec(t, url, `INSERT INTO repositories (name) SELECT unnest($1::text[])`, names)
	slices.Sort(names)
	globs := []string{"a", "a.b", "a*", "a/*", "a/**", "**", "*", "team-a/**", "team-a/frozen/**", "team-a**",
		"**/cache", "a/**/c", "*/*", "a?b", "a.*", "b/a.b/*"}
	rng := rand.New(rand.NewPCG(7, 7))
	for round := range 200 {
		var grants []auth.Grant
		var patterns []db.GrantPattern
		for range 1 + rng.IntN(5) {
			g := auth.Grant{Subject: fmt.Sprintf("s%d", rng.IntN(3)), RepoGlob: globs[rng.IntN(len(globs))]}
			if rng.IntN(2) == 0 {
				g.Actions = []string{auth.Pull}
			} else if rng.IntN(2) == 0 {
				g.Actions = []string{auth.Push}
			}
			grants = append(grants, g)
			patterns = append(patterns, db.GrantPattern{Subject: g.Subject, Regex: auth.GlobRegex(g.RepoGlob),
				Length: len(g.RepoGlob), Pull: slices.Contains(g.Actions, auth.Pull)})
		}
		var want []string
		for _, n := range names {
			for _, s := range []string{"s0", "s1", "s2"} {
				// Each subject alone, as a user with no groups would be
				// were the subject its name.
				if slices.Contains(auth.Allowed(auth.Principal{Name: s}, grants, n), auth.Pull) {
					want = append(want, n)
					break
				}
			}
		}
		got, _, err := d.RepositoryListVisible(ctx, "", 100, patterns)
		mustDo(t, err)
		if !slices.Equal(got, want) && len(got)+len(want) > 0 {
			t.Fatalf("round %d, grants %+v:\ngot  %q\nwant %q", round, grants, got, want)
		}
	}
}
