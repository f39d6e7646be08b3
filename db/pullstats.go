package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Pull statistics (manifest_pulls, tag_pulls) are counted in memory by each
// replica (package pullstats) and added here in batches: a GET writes
// nothing. See the migration 0008_pull_stats for why they are tables of
// their own, and the package doc for their locks.

// PullCount is the pulls of one manifest (Ref is its digest) or one tag
// (Ref is the tag) that a replica counted since its last flush.
type PullCount struct {
	Repository string
	Ref        string
	Count      int64
	Last       time.Time // the time of the last of them
}

// PullStatsResult is what PullStatsAdd did with the counts it was given.
type PullStatsResult struct {
	// Added and Dropped are the pulls of manifests added, and dropped
	// because the manifest no longer exists (deleted, purged); likewise
	// TagsAdded and TagsDropped for tags.
	Added, Dropped         int64
	TagsAdded, TagsDropped int64
	// Retry are the counts of manifests and tags that a change held
	// locked (a push or delete in progress): the caller adds them again
	// at its next flush.
	Retry, RetryTags []PullCount
	// Busy means the flush gave up after waiting pullStatsLockTimeout
	// for a lock: nothing was added, and everything is in Retry.
	Busy bool
}

// pullStatsLockTimeout bounds any wait of a flush for a lock. SKIP LOCKED
// leaves out what a change holds, but does not cover every wait:
// PostgreSQL can still wait while it follows the update chain of a row
// that a change is moving, and an insert waits for another flush's insert
// of the same row. A flush that would wait longer than this gives up, and
// its counts wait for the next one: a push or delete never waits behind a
// flush for longer, whatever the flush itself waits for.
const pullStatsLockTimeout = "500ms"

// PullStatsAdd adds pull counts to the statistics of manifests and tags,
// in one transaction. It never waits for the manifests and tags themselves
// (see the package doc, Locks): one that a change holds locked is left out,
// for the caller to retry (PullStatsResult.Retry); one that no longer
// exists is dropped.
func (d *DB) PullStatsAdd(ctx context.Context, manifests, tags []PullCount) (PullStatsResult, error) {
	var res PullStatsResult
	if len(manifests) == 0 && len(tags) == 0 {
		return res, nil
	}
	err := d.withTx(ctx, func(tx pgx.Tx) error {
		res = PullStatsResult{} // the transaction may run again
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '`+pullStatsLockTimeout+`'`); err != nil {
			return fmt.Errorf("set lock_timeout: %w", err)
		}
		var err error
		res.Added, res.Dropped, res.Retry, err = addPulls(ctx, tx, manifestPullStatements, manifests)
		if err != nil {
			return fmt.Errorf("add manifest pulls: %w", err)
		}
		res.TagsAdded, res.TagsDropped, res.RetryTags, err = addPulls(ctx, tx, tagPullStatements, tags)
		if err != nil {
			return fmt.Errorf("add tag pulls: %w", err)
		}
		return nil
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55P03" { // lock_not_available
		return PullStatsResult{Retry: manifests, RetryTags: tags, Busy: true}, nil
	}
	return res, err
}

// A flush adds to the statistics rows that exist, locking them FOR NO KEY
// UPDATE SKIP LOCKED (add), then inserts those that do not yet, after
// locking their manifest (tag) FOR KEY SHARE SKIP LOCKED, in key order,
// ON CONFLICT DO NOTHING (insert). So it waits for nothing but another
// flush's insert of the same new row, and those are taken in key order:
// no flush is ever part of a deadlock. What it skips, it retries at the
// next flush. Pushes wait for a flush only at a manifest's or tag's first
// pull (the FOR KEY SHARE); a delete, whose cascade removes statistics
// rows, waits at most for one flush. Each statement returns the
// ordinality of the counts it added.
const (
	manifestPullsAddSQL = `
WITH l AS MATERIALIZED (
	SELECT p.manifest_id, k.n, k.at, k.i
	FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bigint[]) AS k(repo, ref, n, at, i)
	JOIN repositories r ON r.name = k.repo
	JOIN manifests m ON m.repository_id = r.id AND m.digest = k.ref
	JOIN manifest_pulls p ON p.manifest_id = m.id
	WHERE m.deleted_at IS NULL
	FOR NO KEY UPDATE OF p SKIP LOCKED
), u AS (
	UPDATE manifest_pulls p SET
		pull_count = p.pull_count + l.n,
		last_pulled_at = greatest(p.last_pulled_at, l.at)
	FROM l WHERE p.manifest_id = l.manifest_id
)
SELECT i FROM l`
	manifestPullsInsertSQL = `
WITH c AS MATERIALIZED (
	SELECT m.id, k.n, k.at, k.i
	FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bigint[]) AS k(repo, ref, n, at, i)
	JOIN repositories r ON r.name = k.repo
	JOIN manifests m ON m.repository_id = r.id AND m.digest = k.ref
	WHERE m.deleted_at IS NULL AND NOT EXISTS (SELECT FROM manifest_pulls p WHERE p.manifest_id = m.id)
	FOR KEY SHARE OF m SKIP LOCKED
), ins AS (
	INSERT INTO manifest_pulls (manifest_id, pull_count, last_pulled_at)
	SELECT id, n, at FROM c ORDER BY id
	ON CONFLICT DO NOTHING
	RETURNING manifest_id
)
SELECT c.i FROM c JOIN ins ON ins.manifest_id = c.id`
	manifestExistsSQL = `
SELECT k.i
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bigint[]) AS k(repo, ref, n, at, i)
JOIN repositories r ON r.name = k.repo
JOIN manifests m ON m.repository_id = r.id AND m.digest = k.ref
WHERE m.deleted_at IS NULL`

	tagPullsAddSQL = `
WITH l AS MATERIALIZED (
	SELECT p.repository_id, p.name, k.n, k.at, k.i
	FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bigint[]) AS k(repo, ref, n, at, i)
	JOIN repositories r ON r.name = k.repo
	JOIN tag_pulls p ON p.repository_id = r.id AND p.name = k.ref
	FOR NO KEY UPDATE OF p SKIP LOCKED
), u AS (
	UPDATE tag_pulls p SET
		pull_count = p.pull_count + l.n,
		last_pulled_at = greatest(p.last_pulled_at, l.at)
	FROM l WHERE p.repository_id = l.repository_id AND p.name = l.name
)
SELECT i FROM l`
	tagPullsInsertSQL = `
WITH c AS MATERIALIZED (
	SELECT t.repository_id, t.name, k.n, k.at, k.i
	FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bigint[]) AS k(repo, ref, n, at, i)
	JOIN repositories r ON r.name = k.repo
	JOIN tags t ON t.repository_id = r.id AND t.name = k.ref
	WHERE NOT EXISTS (SELECT FROM tag_pulls p WHERE p.repository_id = t.repository_id AND p.name = t.name)
	FOR KEY SHARE OF t SKIP LOCKED
), ins AS (
	INSERT INTO tag_pulls (repository_id, name, pull_count, last_pulled_at)
	SELECT repository_id, name, n, at FROM c ORDER BY repository_id, name
	ON CONFLICT DO NOTHING
	RETURNING repository_id, name
)
SELECT c.i FROM c JOIN ins ON ins.repository_id = c.repository_id AND ins.name = c.name`
	tagExistsSQL = `
SELECT k.i
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bigint[]) AS k(repo, ref, n, at, i)
JOIN repositories r ON r.name = k.repo
JOIN tags t ON t.repository_id = r.id AND t.name = k.ref`
)

// pullStatements are the statements of one kind of statistics.
type pullStatements struct{ add, insert, exists string }

var (
	manifestPullStatements = pullStatements{manifestPullsAddSQL, manifestPullsInsertSQL, manifestExistsSQL}
	tagPullStatements      = pullStatements{tagPullsAddSQL, tagPullsInsertSQL, tagExistsSQL}
)

// addPulls adds counts to existing statistics rows, inserts the missing
// ones, then sorts those left into the ones whose manifest or tag still
// exists (retry: a row was locked) and the others (dropped). Counts must
// not repeat a key.
func addPulls(ctx context.Context, tx pgx.Tx, st pullStatements, counts []PullCount) (added, dropped int64, retry []PullCount, err error) {
	left := make([]int64, len(counts))
	for i := range left {
		left[i] = int64(i)
	}
	for _, stmt := range []string{st.add, st.insert, st.exists} {
		if len(left) == 0 {
			break
		}
		repos := make([]string, len(left))
		refs := make([]string, len(left))
		ns := make([]int64, len(left))
		ats := make([]time.Time, len(left))
		for j, i := range left {
			c := counts[i]
			repos[j], refs[j], ns[j], ats[j] = c.Repository, c.Ref, c.Count, c.Last
		}
		rows, err := tx.Query(ctx, stmt, repos, refs, ns, ats, left)
		if err != nil {
			return 0, 0, nil, err
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return 0, 0, nil, err
		}
		done := make(map[int64]bool, len(got))
		for _, i := range got {
			done[i] = true
			if stmt == st.exists {
				retry = append(retry, counts[i])
			} else {
				added += counts[i].Count
			}
		}
		rest := left[:0]
		for _, i := range left {
			if !done[i] {
				rest = append(rest, i)
			}
		}
		left = rest
	}
	for _, i := range left {
		dropped += counts[i].Count
	}
	return added, dropped, retry, nil
}

// PullStats is how often and when something was last pulled, as far as
// the replicas have flushed their counts; zero when never.
type PullStats struct {
	Count      int64
	LastPulled time.Time
}

// ManifestPullStats returns the pull statistics of the live manifest dgst
// of repo. ErrManifestUnknown when there is none.
func (d *DB) ManifestPullStats(ctx context.Context, repo, dgst string) (PullStats, error) {
	var s PullStats
	var at *time.Time
	err := d.q.QueryRow(ctx, `
SELECT coalesce(p.pull_count, 0), p.last_pulled_at
FROM repositories r
JOIN manifests m ON m.repository_id = r.id
LEFT JOIN manifest_pulls p ON p.manifest_id = m.id
WHERE r.name = $1 AND m.digest = $2 AND m.deleted_at IS NULL`, repo, dgst).Scan(&s.Count, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, manifestUnknown(repo, dgst)
	}
	if err != nil {
		return s, fmt.Errorf("read pull statistics of %s: %w", dgst, err)
	}
	if at != nil {
		s.LastPulled = *at
	}
	return s, nil
}

// TagPullStats returns the pull statistics of tag in repo.
// ErrTagUnknown when there is no such tag.
func (d *DB) TagPullStats(ctx context.Context, repo, tag string) (PullStats, error) {
	var s PullStats
	var at *time.Time
	err := d.q.QueryRow(ctx, `
SELECT coalesce(p.pull_count, 0), p.last_pulled_at
FROM repositories r
JOIN tags t ON t.repository_id = r.id
LEFT JOIN tag_pulls p ON p.repository_id = t.repository_id AND p.name = t.name
WHERE r.name = $1 AND t.name = $2`, repo, tag).Scan(&s.Count, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, tagUnknown(repo, tag)
	}
	if err != nil {
		return s, fmt.Errorf("read pull statistics of %s: %w", tag, err)
	}
	if at != nil {
		s.LastPulled = *at
	}
	return s, nil
}
