package db

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The pull-through cache's tables (migrations/0011_proxy): proxies, the
// key that seals their passwords, the claims that make one replica fetch
// each thing from an upstream, when each cached tag was last checked, and
// manifest_absent_refs, what cached manifests reference that is not
// cached yet.
//
// Locks. proxy_claims, proxy_checks, proxies and proxy_keys rows are
// written by single statements (INSERT … ON CONFLICT, UPDATE, DELETE) that
// run in no transaction of their own with other locks: they stand aside
// from the package's lock order, and wait only for one another's
// single-row statement. What the cache stores goes through the ordinary
// paths and their locks: manifests through ManifestStore (with Sparse),
// blobs through ProxyBlobCommit (the blob FOR UPDATE, as blob commit).
// ProxyResolve turns absent references into ordinary ones in the order
// manifests (3) → blobs (5): the manifests that name the digest FOR SHARE,
// in digest order, then the child manifest FOR SHARE before them (children
// before their index), or the blob FOR SHARE after them.

// ErrNotProxied refuses a sparse manifest outside the pull-through cache.
var ErrNotProxied = errors.New("only a pull-through cache repository may hold manifests whose blobs or children are absent")

// ErrProxyExists refuses a second proxy on the same prefix.
var ErrProxyExists = errors.New("a proxy with this prefix exists")

// ErrProxyUnknown reports a prefix no proxy has.
var ErrProxyUnknown = errors.New("no proxy has this prefix")

// Proxy is one pull-through cache: the repositories under Prefix are
// fetched from Upstream, as repository RemotePrefix/<rest of the name>.
type Proxy struct {
	Prefix       string // "" matches every name no other prefix matches
	Upstream     string // https://registry-1.docker.io, http://127.0.0.1:5001
	RemotePrefix string
	Username     string
	Password     []byte // sealed (package proxy); nil: none
	TTL          time.Duration
	CreatedAt    time.Time
}

// proxyMatchSQL is true when repository $1 falls under some proxy's prefix.
const proxyMatchSQL = `EXISTS (SELECT 1 FROM proxies WHERE prefix = '' OR $1 = prefix OR starts_with($1, prefix || '/'))`

// proxyCovers fails with ErrNotProxied unless repo is under a proxy.
func proxyCovers(ctx context.Context, tx pgx.Tx, repo string) error {
	var ok bool
	if err := tx.QueryRow(ctx, `SELECT `+proxyMatchSQL, repo).Scan(&ok); err != nil {
		return fmt.Errorf("look up the proxy of %s: %w", repo, err)
	}
	if !ok {
		return fmt.Errorf("%w (%s is not one)", ErrNotProxied, repo)
	}
	return nil
}

// ProxyAdd adds p. ErrProxyExists when its prefix has one.
func (d *DB) ProxyAdd(ctx context.Context, p Proxy) error {
	tag, err := d.q.Exec(ctx, `
INSERT INTO proxies (prefix, upstream, remote_prefix, username, password, ttl)
VALUES ($1, $2, $3, $4, $5, $6 * interval '1 microsecond')
ON CONFLICT (prefix) DO NOTHING`, p.Prefix, p.Upstream, p.RemotePrefix, p.Username, p.Password, p.TTL.Microseconds())
	if err != nil {
		return fmt.Errorf("add proxy %q: %w", p.Prefix, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %q (delete it first)", ErrProxyExists, p.Prefix)
	}
	return nil
}

// ProxyList returns every proxy, by prefix.
func (d *DB) ProxyList(ctx context.Context) ([]Proxy, error) {
	rows, err := d.q.Query(ctx, `
SELECT prefix, upstream, remote_prefix, username, password, (extract(epoch FROM ttl) * 1000000)::bigint, created_at
FROM proxies ORDER BY prefix`)
	if err != nil {
		return nil, fmt.Errorf("list proxies: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Proxy, error) {
		var p Proxy
		var ttl int64
		err := row.Scan(&p.Prefix, &p.Upstream, &p.RemotePrefix, &p.Username, &p.Password, &ttl, &p.CreatedAt)
		p.TTL = time.Duration(ttl) * time.Microsecond
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("list proxies: %w", err)
	}
	return list, nil
}

// ProxyDelete deletes the proxy of prefix. What it cached stays, as
// ordinary repositories: delete them, or let retention and garbage
// collection take them.
func (d *DB) ProxyDelete(ctx context.Context, prefix string) error {
	tag, err := d.q.Exec(ctx, `DELETE FROM proxies WHERE prefix = $1`, prefix)
	if err != nil {
		return fmt.Errorf("delete proxy %q: %w", prefix, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %q", ErrProxyUnknown, prefix)
	}
	return nil
}

// ProxyKey returns the key kept in the database that seals upstream
// passwords when no --proxy-secret-key is set, creating it on first use
// (the first caller's key wins; every replica then reads the same one).
func (d *DB) ProxyKey(ctx context.Context) ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	err := d.q.QueryRow(ctx, `
WITH ins AS (INSERT INTO proxy_keys (id, key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING RETURNING key)
SELECT key FROM ins UNION ALL SELECT key FROM proxy_keys WHERE id = 1`, key).Scan(&key)
	if err != nil {
		return nil, fmt.Errorf("read the proxy key: %w", err)
	}
	return key, nil
}

// ClaimState is what ProxyClaim found.
type ClaimState struct {
	// Won: the caller holds the claim and must fetch, then ProxyRelease
	// or ProxyFail it.
	Won bool
	// Failed: the last fetch failed, less than the failure memory ago,
	// with this error and upstream status (0: no answer).
	Failed bool
	Error  string
	Status int
}

// ProxyClaim claims key for claimant for lease: it wins when nobody holds
// the key, or the holder's lease (or a failure's memory) has expired. One
// statement; it waits only for another claim of the same key.
func (d *DB) ProxyClaim(ctx context.Context, key, claimant string, lease time.Duration) (ClaimState, error) {
	for range contentionRounds {
		var won bool
		err := d.q.QueryRow(ctx, `
INSERT INTO proxy_claims (key, claimant, lease_until) VALUES ($1, $2, now() + $3 * interval '1 microsecond')
ON CONFLICT (key) DO UPDATE SET claimant = EXCLUDED.claimant, lease_until = EXCLUDED.lease_until, error = '', status = 0
WHERE proxy_claims.lease_until < now()
RETURNING true`, key, claimant, lease.Microseconds()).Scan(&won)
		if err == nil {
			return ClaimState{Won: true}, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return ClaimState{}, fmt.Errorf("claim %s: %w", key, err)
		}
		var st ClaimState
		var holder string
		err = d.q.QueryRow(ctx, `SELECT claimant, error, status FROM proxy_claims WHERE key = $1`, key).Scan(&holder, &st.Error, &st.Status)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // released in between: claim again
		}
		if err != nil {
			return ClaimState{}, fmt.Errorf("read claim %s: %w", key, err)
		}
		st.Failed = holder == ""
		return st, nil
	}
	return ClaimState{}, fmt.Errorf("claim %s: %w", key, errContended)
}

// ProxyRenew extends claimant's lease on key; false when the claim is no
// longer its own (it expired and another replica took it over).
func (d *DB) ProxyRenew(ctx context.Context, key, claimant string, lease time.Duration) (bool, error) {
	tag, err := d.q.Exec(ctx, `
UPDATE proxy_claims SET lease_until = now() + $3 * interval '1 microsecond' WHERE key = $1 AND claimant = $2`,
		key, claimant, lease.Microseconds())
	if err != nil {
		return false, fmt.Errorf("renew claim %s: %w", key, err)
	}
	return tag.RowsAffected() == 1, nil
}

// ProxyRelease ends claimant's claim on key after a fetch that succeeded.
func (d *DB) ProxyRelease(ctx context.Context, key, claimant string) error {
	if _, err := d.q.Exec(ctx, `DELETE FROM proxy_claims WHERE key = $1 AND claimant = $2`, key, claimant); err != nil {
		return fmt.Errorf("release claim %s: %w", key, err)
	}
	return nil
}

// ProxyFail ends claimant's claim on key after a fetch that failed, and
// keeps its error for memory: the requests waiting for it, and those that
// ask within memory, get it without asking the upstream again.
func (d *DB) ProxyFail(ctx context.Context, key, claimant, msg string, status int, memory time.Duration) error {
	_, err := d.q.Exec(ctx, `
UPDATE proxy_claims SET claimant = '', error = $3, status = $4, lease_until = now() + $5 * interval '1 microsecond'
WHERE key = $1 AND claimant = $2`, key, claimant, msg, status, memory.Microseconds())
	if err != nil {
		return fmt.Errorf("fail claim %s: %w", key, err)
	}
	// Failures of keys nobody asked for again would stay: remove those
	// whose memory ended long ago (a few rows, by the claims' key order).
	_, err = d.q.Exec(ctx, `
DELETE FROM proxy_claims WHERE key IN (
    SELECT key FROM proxy_claims WHERE claimant = '' AND lease_until < now() - interval '1 hour' ORDER BY key LIMIT 100)`)
	if err != nil {
		return fmt.Errorf("remove old failed claims: %w", err)
	}
	return nil
}

// ProxyCheckFresh reports whether tag of repo was found current upstream
// less than ttl ago (the database's clock, the same for every replica).
func (d *DB) ProxyCheckFresh(ctx context.Context, repo, tag string, ttl time.Duration) (bool, error) {
	var fresh bool
	err := d.q.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM proxy_checks WHERE repository = $1 AND tag = $2
               AND checked_at > now() - $3 * interval '1 microsecond')`, repo, tag, ttl.Microseconds()).Scan(&fresh)
	if err != nil {
		return false, fmt.Errorf("read the last check of %s:%s: %w", repo, tag, err)
	}
	return fresh, nil
}

// ProxyChecked records that tag of repo was found current upstream now.
func (d *DB) ProxyChecked(ctx context.Context, repo, tag string) error {
	_, err := d.q.Exec(ctx, `
INSERT INTO proxy_checks (repository, tag) VALUES ($1, $2)
ON CONFLICT (repository, tag) DO UPDATE SET checked_at = now()`, repo, tag)
	if err != nil {
		return fmt.Errorf("record the check of %s:%s: %w", repo, tag, err)
	}
	return nil
}

// ProxyBlobCommit records blob dgst, fetched from an upstream and
// verified, and links it into repository repo, as BlobCommit does for an
// upload (ensureBytes has the same contract); then ProxyResolve records it
// as referenced by the cached manifests of repo that name it.
//
// Locks: the blob row FOR UPDATE (as blob commit); then, in a transaction
// of its own, what ProxyResolve locks.
func (d *DB) ProxyBlobCommit(ctx context.Context, repo, dgst string, size int64, ensureBytes func(context.Context) error, actor Actor) error {
	err := d.withTx(ctx, func(tx pgx.Tx) error {
		repoID, err := repositoryEnsure(ctx, tx, repo)
		if err != nil {
			return err
		}
		state, inserted, err := blobLockOrInsert(ctx, tx, dgst, size)
		if err != nil {
			return err
		}
		if inserted || state != BlobReady {
			if err := ensureBytes(ctx); err != nil {
				return fmt.Errorf("publish blob %s: %w", dgst, err)
			}
			if !inserted {
				if _, err := tx.Exec(ctx, `UPDATE blobs SET state = 'ready' WHERE digest = $1`, dgst); err != nil {
					return fmt.Errorf("revive blob %s: %w", dgst, err)
				}
			}
		}
		if err := blobLink(ctx, tx, repoID, dgst); err != nil {
			return err
		}
		if err := audit(ctx, tx, actor, event{action: ActionBlobUpload, repository: repo, digest: dgst,
			detail: map[string]any{"size": size, "proxy": true}}); err != nil {
			return err
		}
		return enqueue(ctx, tx, CandidateBlob, dgst, d.gc.ReviewDelay)
	})
	if err != nil {
		return err
	}
	_, err = d.ProxyResolve(ctx, repo, dgst, false)
	return err
}

// ProxyResolve records manifest or blob dgst, now cached, as referenced by
// the manifests of repo that were stored while it was absent: a child
// manifest becomes a manifest_children row of each such index, a blob a
// manifest_blobs row (and is linked into repo, if it is not yet, when a
// manifest of repo names it: the upstream said repo holds it). It returns
// whether dgst is now live (manifest) or linked (blob) in repo.
//
// Locks, in the package's order: for a manifest, the child FOR SHARE, then
// the indexes naming it FOR SHARE, in digest order; for a blob, the
// manifests naming it FOR SHARE, in digest order, then the blob FOR SHARE
// (which keeps garbage collection from its links, as a mount does).
func (d *DB) ProxyResolve(ctx context.Context, repo, dgst string, isManifest bool) (present bool, err error) {
	err = d.withTx(ctx, func(tx pgx.Tx) error {
		present = false
		// A reference gained by a live manifest changes the repository's
		// usage (noteRef): the usage lock first, as for a push.
		if err := usageLockShared(ctx, tx, repo); err != nil {
			return err
		}
		var repoID int64
		err := tx.QueryRow(ctx, `SELECT id FROM repositories WHERE name = $1`, repo).Scan(&repoID)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("find repository %s: %w", repo, err)
		}
		var childID int64
		if isManifest {
			err := tx.QueryRow(ctx, `
SELECT id FROM manifests WHERE repository_id = $1 AND digest = $2 AND deleted_at IS NULL FOR SHARE`, repoID, dgst).Scan(&childID)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("lock manifest %s: %w", dgst, err)
			}
			present = true
		}
		rows, err := tx.Query(ctx, `
SELECT m.id FROM manifest_absent_refs a JOIN manifests m ON m.id = a.manifest_id
WHERE m.repository_id = $1 AND a.digest = $2 AND a.is_manifest = $3
ORDER BY m.digest
FOR SHARE OF m`, repoID, dgst, isManifest)
		if err != nil {
			return fmt.Errorf("lock the manifests naming %s: %w", dgst, err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return fmt.Errorf("lock the manifests naming %s: %w", dgst, err)
		}
		if isManifest {
			if len(ids) > 0 {
				if _, err := tx.Exec(ctx, `
INSERT INTO manifest_children (parent_id, child_id) SELECT unnest($1::bigint[]), $2
ON CONFLICT DO NOTHING`, ids, childID); err != nil {
					return fmt.Errorf("record %s as a child: %w", dgst, err)
				}
			}
			// The manifest's own absent blobs that were cached while it
			// was being stored (their ProxyResolve ran before it
			// committed, and could not see it).
			if err := manifestResolveBlobs(ctx, tx, repoID, repo, childID); err != nil {
				return err
			}
		} else {
			var ready, linked bool
			err := tx.QueryRow(ctx, `SELECT state = 'ready' FROM blobs WHERE digest = $1 FOR SHARE`, dgst).Scan(&ready)
			if errors.Is(err, pgx.ErrNoRows) || err == nil && !ready {
				return nil
			}
			if err != nil {
				return fmt.Errorf("lock blob %s: %w", dgst, err)
			}
			// After the lock, in a statement of its own: it sees a link a
			// collector removed while we waited.
			err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM repository_blobs WHERE repository_id = $1 AND digest = $2)`,
				repoID, dgst).Scan(&linked)
			if err != nil {
				return fmt.Errorf("find blob %s in %s: %w", dgst, repo, err)
			}
			if !linked {
				if len(ids) == 0 {
					return nil
				}
				if err := blobLink(ctx, tx, repoID, dgst); err != nil {
					return err
				}
				if err := enqueue(ctx, tx, CandidateBlob, dgst, d.gc.ReviewDelay); err != nil {
					return err
				}
			}
			present = true
			if len(ids) == 0 {
				return nil
			}
			// Each reference a live manifest gains counts in the
			// repository's usage, as if the manifest had had it from the
			// start (a tombstone's count when it is revived).
			rows, err := tx.Query(ctx, `
WITH ins AS (
    INSERT INTO manifest_blobs (manifest_id, digest) SELECT unnest($1::bigint[]), $2
    ON CONFLICT DO NOTHING RETURNING manifest_id)
SELECT count(*) FROM ins JOIN manifests m ON m.id = ins.manifest_id WHERE m.deleted_at IS NULL`, ids, dgst)
			if err != nil {
				return fmt.Errorf("record blob %s: %w", dgst, err)
			}
			live, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[int64])
			if err != nil {
				return fmt.Errorf("record blob %s: %w", dgst, err)
			}
			for range live {
				noteRef(tx, repoID, repo, dgst)
			}
		}
		_, err = tx.Exec(ctx, `DELETE FROM manifest_absent_refs WHERE manifest_id = ANY($1) AND digest = $2`, ids, dgst)
		if err != nil {
			return fmt.Errorf("forget absent %s: %w", dgst, err)
		}
		return nil
	})
	return present, err
}

// manifestResolveBlobs records as referenced the absent blobs of manifest
// id (locked) that are ready and linked into the repository now. Locks:
// those blobs FOR SHARE, in digest order; the links are read after.
func manifestResolveBlobs(ctx context.Context, tx pgx.Tx, repoID int64, repo string, id int64) error {
	rows, err := tx.Query(ctx, `
SELECT b.digest FROM blobs b
WHERE b.digest IN (SELECT digest FROM manifest_absent_refs WHERE manifest_id = $1 AND NOT is_manifest) AND b.state = 'ready'
ORDER BY b.digest FOR SHARE`, id)
	if err != nil {
		return fmt.Errorf("lock absent blobs: %w", err)
	}
	ready, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(ready) == 0 {
		return err
	}
	// The manifest is live (locked FOR SHARE by the caller): each
	// reference it gains counts in the repository's usage (noteRef).
	rows, err = tx.Query(ctx, `
WITH linked AS (
    DELETE FROM manifest_absent_refs a USING repository_blobs rb
    WHERE a.manifest_id = $1 AND NOT a.is_manifest AND a.digest = ANY($3)
      AND rb.repository_id = $2 AND rb.digest = a.digest
    RETURNING a.digest)
INSERT INTO manifest_blobs (manifest_id, digest) SELECT $1, digest FROM linked ON CONFLICT DO NOTHING
RETURNING digest`, id, repoID, ready)
	if err != nil {
		return fmt.Errorf("record absent blobs: %w", err)
	}
	gained, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("record absent blobs: %w", err)
	}
	for _, dg := range gained {
		noteRef(tx, repoID, repo, dg)
	}
	return nil
}

// ProxyAbsentBlob returns the size a cached manifest of repo declares for
// blob dgst, which is not cached yet; found is false when no manifest of
// repo names it as absent.
func (d *DB) ProxyAbsentBlob(ctx context.Context, repo, dgst string) (size int64, found bool, err error) {
	err = d.q.QueryRow(ctx, `
SELECT a.size FROM repositories r JOIN manifests m ON m.repository_id = r.id
JOIN manifest_absent_refs a ON a.manifest_id = m.id
WHERE r.name = $1 AND a.digest = $2 AND NOT a.is_manifest AND m.deleted_at IS NULL LIMIT 1`, repo, dgst).Scan(&size)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("look up absent blob %s: %w", dgst, err)
	}
	return size, true, nil
}

// ManifestAbsentChildren returns the child manifests that the manifest
// dgst of repo lists but that are not stored (a sparse index of a
// pull-through cache), in digest order.
func (d *DB) ManifestAbsentChildren(ctx context.Context, repo, dgst string) ([]string, error) {
	rows, err := d.q.Query(ctx, `
SELECT a.digest FROM repositories r JOIN manifests m ON m.repository_id = r.id
JOIN manifest_absent_refs a ON a.manifest_id = m.id
WHERE r.name = $1 AND m.digest = $2 AND a.is_manifest ORDER BY a.digest`, repo, dgst)
	if err != nil {
		return nil, fmt.Errorf("list absent children of %s: %w", dgst, err)
	}
	list, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list absent children of %s: %w", dgst, err)
	}
	return list, nil
}

// blobLockPresent is blobLockShared for a sparse manifest: it locks FOR
// SHARE, in digest order, the blobs that are ready and linked into the
// repository, and returns them (present) apart from the others (absent).
// A present blob with another size than declared is an error, as for any
// manifest.
func blobLockPresent(ctx context.Context, tx pgx.Tx, repoID int64, blobs []BlobRef, digests []string) (present, absent []BlobRef, err error) {
	if len(blobs) == 0 {
		return nil, nil, nil
	}
	sizes := make([]int64, len(blobs))
	ready := make([]bool, len(blobs))
	rows, err := tx.Query(ctx, `
SELECT digest, size FROM blobs WHERE digest = ANY($1) AND state = 'ready' ORDER BY digest FOR SHARE`, digests)
	if err != nil {
		return nil, nil, fmt.Errorf("lock referenced blobs: %w", err)
	}
	if err := inDigestOrder(rows, blobs, func(i int, row pgx.Rows) error { ready[i] = true; return row.Scan(nil, &sizes[i]) }); err != nil {
		return nil, nil, fmt.Errorf("lock referenced blobs: %w", err)
	}
	linked := make([]bool, len(blobs))
	rows, err = tx.Query(ctx, `
SELECT digest FROM repository_blobs WHERE repository_id = $1 AND digest = ANY($2) ORDER BY digest`, repoID, digests)
	if err != nil {
		return nil, nil, fmt.Errorf("check blob links: %w", err)
	}
	if err := inDigestOrder(rows, blobs, func(i int, _ pgx.Rows) error { linked[i] = true; return nil }); err != nil {
		return nil, nil, fmt.Errorf("check blob links: %w", err)
	}
	for i, b := range blobs {
		switch {
		case !ready[i] || !linked[i]:
			absent = append(absent, b)
		case sizes[i] != b.Size:
			return nil, nil, &SizeMismatchError{Digest: b.Digest, Declared: b.Size, Real: sizes[i]}
		default:
			present = append(present, b)
		}
	}
	return present, absent, nil
}

// manifestRecordAbsent records what sparse manifest id references that
// is not stored.
func manifestRecordAbsent(ctx context.Context, tx pgx.Tx, id int64, blobs []BlobRef, children []string) error {
	if len(blobs)+len(children) == 0 {
		return nil
	}
	digests := make([]string, 0, len(blobs)+len(children))
	sizes := make([]int64, 0, cap(digests))
	isManifest := make([]bool, 0, cap(digests))
	for _, b := range blobs {
		digests, sizes, isManifest = append(digests, b.Digest), append(sizes, b.Size), append(isManifest, false)
	}
	for _, c := range children {
		digests, sizes, isManifest = append(digests, c), append(sizes, 0), append(isManifest, true)
	}
	_, err := tx.Exec(ctx, `
INSERT INTO manifest_absent_refs (manifest_id, digest, is_manifest, size)
SELECT $1, unnest($2::text[]), unnest($3::bool[]), unnest($4::bigint[])
ON CONFLICT DO NOTHING`, id, digests, isManifest, sizes)
	if err != nil {
		return fmt.Errorf("record absent references: %w", err)
	}
	return nil
}
