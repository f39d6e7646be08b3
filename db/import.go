package db

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// What `berth import` (package importer) needs of the database beyond
// ManifestStore, through which every imported manifest and tag is stored
// like a push: registering blobs whose bytes it placed itself, seeding the
// history of the tags it creates, and cheap lookups of what a repository
// already has, so that catch-up passes skip it.

// ActionBlobImport is the audit action of a blob linked into a repository
// by an import. It is not an event: the manifests that follow are.
const ActionBlobImport = "blob.import"

// ImportActor is the actor of every change an import makes; the tag
// history and the audit trail name it, and a catch-up pass recognises the
// tags it set by it.
var ImportActor = Actor{Name: "import", MayDelete: true}

// RepositoryContents is what a repository holds, for an import to skip.
type RepositoryContents struct {
	Manifests map[string]bool   // live manifest digests
	Deleted   map[string]bool   // manifests deleted in Berth (tombstones not yet purged)
	Tags      map[string]string // tag → digest
	// ImportedTags are the tags whose last change the import made (its
	// actor), with the digest it set: a catch-up pass may move or remove
	// these when the source did, and leaves the others alone.
	ImportedTags map[string]string
	Blobs        map[string]bool // blobs linked into the repository and ready
}

// RepositoryContentsGet returns what repo holds; an unknown repository
// holds nothing. Three reads, no locks: a catch-up pass compares this
// with the source and changes the difference through the locking paths.
func (d *DB) RepositoryContentsGet(ctx context.Context, repo string) (RepositoryContents, error) {
	c := RepositoryContents{Manifests: map[string]bool{}, Deleted: map[string]bool{}, Tags: map[string]string{},
		ImportedTags: map[string]string{}, Blobs: map[string]bool{}}
	rows, err := d.q.Query(ctx, `
SELECT m.digest, m.deleted_at IS NOT NULL FROM repositories r JOIN manifests m ON m.repository_id = r.id
WHERE r.name = $1`, repo)
	if err != nil {
		return c, fmt.Errorf("list manifests of %s: %w", repo, err)
	}
	for rows.Next() {
		var dg string
		var deleted bool
		if err := rows.Scan(&dg, &deleted); err != nil {
			rows.Close()
			return c, fmt.Errorf("list manifests of %s: %w", repo, err)
		}
		if deleted {
			c.Deleted[dg] = true
		} else {
			c.Manifests[dg] = true
		}
	}
	if err := rows.Err(); err != nil {
		return c, fmt.Errorf("list manifests of %s: %w", repo, err)
	}
	// The last tag.* row of each tag says who set it last.
	rows, err = d.q.Query(ctx, `
SELECT t.name, m.digest, coalesce(a.actor = $2, false)
FROM repositories r
JOIN tags t ON t.repository_id = r.id
JOIN manifests m ON m.id = t.manifest_id
LEFT JOIN LATERAL (
    SELECT actor FROM audit_log
    WHERE repository = r.name AND tag = t.name AND action LIKE 'tag.%'
    ORDER BY id DESC LIMIT 1
) a ON true
WHERE r.name = $1`, repo, ImportActor.Name)
	if err != nil {
		return c, fmt.Errorf("list tags of %s: %w", repo, err)
	}
	for rows.Next() {
		var tag, dgst string
		var byImport bool
		if err := rows.Scan(&tag, &dgst, &byImport); err != nil {
			rows.Close()
			return c, fmt.Errorf("list tags of %s: %w", repo, err)
		}
		c.Tags[tag] = dgst
		if byImport {
			c.ImportedTags[tag] = dgst
		}
	}
	if err := rows.Err(); err != nil {
		return c, fmt.Errorf("list tags of %s: %w", repo, err)
	}
	rows, err = d.q.Query(ctx, `
SELECT rb.digest FROM repositories r
JOIN repository_blobs rb ON rb.repository_id = r.id
JOIN blobs b ON b.digest = rb.digest
WHERE r.name = $1 AND b.state = 'ready'`, repo)
	if err != nil {
		return c, fmt.Errorf("list blobs of %s: %w", repo, err)
	}
	digests, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return c, fmt.Errorf("list blobs of %s: %w", repo, err)
	}
	for _, dg := range digests {
		c.Blobs[dg] = true
	}
	return c, nil
}

// BlobsReady returns which of digests are stored (in any repository) and
// not being collected, with their sizes: an import need not place or
// verify their bytes again. One statement.
func (d *DB) BlobsReady(ctx context.Context, digests []string) (map[string]int64, error) {
	rows, err := d.q.Query(ctx, `SELECT digest, size FROM blobs WHERE digest = ANY($1) AND state = 'ready'`, digests)
	if err != nil {
		return nil, fmt.Errorf("look up %d blobs: %w", len(digests), err)
	}
	defer rows.Close()
	out := make(map[string]int64, len(digests))
	for rows.Next() {
		var dg string
		var size int64
		if err := rows.Scan(&dg, &size); err != nil {
			return nil, fmt.Errorf("look up %d blobs: %w", len(digests), err)
		}
		out[dg] = size
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look up %d blobs: %w", len(digests), err)
	}
	return out, nil
}

// BlobImport records blobs whose bytes an import has placed in the blob
// store and links them into repo, in one transaction: what BlobCommit does
// for an upload, for a batch of blobs at once.
//
// ensureBytes must make the bytes of a blob readable at its content address
// (idempotently: usually they are there already, and it only checks). As
// in BlobCommit, it is called with the blob's row locked FOR UPDATE
// whenever the row is new or not 'ready', because garbage collection only
// removes bytes under that lock: bytes present when it returns stay.
//
// Locks, in the package's order (those of a blob commit, which has no
// upload session here): the blob rows FOR UPDATE, in ascending digest
// order (inserted first where missing), then their garbage candidates.
// The links are fresh, so, as for an upload, an unreferenced blob is
// reviewed once the review delay has passed.
func (d *DB) BlobImport(ctx context.Context, repo string, blobs []BlobRef, ensureBytes func(context.Context, BlobRef) error) error {
	blobs = slices.Clone(blobs)
	slices.SortFunc(blobs, func(a, b BlobRef) int { return strings.Compare(a.Digest, b.Digest) })
	blobs = slices.CompactFunc(blobs, func(a, b BlobRef) bool { return a.Digest == b.Digest })
	if len(blobs) == 0 {
		return nil
	}
	return d.withTx(ctx, func(tx pgx.Tx) error {
		repoID, err := repositoryEnsure(ctx, tx, repo)
		if err != nil {
			return err
		}
		for _, b := range blobs {
			state, inserted, err := blobLockOrInsert(ctx, tx, b.Digest, b.Size)
			if err != nil {
				return err
			}
			if inserted || state != BlobReady {
				if err := ensureBytes(ctx, b); err != nil {
					return fmt.Errorf("place blob %s: %w", b.Digest, err)
				}
				if !inserted {
					if _, err := tx.Exec(ctx, `UPDATE blobs SET state = 'ready' WHERE digest = $1`, b.Digest); err != nil {
						return fmt.Errorf("revive blob %s: %w", b.Digest, err)
					}
				}
			}
			if err := blobLink(ctx, tx, repoID, b.Digest); err != nil {
				return err
			}
			if err := audit(ctx, tx, ImportActor, event{action: ActionBlobImport, repository: repo, digest: b.Digest,
				detail: map[string]any{"size": b.Size}}); err != nil {
				return err
			}
		}
		for _, b := range blobs {
			if err := enqueue(ctx, tx, CandidateBlob, b.Digest, d.gc.ReviewDelay); err != nil {
				return err
			}
		}
		return nil
	})
}

// TagPast is one digest a tag pointed at in the source registry, and when
// it was set there (as far as the source knows).
type TagPast struct {
	Digest string
	At     time.Time
}

// TagHistorySeed writes the history tags had in the source registry
// before Berth imports them: for each tag of seeds, its past, oldest first,
// as tag.create then tag.move rows dated At, by the import actor, with
// {"seeded": true} in their detail. A tag is seeded only while it has no
// history in Berth at all, so that a second import (or a resumed one)
// writes nothing; it returns the tags it seeded. Called before the tags
// are created, so that a history's newest row is the import's own
// creation of the tag. One transaction for all the tags of a repository.
//
// Seeded rows are history only: they change no state and make no events.
//
// Locks: transaction-level advisory locks (26980 = 0x6964, "id", and a
// hash of repository and tag), in ascending key order, in a transaction
// that locks nothing else, so that two imports seeding the same tags at
// once write each history once and never wait on each other in a cycle.
func (d *DB) TagHistorySeed(ctx context.Context, repo string, seeds map[string][]TagPast) (seeded []string, err error) {
	tags := make([]string, 0, len(seeds))
	for tag, past := range seeds {
		if len(past) > 0 {
			tags = append(tags, tag)
		}
	}
	if len(tags) == 0 {
		return nil, nil
	}
	slices.Sort(tags)
	err = d.withTx(ctx, func(tx pgx.Tx) error {
		seeded = nil
		// Volatile functions in the select list run after the ORDER BY.
		if _, err := tx.Exec(ctx, `
SELECT pg_advisory_xact_lock(26980, k)
FROM (SELECT DISTINCT hashtext($1 || ':' || t) AS k FROM unnest($2::text[]) AS t) s
ORDER BY k`, repo, tags); err != nil {
			return fmt.Errorf("lock histories of %s: %w", repo, err)
		}
		rows, err := tx.Query(ctx, `
SELECT DISTINCT tag FROM audit_log
WHERE repository = $1 AND tag = ANY($2) AND action LIKE 'tag.%'`, repo, tags)
		if err != nil {
			return fmt.Errorf("read histories of %s: %w", repo, err)
		}
		have, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("read histories of %s: %w", repo, err)
		}
		var actions, tagCol, digests, olds []string
		var ats []time.Time
		for _, tag := range tags {
			if slices.Contains(have, tag) {
				continue
			}
			seeded = append(seeded, tag)
			for i, p := range seeds[tag] {
				action, old := ActionTagMove, ""
				if i == 0 {
					action = ActionTagCreate
				} else {
					old = seeds[tag][i-1].Digest
				}
				actions, tagCol, digests, olds, ats = append(actions, action), append(tagCol, tag),
					append(digests, p.Digest), append(olds, old), append(ats, p.At)
			}
		}
		if len(actions) == 0 {
			return nil
		}
		_, err = tx.Exec(ctx, `
INSERT INTO audit_log (at, actor, action, repository, tag, digest, old_digest, detail)
SELECT u.at, $1, u.action, $2, u.tag, u.digest, NULLIF(u.old, ''), '{"seeded": true}'::jsonb
FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) WITH ORDINALITY AS u(action, tag, digest, old, at, n)
ORDER BY u.n`, ImportActor.Name, repo, actions, tagCol, digests, olds, ats)
		if err != nil {
			return fmt.Errorf("seed histories of %s: %w", repo, err)
		}
		return nil
	})
	return seeded, err
}
