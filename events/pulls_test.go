package events

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/berth-registry/berth/db"
)

func pull(repo, tag string) db.PullEvent {
	return db.PullEvent{Repository: repo, Digest: "sha256:" + fmt.Sprintf("%064d", len(tag)), MediaType: "application/vnd.oci.image.manifest.v1+json",
		Size: 42, Tag: tag, Actor: db.Actor{Name: "puller", RequestID: "r1",
			Request: &db.RequestInfo{Addr: "192.0.2.9:1000", Host: "registry.example", Method: "GET", UserAgent: "docker/27", BaseURL: "https://registry.example"}}}
}

// pullEvents returns the pull events of repo.
func (w *world) pullEvents(repo string) []db.Event {
	w.t.Helper()
	evs, _, err := w.db.EventList(context.Background(), repo, 0, 1000)
	if err != nil && !errors.Is(err, db.ErrRepositoryUnknown) {
		w.t.Fatal(err)
	}
	var out []db.Event
	for _, ev := range evs {
		if ev.Action == db.EventPull {
			out = append(out, ev)
		}
	}
	return out
}

func (p *Pulls) buffered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.buf)
}

// runPulls starts p.Run; stop cancels it and waits for it to return.
func runPulls(t *testing.T, p *Pulls) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

// While no webhook wants pulls, Record keeps nothing: the hot path pays
// for nothing nobody asked for.
func TestPullsNotWanted(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.hook(WebhookSpec{Name: "no-pulls", URL: "http://127.0.0.1:1/"})
	p := NewPulls(w.db, 10*time.Millisecond, nil)
	p.Record(pull("repo", "v1")) // before any refresh
	p.refresh(t.Context())
	if p.Wanted() {
		t.Fatal("pulls wanted without a webhook that asks for them")
	}
	p.Record(pull("repo", "v1"))
	if n := p.buffered(); n != 0 {
		t.Fatalf("%d pulls buffered", n)
	}
	p.write(t.Context())
	if evs := w.pullEvents("repo"); len(evs) != 0 || p.Written() != 0 || p.Dropped() != 0 {
		t.Errorf("%d pull events, written %d, dropped %d", len(evs), p.Written(), p.Dropped())
	}
	var nilPulls *Pulls
	if nilPulls.Wanted() {
		t.Error("a nil Pulls wants pulls")
	}
	nilPulls.Record(pull("repo", "v1")) // and does not panic
}

// Once a webhook asks for pulls and the buffer has noticed, pulls become
// events, numbered in their repository like the others, and delivered to
// the webhooks that want pulls only.
func TestPullsRecorded(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.push("repo", "v1") // seq 1
	w.hook(WebhookSpec{Name: "pulls", URL: "http://127.0.0.1:1/", Pulls: true})
	w.hook(WebhookSpec{Name: "no-pulls", URL: "http://127.0.0.1:1/"})
	p := NewPulls(w.db, 10*time.Millisecond, nil)
	runPulls(t, p)
	waitFor(t, "the buffer to see the webhook", p.Wanted)
	p.Record(pull("repo", "v1"))
	p.Record(pull("other", "latest"))
	waitFor(t, "the pulls written", func() bool { return p.Written() == 2 })

	evs := w.pullEvents("repo")
	if len(evs) != 1 {
		t.Fatalf("%d pull events in repo", len(evs))
	}
	ev := evs[0]
	want := pull("repo", "v1")
	if ev.Seq != 2 || ev.Target.Repository != "repo" || ev.Target.Tag != "v1" || ev.Target.Digest != want.Digest ||
		ev.Target.Size != 42 || ev.Target.MediaType != want.MediaType ||
		ev.Target.URL != "https://registry.example/v2/repo/manifests/"+want.Digest || ev.Actor.Name != "puller" ||
		ev.Request != (db.EventRequest{ID: "r1", Addr: "192.0.2.9:1000", Host: "registry.example", Method: "GET", UserAgent: "docker/27"}) ||
		ev.Source.InstanceID != "test-instance" {
		t.Errorf("pull event %+v", ev)
	}
	if evs := w.pullEvents("other"); len(evs) != 1 || evs[0].Seq != 1 {
		t.Errorf("pull events of other: %+v", evs)
	}
	for hook, want := range map[string]int64{"pulls": 2, "no-pulls": 0} {
		n := w.count(`SELECT count(*) FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
			JOIN events e ON e.id = d.event_id WHERE w.name = $1 AND e.action = 'pull'`, hook)
		if n != want {
			t.Errorf("webhook %s: %d pull deliveries, want %d", hook, n, want)
		}
	}
	if p.Dropped() != 0 {
		t.Errorf("dropped %d", p.Dropped())
	}
}

// Past its capacity the buffer drops pulls, and counts them.
func TestPullsCapacity(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.hook(WebhookSpec{Name: "pulls", URL: "http://127.0.0.1:1/", Actions: []string{"pull"}})
	p := NewPulls(w.db, time.Hour, nil)
	p.capacity = 3
	p.refresh(t.Context())
	if !p.Wanted() {
		t.Fatal("pulls not wanted with a webhook whose actions name pull")
	}
	for i := range 5 {
		p.Record(pull("repo", fmt.Sprint("t", i)))
	}
	if p.Dropped() != 2 || p.buffered() != 3 {
		t.Fatalf("dropped %d, buffered %d; want 2, 3", p.Dropped(), p.buffered())
	}
	p.write(t.Context())
	evs := w.pullEvents("repo")
	if len(evs) != 3 || p.Written() != 3 {
		t.Fatalf("%d pull events, written %d", len(evs), p.Written())
	}
	for i, ev := range evs { // the first three, in order
		if ev.Target.Tag != fmt.Sprint("t", i) || ev.Seq != int64(i+1) {
			t.Errorf("event %d: tag %s seq %d", i, ev.Target.Tag, ev.Seq)
		}
	}
	// Room again once written.
	p.Record(pull("repo", "again"))
	if p.buffered() != 1 || p.Dropped() != 2 {
		t.Errorf("buffered %d, dropped %d", p.buffered(), p.Dropped())
	}
}

// Run writes what is left in the buffer when it stops, without waiting
// for the next flush.
func TestPullsFlushedAtShutdown(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.hook(WebhookSpec{Name: "pulls", URL: "http://127.0.0.1:1/", Pulls: true})
	p := NewPulls(w.db, time.Hour, nil)
	stop := runPulls(t, p)
	waitFor(t, "the buffer to see the webhook", p.Wanted)
	p.Record(pull("repo", "v1"))
	p.Record(pull("repo", "v2"))
	if evs := w.pullEvents("repo"); len(evs) != 0 {
		t.Fatalf("%d pull events before the first flush, an hour away", len(evs))
	}
	stop()
	if evs := w.pullEvents("repo"); len(evs) != 2 || p.Written() != 2 {
		t.Errorf("after shutdown: %d pull events, written %d", len(evs), p.Written())
	}
}
