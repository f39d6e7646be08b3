package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// BlobSize returns the size of blob dgst if it is linked into repo and not
// being collected. One round trip; it locks nothing.
func (d *DB) BlobSize(ctx context.Context, repo, dgst string) (int64, error) {
	var size int64
	err := d.q.QueryRow(ctx, `
SELECT b.size
FROM repositories r
JOIN repository_blobs rb ON rb.repository_id = r.id
JOIN blobs b ON b.digest = rb.digest
WHERE r.name = $1 AND rb.digest = $2 AND b.state = 'ready'`, repo, dgst).Scan(&size)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, blobUnknown(repo, dgst)
	}
	if err != nil {
		return 0, fmt.Errorf("stat blob %s in %s: %w", dgst, repo, err)
	}
	return size, nil
}

// BlobReady reports whether blob dgst is stored (in any repository) and not
// being collected. Upload commits use it to skip publishing bytes that are
// already there; the answer is re-checked under the row lock in BlobCommit.
func (d *DB) BlobReady(ctx context.Context, dgst string) (bool, error) {
	var ready bool
	err := d.q.QueryRow(ctx,
		`SELECT EXISTS (SELECT 1 FROM blobs WHERE digest = $1 AND state = 'ready')`, dgst).Scan(&ready)
	if err != nil {
		return false, fmt.Errorf("look up blob %s: %w", dgst, err)
	}
	return ready, nil
}

// PublishIfNew runs publish, which puts a blob's staged bytes in place,
// unless blob dgst is already stored and not being collected (BlobReady).
// Publishing may copy a lot of data (assembling parts, an S3 copy), so
// commits run it before their transaction; BlobCommit and ProxyBlobCommit
// then re-check under the blob's row lock and publish again if collection
// took the bytes meanwhile.
func (d *DB) PublishIfNew(ctx context.Context, dgst string, publish func(context.Context) error) error {
	ready, err := d.BlobReady(ctx, dgst)
	if err != nil || ready {
		return err
	}
	return publish(ctx)
}

// BlobCommit describes a verified blob whose bytes are staged in the blob
// store, ready to be recorded and linked into a repository.
type BlobCommit struct {
	Repository string
	Digest     string
	Size       int64
	// UploadID names the session the bytes came from; empty for a
	// monolithic POST, which has no session. UploadSize is the session size
	// the caller saw: if another request changed the session since, the
	// commit fails with ErrUploadOffset.
	UploadID   string
	UploadSize int64
}

// BlobCommit records blob c.Digest, links it into c.Repository and closes
// the upload session, in one transaction.
//
// ensureBytes must make the blob's bytes readable at its content address in
// the store (idempotently). It is called with the blob row locked FOR UPDATE
// whenever the row is new or not 'ready' (garbage collection marked it
// 'deleting', or a check found its bytes missing): in those cases GC may
// have removed bytes the caller published earlier, and GC only ever deletes
// bytes while holding this same row lock, so bytes present when ensureBytes
// returns stay present. A crash after ensureBytes
// and before commit leaves at worst bytes without a row, which GC sweeps.
//
// Locks: the upload row (deleted), then the blob row FOR UPDATE.
func (d *DB) BlobCommit(ctx context.Context, c BlobCommit, ensureBytes func(context.Context) error, actor Actor) error {
	return d.withTx(ctx, func(tx pgx.Tx) error {
		repoID, err := repositoryEnsure(ctx, tx, c.Repository)
		if err != nil {
			return err
		}
		if c.UploadID != "" {
			if err := uploadClose(ctx, tx, repoID, c.UploadID, c.UploadSize); err != nil {
				return err
			}
		}
		state, inserted, err := blobLockOrInsert(ctx, tx, c.Digest, c.Size)
		if err != nil {
			return err
		}
		if inserted || state != BlobReady {
			if err := ensureBytes(ctx); err != nil {
				return fmt.Errorf("publish blob %s: %w", c.Digest, err)
			}
			if !inserted {
				if _, err := tx.Exec(ctx,
					`UPDATE blobs SET state = 'ready' WHERE digest = $1`, c.Digest); err != nil {
					return fmt.Errorf("revive blob %s: %w", c.Digest, err)
				}
			}
		}
		if err := blobLink(ctx, tx, repoID, c.Digest); err != nil {
			return err
		}
		detail := map[string]any{"size": c.Size}
		if c.UploadID != "" {
			detail["upload"] = c.UploadID
		}
		if err := audit(ctx, tx, actor, event{action: ActionBlobUpload, repository: c.Repository, digest: c.Digest, detail: detail}); err != nil {
			return err
		}
		// Until a manifest references it, the new link is all that keeps
		// the blob: review it once the review delay has passed.
		return enqueue(ctx, tx, CandidateBlob, c.Digest, d.gc.ReviewDelay)
	})
}

// Blob states (see migrations/0001 and 0003).
const (
	BlobReady    = "ready"    // bytes present, visible in the repositories that link it
	BlobDeleting = "deleting" // claimed by garbage collection: invisible, bytes may be going
	BlobMissing  = "missing"  // bytes found gone by a check: invisible until uploaded again
)

// blobLockOrInsert locks the row of blob dgst FOR UPDATE, inserting it
// first when it does not exist, and returns its state.
func blobLockOrInsert(ctx context.Context, tx pgx.Tx, dgst string, size int64) (state string, inserted bool, err error) {
	for range contentionRounds {
		state, found, err := blobLock(ctx, tx, dgst)
		if err != nil || found {
			return state, false, err
		}
		tag, err := tx.Exec(ctx,
			`INSERT INTO blobs (digest, size) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING`, dgst, size)
		if err != nil {
			return "", false, fmt.Errorf("insert blob %s: %w", dgst, err)
		}
		if tag.RowsAffected() == 1 {
			return BlobReady, true, nil
		}
		// Inserted concurrently (ON CONFLICT waited for it to commit): go
		// round and lock that row.
	}
	return "", false, fmt.Errorf("commit blob %s: %w", dgst, errContended)
}

// blobLock locks the row of blob dgst FOR UPDATE and returns its state.
func blobLock(ctx context.Context, tx pgx.Tx, dgst string) (state string, found bool, err error) {
	err = tx.QueryRow(ctx, `SELECT state FROM blobs WHERE digest = $1 FOR UPDATE`, dgst).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("lock blob %s: %w", dgst, err)
	}
	return state, true, nil
}

// blobLink links blob dgst into a repository, or refreshes the link's time
// when it exists: the time starts the review delay that protects a freshly
// uploaded or mounted blob from garbage collection, and a client that has
// just been told "201 Created" for it must get that delay in full, even if
// an old, unreferenced link was there before. The caller holds the blob row
// lock, as garbage collection does when it removes links.
func blobLink(ctx context.Context, tx pgx.Tx, repoID int64, dgst string) error {
	_, err := tx.Exec(ctx, `
INSERT INTO repository_blobs (repository_id, digest) VALUES ($1, $2)
ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = now()`, repoID, dgst)
	if err != nil {
		return fmt.Errorf("link blob %s: %w", dgst, err)
	}
	return nil
}

// BlobMount links blob dgst, present in repository from, into repository
// to, and returns its size. ErrBlobUnknown when from does not hold it.
//
// Locks: the blob row FOR SHARE, so that garbage collection (which takes it
// FOR UPDATE) cannot remove links or mark it 'deleting' between the checks
// and the new link.
func (d *DB) BlobMount(ctx context.Context, from, to, dgst string, actor Actor) (int64, error) {
	var size int64
	err := d.withTx(ctx, func(tx pgx.Tx) error {
		toID, err := repositoryEnsure(ctx, tx, to)
		if err != nil {
			return err
		}
		err = tx.QueryRow(ctx, `SELECT size FROM blobs WHERE digest = $1 AND state = 'ready' FOR SHARE`, dgst).Scan(&size)
		if errors.Is(err, pgx.ErrNoRows) {
			return blobUnknown(from, dgst)
		}
		if err != nil {
			return fmt.Errorf("lock blob %s: %w", dgst, err)
		}
		// The source link is checked after the lock, in its own statement,
		// so that it sees a link a collector removed while we waited.
		var linked bool
		err = tx.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
               WHERE r.name = $1 AND rb.digest = $2)`, from, dgst).Scan(&linked)
		if err != nil {
			return fmt.Errorf("find blob %s in %s: %w", dgst, from, err)
		}
		if !linked {
			return blobUnknown(from, dgst)
		}
		if err := blobLink(ctx, tx, toID, dgst); err != nil {
			return err
		}
		if err := audit(ctx, tx, actor, event{action: ActionBlobMount, repository: to, digest: dgst,
			detail: map[string]any{"from": from}}); err != nil {
			return err
		}
		// Like an upload, the new link is reviewed once the delay has passed.
		return enqueue(ctx, tx, CandidateBlob, dgst, d.gc.ReviewDelay)
	})
	return size, err
}

// BlobUnlink removes blob dgst from repository repo. The bytes stay while
// any other repository or manifest references them; garbage collection
// decides when they go. ErrBlobUnknown when repo does not hold the blob.
func (d *DB) BlobUnlink(ctx context.Context, repo, dgst string, actor Actor) error {
	return d.withTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
DELETE FROM repository_blobs rb
USING repositories r
WHERE r.id = rb.repository_id AND r.name = $1 AND rb.digest = $2`, repo, dgst)
		if err != nil {
			return fmt.Errorf("unlink blob %s from %s: %w", dgst, repo, err)
		}
		if tag.RowsAffected() == 0 {
			return blobUnknown(repo, dgst)
		}
		if err := audit(ctx, tx, actor, event{action: ActionBlobUnlink, repository: repo, digest: dgst}); err != nil {
			return err
		}
		return enqueue(ctx, tx, CandidateBlob, dgst, d.gc.ReviewDelay)
	})
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
	rows, err := d.q.Query(ctx,
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
