package db

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// A coalescer answers the identical-shape reads of concurrent requests
// with one statement per batch instead of one per request. On a busy
// registry most of the cost of a manifest GET is the round trip to
// PostgreSQL — two system calls and a wake-up on each side, a statement
// execution — not the lookup itself; a batch pays them once.
//
// Batches form on their own, without waiting for a timer: at most
// maxInFlight statements run at once, and a read that arrives while they
// all run waits in the queue; when one finishes, everything queued goes
// out as the next statement. With little traffic every read therefore
// runs alone, as before.
//
// Consistency is what a single statement gives: a read joins a batch
// whose statement has not been sent yet, so the snapshot it reads is taken
// after the request arrived. A tag moved (and committed) before a GET
// arrives is never answered with the old target, whichever replica moved
// it. (Sharing the result of a statement already running would break
// exactly that, so nothing is shared across batches.)
type coalescer[K, V any] struct {
	// run answers keys[i] in vals[i] / errs[i]; an error of its own fails
	// the whole batch.
	run         func(ctx context.Context, keys []K) (vals []V, errs []error, err error)
	maxInFlight int
	maxBatch    int
	// timeout bounds one statement: the reads of a batch wait for it, and
	// none of their own contexts may end it (see lead).
	timeout time.Duration

	mu       sync.Mutex
	inFlight int
	queue    []*read[K, V]

	// For metrics: reads answered and statements run.
	reads, batches atomic.Int64
}

// read is one request's read. batch is guarded by the coalescer's mutex;
// val and err are written by the goroutine that runs the read's batch
// before it closes wake, and read by the read's own goroutine only after.
type read[K, V any] struct {
	key   K
	wake  chan struct{} // closed when the read is answered or must lead a batch
	batch []*read[K, V] // set when this read must run the batch (it is its first)
	val   V
	err   error
}

func newCoalescer[K, V any](maxInFlight, maxBatch int, timeout time.Duration,
	run func(ctx context.Context, keys []K) ([]V, []error, error)) *coalescer[K, V] {
	return &coalescer[K, V]{run: run, maxInFlight: maxInFlight, maxBatch: maxBatch, timeout: timeout}
}

// do answers key, as part of a batch.
func (c *coalescer[K, V]) do(ctx context.Context, key K) (V, error) {
	r := &read[K, V]{key: key, wake: make(chan struct{})}
	c.mu.Lock()
	if c.inFlight < c.maxInFlight {
		// A free slot means the queue is empty (a finishing batch hands
		// its slot to whatever is queued): run alone.
		c.inFlight++
		c.mu.Unlock()
		c.lead(ctx, []*read[K, V]{r})
		return r.val, r.err
	}
	c.queue = append(c.queue, r)
	c.mu.Unlock()

	select {
	case <-r.wake:
	case <-ctx.Done():
		c.mu.Lock()
		if i := indexOf(c.queue, r); i >= 0 {
			// Still waiting: leave, nobody depends on this read.
			c.queue = append(c.queue[:i], c.queue[i+1:]...)
			c.mu.Unlock()
			var zero V
			return zero, ctx.Err()
		}
		lead := r.batch != nil
		c.mu.Unlock()
		if !lead {
			// Part of a batch another goroutine runs: leave it to answer
			// nobody (it never reads r back), rather than wait for a
			// statement that may be stuck on a dead connection.
			var zero V
			return zero, ctx.Err()
		}
		<-r.wake // chosen to lead: the wake-up follows at once
	}
	if r.batch != nil {
		// The others in the batch wait for this goroutine: it runs the
		// statement even if its own request has gone.
		c.lead(ctx, r.batch)
	}
	return r.val, r.err
}

// lead runs batch (which holds the caller's own read), answers every read
// in it, then hands the slot to the reads queued meanwhile, if any.
func (c *coalescer[K, V]) lead(ctx context.Context, batch []*read[K, V]) {
	answered := false
	defer func() {
		if !answered {
			// run panicked. Fail the batch and pass the slot on before
			// the panic goes up, or these reads, and every later one once
			// the slots are gone, would wait forever.
			for _, r := range batch {
				r.err = errBatchPanicked
			}
		}
		c.handOff(batch)
	}()

	keys := make([]K, len(batch))
	for i, r := range batch {
		keys[i] = r.key
	}
	// One request's cancellation must not fail the others' reads; the
	// timeout stands in for theirs, so a hung connection cannot hold a
	// batch forever. The leader's own deadline, when it has one, still
	// applies: it queued first, so every other read of the batch has as
	// long or longer, and a read that waited in the queue must not get a
	// whole timeout more for its statement.
	deadline, hasDeadline := ctx.Deadline()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	if hasDeadline {
		var cancelDeadline context.CancelFunc
		ctx, cancelDeadline = context.WithDeadline(ctx, deadline)
		defer cancelDeadline()
	}
	vals, errs, err := c.run(ctx, keys)
	if err != nil && ctx.Err() == nil {
		// Once more: a connection the server closed (a restart, a
		// failover) then fails no read. The second statement's snapshot
		// is later still than every read's arrival, so it is as fresh.
		vals, errs, err = c.run(ctx, keys)
	}
	c.batches.Add(1)
	c.reads.Add(int64(len(batch)))
	for i, r := range batch {
		switch {
		case err != nil:
			r.err = err
		default:
			r.val, r.err = vals[i], errs[i]
		}
	}
	answered = true
}

// errBatchPanicked answers the reads of a batch whose statement panicked.
var errBatchPanicked = errors.New("batched read failed: the statement panicked")

// handOff wakes the reads of a finished batch and gives its slot to the
// reads queued meanwhile: the first of them leads them as the next batch.
func (c *coalescer[K, V]) handOff(batch []*read[K, V]) {
	c.mu.Lock()
	var next *read[K, V]
	if len(c.queue) > 0 {
		n := min(len(c.queue), c.maxBatch)
		next = c.queue[0]
		next.batch = c.queue[:n:n]
		c.queue = append([]*read[K, V](nil), c.queue[n:]...)
	} else {
		c.inFlight--
	}
	c.mu.Unlock()

	for _, r := range batch[1:] { // batch[0] is the caller
		close(r.wake)
	}
	if next != nil {
		close(next.wake)
	}
}

func indexOf[T comparable](s []T, v T) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}
