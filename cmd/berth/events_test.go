package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/notifications"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/events"
)

// The tests in this file receive Berth's events the way a real consumer
// does: an HTTP server of their own (hookReceiver) that checks every
// request it gets, with Berth delivering from `berth serve` processes or
// in-process servers, and webhooks managed with the CLI.

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

// hookDelivery is one request a receiver accepted.
type hookDelivery struct {
	path   string
	event  db.Event
	body   []byte
	header http.Header
}

// hookReceiver is a webhook endpoint: an HTTP server on a loopback port of
// its own, which a test can stop and start again on the same port. It
// checks every request as a receiver should (method, media type, one event
// per body, the event id header, the signature) and keeps the requests it
// accepted, in the order it accepted them.
type hookReceiver struct {
	t      *testing.T
	secret string

	mu       sync.Mutex
	addr     string
	srv      *http.Server
	requests int
	accepted []hookDelivery
	problems []string
	// policy decides what becomes of a request that passed the checks:
	// with record, the receiver keeps it as received (it processed the
	// event); then it answers status, or nothing when status is 0 (policy
	// answered). nil records and answers 200 to every request.
	policy hookPolicy
}

func newReceiver(t *testing.T, secret string) *hookReceiver {
	h := &hookReceiver{t: t, secret: secret, addr: "127.0.0.1:0"}
	h.start()
	t.Cleanup(h.stop)
	return h
}

// start listens, on the port of the previous start if there was one.
func (h *hookReceiver) start() {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	var ln net.Listener
	var err error
	for range 200 { // the port may take a moment to be free again
		if ln, err = net.Listen("tcp", h.addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		h.t.Fatalf("receiver: %v", err)
	}
	h.addr = ln.Addr().String()
	h.srv = &http.Server{Handler: h}
	go h.srv.Serve(ln)
}

// stop closes the listener and every connection: the endpoint is down.
func (h *hookReceiver) stop() {
	h.mu.Lock()
	srv := h.srv
	h.srv = nil
	h.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

func (h *hookReceiver) url(path string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return "http://" + h.addr + path
}

type hookPolicy func(w http.ResponseWriter, r *http.Request, d hookDelivery) (record bool, status int)

func (h *hookReceiver) setPolicy(p hookPolicy) {
	h.mu.Lock()
	h.policy = p
	h.mu.Unlock()
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return // the sender went away
	}
	var env struct {
		Events []db.Event `json:"events"`
	}
	problem := ""
	switch {
	case r.Method != http.MethodPost:
		problem = "method " + r.Method
	case r.Header.Get("Content-Type") != events.MediaType:
		problem = "Content-Type " + r.Header.Get("Content-Type")
	case json.Unmarshal(body, &env) != nil || len(env.Events) != 1:
		problem = "body is not an envelope of one event: " + string(body)
	case r.Header.Get(events.EventIDHeader) != env.Events[0].ID:
		problem = fmt.Sprintf("%s %q for event %q", events.EventIDHeader, r.Header.Get(events.EventIDHeader), env.Events[0].ID)
	case h.secret != "" && !events.Verify(h.secret, body, r.Header.Get(events.SignatureHeader)):
		problem = fmt.Sprintf("%s %q does not verify", events.SignatureHeader, r.Header.Get(events.SignatureHeader))
	case h.secret == "" && r.Header.Get(events.SignatureHeader) != "":
		problem = "signed without a secret"
	}
	h.mu.Lock()
	h.requests++
	if problem != "" {
		h.problems = append(h.problems, problem)
	}
	policy := h.policy
	h.mu.Unlock()
	if problem != "" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	d := hookDelivery{path: r.URL.Path, event: env.Events[0], body: body, header: r.Header.Clone()}
	record, status := true, http.StatusOK
	if policy != nil {
		record, status = policy(w, r, d)
	}
	if record {
		h.mu.Lock()
		h.accepted = append(h.accepted, d)
		h.mu.Unlock()
	}
	if status != 0 {
		w.WriteHeader(status)
	}
}

// got returns the accepted deliveries (to path, or all with ""), in order.
func (h *hookReceiver) got(path string) []hookDelivery {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []hookDelivery
	for _, d := range h.accepted {
		if path == "" || d.path == path {
			out = append(out, d)
		}
	}
	return out
}

func (h *hookReceiver) counts() (requests, accepted int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.requests, len(h.accepted)
}

// checkProblems fails the test for every request that broke the protocol.
func (h *hookReceiver) checkProblems() {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, p := range h.problems {
		if i == 20 {
			h.t.Errorf("… %d more bad requests", len(h.problems)-i)
			break
		}
		h.t.Errorf("bad webhook request: %s", p)
	}
}

// waitFor polls cond until it holds, for at most limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitEvent waits until the receiver has accepted an event on path that
// match holds for, and returns the first.
func (h *hookReceiver) waitEvent(t *testing.T, path, what string, match func(db.Event) bool) hookDelivery {
	t.Helper()
	var found hookDelivery
	waitFor(t, 60*time.Second, what, func() bool {
		for _, d := range h.got(path) {
			if match(d.event) {
				found = d
				return true
			}
		}
		return false
	})
	return found
}

// webhookCLI runs a berth command in-process, with the database URL as a
// flag after the positional arguments.
func webhookCLI(t *testing.T, dbURL string, args ...string) cliResult {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(t.Context(), append(args, "--database-url", dbURL), envOf(nil), &out, &errOut)
	return cliResult{out.String(), errOut.String(), err}
}

// webhookRow is one line of `berth webhook list`, by column name.
type webhookRow map[string]string

// webhookList runs `berth webhook list` and splits its table by the
// header's columns (values may contain spaces: "all, pull").
func webhookList(t *testing.T, dbURL string) map[string]webhookRow {
	t.Helper()
	out := webhookCLI(t, dbURL, "webhook", "list").ok(t).stdout
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	cols := []string{"NAME", "URL", "REPOS", "ACTIONS", "SECRET", "HEADERS", "TIMEOUT", "PENDING", "OLDEST PENDING", "DELIVERED", "DEAD"}
	starts := make([]int, len(cols))
	at := 0
	for i, c := range cols {
		j := strings.Index(lines[0][at:], c)
		if j < 0 {
			t.Fatalf("webhook list: no column %s in %q", c, lines[0])
		}
		starts[i] = at + j
		at += j + len(c)
	}
	rows := map[string]webhookRow{}
	for _, line := range lines[1:] {
		row := webhookRow{}
		for i, c := range cols {
			end := len(line)
			if i+1 < len(cols) {
				end = min(starts[i+1], len(line))
			}
			row[c] = strings.TrimSpace(line[min(starts[i], len(line)):end])
		}
		rows[row["NAME"]] = row
	}
	return rows
}

// TestWebhookDeliveryTorture makes 10,000 changes through two replicas
// while the endpoint fails, hangs, goes away and comes back, and one
// replica is killed with a delivery in flight; then checks that every
// committed change reached the endpoint, each repository's events in seq
// order without gaps, with stable ids, every request signed.
func TestWebhookDeliveryTorture(t *testing.T) {
	t.Parallel()
	start := time.Now()
	dbURL := dbtest.NewURL(t)
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	const secret = "torture secret"
	rc := newReceiver(t, secret)
	webhookCLI(t, dbURL, "webhook", "add", "torture", rc.url("/hook"), "--secret", secret, "--timeout", "2s").ok(t)
	storage := storageFlags(t)
	flags := []string{"--gc-disabled", "--webhook-backoff", "20ms", "--webhook-lease", "5s",
		"--webhook-poll", "100ms", "--webhook-max-attempts", "1000"}
	a := startReplica(t, dbURL, storage, flags...)
	b := startReplica(t, dbURL, storage, flags...)

	w := &tortureWorld{t: t, replicas: []*replica{a, b},
		client: &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	t.Cleanup(w.client.CloseIdleConnections)
	w.setup()

	// Which replica is which, in the claims: each wrote events of its own
	// requests, with its instance id as the source.
	instance := map[string]string{} // addr → instance id
	rows, err := pool.Query(t.Context(), `SELECT DISTINCT body->'request'->>'host', body->'source'->>'instanceID' FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var host, id string
		if err := rows.Scan(&host, &id); err != nil {
			t.Fatal(err)
		}
		instance[host] = id
	}
	if rows.Err() != nil || instance[a.addr] == "" || instance[b.addr] == "" || instance[a.addr] == instance[b.addr] {
		t.Fatalf("instance ids of the replicas: %v (%v)", instance, rows.Err())
	}

	// The endpoint's behaviour, by phase.
	const (
		phaseClean = iota
		phaseFlaky // 500s, hangs past the timeout, Retry-After
		phaseHold  // every request waits for the kill
	)
	var phase atomic.Int32
	var injected500, injectedNack, injectedHang, injectedRetryAfter, injectedHeld atomic.Int64
	type heldRequest struct {
		d   hookDelivery
		ctx context.Context // ends when the sender gives up or dies
		at  time.Time       // when it arrived
	}
	held := make(chan heldRequest, 10000)
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	rc.setPolicy(func(w http.ResponseWriter, r *http.Request, d hookDelivery) (bool, int) {
		switch phase.Load() {
		case phaseFlaky:
			switch n := rand.IntN(1000); {
			case n < 120:
				injected500.Add(1)
				return false, http.StatusInternalServerError
			case n < 150:
				// Processed, but the answer says otherwise: it comes again.
				injectedNack.Add(1)
				return true, http.StatusBadGateway
			case n < 160:
				// Answer only once the sender gave up (its --timeout).
				injectedHang.Add(1)
				select {
				case <-r.Context().Done():
				case <-time.After(30 * time.Second):
				}
				return false, http.StatusServiceUnavailable
			case n < 163:
				injectedRetryAfter.Add(1)
				w.Header().Set("Retry-After", "1")
				return false, http.StatusServiceUnavailable
			}
		case phaseHold:
			injectedHeld.Add(1)
			select {
			case held <- heldRequest{d, r.Context(), time.Now()}:
			default:
			}
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return false, http.StatusServiceUnavailable
		}
		return true, http.StatusOK
	})

	// The writers.
	var writers sync.WaitGroup
	for i := range tortureWriters {
		wr := w.newWriter(i)
		writers.Add(1)
		go func() {
			defer writers.Done()
			for w.next.Add(1) <= tortureChanges {
				wr.step()
				w.done.Add(1)
			}
		}()
	}
	writersDone := make(chan struct{})
	go func() { writers.Wait(); close(writersDone) }()
	progress := func() string {
		req, acc := rc.counts()
		return fmt.Sprintf("%d changes made, %d requests received, %d accepted", w.done.Load(), req, acc)
	}

	// Phase 1: a clean start. Phase 2: a flaky endpoint.
	waitFor(t, 2*time.Minute, "the first changes", func() bool { return w.done.Load() >= 1000 })
	phase.Store(phaseFlaky)
	t.Logf("%s: the endpoint turns flaky (%s)", time.Since(start).Round(time.Millisecond), progress())
	flakyFrom, _ := rc.counts()
	waitFor(t, 2*time.Minute, "changes and requests in the flaky phase", func() bool {
		req, _ := rc.counts()
		return w.done.Load() >= tortureChanges/2 && req-flakyFrom >= 1000
	})

	// Phase 3: every request is held until replica b, with a delivery in
	// flight, is killed.
	phase.Store(phaseHold)
	t.Logf("%s: holding requests to kill replica b (%s)", time.Since(start).Round(time.Millisecond), progress())
	var victim hookDelivery
	var before deliveryRow
	waitFor(t, time.Minute, "replica b to send a request", func() bool {
		select {
		case h := <-held:
			// Only a request well inside the sender's 2 s --timeout: an
			// older one could time out, and b record that, between this
			// check and the kill.
			if time.Since(h.at) > 500*time.Millisecond {
				return false
			}
			row := w.deliveryRow(pool, h.d.event.ID)
			if h.ctx.Err() != nil || row.state != "pending" || row.claimedBy != instance[b.addr] || time.Since(h.at) > time.Second {
				return false // not b's, or no longer in flight
			}
			w.bDead.Store(true) // the writers leave b
			if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			victim, before = h.d, row
			return true
		case <-time.After(100 * time.Millisecond):
			return false
		}
	})
	<-b.exited
	// b died before it knew how the attempt ended: the claim is as it was.
	if after := w.deliveryRow(pool, victim.event.ID); after != before {
		t.Fatalf("replica b recorded the outcome of the held delivery before it was killed: %+v, then %+v", before, after)
	}
	killedAt := time.Since(start)
	t.Logf("%s: killed replica b while it was sending event %s (%s seq %d, attempt %d) (%s)", killedAt.Round(time.Millisecond),
		victim.event.ID, victim.event.Target.Repository, victim.event.Seq, before.attempts, progress())
	phase.Store(phaseClean)
	releaseOnce.Do(func() { close(release) })

	// Phase 4: replica a takes the delivery over once b's claim expires;
	// then the endpoint goes away for a while and comes back on its port.
	waitFor(t, 3*time.Minute, "replica a to take over the delivery in flight on b", func() bool {
		for _, d := range rc.got("/hook") {
			if d.event.ID == victim.event.ID {
				return true
			}
		}
		return false
	})
	// The receiver records a delivery before it answers, so a's worker may
	// not have written the outcome yet: wait for the row to say so.
	var row deliveryRow
	waitFor(t, time.Minute, "replica a to record the delivery it made", func() bool {
		row = w.deliveryRow(pool, victim.event.ID)
		return row.state != "pending"
	})
	if row.claimedBy != instance[a.addr] || row.state != "delivered" {
		t.Fatalf("the delivery held when b was killed: %+v, want delivered by a", row)
	}
	t.Logf("%s: replica a delivered it, %s after the kill (%s)", time.Since(start).Round(time.Millisecond),
		(time.Since(start) - killedAt).Round(time.Millisecond), progress())
	rc.stop()
	t.Logf("%s: endpoint down (%s)", time.Since(start).Round(time.Millisecond), progress())
	time.Sleep(1500 * time.Millisecond) // the outage: how long, not an assertion
	rc.start()
	t.Logf("%s: endpoint up again on %s (%s)", time.Since(start).Round(time.Millisecond), rc.url(""), progress())

	select {
	case <-writersDone:
	case <-time.After(3 * time.Minute):
		t.Fatalf("the writers did not finish: %s", progress())
	}
	t.Logf("%s: writers done (%s)", time.Since(start).Round(time.Millisecond), progress())

	// Everything arrives: every repository's stream, up to its last seq.
	lastSeq := map[string]int64{}
	waitFor(t, 3*time.Minute, "every event to be delivered", func() bool {
		var pending int64
		if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'`).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		return pending == 0
	})
	t.Logf("%s: every event delivered (%s)", time.Since(start).Round(time.Millisecond), progress())
	rows, err = pool.Query(t.Context(), `SELECT repository, last_seq FROM event_streams`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var repo string
		var last int64
		if err := rows.Scan(&repo, &last); err != nil {
			t.Fatal(err)
		}
		lastSeq[repo] = last
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}

	rc.checkProblems()
	w.check(pool, rc.got("/hook"), lastSeq)
	pages := replayEvents(t, a.url(), rc.got("/hook"), lastSeq)
	req, acc := rc.counts()
	t.Logf("figures: %d changes attempted, %d committed with a 2xx, %d without an answer (%d of them committed); "+
		"%d events in %d repositories; %d requests to the endpoint, %d accepted (%d re-deliveries); "+
		"injected: %d 500s, %d 502s after processing, %d hangs past the timeout, %d Retry-After, %d held for the kill, a 1.5s outage; "+
		"replayed from the events API in %d pages; total %s",
		w.attempted(), w.count(opOK), w.count(opUncertain), w.committedUncertain, w.events, len(lastSeq), req, acc, w.redeliveries,
		injected500.Load(), injectedNack.Load(), injectedHang.Load(), injectedRetryAfter.Load(), injectedHeld.Load(),
		pages, time.Since(start).Round(time.Millisecond))
	if w.redeliveries == 0 {
		t.Error("no event was delivered twice: the test did not exercise re-deliveries")
	}
}

const (
	tortureRepos   = 20
	tortureWriters = 32
	tortureChanges = 10000
)

// tortureWorld is the state of the torture test's writers.
type tortureWorld struct {
	t        *testing.T
	client   *http.Client
	replicas []*replica // a, b
	bDead    atomic.Bool
	next     atomic.Int64 // changes started
	done     atomic.Int64 // changes finished

	repos  []string
	blobs  [][2]blobRef // per repository: config and layer
	mu     sync.Mutex
	ops    []tortureOp
	errors int

	// Filled by check, for the figures.
	events, redeliveries, committedUncertain int
}

type blobRef struct {
	digest string
	size   int
}

// tortureOp is one request that changes something, and the event it must
// cause.
type tortureOp struct {
	reqID   string
	repo    string
	key     string // eventKey of the event it causes
	outcome int
	status  int
}

// Outcomes of a change.
const (
	opOK        = iota // 2xx: committed
	opUncertain        // no answer, or a 5xx: committed or not
	opFailed           // an unexpected 4xx: not committed
)

// eventKey is what identifies a change in its event.
func eventKey(ev db.Event) string {
	extra := ev.PreviousDigest
	switch ev.Action {
	case db.EventMount:
		extra = ev.Target.FromRepository
	case db.EventDelete:
		extra = strings.Join(ev.Target.Tags, ",")
	}
	return expectKey(ev.Target.Repository, ev.Action, ev.Target.Digest, ev.Target.Tag, extra)
}

func expectKey(repo, action, dgst, tag, extra string) string {
	return strings.Join([]string{repo, action, dgst, tag, extra}, " ")
}

// do sends one request; status 0 when no answer came.
func (w *tortureWorld) do(rng *rand.Rand, method, path string, body []byte, reqID string, header ...string) int {
	if w.bDead.Load() {
		return w.doOn(w.replicas[0], method, path, body, reqID, header...)
	}
	return w.doOn(w.replicas[rng.IntN(len(w.replicas))], method, path, body, reqID, header...)
}

func (w *tortureWorld) doOn(r *replica, method, path string, body []byte, reqID string, header ...string) int {
	req, err := http.NewRequest(method, r.url()+path, bytes.NewReader(body))
	if err != nil {
		w.t.Error(err)
		return 0
	}
	req.Header.Set("X-Request-Id", reqID)
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// record notes the outcome of a change and returns it.
func (w *tortureWorld) record(reqID, repo, key string, status int, want ...int) int {
	outcome := opOK
	switch {
	case slices.Contains(want, status):
	case status == 0 || status >= 500:
		outcome = opUncertain
	default:
		outcome = opFailed
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ops = append(w.ops, tortureOp{reqID: reqID, repo: repo, key: key, outcome: outcome, status: status})
	if outcome == opFailed {
		if w.errors++; w.errors <= 10 {
			w.t.Errorf("change %s in %s (%s): status %d, want %v", reqID, repo, key, status, want)
		}
	}
	return outcome
}

func (w *tortureWorld) attempted() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ops)
}

func (w *tortureWorld) count(outcome int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, op := range w.ops {
		if op.outcome == outcome {
			n++
		}
	}
	return n
}

// setup pushes a config and a layer blob to every repository.
func (w *tortureWorld) setup() {
	w.t.Helper()
	for i := range tortureRepos {
		repo := fmt.Sprintf("torture/r%02d", i)
		w.repos = append(w.repos, repo)
		var refs [2]blobRef
		for j, content := range [][]byte{
			fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","repository":%q}`, repo),
			fmt.Appendf(nil, "the layer of %s", repo),
		} {
			d := digest.FromBytes(content).String()
			reqID := fmt.Sprintf("setup-%d-%d", i, j)
			// Through both replicas: the test learns their instance ids
			// from the events.
			st := w.doOn(w.replicas[i%2], "POST", "/v2/"+repo+"/blobs/uploads/?digest="+d, content, reqID)
			if w.record(reqID, repo, expectKey(repo, db.EventPush, d, "", ""), st, http.StatusCreated) != opOK {
				w.t.Fatalf("setup push of a blob to %s: %d", repo, st)
			}
			refs[j] = blobRef{d, len(content)}
		}
		w.blobs = append(w.blobs, refs)
	}
	w.next.Store(int64(w.attempted()))
	w.done.Store(int64(w.attempted()))
}

// tortureWriter makes changes in every repository, each to tags and
// manifests of its own, so that it knows what each change must cause.
type tortureWriter struct {
	w     *tortureWorld
	id, n int
	rng   *rand.Rand
	repos []*writerRepo
}

type writerRepo struct {
	idx     int
	name    string
	slots   []tagSlot
	live    []string          // the writer's manifests not deleted, nor touched by an uncertain change
	content map[string][]byte // manifest by digest
	gen     int
}

// tagSlot is a tag of the writer: its name and the digest it points at
// ("" when the tag does not exist).
type tagSlot struct{ name, digest string }

func (w *tortureWorld) newWriter(id int) *tortureWriter {
	wr := &tortureWriter{w: w, id: id, rng: rand.New(rand.NewPCG(uint64(id), 42))}
	for i, name := range w.repos {
		rp := &writerRepo{idx: i, name: name, content: map[string][]byte{}}
		for k := range 3 {
			rp.slots = append(rp.slots, tagSlot{name: fmt.Sprintf("w%d-t%d", id, k)})
		}
		wr.repos = append(wr.repos, rp)
	}
	return wr
}

// abandon gives up a tag whose state an uncertain change left unknown, and
// the manifests it may point at: the writer never touches them again, so
// no later change of its own depends on them.
func (rp *writerRepo) abandon(slot *tagSlot, digests ...string) {
	rp.gen++
	slot.name, slot.digest = fmt.Sprintf("%s-g%d", slot.name, rp.gen), ""
	rp.live = slices.DeleteFunc(rp.live, func(d string) bool { return slices.Contains(digests, d) })
}

func (wr *tortureWriter) reqID() string {
	wr.n++
	return fmt.Sprintf("w%d-%d", wr.id, wr.n)
}

func (wr *tortureWriter) step() {
	rp := wr.repos[wr.rng.IntN(len(wr.repos))]
	slot := &rp.slots[wr.rng.IntN(len(rp.slots))]
	switch p := wr.rng.IntN(100); {
	case p < 45 || len(rp.live) == 0:
		wr.push(rp, slot)
	case p < 63:
		wr.move(rp, slot, false)
	case p < 73:
		wr.move(rp, slot, true)
	case p < 85:
		wr.untag(rp, slot)
	case p < 93:
		wr.delete(rp)
	default:
		wr.mount(rp)
	}
}

// push pushes a new manifest (a distinct annotation) by tag.
func (wr *tortureWriter) push(rp *writerRepo, slot *tagSlot) {
	id := wr.reqID()
	blobs := wr.w.blobs[rp.idx]
	m := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}],`+
		`"annotations":{"org.example.change":%q}}`, ociManifest, blobs[0].digest, blobs[0].size, blobs[1].digest, blobs[1].size, id)
	d := digest.FromBytes(m).String()
	st := wr.w.do(wr.rng, "PUT", "/v2/"+rp.name+"/manifests/"+slot.name, m, id, "Content-Type: "+ociManifest)
	switch wr.w.record(id, rp.name, expectKey(rp.name, db.EventPush, d, slot.name, slot.digest), st, http.StatusCreated) {
	case opOK:
		slot.digest = d
		rp.live = append(rp.live, d)
		rp.content[d] = m
	case opUncertain:
		rp.abandon(slot, slot.digest)
	}
}

// move points a tag at another of the writer's manifests: by pushing the
// manifest again under the tag (a tag event), or with the tag API (a
// restore event).
func (wr *tortureWriter) move(rp *writerRepo, slot *tagSlot, restore bool) {
	var cands []string
	for _, d := range rp.live {
		if d != slot.digest {
			cands = append(cands, d)
		}
	}
	if len(cands) == 0 {
		wr.push(rp, slot)
		return
	}
	y := cands[wr.rng.IntN(len(cands))]
	id := wr.reqID()
	var outcome int
	if restore {
		st := wr.w.do(wr.rng, "PUT", "/v2/"+rp.name+"/tags/"+slot.name, fmt.Appendf(nil, `{"digest":%q}`, y), id, "Content-Type: application/json")
		outcome = wr.w.record(id, rp.name, expectKey(rp.name, db.EventRestore, y, slot.name, slot.digest), st, http.StatusOK, http.StatusCreated)
	} else {
		st := wr.w.do(wr.rng, "PUT", "/v2/"+rp.name+"/manifests/"+slot.name, rp.content[y], id, "Content-Type: "+ociManifest)
		outcome = wr.w.record(id, rp.name, expectKey(rp.name, db.EventTag, y, slot.name, slot.digest), st, http.StatusCreated)
	}
	switch outcome {
	case opOK:
		slot.digest = y
	case opUncertain:
		rp.abandon(slot, slot.digest, y)
	}
}

// untag deletes a tag by DELETE /v2/<name>/manifests/<tag>.
func (wr *tortureWriter) untag(rp *writerRepo, slot *tagSlot) {
	if slot.digest == "" {
		wr.push(rp, slot)
		return
	}
	id := wr.reqID()
	st := wr.w.do(wr.rng, "DELETE", "/v2/"+rp.name+"/manifests/"+slot.name, nil, id)
	switch wr.w.record(id, rp.name, expectKey(rp.name, db.EventUntag, slot.digest, slot.name, ""), st, http.StatusAccepted) {
	case opOK:
		slot.digest = ""
	case opUncertain:
		rp.abandon(slot, slot.digest)
	}
}

// delete deletes one of the writer's manifests by digest, with its tags.
func (wr *tortureWriter) delete(rp *writerRepo) {
	y := rp.live[wr.rng.IntN(len(rp.live))]
	var tags []string
	for _, s := range rp.slots {
		if s.digest == y {
			tags = append(tags, s.name)
		}
	}
	slices.Sort(tags)
	id := wr.reqID()
	st := wr.w.do(wr.rng, "DELETE", "/v2/"+rp.name+"/manifests/"+y, nil, id)
	outcome := wr.w.record(id, rp.name, expectKey(rp.name, db.EventDelete, y, "", strings.Join(tags, ",")), st, http.StatusAccepted)
	if outcome == opFailed {
		return
	}
	rp.live = slices.DeleteFunc(rp.live, func(d string) bool { return d == y })
	for i := range rp.slots {
		if rp.slots[i].digest == y {
			if outcome == opOK {
				rp.slots[i].digest = ""
			} else {
				rp.abandon(&rp.slots[i])
			}
		}
	}
}

// mount pushes a new blob and mounts it into another repository: two
// changes.
func (wr *tortureWriter) mount(rp *writerRepo) {
	wr.w.next.Add(1)
	wr.w.done.Add(1)
	id := wr.reqID()
	content := []byte("mounted from " + rp.name + " by " + id)
	d := digest.FromBytes(content).String()
	st := wr.w.do(wr.rng, "POST", "/v2/"+rp.name+"/blobs/uploads/?digest="+d, content, id)
	if wr.w.record(id, rp.name, expectKey(rp.name, db.EventPush, d, "", ""), st, http.StatusCreated) != opOK {
		return
	}
	to := wr.w.repos[(rp.idx+1+wr.rng.IntN(tortureRepos-1))%tortureRepos]
	id = wr.reqID()
	st = wr.w.do(wr.rng, "POST", "/v2/"+to+"/blobs/uploads/?mount="+d+"&from="+rp.name, nil, id)
	wr.w.record(id, to, expectKey(to, db.EventMount, d, "", rp.name), st, http.StatusCreated)
}

// deliveryRow is what the database says of the delivery of an event.
type deliveryRow struct {
	state, claimedBy string
	attempts         int
	lastError        string
}

func (w *tortureWorld) deliveryRow(pool *pgxpool.Pool, eventID string) deliveryRow {
	w.t.Helper()
	var r deliveryRow
	err := pool.QueryRow(context.Background(), `
SELECT d.state, coalesce(d.claimed_by, ''), d.attempts, coalesce(d.last_error, '')
FROM webhook_deliveries d JOIN events e ON e.id = d.event_id WHERE e.uuid = $1`, eventID).
		Scan(&r.state, &r.claimedBy, &r.attempts, &r.lastError)
	if err != nil {
		w.t.Fatalf("delivery of event %s: %v", eventID, err)
	}
	return r
}

// check compares what the endpoint accepted with the changes and with the
// events the database holds.
func (w *tortureWorld) check(pool *pgxpool.Pool, got []hookDelivery, lastSeq map[string]int64) {
	t := w.t
	t.Helper()
	errs := 0
	fail := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 20 {
			t.Errorf(format, args...)
		}
	}

	// Per repository, in the order of acceptance: ignoring re-deliveries
	// of a seq already received, exactly 1, 2, 3, …, the last seq.
	type repoSeq struct {
		repo string
		seq  int64
	}
	first := map[repoSeq]hookDelivery{}
	next := map[string]int64{}
	ids := map[string]repoSeq{}
	for _, d := range got {
		ev := d.event
		k := repoSeq{ev.Target.Repository, ev.Seq}
		if prev, ok := first[k]; ok {
			w.redeliveries++
			if ev.ID != prev.event.ID || !ev.Timestamp.Equal(prev.event.Timestamp) || !bytes.Equal(d.body, prev.body) {
				fail("%s seq %d delivered again as another event:\n%s\n%s", k.repo, k.seq, prev.body, d.body)
			}
			continue
		}
		if ev.Seq != next[k.repo]+1 {
			fail("%s: seq %d delivered after seq %d", k.repo, ev.Seq, next[k.repo])
		}
		next[k.repo] = max(next[k.repo], ev.Seq)
		first[k] = d
		if other, dup := ids[ev.ID]; dup {
			fail("event id %s names %v and %v", ev.ID, other, k)
		}
		ids[ev.ID] = k
	}
	w.events = len(first)
	for repo, last := range lastSeq {
		if next[repo] != last {
			fail("%s: delivered up to seq %d, its stream is at %d", repo, next[repo], last)
		}
	}
	if len(next) != len(lastSeq) {
		fail("events delivered in %d repositories, streams of %d", len(next), len(lastSeq))
	}

	// The database's events are those delivered, with the same ids.
	rows, err := pool.Query(context.Background(), `SELECT repository, seq, uuid FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var k repoSeq
		var uuid string
		if err := rows.Scan(&k.repo, &k.seq, &uuid); err != nil {
			t.Fatal(err)
		}
		n++
		if d, ok := first[k]; !ok || d.event.ID != uuid {
			fail("event %s (%s seq %d) of the database: not delivered as such", uuid, k.repo, k.seq)
		}
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if n != len(first) {
		fail("%d events in the database, %d delivered", n, len(first))
	}

	// Each committed change has its event, of the right shape; an
	// uncertain change at most one; nothing else has any.
	byReq := map[string][]db.Event{}
	for _, d := range first {
		byReq[d.event.Request.ID] = append(byReq[d.event.Request.ID], d.event)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	known := map[string]bool{}
	for _, op := range w.ops {
		known[op.reqID] = true
		evs := byReq[op.reqID]
		switch {
		case op.outcome == opOK && len(evs) != 1, op.outcome != opOK && len(evs) > 1:
			fail("change %s (%s, status %d) caused %d events", op.reqID, op.key, op.status, len(evs))
		case op.outcome == opFailed && len(evs) != 0:
			fail("change %s (%s) failed with %d and caused an event", op.reqID, op.key, op.status)
		case len(evs) == 1 && eventKey(evs[0]) != op.key:
			fail("change %s caused the event %q, want %q", op.reqID, eventKey(evs[0]), op.key)
		}
		if op.outcome == opUncertain && len(evs) == 1 {
			w.committedUncertain++
		}
	}
	for req, evs := range byReq {
		if !known[req] {
			fail("%d events of request %q, which the test never made", len(evs), req)
		}
	}
}

// replayEvents reads every repository's events from the events API, page
// by page along the Link headers, and compares them with those the
// endpoint received. It returns how many pages it read.
func replayEvents(t *testing.T, base string, got []hookDelivery, lastSeq map[string]int64) int {
	t.Helper()
	delivered := map[string][]byte{} // "repo seq" → the event's JSON
	for _, d := range got {
		b, _ := json.Marshal(d.event)
		delivered[fmt.Sprint(d.event.Target.Repository, " ", d.event.Seq)] = b
	}
	pages := 0
	for repo, last := range lastSeq {
		var seq int64
		next := "/berth/v1/events?repository=" + repo + "&n=200"
		for next != "" {
			resp := mustDo(t, "GET", base+next, nil, http.StatusOK)
			pages++
			var page struct{ Events []db.Event }
			if err := json.Unmarshal(resp.body, &page); err != nil {
				t.Fatalf("events API: %v", err)
			}
			for _, ev := range page.Events {
				seq++
				b, _ := json.Marshal(ev)
				if ev.Seq != seq || !bytes.Equal(b, delivered[fmt.Sprint(repo, " ", ev.Seq)]) {
					t.Fatalf("events API, %s seq %d: %s, delivered %s", repo, seq, b, delivered[fmt.Sprint(repo, " ", ev.Seq)])
				}
			}
			next = ""
			if link := resp.Header.Get("Link"); link != "" {
				target, _, _ := strings.Cut(strings.TrimPrefix(link, "<"), ">")
				next = target
			}
		}
		if seq != last {
			t.Errorf("events API: %s has %d events, its stream is at %d", repo, seq, last)
		}
	}
	return pages
}

// TestWebhookEventsParseWithReferenceTypes decodes delivered bodies with
// the reference registry's own types (distribution/v3 notifications):
// receivers written for it read Berth's events — its actions (push, mount,
// delete, a blob push) and Berth's tag actions (tag, untag, restore).
func TestWebhookEventsParseWithReferenceTypes(t *testing.T) {
	t.Parallel()
	start := time.Now()
	dbURL := dbtest.NewURL(t)
	rc := newReceiver(t, "reference")
	webhookCLI(t, dbURL, "webhook", "add", "ref", rc.url("/ref"), "--secret", "reference").ok(t)
	m := startMain(t, dbURL, "--gc-disabled", "--webhook-poll", "50ms")
	base := "http://" + m.Addr().String()

	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := digest.FromBytes(config)
	mustDo(t, "POST", base+"/v2/ref/src/blobs/uploads/?digest="+cd.String(), config, http.StatusCreated, "X-Request-Id: ref-blob")
	manifest := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`, ociManifest, cd, len(config))
	md := digest.FromBytes(manifest)
	mustDo(t, "PUT", base+"/v2/ref/src/manifests/v1", manifest, http.StatusCreated,
		"Content-Type: "+ociManifest, "X-Request-Id: ref-push", "User-Agent: reference-test/1.0")
	mustDo(t, "POST", base+"/v2/ref/dst/blobs/uploads/?mount="+cd.String()+"&from=ref/src", nil, http.StatusCreated,
		"X-Request-Id: ref-mount", "User-Agent: reference-test/1.0")
	// Berth's own tag actions: a second tag on the manifest (tag), its
	// removal (untag), and its restore through the tags API (restore).
	mustDo(t, "PUT", base+"/v2/ref/src/manifests/v2", manifest, http.StatusCreated,
		"Content-Type: "+ociManifest, "X-Request-Id: ref-tag", "User-Agent: reference-test/1.0")
	mustDo(t, "DELETE", base+"/v2/ref/src/manifests/v2", nil, http.StatusAccepted,
		"X-Request-Id: ref-untag", "User-Agent: reference-test/1.0")
	mustDo(t, "PUT", base+"/v2/ref/src/tags/v2", fmt.Appendf(nil, `{"digest":%q}`, md), http.StatusCreated,
		"Content-Type: application/json", "X-Request-Id: ref-restore", "User-Agent: reference-test/1.0")
	mustDo(t, "DELETE", base+"/v2/ref/src/manifests/"+md.String(), nil, http.StatusAccepted,
		"X-Request-Id: ref-delete", "User-Agent: reference-test/1.0")

	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	decode := func(d hookDelivery) notifications.Event {
		t.Helper()
		var env struct{ Events []notifications.Event }
		if err := json.Unmarshal(d.body, &env); err != nil || len(env.Events) != 1 {
			t.Fatalf("the reference types do not parse %s: %v", d.body, err)
		}
		return env.Events[0]
	}
	byRequest := func(id string) hookDelivery {
		return rc.waitEvent(t, "/ref", "the event of request "+id, func(ev db.Event) bool { return ev.Request.ID == id })
	}
	for _, tc := range []struct {
		request, action, repo, mediaType, tag, from, url string
		dgst                                             digest.Digest
		size                                             int
		method                                           string
	}{
		{"ref-push", "push", "ref/src", ociManifest, "v1", "", base + "/v2/ref/src/manifests/" + md.String(), md, len(manifest), "PUT"},
		{"ref-tag", "tag", "ref/src", ociManifest, "v2", "", base + "/v2/ref/src/manifests/" + md.String(), md, len(manifest), "PUT"},
		{"ref-untag", "untag", "ref/src", ociManifest, "v2", "", base + "/v2/ref/src/manifests/" + md.String(), md, len(manifest), "DELETE"},
		{"ref-restore", "restore", "ref/src", ociManifest, "v2", "", base + "/v2/ref/src/manifests/" + md.String(), md, len(manifest), "PUT"},
		{"ref-mount", "mount", "ref/dst", "application/octet-stream", "", "ref/src", base + "/v2/ref/dst/blobs/" + cd.String(), cd, len(config), "POST"},
		{"ref-delete", "delete", "ref/src", ociManifest, "", "", base + "/v2/ref/src/manifests/" + md.String(), md, len(manifest), "DELETE"},
	} {
		d := byRequest(tc.request)
		ev := decode(d)
		if len(ev.ID) != 36 || ev.ID != d.header.Get(events.EventIDHeader) {
			t.Errorf("%s: id %q, header %q", tc.request, ev.ID, d.header.Get(events.EventIDHeader))
		}
		if ev.Timestamp.IsZero() || !ev.Timestamp.Equal(d.event.Timestamp) || time.Since(ev.Timestamp) > time.Hour || ev.Timestamp.After(time.Now()) {
			t.Errorf("%s: timestamp %v", tc.request, ev.Timestamp)
		}
		tg := ev.Target
		if ev.Action != tc.action || tg.MediaType != tc.mediaType || tg.Digest != tc.dgst || tg.Size != int64(tc.size) ||
			tg.Length != int64(tc.size) || tg.Repository != tc.repo || tg.URL != tc.url || tg.Tag != tc.tag || tg.FromRepository != tc.from {
			t.Errorf("%s: the reference types read\n%+v\nfrom %s", tc.request, ev, d.body)
		}
		rq := ev.Request
		if rq.ID != tc.request || !strings.HasPrefix(rq.Addr, "127.0.0.1:") || rq.Host != m.Addr().String() ||
			rq.Method != tc.method || rq.UserAgent != "reference-test/1.0" {
			t.Errorf("%s: request %+v", tc.request, rq)
		}
		if ev.Actor.Name != "anonymous@127.0.0.1" {
			t.Errorf("%s: actor %+v", tc.request, ev.Actor)
		}
		// As the reference registry reports it: the host name and the port
		// of the listen setting (here 0: the kernel picks).
		if ev.Source.Addr != net.JoinHostPort(hostname, "0") || len(ev.Source.InstanceID) != 16 {
			t.Errorf("%s: source %+v, want addr %s and an instance id", tc.request, ev.Source, net.JoinHostPort(hostname, "0"))
		}
		if tc.action == "delete" && !slices.Equal(sortedTags(d.event.Target.Tags), []string{"v1", "v2"}) {
			t.Errorf("delete: target.tags %q, want the tags it removed", d.event.Target.Tags)
		}
	}
	// The blob push parses too.
	ev := decode(byRequest("ref-blob"))
	if ev.Action != "push" || ev.Target.Digest != cd || ev.Target.Size != int64(len(config)) ||
		ev.Target.URL != base+"/v2/ref/src/blobs/"+cd.String() || ev.Request.Method != "POST" {
		t.Errorf("blob push: %+v", ev)
	}
	rc.checkProblems()
	t.Logf("7 events parsed with distribution/v3 notifications.Event in %s", time.Since(start).Round(time.Millisecond))
}

// TestWebhookCLI manages webhooks with berth webhook against a running
// registry: filters, dead letters, redrive, and what bad input says.
func TestWebhookCLI(t *testing.T) {
	t.Parallel()
	start := time.Now()
	dbURL := dbtest.NewURL(t)
	rc := newReceiver(t, "")
	var dlFixed atomic.Bool
	rc.setPolicy(func(w http.ResponseWriter, r *http.Request, d hookDelivery) (bool, int) {
		if r.URL.Path == "/dl" && !dlFixed.Load() {
			return false, http.StatusInternalServerError
		}
		return true, http.StatusOK
	})

	r := webhookCLI(t, dbURL, "webhook", "add", "dl", rc.url("/dl")).ok(t)
	if r.stdout != "added webhook dl: events committed from now on go to "+rc.url("/dl")+"\n" {
		t.Errorf("webhook add printed %q", r.stdout)
	}
	webhookCLI(t, dbURL, "webhook", "add", "team", rc.url("/team"), "--repos", "team/*", "--actions", "push",
		"--header", "X-Team: blue", "--header", "Authorization: Bearer hush", "--timeout", "2s").ok(t)

	// Bad input, each with an error that says what is wrong.
	for _, tc := range []struct {
		args    []string
		mention string
	}{
		{[]string{"add", "bad", "ftp://example.com/hook"}, `webhook URL "ftp://example.com/hook": give an absolute http:// or https:// URL`},
		{[]string{"add", "bad", "example.com/hook"}, "give an absolute http:// or https:// URL"},
		{[]string{"add", "bad", "http://example.com", "--actions", "push,explode"}, `action "explode": use push, pull, mount, delete, tag, untag, restore`},
		{[]string{"add", "bad", "http://example.com", "--header", "X-No-Colon"}, `header "X-No-Colon": write it as 'Name: value'`},
		{[]string{"add", "bad", "http://example.com", "--header", "Berth-Signature: forged"}, "header Berth-Signature: Berth sets it on every request"},
		{[]string{"add", "bad", "http://example.com", "--repos", "Team/*"}, `repository glob "Team/*"`},
		{[]string{"add", "bad", "http://example.com", "--timeout", "1h"}, "timeout: between 1ms and 5m"},
		{[]string{"add", "bad name", "http://example.com"}, `webhook name "bad name"`},
		{[]string{"add", "dl", "http://example.com"}, "webhook dl already exists"},
		{[]string{"add", "only-name"}, "usage"},
		{[]string{"delete", "ghost"}, "webhook ghost is not known"},
		{[]string{"redrive", "ghost"}, "webhook ghost is not known"},
		{[]string{"rename", "dl"}, "unknown command: webhook rename"},
	} {
		webhookCLI(t, dbURL, append([]string{"webhook"}, tc.args...)...).fails(t, tc.mention)
	}

	m := startMain(t, dbURL, "--gc-disabled", "--webhook-max-attempts", "2", "--webhook-backoff", "10ms", "--webhook-poll", "50ms")
	base := "http://" + m.Addr().String()
	blob := func(repo, content string) digest.Digest {
		d := digest.FromBytes([]byte(content))
		mustDo(t, "POST", base+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), []byte(content), http.StatusCreated)
		return d
	}
	blob("other/x", "not for the team")
	first := blob("team/a", "for the team")
	md := pushImage(t, base, "team/a") // a config blob push, then a manifest push by tag
	mustDo(t, "DELETE", base+"/v2/team/a/manifests/v1", nil, http.StatusAccepted)
	last := blob("team/a", "the team's last")
	const total = 6 // events of the six changes, all for dl

	// team: only pushes in team/*, its headers on every request.
	rc.waitEvent(t, "/team", "team to receive the last push", func(ev db.Event) bool { return ev.Target.Digest == last.String() })
	var teamGot []string
	for _, d := range rc.got("/team") {
		ev := d.event
		teamGot = append(teamGot, fmt.Sprintf("%s %s %d %s", ev.Target.Repository, ev.Action, ev.Seq, ev.Target.Tag))
		if d.header.Get("X-Team") != "blue" || d.header.Get("Authorization") != "Bearer hush" || d.header.Get("User-Agent") != "berth-webhooks" {
			t.Errorf("team: headers %v", d.header)
		}
	}
	if want := []string{"team/a push 1 ", "team/a push 2 ", "team/a push 3 v1", "team/a push 5 "}; !slices.Equal(teamGot, want) {
		t.Errorf("team received %q, want %q (no untag, nothing of other/x)", teamGot, want)
	}
	if first.String() != rc.got("/team")[0].event.Target.Digest {
		t.Errorf("team's first event is not the first push")
	}

	// dl: every delivery fails twice and is dead-lettered.
	var rows map[string]webhookRow
	waitFor(t, time.Minute, "dl's deliveries to be dead-lettered", func() bool {
		rows = webhookList(t, dbURL)
		return rows["dl"]["DEAD"] == fmt.Sprint(total) && rows["dl"]["PENDING"] == "0"
	})
	if got := rows["dl"]; got["URL"] != rc.url("/dl") || got["REPOS"] != "*" || got["ACTIONS"] != "all but pull" || got["SECRET"] != "no" ||
		got["HEADERS"] != "-" || got["TIMEOUT"] != "5s" || got["OLDEST PENDING"] != "-" || got["DELIVERED"] != "0" {
		t.Errorf("webhook list, dl: %v", got)
	}
	waitFor(t, time.Minute, "team's deliveries to be recorded", func() bool {
		rows = webhookList(t, dbURL)
		return rows["team"]["DELIVERED"] == "4"
	})
	if got := rows["team"]; got["REPOS"] != "team/*" || got["ACTIONS"] != "push" || got["SECRET"] != "no" ||
		got["HEADERS"] != "X-Team,Authorization" || got["TIMEOUT"] != "2s" || got["PENDING"] != "0" || got["DEAD"] != "0" {
		t.Errorf("webhook list, team: %v", got)
	}
	out := webhookCLI(t, dbURL, "webhook", "list").ok(t).stdout
	if strings.Contains(out, "blue") || strings.Contains(out, "hush") {
		t.Errorf("webhook list shows header values:\n%s", out)
	}
	if n := len(rc.got("/dl")); n != 0 {
		t.Fatalf("dl accepted %d events while it answered 500", n)
	}

	// Fixed, and redriven: every dead delivery arrives, each repository's
	// in seq order.
	dlFixed.Store(true)
	r = webhookCLI(t, dbURL, "webhook", "redrive", "dl").ok(t)
	if want := fmt.Sprintf("redrove %d dead-lettered deliveries of webhook dl: they go out again, each repository's oldest first\n", total); r.stdout != want {
		t.Errorf("redrive printed %q, want %q", r.stdout, want)
	}
	waitFor(t, time.Minute, "the redriven deliveries", func() bool {
		rows = webhookList(t, dbURL)
		return rows["dl"]["DELIVERED"] == fmt.Sprint(total)
	})
	if rows["dl"]["DEAD"] != "0" || rows["dl"]["PENDING"] != "0" {
		t.Errorf("after the redrive: %v", rows["dl"])
	}
	var dlGot []string
	for _, d := range rc.got("/dl") {
		ev := d.event
		dlGot = append(dlGot, fmt.Sprintf("%s %s %d %s", ev.Target.Repository, ev.Action, ev.Seq, ev.Target.Tag))
	}
	var teamA []string
	for _, s := range dlGot {
		if strings.HasPrefix(s, "team/a ") {
			teamA = append(teamA, s)
		}
	}
	if want := []string{"team/a push 1 ", "team/a push 2 ", "team/a push 3 v1", "team/a untag 4 v1", "team/a push 5 "}; !slices.Equal(teamA, want) ||
		!slices.Contains(dlGot, "other/x push 1 ") || len(dlGot) != total {
		t.Errorf("dl received %q", dlGot)
	}
	for _, d := range rc.got("/dl") {
		if d.event.Action == db.EventUntag && (d.event.Target.Digest != md.String() || d.event.Target.MediaType != ociManifest) {
			t.Errorf("untag event: %s, want the manifest %s", d.body, md)
		}
	}
	if r := webhookCLI(t, dbURL, "webhook", "redrive", "dl").ok(t); !strings.HasPrefix(r.stdout, "redrove 0 ") {
		t.Errorf("a second redrive printed %q", r.stdout)
	}

	// Delete: the webhook goes, with its deliveries.
	r = webhookCLI(t, dbURL, "webhook", "delete", "team").ok(t)
	if r.stdout != "deleted webhook team with its deliveries\n" {
		t.Errorf("delete printed %q", r.stdout)
	}
	if rows = webhookList(t, dbURL); rows["team"] != nil || rows["dl"] == nil {
		t.Errorf("after delete: %v", rows)
	}
	webhookCLI(t, dbURL, "webhook", "delete", "team").fails(t, "webhook team is not known")

	// The delivery settings are berth serve's.
	var help bytes.Buffer
	run(t.Context(), []string{"serve", "--help"}, envOf(nil), &help, &help)
	for _, flag := range []string{"webhook-workers", "webhook-max-attempts", "webhook-backoff", "webhook-lease", "webhook-poll",
		"events-retention", "pull-events-flush"} {
		env := "BERTH_" + strings.ReplaceAll(strings.ToUpper(flag), "-", "_")
		if !strings.Contains(help.String(), "\n  -"+flag+" value\n") || !strings.Contains(help.String(), "(env "+env+", default ") {
			t.Errorf("berth serve --help does not describe --%s (%s):\n%s", flag, env, help.String())
		}
	}
	rc.checkProblems()
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
}

// TestWebhookPullEvents: a webhook with --pulls receives pull events, a
// webhook without none.
func TestWebhookPullEvents(t *testing.T) {
	t.Parallel()
	start := time.Now()
	dbURL := dbtest.NewURL(t)
	rc := newReceiver(t, "")
	// Before the replica starts: it learns at its start that pulls are
	// wanted (later, within events.WantEvery).
	webhookCLI(t, dbURL, "webhook", "add", "pulls", rc.url("/pulls"), "--pulls").ok(t)
	webhookCLI(t, dbURL, "webhook", "add", "nopulls", rc.url("/nopulls")).ok(t)
	if rows := webhookList(t, dbURL); rows["pulls"]["ACTIONS"] != "all" || rows["nopulls"]["ACTIONS"] != "all but pull" {
		t.Errorf("webhook list: pulls %v, nopulls %v", rows["pulls"], rows["nopulls"])
	}
	m := startMain(t, dbURL, "--gc-disabled", "--webhook-poll", "50ms", "--pull-events-flush", "100ms")
	base := "http://" + m.Addr().String()
	md := pushImage(t, base, "pulled/app")
	got := mustDo(t, "GET", base+"/v2/pulled/app/manifests/v1", nil, http.StatusOK, "Accept: "+ociManifest, "X-Request-Id: the-pull")
	mustDo(t, "HEAD", base+"/v2/pulled/app/manifests/v1", nil, http.StatusOK, "Accept: "+ociManifest) // a HEAD is no pull

	pull := rc.waitEvent(t, "/pulls", "the pull event", func(ev db.Event) bool { return ev.Action == db.EventPull })
	ev := pull.event
	if ev.Target.Repository != "pulled/app" || ev.Target.Digest != md.String() || ev.Target.Tag != "v1" ||
		ev.Target.MediaType != ociManifest || ev.Target.Size != int64(len(got.body)) ||
		ev.Target.URL != base+"/v2/pulled/app/manifests/"+md.String() || ev.Request.Method != "GET" || ev.Request.ID != "the-pull" ||
		ev.Actor.Name != "anonymous@127.0.0.1" || ev.Seq != 3 {
		t.Errorf("pull event: %s", pull.body)
	}

	// A marker pushed after the pull was written: once nopulls has it, it
	// had every earlier event of the repository it wanted.
	marker := digest.FromBytes([]byte("after the pull"))
	mustDo(t, "POST", base+"/v2/pulled/app/blobs/uploads/?digest="+marker.String(), []byte("after the pull"), http.StatusCreated)
	rc.waitEvent(t, "/nopulls", "the marker", func(ev db.Event) bool { return ev.Target.Digest == marker.String() })
	var seqs []int64
	for _, d := range rc.got("/nopulls") {
		if d.event.Action == db.EventPull {
			t.Errorf("nopulls received a pull: %s", d.body)
		}
		seqs = append(seqs, d.event.Seq)
	}
	if !slices.Equal(seqs, []int64{1, 2, 4}) {
		t.Errorf("nopulls received seqs %v, want 1, 2 and 4 (3 is the pull)", seqs)
	}
	rc.waitEvent(t, "/pulls", "the marker", func(ev db.Event) bool { return ev.Target.Digest == marker.String() })
	var pulls int
	for _, d := range rc.got("/pulls") {
		if d.event.Action == db.EventPull {
			pulls++
		}
	}
	if pulls != 1 {
		t.Errorf("pulls received %d pull events, want 1 (the HEAD is none)", pulls)
	}
	rc.checkProblems()
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
}

// TestWebhookGCEvents: what the collector removes is an event too, by
// actor gc, with no request and a URL from --external-url.
func TestWebhookGCEvents(t *testing.T) {
	t.Parallel()
	start := time.Now()
	dbURL := dbtest.NewURL(t)
	rc := newReceiver(t, "")
	webhookCLI(t, dbURL, "webhook", "add", "gc", rc.url("/gc"), "--actions", "delete").ok(t)
	m := startMain(t, dbURL, "--webhook-poll", "50ms", "--gc-interval", "50ms", "--gc-review-delay", "0s",
		"--external-url", "https://registry.example")
	base := "http://" + m.Addr().String()
	content := []byte("nothing references me")
	d := digest.FromBytes(content)
	mustDo(t, "POST", base+"/v2/gc/lone/blobs/uploads/?digest="+d.String(), content, http.StatusCreated)
	got := rc.waitEvent(t, "/gc", "the collector's delete", func(ev db.Event) bool { return ev.Target.Digest == d.String() })
	ev := got.event
	if ev.Action != db.EventDelete || ev.Actor.Name != "gc" || ev.Request != (db.EventRequest{}) || ev.Seq != 2 ||
		ev.Target.Repository != "gc/lone" || ev.Target.MediaType != "application/octet-stream" || ev.Target.Size != int64(len(content)) ||
		ev.Target.URL != "https://registry.example/v2/gc/lone/blobs/"+d.String() || ev.Source.InstanceID == "" {
		t.Errorf("the collector's delete: %s", got.body)
	}
	var ref struct{ Events []notifications.Event }
	if err := json.Unmarshal(got.body, &ref); err != nil || ref.Events[0].Actor.Name != "gc" || ref.Events[0].Action != "delete" {
		t.Errorf("the reference types read %+v (%v)", ref, err)
	}
	rc.checkProblems()
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
}

// repoEvents reads every event of repo from the events API at base, page
// by page along the Link headers.
func repoEvents(t *testing.T, base, repo string) []db.Event {
	t.Helper()
	var all []db.Event
	next := "/berth/v1/events?repository=" + repo + "&n=100"
	for next != "" {
		resp := mustDo(t, "GET", base+next, nil, http.StatusOK)
		var page struct{ Events []db.Event }
		if err := json.Unmarshal(resp.body, &page); err != nil {
			t.Fatalf("events API: %v", err)
		}
		all = append(all, page.Events...)
		next = ""
		if link := resp.Header.Get("Link"); link != "" {
			next, _, _ = strings.Cut(strings.TrimPrefix(link, "<"), ">")
		}
	}
	return all
}

func sortedTags(tags []string) []string {
	tags = slices.Clone(tags)
	slices.Sort(tags)
	return tags
}
