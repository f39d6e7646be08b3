package db

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Every statement Berth sends has a deadline, and every error it gets back
// is sorted into "the database answered" (a constraint, no rows: the
// caller's business) and "the database is unreachable" (ErrUnavailable).
//
// Why a deadline per statement, on the client: a database whose server or
// network is stuck (a stopped process, a partition, a full disk under it)
// accepts TCP connections and keeps them open but never answers, so
// nothing on the server side (statement_timeout) and nothing in the kernel
// (TCP keepalives, which the stuck host still acknowledges) ever ends the
// wait. The deadline covers taking a connection from the pool, connecting
// and the statement itself; when it passes, pgx closes the connection.
// Statements, not transactions, get the deadline: a blob commit may copy a
// large blob between two statements of its transaction, legitimately for
// longer than any statement should take.

// DefaultTimeout is the statement deadline when Options.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// guard applies the deadline and watches the outcome of every statement.
type guard struct {
	timeout time.Duration
	health  *health
}

func (g *guard) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, g.timeout)
}

// observe sorts the outcome of a statement run under the caller's ctx:
// errors meaning the database is unreachable become ErrUnavailable, values
// PostgreSQL cannot store become ErrInvalidInput, and the health tracker
// learns whether the database answered.
func (g *guard) observe(ctx context.Context, err error) error {
	if err == nil {
		g.health.answered()
		return nil
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		// The caller gave up (a client that went away, a shutdown): says
		// nothing about the database. A deadline of the caller's that
		// passed (a readiness probe's) does: the database did not answer
		// in time.
		return err
	}
	if unreachable(err) {
		g.health.failed(err)
		return &unavailableError{cause: err}
	}
	g.health.answered()
	if invalidInput(err) {
		return &invalidInputError{cause: err}
	}
	return err
}

// guardedPool runs single statements on a pool, each with a deadline.
type guardedPool struct {
	pool *pgxpool.Pool
	g    *guard
}

func (p guardedPool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	sctx, cancel := p.g.deadline(ctx)
	defer cancel()
	tag, err := p.pool.Exec(sctx, sql, args...)
	return tag, p.g.observe(ctx, err)
}

func (p guardedPool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return guardQuery(ctx, p.g, func(sctx context.Context) (pgx.Rows, error) { return p.pool.Query(sctx, sql, args...) })
}

func (p guardedPool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	sctx, cancel := p.g.deadline(ctx)
	return guardedRow{row: p.pool.QueryRow(sctx, sql, args...), ctx: ctx, cancel: cancel, g: p.g}
}

// guardedTx is a transaction whose statements each get a deadline. It
// embeds pgx.Tx, so it is one wherever a function takes a pgx.Tx.
type guardedTx struct {
	pgx.Tx
	g   *guard
	out *outbox // the events of the transaction (see events.go); nil in a dry run
}

func (t guardedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	sctx, cancel := t.g.deadline(ctx)
	defer cancel()
	tag, err := t.Tx.Exec(sctx, sql, args...)
	return tag, t.g.observe(ctx, err)
}

func (t guardedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return guardQuery(ctx, t.g, func(sctx context.Context) (pgx.Rows, error) { return t.Tx.Query(sctx, sql, args...) })
}

func (t guardedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	sctx, cancel := t.g.deadline(ctx)
	return guardedRow{row: t.Tx.QueryRow(sctx, sql, args...), ctx: ctx, cancel: cancel, g: t.g}
}

// guardQuery starts a query under a deadline that lasts until its rows are
// closed.
func guardQuery(ctx context.Context, g *guard, query func(context.Context) (pgx.Rows, error)) (pgx.Rows, error) {
	sctx, cancel := g.deadline(ctx)
	rows, err := query(sctx)
	if err != nil {
		cancel()
		if rows != nil {
			rows.Close()
		}
		return nil, g.observe(ctx, err)
	}
	return &guardedRows{Rows: rows, ctx: ctx, cancel: cancel, g: g}, nil
}

type guardedRows struct {
	pgx.Rows
	ctx    context.Context
	cancel context.CancelFunc
	g      *guard
}

func (r *guardedRows) Close() {
	r.Rows.Close()
	r.cancel()
}

func (r *guardedRows) Err() error { return r.g.observe(r.ctx, r.Rows.Err()) }

type guardedRow struct {
	row    pgx.Row
	ctx    context.Context
	cancel context.CancelFunc
	g      *guard
}

func (r guardedRow) Scan(dest ...any) error {
	defer r.cancel()
	return r.g.observe(r.ctx, r.row.Scan(dest...))
}

// health tracks whether the database answers, so that an outage is logged
// once when it starts and once when it ends, not once per request.
type health struct {
	log *slog.Logger

	down     atomic.Bool
	failures atomic.Int64 // statements that found the database unreachable
	outages  atomic.Int64

	mu          sync.Mutex
	downSince   time.Time
	lastFailure time.Time
	failedSince int64 // failures when the outage began
}

// recoveryQuiet is how long after the last failure an answer must come
// for the outage to count as over. Statements sent before the database
// came back may still time out after the first answer; without the quiet
// time one outage would be logged as several.
const recoveryQuiet = time.Second

func (h *health) failed(err error) {
	h.failures.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastFailure = time.Now()
	if h.down.Load() {
		return
	}
	h.down.Store(true)
	h.outages.Add(1)
	h.downSince, h.failedSince = h.lastFailure, h.failures.Load()-1
	h.log.Error("metadata database unreachable: requests that need it are answered 503 until it is back", "err", err)
}

func (h *health) answered() {
	if !h.down.Load() {
		return // the hot path: one atomic load
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.down.Load() || time.Since(h.lastFailure) < recoveryQuiet {
		return
	}
	h.down.Store(false)
	h.log.Info("metadata database reachable again",
		"down_for", time.Since(h.downSince).Round(time.Millisecond), "failed_statements", h.failures.Load()-h.failedSince)
}

// Health is what a replica knows of its database's availability, for
// metrics.
type Health struct {
	Up       bool
	Outages  int64 // times the database became unreachable
	Failures int64 // statements that found it unreachable
}

// Health reports whether the database answers, as far as the last
// statements tell.
func (d *DB) Health() Health {
	return Health{Up: !d.guard.health.down.Load(), Outages: d.guard.health.outages.Load(), Failures: d.guard.health.failures.Load()}
}
