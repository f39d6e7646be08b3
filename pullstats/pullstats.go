// Package pullstats counts manifest pulls in memory and adds them to the
// pull statistics in the database (db.PullStatsAdd) in batches: how often,
// and when last, each manifest and each tag was pulled. A GET writes
// nothing to the database; each replica flushes what it counted once per
// interval (--pull-stats-flush), in one transaction, and when it stops.
//
// What a crash (kill -9) of a replica loses: the pulls it counted since
// its last successful flush, which is one flush interval while the
// database answers. While it does not, the counts stay in memory (up to
// MaxKeys distinct manifests and tags; pulls of new ones past that are
// dropped and counted) and a crash loses them all.
package pullstats

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-registry/berth/db"
)

// Defaults.
const (
	DefaultFlush = 10 * time.Second
	// DefaultMaxKeys bounds the distinct (repository, digest, tag) counted
	// between two successful flushes: an entry takes about 200 bytes with
	// its strings, so at most some 20 MB while the database is down.
	DefaultMaxKeys = 100_000
	// finalFlushTimeout bounds the flush at shutdown.
	finalFlushTimeout = 5 * time.Second
)

// key is what a pull is counted by: the manifest, and the tag it was
// pulled by ("" for a pull by digest).
type key struct{ repo, digest, tag string }

type count struct {
	n    int64
	last int64 // unix nanoseconds
}

// Stats counts pulls. The zero value is not usable; a nil *Stats counts
// nothing.
type Stats struct {
	db      *db.DB
	flush   time.Duration
	maxKeys int
	log     *slog.Logger

	mu sync.Mutex
	m  map[key]*count

	// pending are the counts a flush could not add (a row was locked, or
	// the database failed): the next flush adds them. Only the flushing
	// goroutine touches them, under flushMu.
	flushMu              sync.Mutex
	pending, pendingTags []db.PullCount

	flushed, tagsFlushed, gone, full atomic.Int64
	busy                             atomic.Int64 // flushes that gave up waiting for a lock
	buffered                         atomic.Int64
}

// New returns a counter that flushes to d every flush (0: DefaultFlush).
func New(d *db.DB, flush time.Duration, log *slog.Logger) *Stats {
	if flush <= 0 {
		flush = DefaultFlush
	}
	if log == nil {
		log = slog.Default()
	}
	return &Stats{db: d, flush: flush, maxKeys: DefaultMaxKeys, log: log, m: make(map[key]*count)}
}

// Record counts one pull of manifest digest of repo, by tag if tag is not
// empty. It is on the path of every manifest GET: a map increment under a
// mutex, allocating only for a key not seen since the last flush.
func (s *Stats) Record(repo, digest, tag string) {
	if s == nil {
		return
	}
	now := time.Now().UnixNano()
	k := key{repo, digest, tag}
	s.mu.Lock()
	c := s.m[k]
	if c == nil {
		if len(s.m) >= s.maxKeys {
			s.mu.Unlock()
			s.full.Add(1)
			return
		}
		c = &count{}
		s.m[k] = c
	}
	c.n++
	c.last = max(c.last, now)
	s.mu.Unlock()
}

// Flushed is how many manifest pulls were added to the database, and
// TagsFlushed how many of them by tag.
func (s *Stats) Flushed() int64     { return s.flushed.Load() }
func (s *Stats) TagsFlushed() int64 { return s.tagsFlushed.Load() }

// Dropped is how many manifest pulls were not counted: the manifest was
// gone (deleted) when they were flushed, or the buffer was full.
func (s *Stats) Dropped() (gone, full int64) { return s.gone.Load(), s.full.Load() }

// Busy is how many flushes gave up waiting for a lock (see
// db.PullStatsResult.Busy); their counts went to the next flush.
func (s *Stats) Busy() int64 { return s.busy.Load() }

// Buffered is how many keys have counts waiting for a flush: the
// manifest and tag pulls counted since the last flush, and the manifests
// and tags whose counts it could not add.
func (s *Stats) Buffered() int64 {
	s.mu.Lock()
	n := len(s.m)
	s.mu.Unlock()
	return int64(n) + s.buffered.Load()
}

// Run flushes every interval until ctx ends, then once more.
func (s *Stats) Run(ctx context.Context) {
	t := time.NewTicker(s.flush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlushTimeout)
			if err := s.Flush(fctx); err != nil {
				s.log.Warn("pull statistics not written at shutdown", "err", err, "keys", s.Buffered())
			}
			cancel()
			return
		case <-t.C:
			if err := s.Flush(ctx); err != nil && !errors.Is(err, db.ErrUnavailable) && ctx.Err() == nil {
				// An outage is logged by db; the counts wait for the next flush.
				s.log.Warn("write pull statistics", "err", err, "keys", s.Buffered())
			}
		}
	}
}

// Flush adds what was counted to the database, in one transaction. What
// it cannot add stays for the next flush.
func (s *Stats) Flush(ctx context.Context) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	batch := s.m
	s.m = make(map[key]*count, len(batch))
	s.mu.Unlock()

	manifests := aggregate(s.pending, len(batch))
	tags := aggregate(s.pendingTags, len(batch))
	for k, c := range batch {
		manifests.add(k.repo, k.digest, c)
		if k.tag != "" {
			tags.add(k.repo, k.tag, c)
		}
	}
	s.pending, s.pendingTags = nil, nil
	ms, ts := manifests.list(), tags.list()
	res, err := s.db.PullStatsAdd(ctx, ms, ts)
	if err != nil {
		s.pending, s.pendingTags = ms, ts
	} else {
		s.pending, s.pendingTags = res.Retry, res.RetryTags
		if res.Busy {
			s.busy.Add(1)
		}
		s.flushed.Add(res.Added)
		s.tagsFlushed.Add(res.TagsAdded)
		s.gone.Add(res.Dropped)
	}
	s.buffered.Store(int64(len(s.pending) + len(s.pendingTags)))
	return err
}

// counts aggregates counts by repository and reference.
type counts map[[2]string]*db.PullCount

func aggregate(pending []db.PullCount, size int) counts {
	m := make(counts, size+len(pending))
	for _, p := range pending {
		m[[2]string{p.Repository, p.Ref}] = &p
	}
	return m
}

func (m counts) add(repo, ref string, c *count) {
	last := time.Unix(0, c.last)
	p := m[[2]string{repo, ref}]
	if p == nil {
		m[[2]string{repo, ref}] = &db.PullCount{Repository: repo, Ref: ref, Count: c.n, Last: last}
		return
	}
	p.Count += c.n
	if last.After(p.Last) {
		p.Last = last
	}
}

func (m counts) list() []db.PullCount {
	if len(m) == 0 {
		return nil
	}
	out := make([]db.PullCount, 0, len(m))
	for _, p := range m {
		out = append(out, *p)
	}
	return out
}
