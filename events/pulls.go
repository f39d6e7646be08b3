package events

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-registry/berth/db"
)

// Pull events are the one kind not written in the transaction of a change:
// a pull changes nothing, and a database write per GET would cost the hot
// path of the registry. Pulls buffers them in memory while at least one
// webhook asks for them (--pulls) and writes them in batches. What a crash
// or kill -9 of the replica loses: the pulls of the last flush interval
// (one second by default). Also lost: pulls past the buffer's capacity
// while the database is slow or down (counted), and pulls made in the
// first seconds after a webhook with --pulls is added, before the replica
// notices (WantEvery).

// Defaults of the pull buffer.
const (
	DefaultPullFlush    = time.Second
	DefaultPullCapacity = 10000
	// WantEvery is how often a replica checks whether any webhook wants
	// pulls.
	WantEvery = 5 * time.Second
)

// Pulls buffers pull events.
type Pulls struct {
	db       *db.DB
	log      *slog.Logger
	flush    time.Duration
	capacity int

	want    atomic.Bool
	mu      sync.Mutex
	buf     []db.PullEvent
	dropped atomic.Int64
	written atomic.Int64
}

// NewPulls returns a buffer that writes every flush (0: the default).
func NewPulls(d *db.DB, flush time.Duration, log *slog.Logger) *Pulls {
	if flush <= 0 {
		flush = DefaultPullFlush
	}
	if log == nil {
		log = slog.Default()
	}
	return &Pulls{db: d, log: log, flush: flush, capacity: DefaultPullCapacity}
}

// Wanted reports whether pulls are being recorded: the API skips the work
// of describing a pull otherwise.
func (p *Pulls) Wanted() bool { return p != nil && p.want.Load() }

// Record buffers a pull, if any webhook wants pulls.
func (p *Pulls) Record(ev db.PullEvent) {
	if !p.Wanted() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buf) >= p.capacity {
		p.dropped.Add(1)
		return
	}
	p.buf = append(p.buf, ev)
}

// Dropped is how many pulls did not fit in the buffer; Written how many
// were written.
func (p *Pulls) Dropped() int64 { return p.dropped.Load() }
func (p *Pulls) Written() int64 { return p.written.Load() }

// Run checks for webhooks that want pulls and writes the buffer, until ctx
// ends; then it writes what is left.
func (p *Pulls) Run(ctx context.Context) {
	p.refresh(ctx)
	flush := time.NewTicker(p.flush)
	defer flush.Stop()
	want := time.NewTicker(WantEvery)
	defer want.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			p.write(fctx)
			cancel()
			return
		case <-want.C:
			p.refresh(ctx)
		case <-flush.C:
			p.write(ctx)
		}
	}
}

func (p *Pulls) refresh(ctx context.Context) {
	want, err := p.db.WantPulls(ctx)
	if err != nil {
		return // keep the last answer; the database's outage is logged by db
	}
	p.want.Store(want)
}

func (p *Pulls) write(ctx context.Context) {
	p.mu.Lock()
	batch := p.buf
	p.buf = nil
	p.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	if err := p.db.PullEventsWrite(ctx, batch); err != nil {
		// Put them back, in front of what came since, if there is room.
		p.mu.Lock()
		keep := min(len(batch), max(0, p.capacity-len(p.buf)))
		p.buf = append(batch[:keep:keep], p.buf...)
		p.dropped.Add(int64(len(batch) - keep))
		p.mu.Unlock()
		if !errors.Is(err, db.ErrUnavailable) {
			p.log.Warn("write pull events", "err", err, "pulls", len(batch))
		}
		return
	}
	p.written.Add(int64(len(batch)))
}
