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
//  2. upload sessions;
//  3. manifests: child manifests before their index, which cannot form a
//     cycle because an index cannot list itself or an ancestor (digests are
//     computed over the content); siblings in ascending digest order;
//  4. tags;
//  5. blobs, in ascending digest order;
//  6. garbage collection candidates (gc_queue), always last: a transaction
//     queues its candidates at the very end, and the collector claims
//     candidates in a transaction of their own that locks nothing else.
//
// What each operation locks, and why that is enough:
//
//	manifest push   children FOR SHARE → the manifest FOR UPDATE → its tag FOR UPDATE → blobs FOR SHARE
//	tag restore     the manifest FOR SHARE → the tag FOR UPDATE
//	untag           the tag FOR UPDATE
//	manifest delete the manifest FOR UPDATE → the tags pointing at it (deleted)
//	blob commit     the upload session FOR UPDATE → the blob FOR UPDATE
//	blob mount      the blob FOR SHARE
//	blob unlink     the repository link (deleted)
//	upload chunk    nothing: a compare-and-set on the session's size
//	gc of a blob    the blob FOR UPDATE → its stale links (deleted) → its candidate
//	gc of manifest  the manifest FOR UPDATE → candidates
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
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DB is the handle to Berth's metadata database. It is safe for concurrent
// use.
type DB struct {
	pool *pgxpool.Pool
	gc   GCPolicy

	// reads holds the connections of the batched manifest reads, apart
	// from pool: a burst of pulls never waits for a connection behind
	// writes, and these connections can plan differently (see Open).
	reads    *pgxpool.Pool
	byTag    *coalescer[manifestKey, Manifest]
	byDigest *coalescer[manifestKey, Manifest]
}

// Options tune the connection pool (zero values take pgx defaults) and
// give the garbage collection policy that changes queue candidates with.
type Options struct {
	MaxConns int32
	GC       GCPolicy
}

// Open connects to the database at url and checks that it answers.
func Open(ctx context.Context, url string, opts Options) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	reads, err := openReadPool(ctx, url)
	if err != nil {
		pool.Close()
		return nil, err
	}
	d := &DB{pool: pool, gc: opts.GC, reads: reads}
	d.byTag = newCoalescer(readsInFlight, maxManifestBatch, d.manifestBatch(manifestsByTagSQL))
	d.byDigest = newCoalescer(readsInFlight, maxManifestBatch, d.manifestBatch(manifestsByDigestSQL))
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
func openReadPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	cfg.MaxConns = 2 * readsInFlight // by tag, by digest
	cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool for reads: %w", err)
	}
	// Connect now: a server or pooler that refuses these connections (or
	// the setting) must stop the start, not fail every pull later.
	if err := pool.Ping(ctx); err != nil {
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
	if err := d.pool.Ping(ctx); err != nil {
		return err
	}
	return d.reads.Ping(ctx)
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
}

// Errors returned by this package. Callers compare with errors.Is.
var (
	ErrRepositoryUnknown = errors.New("repository not known")
	ErrManifestUnknown   = errors.New("manifest not known")
	ErrBlobUnknown       = errors.New("blob not known")
	ErrUploadUnknown     = errors.New("upload session not known")
	ErrTagUnknown        = errors.New("tag not known")
	// ErrUploadOffset means an upload chunk did not start where the session
	// stands, typically because another request appended first.
	ErrUploadOffset = errors.New("upload chunk does not start at the session's current offset")
)

// MissingReferenceError reports a manifest that references a blob or child
// manifest which is not present in the repository.
type MissingReferenceError struct {
	Digest   string
	Manifest bool // a child manifest rather than a blob
}

func (e *MissingReferenceError) Error() string {
	if e.Manifest {
		return fmt.Sprintf("referenced manifest %s is not present in the repository", e.Digest)
	}
	return fmt.Sprintf("referenced blob %s is not present in the repository", e.Digest)
}

// SizeMismatchError reports a descriptor whose size differs from the stored
// blob's.
type SizeMismatchError struct {
	Digest         string
	Declared, Real int64
}

func (e *SizeMismatchError) Error() string {
	return fmt.Sprintf("descriptor of %s declares %d bytes but the blob holds %d", e.Digest, e.Declared, e.Real)
}

// ReferencedError reports a manifest that cannot be deleted because a live
// index in the same repository still lists it.
type ReferencedError struct {
	Digest     string // the manifest to delete
	ReferrerOf string // digest of the index that references it
}

func (e *ReferencedError) Error() string {
	return fmt.Sprintf("manifest %s is referenced by index %s; delete the index first", e.Digest, e.ReferrerOf)
}

// maxAttempts bounds the retries of a transaction that PostgreSQL aborted
// with a deadlock or serialization failure.
const maxAttempts = 5

// withTx runs fn in a transaction and commits it. fn may run more than once:
// when PostgreSQL aborts the transaction with a deadlock or serialization
// failure, the whole transaction is retried with a short backoff.
//
// Rollback runs under context.WithoutCancel: a request whose client went
// away must still end its transaction rather than leave it to the pool.
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
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	if err := fn(tx); err != nil || !commit {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// errContended is returned by a statement loop that kept losing to
// concurrent transactions (a row inserted, then deleted, then inserted
// again by others while we look). withTx retries the whole transaction.
var errContended = errors.New("row contended by concurrent transactions")

// contentionRounds bounds how often a statement loop goes round before it
// gives up with errContended.
const contentionRounds = 10

// retryable reports whether err is a transient conflict worth retrying the
// whole transaction for.
func retryable(err error) bool {
	if errors.Is(err, errContended) {
		return true
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "40001", // serialization_failure
		"40P01": // deadlock_detected
		return true
	}
	return false
}

// IsInvalidInput reports an error PostgreSQL raised because a value cannot
// be stored as text (a NUL byte, an invalid encoding): the client's input,
// not a server fault. The API validates input before it gets here; this is
// the backstop that keeps such input from ever answering 500.
func IsInvalidInput(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "22021", // character_not_in_repertoire
		"22P05": // untranslatable_character
		return true
	}
	return false
}

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

// known reports which of keys the query (with keys as $1) returns.
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
