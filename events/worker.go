package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-registry/berth/db"
)

// Defaults of the delivery settings.
const (
	DefaultWorkers     = 8
	DefaultMaxAttempts = 25
	DefaultBackoff     = time.Second
	// MaxBackoff caps the wait between two attempts: with the default
	// first wait and attempts, the 24 waits add up to about a day.
	MaxBackoff       = 2 * time.Hour
	DefaultLease     = 30 * time.Second
	DefaultRetention = 7 * 24 * time.Hour
	DefaultPoll      = time.Second
)

// Config tunes a Worker.
type Config struct {
	// Owner names this process in the claims it takes (its instance id).
	Owner string
	// Workers is how many deliveries this process sends at once, each in
	// a different (webhook, repository) lane.
	Workers int
	// MaxAttempts is how often a delivery is tried before it is dead.
	MaxAttempts int
	// Backoff is the wait after the first failed attempt; it doubles
	// with every further failure, up to MaxBackoff, with ±20% jitter.
	Backoff time.Duration
	// Lease is how long a claim lasts (at least twice the webhook's
	// timeout) before another replica may take the delivery over.
	Lease time.Duration
	// Retention is how long delivered and dead deliveries, and the events
	// nothing waits for any more, are kept.
	Retention time.Duration
	// Poll is how often the worker looks for work that another replica
	// wrote; this replica's own changes wake it at once (Waker).
	Poll   time.Duration
	Waker  *Waker
	Logger *slog.Logger
	// Client sends the requests; nil means a client that follows no
	// redirects (a 3xx is a failed attempt, like any other non-2xx).
	Client *http.Client
}

func (c *Config) defaults() {
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.Backoff <= 0 {
		c.Backoff = DefaultBackoff
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.Retention <= 0 {
		c.Retention = DefaultRetention
	}
	if c.Poll <= 0 {
		c.Poll = DefaultPoll
	}
	if c.Waker == nil {
		c.Waker = NewWaker()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Client == nil {
		c.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
}

// Waker wakes a worker when this process has written events.
type Waker struct{ c chan struct{} }

// NewWaker returns a Waker.
func NewWaker() *Waker { return &Waker{c: make(chan struct{}, 1)} }

// Wake wakes the worker, or leaves it a note if it is busy.
func (w *Waker) Wake() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

// Worker sends the pending deliveries of every webhook: one per replica.
type Worker struct {
	db  *db.DB
	cfg Config
	log *slog.Logger

	delivered, retried, dead sync.Map // webhook name → *atomic.Int64
	lastErr                  atomic.Int64
}

// NewWorker returns a worker; Run starts it.
func NewWorker(d *db.DB, cfg Config) *Worker {
	cfg.defaults()
	return &Worker{db: d, cfg: cfg, log: cfg.Logger}
}

// Totals are the outcomes of this process's attempts, by webhook.
type Totals struct{ Delivered, Retried, Dead map[string]int64 }

// Totals returns the counts of this process's attempts.
func (w *Worker) Totals() Totals {
	read := func(m *sync.Map) map[string]int64 {
		out := map[string]int64{}
		m.Range(func(k, v any) bool { out[k.(string)] = v.(*atomic.Int64).Load(); return true })
		return out
	}
	return Totals{Delivered: read(&w.delivered), Retried: read(&w.retried), Dead: read(&w.dead)}
}

func count(m *sync.Map, webhook string) {
	v, _ := m.LoadOrStore(webhook, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

// cleanupEvery is how often a worker deletes what the retention lets go.
const cleanupEvery = time.Minute

// Run delivers until ctx ends, then waits for the deliveries in flight
// (each bounded by its webhook's timeout) to be recorded.
func (w *Worker) Run(ctx context.Context) {
	slots := make(chan struct{}, w.cfg.Workers)
	var inFlight sync.WaitGroup
	defer inFlight.Wait()
	poll := time.NewTicker(w.cfg.Poll)
	defer poll.Stop()
	nextCleanup := time.Now().Add(cleanupEvery / 10)
	for {
		if time.Now().After(nextCleanup) {
			w.cleanup(ctx)
			nextCleanup = time.Now().Add(cleanupEvery)
		}
		free := cap(slots) - len(slots)
		var claimed []db.Delivery
		if free > 0 {
			var err error
			claimed, err = w.db.DeliveriesClaim(ctx, w.cfg.Owner, free, w.cfg.Lease)
			if err != nil && ctx.Err() == nil {
				w.warn("claim webhook deliveries", err)
			}
		}
		for _, dl := range claimed {
			slots <- struct{}{}
			inFlight.Add(1)
			go func() {
				defer inFlight.Done()
				w.deliver(ctx, dl)
				<-slots
				w.cfg.Waker.Wake() // the next event of its lane may go now
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-w.cfg.Waker.c:
		case <-poll.C:
		}
	}
}

// warn logs a failure of the worker's own database statements at most
// once a minute, and not at all while the database is down (db logs the
// outage once).
func (w *Worker) warn(msg string, err error) {
	if errors.Is(err, db.ErrUnavailable) {
		return
	}
	now := time.Now().Unix()
	if last := w.lastErr.Load(); now-last < 60 || !w.lastErr.CompareAndSwap(last, now) {
		return
	}
	w.log.Warn(msg, "err", err)
}

func (w *Worker) cleanup(ctx context.Context) {
	for {
		n, err := w.db.EventsCleanup(ctx, w.cfg.Retention, 10000)
		if err != nil {
			if ctx.Err() == nil {
				w.warn("clean up delivered events", err)
			}
			return
		}
		if n < 10000 {
			return
		}
	}
}

// Envelope is the body of a webhook request: the reference registry's.
type Envelope struct {
	Events []db.Event `json:"events"`
}

// deliver makes one attempt at dl and records its outcome. It runs to
// its end even when ctx ends (a shutdown): the attempt is bounded by the
// webhook's timeout, and its outcome must be recorded.
func (w *Worker) deliver(ctx context.Context, dl db.Delivery) {
	ctx = context.WithoutCancel(ctx)
	status, err := w.send(ctx, dl)
	name := dl.Webhook.Name
	if err == nil {
		if err := w.db.DeliveryDone(ctx, dl.ID, status); err != nil {
			w.warn("record a webhook delivery", err)
			return // the lease expires and it goes again: at least once
		}
		count(&w.delivered, name)
		return
	}
	dead := dl.Attempt >= w.cfg.MaxAttempts
	wait := Backoff(w.cfg.Backoff, dl.Attempt)
	var ra *retryAfter
	if errors.As(err, &ra) && ra.wait > wait {
		wait = min(ra.wait, MaxBackoff)
	}
	if dead {
		count(&w.dead, name)
		w.log.Warn("webhook delivery dead-lettered; `berth webhook redrive` sends it again",
			"webhook", name, "event", dl.Event.ID, "repository", dl.Event.Target.Repository, "seq", dl.Event.Seq,
			"attempts", dl.Attempt, "err", err)
	} else {
		count(&w.retried, name)
		w.log.Debug("webhook delivery failed; retrying", "webhook", name, "event", dl.Event.ID,
			"attempt", dl.Attempt, "retry_in", wait, "err", err)
	}
	if err := w.db.DeliveryFailed(ctx, dl.ID, dl.Attempt, status, err.Error(), time.Now().Add(wait), dead); err != nil {
		w.warn("record a failed webhook delivery", err)
	}
}

// retryAfter is a refusal whose Retry-After asks for a longer wait.
type retryAfter struct {
	status int
	wait   time.Duration
}

func (e *retryAfter) Error() string {
	return fmt.Sprintf("HTTP %d %s (Retry-After %s)", e.status, http.StatusText(e.status), e.wait)
}

// send posts dl's event to its webhook and returns the HTTP status; an
// error unless the status is 2xx.
func (w *Worker) send(ctx context.Context, dl db.Delivery) (int, error) {
	body, err := json.Marshal(Envelope{Events: []db.Event{dl.Event}})
	if err != nil {
		return 0, fmt.Errorf("encode event: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, dl.Webhook.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, dl.Webhook.URL, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("build request: %w", err)
	}
	for _, h := range dl.Webhook.Headers {
		req.Header.Add(h.Name, h.Value)
	}
	req.Header.Set("Content-Type", MediaType)
	req.Header.Set("User-Agent", "berth-webhooks")
	req.Header.Set(EventIDHeader, dl.Event.ID)
	if dl.Webhook.Secret != "" {
		req.Header.Set(SignatureHeader, Sign(dl.Webhook.Secret, body))
	}
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		return 0, err
	}
	// Read a little of the answer, so the connection can be reused.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, nil
	}
	// Retry-After is seconds or an HTTP date (RFC 9110, 10.2.3).
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		if s, err := strconv.Atoi(ra); err == nil && s > 0 {
			return resp.StatusCode, &retryAfter{status: resp.StatusCode, wait: time.Duration(s) * time.Second}
		}
		if at, err := http.ParseTime(ra); err == nil && time.Until(at) > 0 {
			return resp.StatusCode, &retryAfter{status: resp.StatusCode, wait: time.Until(at).Round(time.Second)}
		}
	}
	return resp.StatusCode, fmt.Errorf("HTTP %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
}

// Backoff is the wait after failed attempt number attempt (from 1):
// first doubling from first up to MaxBackoff, then ±20% jitter, so that
// the retries of many deliveries that failed at once spread out.
func Backoff(first time.Duration, attempt int) time.Duration {
	d := first
	for i := 1; i < attempt && d < MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, MaxBackoff)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
