package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// cliResult is what one berth command printed and returned.
type cliResult struct {
	stdout, stderr string
	err            error
}

// berthCLI runs berth with args, stdin as standard input, and the database
// URL given as the environment does (so that flags after the positional
// arguments are the test's own).
func berthCLI(t *testing.T, url, stdin string, args ...string) cliResult {
	t.Helper()
	var out, errOut bytes.Buffer
	err := runIO(t.Context(), args, envOf(map[string]string{"BERTH_DATABASE_URL": url}), strings.NewReader(stdin), &out, &errOut)
	return cliResult{out.String(), errOut.String(), err}
}

func (r cliResult) ok(t *testing.T) cliResult {
	t.Helper()
	if r.err != nil {
		t.Fatalf("berth failed: %v\nstderr: %s", r.err, r.stderr)
	}
	return r
}

func (r cliResult) fails(t *testing.T, mentions string) {
	t.Helper()
	if r.err == nil {
		t.Fatalf("berth succeeded, want an error mentioning %q; stdout: %s", mentions, r.stdout)
	}
	if !strings.Contains(r.err.Error(), mentions) {
		t.Fatalf("error %q does not mention %q", r.err, mentions)
	}
}

func lookup(t *testing.T, url, user, token string) db.AuthInfo {
	t.Helper()
	d, err := db.Open(context.Background(), url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	info, err := d.AuthLookup(context.Background(), user, token)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func TestUserCommands(t *testing.T) {
	t.Parallel()
	url := dbtest.NewURL(t)

	// Flags after the positional argument, and in the --flag=value form.
	r := berthCLI(t, url, "s3cret pass\n", "user", "add", "alice", "--admin", "--password-stdin").ok(t)
	if r.stdout != "created admin user alice\n" {
		t.Errorf("stdout %q", r.stdout)
	}
	berthCLI(t, url, "bobpw\r\nignored second line\n", "user", "--help") // help, not a command
	berthCLI(t, url, "bobpw\r\nignored second line\n", "user", "add", "--password-stdin=true", "bob").ok(t)
	berthCLI(t, url, "x\n", "user", "add", "alice", "--password-stdin").fails(t, "already exists")
	berthCLI(t, url, "\n", "user", "add", "carol", "--password-stdin").fails(t, "empty password")
	berthCLI(t, url, "", "user", "add", "carol", "--password-stdin").fails(t, "empty password")
	berthCLI(t, url, "pw\n", "user", "add", "carol").fails(t, "--password-stdin")
	berthCLI(t, url, "pw\n", "user", "add", "anonymous", "--password-stdin").fails(t, "reserved")
	berthCLI(t, url, "pw\n", "user", "add", "bad name", "--password-stdin").fails(t, "not allowed")
	berthCLI(t, url, "pw\n", "user", "add", "--password-stdin").fails(t, "usage: berth user add NAME")
	berthCLI(t, url, "pw\n", "user", "add", "a", "b", "--password-stdin").fails(t, "usage: berth user add NAME")
	berthCLI(t, url, strings.Repeat("x", 73)+"\n", "user", "add", "carol", "--password-stdin").fails(t, "72 bytes")

	// Stored as bcrypt, the line break (\r\n too) and the rest of the
	// input left out; the password is nowhere in the output.
	for user, pw := range map[string]string{"alice": "s3cret pass", "bob": "bobpw"} {
		info := lookup(t, url, user, "")
		if !strings.HasPrefix(info.User.PasswordHash, "$2") || !auth.CheckPassword(info.User.PasswordHash, pw) {
			t.Errorf("%s: stored hash %q does not check %q", user, info.User.PasswordHash, pw)
		}
	}
	if info := lookup(t, url, "alice", ""); !info.User.Admin {
		t.Error("alice is no admin")
	}

	berthCLI(t, url, "", "group", "add", "devs", "alice", "bob").ok(t)
	r = berthCLI(t, url, "", "user", "list").ok(t)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "NAME ADMIN GROUPS CREATED" ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), "alice yes devs 20") ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[2]), " "), "bob no devs 20") {
		t.Errorf("user list:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout, "$2") {
		t.Error("user list shows a hash")
	}

	berthCLI(t, url, "", "user", "delete", "bob").ok(t)
	berthCLI(t, url, "", "user", "delete", "bob").fails(t, "user bob does not exist")
	if info := lookup(t, url, "bob", ""); info.User != nil {
		t.Error("bob still there")
	}
	berthCLI(t, url, "", "user", "rename", "alice").fails(t, "unknown command: user rename")
	berthCLI(t, url, "", "user").fails(t, "no subcommand")
}

func TestGroupAndGrantCommands(t *testing.T) {
	t.Parallel()
	url := dbtest.NewURL(t)
	for _, u := range []string{"alice", "bob", "list"} {
		berthCLI(t, url, "pw\n", "user", "add", u, "--password-stdin").ok(t)
	}

	berthCLI(t, url, "", "group", "add", "devs", "alice", "ghost").fails(t, "user ghost does not exist")
	if info := lookup(t, url, "alice", ""); len(info.User.Groups) != 0 {
		t.Fatal("a failed group add changed memberships")
	}
	r := berthCLI(t, url, "", "group", "add", "devs", "alice", "bob").ok(t)
	if r.stdout != "group devs: added alice, bob\n" {
		t.Errorf("stdout %q", r.stdout)
	}
	berthCLI(t, url, "", "group", "add", "ops").ok(t)
	berthCLI(t, url, "", "group", "add", "group:x", "alice").fails(t, "group name")
	berthCLI(t, url, "", "group", "remove", "devs", "bob").ok(t)
	berthCLI(t, url, "", "group", "remove", "devs").fails(t, "usage")
	if info := lookup(t, url, "bob", ""); len(info.User.Groups) != 0 {
		t.Error("bob still in devs")
	}

	// Flags of the database after the positional arguments.
	r = berthCLI(t, "", "", "grant", "group:devs", "team-a/**", "pull, push", "--database-url", url).ok(t)
	if r.stdout != "granted pull,push on team-a/** to group:devs\n" {
		t.Errorf("stdout %q", r.stdout)
	}
	berthCLI(t, url, "", "grant", "alice", "team-a/frozen/**", "*").ok(t)
	berthCLI(t, url, "", "grant", "alice", "team-a/frozen/**", "pull").ok(t) // replaces
	berthCLI(t, url, "", "grant", "anonymous", "public/*", "pull").ok(t)
	berthCLI(t, url, "", "grant", "authenticated", "shared/**", "pull").ok(t)
	berthCLI(t, url, "", "grant", "list", "x", "pull").ok(t) // a user called list

	berthCLI(t, url, "", "grant", "ghost", "x", "pull").fails(t, "user ghost does not exist")
	berthCLI(t, url, "", "grant", "group:nobody", "x", "pull").fails(t, "group nobody does not exist")
	berthCLI(t, url, "", "grant", "alice", "Team/*", "pull").fails(t, "not allowed")
	berthCLI(t, url, "", "grant", "alice", "a**b", "pull").fails(t, "'**'")
	berthCLI(t, url, "", "grant", "alice", "x", "pull,fly").fails(t, `unknown action "fly"`)
	berthCLI(t, url, "", "grant", "alice", "x", "").fails(t, "empty action")
	berthCLI(t, url, "", "grant", "Anonymous", "x", "pull").fails(t, "reserved")
	berthCLI(t, url, "", "grant", "group:", "x", "pull").fails(t, "empty name")
	berthCLI(t, url, "", "grant", "alice", "x").fails(t, "usage")

	r = berthCLI(t, url, "", "grant", "list").ok(t)
	want := []string{
		"SUBJECT REPO_GLOB ACTIONS",
		"alice team-a/frozen/** pull",
		"anonymous public/* pull",
		"authenticated shared/** pull",
		"group:devs team-a/** pull,push",
		"list x pull",
	}
	var got []string
	for l := range strings.SplitSeq(strings.TrimSpace(r.stdout), "\n") {
		got = append(got, strings.Join(strings.Fields(l), " "))
	}
	if !slices.Equal(got, want) {
		t.Errorf("grant list:\n%s", r.stdout)
	}

	berthCLI(t, url, "", "revoke", "list", "x").ok(t)
	berthCLI(t, url, "", "revoke", "list", "x").fails(t, "list has no grant on x")
	berthCLI(t, url, "", "revoke", "bad subject", "x").fails(t, "subject")

	// Deleting a group deletes its grants.
	r = berthCLI(t, url, "", "group", "delete", "devs").ok(t)
	berthCLI(t, url, "", "group", "delete", "devs").fails(t, "group devs does not exist")
	if strings.Contains(berthCLI(t, url, "", "grant", "list").ok(t).stdout, "group:devs") {
		t.Error("the grants of devs outlived it")
	}
}

func TestTokenCommands(t *testing.T) {
	t.Parallel()
	url := dbtest.NewURL(t)
	berthCLI(t, url, "pw\n", "user", "add", "alice", "--password-stdin").ok(t)

	r := berthCLI(t, url, "", "token", "create", "--user", "alice", "--scope", "repository:team-a/**:pull,push",
		"--scope=repository:public/*:*", "--expires", "720h", "--description", "CI pushes").ok(t)
	// The token alone on stdout, one line.
	token := strings.TrimSuffix(r.stdout, "\n")
	id, secret, ok := auth.ParseAPIToken(token)
	if !ok || strings.Contains(token, "\n") {
		t.Fatalf("stdout %q is not a token alone", r.stdout)
	}
	if strings.Contains(r.stderr, secret) || !strings.Contains(r.stderr, id) {
		t.Errorf("stderr %q", r.stderr)
	}
	// Stored: the hash of the secret, not the secret.
	info := lookup(t, url, "alice", id)
	if info.Token == nil || !auth.SecretMatches(info.Token.SecretHash, secret) || bytes.Contains(info.Token.SecretHash, []byte(secret)) ||
		string(info.Token.SecretHash) == secret {
		t.Fatalf("stored token %+v", info.Token)
	}
	if !slices.Equal(info.Token.Scopes, []string{"repository:team-a/**:pull,push", "repository:public/*:delete,pull,push"}) ||
		info.Token.Description != "CI pushes" || info.Token.ExpiresAt == nil || info.Token.ExpiresAt.Sub(info.Token.CreatedAt).Hours() < 719 {
		t.Errorf("stored token %+v", info.Token)
	}

	// Flags in any order and form; no scope, no expiry.
	r = berthCLI(t, url, "", "token", "create", "--user=alice").ok(t)
	id2, _, ok := auth.ParseAPIToken(strings.TrimSpace(r.stdout))
	if !ok {
		t.Fatalf("stdout %q", r.stdout)
	}

	berthCLI(t, url, "", "token", "create", "--user", "ghost").fails(t, "user ghost does not exist")
	berthCLI(t, url, "", "token", "create").fails(t, "--user")
	berthCLI(t, url, "", "token", "create", "--user", "alice", "--scope", "repository:Team/*:pull").fails(t, "not allowed")
	berthCLI(t, url, "", "token", "create", "--user", "alice", "--scope", "repository:x:fly").fails(t, "fly")
	berthCLI(t, url, "", "token", "create", "--user", "alice", "--scope", "team-a:pull").fails(t, "want type:name:actions")
	berthCLI(t, url, "", "token", "create", "--user", "alice", "--expires", "0s").fails(t, "positive")
	berthCLI(t, url, "", "token", "create", "--user", "alice", "--expires", "30d").fails(t, "expires")

	// Revoke by id, or with the whole token.
	berthCLI(t, url, "", "token", "revoke", token).ok(t)
	berthCLI(t, url, "", "token", "revoke", id2).ok(t)
	berthCLI(t, url, "", "token", "revoke", "nope").fails(t, "API token nope does not exist")

	r = berthCLI(t, url, "", "token", "list").ok(t)
	if strings.Contains(r.stdout, secret) || !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, id2) ||
		!strings.Contains(r.stdout, "repository:team-a/**:pull,push,repository:public/*:delete,pull,push") ||
		!strings.Contains(r.stdout, "CI pushes") || strings.Count(r.stdout, "revoked") != 2 || !strings.Contains(r.stdout, "never") {
		t.Errorf("token list:\n%s", r.stdout)
	}
	for _, l := range strings.Split(r.stdout, "\n")[1:] {
		if strings.Contains(l, id2) && !strings.Contains(l, "(all)") {
			t.Errorf("a token without scopes is listed as %q", l)
		}
	}
	if r := berthCLI(t, url, "", "token", "list", "--user", "bob").ok(t); strings.Contains(r.stdout, id) {
		t.Errorf("token list --user bob:\n%s", r.stdout)
	}

	// Deleting the user deletes its tokens.
	berthCLI(t, url, "", "user", "delete", "alice").ok(t)
	if info := lookup(t, url, "", id); info.Token != nil {
		t.Error("the token outlived its user")
	}
}

func TestImportHtpasswd(t *testing.T) {
	t.Parallel()
	url := dbtest.NewURL(t)
	bcryptHash, err := auth.HashPassword("alicepw")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "htpasswd")
	content := "# users of the old registry\nalice:" + bcryptHash + "\nbob:$apr1$uMt5ezN7$2wDsmqDR0h9Ehb7UnvxSn0\n"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	r := berthCLI(t, url, "", "user", "import-htpasswd", file).ok(t)
	if !strings.Contains(r.stdout, "created user alice") || !strings.Contains(r.stdout, "imported 1 of 2 entries: 1 users created, 0 updated; 1 refused") {
		t.Errorf("stdout %q", r.stdout)
	}
	if !strings.Contains(r.stderr, `line 3: user "bob": MD5`) || strings.Contains(r.stderr, "alice") {
		t.Errorf("stderr %q", r.stderr)
	}
	if info := lookup(t, url, "alice", ""); info.User == nil || !auth.CheckPassword(info.User.PasswordHash, "alicepw") || info.User.Admin {
		t.Errorf("alice after the import: %+v", info.User)
	}
	if info := lookup(t, url, "bob", ""); info.User != nil {
		t.Error("bob imported with an MD5 hash")
	}

	// Again, from standard input, with a new password: an update, which
	// keeps alice's admin flag.
	berthCLI(t, url, "", "group", "add", "devs", "alice").ok(t)
	newHash, _ := auth.HashPassword("new")
	r = berthCLI(t, url, "alice:"+newHash+"\n", "user", "import-htpasswd", "-").ok(t)
	if !strings.Contains(r.stdout, "updated the password of user alice") || !strings.Contains(r.stdout, "0 users created, 1 updated") {
		t.Errorf("stdout %q", r.stdout)
	}
	if info := lookup(t, url, "alice", ""); !auth.CheckPassword(info.User.PasswordHash, "new") || len(info.User.Groups) != 1 {
		t.Errorf("alice after the update: %+v", info.User)
	}

	// Nothing importable: an error.
	berthCLI(t, url, "carol:{SHA}x\n", "user", "import-htpasswd", "-").fails(t, "no entry imported")
	berthCLI(t, url, "", "user", "import-htpasswd", filepath.Join(t.TempDir(), "missing")).fails(t, "no such file")
}

func TestSplitArgs(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Bool("admin", false, "")
	fs.String("user", "", "")
	for _, tc := range []struct {
		args, flags, positional []string
	}{
		{[]string{"alice", "--admin", "--user", "bob"}, []string{"--admin", "--user", "bob"}, []string{"alice"}},
		{[]string{"--user=bob", "alice", "-admin=false", "x"}, []string{"--user=bob", "-admin=false"}, []string{"alice", "x"}},
		{[]string{"--user", "--admin", "alice"}, []string{"--user", "--admin"}, []string{"alice"}}, // a value that looks like a flag
		{[]string{"a", "--", "--admin", "-"}, nil, []string{"a", "--admin", "-"}},
		{[]string{"--unknown", "a"}, []string{"--unknown"}, []string{"a"}},
		{[]string{"--user"}, []string{"--user"}, nil},
	} {
		flags, pos := splitArgs(fs, tc.args)
		if !slices.Equal(flags, tc.flags) || !slices.Equal(pos, tc.positional) {
			t.Errorf("splitArgs(%q) = %q, %q; want %q, %q", tc.args, flags, pos, tc.flags, tc.positional)
		}
	}
}

// Help is printed, not an error reported.
func TestUserHelp(t *testing.T) {
	var out bytes.Buffer
	err := runIO(t.Context(), []string{"help", "token"}, envOf(nil), strings.NewReader(""), &out, &out)
	if !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "berth token create --user NAME") {
		t.Errorf("help token: %v\n%s", err, out.String())
	}
}
