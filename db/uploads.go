package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Upload is an upload session as stored.
type Upload struct {
	ID         string
	Repository string
	Owner      string // the principal that opened the session; empty if none was recorded
	Size       int64  // bytes received so far
	HashState  []byte // marshalled sha256 state of those bytes
	StoreState []byte // the blob store's own record of where they are
	CreatedAt  time.Time
	UpdatedAt  time.Time
}

// UploadCreate opens a session in repository repo, creating the repository
// on first use. With limit > 0, a repository holds at most limit open
// sessions: past it, the error wraps ErrTooManyUploads. owner is the
// principal opening the session, recorded so that the API can refuse the
// session to anyone else ("" records none).
//
// Locks: an advisory lock on the repository's sessions, so that the
// sessions opened at once in one repository, by any replica, are counted
// one after the other and the limit holds exactly. It is taken after the
// repository row (never locked, see the package documentation) and before
// the new session row; closing a session only frees a slot and needs it
// not.
func (d *DB) UploadCreate(ctx context.Context, repo, id, owner string, hashState []byte, limit int, actor Actor) error {
	return d.withTx(ctx, func(tx pgx.Tx) error {
		repoID, err := repositoryEnsure(ctx, tx, repo)
		if err != nil {
			return err
		}
		if limit > 0 {
			if err := uploadsWithinLimit(ctx, tx, repo, repoID, limit); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx,
			`INSERT INTO uploads (id, repository_id, owner, hash_state) VALUES ($1, $2, NULLIF($3, ''), $4)`,
			id, repoID, owner, hashState)
		if err != nil {
			return fmt.Errorf("create upload %s: %w", id, err)
		}
		return audit(ctx, tx, actor, event{action: ActionUploadStart, repository: repo, detail: map[string]any{"upload": id}})
	})
}

// uploadLockSpace is the first key of the advisory locks on a repository's
// upload sessions (the second is the repository id). The two-key form
// cannot collide with the one-key locks of the sweep and the migrations.
const uploadLockSpace = 0x6265 // "be"

func uploadsWithinLimit(ctx context.Context, tx pgx.Tx, repo string, repoID int64, limit int) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1::int, ($2 % 2147483647)::int)`, uploadLockSpace, repoID); err != nil {
		return fmt.Errorf("lock the upload sessions of %s: %w", repo, err)
	}
	// After the lock, so that it counts every session committed by the
	// transaction that held it before.
	var open int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM uploads WHERE repository_id = $1`, repoID).Scan(&open); err != nil {
		return fmt.Errorf("count the upload sessions of %s: %w", repo, err)
	}
	if open >= limit {
		return notFound(ErrTooManyUploads, "repository %s has %d open upload sessions, the limit (--max-upload-sessions); "+
			"finish or cancel one (DELETE its location) first, or wait for idle ones to expire", repo, open)
	}
	return nil
}

// UploadGet returns session id of repository repo.
func (d *DB) UploadGet(ctx context.Context, repo, id string) (Upload, error) {
	u := Upload{ID: id, Repository: repo}
	err := d.q.QueryRow(ctx, `
SELECT coalesce(u.owner, ''), u.size, u.hash_state, u.store_state, u.created_at, u.updated_at
FROM uploads u JOIN repositories r ON r.id = u.repository_id
WHERE u.id = $1 AND r.name = $2`, id, repo).Scan(
		&u.Owner, &u.Size, &u.HashState, &u.StoreState, &u.CreatedAt, &u.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Upload{}, uploadUnknown(repo, id)
	}
	if err != nil {
		return Upload{}, fmt.Errorf("read upload %s: %w", id, err)
	}
	return u, nil
}

// UploadAdvance records a chunk appended to session id: the session moves
// from size from to size to, with the new hash and store states. It is a
// compare-and-set on the size, with no lock held while the chunk streams:
// if another request appended first, nothing changes and ErrUploadOffset is
// returned, so the caller discards its chunk and reports the current range.
func (d *DB) UploadAdvance(ctx context.Context, repo, id string, from, to int64, hashState, storeState []byte) error {
	tag, err := d.q.Exec(ctx, `
UPDATE uploads u SET size = $4, hash_state = $5, store_state = $6, updated_at = now()
FROM repositories r
WHERE r.id = u.repository_id AND u.id = $1 AND r.name = $2 AND u.size = $3`,
		id, repo, from, to, hashState, storeState)
	if err != nil {
		return fmt.Errorf("advance upload %s: %w", id, err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	if _, err := d.UploadGet(ctx, repo, id); err != nil {
		return err
	}
	return ErrUploadOffset
}

// UploadDelete ends session id without a blob (client cancel) and returns
// it, so the caller can discard the staged bytes.
func (d *DB) UploadDelete(ctx context.Context, repo, id string, actor Actor) (Upload, error) {
	u := Upload{ID: id, Repository: repo}
	err := d.withTx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
DELETE FROM uploads u USING repositories r
WHERE r.id = u.repository_id AND u.id = $1 AND r.name = $2
RETURNING coalesce(u.owner, ''), u.size, u.hash_state, u.store_state, u.created_at, u.updated_at`, id, repo).Scan(
			&u.Owner, &u.Size, &u.HashState, &u.StoreState, &u.CreatedAt, &u.UpdatedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			return uploadUnknown(repo, id)
		}
		if err != nil {
			return fmt.Errorf("delete upload %s: %w", id, err)
		}
		return audit(ctx, tx, actor, event{action: ActionUploadCancel, repository: repo,
			detail: map[string]any{"upload": id, "size": u.Size}})
	})
	if err != nil {
		return Upload{}, err
	}
	return u, nil
}

// uploadClose deletes the session as part of a blob commit, provided it
// still has the size the committer saw.
func uploadClose(ctx context.Context, tx pgx.Tx, repoID int64, id string, size int64) error {
	var current int64
	err := tx.QueryRow(ctx,
		`SELECT size FROM uploads WHERE id = $1 AND repository_id = $2 FOR UPDATE`,
		id, repoID).Scan(&current)
	if errors.Is(err, pgx.ErrNoRows) {
		return notFound(ErrUploadUnknown, "upload %s is not known (finished, cancelled or expired)", id)
	}
	if err != nil {
		return fmt.Errorf("lock upload %s: %w", id, err)
	}
	if current != size {
		return ErrUploadOffset
	}
	if _, err := tx.Exec(ctx, `DELETE FROM uploads WHERE id = $1`, id); err != nil {
		return fmt.Errorf("close upload %s: %w", id, err)
	}
	return nil
}

// UploadStats counts the open upload sessions and the bytes they hold, for
// metrics.
func (d *DB) UploadStats(ctx context.Context) (sessions, bytes int64, err error) {
	if err := d.q.QueryRow(ctx, `SELECT count(*), coalesce(sum(size), 0) FROM uploads`).Scan(&sessions, &bytes); err != nil {
		return 0, 0, fmt.Errorf("count uploads: %w", err)
	}
	return sessions, bytes, nil
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
RETURNING u.id, r.name, coalesce(u.owner, ''), u.size, u.store_state, u.created_at, u.updated_at`, timeout.Microseconds(), limit)
		if err != nil {
			return fmt.Errorf("expire uploads: %w", err)
		}
		expired, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Upload, error) {
			var u Upload
			err := row.Scan(&u.ID, &u.Repository, &u.Owner, &u.Size, &u.StoreState, &u.CreatedAt, &u.UpdatedAt)
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

// UploadsKnown reports which of ids are open upload sessions.
func (d *DB) UploadsKnown(ctx context.Context, ids []string) (map[string]bool, error) {
	return d.known(ctx, `SELECT id FROM uploads WHERE id = ANY($1)`, ids)
}
