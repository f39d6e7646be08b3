package db

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// # Usage and quotas
//
// The usage of a repository is the size of the distinct blobs (configs
// and layers) its live manifests reference, plus the size of those
// manifests. A namespace is a path prefix: "team" covers the repository
// "team" and every repository whose name starts with "team/", never
// "teamx". The usage of a namespace counts each blob once, however many of
// its repositories reference it; manifests are rows of their repository
// (the same manifest pushed to two repositories is stored twice), so their
// bytes add up.
//
// The numbers are kept exact by the transactions that make a manifest live
// or not live, never by a scan: a push that inserts or revives a manifest,
// a delete by digest, retention's deletes, garbage collection's delete of
// an untagged manifest. (Purging a tombstone changes nothing: it was not
// live.) Each of them notes the manifest in its outbox (noteLive), and
// the outbox's flush applies the notes at the end of the transaction,
// after every other change and the audit rows, before the events
// (usageFlush, called by flushOutbox):
//
//   - repository_blob_refs counts, per repository and blob, the live
//     manifests that reference it; a blob's bytes count in the repository
//     while its count is above zero (repository_usage);
//   - for each quota whose prefix covers the repository, quota_blob_refs
//     counts the repositories of the namespace that reference the blob,
//     and the quota row holds the namespace's usage. A push that would
//     take it over the limit fails with *QuotaExceededError, and the
//     transaction rolls back.
//
// Locks. The usage advisory lock (usageLockSpace, hashtext of the
// repository's first path component) is taken shared as the FIRST lock
// of every transaction that may change a manifest's liveness: a push in
// the statement that ensures its repository (repositoryEnsureUsage), a
// delete, a retention run and a garbage collection review before they
// lock any manifest (usageLockShared). The only exclusive holder is
// QuotaSet creating a quota, which takes it alone, first, and then waits
// for nothing: so a shared holder never waits for it while holding a row
// another transaction waits for, and PostgreSQL never has to reorder a
// lock queue (which it does only after deadlock_timeout).
//
// The usage rows (item 7 of db.go's list, after the garbage candidates and
// before the event streams) are changed at the end of the transaction,
// one repository at a time in name order, in one statement
// (usageApplySQL): the quotas covering the repository FOR UPDATE, in
// prefix order; the repository's repository_blob_refs rows, in digest
// order, and its repository_usage row; then, for each quota in prefix
// order, its quota_blob_refs rows in digest order and its usage.
//
// The advisory lock is what makes creating a quota exact while pushes
// run: QuotaSet takes it exclusively before it counts what the namespace
// holds, so every transaction that changes the namespace's liveness has
// either committed before it counts (and is counted), or waits for it at
// its start, and then finds the new quota (every statement after the lock
// sees it, under READ COMMITTED).

// usageLockSpace is the first key of the advisory locks of usage (two-key
// form); the second is hashtext of a top-level namespace.
const usageLockSpace = 0x7573

// usageNote is a manifest that became live (+1) or stopped being live
// (-1) in a transaction; or, with digest set, a reference from a live
// manifest to blob digest recorded after the manifest itself (noteRef).
type usageNote struct {
	repoID     int64
	repo       string
	manifestID int64
	sign       int32
	digest     string
}

// noteLive records, for the flush at the end of the transaction, that
// manifest id of repository repoID (repo) became live (sign +1) or not live
// (-1). Outside withTx (a dry run, which rolls back) there is nothing to
// keep.
func noteLive(tx pgx.Tx, repoID int64, repo string, id int64, sign int32) {
	if o := outboxOf(tx); o != nil {
		o.usage = append(o.usage, usageNote{repoID: repoID, repo: repo, manifestID: id, sign: sign})
	}
}

// noteRef records, for the flush at the end of the transaction, that a
// live manifest of repository repoID (repo) has gained a reference to blob
// digest: a pull-through cache's manifest stored before the blob, which it
// listed as absent (manifest_absent_refs), gets the reference once the
// blob is cached (ProxyResolve). It counts like a reference the manifest
// had from the start; it is never refused by a quota, since the manifest
// was admitted when it was stored and the bytes are already in the store.
func noteRef(tx pgx.Tx, repoID int64, repo, digest string) {
	if o := outboxOf(tx); o != nil {
		o.usage = append(o.usage, usageNote{repoID: repoID, repo: repo, sign: 1, digest: digest})
	}
}

// QuotaExceededError refuses a manifest push that would take a namespace's
// usage over its quota.
type QuotaExceededError struct {
	Prefix string
	Limit  int64 // bytes
	Usage  int64 // bytes used before the push
	Push   int64 // bytes the push would add
}

func (e *QuotaExceededError) Error() string {
	return fmt.Sprintf("quota of %s exceeded: limit %s, usage %s, this push adds %s",
		e.Prefix, FormatBytes(e.Limit), FormatBytes(e.Usage), FormatBytes(e.Push))
}

// FormatBytes writes n bytes in binary units with the exact number beside
// them, "1.5 GiB (1610612736 bytes)", so that a reader can check a limit
// to the byte.
func FormatBytes(n int64) string {
	return fmt.Sprintf("%s (%d bytes)", HumanBytes(n), n)
}

// HumanBytes writes n bytes in the largest binary unit not above it, with
// one decimal: "1.5 GiB", "812 B".
func HumanBytes(n int64) string {
	const units = "KMGTPE"
	if n < 1024 && n > -1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/1024, 0
	for (v >= 1024 || v <= -1024) && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, units[i])
}

// quotaWarning is a quota whose usage crossed its warn threshold in a
// transaction: logged once it commits.
type quotaWarning struct {
	prefix              string
	usage, limit, after int64
	percent             int
}

// usageFlush applies the liveness changes noted in o, repository by
// repository in name order (see the top of this file for the locks).
func (d *DB) usageFlush(ctx context.Context, tx pgx.Tx, o *outbox) error {
	if o == nil || len(o.usage) == 0 {
		return nil
	}
	type repoKey struct {
		name string
		id   int64
	}
	// Net the notes: a manifest deleted and revived in one transaction
	// changes nothing.
	net := map[repoKey]map[int64]int32{}
	refs := map[repoKey][]string{}
	for _, n := range o.usage {
		k := repoKey{n.repo, n.repoID}
		if n.digest != "" {
			refs[k] = append(refs[k], n.digest)
			continue
		}
		if net[k] == nil {
			net[k] = map[int64]int32{}
		}
		net[k][n.manifestID] += n.sign
	}
	o.usage = o.usage[:0]
	keys := make([]repoKey, 0, len(net))
	for k := range net {
		keys = append(keys, k)
	}
	for k := range refs {
		if net[k] == nil {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b repoKey) int { return strings.Compare(a.name, b.name) })
	for _, k := range keys {
		var ids []int64
		var signs []int32
		for id, s := range net[k] {
			if s != 0 {
				ids, signs = append(ids, id), append(signs, s)
			}
		}
		if len(ids) == 0 && len(refs[k]) == 0 {
			continue
		}
		if err := d.usageApply(ctx, tx, o, k.id, k.name, ids, signs, refs[k]); err != nil {
			return err
		}
	}
	return nil
}

// usageLocked records that tx holds the usage advisory lock of repo's
// top-level namespace.
func usageLocked(tx pgx.Tx, repo string) {
	if o := outboxOf(tx); o != nil {
		if o.locked == nil {
			o.locked = map[string]bool{}
		}
		o.locked[topLevel(repo)] = true
	}
}

// usageLockShared takes, as the first lock of a transaction that may make
// a manifest of repo not live (a delete, retention, garbage collection),
// the usage advisory lock of repo's namespace, shared. First, because a
// quota being created waits for it exclusively: a transaction that asked
// for it while holding a manifest or tag row would queue behind that
// quota, which waits for pushes that may wait for that row.
func usageLockShared(ctx context.Context, tx pgx.Tx, repo string) error {
	if o := outboxOf(tx); o != nil && o.locked[topLevel(repo)] {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared($1::int, hashtext($2))`,
		usageLockSpace, topLevel(repo)); err != nil {
		return fmt.Errorf("lock usage of %s: %w", repo, err)
	}
	usageLocked(tx, repo)
	return nil
}

// topLevel is the first path component of a repository name.
func topLevel(repo string) string {
	top, _, _ := strings.Cut(repo, "/")
	return top
}

// usageApplySQL applies a repository's liveness changes ($1 repository
// id; $2, $3 manifest ids and signs) and locks the quotas covering it ($4,
// the prefixes that cover its name; $5, blobs gained by live manifests,
// see noteRef), in one statement. The quotas are
// locked first, in prefix order: the upsert of the reference counts takes
// its input through an aggregate over them, which must read (and lock)
// every quota row before it yields a row. The reference counts are then
// upserted in digest order. It returns one row per quota ('q'), one with
// the change of manifest bytes and count ('m'), and one per blob that came
// into the repository or left it ('b').
const usageApplySQL = `
WITH q AS (
    SELECT id, prefix, limit_bytes, warn_percent, blob_bytes + manifest_bytes AS used
    FROM quotas WHERE prefix = ANY($4) ORDER BY prefix FOR UPDATE),
qn AS (SELECT count(*) AS n FROM q),
ch AS (SELECT * FROM unnest($2::bigint[], $3::int[]) AS u(id, sign)),
d AS (
    SELECT x.digest, sum(x.sign)::int AS delta
    FROM (SELECT mb.digest, ch.sign FROM ch JOIN manifest_blobs mb ON mb.manifest_id = ch.id
          UNION ALL SELECT unnest($5::text[]), 1) x
    GROUP BY x.digest HAVING sum(x.sign) <> 0),
up AS (
    INSERT INTO repository_blob_refs AS r (repository_id, digest, refs)
    SELECT $1, d.digest, d.delta FROM d CROSS JOIN qn ORDER BY d.digest
    ON CONFLICT (repository_id, digest) DO UPDATE SET refs = r.refs + excluded.refs
    RETURNING r.digest, r.refs),
tr AS (
    SELECT up.digest, up.refs > 0 AS came, b.size
    FROM up JOIN d ON d.digest = up.digest JOIN blobs b ON b.digest = up.digest
    WHERE (up.refs > 0) <> (up.refs - d.delta > 0)),
m AS (
    SELECT coalesce(sum(ch.sign * mf.size), 0)::bigint AS bytes, coalesce(sum(ch.sign), 0)::bigint AS n
    FROM ch JOIN manifests mf ON mf.id = ch.id),
ru AS (
    INSERT INTO repository_usage AS ru (repository_id, blob_bytes, manifest_bytes, manifests)
    SELECT $1, coalesce((SELECT sum(CASE WHEN came THEN size ELSE -size END) FROM tr), 0), m.bytes, m.n
    FROM m CROSS JOIN qn
    ON CONFLICT (repository_id) DO UPDATE SET blob_bytes = ru.blob_bytes + excluded.blob_bytes,
        manifest_bytes = ru.manifest_bytes + excluded.manifest_bytes, manifests = ru.manifests + excluded.manifests)
SELECT 'q', prefix, false, id, limit_bytes, used, warn_percent FROM q
UNION ALL
SELECT 'm', '', false, bytes, n, 0, 0 FROM m
UNION ALL
SELECT 'b', digest, came, size, 0, 0, 0 FROM tr`

// usageApply applies to repository repoID the liveness changes of the
// manifests ids (signs: +1 live now, -1 not live any more), and the
// references refs that live manifests gained (noteRef; never refused).
func (d *DB) usageApply(ctx context.Context, tx pgx.Tx, o *outbox, repoID int64, repo string, ids []int64, signs []int32, refs []string) error {
	// Every path takes the lock at its start (repositoryEnsureUsage,
	// usageLockShared); this is the backstop for one that would not,
	// correct but able to stall behind a quota being created.
	if err := usageLockShared(ctx, tx, repo); err != nil {
		return err
	}
	type quota struct {
		id           int64
		prefix       string
		limit, usage int64
		warn         int
	}
	var quotas []quota
	var came, went []string
	var manifestBytes, manifests int64
	if refs == nil {
		refs = []string{}
	}
	rows, err := tx.Query(ctx, usageApplySQL, repoID, ids, signs, namespacesOf(repo), refs)
	if err != nil {
		return fmt.Errorf("count usage of %s: %w", repo, err)
	}
	for rows.Next() {
		var kind, name string
		var in bool
		var a, b, c int64
		var e int
		if err := rows.Scan(&kind, &name, &in, &a, &b, &c, &e); err != nil {
			rows.Close()
			return fmt.Errorf("count usage of %s: %w", repo, err)
		}
		switch {
		case kind == "q":
			quotas = append(quotas, quota{id: a, prefix: name, limit: b, usage: c, warn: e})
		case kind == "m":
			manifestBytes, manifests = a, b
		case in:
			came = append(came, name)
		default:
			went = append(went, name)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("count usage of %s: %w", repo, err)
	}
	if len(went) > 0 {
		// Rows stay only while refs > 0; ours are locked since the upsert.
		if _, err := tx.Exec(ctx, `
DELETE FROM repository_blob_refs WHERE repository_id = $1 AND digest = ANY($2) AND refs <= 0`, repoID, went); err != nil {
			return fmt.Errorf("count usage of %s: %w", repo, err)
		}
	}
	if len(quotas) == 0 || (manifestBytes == 0 && manifests == 0 && len(came) == 0 && len(went) == 0) {
		return nil
	}
	// The repository's blob changes, as the quotas count them: +1 for a
	// blob that came into it, -1 for one that left, in digest order.
	type change struct {
		digest string
		delta  int32
	}
	changes := make([]change, 0, len(came)+len(went))
	for _, dg := range came {
		changes = append(changes, change{dg, 1})
	}
	for _, dg := range went {
		changes = append(changes, change{dg, -1})
	}
	slices.SortFunc(changes, func(a, b change) int { return strings.Compare(a.digest, b.digest) })
	digests := make([]string, len(changes))
	deltas := make([]int32, len(changes))
	for i, c := range changes {
		digests[i], deltas[i] = c.digest, c.delta
	}
	for _, q := range quotas {
		// The quota's reference counts, what they add up to, and its
		// usage updated, in one statement; refused below, the whole
		// transaction rolls back.
		var blobBytes, after int64
		var gone []string
		var crossed bool
		err := tx.QueryRow(ctx, `
WITH d AS (SELECT * FROM unnest($2::text[], $3::int[]) AS u(digest, delta)),
up AS (
    INSERT INTO quota_blob_refs AS q (quota_id, digest, refs)
    SELECT $1, d.digest, d.delta FROM d ORDER BY d.digest
    ON CONFLICT (quota_id, digest) DO UPDATE SET refs = q.refs + excluded.refs
    RETURNING q.digest, q.refs),
tr AS (
    SELECT up.digest, up.refs > 0 AS came, b.size
    FROM up JOIN d ON d.digest = up.digest JOIN blobs b ON b.digest = up.digest
    WHERE (up.refs > 0) <> (up.refs - d.delta > 0)),
s AS (
    SELECT coalesce(sum(CASE WHEN came THEN size ELSE -size END), 0)::bigint AS bytes,
           coalesce(array_agg(digest) FILTER (WHERE NOT came), '{}') AS gone
    FROM tr),
u AS (
    UPDATE quotas q SET blob_bytes = q.blob_bytes + s.bytes, manifest_bytes = q.manifest_bytes + $4, manifests = q.manifests + $5,
        warned_at = CASE WHEN q.warn_percent > 0 AND (q.blob_bytes + q.manifest_bytes + s.bytes + $4) * 100 >= q.limit_bytes * q.warn_percent
                         THEN coalesce(q.warned_at, now()) END
    FROM s WHERE q.id = $1
    RETURNING q.blob_bytes + q.manifest_bytes AS after, q.warned_at IS NOT NULL AS warned)
SELECT s.bytes, s.gone, u.after, u.warned FROM s, u`, q.id, digests, deltas, manifestBytes, manifests).Scan(&blobBytes, &gone, &after, &crossed)
		if err != nil {
			return fmt.Errorf("count usage of quota %s: %w", q.prefix, err)
		}
		added := blobBytes + manifestBytes
		if added > 0 && after > q.limit && len(ids) > 0 {
			return &QuotaExceededError{Prefix: q.prefix, Limit: q.limit, Usage: q.usage, Push: added}
		}
		// warned: at or above the threshold now; crossed only if it was
		// below before (the row read under the lock, above).
		if crossed && q.warn > 0 && q.usage*100 < q.limit*int64(q.warn) {
			o.warnings = append(o.warnings, quotaWarning{prefix: q.prefix, usage: q.usage, limit: q.limit, after: after, percent: q.warn})
		}
		if len(gone) > 0 {
			if _, err := tx.Exec(ctx, `
DELETE FROM quota_blob_refs WHERE quota_id = $1 AND digest = ANY($2) AND refs <= 0`, q.id, gone); err != nil {
				return fmt.Errorf("count usage of quota %s: %w", q.prefix, err)
			}
		}
	}
	return nil
}

// namespacesOf lists the prefixes that cover repository repo: "a/b/c"
// gives "a", "a/b" and "a/b/c".
func namespacesOf(repo string) []string {
	var out []string
	for i := range len(repo) {
		if repo[i] == '/' {
			out = append(out, repo[:i])
		}
	}
	return append(out, repo)
}

// inNamespace is the SQL condition that repository name column col lies in
// the namespace given as parameter $n: the repository itself, or one whose
// name continues with "/" ('0' is the byte after '/', so the range is what
// the name index can scan).
func inNamespace(col string, n int) string {
	return fmt.Sprintf(`(%[1]s = $%[2]d OR (%[1]s >= $%[2]d || '/' AND %[1]s < $%[2]d || '0'))`, col, n)
}

// Usage is what a repository or a namespace uses, in bytes.
type Usage struct {
	Name          string // repository name, or the namespace's prefix
	BlobBytes     int64  // distinct blobs referenced by live manifests
	ManifestBytes int64
	Manifests     int64
	Repositories  int64 // for a namespace: how many repositories it holds
}

// Total is the usage in bytes: blobs and manifests.
func (u Usage) Total() int64 { return u.BlobBytes + u.ManifestBytes }

// UsageReport is the usage of every repository in a namespace, and of the
// namespace as a whole, read in one snapshot.
type UsageReport struct {
	Repositories []Usage
	Namespace    Usage
}

// UsageOf reports the usage of the repositories in the namespace prefix
// (every repository when prefix is empty), by name, and the namespace's
// total, blobs counted once, all in one snapshot.
func (d *DB) UsageOf(ctx context.Context, prefix string) (UsageReport, error) {
	rep := UsageReport{Namespace: Usage{Name: prefix}}
	err := d.readTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
SELECT r.name, coalesce(u.blob_bytes, 0), coalesce(u.manifest_bytes, 0), coalesce(u.manifests, 0)
FROM repositories r LEFT JOIN repository_usage u ON u.repository_id = r.id
WHERE $1 = '' OR `+inNamespace("r.name", 1)+`
ORDER BY r.name`, prefix)
		if err != nil {
			return err
		}
		rep.Repositories, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Usage, error) {
			var u Usage
			err := row.Scan(&u.Name, &u.BlobBytes, &u.ManifestBytes, &u.Manifests)
			return u, err
		})
		if err != nil {
			return err
		}
		ns := &rep.Namespace
		ns.Repositories = int64(len(rep.Repositories))
		for _, u := range rep.Repositories {
			ns.ManifestBytes += u.ManifestBytes
			ns.Manifests += u.Manifests
		}
		return tx.QueryRow(ctx, `
SELECT coalesce(sum(b.size), 0)::bigint FROM blobs b
WHERE b.digest IN (
    SELECT rb.digest FROM repository_blob_refs rb JOIN repositories r ON r.id = rb.repository_id
    WHERE rb.refs > 0 AND ($1 = '' OR `+inNamespace("r.name", 1)+`))`, prefix).Scan(&ns.BlobBytes)
	})
	if err != nil {
		return UsageReport{}, fmt.Errorf("read usage of %q: %w", prefix, err)
	}
	return rep, nil
}

// UsageTopLevel reports the usage of every top-level namespace (the first
// component of repository names), blobs counted once in each: what the
// metrics expose. One statement.
func (d *DB) UsageTopLevel(ctx context.Context) ([]Usage, error) {
	rows, err := d.q.Query(ctx, `
WITH r AS (SELECT id, split_part(name, '/', 1) AS ns FROM repositories),
b AS (
    SELECT ns, sum(b.size)::bigint AS bytes
    FROM (SELECT DISTINCT r.ns, rb.digest FROM repository_blob_refs rb JOIN r ON r.id = rb.repository_id WHERE rb.refs > 0) x
    JOIN blobs b ON b.digest = x.digest GROUP BY ns),
m AS (
    SELECT r.ns, count(*) AS repos, sum(coalesce(u.manifest_bytes, 0))::bigint AS bytes, sum(coalesce(u.manifests, 0))::bigint AS n
    FROM r LEFT JOIN repository_usage u ON u.repository_id = r.id GROUP BY r.ns)
SELECT m.ns, coalesce(b.bytes, 0), m.bytes, m.n, m.repos FROM m LEFT JOIN b ON b.ns = m.ns ORDER BY m.ns`)
	if err != nil {
		return nil, fmt.Errorf("read usage of namespaces: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Usage, error) {
		var u Usage
		err := row.Scan(&u.Name, &u.BlobBytes, &u.ManifestBytes, &u.Manifests, &u.Repositories)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("read usage of namespaces: %w", err)
	}
	return out, nil
}

// readTx runs fn in a read-only REPEATABLE READ transaction: all its
// statements see one snapshot.
func (d *DB) readTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	bctx, cancel := d.guard.deadline(ctx)
	tx, err := d.pool.BeginTx(bctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	cancel()
	if err != nil {
		return fmt.Errorf("begin transaction: %w", d.guard.observe(ctx, err))
	}
	defer func() {
		rctx, cancel := d.guard.deadline(context.WithoutCancel(ctx))
		_ = tx.Rollback(rctx)
		cancel()
	}()
	return fn(guardedTx{Tx: tx, g: d.guard})
}

// Quota is a namespace's limit and its current usage.
type Quota struct {
	Prefix      string
	Limit       int64 // bytes
	WarnPercent int   // 0: no warning
	Usage
	WarnedAt  time.Time // when usage crossed the warn threshold; zero while under it
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Over reports whether the quota's usage is above its limit (possible after
// the limit was lowered: pushes that add bytes are refused until usage
// falls back under).
func (q Quota) Over() bool { return q.Total() > q.Limit }

// Warned reports whether usage is at or above the warn threshold.
func (q Quota) Warned() bool { return !q.WarnedAt.IsZero() }

// ErrQuotaUnknown means no quota has that prefix.
var ErrQuotaUnknown = errors.New("quota not known")

// QuotaSet sets the quota of the namespace prefix: limit bytes, and a
// warning at warnPercent of it (0: none). It reports whether the quota is
// new. A new quota starts from what the namespace holds, counted in the
// same transaction: it takes the namespace's advisory lock exclusively
// (see the top of this file), alone, so that every push or delete under
// way in the namespace commits first and is counted, and every later one
// updates the new quota. Changing an existing quota locks its row.
func (d *DB) QuotaSet(ctx context.Context, prefix string, limit int64, warnPercent int) (created bool, err error) {
	err = d.withTx(ctx, func(tx pgx.Tx) error {
		created = false
		tag, err := tx.Exec(ctx, `
UPDATE quotas SET limit_bytes = $2, warn_percent = $3, updated_at = now(),
    warned_at = CASE WHEN $3 > 0 AND (blob_bytes + manifest_bytes) * 100 >= $2::bigint * $3 THEN coalesce(warned_at, now()) END
WHERE prefix = $1`, prefix, limit, warnPercent)
		if err != nil {
			return fmt.Errorf("update quota %s: %w", prefix, err)
		}
		if tag.RowsAffected() == 1 {
			return nil
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1::int, hashtext(split_part($2, '/', 1)))`,
			usageLockSpace, prefix); err != nil {
			return fmt.Errorf("lock namespace %s: %w", prefix, err)
		}
		var id int64
		err = tx.QueryRow(ctx, `
INSERT INTO quotas (prefix, limit_bytes, warn_percent) VALUES ($1, $2, $3)
ON CONFLICT (prefix) DO NOTHING RETURNING id`, prefix, limit, warnPercent).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return errContended // created meanwhile: go round, and update it
		}
		if err != nil {
			return fmt.Errorf("create quota %s: %w", prefix, err)
		}
		created = true
		if _, err := tx.Exec(ctx, `
INSERT INTO quota_blob_refs (quota_id, digest, refs)
SELECT $1, rb.digest, count(*) FROM repository_blob_refs rb JOIN repositories r ON r.id = rb.repository_id
WHERE rb.refs > 0 AND `+inNamespace("r.name", 2)+`
GROUP BY rb.digest`, id, prefix); err != nil {
			return fmt.Errorf("count usage of quota %s: %w", prefix, err)
		}
		if _, err := tx.Exec(ctx, `
UPDATE quotas q SET blob_bytes = b.bytes, manifest_bytes = m.bytes, manifests = m.n,
    warned_at = CASE WHEN q.warn_percent > 0 AND (b.bytes + m.bytes) * 100 >= q.limit_bytes * q.warn_percent THEN now() END
FROM (SELECT coalesce(sum(b.size), 0)::bigint AS bytes FROM quota_blob_refs qb JOIN blobs b ON b.digest = qb.digest
      WHERE qb.quota_id = $1) b,
     (SELECT coalesce(sum(u.manifest_bytes), 0)::bigint AS bytes, coalesce(sum(u.manifests), 0)::bigint AS n
      FROM repository_usage u JOIN repositories r ON r.id = u.repository_id WHERE `+inNamespace("r.name", 2)+`) m
WHERE q.id = $1`, id, prefix); err != nil {
			return fmt.Errorf("count usage of quota %s: %w", prefix, err)
		}
		return nil
	})
	return created, err
}

// QuotaDelete removes the quota of prefix (ErrQuotaUnknown if none). It
// waits for pushes holding the quota's row.
func (d *DB) QuotaDelete(ctx context.Context, prefix string) error {
	tag, err := d.q.Exec(ctx, `DELETE FROM quotas WHERE prefix = $1`, prefix)
	if err != nil {
		return fmt.Errorf("delete quota %s: %w", prefix, err)
	}
	if tag.RowsAffected() == 0 {
		return notFound(ErrQuotaUnknown, "no quota covers %s", prefix)
	}
	return nil
}

// QuotaList returns every quota with its usage, by prefix.
func (d *DB) QuotaList(ctx context.Context) ([]Quota, error) {
	rows, err := d.q.Query(ctx, `
SELECT prefix, limit_bytes, warn_percent, blob_bytes, manifest_bytes, manifests,
       (SELECT count(*) FROM repositories r WHERE `+strings.ReplaceAll(inNamespace("r.name", 1), "$1", "q.prefix")+`),
       coalesce(warned_at, 'epoch'), created_at, updated_at
FROM quotas q ORDER BY prefix`)
	if err != nil {
		return nil, fmt.Errorf("list quotas: %w", err)
	}
	qs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Quota, error) {
		var q Quota
		err := row.Scan(&q.Prefix, &q.Limit, &q.WarnPercent, &q.BlobBytes, &q.ManifestBytes, &q.Manifests,
			&q.Repositories, &q.WarnedAt, &q.CreatedAt, &q.UpdatedAt)
		q.Name = q.Prefix
		if q.WarnedAt.Equal(time.Unix(0, 0)) {
			q.WarnedAt = time.Time{}
		}
		return q, err
	})
	if err != nil {
		return nil, fmt.Errorf("list quotas: %w", err)
	}
	return qs, nil
}

// Drift is one difference between the usage bookkeeping and a count from
// scratch.
type Drift struct {
	What     string // "repository team/app blob sha256:…", "quota team"
	Recorded string
	Counted  string
}

// UsageCheck counts every repository's and every quota's usage from
// scratch (manifests, manifest_blobs, blobs) and compares the counts with
// the bookkeeping, all in one snapshot. It returns the differences (none,
// unless something is wrong), and what it checked.
func (d *DB) UsageCheck(ctx context.Context) (drift []Drift, repos, quotas int, err error) {
	err = d.readTx(ctx, func(tx pgx.Tx) error {
		drift = nil
		add := func(rows pgx.Rows) error {
			ds, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Drift, error) {
				var dr Drift
				err := row.Scan(&dr.What, &dr.Recorded, &dr.Counted)
				return dr, err
			})
			drift = append(drift, ds...)
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT (SELECT count(*) FROM repositories), (SELECT count(*) FROM quotas)`).Scan(&repos, &quotas); err != nil {
			return err
		}
		// live: the distinct blobs each repository's live manifests
		// reference; inQuota: a repository r is in quota q's namespace.
		const live = `live AS (
    SELECT DISTINCT m.repository_id, mb.digest FROM manifests m JOIN manifest_blobs mb ON mb.manifest_id = m.id
    WHERE m.deleted_at IS NULL)`
		inQuota := strings.ReplaceAll(inNamespace("r.name", 1), "$1", "q.prefix")
		checks := []string{
			// Blob reference counts per repository.
			`
WITH want AS (
    SELECT m.repository_id, mb.digest, count(*)::int AS refs
    FROM manifests m JOIN manifest_blobs mb ON mb.manifest_id = m.id
    WHERE m.deleted_at IS NULL GROUP BY 1, 2)
SELECT 'repository ' || r.name || ' blob ' || coalesce(w.digest, g.digest) || ' references',
       coalesce(g.refs::text, 'none'), coalesce(w.refs::text, 'none')
FROM want w FULL JOIN repository_blob_refs g ON g.repository_id = w.repository_id AND g.digest = w.digest
JOIN repositories r ON r.id = coalesce(w.repository_id, g.repository_id)
WHERE g.refs IS DISTINCT FROM w.refs
ORDER BY 1 LIMIT 1000`,
			// Totals per repository.
			`
WITH ` + live + `,
b AS (
    SELECT l.repository_id, sum(bl.size)::bigint AS bytes
    FROM live l JOIN blobs bl ON bl.digest = l.digest GROUP BY 1),
m AS (
    SELECT repository_id, sum(size)::bigint AS bytes, count(*) AS n FROM manifests WHERE deleted_at IS NULL GROUP BY 1),
want AS (
    SELECT r.id, r.name, coalesce(b.bytes, 0) AS blob_bytes, coalesce(m.bytes, 0) AS manifest_bytes, coalesce(m.n, 0) AS manifests
    FROM repositories r LEFT JOIN b ON b.repository_id = r.id LEFT JOIN m ON m.repository_id = r.id)
SELECT 'repository ' || w.name || ' usage',
       format('%s blob bytes, %s manifest bytes, %s manifests', coalesce(u.blob_bytes, 0), coalesce(u.manifest_bytes, 0), coalesce(u.manifests, 0)),
       format('%s blob bytes, %s manifest bytes, %s manifests', w.blob_bytes, w.manifest_bytes, w.manifests)
FROM want w LEFT JOIN repository_usage u ON u.repository_id = w.id
WHERE (coalesce(u.blob_bytes, 0), coalesce(u.manifest_bytes, 0), coalesce(u.manifests, 0)) <> (w.blob_bytes, w.manifest_bytes, w.manifests)
ORDER BY 1 LIMIT 1000`,
			// Quotas: reference counts (repositories of the namespace per
			// blob)...
			`
WITH ` + live + `,
want AS (
    SELECT q.id, l.digest, count(*)::int AS refs
    FROM quotas q JOIN repositories r ON ` + inQuota + `
    JOIN live l ON l.repository_id = r.id GROUP BY 1, 2)
SELECT 'quota ' || q.prefix || ' blob ' || coalesce(w.digest, g.digest) || ' repositories',
       coalesce(g.refs::text, 'none'), coalesce(w.refs::text, 'none')
FROM want w FULL JOIN quota_blob_refs g ON g.quota_id = w.id AND g.digest = w.digest
JOIN quotas q ON q.id = coalesce(w.id, g.quota_id)
WHERE g.refs IS DISTINCT FROM w.refs
ORDER BY 1 LIMIT 1000`,
			// ...and totals.
			`
WITH ` + live + `,
want AS (
    SELECT q.id,
        coalesce((SELECT sum(b.size) FROM blobs b WHERE b.digest IN (
            SELECT l.digest FROM live l JOIN repositories r ON r.id = l.repository_id
            WHERE ` + inQuota + `)), 0)::bigint AS blob_bytes,
        coalesce((SELECT sum(m.size) FROM manifests m JOIN repositories r ON r.id = m.repository_id
            WHERE m.deleted_at IS NULL AND ` + inQuota + `), 0)::bigint AS manifest_bytes,
        (SELECT count(*) FROM manifests m JOIN repositories r ON r.id = m.repository_id
            WHERE m.deleted_at IS NULL AND ` + inQuota + `) AS manifests
    FROM quotas q)
SELECT 'quota ' || q.prefix || ' usage',
       format('%s blob bytes, %s manifest bytes, %s manifests', q.blob_bytes, q.manifest_bytes, q.manifests),
       format('%s blob bytes, %s manifest bytes, %s manifests', w.blob_bytes, w.manifest_bytes, w.manifests)
FROM want w JOIN quotas q ON q.id = w.id
WHERE (q.blob_bytes, q.manifest_bytes, q.manifests) <> (w.blob_bytes, w.manifest_bytes, w.manifests)
ORDER BY 1`,
		}
		for _, q := range checks {
			rows, err := tx.Query(ctx, q)
			if err != nil {
				return err
			}
			if err := add(rows); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, 0, 0, fmt.Errorf("check usage: %w", err)
	}
	return drift, repos, quotas, nil
}

// logQuotaWarnings logs, once per crossing, the quotas whose usage a
// committed transaction took to their warn threshold or above.
func (d *DB) logQuotaWarnings(ctx context.Context, ws []quotaWarning) {
	for _, w := range ws {
		d.log.WarnContext(ctx, "quota warning threshold crossed", "prefix", w.prefix, "warn_percent", w.percent,
			"usage_bytes", w.after, "limit_bytes", w.limit, "usage", HumanBytes(w.after), "limit", HumanBytes(w.limit))
	}
}

// UsageRepository reports the usage of repository repo (zero for one that
// does not exist or holds no live manifest) and the quotas that cover it,
// by prefix: one statement each, for the web interface.
func (d *DB) UsageRepository(ctx context.Context, repo string) (Usage, []Quota, error) {
	u := Usage{Name: repo}
	err := d.q.QueryRow(ctx, `
SELECT coalesce(u.blob_bytes, 0), coalesce(u.manifest_bytes, 0), coalesce(u.manifests, 0)
FROM repositories r JOIN repository_usage u ON u.repository_id = r.id WHERE r.name = $1`, repo).
		Scan(&u.BlobBytes, &u.ManifestBytes, &u.Manifests)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return Usage{}, nil, fmt.Errorf("read usage of %s: %w", repo, err)
	}
	all, err := d.QuotaList(ctx)
	if err != nil {
		return Usage{}, nil, err
	}
	var covering []Quota
	for _, q := range all {
		if slices.Contains(namespacesOf(repo), q.Prefix) {
			covering = append(covering, q)
		}
	}
	return u, covering, nil
}
