package events

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// The tests of this package run the real thing: a database schema of
// their own on the test PostgreSQL, events written by the db API changes
// that write them in production, and receivers that are real HTTP servers
// (httptest) on the loopback interface.

// world is a database with a waker that its commits ring, as serve wires
// them.
type world struct {
	t     *testing.T
	db    *db.DB
	url   string
	waker *Waker
}

func newWorld(t *testing.T) *world {
	t.Helper()
	url := dbtest.NewURL(t)
	waker := NewWaker()
	d, err := db.Open(t.Context(), url, db.Options{Events: db.EventsConfig{
		Source:  db.EventSource{Addr: "127.0.0.1:5000", InstanceID: "test-instance"},
		BaseURL: "http://registry.test",
		Written: waker.Wake,
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return &world{t: t, db: d, url: url, waker: waker}
}

// hook validates spec and adds the webhook.
func (w *world) hook(spec WebhookSpec) db.Webhook {
	w.t.Helper()
	wh, err := spec.Webhook()
	if err != nil {
		w.t.Fatal(err)
	}
	if err := w.db.WebhookAdd(context.Background(), wh); err != nil {
		w.t.Fatal(err)
	}
	return wh
}

// push stores a manifest of its own in repo, tagged tag: one push event.
func (w *world) push(repo, tag string) string {
	w.t.Helper()
	payload := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"t":"` + repo + ":" + tag + `"}}`)
	dgst := digest.FromBytes(payload).String()
	_, err := w.db.ManifestStore(context.Background(), db.ManifestPut{Repository: repo, Digest: dgst,
		MediaType: "application/vnd.oci.image.index.v1+json", Payload: payload, Tags: []string{tag}},
		db.Actor{Name: "tester", RequestID: "req-" + tag, Request: &db.RequestInfo{
			Addr: "192.0.2.7:4711", Host: "registry.example", Method: "PUT", UserAgent: "events-test/1", BaseURL: "https://registry.example"}})
	if err != nil {
		w.t.Fatal(err)
	}
	return dgst
}

// run starts a worker with quick retries; stop cancels it and waits for
// Run to return (also at the end of the test).
func (w *world) run(cfg Config) (worker *Worker, stop func()) {
	w.t.Helper()
	if cfg.Owner == "" {
		cfg.Owner = "test"
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = 5 * time.Millisecond
	}
	if cfg.Poll == 0 {
		cfg.Poll = 10 * time.Millisecond
	}
	cfg.Waker = w.waker
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	worker = NewWorker(w.db, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		worker.Run(ctx)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	w.t.Cleanup(stop)
	return worker, stop
}

// count runs a query that returns one integer.
func (w *world) count(sql string, args ...any) int64 {
	w.t.Helper()
	return dbtest.QueryInt(w.t, w.url, sql, args...)
}

// waitFor polls cond until it holds; the deadline only keeps a broken
// test from hanging, it is not a measure of anything.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// request is one request a receiver got.
type request struct {
	path   string
	header http.Header
	body   []byte
	event  db.Event // the envelope's only event
	events int      // how many the envelope held
	at     time.Time
}

// receiver is a webhook endpoint that records what it gets and answers as
// respond says (nil: 200).
type receiver struct {
	t   *testing.T
	srv *httptest.Server

	mu      sync.Mutex
	got     []request
	respond func(i int, rq request, w http.ResponseWriter, r *http.Request)
}

func newReceiver(t *testing.T, respond func(i int, rq request, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{t: t, respond: respond}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		rc.t.Errorf("receiver: read body: %v", err)
		return
	}
	rq := request{path: r.URL.Path, header: r.Header.Clone(), body: body, at: time.Now()}
	var env Envelope
	if err := json.Unmarshal(body, &env); err != nil {
		rc.t.Errorf("receiver: body %q: %v", body, err)
	}
	rq.events = len(env.Events)
	if len(env.Events) > 0 {
		rq.event = env.Events[0]
	}
	rc.mu.Lock()
	i := len(rc.got)
	rc.got = append(rc.got, rq)
	rc.mu.Unlock()
	if rc.respond != nil {
		rc.respond(i, rq, w, r)
	}
}

// requests returns what the receiver got so far.
func (rc *receiver) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.got...)
}

// seqs returns the seqs of the events received for repo, in arrival order.
func (rc *receiver) seqs(repo string) []int64 {
	var out []int64
	for _, rq := range rc.requests() {
		if rq.event.Target.Repository == repo {
			out = append(out, rq.event.Seq)
		}
	}
	return out
}

func (rc *receiver) url(path string) string { return rc.srv.URL + path }
