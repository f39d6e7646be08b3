package db

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Authentication and authorization data: users, groups, grants, API tokens
// and signing keys. This file stores them and answers the lookups of the
// API; what they mean (password and token checks, glob matching, which
// grant wins) is package auth's, which db does not import. The subjects of
// grants are the one convention both share (see the subject constants).
//
// These tables take no part in the locks of the registry's own tables: no
// transaction touches both. Among themselves, transactions lock users (in
// name order) before groups, and both before the grants, memberships and
// tokens that belong to them, so a grant or token can never be written for
// a user or group that a concurrent transaction is deleting.

// The subjects of grants other than user names: what AuthLookup gathers for
// a user. They are package auth's spelling; db knows them only to look up
// the grants that apply to a request.
const (
	subjectAnonymous     = "anonymous"     // everyone, logged in or not
	subjectAuthenticated = "authenticated" // every known user
	subjectGroupPrefix   = "group:"        // followed by a group name
)

// User is a user account. PasswordHash is filled only by AuthLookup, the one
// caller that checks passwords.
type User struct {
	Name         string
	Admin        bool
	PasswordHash string
	Groups       []string // in name order
	CreatedAt    time.Time
}

// UserCreate creates a user; ErrUserExists if the name is taken.
func (d *DB) UserCreate(ctx context.Context, name, passwordHash string, admin bool) error {
	tag, err := d.q.Exec(ctx, `
INSERT INTO users (name, password_hash, admin) VALUES ($1, $2, $3)
ON CONFLICT (name) DO NOTHING`, name, passwordHash, admin)
	if err != nil {
		return fmt.Errorf("create user %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return notFound(ErrUserExists, "user %s already exists", name)
	}
	return nil
}

// UserSetPassword sets the password hash of user name, creating the user
// (not an admin) if it does not exist; created says which. It is how
// htpasswd files are imported.
func (d *DB) UserSetPassword(ctx context.Context, name, passwordHash string) (created bool, err error) {
	// xmax is 0 on a row version this statement inserted, and the locking
	// transaction's id on one it updated.
	err = d.q.QueryRow(ctx, `
INSERT INTO users (name, password_hash) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET password_hash = EXCLUDED.password_hash
RETURNING xmax = 0`, name, passwordHash).Scan(&created)
	if err != nil {
		return false, fmt.Errorf("set password of user %s: %w", name, err)
	}
	return created, nil
}

// UserDelete deletes user name with its API tokens, its group memberships
// and the grants whose subject it is; ErrUserUnknown if there is none.
//
// Locks: the user row FOR UPDATE, its tokens in id order (as TokenTouch
// does, before the cascade deletes them in no set order), then its grants.
// A concurrent GrantSet for the user holds the row FOR KEY SHARE while it
// writes, so either it commits first and the grant is deleted here (the
// last statement sees it), or it waits and then finds no user.
func (d *DB) UserDelete(ctx context.Context, name string) error {
	return d.withTx(ctx, func(tx pgx.Tx) error {
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM users WHERE name = $1 FOR UPDATE`, name).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return userUnknown(name)
		}
		if err != nil {
			return fmt.Errorf("lock user %s: %w", name, err)
		}
		if _, err := tx.Exec(ctx, `SELECT id FROM api_tokens WHERE user_name = $1 ORDER BY id FOR UPDATE`, name); err != nil {
			return fmt.Errorf("lock the API tokens of user %s: %w", name, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM users WHERE name = $1`, name); err != nil {
			return fmt.Errorf("delete user %s: %w", name, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM grants WHERE subject = $1`, name); err != nil {
			return fmt.Errorf("delete the grants of user %s: %w", name, err)
		}
		return nil
	})
}

// UserList returns every user, in name order, with its groups (and no
// password hash).
func (d *DB) UserList(ctx context.Context) ([]User, error) {
	rows, err := d.q.Query(ctx, `
SELECT u.name, u.admin, u.created_at,
       ARRAY(SELECT m.group_name FROM group_members m WHERE m.user_name = u.name ORDER BY m.group_name)
FROM users u ORDER BY u.name`)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	users, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (User, error) {
		var u User
		err := row.Scan(&u.Name, &u.Admin, &u.CreatedAt, &u.Groups)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return nonNil(users), nil
}

// lockUsers locks the rows of users FOR KEY SHARE, in name order (see the
// lock order above), so that none of them can be deleted before the
// transaction ends; the error names every one that does not exist.
func lockUsers(ctx context.Context, tx pgx.Tx, users []string) error {
	rows, err := tx.Query(ctx, `
SELECT name FROM users WHERE name = ANY($1) ORDER BY name FOR KEY SHARE`, users)
	if err != nil {
		return fmt.Errorf("look up users: %w", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("look up users: %w", err)
	}
	var missing []string
	for _, u := range users {
		if !slices.Contains(found, u) && !slices.Contains(missing, u) {
			missing = append(missing, u)
		}
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return userUnknown(missing[0])
	}
	return notFound(ErrUserUnknown, "users %s do not exist", strings.Join(missing, ", "))
}

// GroupAdd adds users to group, creating the group if it does not exist
// (with no users: an empty group, which grants can then name). If a user
// does not exist, the error names it (ErrUserUnknown) and nothing changes.
func (d *DB) GroupAdd(ctx context.Context, group string, users []string) error {
	return d.withTx(ctx, func(tx pgx.Tx) error {
		if err := lockUsers(ctx, tx, users); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO groups (name) VALUES ($1) ON CONFLICT (name) DO NOTHING`, group); err != nil {
			return fmt.Errorf("create group %s: %w", group, err)
		}
		_, err := tx.Exec(ctx, `
INSERT INTO group_members (group_name, user_name) SELECT $1, u FROM unnest($2::text[]) u
ON CONFLICT DO NOTHING`, group, users)
		if err != nil {
			return fmt.Errorf("add members to group %s: %w", group, err)
		}
		return nil
	})
}

// GroupRemove takes users out of group. Users that are not members are
// passed over; ErrGroupUnknown if the group does not exist.
func (d *DB) GroupRemove(ctx context.Context, group string, users []string) error {
	var exists bool
	err := d.q.QueryRow(ctx, `
WITH gone AS (DELETE FROM group_members WHERE group_name = $1 AND user_name = ANY($2))
SELECT EXISTS (SELECT 1 FROM groups WHERE name = $1)`, group, users).Scan(&exists)
	if err != nil {
		return fmt.Errorf("remove members of group %s: %w", group, err)
	}
	if !exists {
		return groupUnknown(group)
	}
	return nil
}

// GroupDelete deletes group, its memberships and the grants whose subject
// it is; ErrGroupUnknown if there is none. Locks: the group row, then its
// grants (as UserDelete).
func (d *DB) GroupDelete(ctx context.Context, group string) error {
	return d.withTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM groups WHERE name = $1`, group)
		if err != nil {
			return fmt.Errorf("delete group %s: %w", group, err)
		}
		if tag.RowsAffected() == 0 {
			return groupUnknown(group)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM grants WHERE subject = $1`, subjectGroupPrefix+group); err != nil {
			return fmt.Errorf("delete the grants of group %s: %w", group, err)
		}
		return nil
	})
}

// Grant gives Subject the Actions on the repositories matching RepoGlob.
type Grant struct {
	Subject  string // a user name, "group:<name>", "anonymous" or "authenticated"
	RepoGlob string
	Actions  []string // of "pull", "push", "delete"; may be empty (see the grants table)
}

// GrantSet creates the grant of g.Subject on g.RepoGlob, or replaces its
// actions. A user or group subject must exist (ErrUserUnknown,
// ErrGroupUnknown): a grant must not wait for a future user of that name.
//
// Locks: the user or group row FOR KEY SHARE, then the grant, so that
// UserDelete and GroupDelete either see the grant or make this fail.
func (d *DB) GrantSet(ctx context.Context, g Grant) error {
	return d.withTx(ctx, func(tx pgx.Tx) error {
		switch group, isGroup := strings.CutPrefix(g.Subject, subjectGroupPrefix); {
		case g.Subject == subjectAnonymous || g.Subject == subjectAuthenticated:
		case isGroup:
			var one int
			err := tx.QueryRow(ctx, `SELECT 1 FROM groups WHERE name = $1 FOR KEY SHARE`, group).Scan(&one)
			if errors.Is(err, pgx.ErrNoRows) {
				return groupUnknown(group)
			}
			if err != nil {
				return fmt.Errorf("look up group %s: %w", group, err)
			}
		default:
			if err := lockUsers(ctx, tx, []string{g.Subject}); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `
INSERT INTO grants (subject, repo_glob, actions) VALUES ($1, $2, $3)
ON CONFLICT (subject, repo_glob) DO UPDATE SET actions = EXCLUDED.actions`,
			g.Subject, g.RepoGlob, nonNil(g.Actions))
		if err != nil {
			return fmt.Errorf("grant %s on %s: %w", g.Subject, g.RepoGlob, err)
		}
		return nil
	})
}

// GrantRevoke deletes the grant of subject on glob; ErrGrantUnknown if
// there is none.
func (d *DB) GrantRevoke(ctx context.Context, subject, glob string) error {
	tag, err := d.q.Exec(ctx, `DELETE FROM grants WHERE subject = $1 AND repo_glob = $2`, subject, glob)
	if err != nil {
		return fmt.Errorf("revoke the grant of %s on %s: %w", subject, glob, err)
	}
	if tag.RowsAffected() == 0 {
		return notFound(ErrGrantUnknown, "%s has no grant on %s", subject, glob)
	}
	return nil
}

// GrantList returns every grant, by subject then glob.
func (d *DB) GrantList(ctx context.Context) ([]Grant, error) {
	rows, err := d.q.Query(ctx, `SELECT subject, repo_glob, actions FROM grants ORDER BY subject, repo_glob`)
	if err != nil {
		return nil, fmt.Errorf("list grants: %w", err)
	}
	grants, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Grant, error) {
		var g Grant
		err := row.Scan(&g.Subject, &g.RepoGlob, &g.Actions)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("list grants: %w", err)
	}
	return nonNil(grants), nil
}

// APIToken is an API token as stored: never its secret, only a hash of it.
type APIToken struct {
	ID          string // the public part of the token
	User        string
	SecretHash  []byte // filled by AuthLookup only
	Scopes      []string
	Description string
	CreatedAt   time.Time
	ExpiresAt   *time.Time // nil: never
	LastUsedAt  *time.Time // nil: never used (as far as TokenTouch was told)
	RevokedAt   *time.Time // nil: not revoked
}

// TokenCreate stores t (CreatedAt is set by the database; LastUsedAt and
// RevokedAt are ignored). Its user must exist (ErrUserUnknown).
func (d *DB) TokenCreate(ctx context.Context, t APIToken) error {
	// FOR KEY SHARE: a concurrent UserDelete either commits first (no row
	// here) or waits for this insert and then deletes the token with the
	// user.
	tag, err := d.q.Exec(ctx, `
INSERT INTO api_tokens (id, user_name, secret_hash, scopes, description, expires_at)
SELECT $1, name, $3, $4, $5, $6 FROM users WHERE name = $2 FOR KEY SHARE`,
		t.ID, t.User, t.SecretHash, nonNil(t.Scopes), t.Description, t.ExpiresAt)
	if err != nil {
		return fmt.Errorf("create API token for %s: %w", t.User, err)
	}
	if tag.RowsAffected() == 0 {
		return userUnknown(t.User)
	}
	return nil
}

// TokenRevoke marks token id revoked (a token revoked before keeps its
// first revocation time); ErrTokenUnknown if there is none.
func (d *DB) TokenRevoke(ctx context.Context, id string) error {
	tag, err := d.q.Exec(ctx, `UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("revoke API token %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return notFound(ErrTokenUnknown, "API token %s does not exist", id)
	}
	return nil
}

// TokenList returns every API token, without secret hashes, by user, then
// creation.
func (d *DB) TokenList(ctx context.Context) ([]APIToken, error) {
	rows, err := d.q.Query(ctx, `
SELECT id, user_name, scopes, description, created_at, expires_at, last_used_at, revoked_at
FROM api_tokens ORDER BY user_name, created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list API tokens: %w", err)
	}
	tokens, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (APIToken, error) {
		var t APIToken
		err := row.Scan(&t.ID, &t.User, &t.Scopes, &t.Description, &t.CreatedAt, &t.ExpiresAt, &t.LastUsedAt, &t.RevokedAt)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("list API tokens: %w", err)
	}
	return nonNil(tokens), nil
}

// TokenTouch records when tokens were last used: used maps token ids to a
// time of use. The API gathers uses in memory and flushes them every few
// seconds, so that a pull costs no write. A time older than the one stored
// (another replica's later use) changes nothing; unknown ids are passed
// over.
//
// Locks: the tokens' rows, in id order, so that two replicas flushing the
// same tokens wait for each other rather than deadlock. A deadlock with a
// UserDelete (whose cascade locks the user's tokens in no set order) is
// retried by withTx.
func (d *DB) TokenTouch(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	ids := slices.Sorted(maps.Keys(used))
	ats := make([]time.Time, len(ids))
	for i, id := range ids {
		ats[i] = used[id]
	}
	return d.withTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
WITH used AS (
    SELECT t.id, u.at FROM api_tokens t
    JOIN unnest($1::text[], $2::timestamptz[]) AS u(id, at) ON u.id = t.id
    WHERE t.last_used_at IS NULL OR t.last_used_at < u.at
    ORDER BY t.id
    FOR UPDATE OF t
)
UPDATE api_tokens t SET last_used_at = GREATEST(t.last_used_at, used.at)
FROM used WHERE t.id = used.id`, ids, ats)
		if err != nil {
			return fmt.Errorf("record the use of %d API tokens: %w", len(ids), err)
		}
		return nil
	})
}

// SigningKey is a key that signs the registry's bearer tokens.
type SigningKey struct {
	ID        string // key id
	Private   []byte // PKCS#8, DER
	CreatedAt time.Time
}

// signingKeyLock is the advisory lock (two-key form: authLockSpace, 1)
// under which the first signing key is created, so that replicas starting
// together on an empty table create exactly one.
const (
	authLockSpace  = 0x6175 // "au"
	signingKeyLock = 1
)

// SigningKeys returns the signing keys, newest first. If there is none, it
// calls create and stores the key it returns, under an advisory lock:
// replicas starting at once create one key between them (the others wait,
// then read it). create may be called and its key discarded if the
// transaction is retried.
func (d *DB) SigningKeys(ctx context.Context, create func() (SigningKey, error)) ([]SigningKey, error) {
	keys, err := signingKeys(ctx, d.q)
	if err != nil || len(keys) > 0 {
		return keys, err
	}
	err = d.withTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1::int, $2::int)`, authLockSpace, signingKeyLock); err != nil {
			return fmt.Errorf("lock the signing keys: %w", err)
		}
		// After the lock: sees the key of whoever held it before.
		if keys, err = signingKeys(ctx, tx); err != nil || len(keys) > 0 {
			return err
		}
		k, err := create()
		if err != nil {
			return fmt.Errorf("create a signing key: %w", err)
		}
		err = tx.QueryRow(ctx, `INSERT INTO signing_keys (id, private_key) VALUES ($1, $2) RETURNING created_at`,
			k.ID, k.Private).Scan(&k.CreatedAt)
		if err != nil {
			return fmt.Errorf("store signing key %s: %w", k.ID, err)
		}
		keys = []SigningKey{k}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return keys, nil
}

func signingKeys(ctx context.Context, q querier) ([]SigningKey, error) {
	rows, err := q.Query(ctx, `SELECT id, private_key, created_at FROM signing_keys ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("read signing keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (SigningKey, error) {
		var k SigningKey
		err := row.Scan(&k.ID, &k.Private, &k.CreatedAt)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("read signing keys: %w", err)
	}
	return keys, nil
}

// AuthInfo is what the API needs to authenticate and authorize a request.
type AuthInfo struct {
	User  *User     // nil when no user name was given, or it is unknown
	Token *APIToken // nil when no token id was given, or it is unknown; in any state (expired, revoked, another user's): the caller checks
	// Grants holds every grant whose subject is "anonymous", and when the
	// user exists also its name, "authenticated" and "group:<g>" for each of
	// its groups; by subject, then glob.
	Grants []Grant
}

// authLookupSQL answers a batch of AuthLookups in one round trip, and
// locks nothing. For each key the user (with its groups) and the token are
// each at most one row, joined to the key's row; the grants come as one
// JSON array, looked up by subject through the grants' primary key.
const authLookupSQL = `
SELECT k.i, u.name, u.admin, u.password_hash, u.created_at, u.groups,
       t.id, t.user_name, t.secret_hash, t.scopes, t.description, t.created_at, t.expires_at, t.last_used_at, t.revoked_at,
       (SELECT coalesce(json_agg(json_build_object('s', g.subject, 'g', g.repo_glob, 'a', g.actions)
                                 ORDER BY g.subject, g.repo_glob), '[]')
        FROM grants g
        WHERE g.subject = ANY (ARRAY['` + subjectAnonymous + `'] || CASE WHEN u.name IS NULL THEN '{}'::text[] ELSE
                  ARRAY[u.name, '` + subjectAuthenticated + `'] || ARRAY(SELECT '` + subjectGroupPrefix + `' || x FROM unnest(u.groups) x) END))
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(usr, tid, i)
LEFT JOIN LATERAL (
    SELECT name, admin, password_hash, created_at,
           ARRAY(SELECT m.group_name FROM group_members m WHERE m.user_name = users.name ORDER BY m.group_name) AS groups
    FROM users WHERE name = k.usr
) u ON true
LEFT JOIN api_tokens t ON t.id = k.tid`

// AuthLookup returns the user named user, the API token tokenID and the
// grants that apply to them, in one statement: the API calls it on every
// request when authentication is on (for anonymous ones with both empty).
// Concurrent calls share statements, as manifest reads do (see
// coalescer): a statement of its own per request would make the round
// trip to PostgreSQL, not the lookup, the cost of every authenticated
// pull.
func (d *DB) AuthLookup(ctx context.Context, user, tokenID string) (AuthInfo, error) {
	rctx, cancel := d.guard.deadline(ctx)
	defer cancel()
	info, err := d.authLookups.do(rctx, authKey{user, tokenID})
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		err = d.guard.observe(ctx, err) // timed out in the queue
	}
	if err != nil {
		return AuthInfo{}, fmt.Errorf("look up credentials of %q: %w", user, err)
	}
	return info, nil
}

// authKey is one AuthLookup.
type authKey struct{ user, tokenID string }

// authLookupBatch runs a batch of AuthLookups (see coalescer).
func (d *DB) authLookupBatch(ctx context.Context, keys []authKey) ([]AuthInfo, []error, error) {
	users := make([]string, len(keys))
	tokens := make([]string, len(keys))
	for i, k := range keys {
		users[i], tokens[i] = k.user, k.tokenID
	}
	rows, err := d.reads.Query(ctx, authLookupSQL, users, tokens)
	if err != nil {
		return nil, nil, d.guard.observe(ctx, err)
	}
	defer rows.Close()
	infos := make([]AuthInfo, len(keys))
	for rows.Next() {
		var i int64
		info, err := scanAuthInfo(rows, &i)
		if err != nil {
			return nil, nil, d.guard.observe(ctx, err)
		}
		infos[i-1] = info
	}
	if err := d.guard.observe(ctx, rows.Err()); err != nil {
		return nil, nil, err
	}
	return infos, make([]error, len(keys)), nil
}

// scanAuthInfo reads one row of authLookupSQL, its key's index into i.
func scanAuthInfo(row pgx.Row, i *int64) (AuthInfo, error) {
	var (
		uName, uHash              *string
		uAdmin                    *bool
		uCreated                  *time.Time
		uGroups                   []string
		tID, tUser, tDesc         *string
		tHash                     []byte
		tScopes                   []string
		tCreated                  *time.Time
		tExpires, tUsed, tRevoked *time.Time
		grants                    []struct {
			S string   `json:"s"`
			G string   `json:"g"`
			A []string `json:"a"`
		}
	)
	err := row.Scan(i, &uName, &uAdmin, &uHash, &uCreated, &uGroups,
		&tID, &tUser, &tHash, &tScopes, &tDesc, &tCreated, &tExpires, &tUsed, &tRevoked,
		&grants)
	if err != nil {
		return AuthInfo{}, err
	}
	var info AuthInfo
	if uName != nil {
		info.User = &User{Name: *uName, Admin: *uAdmin, PasswordHash: *uHash, Groups: nonNil(uGroups), CreatedAt: *uCreated}
	}
	if tID != nil {
		info.Token = &APIToken{ID: *tID, User: *tUser, SecretHash: tHash, Scopes: nonNil(tScopes), Description: *tDesc,
			CreatedAt: *tCreated, ExpiresAt: tExpires, LastUsedAt: tUsed, RevokedAt: tRevoked}
	}
	info.Grants = make([]Grant, len(grants))
	for i, g := range grants {
		info.Grants[i] = Grant{Subject: g.S, RepoGlob: g.G, Actions: nonNil(g.A)}
	}
	return info, nil
}

// GrantPattern is a grant as RepositoryListVisible matches it: Regex is the
// grant's glob as an anchored POSIX regular expression (auth.GlobRegex),
// Length the glob's length, which decides which of a subject's matching
// grants wins.
type GrantPattern struct {
	Subject string
	Regex   string
	Length  int
	Pull    bool
}

// repositoryListVisibleSQL walks the repositories' name index from $1 and
// keeps the names that some subject's winning patterns let the caller pull:
// of the subject's patterns that match the name, those of the greatest
// Length decide, and one of them must allow pull. It stops after $6 rows.
const repositoryListVisibleSQL = `
SELECT r.name FROM repositories r
WHERE r.name > $1 AND EXISTS (
    SELECT 1 FROM (
        SELECT p.pull, p.length = max(p.length) OVER (PARTITION BY p.subject) AS longest
        FROM unnest($2::text[], $3::text[], $4::int[], $5::bool[]) AS p(subject, regex, length, pull)
        WHERE r.name ~ p.regex
    ) m
    WHERE m.longest AND m.pull)
ORDER BY r.name LIMIT $6`

// RepositoryListVisible is RepositoryList for a caller who may pull only
// some repositories: up to n names after last, in byte order, that grants
// let the caller pull, and whether more follow. It costs a walk of the
// repositories from last until n+1 visible ones are found (each name
// matched against the patterns), so a caller who sees few of many
// repositories walks many of them.
func (d *DB) RepositoryListVisible(ctx context.Context, last string, n int, grants []GrantPattern) ([]string, bool, error) {
	// A subject none of whose patterns allows pull makes nothing visible:
	// leave its patterns out of every comparison.
	pulls := map[string]bool{}
	for _, g := range grants {
		pulls[g.Subject] = pulls[g.Subject] || g.Pull
	}
	var subjects, regexes []string
	var lengths []int32
	var pull []bool
	for _, g := range grants {
		if pulls[g.Subject] {
			subjects, regexes = append(subjects, g.Subject), append(regexes, g.Regex)
			lengths, pull = append(lengths, int32(g.Length)), append(pull, g.Pull)
		}
	}
	if len(subjects) == 0 {
		return []string{}, false, nil
	}
	rows, err := d.q.Query(ctx, repositoryListVisibleSQL, last, subjects, regexes, lengths, pull, n+1)
	if err != nil {
		return nil, false, fmt.Errorf("list visible repositories: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, false, fmt.Errorf("list visible repositories: %w", err)
	}
	names = nonNil(names)
	if len(names) > n {
		return names[:n], true, nil
	}
	return names, false, nil
}

// nonNil returns s, or an empty slice for nil, so that callers encode
// empty lists as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
