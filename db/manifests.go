package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-registry/berth/manifest"
)

// Manifest is a stored manifest as served to clients.
type Manifest struct {
	Digest    string
	MediaType string
	Size      int64
	Payload   []byte // nil when not requested
}

// ManifestByTag returns the live manifest that tag points at in repo.
// Unknown repository, tag and manifest all give ErrManifestUnknown: telling
// them apart would cost a round trip on the hottest path of the registry.
// Concurrent calls share statements (see coalescer).
func (d *DB) ManifestByTag(ctx context.Context, repo, tag string, withPayload bool) (Manifest, error) {
	return d.batchedRead(ctx, d.byTag, manifestKey{repo, tag, withPayload})
}

// ManifestByDigest returns the live manifest dgst of repo. Concurrent calls
// share statements (see coalescer).
func (d *DB) ManifestByDigest(ctx context.Context, repo, dgst string, withPayload bool) (Manifest, error) {
	return d.batchedRead(ctx, d.byDigest, manifestKey{repo, dgst, withPayload})
}

// batchedRead answers key through c within the statement deadline, waiting
// in the queue included: when every statement in flight is stuck, a read
// must not wait for them longer than it would for its own.
func (d *DB) batchedRead(ctx context.Context, c *coalescer[manifestKey, Manifest], key manifestKey) (Manifest, error) {
	rctx, cancel := d.guard.deadline(ctx)
	defer cancel()
	m, err := c.do(rctx, key)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		// Timed out in the queue: the statements ahead did not come back.
		return m, d.guard.observe(ctx, err)
	}
	return m, err
}

// manifestKey is one manifest read: by tag or by digest, with or without
// the payload (a HEAD needs none).
type manifestKey struct {
	repo, ref string
	payload   bool
}

// The batched manifest reads. Each key is looked up by its own LATERAL
// subquery, whose LIMIT keeps PostgreSQL from flattening it into a join
// it might plan as a scan of every tag: each key costs the same index
// lookups as a statement of its own would.
const (
	manifestsByTagSQL = `
SELECT k.i, m.digest, m.media_type, m.size, m.payload
FROM unnest($1::text[], $2::text[], $3::bool[]) WITH ORDINALITY AS k(repo, ref, payload, i)
CROSS JOIN LATERAL (
	SELECT m.digest, m.media_type, m.size, CASE WHEN k.payload THEN m.payload END AS payload
	FROM repositories r
	JOIN tags t ON t.repository_id = r.id
	JOIN manifests m ON m.id = t.manifest_id
	WHERE r.name = k.repo AND t.name = k.ref AND m.deleted_at IS NULL
	LIMIT 1
) m`
	manifestsByDigestSQL = `
SELECT k.i, m.digest, m.media_type, m.size, m.payload
FROM unnest($1::text[], $2::text[], $3::bool[]) WITH ORDINALITY AS k(repo, ref, payload, i)
CROSS JOIN LATERAL (
	SELECT m.digest, m.media_type, m.size, CASE WHEN k.payload THEN m.payload END AS payload
	FROM repositories r
	JOIN manifests m ON m.repository_id = r.id
	WHERE r.name = k.repo AND m.digest = k.ref AND m.deleted_at IS NULL
	LIMIT 1
) m`
)

// manifestBatch returns the coalescer's statement runner for query.
func (d *DB) manifestBatch(query string) func(ctx context.Context, keys []manifestKey) ([]Manifest, []error, error) {
	return func(ctx context.Context, keys []manifestKey) ([]Manifest, []error, error) {
		repos := make([]string, len(keys))
		refs := make([]string, len(keys))
		payloads := make([]bool, len(keys))
		for i, k := range keys {
			repos[i], refs[i], payloads[i] = k.repo, k.ref, k.payload
		}
		vals := make([]Manifest, len(keys))
		found := make([]bool, len(keys))
		// The coalescer has put a deadline on ctx (see lead).
		rows, err := d.reads.Query(ctx, query, repos, refs, payloads)
		if err != nil {
			return nil, nil, fmt.Errorf("read manifests: %w", d.guard.observe(ctx, err))
		}
		defer rows.Close()
		for rows.Next() {
			var i int64
			var m Manifest
			if err := rows.Scan(&i, &m.Digest, &m.MediaType, &m.Size, &m.Payload); err != nil {
				return nil, nil, fmt.Errorf("read manifests: %w", d.guard.observe(ctx, err))
			}
			vals[i-1], found[i-1] = m, true
		}
		if err := d.guard.observe(ctx, rows.Err()); err != nil {
			return nil, nil, fmt.Errorf("read manifests: %w", err)
		}
		errs := make([]error, len(keys))
		for i, k := range keys {
			if !found[i] {
				errs[i] = manifestUnknown(k.repo, k.ref)
			}
		}
		return vals, errs, nil
	}
}

// ManifestTombstone returns the deleted manifest dgst of repo, payload
// included, while garbage collection has not purged it: restoring it means
// pushing these bytes again. ErrManifestUnknown when there is no tombstone.
func (d *DB) ManifestTombstone(ctx context.Context, repo, dgst string) (Manifest, error) {
	return d.manifestGet(ctx, `
SELECT m.digest, m.media_type, m.size, CASE WHEN $3 THEN m.payload END
FROM repositories r
JOIN manifests m ON m.repository_id = r.id
WHERE r.name = $1 AND m.digest = $2 AND m.deleted_at IS NOT NULL`, repo, dgst, true)
}

func (d *DB) manifestGet(ctx context.Context, q, repo, ref string, withPayload bool) (Manifest, error) {
	var m Manifest
	err := d.q.QueryRow(ctx, q, repo, ref, withPayload).Scan(&m.Digest, &m.MediaType, &m.Size, &m.Payload)
	if errors.Is(err, pgx.ErrNoRows) {
		return Manifest{}, manifestUnknown(repo, ref)
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest %s in %s: %w", ref, repo, err)
	}
	return m, nil
}

// BlobRef is a blob a manifest references, with the size its descriptor
// declares.
type BlobRef struct {
	Digest string
	Size   int64
}

// ManifestPut is a validated manifest to store.
type ManifestPut struct {
	Repository    string
	Digest        string
	MediaType     string
	ArtifactType  string
	ConfigDigest  string
	SubjectDigest string
	Annotations   map[string]string
	Payload       []byte
	Blobs         []BlobRef // config and layers that must be present in the repository
	Children      []string  // digests of child manifests (index, manifest list)
	// Tags to point at the manifest: none for a plain push by digest, one
	// for a push by tag, several for a push with ?tag= parameters.
	// Repeats count once.
	Tags []string
	// TagCondition, when set, makes the whole push conditional on the
	// current state of every tag in Tags.
	TagCondition TagCondition
	// Restore records the tag change as a restore rather than a push.
	Restore bool
	// Sparse lets blobs and child manifests be absent from the repository:
	// a pull-through cache stores a manifest before (or without) what it
	// references, which is fetched only when a client asks for it (a
	// client pulling one platform of an index fetches one child). What is
	// absent is recorded in manifest_absent_refs, and becomes an ordinary
	// reference once cached (ProxyResolve). Allowed only in repositories
	// under a proxy prefix (see proxy.go); elsewhere the push fails with
	// ErrNotProxied.
	Sparse bool
}

// ManifestPutOf is what ManifestStore needs of manifest m, parsed from
// payload (digest dgst) for repository repo: its type, references and
// annotations. Every way in — a push, a cached manifest, an import —
// builds its put here, so that none records less than the others. The
// caller adds tags and the flags of its path.
func ManifestPutOf(repo, dgst string, payload []byte, m *manifest.Manifest) ManifestPut {
	put := ManifestPut{Repository: repo, Digest: dgst, MediaType: m.MediaType, ArtifactType: m.ArtifactType,
		Annotations: m.Annotations, Payload: payload}
	if m.Config != nil {
		put.ConfigDigest = m.Config.Digest.String()
	}
	if m.Subject != nil {
		put.SubjectDigest = m.Subject.Digest.String()
	}
	if len(m.Blobs) > 0 {
		put.Blobs = make([]BlobRef, len(m.Blobs))
		for i, b := range m.Blobs {
			put.Blobs[i] = BlobRef{Digest: b.Digest.String(), Size: b.Size}
		}
	}
	if len(m.Children) > 0 {
		put.Children = make([]string, len(m.Children))
		for i, c := range m.Children {
			put.Children[i] = c.Digest.String()
		}
	}
	return put
}

// ManifestStore stores manifest p (or revives its tombstone) and points
// every tag of p.Tags at it, in one transaction: all of it happens, or
// none. Every referenced blob must be linked into the repository and every
// child manifest must be live there, otherwise a *MissingReferenceError
// names the first one missing. When p.TagCondition does not hold for one
// of the tags, nothing changes and a *PreconditionError names that tag and
// says where it points.
//
// Locks, in the package's order: child manifest rows FOR SHARE (a delete of
// a child, which takes FOR UPDATE, waits or is waited for, so no index can
// reference a deleted child); the manifest's own row FOR UPDATE; the tag
// rows, in ascending name order, so that two pushes of overlapping tag
// sets wait for each other instead of deadlocking; the referenced blob
// rows FOR SHARE, so garbage collection cannot claim them before the
// references are recorded. Before all of them, in the statement that
// ensures the repository, the usage advisory lock of its namespace,
// shared; after them, when the manifest becomes live, the usage rows and
// the quotas covering the repository, where a push that does not fit is
// refused with a *QuotaExceededError (see usage.go).
//
// Moving a tag that a tag rule covers is refused with a *TagRuleError
// (creating it, or pushing the digest it already has, is not).
//
// It returns, for each tag that pointed at a manifest before, that
// manifest's digest.
func (d *DB) ManifestStore(ctx context.Context, p ManifestPut, actor Actor) (previous map[string]string, err error) {
	annotations := encodeAnnotations(p.Annotations)
	p.Annotations = nil // encoded: the map (6 MB for the largest) can go before the transaction
	blobs := slices.Clone(p.Blobs)
	slices.SortFunc(blobs, func(a, b BlobRef) int { return strings.Compare(a.Digest, b.Digest) })
	blobs = slices.CompactFunc(blobs, func(a, b BlobRef) bool { return a.Digest == b.Digest })
	// The digests as the statements take them, built once for the three
	// that need them (27,000 for the largest manifests).
	blobDigests := make([]string, len(blobs))
	for i, b := range blobs {
		blobDigests[i] = b.Digest
	}
	children := slices.Clone(p.Children)
	slices.Sort(children)
	children = slices.Compact(children)
	tags := slices.Clone(p.Tags)
	slices.Sort(tags) // byte order, as the tags.name column (COLLATE "C") sorts
	tags = slices.Compact(tags)

	err = d.withTx(ctx, func(tx pgx.Tx) error {
		previous = make(map[string]string, len(tags))
		repoID, err := repositoryEnsureUsage(ctx, tx, p.Repository)
		if err != nil {
			return err
		}
		if p.Sparse {
			if err := proxyCovers(ctx, tx, p.Repository); err != nil {
				return err
			}
		}
		childIDs, absentChildren, err := manifestLockChildren(ctx, tx, repoID, children, p.Sparse)
		if err != nil {
			return err
		}
		if err := manifestLockSubject(ctx, tx, repoID, p.SubjectDigest); err != nil {
			return err
		}
		id, change, err := manifestUpsert(ctx, tx, repoID, p, annotations)
		if err != nil {
			return err
		}
		action := ActionTagMove
		if p.Restore {
			action = ActionTagRestore
		}
		var movedFrom []int64
		rules := &tagRules{}
		for _, tag := range tags {
			from, prev, err := tagSet(ctx, tx, tagTarget{repoID: repoID, repo: p.Repository, tag: tag, manifestID: id, digest: p.Digest},
				p.TagCondition, action, actor, rules)
			if err != nil {
				return err
			}
			if prev != "" {
				previous[tag] = prev
			}
			if from != 0 {
				movedFrom = append(movedFrom, from)
			}
		}
		var absentBlobs []BlobRef
		if p.Sparse {
			blobs, absentBlobs, err = blobLockPresent(ctx, tx, repoID, blobs, blobDigests)
			if err != nil {
				return err
			}
			blobDigests = make([]string, len(blobs))
			for i, b := range blobs {
				blobDigests[i] = b.Digest
			}
		} else if err := blobLockShared(ctx, tx, repoID, blobs, blobDigests); err != nil {
			return err
		}
		if change != manifestUnchanged {
			// A revived row may have lost child rows to the purge of a
			// child; recording is idempotent, so record in both cases.
			if err := manifestRecordRefs(ctx, tx, id, blobDigests, childIDs); err != nil {
				return err
			}
			if err := manifestRecordAbsent(ctx, tx, id, absentBlobs, absentChildren); err != nil {
				return err
			}
			// Live now: its bytes and blobs count, and a quota may refuse it.
			noteLive(tx, repoID, p.Repository, id, +1)
			if err := audit(ctx, tx, actor, event{action: ActionManifestPush, repository: p.Repository, digest: p.Digest,
				detail: map[string]any{"media_type": p.MediaType, "size": len(p.Payload), "revived": change == manifestRevived}}); err != nil {
				return err
			}
		}
		// Garbage candidates last: a manifest pushed without a tag, and the
		// manifests the tags moved away from, may be untagged now. In
		// ascending id order, as enqueueDependents queues them.
		if len(tags) == 0 && change != manifestUnchanged {
			if err := d.enqueueUntagged(ctx, tx, id); err != nil {
				return err
			}
		}
		slices.Sort(movedFrom)
		for _, from := range slices.Compact(movedFrom) {
			if err := d.enqueueUntagged(ctx, tx, from); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return previous, nil
}

// manifestLockChildren locks the live child manifests FOR SHARE, in digest
// order, and returns their ids. A child that is not live is an error, or
// with sparse returned in absent.
func manifestLockChildren(ctx context.Context, tx pgx.Tx, repoID int64, children []string, sparse bool) (ids []int64, absent []string, err error) {
	if len(children) == 0 {
		return nil, nil, nil
	}
	rows, err := tx.Query(ctx, `
SELECT id, digest FROM manifests
WHERE repository_id = $1 AND digest = ANY($2) AND deleted_at IS NULL
ORDER BY digest
FOR SHARE`, repoID, children)
	if err != nil {
		return nil, nil, fmt.Errorf("lock child manifests: %w", err)
	}
	found := make(map[string]int64, len(children))
	for rows.Next() {
		var id int64
		var dgst string
		if err := rows.Scan(&id, &dgst); err != nil {
			return nil, nil, fmt.Errorf("lock child manifests: %w", err)
		}
		found[dgst] = id
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("lock child manifests: %w", err)
	}
	ids = make([]int64, 0, len(children))
	for _, c := range children {
		id, ok := found[c]
		if !ok {
			if sparse {
				absent = append(absent, c)
				continue
			}
			return nil, nil, &MissingReferenceError{Digest: c, Manifest: true}
		}
		ids = append(ids, id)
	}
	return ids, absent, nil
}

// manifestLockSubject locks the subject of a referrer FOR SHARE, if it is
// live in the repository (a subject need not exist). Garbage collection
// deciding whether an untagged subject still has referrers takes it FOR
// UPDATE, so it either waits for this push or this push waits for it.
func manifestLockSubject(ctx context.Context, tx pgx.Tx, repoID int64, subject string) error {
	if subject == "" {
		return nil
	}
	_, err := tx.Exec(ctx, `
SELECT 1 FROM manifests WHERE repository_id = $1 AND digest = $2 AND deleted_at IS NULL FOR SHARE`, repoID, subject)
	if err != nil {
		return fmt.Errorf("lock subject %s: %w", subject, err)
	}
	return nil
}

// blobLockShared checks that every blob is linked into the repository and
// ready, with the declared size, and locks the rows FOR SHARE in digest
// order. blobs are sorted by digest, without repeats, and digests are
// their digests.
//
// The link is checked in a second statement, after the locks are held: a
// collector may have removed the link while we waited for the lock (it
// holds the blob FOR UPDATE while it does), and under READ COMMITTED only a
// statement that starts after the wait sees that. Once the blob is locked
// FOR SHARE, no collector can change its links until we commit.
//
// Both statements return rows in digest order, as blobs are, so the rows
// are matched to blobs walking both in step, reading each digest in the
// driver's buffer: no digest string or map entry per blob (27,000 of them
// for the largest manifests).
func blobLockShared(ctx context.Context, tx pgx.Tx, repoID int64, blobs []BlobRef, digests []string) error {
	if len(blobs) == 0 {
		return nil
	}
	sizes := make([]int64, len(blobs))
	ready := make([]bool, len(blobs))
	rows, err := tx.Query(ctx, `
SELECT digest, size FROM blobs
WHERE digest = ANY($1) AND state = 'ready'
ORDER BY digest
FOR SHARE`, digests)
	if err != nil {
		return fmt.Errorf("lock referenced blobs: %w", err)
	}
	err = inDigestOrder(rows, blobs, func(i int, row pgx.Rows) error {
		ready[i] = true
		return row.Scan(nil, &sizes[i])
	})
	if err != nil {
		return fmt.Errorf("lock referenced blobs: %w", err)
	}
	linked := make([]bool, len(blobs))
	rows, err = tx.Query(ctx, `
SELECT digest FROM repository_blobs WHERE repository_id = $1 AND digest = ANY($2)
ORDER BY digest`, repoID, digests)
	if err != nil {
		return fmt.Errorf("check blob links: %w", err)
	}
	if err := inDigestOrder(rows, blobs, func(i int, _ pgx.Rows) error { linked[i] = true; return nil }); err != nil {
		return fmt.Errorf("check blob links: %w", err)
	}
	for i, b := range blobs {
		if !ready[i] || !linked[i] {
			return &MissingReferenceError{Digest: b.Digest}
		}
		if sizes[i] != b.Size {
			return &SizeMismatchError{Digest: b.Digest, Declared: b.Size, Real: sizes[i]}
		}
	}
	return nil
}

// inDigestOrder calls fn for each row, whose first column is a digest,
// with the index of that digest in blobs; rows and blobs are both in
// digest order (byte order: the column is COLLATE "C"). It closes rows.
func inDigestOrder(rows pgx.Rows, blobs []BlobRef, fn func(i int, row pgx.Rows) error) error {
	defer rows.Close()
	j := 0
	for rows.Next() {
		dgst := rows.RawValues()[0] // text, in either format the digest's bytes
		for j < len(blobs) && blobs[j].Digest < string(dgst) {
			j++
		}
		if j < len(blobs) && blobs[j].Digest == string(dgst) {
			if err := fn(j, rows); err != nil {
				return err
			}
			j++
		}
	}
	return rows.Err()
}

// manifestChange says what manifestUpsert did.
type manifestChange int

const (
	manifestUnchanged manifestChange = iota // live already
	manifestInserted                        // new row: the caller records its references
	manifestRevived                         // tombstone cleared; the row kept its references
)

// manifestUpsert inserts the manifest row, or clears its tombstone, and
// returns its id.
//
// Locks the manifest row FOR UPDATE, so that a concurrent delete of the same
// digest is serialised with this push either way round.
func manifestUpsert(ctx context.Context, tx pgx.Tx, repoID int64, p ManifestPut, annotations []byte) (id int64, change manifestChange, err error) {
	for range contentionRounds {
		var tombstoned bool
		err = tx.QueryRow(ctx, `
SELECT id, deleted_at IS NOT NULL FROM manifests
WHERE repository_id = $1 AND digest = $2
FOR UPDATE`, repoID, p.Digest).Scan(&id, &tombstoned)
		switch {
		case err == nil && tombstoned:
			if _, err := tx.Exec(ctx,
				`UPDATE manifests SET deleted_at = NULL, deleted_by = NULL WHERE id = $1`, id); err != nil {
				return 0, 0, fmt.Errorf("revive manifest %s: %w", p.Digest, err)
			}
			return id, manifestRevived, nil
		case err == nil:
			return id, manifestUnchanged, nil
		case !errors.Is(err, pgx.ErrNoRows):
			return 0, 0, fmt.Errorf("lock manifest %s: %w", p.Digest, err)
		}
		err = tx.QueryRow(ctx, `
INSERT INTO manifests (repository_id, digest, media_type, artifact_type,
                       config_digest, subject_digest, annotations, size, payload)
VALUES ($1, $2, $3, NULLIF($4, ''), NULLIF($5, ''), NULLIF($6, ''), $7, $8, $9)
ON CONFLICT (repository_id, digest) DO NOTHING
RETURNING id`,
			repoID, p.Digest, p.MediaType, p.ArtifactType, p.ConfigDigest, p.SubjectDigest,
			annotations, int64(len(p.Payload)), p.Payload).Scan(&id)
		if err == nil {
			return id, manifestInserted, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return 0, 0, fmt.Errorf("insert manifest %s: %w", p.Digest, err)
		}
		// Pushed concurrently by another transaction, which has committed
		// (ON CONFLICT waited for it): go round and lock that row.
	}
	return 0, 0, fmt.Errorf("store manifest %s: %w", p.Digest, errContended)
}

func manifestRecordRefs(ctx context.Context, tx pgx.Tx, id int64, digests []string, childIDs []int64) error {
	if len(digests) > 0 {
		if _, err := tx.Exec(ctx, `
INSERT INTO manifest_blobs (manifest_id, digest) SELECT $1, unnest($2::text[])
ON CONFLICT DO NOTHING`, id, digests); err != nil {
			return fmt.Errorf("record manifest blobs: %w", err)
		}
	}
	if len(childIDs) > 0 {
		if _, err := tx.Exec(ctx, `
INSERT INTO manifest_children (parent_id, child_id) SELECT $1, unnest($2::bigint[])
ON CONFLICT DO NOTHING`, id, childIDs); err != nil {
			return fmt.Errorf("record child manifests: %w", err)
		}
	}
	return nil
}

// ManifestDelete soft-deletes live manifest dgst of repo: it writes a
// tombstone and removes every tag pointing at it, in one transaction. A live
// index of the same repository that lists the manifest blocks the delete
// with *ReferencedError; a tag that a tag rule forbids actor to remove
// blocks it with *TagRuleError, naming the tag.
//
// Locks: the manifest row FOR UPDATE (an index push referencing it holds
// FOR SHARE, so the two serialise and the referrer check below sees any
// index committed before), then its tag rows.
func (d *DB) ManifestDelete(ctx context.Context, repo, dgst string, actor Actor) error {
	return d.withTx(ctx, func(tx pgx.Tx) error {
		if err := usageLockShared(ctx, tx, repo); err != nil {
			return err
		}
		var id int64
		err := tx.QueryRow(ctx, `
SELECT m.id FROM manifests m JOIN repositories r ON r.id = m.repository_id
WHERE r.name = $1 AND m.digest = $2 AND m.deleted_at IS NULL
FOR UPDATE OF m`, repo, dgst).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return manifestUnknown(repo, dgst)
		}
		if err != nil {
			return fmt.Errorf("lock manifest %s: %w", dgst, err)
		}
		return d.manifestRemove(ctx, tx, repo, id, dgst, actor)
	})
}

// manifestDeleteLocked is a delete by digest by actor of a manifest the
// transaction has locked already; one that is gone is left alone.
func (d *DB) manifestDeleteLocked(ctx context.Context, tx pgx.Tx, repoID int64, repo, dgst string, actor Actor) error {
	var id int64
	err := tx.QueryRow(ctx, `
SELECT id FROM manifests WHERE repository_id = $1 AND digest = $2 AND deleted_at IS NULL
FOR UPDATE`, repoID, dgst).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lock manifest %s: %w", dgst, err)
	}
	return d.manifestRemove(ctx, tx, repo, id, dgst, actor)
}

// manifestRemove tombstones live manifest id (dgst), which the caller has
// locked FOR UPDATE, and removes its tags: what a delete by digest does,
// history, audit, events and garbage candidates included.
func (d *DB) manifestRemove(ctx context.Context, tx pgx.Tx, repo string, id int64, dgst string, actor Actor) error {
	// A separate statement, so that under READ COMMITTED it sees every
	// index committed while we waited for the lock.
	var parent string
	err := tx.QueryRow(ctx, `
SELECT p.digest FROM manifest_children c JOIN manifests p ON p.id = c.parent_id
WHERE c.child_id = $1 AND p.deleted_at IS NULL
ORDER BY p.digest LIMIT 1`, id).Scan(&parent)
	if err == nil {
		return &ReferencedError{Digest: dgst, ReferrerOf: parent}
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("check referrers of %s: %w", dgst, err)
	}
	// The tag rows are locked in name order, as a push of several tags
	// locks them: deleting them in scan order could take one tag, wait
	// for a push holding another, and be waited for by that push.
	rows, err := tx.Query(ctx, `
DELETE FROM tags WHERE manifest_id = $1 AND name IN (
	SELECT name FROM tags WHERE manifest_id = $1 ORDER BY name FOR UPDATE)
RETURNING name`, id)
	if err != nil {
		return fmt.Errorf("remove tags of %s: %w", dgst, err)
	}
	tags, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("remove tags of %s: %w", dgst, err)
	}
	slices.Sort(tags)
	// The tag rows are locked (deleted) now: a tag a rule forbids
	// removing refuses the delete, and the rollback restores them.
	rules := &tagRules{}
	for _, tag := range tags {
		if err := rules.check(ctx, tx, repo, tag, dgst, actor); err != nil {
			return err
		}
	}
	if err := auditTagsRemoved(ctx, tx, actor, repo, tags, dgst); err != nil {
		return err
	}
	var repoID int64
	if err := tx.QueryRow(ctx,
		`UPDATE manifests SET deleted_at = now(), deleted_by = $2 WHERE id = $1 RETURNING repository_id`,
		id, actor.Name).Scan(&repoID); err != nil {
		return fmt.Errorf("tombstone manifest %s: %w", dgst, err)
	}
	noteLive(tx, repoID, repo, id, -1)
	if err := audit(ctx, tx, actor, event{action: ActionManifestDelete, repository: repo, digest: dgst,
		detail: map[string]any{"tags_removed": len(tags)}}); err != nil {
		return err
	}
	// The tombstone is a candidate once its retention ends.
	if err := enqueue(ctx, tx, CandidateManifest, fmt.Sprint(id), d.gc.TombstoneRetention); err != nil {
		return err
	}
	return d.enqueueDependents(ctx, tx, id)
}

// Referrer is a manifest whose subject is a given digest, as the referrers
// API lists it.
type Referrer struct {
	Digest       string
	MediaType    string
	ArtifactType string
	Size         int64
	Annotations  json.RawMessage
}

// Referrers lists the live manifests of repo whose subject is dgst, oldest
// first, optionally only those of artifactType. An unknown repository has no
// referrers.
func (d *DB) Referrers(ctx context.Context, repo, dgst, artifactType string) ([]Referrer, error) {
	rows, err := d.q.Query(ctx, `
SELECT m.digest, m.media_type, coalesce(m.artifact_type, ''), m.size, m.annotations
FROM repositories r JOIN manifests m ON m.repository_id = r.id
WHERE r.name = $1 AND m.subject_digest = $2 AND m.deleted_at IS NULL
  AND ($3 = '' OR m.artifact_type = $3)
ORDER BY m.id`, repo, dgst, artifactType)
	if err != nil {
		return nil, fmt.Errorf("list referrers of %s: %w", dgst, err)
	}
	refs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Referrer, error) {
		var r Referrer
		err := row.Scan(&r.Digest, &r.MediaType, &r.ArtifactType, &r.Size, &r.Annotations)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("list referrers of %s: %w", dgst, err)
	}
	return refs, nil
}

// ManifestInfo describes a live manifest in the digest listing.
type ManifestInfo struct {
	Digest       string
	MediaType    string
	ArtifactType string
	Size         int64
	Tags         []string
	CreatedAt    time.Time
}

// ManifestList returns up to n live manifests of repo with digests after
// last, in digest order, tagged or not, and whether more follow. With
// untagged, only manifests no tag points at. ErrRepositoryUnknown when repo
// does not exist.
func (d *DB) ManifestList(ctx context.Context, repo, last string, n int, untagged bool) ([]ManifestInfo, bool, error) {
	rows, err := d.q.Query(ctx, `
SELECT m.digest, m.media_type, m.artifact_type, m.size, m.created_at, m.tags
FROM repositories r
LEFT JOIN LATERAL (
    SELECT m.digest, m.media_type, coalesce(m.artifact_type, '') AS artifact_type, m.size, m.created_at,
           ARRAY(SELECT t.name FROM tags t WHERE t.manifest_id = m.id ORDER BY t.name) AS tags
    FROM manifests m
    WHERE m.repository_id = r.id AND m.deleted_at IS NULL AND m.digest > $2
      AND (NOT $4 OR NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id))
    ORDER BY m.digest LIMIT $3
) m ON true
WHERE r.name = $1`, repo, last, n+1, untagged)
	if err != nil {
		return nil, false, fmt.Errorf("list manifests of %s: %w", repo, err)
	}
	found := false
	list := []ManifestInfo{}
	for rows.Next() {
		found = true
		var dgst, mediaType, artifactType *string
		var size *int64
		var created *time.Time
		var tags []string
		if err := rows.Scan(&dgst, &mediaType, &artifactType, &size, &created, &tags); err != nil {
			return nil, false, fmt.Errorf("list manifests of %s: %w", repo, err)
		}
		if dgst == nil {
			continue // the repository has no live manifest
		}
		if tags == nil {
			tags = []string{}
		}
		list = append(list, ManifestInfo{Digest: *dgst, MediaType: *mediaType, ArtifactType: *artifactType,
			Size: *size, CreatedAt: *created, Tags: tags})
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list manifests of %s: %w", repo, err)
	}
	if !found {
		return nil, false, repositoryUnknown(repo)
	}
	if len(list) > n {
		return list[:n], true, nil
	}
	return list, false, nil
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
		// The usage lock first (see usageLockShared), by the
		// repository's name, read without a lock: a manifest never
		// changes repository.
		var repo string
		err := tx.QueryRow(ctx, `
SELECT r.name FROM manifests m JOIN repositories r ON r.id = m.repository_id WHERE m.id = $1::bigint`, c.Key).Scan(&repo)
		if err == nil {
			err = usageLockShared(ctx, tx, repo)
		}
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("look up manifest %s: %w", c.Key, err)
		}
		err = tx.QueryRow(ctx, `
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
		noteLive(tx, repoID, rev.Repository, id, -1)
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
