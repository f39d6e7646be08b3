package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Errors of webhook administration.
var (
	ErrWebhookUnknown = errors.New("webhook not known")
	ErrWebhookExists  = errors.New("webhook already exists")
)

// Webhook is an endpoint that receives events.
type Webhook struct {
	Name string
	URL  string
	// Secret, when set, signs each request (Berth-Signature).
	Secret string
	// Repos are globs of the repositories it wants (nil: all), and
	// ReposRegexp the same as anchored regular expressions, which is what
	// the outbox matches in SQL.
	Repos       []string
	ReposRegexp []string
	// Actions it wants (nil: all but pull).
	Actions []string
	Headers []Header
	Timeout time.Duration
	// Pulls asks for pull events too.
	Pulls     bool
	CreatedAt time.Time
}

// Header is one extra header of a webhook's requests.
type Header struct{ Name, Value string }

// WebhookStatus is a webhook with the counts of its deliveries.
type WebhookStatus struct {
	Webhook
	Pending, Delivered, Dead int64
	// OldestPending is when the oldest pending event was written; zero
	// when nothing is pending.
	OldestPending time.Time
}

// WebhookAdd creates webhook w; ErrWebhookExists if the name is taken.
// It receives the events written after it commits.
func (d *DB) WebhookAdd(ctx context.Context, w Webhook) error {
	headers, err := json.Marshal(w.Headers)
	if err != nil {
		return fmt.Errorf("encode headers: %w", err)
	}
	_, err = d.q.Exec(ctx, `
INSERT INTO webhooks (name, url, secret, repos, repos_re, actions, headers, timeout_ms, pulls)
VALUES ($1, $2, NULLIF($3, ''), $4, $5, $6, $7, $8, $9)`,
		w.Name, w.URL, w.Secret, w.Repos, w.ReposRegexp, w.Actions, headers, w.Timeout.Milliseconds(), w.Pulls)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return notFound(ErrWebhookExists, "webhook %s already exists", w.Name)
	}
	if err != nil {
		return fmt.Errorf("add webhook %s: %w", w.Name, err)
	}
	return nil
}

// WebhookList returns every webhook, by name, with its delivery counts.
func (d *DB) WebhookList(ctx context.Context) ([]WebhookStatus, error) {
	rows, err := d.q.Query(ctx, `
SELECT w.name, w.url, coalesce(w.secret, ''), w.repos, w.repos_re, w.actions, w.headers, w.timeout_ms, w.pulls, w.created_at,
    (SELECT count(*) FROM webhook_deliveries d WHERE d.webhook_id = w.id AND d.state = 'pending'),
    (SELECT count(*) FROM webhook_deliveries d WHERE d.webhook_id = w.id AND d.state = 'delivered'),
    (SELECT count(*) FROM webhook_deliveries d WHERE d.webhook_id = w.id AND d.state = 'dead'),
    (SELECT min(d.created_at) FROM webhook_deliveries d WHERE d.webhook_id = w.id AND d.state = 'pending')
FROM webhooks w ORDER BY w.name`)
	if err != nil {
		return nil, fmt.Errorf("list webhooks: %w", err)
	}
	defer rows.Close()
	var out []WebhookStatus
	for rows.Next() {
		var s WebhookStatus
		var headers []byte
		var timeoutMS int64
		var oldest *time.Time
		if err := rows.Scan(&s.Name, &s.URL, &s.Secret, &s.Repos, &s.ReposRegexp, &s.Actions, &headers, &timeoutMS, &s.Pulls, &s.CreatedAt,
			&s.Pending, &s.Delivered, &s.Dead, &oldest); err != nil {
			return nil, fmt.Errorf("list webhooks: %w", err)
		}
		if err := json.Unmarshal(headers, &s.Headers); err != nil {
			return nil, fmt.Errorf("decode headers of webhook %s: %w", s.Name, err)
		}
		s.Timeout = time.Duration(timeoutMS) * time.Millisecond
		if oldest != nil {
			s.OldestPending = *oldest
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list webhooks: %w", err)
	}
	return out, nil
}

// WebhookDelete removes a webhook and its deliveries, pending ones
// included. A delivery in flight may still arrive once.
func (d *DB) WebhookDelete(ctx context.Context, name string) error {
	return d.withTx(ctx, func(tx pgx.Tx) error {
		var id int64
		err := tx.QueryRow(ctx, `DELETE FROM webhooks WHERE name = $1 RETURNING id`, name).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return notFound(ErrWebhookUnknown, "webhook %s is not known", name)
		}
		if err != nil {
			return fmt.Errorf("delete webhook %s: %w", name, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM webhook_deliveries WHERE webhook_id = $1`, id); err != nil {
			return fmt.Errorf("delete the deliveries of webhook %s: %w", name, err)
		}
		return nil
	})
}

// WebhookRedrive puts the dead-lettered deliveries of a webhook back to
// pending, to be tried again from the first attempt, and returns how many.
// Within a repository they go out first, by seq, before anything newer.
func (d *DB) WebhookRedrive(ctx context.Context, name string) (int64, error) {
	var n int64
	err := d.withTx(ctx, func(tx pgx.Tx) error {
		var id int64
		err := tx.QueryRow(ctx, `SELECT id FROM webhooks WHERE name = $1`, name).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return notFound(ErrWebhookUnknown, "webhook %s is not known", name)
		}
		if err != nil {
			return fmt.Errorf("find webhook %s: %w", name, err)
		}
		tag, err := tx.Exec(ctx, `
UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = now(), done_at = NULL
WHERE webhook_id = $1 AND state = 'dead'`, id)
		if err != nil {
			return fmt.Errorf("redrive webhook %s: %w", name, err)
		}
		n = tag.RowsAffected()
		return nil
	})
	return n, err
}

// Delivery is a claimed event on its way to a webhook.
type Delivery struct {
	ID      int64
	Attempt int // 1 for the first
	Event   Event
	Webhook Webhook
}

// DeliveriesClaim claims up to n deliveries for this process (owner, for
// the record) and returns them. Only the head of each lane — the lowest
// seq still pending for a (webhook, repository) — can be claimed, so the
// next event of a repository waits until the previous one is delivered or
// dead; the claimed ones are thus all in different lanes and can go out
// at once. A claim lasts lease (at least twice the webhook's timeout):
// if this process dies, another claims the delivery again after that.
//
// Deliveries of a deleted webhook (see EventsCleanup) are passed over:
// the claim's limit is spent only on rows it can return.
//
// Locks: the claimed delivery rows, FOR UPDATE SKIP LOCKED, and nothing
// else, so replicas claiming at once take different rows and never wait.
// The heads are found from a snapshot; a head another replica claims or
// completes meanwhile fails the re-check of state and next_at once locked,
// and a row that is not the head in the snapshot is not considered: the
// rows before it in its lane were pending, and pending rows only leave
// that state forwards. The one way back is WebhookRedrive, an operator's
// request to send skipped events again, which are out of order anyway: a
// redriven delivery may go out while its lane's head is in flight.
func (d *DB) DeliveriesClaim(ctx context.Context, owner string, n int, lease time.Duration) ([]Delivery, error) {
	rows, err := d.q.Query(ctx, `
WITH RECURSIVE lanes AS (
    (SELECT webhook_id, repository, seq FROM webhook_deliveries WHERE state = 'pending'
     ORDER BY webhook_id, repository, seq LIMIT 1)
    UNION ALL
    SELECT n.webhook_id, n.repository, n.seq FROM lanes l CROSS JOIN LATERAL (
        SELECT webhook_id, repository, seq FROM webhook_deliveries
        WHERE state = 'pending' AND (webhook_id, repository) > (l.webhook_id, l.repository)
        ORDER BY webhook_id, repository, seq LIMIT 1) n
), claimed AS (
    SELECT d.id FROM webhook_deliveries d JOIN lanes l USING (webhook_id, repository, seq)
    WHERE d.state = 'pending' AND d.next_at <= now()
      AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.webhook_id)
    ORDER BY d.next_at LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, claimed_by = $2,
    next_at = now() + greatest($3 * interval '1 microsecond', 2 * w.timeout_ms * interval '1 millisecond')
FROM claimed c, events e, webhooks w
WHERE d.id = c.id AND e.id = d.event_id AND w.id = d.webhook_id
RETURNING d.id, d.attempts, e.uuid, e.seq, e.at, e.action, e.body,
    w.name, w.url, coalesce(w.secret, ''), w.headers, w.timeout_ms`, n, owner, lease.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("claim deliveries: %w", err)
	}
	defer rows.Close()
	var out []Delivery
	for rows.Next() {
		var dl Delivery
		var uuid, action string
		var seq, timeoutMS int64
		var at time.Time
		var body, headers []byte
		if err := rows.Scan(&dl.ID, &dl.Attempt, &uuid, &seq, &at, &action, &body,
			&dl.Webhook.Name, &dl.Webhook.URL, &dl.Webhook.Secret, &headers, &timeoutMS); err != nil {
			return nil, fmt.Errorf("claim deliveries: %w", err)
		}
		if dl.Event, err = decodeEvent(uuid, seq, at, action, body); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(headers, &dl.Webhook.Headers); err != nil {
			return nil, fmt.Errorf("decode headers of webhook %s: %w", dl.Webhook.Name, err)
		}
		dl.Webhook.Timeout = time.Duration(timeoutMS) * time.Millisecond
		out = append(out, dl)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim deliveries: %w", err)
	}
	return out, nil
}

// DeliveryDone records that attempt of delivery id succeeded with HTTP
// status. An attempt whose claim expired and was taken over is recorded
// all the same: the event did arrive.
func (d *DB) DeliveryDone(ctx context.Context, id int64, status int) error {
	_, err := d.q.Exec(ctx, `
UPDATE webhook_deliveries SET state = 'delivered', done_at = now(), last_status = $2, last_error = NULL
WHERE id = $1 AND state = 'pending'`, id, status)
	if err != nil {
		return fmt.Errorf("record delivery %d: %w", id, err)
	}
	return nil
}

// DeliveryFailed records that attempt of delivery id failed (status 0 when
// no HTTP answer came): it is tried again at retryAt, or dead-lettered
// when dead. Nothing changes when the claim was taken over by another
// attempt meanwhile.
func (d *DB) DeliveryFailed(ctx context.Context, id int64, attempt int, status int, reason string, retryAt time.Time, dead bool) error {
	_, err := d.q.Exec(ctx, `
UPDATE webhook_deliveries
SET last_status = NULLIF($3, 0), last_error = $4,
    state = CASE WHEN $6 THEN 'dead' ELSE 'pending' END,
    done_at = CASE WHEN $6 THEN now() END,
    next_at = $5
WHERE id = $1 AND attempts = $2 AND state = 'pending'`, id, attempt, status, reason, retryAt, dead)
	if err != nil {
		return fmt.Errorf("record failed delivery %d: %w", id, err)
	}
	return nil
}

// EventsCleanup deletes delivered and dead deliveries finished more than
// retention ago, deliveries of deleted webhooks (only pending ones can be
// left behind: a push that saw the webhook before its delete committed),
// and events older than
// retention that no delivery refers to any more; at most batch rows of
// each per call. It returns how many rows it deleted.
func (d *DB) EventsCleanup(ctx context.Context, retention time.Duration, batch int) (int64, error) {
	var total int64
	for _, stmt := range []struct {
		sql  string
		args []any
	}{
		{`
DELETE FROM webhook_deliveries WHERE id IN (
    SELECT id FROM webhook_deliveries
    WHERE state <> 'pending' AND done_at < now() - $1 * interval '1 microsecond' LIMIT $2)`,
			[]any{retention.Microseconds(), batch}},
		{`
DELETE FROM webhook_deliveries WHERE id IN (
    SELECT d.id FROM webhook_deliveries d
    WHERE d.state = 'pending' AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.webhook_id) LIMIT $1)`,
			[]any{batch}},
		{`
DELETE FROM events WHERE id IN (
    SELECT e.id FROM events e
    WHERE e.at < now() - $1 * interval '1 microsecond'
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)
    ORDER BY e.at LIMIT $2)`,
			[]any{retention.Microseconds(), batch}},
	} {
		tag, err := d.q.Exec(ctx, stmt.sql, stmt.args...)
		if err != nil {
			return total, fmt.Errorf("clean up events: %w", err)
		}
		total += tag.RowsAffected()
	}
	return total, nil
}

// WebhookGauge is what the metrics say of one webhook's queue.
type WebhookGauge struct {
	Name          string
	Pending, Dead int64
	OldestPending time.Time // zero when nothing is pending
}

// WebhookGauges returns the queue of every webhook, from the partial
// indexes of pending and dead deliveries.
func (d *DB) WebhookGauges(ctx context.Context) ([]WebhookGauge, error) {
	rows, err := d.q.Query(ctx, `
SELECT w.name,
    (SELECT count(*) FROM webhook_deliveries d WHERE d.webhook_id = w.id AND d.state = 'pending'),
    (SELECT count(*) FROM webhook_deliveries d WHERE d.webhook_id = w.id AND d.state = 'dead'),
    (SELECT min(d.created_at) FROM webhook_deliveries d WHERE d.webhook_id = w.id AND d.state = 'pending')
FROM webhooks w ORDER BY w.name`)
	if err != nil {
		return nil, fmt.Errorf("read webhook queues: %w", err)
	}
	defer rows.Close()
	var out []WebhookGauge
	for rows.Next() {
		var g WebhookGauge
		var oldest *time.Time
		if err := rows.Scan(&g.Name, &g.Pending, &g.Dead, &oldest); err != nil {
			return nil, fmt.Errorf("read webhook queues: %w", err)
		}
		if oldest != nil {
			g.OldestPending = *oldest
		}
		out = append(out, g)
	}
	return out, rows.Err()
}
