package db

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Retention policies remove tags that none of a policy's keep rules keeps,
// and untagged manifests that nothing references, in the repositories the
// policy's globs match.
//
// One query (retentionSetSQL, retentionUntaggedSQL) computes what a policy
// removes. A preview runs it in a transaction that is rolled back; a run
// runs it, locks what it found, runs it again under those locks and removes
// what both found, through the same internals as an untag by a client
// (tagRemove) and a delete by digest (manifestRemove): the same tag
// history, audit rows, events and garbage candidates, with the actor
// retention:<NAME>. A run works one repository per transaction, so a large
// registry is never locked at once; each transaction computes its
// repository's set afresh under its locks. So a run removes what a preview
// showed if nothing changed in between, and never a tag that a push
// created or moved after the preview and that the policy keeps: the second
// query sees the push, or the push waits for the run.

// Errors of retention administration.
var (
	ErrRetentionUnknown = errors.New("retention policy not known")
	ErrRetentionExists  = errors.New("retention policy already exists")
	// ErrRetentionBusy means another process is running the policy now.
	ErrRetentionBusy = errors.New("retention policy is running in another process")
	// ErrPullStatsMissing means a policy asks for --keep-pulled-within but
	// the schema records no pull times.
	ErrPullStatsMissing = errors.New("--keep-pulled-within needs pull statistics (table tag_pulls), which this database does not record; run berth migrate up with a build that records them")
)

// RetentionPolicy is a policy as stored. A zero rule is a rule not given.
type RetentionPolicy struct {
	Name string
	// Repos are the globs of the repositories it applies to, and
	// ReposRegexp the same as anchored regular expressions.
	Repos       []string
	ReposRegexp []string
	// KeepLast keeps the N most recently pushed (or moved) tags of each
	// repository.
	KeepLast int
	// KeepPulledWithin and KeepPushedWithin keep tags pulled, or pushed
	// or moved, within that long.
	KeepPulledWithin time.Duration
	KeepPushedWithin time.Duration
	// KeepTags keeps tags whose name matches any of these regular
	// expressions (Go's syntax, as tag rules; anywhere in the name unless
	// anchored).
	KeepTags []string
	// DeleteUntaggedAfter, when set, deletes live manifests that have had
	// no tag for that long and that nothing references.
	DeleteUntaggedAfter *time.Duration
	// Schedule is how often the replicas run it; 0: by hand only.
	Schedule  time.Duration
	CreatedAt time.Time

	LastRunAt                     time.Time // zero: never run
	LastRunTags, LastRunManifests int64
	TagsRemoved, ManifestsRemoved int64 // since the policy was created
}

// HasTagRules reports whether the policy removes tags at all: a policy with
// no keep rule removes none (rather than every one).
func (p RetentionPolicy) HasTagRules() bool {
	return p.KeepLast > 0 || p.KeepPulledWithin > 0 || p.KeepPushedWithin > 0 || len(p.KeepTags) > 0
}

// RetentionActor is the actor recorded for the changes of policy name.
func RetentionActor(name string) Actor { return Actor{Name: "retention:" + name} }

// Removal is one thing a policy removes: a tag, or an untagged manifest.
type Removal struct {
	Repository string
	Tag        string // empty for a manifest
	Digest     string // what the tag points at, or the manifest
	// Rule is the first keep rule that failed to keep a tag (the flag
	// name, e.g. "keep-last"), or "delete-untagged-after" for a manifest.
	Rule string
	// Reason says, in words, every rule that failed, and since when.
	Reason string
}

// pgDuration converts d for an interval parameter: microseconds, or NULL.
func pgDuration(d time.Duration, set bool) *int64 {
	if !set {
		return nil
	}
	us := d.Microseconds()
	return &us
}

// RetentionAdd creates policy p; ErrRetentionExists if the name is taken.
// The keep patterns must compile as Go regular expressions.
func (d *DB) RetentionAdd(ctx context.Context, p RetentionPolicy) error {
	if p.KeepPulledWithin > 0 {
		ok, err := d.pullStatsRecorded(ctx)
		if err != nil {
			return err
		}
		if !ok {
			return ErrPullStatsMissing
		}
	}
	for _, re := range p.KeepTags {
		if _, err := regexp.Compile(re); err != nil {
			return fmt.Errorf("--keep-tags %q is not a valid regular expression: %w", re, err)
		}
	}
	var keepLast *int
	if p.KeepLast > 0 {
		keepLast = &p.KeepLast
	}
	var untagged time.Duration
	if p.DeleteUntaggedAfter != nil {
		untagged = *p.DeleteUntaggedAfter
	}
	_, err := d.q.Exec(ctx, `
INSERT INTO retention_policies (name, repos, repos_re, keep_last, keep_pulled_within, keep_pushed_within,
                                keep_tags, delete_untagged_after, schedule)
VALUES ($1, $2, $3, $4, $5 * interval '1 microsecond', $6 * interval '1 microsecond',
        $7, $8 * interval '1 microsecond', $9 * interval '1 microsecond')`,
		p.Name, p.Repos, p.ReposRegexp, keepLast,
		pgDuration(p.KeepPulledWithin, p.KeepPulledWithin > 0), pgDuration(p.KeepPushedWithin, p.KeepPushedWithin > 0),
		p.KeepTags, pgDuration(untagged, p.DeleteUntaggedAfter != nil), pgDuration(p.Schedule, p.Schedule > 0))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return notFound(ErrRetentionExists, "retention policy %s already exists", p.Name)
	}
	if err != nil {
		return fmt.Errorf("add retention policy %s: %w", p.Name, err)
	}
	return nil
}

// pullStatsRecorded reports whether the schema records when tags were
// last pulled (tag_pulls.last_pulled_at): what --keep-pulled-within
// compares with.
func (d *DB) pullStatsRecorded(ctx context.Context) (bool, error) {
	var ok bool
	err := d.q.QueryRow(ctx, `SELECT to_regclass('tag_pulls') IS NOT NULL`).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("look for pull statistics: %w", err)
	}
	return ok, nil
}

const retentionColumns = `
name, repos, repos_re, coalesce(keep_last, 0),
coalesce((extract(epoch FROM keep_pulled_within) * 1000000)::bigint, 0),
coalesce((extract(epoch FROM keep_pushed_within) * 1000000)::bigint, 0),
keep_tags, (extract(epoch FROM delete_untagged_after) * 1000000)::bigint,
coalesce((extract(epoch FROM schedule) * 1000000)::bigint, 0),
created_at, last_run_at, last_run_tags, last_run_manifests, tags_removed, manifests_removed`

func scanRetention(row pgx.Row) (RetentionPolicy, error) {
	var p RetentionPolicy
	var pulled, pushed, schedule int64
	var untagged *int64
	var lastRun *time.Time
	err := row.Scan(&p.Name, &p.Repos, &p.ReposRegexp, &p.KeepLast, &pulled, &pushed, &p.KeepTags, &untagged, &schedule,
		&p.CreatedAt, &lastRun, &p.LastRunTags, &p.LastRunManifests, &p.TagsRemoved, &p.ManifestsRemoved)
	if err != nil {
		return p, err
	}
	p.KeepPulledWithin = time.Duration(pulled) * time.Microsecond
	p.KeepPushedWithin = time.Duration(pushed) * time.Microsecond
	p.Schedule = time.Duration(schedule) * time.Microsecond
	if untagged != nil {
		u := time.Duration(*untagged) * time.Microsecond
		p.DeleteUntaggedAfter = &u
	}
	if lastRun != nil {
		p.LastRunAt = *lastRun
	}
	return p, nil
}

// RetentionList returns every policy, by name.
func (d *DB) RetentionList(ctx context.Context) ([]RetentionPolicy, error) {
	rows, err := d.q.Query(ctx, `SELECT `+retentionColumns+` FROM retention_policies ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list retention policies: %w", err)
	}
	ps, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RetentionPolicy, error) { return scanRetention(row) })
	if err != nil {
		return nil, fmt.Errorf("list retention policies: %w", err)
	}
	return ps, nil
}

// RetentionGet returns policy name; ErrRetentionUnknown if there is none.
func (d *DB) RetentionGet(ctx context.Context, name string) (RetentionPolicy, error) {
	return retentionGet(ctx, d.q, name)
}

func retentionGet(ctx context.Context, q querier, name string) (RetentionPolicy, error) {
	p, err := scanRetention(q.QueryRow(ctx, `SELECT `+retentionColumns+` FROM retention_policies WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return p, notFound(ErrRetentionUnknown, "retention policy %s is not known", name)
	}
	if err != nil {
		return p, fmt.Errorf("read retention policy %s: %w", name, err)
	}
	return p, nil
}

// RetentionDelete removes policy name. A run in progress finishes.
func (d *DB) RetentionDelete(ctx context.Context, name string) error {
	tag, err := d.q.Exec(ctx, `DELETE FROM retention_policies WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("delete retention policy %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return notFound(ErrRetentionUnknown, "retention policy %s is not known", name)
	}
	return nil
}

// retentionTagsSQL finds the tags policy removes: per repository whose
// name matches $1 (and is $2, unless NULL), the tags ranked by updated_at
// (set when a tag is created or moved) newest first, that no keep rule
// keeps. $3 keep-last, $4 keep-pushed-within (µs) and $5
// keep-pulled-within (µs) are NULL when not given. The pull rule's column
// is only named when the rule is given (see retentionSet). The keep
// patterns are Go regular expressions, as tag rules are, so they are
// matched on the rows this returns (see retentionSet).
const retentionTagsSQL = `
SELECT repo, tag, digest, updated_at, last_pulled
FROM (
    SELECT x.repo, x.tag, m.digest, x.updated_at, x.last_pulled,
           coalesce(x.rank <= $3::int, false) AS by_last,
           coalesce(x.updated_at > now() - $4::bigint * interval '1 microsecond', false) AS by_pushed,
           coalesce(x.last_pulled > now() - $5::bigint * interval '1 microsecond', false) AS by_pulled
    FROM (
        SELECT r.name AS repo, t.name AS tag, t.manifest_id, t.updated_at, %s AS last_pulled,
               row_number() OVER (PARTITION BY t.repository_id ORDER BY t.updated_at DESC, t.name) AS rank
        FROM repositories r JOIN tags t ON t.repository_id = r.id
        WHERE r.name ~ ANY($1::text[]) AND ($2::text IS NULL OR r.name = $2)
    ) x
    JOIN manifests m ON m.id = x.manifest_id
) k
WHERE NOT (by_last OR by_pushed OR by_pulled)
ORDER BY repo, tag`

// retentionUntaggedSQL finds the untagged manifests policy removes, in
// the repositories matching $1 (and $2, unless NULL): live, no tag, not
// listed by a live index, untagged for longer than $3 (µs), and not tied
// to a manifest that is kept: neither the subject of a kept referrer nor a
// referrer attached to a kept subject (repeatedly, so that a signature of
// a signature follows its image).
//
// "Untagged since" is the latest of the manifest's creation and the last
// audit row that names it: as a tag's old target (the tag left it), as a
// tag's new target, or as pushed (a push revives a tombstone). It errs on
// the side of keeping: any mention restarts the clock.
const retentionUntaggedSQL = `
WITH RECURSIVE cand AS (
    SELECT m.id, m.repository_id, r.name AS repo, m.digest, m.subject_digest, s.since
    FROM repositories r
    JOIN manifests m ON m.repository_id = r.id AND m.deleted_at IS NULL
    CROSS JOIN LATERAL (
        SELECT greatest(m.created_at,
            (SELECT max(a.at) FROM audit_log a WHERE a.repository = r.name AND a.old_digest = m.digest),
            (SELECT max(a.at) FROM audit_log a WHERE a.digest = m.digest AND a.repository = r.name)) AS since
    ) s
    WHERE r.name ~ ANY($1::text[]) AND ($2::text IS NULL OR r.name = $2)
      AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)
      AND NOT EXISTS (SELECT 1 FROM manifest_children c JOIN manifests p ON p.id = c.parent_id
                      WHERE c.child_id = m.id AND p.deleted_at IS NULL)
      AND s.since <= now() - $3::bigint * interval '1 microsecond'
), kept AS (
    SELECT m.id, m.repository_id, m.digest, m.subject_digest
    FROM cand c JOIN manifests m ON m.repository_id = c.repository_id AND m.digest = c.subject_digest
    WHERE m.deleted_at IS NULL AND m.id NOT IN (SELECT id FROM cand)
    UNION
    SELECT m.id, m.repository_id, m.digest, m.subject_digest
    FROM cand c JOIN manifests m ON m.repository_id = c.repository_id AND m.subject_digest = c.digest
    WHERE m.deleted_at IS NULL AND m.id NOT IN (SELECT id FROM cand)
    UNION
    SELECT c.id, c.repository_id, c.digest, c.subject_digest
    FROM cand c JOIN kept k ON k.repository_id = c.repository_id
        AND (c.subject_digest = k.digest OR k.subject_digest = c.digest)
)
SELECT repo, digest, coalesce(subject_digest, ''), since FROM cand
WHERE id NOT IN (SELECT id FROM kept)
ORDER BY repo, digest`

// retentionSet is what policy p removes now in the repositories it
// matches (only repo, unless empty): tags, then manifests, each by
// repository and name. subjects maps a manifest to its subject, for the
// lock order.
func retentionSet(ctx context.Context, q pgx.Tx, p RetentionPolicy, repo string) (tags, manifests []Removal, subjects map[string]string, err error) {
	var only *string
	if repo != "" {
		only = &repo
	}
	if p.HasTagRules() {
		pulled := "NULL::timestamptz"
		if p.KeepPulledWithin > 0 {
			// A tag never pulled has no row: NULL, kept by no pull.
			pulled = "(SELECT p.last_pulled_at FROM tag_pulls p WHERE p.repository_id = t.repository_id AND p.name = t.name)"
		}
		var keepLast *int
		if p.KeepLast > 0 {
			keepLast = &p.KeepLast
		}
		keep := make([]*regexp.Regexp, len(p.KeepTags))
		for i, re := range p.KeepTags {
			if keep[i], err = regexp.Compile(re); err != nil { // checked when added
				return nil, nil, nil, fmt.Errorf("retention policy %s: --keep-tags %q: %w", p.Name, re, err)
			}
		}
		rows, err := q.Query(ctx, fmt.Sprintf(retentionTagsSQL, pulled), p.ReposRegexp, only, keepLast,
			pgDuration(p.KeepPushedWithin, p.KeepPushedWithin > 0), pgDuration(p.KeepPulledWithin, p.KeepPulledWithin > 0))
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
			return nil, nil, nil, ErrPullStatsMissing
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("find the tags retention policy %s removes: %w", p.Name, err)
		}
		tags, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Removal, error) {
			var r Removal
			var updated time.Time
			var lastPulled *time.Time
			if err := row.Scan(&r.Repository, &r.Tag, &r.Digest, &updated, &lastPulled); err != nil {
				return r, err
			}
			r.Rule, r.Reason = p.tagReason(updated, lastPulled)
			return r, nil
		})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("find the tags retention policy %s removes: %w", p.Name, err)
		}
		tags = slices.DeleteFunc(tags, func(r Removal) bool {
			return slices.ContainsFunc(keep, func(re *regexp.Regexp) bool { return re.MatchString(r.Tag) })
		})
		if tags, err = withoutRuledTags(ctx, q, tags, RetentionActor(p.Name)); err != nil {
			return nil, nil, nil, err
		}
	}
	if p.DeleteUntaggedAfter != nil {
		rows, err := q.Query(ctx, retentionUntaggedSQL, p.ReposRegexp, only, p.DeleteUntaggedAfter.Microseconds())
		if err != nil {
			return nil, nil, nil, fmt.Errorf("find the manifests retention policy %s removes: %w", p.Name, err)
		}
		subjects = map[string]string{}
		manifests, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Removal, error) {
			r := Removal{Rule: "delete-untagged-after"}
			var since time.Time
			var subject string
			if err := row.Scan(&r.Repository, &r.Digest, &subject, &since); err != nil {
				return r, err
			}
			r.Reason = fmt.Sprintf("untagged for over %s (since %s)", FormatDays(*p.DeleteUntaggedAfter), minute(since))
			if subject != "" {
				subjects[r.Repository+"@"+r.Digest] = subject
			}
			return r, nil
		})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("find the manifests retention policy %s removes: %w", p.Name, err)
		}
	}
	return tags, manifests, subjects, nil
}

// withoutRuledTags drops the tags that a tag rule covers: retention
// never removes an immutable or a protected tag (its actor has no delete
// right, so both kinds refuse it). The rules are Go regular expressions,
// hence matched here rather than in the query; in a run they are read
// after the tags are locked, as an untag reads them.
func withoutRuledTags(ctx context.Context, tx pgx.Tx, tags []Removal, actor Actor) ([]Removal, error) {
	rules := map[string]*tagRules{}
	kept := tags[:0]
	for _, t := range tags {
		rs := rules[t.Repository]
		if rs == nil {
			rs = &tagRules{}
			rules[t.Repository] = rs
		}
		err := rs.check(ctx, tx, t.Repository, t.Tag, "", actor)
		var ruled *TagRuleError
		if errors.As(err, &ruled) {
			continue
		}
		if err != nil {
			return nil, err
		}
		kept = append(kept, t)
	}
	return kept, nil
}

// tagReason names the keep rules that failed to keep a tag pushed (or
// moved) at updated, the first one apart, in absolute times so that a
// preview and the run after it print the same line.
func (p RetentionPolicy) tagReason(updated time.Time, lastPulled *time.Time) (rule, reason string) {
	var rules, words []string
	if p.KeepLast > 0 {
		rules = append(rules, "keep-last")
		words = append(words, fmt.Sprintf("not among the %d most recent", p.KeepLast))
	}
	if p.KeepPushedWithin > 0 {
		rules = append(rules, "keep-pushed-within")
		words = append(words, fmt.Sprintf("pushed over %s ago", FormatDays(p.KeepPushedWithin)))
	}
	if p.KeepPulledWithin > 0 {
		rules = append(rules, "keep-pulled-within")
		if lastPulled == nil {
			words = append(words, "never pulled")
		} else {
			words = append(words, fmt.Sprintf("last pulled %s, over %s ago", minute(*lastPulled), FormatDays(p.KeepPulledWithin)))
		}
	}
	if len(p.KeepTags) > 0 {
		rules = append(rules, "keep-tags")
		words = append(words, "matches no keep pattern")
	}
	return rules[0], fmt.Sprintf("%s (pushed %s)", strings.Join(words, "; "), minute(updated))
}

func minute(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") }

// FormatDays writes d in days when it is a whole number of them ("30d"),
// else as Go does ("36h0m0s" → "36h").
func FormatDays(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	s := d.String()
	s = strings.TrimSuffix(s, "0s")
	s = strings.TrimSuffix(s, "0m")
	if s == "" {
		return "0s"
	}
	return s
}

// RetentionPreview returns what running policy name would remove now:
// the same query as the run, in a transaction that is rolled back.
func (d *DB) RetentionPreview(ctx context.Context, name string) ([]Removal, error) {
	var out []Removal
	err := d.runTx(ctx, false, func(tx pgx.Tx) error {
		p, err := retentionGet(ctx, tx, name)
		if err != nil {
			return err
		}
		tags, manifests, _, err := retentionSet(ctx, tx, p, "")
		if err != nil {
			return err
		}
		out = mergeRemovals(tags, manifests)
		return nil
	})
	return out, err
}

// mergeRemovals orders removals by repository, tags before manifests.
func mergeRemovals(tags, manifests []Removal) []Removal {
	out := append(slices.Clone(tags), manifests...)
	slices.SortStableFunc(out, func(a, b Removal) int {
		if c := strings.Compare(a.Repository, b.Repository); c != 0 {
			return c
		}
		return cmp.Compare(boolInt(a.Tag == ""), boolInt(b.Tag == ""))
	})
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// retentionLockKey is the session lock under which policy name runs: one
// run of a policy at a time, across replicas. Advisory locks are per
// database, so the key is a hash of the schema as well as of the name:
// registries sharing a database in schemas of their own do not wait for
// each other.
func (d *DB) retentionLockKey(ctx context.Context, name string) (int64, error) {
	var key int64
	err := d.q.QueryRow(ctx, `
SELECT ('x' || left(md5(current_schema() || ' retention ' || $1), 16))::bit(64)::bigint`, name).Scan(&key)
	if err != nil {
		return 0, fmt.Errorf("lock key of retention policy %s: %w", name, err)
	}
	return key, nil
}

// RetentionRun runs policy name now and returns what it removed, by
// repository. ErrRetentionBusy when another process is running it.
func (d *DB) RetentionRun(ctx context.Context, name string) ([]Removal, error) {
	out, ran, err := d.retentionRun(ctx, name, false)
	if err == nil && !ran {
		return nil, fmt.Errorf("%w: %s; try again when it has finished", ErrRetentionBusy, name)
	}
	return out, err
}

// RetentionRunDue runs policy name if its schedule says it is due and no
// other process is running it; ran says whether it did.
func (d *DB) RetentionRunDue(ctx context.Context, name string) (removed []Removal, ran bool, err error) {
	return d.retentionRun(ctx, name, true)
}

func (d *DB) retentionRun(ctx context.Context, name string, onlyIfDue bool) (out []Removal, ran bool, err error) {
	var id int64
	err = d.q.QueryRow(ctx, `SELECT id FROM retention_policies WHERE name = $1`, name).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, notFound(ErrRetentionUnknown, "retention policy %s is not known", name)
	}
	if err != nil {
		return nil, false, fmt.Errorf("read retention policy %s: %w", name, err)
	}
	key, err := d.retentionLockKey(ctx, name)
	if err != nil {
		return nil, false, err
	}
	ran, err = d.WithSessionLock(ctx, key, func() error {
		// Read under the lock: the run before may have just finished.
		p, err := retentionGet(ctx, d.q, name)
		if err != nil {
			return err
		}
		if onlyIfDue {
			var due bool
			err := d.q.QueryRow(ctx, `
SELECT schedule IS NOT NULL AND (last_run_at IS NULL OR last_run_at + schedule <= now())
FROM retention_policies WHERE id = $1`, id).Scan(&due)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("read the schedule of retention policy %s: %w", name, err)
			}
			if !due {
				return errNotDue
			}
		}
		repos, err := d.retentionRepositories(ctx, p)
		if err != nil {
			return err
		}
		var tags, manifests int64
		for _, repo := range repos {
			removed, err := d.retentionRunRepository(ctx, p, repo)
			if err != nil {
				return err
			}
			for _, r := range removed {
				if r.Tag != "" {
					tags++
				} else {
					manifests++
				}
			}
			out = append(out, removed...)
		}
		_, err = d.q.Exec(ctx, `
UPDATE retention_policies SET last_run_at = now(), last_run_tags = $2, last_run_manifests = $3,
    tags_removed = tags_removed + $2, manifests_removed = manifests_removed + $3
WHERE id = $1`, id, tags, manifests)
		if err != nil {
			return fmt.Errorf("record the run of retention policy %s: %w", name, err)
		}
		return nil
	})
	if errors.Is(err, errNotDue) {
		return nil, false, nil
	}
	return out, ran && err == nil, err
}

var errNotDue = errors.New("not due")

// retentionRepositories lists the repositories policy p matches, by name.
func (d *DB) retentionRepositories(ctx context.Context, p RetentionPolicy) ([]string, error) {
	rows, err := d.q.Query(ctx, `SELECT name FROM repositories WHERE name ~ ANY($1::text[]) ORDER BY name`, p.ReposRegexp)
	if err != nil {
		return nil, fmt.Errorf("list the repositories of retention policy %s: %w", p.Name, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list the repositories of retention policy %s: %w", p.Name, err)
	}
	return names, nil
}

// retentionRunRepository removes, in one transaction, what policy p
// removes in repo.
//
// Locks, in the package's order: the manifests of the set FOR UPDATE,
// subjects before their referrers (as a push of a referrer locks its
// subject first), else in digest order; then the tags of the set FOR
// UPDATE, in name order. Then the set is computed again: it now sees every
// push that committed before the locks were granted, and no push can
// change a locked row until the commit. What both computations found is
// removed; what only the second found (a tag a newer push pushed out of
// --keep-last, say) is left for the next run, since it is not locked.
func (d *DB) retentionRunRepository(ctx context.Context, p RetentionPolicy, repo string) ([]Removal, error) {
	var removed []Removal
	actor := RetentionActor(p.Name)
	err := d.withTx(ctx, func(tx pgx.Tx) error {
		removed = nil
		tags, manifests, subjects, err := retentionSet(ctx, tx, p, repo)
		if err != nil || len(tags)+len(manifests) == 0 {
			return err
		}
		repoID, err := repositoryID(ctx, tx, repo)
		if err != nil {
			return err
		}
		if len(manifests) > 0 {
			// Deleting manifests changes usage: its lock first (see
			// usageLockShared).
			if err := usageLockShared(ctx, tx, repo); err != nil {
				return err
			}
		}
		if err := retentionLockManifests(ctx, tx, repoID, repo, manifests, subjects); err != nil {
			return err
		}
		tagNames := make([]string, len(tags))
		for i, t := range tags {
			tagNames[i] = t.Tag
		}
		if _, err := tx.Exec(ctx, `
SELECT 1 FROM tags WHERE repository_id = $1 AND name = ANY($2) ORDER BY name FOR UPDATE`, repoID, tagNames); err != nil {
			return fmt.Errorf("lock tags of %s: %w", repo, err)
		}
		tags2, manifests2, _, err := retentionSet(ctx, tx, p, repo)
		if err != nil {
			return err
		}
		locked := map[string]bool{}
		for _, t := range tags {
			locked["t:"+t.Tag] = true
		}
		for _, m := range manifests {
			locked["m:"+m.Digest] = true
		}
		for _, m := range manifests2 {
			if !locked["m:"+m.Digest] {
				continue
			}
			if err := d.manifestDeleteLocked(ctx, tx, repoID, repo, m.Digest, actor); err != nil {
				return err
			}
			removed = append(removed, m)
		}
		var untag []string
		for _, t := range tags2 {
			if locked["t:"+t.Tag] {
				untag = append(untag, t.Tag)
				removed = append(removed, t)
			}
		}
		if err := d.tagsRemove(ctx, tx, repoID, repo, untag, actor); err != nil {
			return err
		}
		removed = mergeRemovals(removedTags(removed), removedManifests(removed))
		return nil
	})
	return removed, err
}

func removedTags(rs []Removal) []Removal {
	return slices.DeleteFunc(slices.Clone(rs), func(r Removal) bool { return r.Tag == "" })
}

func removedManifests(rs []Removal) []Removal {
	return slices.DeleteFunc(slices.Clone(rs), func(r Removal) bool { return r.Tag != "" })
}

// retentionLockManifests locks the manifests of a run's set FOR UPDATE:
// a manifest whose subject is in the set after that subject, otherwise in
// digest order.
func retentionLockManifests(ctx context.Context, tx pgx.Tx, repoID int64, repo string, ms []Removal, subjects map[string]string) error {
	if len(ms) == 0 {
		return nil
	}
	inSet := make(map[string]bool, len(ms))
	for _, m := range ms {
		inSet[m.Digest] = true
	}
	depth := func(dgst string) int {
		n := 0
		for s, ok := subjects[repo+"@"+dgst]; ok && inSet[s] && n < len(ms); s, ok = subjects[repo+"@"+s] {
			n++
		}
		return n
	}
	digests := make([]string, len(ms))
	for i, m := range ms {
		digests[i] = m.Digest
	}
	slices.SortFunc(digests, func(a, b string) int {
		if c := cmp.Compare(depth(a), depth(b)); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	if _, err := tx.Exec(ctx, `
SELECT 1 FROM unnest($2::text[]) WITH ORDINALITY u(digest, n)
JOIN manifests m ON m.repository_id = $1 AND m.digest = u.digest AND m.deleted_at IS NULL
ORDER BY u.n FOR UPDATE OF m`, repoID, digests); err != nil {
		return fmt.Errorf("lock manifests of %s: %w", repo, err)
	}
	return nil
}

// RetentionDue lists the policies whose schedule says they are due, by
// name.
func (d *DB) RetentionDue(ctx context.Context) ([]string, error) {
	rows, err := d.q.Query(ctx, `
SELECT name FROM retention_policies
WHERE schedule IS NOT NULL AND (last_run_at IS NULL OR last_run_at + schedule <= now())
ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list due retention policies: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list due retention policies: %w", err)
	}
	return names, nil
}
