package db

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Batched collection of blobs: the same two steps as GCReviewBlob and
// GCDeleteBlob (see gc's package documentation), each taken for many
// candidates in one transaction, with set-based statements. The blob rows
// are locked FOR UPDATE in ascending digest order (the global lock order),
// their queue rows last, in key order.

// GCReviewBlobs examines blob candidates cands as GCReviewBlob does each
// of them, in one transaction, and returns one review per candidate, in
// the order of cands. Candidates that are not blobs are an error.
func (d *DB) GCReviewBlobs(ctx context.Context, cands []Candidate, dryRun bool) ([]BlobReview, error) {
	var revs []BlobReview
	err := d.reviewTx(ctx, dryRun, func(tx pgx.Tx) error {
		locked, err := lockBlobCandidates(ctx, tx, cands, "review")
		if err != nil {
			return err
		}
		revs = make([]BlobReview, len(cands))
		byKey := make(map[string]int, len(cands))
		state := make(map[string]string, len(locked))
		for i, c := range cands {
			revs[i] = BlobReview{Digest: c.Key, Size: locked[c.Key].size}
			byKey[c.Key] = i
			if b, ok := locked[c.Key]; ok {
				state[c.Key] = b.state
			}
		}
		var done []Candidate
		var ready []string
		for i, c := range cands {
			switch st, found := state[c.Key]; {
			case !found:
				revs[i].KeptBecause = "already gone"
				done = append(done, c)
			case st == BlobDeleting:
				revs[i].Collect, revs[i].AlreadyMarked = true, true
			case st == BlobMissing:
				revs[i].KeptBecause = "bytes missing; waiting for a re-upload"
				done = append(done, c)
			default:
				ready = append(ready, c.Key)
			}
		}
		if len(ready) > 0 {
			slices.Sort(ready)
			rows, err := tx.Query(ctx, `
DELETE FROM repository_blobs rb USING repositories r
WHERE rb.digest = ANY($1) AND r.id = rb.repository_id
  AND rb.created_at <= now() - $2 * interval '1 microsecond'
  AND NOT EXISTS (
      SELECT 1 FROM manifest_blobs mb JOIN manifests m ON m.id = mb.manifest_id
      WHERE mb.digest = rb.digest AND m.repository_id = rb.repository_id)
RETURNING rb.digest, r.name`, ready, d.gc.ReviewDelay.Microseconds())
			if err != nil {
				return fmt.Errorf("remove stale links: %w", err)
			}
			type unlinked struct{ digest, repo string }
			gone, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (unlinked, error) {
				var u unlinked
				err := row.Scan(&u.digest, &u.repo)
				return u, err
			})
			if err != nil {
				return fmt.Errorf("remove stale links: %w", err)
			}
			slices.SortFunc(gone, func(a, b unlinked) int {
				if a.digest != b.digest {
					return strings.Compare(a.digest, b.digest)
				}
				return strings.Compare(a.repo, b.repo)
			})
			for _, u := range gone {
				i := byKey[u.digest]
				revs[i].UnlinkedFrom = append(revs[i].UnlinkedFrom, u.repo)
				if err := audit(ctx, tx, gcActor, event{action: ActionBlobUnlink, repository: u.repo, digest: u.digest,
					detail: map[string]any{"reason": "no manifest of the repository references it"}}); err != nil {
					return err
				}
			}
			// A separate statement, so that it sees what committed while
			// the locks were awaited.
			rows, err = tx.Query(ctx, `
SELECT k.digest,
       EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.digest = k.digest),
       (SELECT max(created_at) FROM repository_blobs rb WHERE rb.digest = k.digest) + $2 * interval '1 microsecond'
FROM unnest($1::text[]) AS k(digest)`, ready, d.gc.ReviewDelay.Microseconds())
			if err != nil {
				return fmt.Errorf("check references: %w", err)
			}
			var collect []string
			type later struct {
				c  Candidate
				at time.Time
			}
			var laters []later
			for rows.Next() {
				var dg string
				var referenced bool
				var freshUntil *time.Time
				if err := rows.Scan(&dg, &referenced, &freshUntil); err != nil {
					rows.Close()
					return fmt.Errorf("check references: %w", err)
				}
				i := byKey[dg]
				switch {
				case referenced:
					revs[i].KeptBecause = "referenced by a manifest"
					done = append(done, cands[i])
				case freshUntil != nil:
					revs[i].KeptBecause = "linked less than the review delay ago"
					laters = append(laters, later{cands[i], *freshUntil})
				default:
					revs[i].Collect = true
					collect = append(collect, dg)
				}
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return fmt.Errorf("check references: %w", err)
			}
			if len(collect) > 0 {
				if _, err := tx.Exec(ctx, `UPDATE blobs SET state = 'deleting' WHERE digest = ANY($1)`, collect); err != nil {
					return fmt.Errorf("mark blobs deleting: %w", err)
				}
			}
			if len(laters) > 0 {
				lkeys := make([]string, len(laters))
				ats := make([]time.Time, len(laters))
				for i, l := range laters {
					lkeys[i], ats[i] = l.c.Key, l.at
				}
				if _, err := tx.Exec(ctx, `
UPDATE gc_queue q SET review_after = GREATEST(q.review_after, l.at), leased_until = NULL
FROM (SELECT kind, key FROM gc_queue WHERE kind = 'blob' AND key = ANY($1) ORDER BY key FOR UPDATE) locked,
     unnest($1::text[], $2::timestamptz[]) AS l(key, at)
WHERE q.kind = locked.kind AND q.key = locked.key AND l.key = q.key`, lkeys, ats); err != nil {
					return fmt.Errorf("put candidates back: %w", err)
				}
			}
		}
		return candidatesDone(ctx, tx, done)
	})
	return revs, err
}

// BlobDeletion is the outcome of GCDeleteBlobs for one candidate.
type BlobDeletion struct {
	Digest  string
	Deleted bool  // bytes and row are gone
	Size    int64 // of the deleted blob
	Err     error // deleting the bytes failed: the row stays 'deleting', the candidate leased
}

// GCDeleteBlobs finishes collecting blobs that GCReviewBlobs marked
// 'deleting', as GCDeleteBlob does each of them, in one transaction: it
// locks their rows FOR UPDATE in ascending digest order, calls deleteBytes
// for those still 'deleting' — up to concurrency at a time, all while the
// locks are held — then deletes the rows whose bytes are gone, writes
// their audit rows and ends their candidates. A candidate an upload
// revived (state 'ready' again), or whose row is gone, is ended without
// deleting anything. A candidate whose bytes could not be deleted keeps
// its 'deleting' row (never a 'ready' row without bytes) and stays leased,
// to be tried again when the lease ends; its result carries the error.
// The error returned is the transaction's, for all of them.
func (d *DB) GCDeleteBlobs(ctx context.Context, cands []Candidate, concurrency int,
	deleteBytes func(ctx context.Context, dgst string) error) ([]BlobDeletion, error) {
	if concurrency < 1 {
		concurrency = 1
	}
	var res []BlobDeletion
	err := d.withTx(ctx, func(tx pgx.Tx) error {
		locked, err := lockBlobCandidates(ctx, tx, cands, "delete")
		if err != nil {
			return err
		}
		res = make([]BlobDeletion, len(cands))
		byKey := make(map[string]int, len(cands))
		deleting := make(map[string]bool, len(locked))
		for i, c := range cands {
			res[i] = BlobDeletion{Digest: c.Key, Size: locked[c.Key].size}
			byKey[c.Key] = i
			deleting[c.Key] = locked[c.Key].state == BlobDeleting
		}

		// The bytes, concurrently, under the row locks.
		var wg sync.WaitGroup
		sem := make(chan struct{}, concurrency)
		for i := range res {
			if !deleting[res[i].Digest] {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func(r *BlobDeletion) {
				defer func() { <-sem; wg.Done() }()
				if err := deleteBytes(ctx, r.Digest); err != nil {
					r.Err = fmt.Errorf("delete bytes of %s: %w", r.Digest, err)
				}
			}(&res[i])
		}
		wg.Wait()

		var gone []string
		var done []Candidate
		for i, c := range cands {
			r := &res[i]
			r.Deleted = false
			switch {
			case !deleting[c.Key]: // no row, or revived by an upload
				done = append(done, c)
			case r.Err == nil:
				gone = append(gone, c.Key)
				done = append(done, c)
			}
		}
		if len(gone) > 0 {
			if _, err := tx.Exec(ctx, `DELETE FROM blobs WHERE digest = ANY($1)`, gone); err != nil {
				return fmt.Errorf("delete blobs: %w", err)
			}
			slices.Sort(gone)
			for _, dg := range gone {
				r := &res[byKey[dg]]
				r.Deleted = true
				if err := audit(ctx, tx, gcActor, event{action: ActionBlobDelete, repository: "", digest: dg,
					detail: map[string]any{"size": r.Size}}); err != nil {
					return err
				}
			}
		}
		return candidatesDone(ctx, tx, done)
	})
	if err != nil {
		for i := range res {
			res[i].Deleted = false
		}
	}
	return res, err
}

// candidatesDone is candidateDone for many candidates of one kind, in two
// statements; it locks their queue rows in key order.
func candidatesDone(ctx context.Context, tx pgx.Tx, cands []Candidate) error {
	if len(cands) == 0 {
		return nil
	}
	kind := cands[0].Kind
	keys := make([]string, len(cands))
	seqs := make([]int64, len(cands))
	for i, c := range cands {
		if c.Kind != kind {
			return fmt.Errorf("finish candidates: mixed kinds %s and %s", kind, c.Kind)
		}
		keys[i], seqs[i] = c.Key, c.seq
	}
	// Queued again while examined (seq moved): released instead, to be
	// examined again at the new review time.
	_, err := tx.Exec(ctx, `
WITH locked AS (
    SELECT kind, key, seq FROM gc_queue WHERE kind = $1 AND key = ANY($2) ORDER BY key FOR UPDATE
), c AS (
    SELECT * FROM unnest($2::text[], $3::bigint[]) AS c(key, seq)
), del AS (
    DELETE FROM gc_queue q USING locked l, c
    WHERE q.kind = l.kind AND q.key = l.key AND c.key = l.key AND c.seq = l.seq
)
UPDATE gc_queue q SET leased_until = NULL FROM locked l, c
WHERE q.kind = l.kind AND q.key = l.key AND c.key = l.key AND c.seq <> l.seq`, kind, keys, seqs)
	if err != nil {
		return fmt.Errorf("finish %d %s candidates: %w", len(cands), kind, err)
	}
	return nil
}

// lockedBlob is a blob row as lockBlobCandidates found it.
type lockedBlob struct {
	state string
	size  int64
}

// lockBlobCandidates locks the blob rows of cands FOR UPDATE, in ascending
// digest order (the lock order of blobs), and returns them by digest; a
// blob without a row is absent. Candidates that are not blobs are an
// error (what names the caller's step in it).
func lockBlobCandidates(ctx context.Context, tx pgx.Tx, cands []Candidate, what string) (map[string]lockedBlob, error) {
	keys := make([]string, len(cands))
	for i, c := range cands {
		if c.Kind != CandidateBlob {
			return nil, fmt.Errorf("%s blobs: candidate %s %s is not a blob", what, c.Kind, c.Key)
		}
		keys[i] = c.Key
	}
	rows, err := tx.Query(ctx,
		`SELECT digest, state, size FROM blobs WHERE digest = ANY($1) ORDER BY digest FOR UPDATE`, keys)
	if err != nil {
		return nil, fmt.Errorf("lock blobs: %w", err)
	}
	defer rows.Close()
	locked := make(map[string]lockedBlob, len(cands))
	for rows.Next() {
		var dg string
		var b lockedBlob
		if err := rows.Scan(&dg, &b.state, &b.size); err != nil {
			return nil, fmt.Errorf("lock blobs: %w", err)
		}
		locked[dg] = b
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lock blobs: %w", err)
	}
	return locked, nil
}
