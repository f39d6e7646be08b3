package db

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
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
	failN   int   // fail this many statements, then answer
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
	if failAll == nil && g.failN > 0 {
		g.failN--
		failAll = errors.New("connection reset")
	}
	g.mu.Unlock()
	if failAll != nil {
		return nil, nil, failAll
	}
	if slices.Contains(keys, "panic") {
		panic("statement panicked")
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

// busy returns a coalescer with one slot, taken by a read of "first"
// whose statement hangs until g.hold lets it go; out gets the answers.
func busy(t *testing.T) (*gate, *coalescer[string, string], chan result) {
	t.Helper()
	g := newGate(true)
	c := newCoalescer(1, 64, DefaultTimeout, g.run)
	out := make(chan result, 4)
	start(context.Background(), c, "first", out)
	g.next(t)
	return g, c, out
}

// queueRead starts a read of key and waits until it is queued behind the
// running batches: reads queue in the order of the calls.
func queueRead(t *testing.T, ctx context.Context, c *coalescer[string, string], key string, out chan<- result) {
	t.Helper()
	c.mu.Lock()
	n := len(c.queue)
	c.mu.Unlock()
	start(ctx, c, key, out)
	waitQueued(t, c, n+1)
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
	c := newCoalescer(1, 4, DefaultTimeout, g.run)
	out := make(chan result, 20)
	ctx := context.Background()

	start(ctx, c, "first", out)
	if b := g.next(t); fmt.Sprint(b) != "[first]" {
		t.Fatalf("first batch %v, want the lone read", b)
	}
	for i := range 10 {
		queueRead(t, ctx, c, fmt.Sprint(i), out)
	}
	queueRead(t, ctx, c, "bad", out)
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
	c := newCoalescer(2, 64, DefaultTimeout, g.run)
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
	g, c, out := busy(t)
	ctx, cancel := context.WithCancel(context.Background())
	queueRead(t, ctx, c, "gone", out)
	queueRead(t, context.Background(), c, "stays", out)

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
	g, c, out := busy(t)
	ctx, cancel := context.WithCancel(context.Background())
	queueRead(t, ctx, c, "leader", out) // first in the queue: leads the next batch
	queueRead(t, context.Background(), c, "follower", out)

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
	g, c, out := busy(t)
	queueRead(t, context.Background(), c, "a", out)
	queueRead(t, context.Background(), c, "b", out)
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

// A statement that fails once, as on a connection the server closed, is
// run again: no read sees the error.
func TestCoalescerRetriesAFailedStatementOnce(t *testing.T) {
	g := newGate(false)
	g.failN = 1
	c := newCoalescer(1, 64, DefaultTimeout, g.run)
	if v, err := c.do(context.Background(), "a"); err != nil || v != "va" {
		t.Fatalf("read after one failed statement: %q, %v", v, err)
	}
	if n := len(g.started); n != 2 {
		t.Errorf("%d statements, want the failed one and its retry", n)
	}
}

// A read whose request goes away while its batch runs returns at once,
// without waiting for a statement that may hang; the batch goes on.
func TestCoalescerCancelledFollowerReturnsAtOnce(t *testing.T) {
	g, c, out := busy(t)
	queueRead(t, context.Background(), c, "leader", out)
	ctx, cancel := context.WithCancel(context.Background())
	queueRead(t, ctx, c, "follower", out)
	g.hold <- struct{}{} // the first batch ends; [leader follower] starts and hangs
	if b := g.next(t); fmt.Sprint(b) != "[leader follower]" {
		t.Fatalf("second batch %v", b)
	}
	if r := recv(t, out); r.key != "first" {
		t.Fatalf("answer %+v, want the first read's", r)
	}
	cancel()
	if r := recv(t, out); r.key != "follower" || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("answer %+v while the batch hangs, want the cancelled follower", r)
	}
	close(g.hold)
	if r := recv(t, out); r.key != "leader" || r.err != nil || r.val != "vleader" {
		t.Errorf("leader: %+v", r)
	}
}

// A statement that panics fails its batch instead of leaving the reads
// in it waiting, and frees its slot for the reads after it.
func TestCoalescerPanicFailsTheBatchAndFreesTheSlot(t *testing.T) {
	g, c, out := busy(t)
	go func() { // leads the next batch, and panics in it
		defer func() {
			out <- result{key: "panic", err: fmt.Errorf("panicked: %v", recover())}
		}()
		c.do(context.Background(), "panic")
	}()
	waitQueued(t, c, 1)
	queueRead(t, context.Background(), c, "follower", out)
	close(g.hold)
	got := map[string]result{}
	for range 3 {
		r := recv(t, out)
		got[r.key] = r
	}
	if err := got["follower"].err; !errors.Is(err, errBatchPanicked) {
		t.Errorf("follower of the panicking batch: err %v", err)
	}
	if v, err := c.do(context.Background(), "later"); err != nil || v != "vlater" {
		t.Errorf("read after the panic: %q, %v", v, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inFlight != 0 {
		t.Errorf("%d slots still taken after every read ended", c.inFlight)
	}
}

// Many goroutines, random cancellations and statement times: every read
// ends with its own answer or its own context's error, and the coalescer
// ends idle.
func TestCoalescerStress(t *testing.T) {
	var statements, keysSent int64
	var mu sync.Mutex
	run := func(ctx context.Context, keys []string) ([]string, []error, error) {
		mu.Lock()
		statements++
		keysSent += int64(len(keys))
		mu.Unlock()
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		vals := make([]string, len(keys))
		for i, k := range keys {
			vals[i] = "v" + k
		}
		return vals, make([]error, len(keys)), nil
	}
	c := newCoalescer(2, 8, DefaultTimeout, run)
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				key := fmt.Sprintf("%d-%d", g, i)
				ctx, cancel := context.WithCancel(context.Background())
				if rand.IntN(4) == 0 {
					time.AfterFunc(time.Duration(rand.IntN(300))*time.Microsecond, cancel)
				}
				v, err := c.do(ctx, key)
				switch {
				case err == nil && v != "v"+key:
					t.Errorf("read of %s answered %q", key, v)
				case err != nil && !errors.Is(err, context.Canceled):
					t.Errorf("read of %s: %v", key, err)
				case err != nil && ctx.Err() == nil:
					t.Errorf("read of %s failed with a context that was not cancelled", key)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inFlight != 0 || len(c.queue) != 0 {
		t.Errorf("idle coalescer has %d in flight, %d queued", c.inFlight, len(c.queue))
	}
	if statements >= keysSent {
		t.Errorf("%d statements for %d keys: nothing was batched", statements, keysSent)
	}
	t.Logf("%d keys in %d statements", keysSent, statements)
}
