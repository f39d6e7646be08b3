package db

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// gate is a coalescer run function that records each batch and, when
// hold is set, blocks every batch until released. It answers key k with
// "v"+k, or with errKey for the key "bad".
type gate struct {
	hold    chan struct{} // nil: answer at once
	started chan []string // every batch, as it starts
	mu      sync.Mutex
	failAll error // returned as the batch's own error
	sawDone bool  // a batch ran with an already cancelled context
}

var errKey = errors.New("bad key")

func (g *gate) run(ctx context.Context, keys []string) ([]string, []error, error) {
	g.started <- append([]string(nil), keys...)
	if g.hold != nil {
		<-g.hold
	}
	g.mu.Lock()
	g.sawDone = g.sawDone || ctx.Err() != nil
	failAll := g.failAll
	g.mu.Unlock()
	if failAll != nil {
		return nil, nil, failAll
	}
	vals := make([]string, len(keys))
	errs := make([]error, len(keys))
	for i, k := range keys {
		if k == "bad" {
			errs[i] = errKey
			continue
		}
		vals[i] = "v" + k
	}
	return vals, errs, nil
}

func newGate(held bool) *gate {
	g := &gate{started: make(chan []string, 100)}
	if held {
		g.hold = make(chan struct{})
	}
	return g
}

// next returns the next batch to start, failing the test if none does.
func (g *gate) next(t *testing.T) []string {
	t.Helper()
	select {
	case b := <-g.started:
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("no batch started")
		return nil
	}
}

type result struct {
	key, val string
	err      error
}

// recv returns the next answer on out, failing the test if none comes.
func recv(t *testing.T, out <-chan result) result {
	t.Helper()
	select {
	case r := <-out:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no read was answered")
		return result{}
	}
}

// start runs c.do(key) in a goroutine, reporting on out.
func start(ctx context.Context, c *coalescer[string, string], key string, out chan<- result) {
	go func() {
		v, err := c.do(ctx, key)
		out <- result{key, v, err}
	}()
}

// waitQueued waits until n reads are queued behind the running batches.
func waitQueued(t *testing.T, c *coalescer[string, string], n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		q := len(c.queue)
		c.mu.Unlock()
		if q == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reads queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// Reads that arrive while the only slot is busy go out together as the
// next statement, at most maxBatch at a time, and each gets its own answer.
func TestCoalescerBatchesQueuedReads(t *testing.T) {
	g := newGate(true)
	c := newCoalescer(1, 4, g.run)
	out := make(chan result, 20)
	ctx := context.Background()

	start(ctx, c, "first", out)
	if b := g.next(t); fmt.Sprint(b) != "[first]" {
		t.Fatalf("first batch %v, want the lone read", b)
	}
	for i := range 10 {
		start(ctx, c, fmt.Sprint(i), out)
		waitQueued(t, c, i+1) // keeps the queue in arrival order
	}
	start(ctx, c, "bad", out)
	waitQueued(t, c, 11)
	close(g.hold)

	var sizes []int
	for range 3 {
		sizes = append(sizes, len(g.next(t)))
	}
	if fmt.Sprint(sizes) != "[4 4 3]" {
		t.Errorf("batch sizes %v, want [4 4 3]", sizes)
	}
	for range 12 {
		r := recv(t, out)
		switch {
		case r.key == "bad":
			if !errors.Is(r.err, errKey) {
				t.Errorf("read of bad: err %v, want its own error", r.err)
			}
		case r.err != nil || r.val != "v"+r.key:
			t.Errorf("read of %s: %q, %v", r.key, r.val, r.err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inFlight != 0 || len(c.queue) != 0 {
		t.Errorf("after all reads: %d in flight, %d queued", c.inFlight, len(c.queue))
	}
}

// With nothing running, a read goes out at once, alone: no waiting for
// company on a quiet registry.
func TestCoalescerRunsAloneWhenIdle(t *testing.T) {
	g := newGate(false)
	c := newCoalescer(2, 64, g.run)
	for i := range 3 {
		v, err := c.do(context.Background(), fmt.Sprint(i))
		if err != nil || v != fmt.Sprint("v", i) {
			t.Fatalf("read %d: %q, %v", i, v, err)
		}
		if b := g.next(t); len(b) != 1 {
			t.Fatalf("read %d went out in a batch of %d", i, len(b))
		}
	}
}

// A queued read whose request goes away returns at once and is left out
// of the next statement.
func TestCoalescerCancelWhileQueued(t *testing.T) {
	g := newGate(true)
	c := newCoalescer(1, 64, g.run)
	out := make(chan result, 4)
	start(context.Background(), c, "first", out)
	g.next(t)
	ctx, cancel := context.WithCancel(context.Background())
	start(ctx, c, "gone", out)
	waitQueued(t, c, 1)
	start(context.Background(), c, "stays", out)
	waitQueued(t, c, 2)

	cancel()
	if r := recv(t, out); r.key != "gone" || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("first answer %+v, want the cancelled read with context.Canceled", r)
	}
	waitQueued(t, c, 1)
	close(g.hold)
	if b := g.next(t); fmt.Sprint(b) != "[stays]" {
		t.Errorf("next batch %v, want only the read still waiting", b)
	}
	for range 2 {
		if r := recv(t, out); r.err != nil {
			t.Errorf("read of %s: %v", r.key, r.err)
		}
	}
}

// A read chosen to lead the next batch runs it even when its own request
// has gone: the others in the batch depend on it. The statement runs with
// a context that is not cancelled.
func TestCoalescerCancelledLeaderStillRunsTheBatch(t *testing.T) {
	g := newGate(true)
	c := newCoalescer(1, 64, g.run)
	out := make(chan result, 4)
	start(context.Background(), c, "first", out)
	g.next(t)
	ctx, cancel := context.WithCancel(context.Background())
	start(ctx, c, "leader", out) // first in the queue: leads the next batch
	waitQueued(t, c, 1)
	start(context.Background(), c, "follower", out)
	waitQueued(t, c, 2)

	g.hold <- struct{}{} // finish the first batch: "leader" is woken to lead
	if b := g.next(t); fmt.Sprint(b) != "[leader follower]" {
		t.Fatalf("second batch %v", b)
	}
	cancel() // the leader's request goes away while its statement runs
	close(g.hold)
	got := map[string]result{}
	for range 3 {
		r := recv(t, out)
		got[r.key] = r
	}
	if r := got["follower"]; r.err != nil || r.val != "vfollower" {
		t.Errorf("follower: %q, %v", r.val, r.err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.sawDone {
		t.Error("a batch statement ran with a cancelled context")
	}
}

// A failed statement fails every read of its batch, and the next batch
// still runs.
func TestCoalescerStatementErrorReachesEveryRead(t *testing.T) {
	g := newGate(true)
	c := newCoalescer(1, 64, g.run)
	out := make(chan result, 4)
	start(context.Background(), c, "first", out)
	g.next(t)
	start(context.Background(), c, "a", out)
	waitQueued(t, c, 1)
	start(context.Background(), c, "b", out)
	waitQueued(t, c, 2)
	boom := errors.New("connection lost")
	g.mu.Lock()
	g.failAll = boom
	g.mu.Unlock()
	close(g.hold)
	for range 3 {
		if r := recv(t, out); !errors.Is(r.err, boom) {
			t.Errorf("read of %s: err %v, want the statement's", r.key, r.err)
		}
	}
	g.mu.Lock()
	g.failAll = nil
	g.mu.Unlock()
	if v, err := c.do(context.Background(), "later"); err != nil || v != "vlater" {
		t.Errorf("read after a failed batch: %q, %v", v, err)
	}
}
