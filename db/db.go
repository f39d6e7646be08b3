// Package db owns Berth's metadata: every SQL statement, the pgx pool and the
// transactions. Nothing outside this package imports pgx; callers see plain
// Go types and this package's errors.
//
// # Tables
//
//	repositories ─┬─< repository_blobs >── blobs (global, by digest)
//	              │                          ▲        ▲
//	              ├─< manifests ─< manifest_blobs ─┘    │ (config + layers)
//	              │      ▲  └───< manifest_children >─┐ │ (index → child manifests)
//	              │      └────────────────────────────┘ │
//	              ├─< tags ──> manifests                │
//	              └─< uploads   (bytes in the blob store, not here)
//
//	users ─┬─< group_members >── groups
//	       └─< api_tokens
//	grants (subject: a user name, "group:<name>", "anonymous" or
//	        "authenticated"; text, not a key: see auth.go)
//	signing_keys
//
//	manifests ─< manifest_pulls, tags ─< tag_pulls (pull statistics, ON DELETE CASCADE)
//
//	repositories ─< repository_blob_refs (blobs its live manifests reference, counted), ─ repository_usage
//	quotas (a namespace: a prefix, a limit, its usage) ─< quota_blob_refs
//
//	event_streams (one per repository: the last seq) ─< events ─< webhook_deliveries >── webhooks
//	tag_rules (immutable and protected tags: a repository glob, a tag regexp)
//
//	proxies (pull-through caches: a name prefix → an upstream), proxy_keys,
//	proxy_claims (who fetches what from an upstream), proxy_checks (when a
//	cached tag was last found current); manifests ─< manifest_absent_refs
//	(what a cached manifest names that is not cached yet; see proxy.go)
//
// A blob is visible in a repository only through repository_blobs. A
// manifest row is live while deleted_at is NULL; a delete by digest writes a
// tombstone and removes the manifest's tags in the same transaction.
//
// # Locks
//
// Every state change is one transaction (see withTx). Row locks are taken in
// one global order, so two transactions never wait on each other in a
// cycle, and PostgreSQL never has to break a deadlock:
//
//  1. repositories: a row is inserted once (ON CONFLICT) and never locked
//     afterwards, so it takes no part in any wait;
//  2. upload sessions (opening one first takes an advisory lock on the
//     repository's sessions, to count them; see UploadCreate);
//  3. manifests: child manifests before their index, which cannot form a
//     cycle because an index cannot list itself or an ancestor (digests are
//     computed over the content); siblings in ascending digest order;
//  4. tags, in ascending name order (byte order, as tags.name sorts), so
//     that two pushes of overlapping tag sets, or a push and the delete of
//     a manifest those tags point at, wait instead of deadlocking;
//  5. blobs, in ascending digest order;
//  6. garbage collection candidates (gc_queue): a transaction queues its
//     candidates at the end, and the collector claims candidates in a
//     transaction of their own that locks nothing else;
//  7. usage (see usage.go), applied at the end of the transaction, after
//     the audit rows and before the events, one repository at a time in
//     name order: the quotas covering it FOR UPDATE in prefix order, the
//     repository's repository_blob_refs rows in digest order and its
//     repository_usage row, then each quota's quota_blob_refs rows in
//     digest order. Before all of them, as the very first lock of a push,
//     delete, retention run or manifest review: the usage advisory lock
//     (0x7573, hashtext of the repository's top-level namespace), shared.
//     Creating a quota (QuotaSet) takes that lock exclusively, alone, and
//     then only the rows it inserts; changing or deleting a quota locks
//     its row alone;
//  8. event streams (event_streams), in repository name order, truly
//     last: runTx writes a transaction's events after fn returns, and a
//     stream row stays locked until the commit, which is what numbers a
//     repository's events in commit order (see events.go). Delivery
//     claims lock webhook_deliveries rows alone (SKIP LOCKED).
//
// An import (package importer) stores manifests and tags through
// ManifestStore and removes tags through TagDelete, so it locks what a push
// and an untag lock. Its own transactions fit the order too: BlobImport
// locks blobs (5), in digest order, then queues candidates (6), as a blob
// commit does; TagHistorySeed takes only advisory transaction locks on the
// names of the tags it seeds, in key order, in a transaction that locks
// nothing else, like 12 below.
//
// Tag rules (tag_rules) are never locked: a transaction that would move or
// remove an existing tag reads them once, after it holds the tag's row
// (see tagrules.go).
//
// Pull statistics (manifest_pulls, tag_pulls) stand aside from this order,
// because their flush (PullStatsAdd, one transaction per replica and flush
// interval) never waits for a lock it could be part of a cycle with: it
// adds to the statistics rows it can lock FOR NO KEY UPDATE SKIP LOCKED;
// for a manifest or tag pulled for the first time, it locks the manifest
// or tag FOR KEY SHARE SKIP LOCKED and inserts its row ON CONFLICT DO
// NOTHING, in key order (manifest id; repository id and tag name), so
// that it waits only for another flush's insert of the same new row, in
// that same order. What it skips stays in the replica's buffer for the
// next flush. SKIP LOCKED does not cover every wait (PostgreSQL may wait
// while following the update chain of a row a push is moving), so a flush
// also runs with a short lock_timeout, and gives up rather than wait
// longer (pullStatsLockTimeout): whatever it waits for, no push or delete
// waits behind it for longer. In turn, a push waits for a flush only at a
// manifest's or tag's first pull (FOR UPDATE against FOR KEY SHARE), and
// a delete, whose cascade removes statistics rows, at most for one flush.
//
// The pull-through cache's own rows (proxies, proxy_keys, proxy_claims,
// proxy_checks) are written by single statements outside any other
// transaction, so they too stand aside from the order: a claim waits only
// for another statement on the same claim (see proxy.go).
//
// The authentication tables are never locked in a transaction that locks
// any of the above, and among themselves in this order:
//
//  9. users, in name order (FOR KEY SHARE while a grant, membership or
//     token is written for them; deleted with what belongs to them);
//  10. groups, likewise;
//  11. grants, and API tokens in id order (TokenTouch, and UserDelete
//     before its cascade deletes them);
//  12. the advisory lock (0x6175, 1) under which the first signing key is
//     created (SigningKeys): taken alone, so that replicas starting at
//     once create one key between them.
//
// What each operation locks, and why that is enough:
//
//	manifest push   children FOR SHARE → the manifest FOR UPDATE → its tags FOR UPDATE, by name → blobs FOR SHARE
//	tag restore     the manifest FOR SHARE → the tag FOR UPDATE
//	untag           the tag FOR UPDATE
//	manifest delete the manifest FOR UPDATE → the tags pointing at it FOR UPDATE, by name (deleted)
//	retention run   per repository: its set's manifests FOR UPDATE, subjects first, else by digest → its set's tags FOR UPDATE, by name
//	                (the set computed again under the locks; see retention.go), under a session lock per policy taken alone
//	blob commit     the upload session FOR UPDATE → the blob FOR UPDATE
//	blob mount      the blob FOR SHARE
//	blob unlink     the repository link (deleted)
//	upload chunk    nothing: a compare-and-set on the session's size
//	grant, token    the user or group FOR KEY SHARE → the grant (token insert)
//	user delete     the user FOR UPDATE → its tokens FOR UPDATE, by id → (deleted, with memberships) → its grants (deleted)
//	token touch     the tokens FOR UPDATE, by id
//	gc of a blob    the blob FOR UPDATE → its stale links (deleted) → its candidate
//	gc of blobs     a batch's blobs FOR UPDATE, by digest → their stale links (deleted) → their candidates, by key
//	gc of manifest  the manifest FOR UPDATE → candidates
//	usage           (the advisory lock shared, first, in a push, delete, retention run, manifest review; at the end of one that made a manifest
//	                live or not live:) covering quotas FOR UPDATE, by prefix → the repository's blob refs, by digest → its usage row → the quotas' blob refs, by digest
//	quota set       (new) the advisory lock exclusive → the quota (inserted) → its blob refs (inserted); (existing) the quota row
//	pull stats      statistics rows FOR NO KEY UPDATE SKIP LOCKED; new ones: manifests, then tags, FOR KEY SHARE SKIP LOCKED → the rows (inserted), by key
//	blob import     the blobs FOR UPDATE, by digest (inserted where missing) → their candidates (berth import: a blob commit without a session, see import.go)
//	history seed    advisory transaction locks (26980, hash of repository and tag), in key order, alone in their transaction (berth import, see TagHistorySeed)
//	proxy store     as manifest push (Sparse: absent children and blobs are recorded, not locked)
//	proxy blob      the blob FOR UPDATE, as blob commit; then proxy resolve
//	proxy resolve   the usage advisory lock (shared, first, as for a push); then a child: the child FOR SHARE → the indexes naming it FOR SHARE, by digest → its absent blobs FOR SHARE, by digest;
//	                a blob: the manifests naming it FOR SHARE, by digest → the blob FOR SHARE
//	proxy claim     the claim row alone (one statement: INSERT … ON CONFLICT DO UPDATE … WHERE the lease expired)
//
// A delete (FOR UPDATE) and any push that would reference or tag the same
// manifest (FOR SHARE or FOR UPDATE) exclude each other, so a tag can never
// be left pointing at a deleted manifest, nor an index at a deleted child.
// Checks that must see concurrent commits run as a separate statement after
// the lock is granted: under READ COMMITTED each statement takes a new
// snapshot. Tag and history rows change in the same transaction, so the
// history always replays to the current state.
//
// Where a row may be inserted concurrently (a new tag, repository, manifest
// or blob), the code locks it if it exists, else inserts with ON CONFLICT DO
// NOTHING and, on conflict, goes round to lock the winner's row. If
// PostgreSQL still reports a deadlock or serialization failure, or the
// round keeps being lost, withTx retries the whole transaction, so
// functions passed to it must be safe to run again.
//
// # Reads
//
// Reads lock nothing: each is one statement, with a snapshot taken when it
// starts. Manifest lookups by tag or digest, the hot path of every pull,
// are batched across concurrent requests on a small pool of their own
// (see coalescer); a batch is only ever joined before it is sent, so a
// read still sees every change committed before it arrived.
package db

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DB is the handle to Berth's metadata database. It is safe for concurrent
// use.
type DB struct {
	pool  *pgxpool.Pool
	q     guardedPool // pool, with a deadline on every statement
	guard *guard
	gc    GCPolicy
	// events describes this process in the events it writes.
	events EventsConfig
	log    *slog.Logger

	// reads holds the connections of the batched manifest reads, apart
	// from pool: a burst of pulls never waits for a connection behind
	// writes, and these connections can plan differently (see Open).
	reads       *pgxpool.Pool
	byTag       *coalescer[manifestKey, Manifest]
	byDigest    *coalescer[manifestKey, Manifest]
	authLookups *coalescer[authKey, AuthInfo]
}

// Options tune the connection pool (zero values take pgx defaults) and
// give the garbage collection policy that changes queue candidates with.
type Options struct {
	MaxConns int32
	GC       GCPolicy
	// Timeout bounds every statement, including the wait for a pool
	// connection and connecting (see guard); 0 means DefaultTimeout.
	Timeout time.Duration
	// Logger receives the start and end of database outages; nil means
	// slog.Default().
	Logger *slog.Logger
	// Events describes this process to the events it writes.
	Events EventsConfig
}

// Open connects to the database at url and checks that it answers.
func Open(ctx context.Context, url string, opts Options) (*DB, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	g := &guard{timeout: opts.Timeout, health: &health{log: opts.Logger}}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	setConnectTimeout(cfg, opts.Timeout)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	if err := ping(ctx, pool, g); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	reads, err := openReadPool(ctx, url, g)
	if err != nil {
		pool.Close()
		return nil, err
	}
	d := &DB{pool: pool, q: guardedPool{pool, g}, guard: g, gc: opts.GC, reads: reads, events: opts.Events, log: opts.Logger}
	d.byTag = newCoalescer(readsInFlight, maxManifestBatch, opts.Timeout, d.manifestBatch(manifestsByTagSQL))
	d.byDigest = newCoalescer(readsInFlight, maxManifestBatch, opts.Timeout, d.manifestBatch(manifestsByDigestSQL))
	d.authLookups = newCoalescer(readsInFlight, maxManifestBatch, opts.Timeout, d.authLookupBatch)
	return d, nil
}

// readsInFlight is how many statements each kind of batched read runs at
// once: with two, one batch gathers while the other runs; more would make
// the batches smaller, and batching is the point.
const readsInFlight = 2

// openReadPool opens the connections of the batched reads, one per
// statement that can be in flight. They use generic plans only: with
// PostgreSQL's default, a batch statement's plan is rebuilt on every
// execution, because a plan made for the actual (small) number of keys
// always looks cheaper than the generic one, and planning costs more than
// running the lookups (on this workload, 27k against 43k manifest GETs/s).
// The generic plan is the same nested loop of index lookups per key.
func openReadPool(ctx context.Context, url string, g *guard) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	cfg.MaxConns = 3 * readsInFlight // by tag, by digest, credentials
	cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	setConnectTimeout(cfg, g.timeout)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool for reads: %w", err)
	}
	// Connect now: a server or pooler that refuses these connections (or
	// the setting) must stop the start, not fail every pull later.
	if err := ping(ctx, pool, g); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database for reads: %w", err)
	}
	return pool, nil
}

// maxManifestBatch bounds the reads in one statement: a batch is answered
// as a whole, so a huge one would delay its first reads for its last.
const maxManifestBatch = 64

// Close releases every connection.
func (d *DB) Close() {
	d.reads.Close()
	d.pool.Close()
}

// Ping checks that the database answers, on both pools.
func (d *DB) Ping(ctx context.Context) error {
	if err := ping(ctx, d.pool, d.guard); err != nil {
		return err
	}
	return ping(ctx, d.reads, d.guard)
}

func ping(ctx context.Context, pool *pgxpool.Pool, g *guard) error {
	pctx, cancel := g.deadline(ctx)
	defer cancel()
	return g.observe(ctx, pool.Ping(pctx))
}

// setConnectTimeout bounds connecting, unless the URL's connect_timeout
// already does: a server that accepts TCP connections but never answers
// the startup message would otherwise hold the connecting goroutine.
func setConnectTimeout(cfg *pgxpool.Config, timeout time.Duration) {
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = timeout
	}
}

// PoolStats is a snapshot of a connection pool, for metrics.
type PoolStats struct {
	Total, Idle, InUse int32
	MaxConns           int32
	AcquireCount       int64
	AcquireDuration    time.Duration
}

// Stats reports the state of the two connection pools: the main one, and
// the one of the batched manifest reads.
func (d *DB) Stats() (main, reads PoolStats) {
	return poolStats(d.pool), poolStats(d.reads)
}

func poolStats(p *pgxpool.Pool) PoolStats {
	s := p.Stat()
	return PoolStats{
		Total:           s.TotalConns(),
		Idle:            s.IdleConns(),
		InUse:           s.AcquiredConns(),
		MaxConns:        s.MaxConns(),
		AcquireCount:    s.AcquireCount(),
		AcquireDuration: s.AcquireDuration(),
	}
}

// ManifestReadStats reports the manifest lookups answered and the
// statements that answered them: their ratio is the average batch (see
// coalescer).
func (d *DB) ManifestReadStats() (reads, statements int64) {
	return d.byTag.reads.Load() + d.byDigest.reads.Load(), d.byTag.batches.Load() + d.byDigest.batches.Load()
}

// Actor says who makes a change and in which request, for the audit trail.
type Actor struct {
	Name      string // authenticated user, or the client address when anonymous
	RequestID string
	TokenID   string // the API token the request authenticated with, if any
	// Request describes the HTTP request, for events; nil for changes
	// that no request made (garbage collection, maintenance commands).
	Request *RequestInfo
	// MayDelete says the principal holds the delete right on the
	// repository changed: it may move or untag protected tags (see
	// tagrules.go). The API sets it (always, with authentication off);
	// the zero value treats the change as made without that right.
	MayDelete bool
}

// RequestInfo is what events say about the request that made a change.
type RequestInfo struct {
	Addr, Host, Method, UserAgent string
	// BaseURL is how the client reached the registry
	// ("https://registry.example"), for the URLs in events.
	BaseURL string
}

// maxAttempts bounds the retries of a transaction that PostgreSQL aborted
// with a deadlock or serialization failure.
const maxAttempts = 5

// withTx runs fn in a transaction and commits it. fn may run more than once:
// when PostgreSQL aborts the transaction with a deadlock or serialization
// failure, the whole transaction is retried with a short backoff.
//
// Every statement of the transaction has the guard's deadline (fn gets a
// guardedTx). Rollback runs under context.WithoutCancel, with the same
// deadline: a request whose client went away must still end its
// transaction rather than leave it to the pool, and a database that does
// not answer must not hold the request forever.
func (d *DB) withTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := d.tryTx(ctx, fn)
		if err == nil {
			return nil
		}
		if !retryable(err) || attempt == maxAttempts {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt*attempt) * 5 * time.Millisecond):
		}
	}
}

func (d *DB) tryTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return d.runTx(ctx, true, fn)
}

// runTx runs fn in a transaction, then commits it, or with commit false
// rolls it back whatever fn did (a dry run).
func (d *DB) runTx(ctx context.Context, commit bool, fn func(tx pgx.Tx) error) error {
	bctx, cancel := d.guard.deadline(ctx)
	tx, err := d.pool.Begin(bctx)
	cancel()
	if err != nil {
		return fmt.Errorf("begin transaction: %w", d.guard.observe(ctx, err))
	}
	gtx := guardedTx{Tx: tx, g: d.guard}
	if commit {
		gtx.out = &outbox{}
	}
	err = fn(gtx)
	var written int
	if err == nil && commit {
		// Usage after every other change of the transaction, and the
		// events last, after every other lock (see usage.go, events.go).
		written, err = d.flushOutbox(ctx, gtx, gtx.out)
	}
	if err != nil || !commit {
		rctx, cancel := d.guard.deadline(context.WithoutCancel(ctx))
		_ = tx.Rollback(rctx)
		cancel()
		return err
	}
	cctx, cancel := d.guard.deadline(ctx)
	defer cancel()
	if err := tx.Commit(cctx); err != nil {
		return fmt.Errorf("commit: %w", d.guard.observe(ctx, err))
	}
	if written > 0 && d.events.Written != nil {
		d.events.Written()
	}
	if gtx.out != nil {
		d.logQuotaWarnings(ctx, gtx.out.warnings)
	}
	return nil
}

// contentionRounds bounds how often a statement loop goes round before it
// gives up with errContended.
const contentionRounds = 10

// querier is what both the pool and a transaction offer; read-only helpers
// take it so they run either alone or inside a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// WithSessionLock runs fn while holding the PostgreSQL advisory lock key,
// if no other process holds it; ran is false when it was taken. Replicas use
// it so that one of them at a time does work that must not run twice at
// once, such as walking the whole blob store.
func (d *DB) WithSessionLock(ctx context.Context, key int64, fn func() error) (ran bool, err error) {
	actx, cancel := d.guard.deadline(ctx)
	defer cancel()
	conn, err := d.pool.Acquire(actx)
	if err != nil {
		return false, fmt.Errorf("acquire connection: %w", d.guard.observe(ctx, err))
	}
	defer conn.Release()
	var got bool
	if err := conn.QueryRow(actx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
		return false, fmt.Errorf("try advisory lock: %w", d.guard.observe(ctx, err))
	}
	if !got {
		return false, nil
	}
	defer func() {
		// If the unlock cannot be sent, the connection is closed, which
		// releases the lock as well.
		uctx, cancel := d.guard.deadline(context.WithoutCancel(ctx))
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, key); err != nil {
			conn.Conn().Close(uctx)
		}
	}()
	return true, fn()
}

// known reports which of keys the query (with keys as $1) returns.
func (d *DB) known(ctx context.Context, q string, keys []string) (map[string]bool, error) {
	rows, err := d.q.Query(ctx, q, keys)
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
