package db

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// GCPolicy is what the transactions that create garbage candidates need to
// know to queue them, and what the collector's checks compare against.
type GCPolicy struct {
	// ReviewDelay protects fresh blobs: a blob link is not removed, nor its
	// blob collected, until this long after the blob was last uploaded or
	// mounted into the repository, so a client has time to push the
	// manifest that references it.
	ReviewDelay time.Duration
	// TombstoneRetention keeps deleted manifests (and so their blobs) for
	// this long, so that a delete can be undone by a push or a restore.
	TombstoneRetention time.Duration
	// CollectUntagged enables collecting manifests that have been without
	// a tag for UntaggedAfter (and that nothing else needs).
	CollectUntagged bool
	UntaggedAfter   time.Duration
}

// gcActor is the actor recorded for the collector's own changes.
var gcActor = Actor{Name: "gc"}

// Kinds of garbage candidates in gc_queue.
const (
	CandidateBlob     = "blob"     // key: a digest
	CandidateManifest = "manifest" // key: a manifest id
)

// enqueue records a garbage candidate, reviewable after delay. It runs in
// the transaction that made the candidate, so a candidate is never lost and
// never queued for a change that rolled back. A candidate already queued
// keeps the later of the two review times, and its seq moves on so that a
// worker examining it knows something happened.
//
// Locks: the queue row, always last (see the package documentation).
func enqueue(ctx context.Context, tx pgx.Tx, kind, key string, delay time.Duration) error {
	_, err := tx.Exec(ctx, `
INSERT INTO gc_queue (kind, key, review_after) VALUES ($1, $2, now() + $3 * interval '1 microsecond')
ON CONFLICT (kind, key) DO UPDATE
    SET review_after = GREATEST(gc_queue.review_after, EXCLUDED.review_after), seq = gc_queue.seq + 1`,
		kind, key, delay.Microseconds())
	if err != nil {
		return fmt.Errorf("queue %s %s for garbage collection: %w", kind, key, err)
	}
	return nil
}

// enqueueUntagged queues a manifest that may have lost its last tag, when
// untagged manifests are collected at all.
func (d *DB) enqueueUntagged(ctx context.Context, tx pgx.Tx, manifestID int64) error {
	if !d.gc.CollectUntagged {
		return nil
	}
	return enqueue(ctx, tx, CandidateManifest, fmt.Sprint(manifestID), d.gc.UntaggedAfter)
}

// enqueueDependents queues, when untagged manifests are collected, the
// manifests that a deleted manifest may have been the only reason to keep:
// its children (if it is an index) and its referrers (if it is a subject).
func (d *DB) enqueueDependents(ctx context.Context, tx pgx.Tx, id int64) error {
	if !d.gc.CollectUntagged {
		return nil
	}
	rows, err := tx.Query(ctx, `
SELECT child_id FROM manifest_children WHERE parent_id = $1
UNION
SELECT r.id FROM manifests m JOIN manifests r ON r.repository_id = m.repository_id AND r.subject_digest = m.digest
WHERE m.id = $1 AND r.deleted_at IS NULL
ORDER BY 1`, id)
	if err != nil {
		return fmt.Errorf("read dependents of manifest %d: %w", id, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("read dependents of manifest %d: %w", id, err)
	}
	for _, dep := range ids {
		if err := d.enqueueUntagged(ctx, tx, dep); err != nil {
			return err
		}
	}
	return nil
}

// Candidate is a garbage candidate claimed by a collector.
type Candidate struct {
	Kind string // "blob" or "manifest"
	Key  string // digest or manifest id
	seq  int64
}

// GCClaim leases up to limit due candidates to the caller for lease. It
// uses SKIP LOCKED, so collectors in every replica claim disjoint sets, and
// commits at once: the candidates are then examined one transaction each,
// without holding queue locks that would make pushes wait. A collector that
// dies simply lets its lease expire.
func (d *DB) GCClaim(ctx context.Context, limit int, lease time.Duration) ([]Candidate, error) {
	rows, err := d.q.Query(ctx, `
WITH due AS (
    SELECT kind, key FROM gc_queue
    WHERE review_after <= now() AND (leased_until IS NULL OR leased_until < now())
    ORDER BY review_after
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE gc_queue q SET leased_until = now() + $2 * interval '1 microsecond'
FROM due WHERE q.kind = due.kind AND q.key = due.key
RETURNING q.kind, q.key, q.seq`, limit, lease.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("claim garbage candidates: %w", err)
	}
	cands, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Candidate, error) {
		var c Candidate
		err := row.Scan(&c.Kind, &c.Key, &c.seq)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("claim garbage candidates: %w", err)
	}
	return cands, nil
}

// candidateDone ends a claimed candidate: removed from the queue, unless an
// event queued it again while it was examined (seq moved), in which case it
// is released to be examined again at its new review time.
func candidateDone(ctx context.Context, tx pgx.Tx, c Candidate) error {
	tag, err := tx.Exec(ctx, `DELETE FROM gc_queue WHERE kind = $1 AND key = $2 AND seq = $3`, c.Kind, c.Key, c.seq)
	if err != nil {
		return fmt.Errorf("finish candidate %s %s: %w", c.Kind, c.Key, err)
	}
	if tag.RowsAffected() == 0 {
		_, err = tx.Exec(ctx, `UPDATE gc_queue SET leased_until = NULL WHERE kind = $1 AND key = $2`, c.Kind, c.Key)
	}
	return err
}

// candidateLater puts a claimed candidate back, due at the given time.
func candidateLater(ctx context.Context, tx pgx.Tx, c Candidate, at time.Time) error {
	_, err := tx.Exec(ctx, `
UPDATE gc_queue SET review_after = GREATEST(review_after, $3), leased_until = NULL
WHERE kind = $1 AND key = $2`, c.Kind, c.Key, at)
	return err
}

// reviewTx runs fn in a transaction that commits, or with dryRun rolls
// back: a dry run takes the same decisions and changes nothing.
func (d *DB) reviewTx(ctx context.Context, dryRun bool, fn func(pgx.Tx) error) error {
	if dryRun {
		return d.runTx(ctx, false, fn)
	}
	return d.withTx(ctx, fn)
}

// GCSweepDue reports whether the last sweep of the blob store, by any
// replica, finished longer than interval ago (or never happened). Call it
// holding the sweep's session lock, then GCSweepDone after sweeping.
func (d *DB) GCSweepDue(ctx context.Context, interval time.Duration) (bool, error) {
	var due bool
	err := d.q.QueryRow(ctx, `
SELECT coalesce((SELECT at <= now() - $1 * interval '1 microsecond' FROM gc_state WHERE name = 'sweep'), true)`,
		interval.Microseconds()).Scan(&due)
	if err != nil {
		return false, fmt.Errorf("read last sweep: %w", err)
	}
	return due, nil
}

// GCSweepDone records that a sweep finished now.
func (d *DB) GCSweepDone(ctx context.Context) error {
	_, err := d.q.Exec(ctx, `
INSERT INTO gc_state (name, at) VALUES ('sweep', now()) ON CONFLICT (name) DO UPDATE SET at = now()`)
	if err != nil {
		return fmt.Errorf("record sweep: %w", err)
	}
	return nil
}

// GCQueueStats counts the queued candidates, and those due now.
func (d *DB) GCQueueStats(ctx context.Context) (queued, due int64, err error) {
	err = d.q.QueryRow(ctx, `
SELECT count(*), count(*) FILTER (WHERE review_after <= now()) FROM gc_queue`).Scan(&queued, &due)
	if err != nil {
		return 0, 0, fmt.Errorf("count garbage candidates: %w", err)
	}
	return queued, due, nil
}

// GCDue lists up to limit due candidates after cursor, in (kind, key)
// order, without claiming them: for dry runs, which must not change the
// queue.
func (d *DB) GCDue(ctx context.Context, after Candidate, limit int) ([]Candidate, error) {
	rows, err := d.q.Query(ctx, `
SELECT kind, key, seq FROM gc_queue
WHERE review_after <= now() AND (kind, key) > ($1, $2)
ORDER BY kind, key LIMIT $3`, after.Kind, after.Key, limit)
	if err != nil {
		return nil, fmt.Errorf("list due candidates: %w", err)
	}
	cands, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Candidate, error) {
		var c Candidate
		err := row.Scan(&c.Kind, &c.Key, &c.seq)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("list due candidates: %w", err)
	}
	return cands, nil
}
