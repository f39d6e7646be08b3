package main

import (
	"context"
	"slices"
	"sync"
	"time"
)

// loadResult is one fixed-duration (or fixed-count) run: every request
// that started inside the measured window is recorded, none sampled.
type loadResult struct {
	Requests int
	Errors   int
	FirstErr error
	Elapsed  time.Duration
	Bytes    int64
	lat      []time.Duration // sorted
}

func (r *loadResult) rps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// mibps is the throughput of the successful requests in MiB/s.
func (r *loadResult) mibps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) / (1 << 20) / r.Elapsed.Seconds()
}

// pct returns the p-th percentile (0 < p ≤ 100) of the latencies, nearest
// rank.
func (r *loadResult) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	i := int(float64(len(r.lat))*p/100+0.999999) - 1
	i = max(0, min(i, len(r.lat)-1))
	return r.lat[i]
}

func (r *loadResult) max() time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[len(r.lat)-1]
}

// op is one request of a run; it returns the bytes it moved. worker is the
// worker's index, i the request's index within the worker.
type op func(ctx context.Context, worker, i int) (int64, error)

type workerLog struct {
	lat   []time.Duration
	bytes int64
	errs  int
	first error
	last  time.Time
}

// runFor runs op on conns workers for warmup (discarded) and then for dur,
// recording every request that starts inside the measured window.
func runFor(ctx context.Context, conns int, warmup, dur time.Duration, fn op) *loadResult {
	start := time.Now().Add(warmup)
	end := start.Add(dur)
	logs := make([]workerLog, conns)
	var wg sync.WaitGroup
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := &logs[w]
			l.lat = make([]time.Duration, 0, 4096)
			for i := 0; ; i++ {
				t0 := time.Now()
				if !t0.Before(end) || ctx.Err() != nil {
					return
				}
				n, err := fn(ctx, w, i)
				t1 := time.Now()
				if t0.Before(start) {
					continue
				}
				l.record(t0, t1, n, err)
			}
		}()
	}
	wg.Wait()
	return merge(logs, start, end)
}

// runCount runs op total times on conns workers and measures the wall time.
func runCount(ctx context.Context, conns, total int, fn op) *loadResult {
	logs := make([]workerLog, conns)
	next := make(chan int, total)
	for i := range total {
		next <- i
	}
	close(next)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := &logs[w]
			for i := range next {
				if ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				n, err := fn(ctx, w, i)
				t1 := time.Now()
				l.record(t0, t1, n, err)
			}
		}()
	}
	wg.Wait()
	return merge(logs, start, start)
}

// record notes one operation that ran from t0 to t1.
func (l *workerLog) record(t0, t1 time.Time, n int64, err error) {
	l.last = t1
	if err != nil {
		l.errs++
		if l.first == nil {
			l.first = err
		}
		return
	}
	l.lat = append(l.lat, t1.Sub(t0))
	l.bytes += n
}

func merge(logs []workerLog, start, end time.Time) *loadResult {
	r := &loadResult{}
	last := end
	for _, l := range logs {
		r.lat = append(r.lat, l.lat...)
		r.Bytes += l.bytes
		r.Errors += l.errs
		if r.FirstErr == nil {
			r.FirstErr = l.first
		}
		if l.last.After(last) {
			last = l.last
		}
	}
	slices.Sort(r.lat)
	r.Requests = len(r.lat)
	r.Elapsed = last.Sub(start)
	return r
}
