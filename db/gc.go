package db

import (
	"context"
	"errors"
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
	rows, err := d.pool.Query(ctx, `
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

// BlobReview is what examining a blob candidate found.
type BlobReview struct {
	Digest        string
	Size          int64
	UnlinkedFrom  []string // repositories whose stale link was removed
	Collect       bool     // the blob is now 'deleting': its bytes must go
	KeptBecause   string   // why the blob stays, when it does
	AlreadyMarked bool     // found 'deleting' (an earlier pass stopped halfway)
}

// GCReviewBlob examines blob candidate c. It first removes the blob's stale
// links: links older than the review delay in repositories where no
// manifest references the blob. If then no manifest anywhere references
// the blob and no fresh link protects it, it marks the blob 'deleting' and
// the caller must finish with GCDeleteBlob. With dryRun nothing changes.
//
// Locks: the blob row FOR UPDATE. Every transaction that makes the blob
// reachable (upload commit, mount, manifest push) locks the same row first,
// so the checks below see all of them or exclude them.
func (d *DB) GCReviewBlob(ctx context.Context, c Candidate, dryRun bool) (BlobReview, error) {
	rev := BlobReview{Digest: c.Key}
	err := d.reviewTx(ctx, dryRun, func(tx pgx.Tx) error {
		rev = BlobReview{Digest: c.Key}
		var state string
		err := tx.QueryRow(ctx, `SELECT state, size FROM blobs WHERE digest = $1 FOR UPDATE`, c.Key).Scan(&state, &rev.Size)
		if errors.Is(err, pgx.ErrNoRows) {
			rev.KeptBecause = "already gone"
			return candidateDone(ctx, tx, c)
		}
		if err != nil {
			return fmt.Errorf("lock blob %s: %w", c.Key, err)
		}
		switch state {
		case BlobDeleting:
			rev.Collect, rev.AlreadyMarked = true, true
			return nil
		case BlobMissing:
			rev.KeptBecause = "bytes missing; waiting for a re-upload"
			return candidateDone(ctx, tx, c)
		}
		rows, err := tx.Query(ctx, `
DELETE FROM repository_blobs rb USING repositories r
WHERE rb.digest = $1 AND r.id = rb.repository_id
  AND rb.created_at <= now() - $2 * interval '1 microsecond'
  AND NOT EXISTS (
      SELECT 1 FROM manifest_blobs mb JOIN manifests m ON m.id = mb.manifest_id
      WHERE mb.digest = $1 AND m.repository_id = rb.repository_id)
RETURNING r.name`, c.Key, d.gc.ReviewDelay.Microseconds())
		if err != nil {
			return fmt.Errorf("remove stale links of %s: %w", c.Key, err)
		}
		if rev.UnlinkedFrom, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return fmt.Errorf("remove stale links of %s: %w", c.Key, err)
		}
		for _, repo := range rev.UnlinkedFrom {
			if err := audit(ctx, tx, gcActor, event{action: ActionBlobUnlink, repository: repo, digest: c.Key,
				detail: map[string]any{"reason": "no manifest of the repository references it"}}); err != nil {
				return err
			}
		}
		var referenced bool
		var freshUntil *time.Time
		err = tx.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM manifest_blobs WHERE digest = $1),
       (SELECT max(created_at) FROM repository_blobs WHERE digest = $1) + $2 * interval '1 microsecond'`,
			c.Key, d.gc.ReviewDelay.Microseconds()).Scan(&referenced, &freshUntil)
		if err != nil {
			return fmt.Errorf("check references of %s: %w", c.Key, err)
		}
		switch {
		case referenced:
			rev.KeptBecause = "referenced by a manifest"
			return candidateDone(ctx, tx, c)
		case freshUntil != nil:
			rev.KeptBecause = "linked less than the review delay ago"
			return candidateLater(ctx, tx, c, *freshUntil)
		}
		rev.Collect = true
		_, err = tx.Exec(ctx, `UPDATE blobs SET state = 'deleting' WHERE digest = $1`, c.Key)
		return err
	})
	return rev, err
}

// reviewTx runs fn in a transaction that commits, or with dryRun rolls
// back: a dry run takes the same decisions and changes nothing.
func (d *DB) reviewTx(ctx context.Context, dryRun bool, fn func(pgx.Tx) error) error {
	if dryRun {
		return d.runTx(ctx, false, fn)
	}
	return d.withTx(ctx, fn)
}

// GCDeleteBlob finishes collecting a blob that GCReviewBlob marked
// 'deleting': with the row locked FOR UPDATE, it calls deleteBytes and
// then deletes the row. If an upload revived the blob in between (state
// 'ready' again), nothing is deleted.
//
// Bytes go first, then the row, under the lock that every upload of the
// same digest must take: an upload either committed before (and revived
// the row, so nothing is deleted here) or waits, finds no row, and
// publishes its bytes again. A crash after the bytes are gone leaves a
// 'deleting' row that no reader serves; its candidate lease expires and a
// later pass deletes it.
func (d *DB) GCDeleteBlob(ctx context.Context, c Candidate, deleteBytes func(context.Context) error) (deleted bool, size int64, err error) {
	err = d.withTx(ctx, func(tx pgx.Tx) error {
		deleted = false
		var state string
		err := tx.QueryRow(ctx, `SELECT state, size FROM blobs WHERE digest = $1 FOR UPDATE`, c.Key).Scan(&state, &size)
		if errors.Is(err, pgx.ErrNoRows) {
			return candidateDone(ctx, tx, c)
		}
		if err != nil {
			return fmt.Errorf("lock blob %s: %w", c.Key, err)
		}
		if state != BlobDeleting {
			return candidateDone(ctx, tx, c) // revived by an upload
		}
		if err := deleteBytes(ctx); err != nil {
			return fmt.Errorf("delete bytes of %s: %w", c.Key, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM blobs WHERE digest = $1`, c.Key); err != nil {
			return fmt.Errorf("delete blob %s: %w", c.Key, err)
		}
		deleted = true
		if err := audit(ctx, tx, gcActor, event{action: ActionBlobDelete, repository: "", digest: c.Key,
			detail: map[string]any{"size": size}}); err != nil {
			return err
		}
		return candidateDone(ctx, tx, c)
	})
	return deleted, size, err
}

// ManifestReview is what examining a manifest candidate found.
type ManifestReview struct {
	Repository  string
	Digest      string
	Purged      bool     // a tombstone past retention was removed for good
	Untagged    bool     // an untagged manifest was deleted (tombstoned)
	FreedBlobs  []string // blobs the purged manifest referenced, now candidates
	KeptBecause string
}

// GCReviewManifest examines manifest candidate c: a tombstone past its
// retention is purged (its blobs become candidates); with untagged
// collection on, a live manifest that has been untagged long enough, that
// no live index lists, that is not the subject of a live referrer and not
// itself attached to a live subject, is deleted like a client delete
// (a tombstone, so it can still be restored during the retention).
//
// Locks: the manifest row FOR UPDATE, as a client delete does.
func (d *DB) GCReviewManifest(ctx context.Context, c Candidate, dryRun bool) (ManifestReview, error) {
	var rev ManifestReview
	err := d.reviewTx(ctx, dryRun, func(tx pgx.Tx) error {
		rev = ManifestReview{}
		var id, repoID int64
		var deleted, expired bool
		var retainUntil *time.Time
		err := tx.QueryRow(ctx, `
SELECT m.id, m.repository_id, r.name, m.digest, m.deleted_at IS NOT NULL,
       coalesce(m.deleted_at + $2 * interval '1 microsecond' <= now(), false), m.deleted_at + $2 * interval '1 microsecond'
FROM manifests m JOIN repositories r ON r.id = m.repository_id
WHERE m.id = $1::bigint
FOR UPDATE OF m`, c.Key, d.gc.TombstoneRetention.Microseconds()).Scan(
			&id, &repoID, &rev.Repository, &rev.Digest, &deleted, &expired, &retainUntil)
		if errors.Is(err, pgx.ErrNoRows) {
			rev.KeptBecause = "already gone"
			return candidateDone(ctx, tx, c)
		}
		if err != nil {
			return fmt.Errorf("lock manifest %s: %w", c.Key, err)
		}
		if deleted {
			if !expired {
				rev.KeptBecause = "tombstone within retention"
				return candidateLater(ctx, tx, c, *retainUntil)
			}
			return d.purgeManifest(ctx, tx, c, id, &rev)
		}
		if !d.gc.CollectUntagged {
			rev.KeptBecause = "untagged manifests are kept"
			return candidateDone(ctx, tx, c)
		}
		var reason string
		err = tx.QueryRow(ctx, `
SELECT CASE
    WHEN EXISTS (SELECT 1 FROM tags WHERE manifest_id = $1) THEN 'tagged'
    WHEN EXISTS (SELECT 1 FROM manifest_children c JOIN manifests p ON p.id = c.parent_id
                 WHERE c.child_id = $1 AND p.deleted_at IS NULL) THEN 'listed by a live index'
    WHEN EXISTS (SELECT 1 FROM manifests s WHERE s.repository_id = $2 AND s.subject_digest = $3
                 AND s.deleted_at IS NULL) THEN 'subject of a live referrer'
    WHEN EXISTS (SELECT 1 FROM manifests m JOIN manifests s ON s.repository_id = m.repository_id
                 AND s.digest = m.subject_digest AND s.deleted_at IS NULL WHERE m.id = $1) THEN 'attached to a live subject'
    ELSE '' END`, id, repoID, rev.Digest).Scan(&reason)
		if err != nil {
			return fmt.Errorf("check manifest %s: %w", rev.Digest, err)
		}
		if reason != "" {
			rev.KeptBecause = reason
			return candidateDone(ctx, tx, c)
		}
		if _, err := tx.Exec(ctx,
			`UPDATE manifests SET deleted_at = now(), deleted_by = $2 WHERE id = $1`, id, gcActor.Name); err != nil {
			return fmt.Errorf("tombstone manifest %s: %w", rev.Digest, err)
		}
		rev.Untagged = true
		if err := audit(ctx, tx, gcActor, event{action: ActionManifestDelete, repository: rev.Repository, digest: rev.Digest,
			detail: map[string]any{"reason": "untagged"}}); err != nil {
			return err
		}
		if err := candidateDone(ctx, tx, c); err != nil {
			return err
		}
		if err := enqueue(ctx, tx, CandidateManifest, c.Key, d.gc.TombstoneRetention); err != nil {
			return err
		}
		return d.enqueueDependents(ctx, tx, id)
	})
	return rev, err
}

// purgeManifest removes a tombstoned manifest row for good; its references
// go with it (ON DELETE CASCADE) and the blobs it referenced become
// candidates, reviewable at once: links and other manifests still protect
// them as usual.
func (d *DB) purgeManifest(ctx context.Context, tx pgx.Tx, c Candidate, id int64, rev *ManifestReview) error {
	rows, err := tx.Query(ctx, `SELECT digest FROM manifest_blobs WHERE manifest_id = $1 ORDER BY digest`, id)
	if err != nil {
		return fmt.Errorf("read blobs of %s: %w", rev.Digest, err)
	}
	if rev.FreedBlobs, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return fmt.Errorf("read blobs of %s: %w", rev.Digest, err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM manifests WHERE id = $1`, id); err != nil {
		return fmt.Errorf("purge manifest %s: %w", rev.Digest, err)
	}
	rev.Purged = true
	if err := audit(ctx, tx, gcActor, event{action: ActionManifestPurge, repository: rev.Repository, digest: rev.Digest}); err != nil {
		return err
	}
	if err := candidateDone(ctx, tx, c); err != nil {
		return err
	}
	for _, b := range rev.FreedBlobs {
		if err := enqueue(ctx, tx, CandidateBlob, b, 0); err != nil {
			return err
		}
	}
	return nil
}

// GCExpireUploads ends up to limit upload sessions idle for longer than
// timeout and returns them, so that the caller discards their bytes after
// the commit (a crash in between leaves only bytes without a session, which
// the sweep removes). The session row itself records its last activity, so
// it needs no queue entry. SKIP LOCKED passes over sessions a request is
// finishing right now.
func (d *DB) GCExpireUploads(ctx context.Context, timeout time.Duration, limit int, dryRun bool) ([]Upload, error) {
	var expired []Upload
	err := d.reviewTx(ctx, dryRun, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
DELETE FROM uploads u USING repositories r
WHERE r.id = u.repository_id AND u.id IN (
    SELECT id FROM uploads WHERE updated_at <= now() - $1 * interval '1 microsecond'
    ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING u.id, r.name, u.size, u.store_state, u.created_at, u.updated_at`, timeout.Microseconds(), limit)
		if err != nil {
			return fmt.Errorf("expire uploads: %w", err)
		}
		expired, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Upload, error) {
			var u Upload
			err := row.Scan(&u.ID, &u.Repository, &u.Size, &u.StoreState, &u.CreatedAt, &u.UpdatedAt)
			return u, err
		})
		if err != nil {
			return fmt.Errorf("expire uploads: %w", err)
		}
		for _, u := range expired {
			if err := audit(ctx, tx, gcActor, event{action: ActionUploadExpire, repository: u.Repository,
				detail: map[string]any{"upload": u.ID, "size": u.Size, "idle_since": u.UpdatedAt}}); err != nil {
				return err
			}
		}
		return nil
	})
	return expired, err
}

// GCDeleteOrphan deletes bytes that no blob row describes. It claims the
// digest by inserting a 'deleting' row inside its transaction: an upload of
// the same digest either got its row in first (then these bytes are not
// orphaned and nothing happens) or waits for this transaction, finds no
// row, and publishes its bytes again.
func (d *DB) GCDeleteOrphan(ctx context.Context, dgst string, deleteBytes func(context.Context) error) (deleted bool, err error) {
	err = d.withTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx,
			`INSERT INTO blobs (digest, size, state) VALUES ($1, 0, 'deleting') ON CONFLICT (digest) DO NOTHING`, dgst)
		if err != nil {
			return fmt.Errorf("claim orphan %s: %w", dgst, err)
		}
		if deleted = tag.RowsAffected() == 1; !deleted {
			return nil
		}
		if err := deleteBytes(ctx); err != nil {
			return fmt.Errorf("delete orphaned bytes of %s: %w", dgst, err)
		}
		_, err = tx.Exec(ctx, `DELETE FROM blobs WHERE digest = $1`, dgst)
		return err
	})
	return deleted, err
}

// BlobRow is a blob's row, for consistency checks.
type BlobRow struct {
	Digest string
	Size   int64
	State  string
}

// BlobRows returns up to n blob rows after digest last, in digest order.
func (d *DB) BlobRows(ctx context.Context, last string, n int) ([]BlobRow, error) {
	rows, err := d.pool.Query(ctx,
		`SELECT digest, size, state FROM blobs WHERE digest > $1 ORDER BY digest LIMIT $2`, last, n)
	if err != nil {
		return nil, fmt.Errorf("list blobs: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (BlobRow, error) {
		var b BlobRow
		err := row.Scan(&b.Digest, &b.Size, &b.State)
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("list blobs: %w", err)
	}
	return list, nil
}

// BlobsKnown reports which of digests have a blob row.
func (d *DB) BlobsKnown(ctx context.Context, digests []string) (map[string]bool, error) {
	return d.known(ctx, `SELECT digest FROM blobs WHERE digest = ANY($1)`, digests)
}

// UploadsKnown reports which of ids are open upload sessions.
func (d *DB) UploadsKnown(ctx context.Context, ids []string) (map[string]bool, error) {
	return d.known(ctx, `SELECT id FROM uploads WHERE id = ANY($1)`, ids)
}

func (d *DB) known(ctx context.Context, q string, keys []string) (map[string]bool, error) {
	rows, err := d.pool.Query(ctx, q, keys)
	if err != nil {
		return nil, fmt.Errorf("look up %d keys: %w", len(keys), err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("look up %d keys: %w", len(keys), err)
	}
	m := make(map[string]bool, len(found))
	for _, k := range found {
		m[k] = true
	}
	return m, nil
}

// BlobMarkMissing records that a ready blob's bytes are gone: the blob
// becomes invisible (HEAD and GET answer 404, so clients upload it again)
// and the next upload of the digest re-publishes the bytes. stillMissing
// checks the store again with the row locked FOR UPDATE: between the
// caller's first look and the lock, the blob may have been collected and
// uploaded afresh, bytes included, and must then be left alone. It returns
// the manifests that reference the blob, which cannot be pulled until a
// client pushes it again; marked is false when the blob was left alone.
func (d *DB) BlobMarkMissing(ctx context.Context, dgst string, stillMissing func(context.Context) (bool, error)) (marked bool, affected []string, err error) {
	err = d.withTx(ctx, func(tx pgx.Tx) error {
		marked, affected = false, nil
		state, found, err := blobLock(ctx, tx, dgst)
		if err != nil || !found || state != BlobReady {
			return err
		}
		missing, err := stillMissing(ctx)
		if err != nil || !missing {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE blobs SET state = 'missing' WHERE digest = $1`, dgst); err != nil {
			return err
		}
		marked = true
		rows, err := tx.Query(ctx, `
SELECT r.name || '@' || m.digest FROM manifest_blobs mb
JOIN manifests m ON m.id = mb.manifest_id JOIN repositories r ON r.id = m.repository_id
WHERE mb.digest = $1 AND m.deleted_at IS NULL ORDER BY 1`, dgst)
		if err != nil {
			return err
		}
		if affected, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		return audit(ctx, tx, gcActor, event{action: ActionBlobMissing, repository: "", digest: dgst,
			detail: map[string]any{"manifests": affected}})
	})
	if err != nil {
		return false, nil, fmt.Errorf("mark blob %s missing: %w", dgst, err)
	}
	return marked, affected, nil
}

// WithSessionLock runs fn while holding the PostgreSQL advisory lock key,
// if no other process holds it; ran is false when it was taken. Replicas use
// it so that one of them at a time does work that must not run twice at
// once, such as walking the whole blob store.
func (d *DB) WithSessionLock(ctx context.Context, key int64, fn func() error) (ran bool, err error) {
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
		return false, fmt.Errorf("try advisory lock: %w", err)
	}
	if !got {
		return false, nil
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, key)
	return true, fn()
}

// GCSweepDue reports whether the last sweep of the blob store, by any
// replica, finished longer than interval ago (or never happened). Call it
// holding the sweep's session lock, then GCSweepDone after sweeping.
func (d *DB) GCSweepDue(ctx context.Context, interval time.Duration) (bool, error) {
	var due bool
	err := d.pool.QueryRow(ctx, `
SELECT coalesce((SELECT at <= now() - $1 * interval '1 microsecond' FROM gc_state WHERE name = 'sweep'), true)`,
		interval.Microseconds()).Scan(&due)
	if err != nil {
		return false, fmt.Errorf("read last sweep: %w", err)
	}
	return due, nil
}

// GCSweepDone records that a sweep finished now.
func (d *DB) GCSweepDone(ctx context.Context) error {
	_, err := d.pool.Exec(ctx, `
INSERT INTO gc_state (name, at) VALUES ('sweep', now()) ON CONFLICT (name) DO UPDATE SET at = now()`)
	if err != nil {
		return fmt.Errorf("record sweep: %w", err)
	}
	return nil
}

// GCQueueStats counts the queued candidates, and those due now.
func (d *DB) GCQueueStats(ctx context.Context) (queued, due int64, err error) {
	err = d.pool.QueryRow(ctx, `
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
	rows, err := d.pool.Query(ctx, `
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
