package events

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/berth-registry/berth/db"
)

// delivery reads the state of the delivery of repo's event seq to webhook.
func (w *world) delivery(webhook, repo string, seq int64) (state string, attempts int64, lastStatus int64) {
	w.t.Helper()
	const from = ` FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id WHERE w.name = $1 AND d.repository = $2 AND d.seq = $3`
	states := map[int64]string{0: "pending", 1: "delivered", 2: "dead"}
	state = states[w.count(`SELECT CASE d.state WHEN 'pending' THEN 0 WHEN 'delivered' THEN 1 ELSE 2 END`+from, webhook, repo, seq)]
	attempts = w.count(`SELECT d.attempts`+from, webhook, repo, seq)
	lastStatus = w.count(`SELECT coalesce(d.last_status, 0)`+from, webhook, repo, seq)
	return state, attempts, lastStatus
}

// waitState waits until the delivery is done (delivered or dead) and
// checks it ended as want.
func (w *world) waitState(webhook, repo string, seq int64, want string) {
	w.t.Helper()
	var state string
	waitFor(w.t, fmt.Sprintf("delivery %s/%d to %s done", repo, seq, webhook), func() bool {
		state, _, _ = w.delivery(webhook, repo, seq)
		return state != "pending"
	})
	if state != want {
		w.t.Fatalf("delivery %s/%d to %s: %s, want %s", repo, seq, webhook, state, want)
	}
}

// What a receiver gets: one event per request, in the reference
// registry's envelope and media type, named by Berth-Event-Id, signed
// when the webhook has a secret, with the webhook's own headers.
func TestWorkerDelivers(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	signed, plain := newReceiver(t, nil), newReceiver(t, nil)
	w.hook(WebhookSpec{Name: "signed", URL: signed.url("/hook?token=1"), Secret: "s3cret",
		Headers: []string{"X-Team: infra", "Authorization: Bearer abc"}})
	w.hook(WebhookSpec{Name: "plain", URL: plain.url("/")})
	worker, _ := w.run(Config{})
	dgst := w.push("team/app", "v1")

	waitFor(t, "both deliveries", func() bool { return len(signed.requests()) == 1 && len(plain.requests()) == 1 })
	w.waitState("signed", "team/app", 1, "delivered")
	w.waitState("plain", "team/app", 1, "delivered")

	rq := signed.requests()[0]
	if rq.path != "/hook" {
		t.Errorf("path %q", rq.path)
	}
	for name, want := range map[string]string{
		"Content-Type":  MediaType,
		"User-Agent":    "berth-webhooks",
		"X-Team":        "infra",
		"Authorization": "Bearer abc",
		EventIDHeader:   rq.event.ID,
	} {
		if got := rq.header.Get(name); got != want {
			t.Errorf("header %s: %q, want %q", name, got, want)
		}
	}
	if !Verify("s3cret", rq.body, rq.header.Get(SignatureHeader)) {
		t.Errorf("signature %q does not verify", rq.header.Get(SignatureHeader))
	}
	if rq.events != 1 {
		t.Errorf("%d events in one request, want 1", rq.events)
	}
	ev := rq.event
	if ev.ID == "" || ev.Seq != 1 || ev.Action != db.EventPush || ev.Timestamp.IsZero() ||
		ev.Target.Repository != "team/app" || ev.Target.Digest != dgst || ev.Target.Tag != "v1" ||
		ev.Target.MediaType != "application/vnd.oci.image.index.v1+json" || ev.Target.Size == 0 ||
		ev.Target.URL != "https://registry.example/v2/team/app/manifests/"+dgst {
		t.Errorf("event %+v", ev)
	}
	if ev.Request != (db.EventRequest{ID: "req-v1", Addr: "192.0.2.7:4711", Host: "registry.example", Method: "PUT", UserAgent: "events-test/1"}) ||
		ev.Actor.Name != "tester" || ev.Source != (db.EventSource{Addr: "127.0.0.1:5000", InstanceID: "test-instance"}) {
		t.Errorf("event request %+v, actor %+v, source %+v", ev.Request, ev.Actor, ev.Source)
	}

	p := plain.requests()[0]
	if p.header.Get(SignatureHeader) != "" || p.header.Get("X-Team") != "" {
		t.Errorf("the webhook without secret or headers got %v", p.header)
	}
	if p.event.ID != ev.ID || p.header.Get(EventIDHeader) != ev.ID {
		t.Errorf("the same event has ids %q and %q", p.event.ID, ev.ID)
	}
	waitFor(t, "the totals", func() bool {
		tt := worker.Totals()
		return tt.Delivered["signed"] == 1 && tt.Delivered["plain"] == 1
	})
	if tt := worker.Totals(); len(tt.Retried) != 0 || len(tt.Dead) != 0 {
		t.Errorf("totals %+v", tt)
	}
}

// A 500 is retried, and the delivery is done once an attempt succeeds.
func TestWorkerRetriesUntilSuccess(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	rc := newReceiver(t, func(i int, _ request, rw http.ResponseWriter, _ *http.Request) {
		if i < 2 {
			rw.WriteHeader(http.StatusInternalServerError)
		}
	})
	w.hook(WebhookSpec{Name: "flaky", URL: rc.url("/")})
	worker, _ := w.run(Config{})
	w.push("repo", "v1")
	w.waitState("flaky", "repo", 1, "delivered")
	if state, attempts, status := w.delivery("flaky", "repo", 1); attempts != 3 || status != 200 {
		t.Errorf("delivery %s after %d attempts, last status %d; want 3 attempts, 200", state, attempts, status)
	}
	if got := fmt.Sprint(rc.seqs("repo")); got != "[1 1 1]" {
		t.Errorf("received seqs %s", got)
	}
	ids := map[string]bool{}
	for _, rq := range rc.requests() {
		ids[rq.event.ID] = true
	}
	if len(ids) != 1 {
		t.Errorf("the retries carry %d different event ids", len(ids))
	}
	tt := worker.Totals()
	if tt.Delivered["flaky"] != 1 || tt.Retried["flaky"] != 2 || tt.Dead["flaky"] != 0 {
		t.Errorf("totals %+v", tt)
	}
}

// A delivery that never succeeds is dead after MaxAttempts, and the next
// event of its repository goes out then; redrive sends it again.
func TestWorkerDeadLetters(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	accept := make(chan struct{})
	rc := newReceiver(t, func(_ int, rq request, rw http.ResponseWriter, _ *http.Request) {
		select {
		case <-accept:
		default:
			if rq.event.Seq == 1 {
				rw.WriteHeader(http.StatusInternalServerError)
			}
		}
	})
	w.hook(WebhookSpec{Name: "hook", URL: rc.url("/")})
	w.push("repo", "v1")
	w.push("repo", "v2")
	worker, _ := w.run(Config{MaxAttempts: 3})
	w.waitState("hook", "repo", 2, "delivered")
	if state, attempts, status := w.delivery("hook", "repo", 1); state != "dead" || attempts != 3 || status != 500 {
		t.Errorf("seq 1: %s after %d attempts, last status %d; want dead after 3, 500", state, attempts, status)
	}
	if got := fmt.Sprint(rc.seqs("repo")); got != "[1 1 1 2]" {
		t.Errorf("received seqs %s, want 3 attempts of 1, then 2", got)
	}
	waitFor(t, "the totals", func() bool { return worker.Totals().Delivered["hook"] == 1 })
	if tt := worker.Totals(); tt.Dead["hook"] != 1 || tt.Retried["hook"] != 2 {
		t.Errorf("totals %+v", tt)
	}

	close(accept)
	if n, err := w.db.WebhookRedrive(t.Context(), "hook"); err != nil || n != 1 {
		t.Fatalf("redrive: %d, %v", n, err)
	}
	w.waker.Wake()
	w.waitState("hook", "repo", 1, "delivered")
	if got := fmt.Sprint(rc.seqs("repo")); got != "[1 1 1 2 1]" {
		t.Errorf("received seqs %s after the redrive", got)
	}
}

// Within a repository, events arrive in seq order even though every
// other request fails: the next one waits for the retry of the previous.
// Repositories are independent lanes.
func TestWorkerKeepsOrderThroughFailures(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	var mu sync.Mutex
	perRepo := map[string]int{}
	rc := newReceiver(t, func(_ int, rq request, rw http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		n := perRepo[rq.event.Target.Repository]
		perRepo[rq.event.Target.Repository]++
		mu.Unlock()
		if n%2 == 0 {
			rw.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	w.hook(WebhookSpec{Name: "hook", URL: rc.url("/")})
	const n = 8
	repos := []string{"a", "b", "c"}
	for i := 1; i <= n/2; i++ {
		for _, repo := range repos {
			w.push(repo, fmt.Sprint("v", i))
		}
	}
	w.run(Config{Workers: 4})
	for i := n/2 + 1; i <= n; i++ { // and more while it delivers
		for _, repo := range repos {
			w.push(repo, fmt.Sprint("v", i))
		}
	}
	for _, repo := range repos {
		w.waitState("hook", repo, n, "delivered")
	}
	for _, repo := range repos {
		// Each event fails once, then goes: 1 1 2 2 ... n n.
		var want []int64
		for i := int64(1); i <= n; i++ {
			want = append(want, i, i)
		}
		if got := rc.seqs(repo); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("repository %s: received seqs %v, want %v", repo, got, want)
		}
	}
	if pending := w.count(`SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'`); pending != 0 {
		t.Errorf("%d deliveries not delivered", pending)
	}
}

// A redirect is a failed attempt: the worker does not follow it.
func TestWorkerDoesNotFollowRedirects(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	rc := newReceiver(t, func(_ int, rq request, rw http.ResponseWriter, r *http.Request) {
		if rq.path == "/hook" {
			http.Redirect(rw, r, "/moved", http.StatusFound)
		}
	})
	w.hook(WebhookSpec{Name: "hook", URL: rc.url("/hook")})
	w.run(Config{MaxAttempts: 2})
	w.push("repo", "v1")
	w.waitState("hook", "repo", 1, "dead")
	if _, attempts, status := w.delivery("hook", "repo", 1); attempts != 2 || status != http.StatusFound {
		t.Errorf("%d attempts, last status %d; want 2, 302", attempts, status)
	}
	for _, rq := range rc.requests() {
		if rq.path != "/hook" {
			t.Errorf("the redirect was followed to %s", rq.path)
		}
	}
}

// A receiver slower than the webhook's timeout fails the attempt, which
// is retried.
func TestWorkerTimesOutSlowReceivers(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	rc := newReceiver(t, func(i int, _ request, rw http.ResponseWriter, r *http.Request) {
		if i == 0 {
			select { // until the worker gives up
			case <-r.Context().Done():
			case <-time.After(20 * time.Second):
			}
		}
	})
	w.hook(WebhookSpec{Name: "slow", URL: rc.url("/"), Timeout: 100 * time.Millisecond})
	worker, _ := w.run(Config{})
	start := time.Now()
	w.push("repo", "v1")
	w.waitState("slow", "repo", 1, "delivered")
	if _, attempts, _ := w.delivery("slow", "repo", 1); attempts != 2 {
		t.Errorf("%d attempts, want 2", attempts)
	}
	if elapsed := time.Since(start); elapsed < 100*time.Millisecond {
		t.Errorf("delivered after %v: before the first attempt could time out", elapsed)
	}
	if tt := worker.Totals(); tt.Retried["slow"] != 1 {
		t.Errorf("totals %+v", tt)
	}
	if n := w.count(`SELECT count(*) FROM webhook_deliveries WHERE last_error IS NOT NULL`); n != 0 {
		t.Errorf("the delivered row keeps the error of the timed-out attempt")
	}
}

// A Retry-After longer than the backoff sets the next attempt: not before.
func TestWorkerHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	rc := newReceiver(t, func(i int, _ request, rw http.ResponseWriter, _ *http.Request) {
		if i == 0 {
			rw.Header().Set("Retry-After", "2")
			rw.WriteHeader(http.StatusTooManyRequests)
		}
	})
	w.hook(WebhookSpec{Name: "busy", URL: rc.url("/")})
	w.run(Config{}) // backoff 5ms: without Retry-After the retry would come at once
	w.push("repo", "v1")
	w.waitState("busy", "repo", 1, "delivered")
	got := rc.requests()
	if len(got) != 2 {
		t.Fatalf("%d requests", len(got))
	}
	// Not before: the refusal was sent before the worker read it and
	// set the next attempt 2s later.
	if gap := got[1].at.Sub(got[0].at); gap < 2*time.Second {
		t.Errorf("retried %v after a Retry-After of 2s", gap)
	}
}

// Shutting down waits for the deliveries in flight, and records them.
func TestWorkerShutdownFinishesInFlight(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	arrived, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	rc := newReceiver(t, func(i int, _ request, _ http.ResponseWriter, _ *http.Request) {
		if i == 0 {
			close(arrived)
			<-release
		}
	})
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // runs before the receiver's Close
	w.hook(WebhookSpec{Name: "hook", URL: rc.url("/")})
	worker := NewWorker(w.db, Config{Owner: "test", Waker: w.waker, Poll: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		worker.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	w.push("repo", "v1")
	<-arrived
	cancel()
	select {
	case <-done:
		t.Fatal("Run returned with a delivery in flight")
	case <-time.After(100 * time.Millisecond):
	}
	releaseOnce.Do(func() { close(release) })
	<-done
	if state, attempts, status := w.delivery("hook", "repo", 1); state != "delivered" || attempts != 1 || status != 200 {
		t.Errorf("after shutdown: %s, %d attempts, status %d", state, attempts, status)
	}
	if tt := worker.Totals(); tt.Delivered["hook"] != 1 {
		t.Errorf("totals %+v", tt)
	}
	// Nothing more goes out after Run returned.
	w.push("repo", "v2")
	time.Sleep(50 * time.Millisecond)
	if n := len(rc.requests()); n != 1 {
		t.Errorf("%d requests after shutdown", n)
	}
}

// Totals counts each webhook's outcomes apart.
func TestWorkerTotals(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	good := newReceiver(t, nil)
	bad := newReceiver(t, func(_ int, _ request, rw http.ResponseWriter, _ *http.Request) {
		rw.WriteHeader(http.StatusBadGateway)
	})
	w.hook(WebhookSpec{Name: "good", URL: good.url("/")})
	w.hook(WebhookSpec{Name: "bad", URL: bad.url("/")})
	worker, _ := w.run(Config{MaxAttempts: 2})
	for _, repo := range []string{"a", "b", "c"} {
		w.push(repo, "v1")
	}
	w.push("a", "v2")
	waitFor(t, "every delivery done", func() bool {
		return w.count(`SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'`) == 0
	})
	want := Totals{Delivered: map[string]int64{"good": 4}, Retried: map[string]int64{"bad": 4}, Dead: map[string]int64{"bad": 4}}
	waitFor(t, "the totals", func() bool { return fmt.Sprint(worker.Totals()) == fmt.Sprint(want) })
	if dead := w.count(`SELECT count(*) FROM webhook_deliveries WHERE state = 'dead' AND last_error LIKE 'HTTP 502%'`); dead != 4 {
		t.Errorf("%d dead deliveries say HTTP 502", dead)
	}
}
