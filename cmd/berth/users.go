package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
)

// The commands that manage who may do what: users, groups, grants and API
// tokens. They validate with package auth and store with package db; they
// open the database as the maintenance commands do, so they work beside a
// running berth serve (see openCommandDB).
//
// Secrets: a password is read from standard input only (never from the
// command line, which other users and the shell history can read), and
// neither it nor its hash is ever printed; an API token's secret is printed
// once, alone on standard output, by token create.

// cmdEnv is what a command reads and writes.
type cmdEnv struct {
	getenv         func(string) string
	stdin          io.Reader
	stdout, stderr io.Writer
}

const userUsage = `Usage:
  berth user add NAME [--admin] --password-stdin   create a user; the password is the first line of standard input
  berth user delete NAME                           delete a user with its API tokens, group memberships and grants
  berth user list                                  users: name, admin, groups, creation time
  berth user import-htpasswd FILE                  create or update users from an htpasswd file (bcrypt entries only; "-" reads standard input)

Every command also takes the database settings of berth serve (berth serve --help).
`

const groupUsage = `Usage:
  berth group add GROUP [USER...]      add users to a group, creating it if needed
  berth group remove GROUP USER...     take users out of a group
  berth group delete GROUP             delete a group with its grants

Every command also takes the database settings of berth serve (berth serve --help).
`

const grantUsage = `Usage:
  berth grant SUBJECT REPO_GLOB ACTIONS   give SUBJECT the ACTIONS on the repositories REPO_GLOB matches, replacing its earlier grant on that glob
  berth grant list                        every grant
  berth revoke SUBJECT REPO_GLOB          delete a grant

SUBJECT is a user name, group:NAME, anonymous (everyone) or authenticated (every user).
REPO_GLOB is a repository name with '*' matching within a path component and '**' across them (team-a/**).
ACTIONS is a comma-separated list of pull, push and delete, or * for all three.
For one subject, its grant with the longest matching glob decides; the grants of different subjects add up.

Every command also takes the database settings of berth serve (berth serve --help).
`

const tokenUsage = `Usage:
  berth token create --user NAME [--scope repository:GLOB:ACTIONS]... [--expires DURATION] [--description TEXT]
                       create an API token; prints it, alone, once
  berth token revoke ID                 revoke a token (ID, or the whole token)
  berth token list [--user NAME]        tokens: id, user, scopes, creation, expiry, last use, state (never secrets)

Every command also takes the database settings of berth serve (berth serve --help).
`

// subcommand splits "add alice --admin" into "add" and the rest. A help
// request prints usage on standard output; a missing subcommand, on
// standard error.
func (env cmdEnv) subcommand(args []string, usage string) (string, []string, error) {
	if len(args) == 0 {
		fmt.Fprint(env.stderr, usage)
		return "", nil, errors.New("no subcommand given")
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(env.stdout, usage)
		return "", nil, flag.ErrHelp
	}
	return args[0], args[1:], nil
}

// parse resolves a command's settings and flags and checks that it got
// between min and max positional arguments (max < 0: no limit).
func (env cmdEnv) parse(cmd, synopsis string, args []string, min, max int, flags ...func(*flag.FlagSet)) (Config, []string, error) {
	c, pos, err := loadCommandConfig(cmd, synopsis, args, env.getenv, env.stderr, flags...)
	if err != nil {
		return Config{}, nil, err
	}
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		return Config{}, nil, fmt.Errorf("usage: berth %s", synopsis)
	}
	return c, pos, nil
}

// open opens the database for c, logging to standard error.
func (env cmdEnv) open(ctx context.Context, c Config) (*db.DB, func(), error) {
	return openCommandDB(ctx, c, newLogger(c, env.stderr))
}

// withDB parses a command that takes no flags of its own (as parse does),
// opens the database and runs fn with it and the positional arguments.
func (env cmdEnv) withDB(ctx context.Context, cmd, synopsis string, args []string, min, max int, fn func(d *db.DB, pos []string) error) error {
	c, pos, err := env.parse(cmd, synopsis, args, min, max)
	if err != nil {
		return err
	}
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	return fn(d, pos)
}

func userCommand(ctx context.Context, args []string, env cmdEnv) error {
	sub, rest, err := env.subcommand(args, userUsage)
	if err != nil {
		return err
	}
	switch sub {
	case "add":
		return userAdd(ctx, rest, env)
	case "delete":
		return env.withDB(ctx, "user delete", "user delete NAME [flags]", rest, 1, 1, func(d *db.DB, pos []string) error {
			if err := d.UserDelete(ctx, pos[0]); err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "deleted user %s, with its API tokens, group memberships and grants\n", pos[0])
			return nil
		})
	case "list":
		return env.withDB(ctx, "user list", "user list [flags]", rest, 0, 0, func(d *db.DB, _ []string) error {
			users, err := d.UserList(ctx)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tADMIN\tGROUPS\tCREATED")
			for _, u := range users {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", u.Name, yesNo(u.Admin), listOr(u.Groups, "-"), timestamp(u.CreatedAt))
			}
			return tw.Flush()
		})
	case "import-htpasswd":
		return userImport(ctx, rest, env)
	}
	fmt.Fprint(env.stderr, userUsage)
	return fmt.Errorf("unknown command: user %s", sub)
}

func userAdd(ctx context.Context, args []string, env cmdEnv) error {
	var admin, passwordStdin bool
	c, pos, err := env.parse("user add", "user add NAME [--admin] --password-stdin [flags]", args, 1, 1, func(fs *flag.FlagSet) {
		fs.BoolVar(&admin, "admin", false, "the user may do anything, everywhere, and list every repository")
		fs.BoolVar(&passwordStdin, "password-stdin", false, "read the password from standard input: its first line, without the line break (required)")
	})
	if err != nil {
		return err
	}
	name := pos[0]
	if err := auth.ValidName(name); err != nil {
		return fmt.Errorf("user name: %w", err)
	}
	if !passwordStdin {
		return errors.New("give the password on standard input, with --password-stdin (never on the command line, " +
			"where other users and the shell history could read it), e.g. printf '%s\\n' \"$PASSWORD\" | berth user add NAME --password-stdin")
	}
	pw, err := readPassword(env.stdin)
	if err != nil {
		return err
	}
	hash, err := auth.HashPassword(pw)
	if err != nil {
		return fmt.Errorf("password: %w", err)
	}
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	if err := d.UserCreate(ctx, name, hash, admin); err != nil {
		return err
	}
	kind := "user"
	if admin {
		kind = "admin user"
	}
	fmt.Fprintf(env.stdout, "created %s %s\n", kind, name)
	return nil
}

// maxPasswordLine bounds what readPassword reads: far more than any
// password bcrypt accepts (72 bytes), so that a mistaken pipe (a file, a
// stream) is refused rather than read whole.
const maxPasswordLine = 4096

// readPassword returns the first line of r without its line break ("\n"
// or "\r\n"); an empty one is refused.
func readPassword(r io.Reader) (string, error) {
	line, err := bufio.NewReaderSize(io.LimitReader(r, maxPasswordLine), maxPasswordLine).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read the password from standard input: %w", err)
	}
	if err != nil && len(line) == maxPasswordLine {
		return "", fmt.Errorf("the first line of standard input is longer than %d bytes: not a password", maxPasswordLine)
	}
	line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if line == "" {
		return "", errors.New("empty password on standard input (--password-stdin reads its first line)")
	}
	return line, nil
}

// userImport imports an htpasswd file: bcrypt entries create users or set
// their passwords; every other line is refused with its reason on standard
// error, and the others are imported all the same, so that a file with a
// few old MD5 entries still brings in the rest. It fails if the file
// cannot be read, an entry cannot be stored, or every entry was refused.
func userImport(ctx context.Context, args []string, env cmdEnv) error {
	c, pos, err := env.parse("user import-htpasswd", "user import-htpasswd FILE [flags]", args, 1, 1)
	if err != nil {
		return err
	}
	var r io.Reader = env.stdin
	if pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	entries, refused, err := auth.ParseHtpasswd(r)
	if err != nil {
		return err
	}
	for _, why := range refused {
		fmt.Fprintf(env.stderr, "berth: %s: refused %s\n", pos[0], why)
	}
	if len(entries) == 0 && len(refused) > 0 {
		return fmt.Errorf("%s: no entry imported: all %d refused", pos[0], len(refused))
	}
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	var created, updated int
	for _, e := range entries {
		isNew, err := d.UserSetPassword(ctx, e.User, e.Hash)
		if err != nil {
			return fmt.Errorf("%s: imported %d of %d entries, then: %w", pos[0], created+updated, len(entries), err)
		}
		if isNew {
			created++
			fmt.Fprintf(env.stdout, "created user %s\n", e.User)
		} else {
			updated++
			fmt.Fprintf(env.stdout, "updated the password of user %s\n", e.User)
		}
	}
	fmt.Fprintf(env.stdout, "imported %d of %d entries: %d users created, %d updated", created+updated, len(entries)+len(refused), created, updated)
	if len(refused) > 0 {
		fmt.Fprintf(env.stdout, "; %d refused (reasons on standard error)", len(refused))
	}
	fmt.Fprintln(env.stdout)
	return nil
}

func groupCommand(ctx context.Context, args []string, env cmdEnv) error {
	sub, rest, err := env.subcommand(args, groupUsage)
	if err != nil {
		return err
	}
	var synopsis string
	var min, max int
	switch sub {
	case "add":
		synopsis, min, max = "group add GROUP [USER...] [flags]", 1, -1
	case "remove":
		synopsis, min, max = "group remove GROUP USER... [flags]", 2, -1
	case "delete":
		synopsis, min, max = "group delete GROUP [flags]", 1, 1
	default:
		fmt.Fprint(env.stderr, groupUsage)
		return fmt.Errorf("unknown command: group %s", sub)
	}
	c, pos, err := env.parse("group "+sub, synopsis, rest, min, max)
	if err != nil {
		return err
	}
	group, users := pos[0], pos[1:]
	if err := auth.ValidName(group); err != nil {
		return fmt.Errorf("group name: %w", err)
	}
	for _, u := range users {
		if err := auth.ValidName(u); err != nil {
			return fmt.Errorf("user name: %w", err)
		}
	}
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	switch sub {
	case "add":
		if err := d.GroupAdd(ctx, group, users); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "group %s: added %s\n", group, cmp.Or(strings.Join(users, ", "), "no one"))
	case "remove":
		if err := d.GroupRemove(ctx, group, users); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "group %s: removed %s\n", group, strings.Join(users, ", "))
	case "delete":
		if err := d.GroupDelete(ctx, group); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "deleted group %s, with its grants\n", group)
	}
	return nil
}

// grantCommand runs `berth grant SUBJECT REPO_GLOB ACTIONS` and `berth
// grant list`. "list" alone lists: with three arguments it is a subject
// like any other (a user may be called list).
func grantCommand(ctx context.Context, args []string, env cmdEnv) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(env.stdout, grantUsage)
		return flag.ErrHelp
	}
	c, pos, err := env.parse("grant", "grant SUBJECT REPO_GLOB ACTIONS [flags], or berth grant list [flags]", args, 1, 3)
	if err != nil {
		return err
	}
	switch {
	case len(pos) == 1 && pos[0] == "list":
		d, closeDB, err := env.open(ctx, c)
		if err != nil {
			return err
		}
		defer closeDB()
		grants, err := d.GrantList(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SUBJECT\tREPO_GLOB\tACTIONS")
		for _, g := range grants {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", g.Subject, g.RepoGlob, listOr(g.Actions, "-"))
		}
		return tw.Flush()
	case len(pos) != 3:
		fmt.Fprint(env.stderr, grantUsage)
		return errors.New("usage: berth grant SUBJECT REPO_GLOB ACTIONS, or berth grant list")
	}
	subject, glob := pos[0], pos[1]
	if err := auth.ValidSubject(subject); err != nil {
		return fmt.Errorf("subject: %w", err)
	}
	if err := auth.ValidGlob(glob); err != nil {
		return err
	}
	actions, err := auth.ParseActions(pos[2])
	if err != nil {
		return err
	}
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	if err := d.GrantSet(ctx, db.Grant{Subject: subject, RepoGlob: glob, Actions: actions}); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "granted %s on %s to %s\n", strings.Join(actions, ","), glob, subject)
	return nil
}

func revokeCommand(ctx context.Context, args []string, env cmdEnv) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(env.stdout, grantUsage)
		return flag.ErrHelp
	}
	c, pos, err := env.parse("revoke", "revoke SUBJECT REPO_GLOB [flags]", args, 2, 2)
	if err != nil {
		return err
	}
	if err := auth.ValidSubject(pos[0]); err != nil {
		return fmt.Errorf("subject: %w", err)
	}
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	if err := d.GrantRevoke(ctx, pos[0], pos[1]); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "revoked the grant of %s on %s\n", pos[0], pos[1])
	return nil
}

func tokenCommand(ctx context.Context, args []string, env cmdEnv) error {
	sub, rest, err := env.subcommand(args, tokenUsage)
	if err != nil {
		return err
	}
	switch sub {
	case "create":
		return tokenCreate(ctx, rest, env)
	case "revoke":
		c, pos, err := env.parse("token revoke", "token revoke ID [flags]", rest, 1, 1)
		if err != nil {
			return err
		}
		id := pos[0]
		if tid, _, ok := auth.ParseAPIToken(id); ok {
			id = tid // the whole token was given
		}
		d, closeDB, err := env.open(ctx, c)
		if err != nil {
			return err
		}
		defer closeDB()
		if err := d.TokenRevoke(ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "revoked API token %s\n", id)
		return nil
	case "list":
		var user string
		c, _, err := env.parse("token list", "token list [--user NAME] [flags]", rest, 0, 0, func(fs *flag.FlagSet) {
			fs.StringVar(&user, "user", "", "only the tokens of this user")
		})
		if err != nil {
			return err
		}
		d, closeDB, err := env.open(ctx, c)
		if err != nil {
			return err
		}
		defer closeDB()
		tokens, err := d.TokenList(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tUSER\tSCOPES\tCREATED\tEXPIRES\tLAST USED\tSTATE\tDESCRIPTION")
		for _, t := range tokens {
			if user != "" && t.User != user {
				continue
			}
			state := "active"
			switch {
			case t.RevokedAt != nil:
				state = "revoked " + timestamp(*t.RevokedAt)
			case t.ExpiresAt != nil && !now.Before(*t.ExpiresAt):
				state = "expired"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.User, listOr(t.Scopes, "(all)"),
				timestamp(t.CreatedAt), optionalTime(t.ExpiresAt, "never"), optionalTime(t.LastUsedAt, "never"), state,
				printable(t.Description))
		}
		return tw.Flush()
	}
	fmt.Fprint(env.stderr, tokenUsage)
	return fmt.Errorf("unknown command: token %s", sub)
}

func tokenCreate(ctx context.Context, args []string, env cmdEnv) error {
	var user, description string
	var scopes stringList
	var expires optionalDuration
	c, _, err := env.parse("token create", "token create --user NAME [--scope repository:GLOB:ACTIONS]... [--expires DURATION] [--description TEXT] [flags]",
		args, 0, 0, func(fs *flag.FlagSet) {
			fs.StringVar(&user, "user", "", "the user the token acts for (required)")
			fs.Var(&scopes, "scope", "restrict the token to repository:GLOB:ACTIONS (repeatable; the token may do what one of its scopes and its user's grants both allow); "+
				"registry:catalog:* lets an admin's token list the catalog. Without --scope the token has all of its user's rights")
			fs.Var(&expires, "expires", "the token expires this long after its creation, e.g. 720h (default: never)")
			fs.StringVar(&description, "description", "", "what the token is for, shown by token list")
		})
	if err != nil {
		return err
	}
	if user == "" {
		return errors.New("token create needs --user NAME: the user the token acts for")
	}
	if err := auth.ValidName(user); err != nil {
		return fmt.Errorf("user name: %w", err)
	}
	stored := make([]string, 0, len(scopes))
	for _, s := range scopes {
		sc, err := auth.ParseGrantScope(s)
		if err != nil {
			return err
		}
		stored = append(stored, sc.String())
	}
	if expires.set && expires.d == 0 {
		return errors.New("--expires must be positive (leave it out for a token that never expires)")
	}
	id, secret := auth.NewAPIToken()
	t := db.APIToken{ID: id, User: user, SecretHash: auth.HashSecret(secret), Scopes: stored, Description: description}
	if expires.set {
		at := time.Now().Add(expires.d)
		t.ExpiresAt = &at
	}
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	if err := d.TokenCreate(ctx, t); err != nil {
		return err
	}
	// The token alone on standard output, so that scripts can capture it
	// (TOKEN=$(berth token create ...)); what it is on standard error.
	fmt.Fprintln(env.stdout, auth.FormatAPIToken(id, secret))
	fmt.Fprintf(env.stderr, "created API token %s for user %s, expires %s; it is shown this once: store it now\n",
		id, user, optionalTime(t.ExpiresAt, "never"))
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, " ") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// listOr joins l with commas, or returns none for an empty list.
func listOr(l []string, none string) string {
	if len(l) == 0 {
		return none
	}
	return strings.Join(l, ",")
}

// timestamp formats t for listings: UTC, to the second.
func timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func optionalTime(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return timestamp(*t)
}

// printable quotes s if it holds characters that would break a table row
// (tabs, line breaks, other control characters).
func printable(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return fmt.Sprintf("%q", s)
	}
	return s
}
