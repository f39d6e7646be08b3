package db_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// Tests of the transactional outbox (db/events.go) and of the webhook
// delivery queue (db/webhooks.go).

const (
	evManifestType = "application/vnd.oci.image.manifest.v1+json"
	evIndexType    = "application/vnd.oci.image.index.v1+json"
	evBlobType     = "application/octet-stream"
	evFallbackBase = "https://fallback.example"
)

// evConfig describes the process in the events the tests write. BaseURL
// ends in a slash, which target URLs must not repeat.
var evConfig = db.EventsConfig{
	Source:  db.EventSource{Addr: "berth-1:5000", InstanceID: "instance-1"},
	BaseURL: evFallbackBase + "/",
}

// evOpen opens a handle on url that writes events as evConfig says.
func evOpen(t testing.TB, url string, opts db.Options) *db.DB {
	t.Helper()
	opts.Events = evConfig
	d, err := db.Open(context.Background(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// evDigest is a made-up digest: the database does not check digests.
func evDigest(n int) string { return fmt.Sprintf("sha256:%064x", n) }

// evPayload is the payload of manifest n; its length is the size events
// report.
func evPayload(n int) []byte { return []byte(fmt.Sprintf(`{"schemaVersion":2,"n":%d}`, n)) }

// evPush stores manifest n (digest evDigest(n), payload evPayload(n)) in
// repo with tags.
func evPush(ctx context.Context, d *db.DB, repo string, n int, actor db.Actor, tags ...string) error {
	_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: repo, Digest: evDigest(n), MediaType: evManifestType,
		Payload: evPayload(n), Tags: tags}, actor)
	return err
}

var nopBytes = func(context.Context) error { return nil }

// evAll reads every event of repo after after, a page of 3 at a time,
// checking that pages join up.
func evAll(t testing.TB, d *db.DB, repo string, after int64) []db.Event {
	t.Helper()
	var all []db.Event
	for {
		page, more, err := d.EventList(context.Background(), repo, after, 3)
		if err != nil {
			t.Fatalf("events of %s after %d: %v", repo, after, err)
		}
		if len(page) > 3 || (more && len(page) != 3) {
			t.Fatalf("events of %s after %d: a page of %d, more %v", repo, after, len(page), more)
		}
		all = append(all, page...)
		if !more {
			return all
		}
		after = page[len(page)-1].Seq
	}
}

func evSeqs(evs []db.Event) []int64 {
	seqs := make([]int64, len(evs))
	for i, ev := range evs {
		seqs[i] = ev.Seq
	}
	return seqs
}

func evRange(from, to int64) []int64 {
	var s []int64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// want is an expected event, in the words of the change that makes it.
type want struct {
	action, repo, digest string
	mediaType            string
	size                 int64
	tag, prev, from      string
	tags                 []string
	blob                 bool
	actor                db.Actor
}

func (w want) event(seq int64) db.Event {
	base := evFallbackBase
	var req db.EventRequest
	if r := w.actor.Request; r != nil {
		req = db.EventRequest{ID: w.actor.RequestID, Addr: r.Addr, Host: r.Host, Method: r.Method, UserAgent: r.UserAgent}
		if r.BaseURL != "" {
			base = strings.TrimSuffix(r.BaseURL, "/")
		}
	}
	kind, mt := "manifests", w.mediaType
	if w.blob {
		kind, mt = "blobs", evBlobType
	}
	return db.Event{
		Seq:    seq,
		Action: w.action,
		Target: db.EventTarget{MediaType: mt, Digest: w.digest, Size: w.size, Length: w.size, Repository: w.repo,
			FromRepository: w.from, URL: base + "/v2/" + w.repo + "/" + kind + "/" + w.digest, Tag: w.tag, Tags: w.tags},
		PreviousDigest: w.prev,
		Request:        req,
		Actor:          db.EventActor{Name: w.actor.Name},
		Source:         evConfig.Source,
	}
}

// Each change, driven through the db API, makes exactly the events that
// receivers rely on: action, seq, target, previousDigest, actor, request
// and source, and reading them again gives the same id and time.
func TestEventShapes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := evOpen(t, dbtest.NewURL(t), db.Options{})

	alice := db.Actor{Name: "alice", RequestID: "req-a", TokenID: "tok-a", Request: &db.RequestInfo{
		Addr: "192.0.2.7", Host: "registry.example", Method: "PUT", UserAgent: "docker/27.0", BaseURL: "https://registry.example/"}}
	// A request without a base URL: target URLs fall back to the config's.
	bob := db.Actor{Name: "bob", RequestID: "req-b", Request: &db.RequestInfo{
		Addr: "192.0.2.8", Host: "registry.internal", Method: "DELETE", UserAgent: "curl/8.5"}}
	// No request at all (a maintenance command): no request in the event.
	anon := db.Actor{Name: "anonymous@192.0.2.9", RequestID: "req-c"}

	b1, b2, b3 := evDigest(0xb1), evDigest(0xb2), evDigest(0xb3)
	m1, m2, m3, m4 := evDigest(1), evDigest(2), evDigest(3), evDigest(4)
	size := func(n int) int64 { return int64(len(evPayload(n))) }
	man := func(action, dgst string, n int, actor db.Actor) want {
		return want{action: action, repo: "app", digest: dgst, mediaType: evManifestType, size: size(n), actor: actor}
	}
	with := func(w want, f func(*want)) want { f(&w); return w }

	steps := []struct {
		name string
		do   func() error
		want []want
	}{
		{"upload start: no event", func() error {
			return d.UploadCreate(ctx, "src", "u1", "alice", []byte("state"), 0, alice)
		}, nil},
		{"blob upload of a session", func() error {
			return d.BlobCommit(ctx, db.BlobCommit{Repository: "src", Digest: b1, Size: 10, UploadID: "u1", UploadSize: 0}, nopBytes, alice)
		}, []want{{action: "push", repo: "src", digest: b1, size: 10, blob: true, actor: alice}}},
		{"upload cancel: no event", func() error {
			if err := d.UploadCreate(ctx, "src", "u2", "alice", []byte("state"), 0, alice); err != nil {
				return err
			}
			_, err := d.UploadDelete(ctx, "src", "u2", alice)
			return err
		}, nil},
		{"upload expiry: no event", func() error {
			if err := d.UploadCreate(ctx, "src", "u3", "alice", []byte("state"), 0, alice); err != nil {
				return err
			}
			expired, err := d.GCExpireUploads(ctx, 0, 10, false)
			if err == nil && len(expired) != 1 {
				err = fmt.Errorf("expired %d sessions, want 1", len(expired))
			}
			return err
		}, nil},
		{"mount", func() error {
			_, err := d.BlobMount(ctx, "src", "app", b1, bob)
			return err
		}, []want{{action: "mount", repo: "app", digest: b1, size: 10, from: "src", blob: true, actor: bob}}},
		{"monolithic blob upload without a request", func() error {
			return d.BlobCommit(ctx, db.BlobCommit{Repository: "app", Digest: b2, Size: 5}, nopBytes, anon)
		}, []want{{action: "push", repo: "app", digest: b2, size: 5, blob: true, actor: anon}}},
		{"blob unlink", func() error {
			return d.BlobUnlink(ctx, "app", b2, alice)
		}, []want{{action: "delete", repo: "app", digest: b2, size: 5, blob: true, actor: alice}}},
		{"push by digest", func() error {
			_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: "app", Digest: m1, MediaType: evManifestType,
				Payload: evPayload(1), Blobs: []db.BlobRef{{Digest: b1, Size: 10}}}, alice)
			return err
		}, []want{man("push", m1, 1, alice)}},
		{"re-push of an unchanged manifest by digest: no event", func() error {
			_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: "app", Digest: m1, MediaType: evManifestType,
				Payload: evPayload(1), Blobs: []db.BlobRef{{Digest: b1, Size: 10}}}, alice)
			return err
		}, nil},
		{"push by tag", func() error { return evPush(ctx, d, "app", 2, alice, "v1") },
			[]want{with(man("push", m2, 2, alice), func(w *want) { w.tag = "v1" })}},
		{"push with several tags, one repeated: one push per tag, in name order", func() error {
			return evPush(ctx, d, "app", 3, bob, "c", "a", "b", "a")
		}, []want{
			with(man("push", m3, 3, bob), func(w *want) { w.tag = "a" }),
			with(man("push", m3, 3, bob), func(w *want) { w.tag = "b" }),
			with(man("push", m3, 3, bob), func(w *want) { w.tag = "c" }),
		}},
		{"re-push of an unchanged manifest with its tags: no event", func() error {
			return evPush(ctx, d, "app", 3, bob, "a", "b", "c")
		}, nil},
		{"an existing manifest under a new tag", func() error { return evPush(ctx, d, "app", 2, anon, "latest") },
			[]want{with(man("tag", m2, 2, anon), func(w *want) { w.tag = "latest" })}},
		{"an existing manifest moving a tag", func() error { return evPush(ctx, d, "app", 2, alice, "a", "v1") },
			[]want{with(man("tag", m2, 2, alice), func(w *want) { w.tag, w.prev = "a", m3 })}},
		{"a new manifest moving a tag and creating one", func() error { return evPush(ctx, d, "app", 4, alice, "new", "b") },
			[]want{
				with(man("push", m4, 4, alice), func(w *want) { w.tag, w.prev = "b", m3 }),
				with(man("push", m4, 4, alice), func(w *want) { w.tag = "new" }),
			}},
		{"restore", func() error {
			prev, err := d.TagRestore(ctx, "app", "c", m1, db.TagCondition{}, bob)
			if err == nil && prev != m3 {
				err = fmt.Errorf("restore: previous %q", prev)
			}
			return err
		}, []want{with(man("restore", m1, 1, bob), func(w *want) { w.tag, w.prev = "c", m3 })}},
		{"restore to where the tag is: no event", func() error {
			_, err := d.TagRestore(ctx, "app", "c", m1, db.TagCondition{}, bob)
			return err
		}, nil},
		{"untag", func() error {
			dgst, err := d.TagDelete(ctx, "app", "latest", db.TagCondition{}, bob)
			if err == nil && dgst != m2 {
				err = fmt.Errorf("untag: digest %q", dgst)
			}
			return err
		}, []want{with(man("untag", m2, 2, bob), func(w *want) { w.tag = "latest" })}},
		{"delete by digest names the tags it removed", func() error { return d.ManifestDelete(ctx, "app", m2, alice) },
			[]want{with(man("delete", m2, 2, alice), func(w *want) { w.tags = []string{"a", "v1"} })}},
		{"delete by digest of an untagged manifest", func() error { return d.ManifestDelete(ctx, "app", m3, anon) },
			[]want{man("delete", m3, 3, anon)}},
		{"a restore that undeletes is one restore event", func() error {
			_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: "app", Digest: m2, MediaType: evManifestType,
				Payload: evPayload(2), Tags: []string{"v1"}, Restore: true}, bob)
			return err
		}, []want{with(man("restore", m2, 2, bob), func(w *want) { w.tag = "v1" })}},
		{"a push by digest that undeletes", func() error { return evPush(ctx, d, "app", 3, alice) },
			[]want{man("push", m3, 3, alice)}},
		{"a blob committed again to a repository that has it", func() error {
			return d.BlobCommit(ctx, db.BlobCommit{Repository: "src", Digest: b1, Size: 10}, nopBytes, alice)
		}, []want{{action: "push", repo: "src", digest: b1, size: 10, blob: true, actor: alice}}},
		{"an index by tag", func() error {
			_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: "app", Digest: b3, MediaType: evIndexType,
				Payload: []byte("index"), Children: []string{m1, m4}, Tags: []string{"multi"}}, alice)
			return err
		}, []want{{action: "push", repo: "app", digest: b3, mediaType: evIndexType, size: 5, tag: "multi", actor: alice}}},
	}

	repos := []string{"src", "app"}
	last := map[string]int64{}
	var seen []db.Event
	for _, step := range steps {
		before := time.Now()
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		expected := map[string][]db.Event{}
		for _, w := range step.want {
			expected[w.repo] = append(expected[w.repo], w.event(last[w.repo]+int64(len(expected[w.repo]))+1))
		}
		for _, repo := range repos {
			got, _, err := d.EventList(ctx, repo, last[repo], 100)
			if errors.Is(err, db.ErrRepositoryUnknown) && len(expected[repo]) == 0 && last[repo] == 0 {
				continue // no event yet in repo
			}
			if err != nil {
				t.Fatalf("%s: events of %s: %v", step.name, repo, err)
			}
			for i := range got {
				ev := &got[i]
				if !uuidV4.MatchString(ev.ID) {
					t.Errorf("%s: event id %q is not a version 4 UUID", step.name, ev.ID)
				}
				if ev.Timestamp.Before(before.Add(-time.Second)) || ev.Timestamp.After(time.Now().Add(time.Second)) {
					t.Errorf("%s: timestamp %v, the change ran at %v", step.name, ev.Timestamp, before)
				}
				if ev.Timestamp.Location() != time.UTC {
					t.Errorf("%s: timestamp %v not in UTC", step.name, ev.Timestamp)
				}
				seen = append(seen, *ev)
				ev.ID, ev.Timestamp = "", time.Time{}
			}
			if want := expected[repo]; !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
				t.Errorf("%s: events of %s\n got %s\nwant %s", step.name, repo, evFormat(got), evFormat(want))
			}
			last[repo] += int64(len(got))
		}
	}
	if t.Failed() {
		return
	}

	// Read again, all of it: same ids and times, in seq order without
	// gaps, every id different.
	ids := map[string]bool{}
	for _, repo := range repos {
		all := evAll(t, d, repo, 0)
		if !slices.Equal(evSeqs(all), evRange(1, last[repo])) {
			t.Errorf("seqs of %s: %v, want 1..%d", repo, evSeqs(all), last[repo])
		}
		for _, ev := range all {
			ids[ev.ID] = true
		}
	}
	if len(ids) != len(seen) {
		t.Errorf("%d distinct ids among %d events", len(ids), len(seen))
	}
	byID := map[string]db.Event{}
	for _, ev := range seen {
		byID[ev.ID] = ev
	}
	for _, repo := range repos {
		for _, ev := range evAll(t, d, repo, 0) {
			first, ok := byID[ev.ID]
			if !ok || !first.Timestamp.Equal(ev.Timestamp) || first.Seq != ev.Seq || first.Target.Repository != repo {
				t.Errorf("event %s of %s read again: %+v, first read %+v", ev.ID, repo, ev, first)
			}
		}
	}
	// Events of one transaction share its time; later transactions have
	// later times.
	app := evAll(t, d, "app", 0)
	if tx := app[5:8]; tx[0].Target.Tag != "a" || tx[2].Target.Tag != "c" ||
		!tx[0].Timestamp.Equal(tx[1].Timestamp) || !tx[0].Timestamp.Equal(tx[2].Timestamp) {
		t.Errorf("the events of one push with three tags: %s", evFormat(tx))
	}
	for i := 1; i < len(app); i++ {
		if app[i].Timestamp.Before(app[i-1].Timestamp) {
			t.Errorf("event %d at %v, before event %d at %v", app[i].Seq, app[i].Timestamp, app[i-1].Seq, app[i-1].Timestamp)
		}
	}
	// The events API past the end, and a repository without events.
	if evs, more, err := d.EventList(ctx, "app", last["app"], 10); err != nil || more || len(evs) != 0 {
		t.Errorf("events past the end: %v, %v, %v", evs, more, err)
	}
	if _, _, err := d.EventList(ctx, "nowhere", 0, 10); !errors.Is(err, db.ErrRepositoryUnknown) {
		t.Errorf("events of a repository without any: %v, want ErrRepositoryUnknown", err)
	}
}

func evFormat(evs []db.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "\n  %+v", ev)
	}
	if b.Len() == 0 {
		return "(none)"
	}
	return b.String()
}

// evGCPass does what the collector's pass does with the db API: claim
// due candidates and review them until none is due.
func evGCPass(ctx context.Context, d *db.DB) error {
	for range 100 {
		cands, err := d.GCClaim(ctx, 10, time.Minute)
		if err != nil || len(cands) == 0 {
			return err
		}
		for _, c := range cands {
			switch c.Kind {
			case db.CandidateBlob:
				rev, err := d.GCReviewBlob(ctx, c, false)
				if err != nil {
					return fmt.Errorf("review blob %s: %w", c.Key, err)
				}
				if rev.Collect {
					if _, _, err := d.GCDeleteBlob(ctx, c, nopBytes); err != nil {
						return fmt.Errorf("delete blob %s: %w", c.Key, err)
					}
				}
			case db.CandidateManifest:
				if _, err := d.GCReviewManifest(ctx, c, false); err != nil {
					return fmt.Errorf("review manifest %s: %w", c.Key, err)
				}
			}
		}
	}
	return errors.New("garbage collection does not end")
}

// The collector's changes are events with actor gc and no request: the
// deletion of untagged manifests and the removal of stale blob links.
// Purging tombstones and deleting blob bytes are not events, and a dry
// run writes nothing.
func TestEventShapesGC(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := dbtest.NewURL(t)
	d := evOpen(t, u, db.Options{GC: db.GCPolicy{CollectUntagged: true}})
	user := db.Actor{Name: "alice"}
	b1, b2 := evDigest(0xb1), evDigest(0xb2)
	mustDo(t, d.BlobCommit(ctx, db.BlobCommit{Repository: "app", Digest: b1, Size: 3}, nopBytes, user))
	mustDo(t, d.BlobCommit(ctx, db.BlobCommit{Repository: "app", Digest: b2, Size: 4}, nopBytes, user))
	_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: "app", Digest: evDigest(1), MediaType: evManifestType,
		Payload: evPayload(1), Blobs: []db.BlobRef{{Digest: b1, Size: 3}}}, user)
	mustDo(t, err)
	mustDo(t, evPush(ctx, d, "app", 2, user, "v1"))
	_, err = d.TagDelete(ctx, "app", "v1", db.TagCondition{}, user)
	mustDo(t, err)
	if got := evSeqs(evAll(t, d, "app", 0)); !slices.Equal(got, evRange(1, 5)) {
		t.Fatalf("seqs before collecting: %v", got)
	}

	// A dry run decides the same and changes nothing.
	var after db.Candidate
	for {
		cands, err := d.GCDue(ctx, after, 10)
		mustDo(t, err)
		for _, c := range cands {
			if c.Kind == db.CandidateBlob {
				_, err = d.GCReviewBlob(ctx, c, true)
			} else {
				_, err = d.GCReviewManifest(ctx, c, true)
			}
			mustDo(t, err)
		}
		if len(cands) < 10 {
			break
		}
		after = cands[len(cands)-1]
	}
	if evs := evAll(t, d, "app", 5); len(evs) != 0 {
		t.Fatalf("a dry run wrote events: %s", evFormat(evs))
	}

	// Tombstone retention and review delay are zero: one pass deletes
	// both untagged manifests, purges them, removes both blob links (b1's
	// once its manifest is purged) and deletes both blobs.
	mustDo(t, evGCPass(ctx, d))
	got := evAll(t, d, "app", 5)
	if !slices.Equal(evSeqs(got), evRange(6, 9)) {
		t.Fatalf("seqs of the collector's events: %v, want 6..9: %s", evSeqs(got), evFormat(got))
	}
	gc := db.Actor{Name: "gc"}
	expected := []db.Event{
		want{action: "delete", repo: "app", digest: evDigest(1), mediaType: evManifestType, size: int64(len(evPayload(1))), actor: gc}.event(0),
		want{action: "delete", repo: "app", digest: evDigest(2), mediaType: evManifestType, size: int64(len(evPayload(2))), actor: gc}.event(0),
		want{action: "delete", repo: "app", digest: b1, size: 3, blob: true, actor: gc}.event(0),
		want{action: "delete", repo: "app", digest: b2, size: 4, blob: true, actor: gc}.event(0),
	}
	// The order of the collector's transactions is the queue's; compare
	// without it.
	for i := range got {
		got[i].ID, got[i].Timestamp, got[i].Seq = "", time.Time{}, 0
	}
	sort.Slice(got, func(i, j int) bool { return got[i].Target.URL < got[j].Target.URL })
	sort.Slice(expected, func(i, j int) bool { return expected[i].Target.URL < expected[j].Target.URL })
	if !reflect.DeepEqual(got, expected) {
		t.Errorf("the collector's events\n got %s\nwant %s", evFormat(got), evFormat(expected))
	}
	if n := dbtest.QueryInt(t, u, `SELECT count(*) FROM blobs`); n != 0 {
		t.Errorf("%d blobs left: the pass did not collect everything", n)
	}
}

// A change that rolls back writes no event and takes no seq: the next
// change that commits gets the next number.
func TestEventsRollback(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := dbtest.NewURL(t)
	d := evOpen(t, u, db.Options{})
	user := db.Actor{Name: "alice"}
	b1 := evDigest(0xb1)
	// A webhook, so that a rolled back change would have deliveries too.
	mustDo(t, d.WebhookAdd(ctx, db.Webhook{Name: "all", URL: "http://hooks.example/", Timeout: time.Second}))
	mustDo(t, evPush(ctx, d, "app", 1, user, "t"))
	seq := int64(1)
	next := func(name string, change func() error) {
		t.Helper()
		mustDo(t, change())
		seq++
		evs := evAll(t, d, "app", 0)
		if !slices.Equal(evSeqs(evs), evRange(1, seq)) {
			t.Fatalf("after %s: seqs %v, want 1..%d", name, evSeqs(evs), seq)
		}
		if n := dbtest.QueryInt(t, u, `SELECT last_seq FROM event_streams WHERE repository = 'app'`); n != seq {
			t.Fatalf("after %s: last seq %d, want %d", name, n, seq)
		}
		if n := dbtest.QueryInt(t, u, `SELECT count(*) FROM webhook_deliveries`); n != seq {
			t.Fatalf("after %s: %d deliveries, want %d", name, n, seq)
		}
	}
	var pre *db.PreconditionError
	var missing *db.MissingReferenceError
	var referenced *db.ReferencedError
	uploads := 0
	failures := []struct {
		name  string
		do    func() error
		check func(error) bool
	}{
		{"a push whose tag condition fails (412)", func() error {
			_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: "app", Digest: evDigest(2), MediaType: evManifestType,
				Payload: evPayload(2), Tags: []string{"new", "t"}, TagCondition: db.TagCondition{IfNoneMatch: true}}, user)
			return err
		}, func(err error) bool { return errors.As(err, &pre) }},
		{"an untag whose condition fails (412)", func() error {
			_, err := d.TagDelete(ctx, "app", "t", db.TagCondition{IfMatch: []string{evDigest(9)}}, user)
			return err
		}, func(err error) bool { return errors.As(err, &pre) }},
		{"a restore whose condition fails (412)", func() error {
			_, err := d.TagRestore(ctx, "app", "other", evDigest(1), db.TagCondition{IfMatch: []string{"*"}}, user)
			return err
		}, func(err error) bool { return errors.As(err, &pre) }},
		{"a tagged push of a manifest referencing a blob not in the repository", func() error {
			_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: "app", Digest: evDigest(3), MediaType: evManifestType,
				Payload: evPayload(3), Blobs: []db.BlobRef{{Digest: b1, Size: 3}}, Tags: []string{"x", "y"}}, user)
			return err
		}, func(err error) bool { return errors.As(err, &missing) && missing.Digest == b1 }},
		{"a blob commit whose session moved on", func() error {
			uploads++
			id := fmt.Sprintf("u%d", uploads)
			if err := d.UploadCreate(ctx, "app", id, "", []byte("s"), 0, user); err != nil {
				return err
			}
			return d.BlobCommit(ctx, db.BlobCommit{Repository: "app", Digest: b1, Size: 3, UploadID: id, UploadSize: 7}, nopBytes, user)
		}, func(err error) bool { return errors.Is(err, db.ErrUploadOffset) }},
		{"a blob commit whose bytes cannot be published", func() error {
			return d.BlobCommit(ctx, db.BlobCommit{Repository: "app", Digest: b1, Size: 3}, func(context.Context) error {
				return errors.New("disk full")
			}, user)
		}, func(err error) bool { return err != nil && strings.Contains(err.Error(), "disk full") }},
	}
	runFailures := func() {
		t.Helper()
		for _, f := range failures {
			if err := f.do(); !f.check(err) {
				t.Fatalf("%s: %v", f.name, err)
			}
		}
	}
	runFailures()
	next("the failures", func() error { return evPush(ctx, d, "app", 4, user, "u") })

	// An index listing manifest 1 blocks its delete.
	_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: "app", Digest: evDigest(5), MediaType: evIndexType,
		Payload: []byte("index"), Children: []string{evDigest(1)}}, user)
	mustDo(t, err)
	seq++
	if err := d.ManifestDelete(ctx, "app", evDigest(1), user); !errors.As(err, &referenced) {
		t.Fatalf("delete of a listed manifest: %v", err)
	}
	runFailures()
	next("a blocked delete", func() error {
		return d.BlobCommit(ctx, db.BlobCommit{Repository: "app", Digest: b1, Size: 3}, nopBytes, user)
	})
	next("a delete by digest", func() error { return d.ManifestDelete(ctx, "app", evDigest(4), user) })

	// The first change of a repository that rolls back leaves no stream.
	_, err = d.ManifestStore(ctx, db.ManifestPut{Repository: "fresh", Digest: evDigest(6), MediaType: evManifestType,
		Payload: evPayload(6), Blobs: []db.BlobRef{{Digest: evDigest(0xff), Size: 1}}, Tags: []string{"v1"}}, user)
	if !errors.As(err, &missing) {
		t.Fatalf("push to a fresh repository: %v", err)
	}
	if _, _, err := d.EventList(ctx, "fresh", 0, 10); !errors.Is(err, db.ErrRepositoryUnknown) {
		t.Fatalf("events of a repository whose only change rolled back: %v", err)
	}
	mustDo(t, evPush(ctx, d, "fresh", 6, user, "v1"))
	if got := evSeqs(evAll(t, d, "fresh", 0)); !slices.Equal(got, []int64{1}) {
		t.Fatalf("first committed event of a fresh repository: seqs %v", got)
	}
}

// Writers on two handles (two replicas) change a few repositories at
// once while a consumer pages through each repository's events, moving
// its cursor past what it has read, as fast as it can. A seq that
// committed after a larger one would be skipped for good; the consumer
// must end up with exactly 1..N in each repository, N its committed
// changes (each makes one event).
func TestEventsGaplessUnderConcurrentWriters(t *testing.T) {
	t.Parallel()
	const (
		writers = 16
		changes = 25 // per writer
	)
	ctx := context.Background()
	u := dbtest.NewURL(t)
	handles := []*db.DB{evOpen(t, u, db.Options{MaxConns: 10}), evOpen(t, u, db.Options{MaxConns: 10})}
	mustDo(t, handles[0].WebhookAdd(ctx, db.Webhook{Name: "all", URL: "http://hooks.example/", Timeout: time.Second}))
	repos := []string{"r0", "r1", "r2"}
	var committed [3]atomic.Int64
	var next atomic.Int64 // unique manifests, blobs and tags

	var writing sync.WaitGroup
	errs := make(chan error, writers+len(repos))
	for w := range writers {
		writing.Add(1)
		go func() {
			defer writing.Done()
			d := handles[w%2]
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			actor := db.Actor{Name: fmt.Sprintf("writer%d", w)}
			for range changes {
				r := rng.IntN(len(repos))
				repo := repos[r]
				n := int(next.Add(1))
				var err error
				switch rng.IntN(4) {
				case 0: // a new manifest by digest: push
					err = evPush(ctx, d, repo, n, actor)
				case 1: // a new manifest by tag: push
					err = evPush(ctx, d, repo, n, actor, fmt.Sprintf("t%d", n))
				case 2: // a new blob: push
					err = d.BlobCommit(ctx, db.BlobCommit{Repository: repo, Digest: evDigest(1<<20 + n), Size: int64(n)}, nopBytes, actor)
				case 3:
					// A push moving the tag that every writer of the
					// repository moves (one event), then an untag of it
					// whose condition fails (no event).
					err = evPush(ctx, d, repo, n, actor, "hot")
					if err == nil {
						_, err = d.TagDelete(ctx, repo, "hot", db.TagCondition{IfMatch: []string{"sha256:none"}}, actor)
						if pre := (*db.PreconditionError)(nil); errors.As(err, &pre) {
							err = nil
						} else {
							err = fmt.Errorf("an untag whose condition fails: %v", err)
						}
					}
				}
				if err != nil {
					errs <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
				committed[r].Add(1)
			}
		}()
	}
	stop := make(chan struct{})
	var consuming sync.WaitGroup
	collected := make([][]db.Event, len(repos))
	for r, repo := range repos {
		consuming.Add(1)
		go func() {
			defer consuming.Done()
			d := handles[(r+1)%2]
			var cursor int64
			stopping := false
			for {
				page, more, err := d.EventList(ctx, repo, cursor, 4)
				if errors.Is(err, db.ErrRepositoryUnknown) {
					page, more, err = nil, false, nil
				}
				if err != nil {
					errs <- fmt.Errorf("consumer of %s: %w", repo, err)
					return
				}
				for _, ev := range page {
					if ev.Seq != cursor+1 {
						errs <- fmt.Errorf("consumer of %s: seq %d after %d", repo, ev.Seq, cursor)
						return
					}
					cursor = ev.Seq
					collected[r] = append(collected[r], ev)
				}
				if more {
					continue
				}
				if stopping {
					return
				}
				select {
				case <-stop:
					stopping = true // one more read: everything has committed
				default:
				}
			}
		}()
	}
	writing.Wait()
	close(stop)
	consuming.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	total := int64(0)
	for r, repo := range repos {
		n := committed[r].Load()
		total += n
		if got := evSeqs(collected[r]); !slices.Equal(got, evRange(1, n)) {
			t.Errorf("%s: the consumer collected seqs %v, want 1..%d", repo, got, n)
		}
		ids := map[string]bool{}
		for _, ev := range collected[r] {
			if ev.Target.Repository != repo || ids[ev.ID] {
				t.Errorf("%s: event %+v", repo, ev)
			}
			ids[ev.ID] = true
		}
	}
	if n := dbtest.QueryInt(t, u, `SELECT count(*) FROM webhook_deliveries`); n != total {
		t.Errorf("%d deliveries for %d events", n, total)
	}
	t.Logf("%d changes committed", total)
}

// A change whose events wait behind a transaction that holds the
// repository's stream (one that took the previous seq and has not
// committed) gets its number only after that commits; a consumer reading
// meanwhile sees neither: the numbers of a repository are taken under its
// stream's row lock, in commit order.
func TestEventsWaitForAnEarlierSeq(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := dbtest.NewURL(t)
	d := evOpen(t, u, db.Options{})
	user := db.Actor{Name: "alice"}
	mustDo(t, evPush(ctx, d, "app", 1, user, "v1"))

	// An earlier transaction took seq 2 and has not committed yet.
	conn, err := pgx.Connect(ctx, u)
	mustDo(t, err)
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	mustDo(t, err)
	_, err = tx.Exec(ctx, `UPDATE event_streams SET last_seq = last_seq + 1 WHERE repository = 'app'`)
	mustDo(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO events (uuid, repository, seq, at, action, body)
VALUES ('00000000-0000-4000-8000-000000000000', 'app', 2, now(), 'push', '{"target":{"repository":"app"}}')`)
	mustDo(t, err)

	done := make(chan error, 1)
	go func() { done <- evPush(ctx, d, "app", 2, user, "v2") }()
	waitBlockedBy(t, u, conn.PgConn().PID(), func() bool { return len(done) > 0 })
	if evs := evAll(t, d, "app", 1); len(evs) != 0 {
		t.Fatalf("events visible while seq 2 is not committed: %s", evFormat(evs))
	}
	mustDo(t, tx.Commit(ctx))
	mustDo(t, <-done)
	evs := evAll(t, d, "app", 0)
	if !slices.Equal(evSeqs(evs), []int64{1, 2, 3}) || evs[2].Target.Tag != "v2" {
		t.Fatalf("events: %s", evFormat(evs))
	}
}

// evHook adds a webhook taking repository globs as `berth webhook add`
// does (auth.GlobRegex).
func evHook(t *testing.T, d *db.DB, name string, repos, actions []string, pulls bool) {
	t.Helper()
	w := db.Webhook{Name: name, URL: "http://hooks.example/" + name, Timeout: time.Second, Actions: actions, Pulls: pulls}
	for _, g := range repos {
		w.Repos = append(w.Repos, g)
		w.ReposRegexp = append(w.ReposRegexp, auth.GlobRegex(g))
	}
	mustDo(t, d.WebhookAdd(context.Background(), w))
}

// evDeliveries lists the delivery rows as "webhook repository seq action
// state", in that order.
func evDeliveries(t *testing.T, u string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	mustDo(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `
SELECT coalesce(w.name, '(deleted)') || ' ' || d.repository || ' ' || d.seq || ' ' || e.action || ' ' || d.state
FROM webhook_deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN webhooks w ON w.id = d.webhook_id
ORDER BY 1`)
	mustDo(t, err)
	list, err := pgx.CollectRows(rows, pgx.RowTo[string])
	mustDo(t, err)
	return list
}

// Each webhook gets a delivery for the events its filters match:
// repository globs, actions, and pulls only when it asked for them; and
// only for events written after it was added.
func TestWebhookFilters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := dbtest.NewURL(t)
	d := evOpen(t, u, db.Options{})
	user := db.Actor{Name: "alice"}
	mustDo(t, evPush(ctx, d, "lib/a", 1, user, "before")) // lib/a 1: before any webhook

	want, err := d.WantPulls(ctx)
	mustDo(t, err)
	if want {
		t.Fatal("pulls wanted without webhooks")
	}
	evHook(t, d, "all", nil, nil, false)
	evHook(t, d, "lib", []string{"lib/*"}, nil, false)
	evHook(t, d, "deep", []string{"lib/**", "other"}, nil, false)
	evHook(t, d, "dotted", []string{"my.app"}, nil, false)
	evHook(t, d, "tagsonly", nil, []string{db.EventTag, db.EventUntag}, false)
	evHook(t, d, "flagless", nil, []string{db.EventPull}, false) // the action alone does not ask for pulls
	if want, err = d.WantPulls(ctx); err != nil || want {
		t.Fatalf("pulls wanted without a webhook asking: %v, %v", want, err)
	}
	evHook(t, d, "pulls", nil, nil, true)
	evHook(t, d, "pullsonly", nil, []string{db.EventPull}, true)
	if want, err = d.WantPulls(ctx); err != nil || !want {
		t.Fatalf("pulls not wanted: %v, %v", want, err)
	}

	mustDo(t, evPush(ctx, d, "lib/a", 2, user, "v1"))      // lib/a 2 push
	mustDo(t, evPush(ctx, d, "lib/a/deep", 3, user, "v1")) // lib/a/deep 1 push
	mustDo(t, evPush(ctx, d, "other", 4, user, "t"))       // other 1 push
	mustDo(t, evPush(ctx, d, "other", 4, user, "u"))       // other 2 tag
	_, err = d.TagDelete(ctx, "other", "u", db.TagCondition{}, user)
	mustDo(t, err)                               // other 3 untag
	mustDo(t, evPush(ctx, d, "my.app", 5, user)) // my.app 1 push
	mustDo(t, evPush(ctx, d, "myxapp", 6, user)) // myxapp 1 push
	mustDo(t, evPush(ctx, d, "libxa", 7, user))  // libxa 1 push
	pullActor := db.Actor{Name: "bob", RequestID: "req-p", Request: &db.RequestInfo{Addr: "192.0.2.1", Host: "registry.example",
		Method: "GET", UserAgent: "containerd/2", BaseURL: "https://registry.example"}}
	mustDo(t, d.PullEventsWrite(ctx, []db.PullEvent{
		{Actor: pullActor, Repository: "lib/a", Digest: evDigest(2), MediaType: evManifestType, Size: 42, Tag: "v1"},                              // lib/a 3
		{Actor: pullActor, Repository: "other", Digest: evDigest(0xb1), MediaType: "application/vnd.oci.image.layer.v1.tar", Size: 7, Blob: true}, // other 4
		{Actor: db.Actor{Name: "anonymous@192.0.2.2"}, Repository: "lib/a", Digest: evDigest(2), Size: 42},                                        // lib/a 4
	}))
	mustDo(t, d.PullEventsWrite(ctx, nil))

	everything := []string{"lib/a 2 push", "lib/a/deep 1 push", "libxa 1 push", "my.app 1 push", "myxapp 1 push",
		"other 1 push", "other 2 tag", "other 3 untag"}
	pulls := []string{"lib/a 3 pull", "lib/a 4 pull", "other 4 pull"}
	expected := map[string][]string{
		"all":       everything,
		"lib":       {"lib/a 2 push"},
		"deep":      {"lib/a 2 push", "lib/a/deep 1 push", "other 1 push", "other 2 tag", "other 3 untag"},
		"dotted":    {"my.app 1 push"},
		"tagsonly":  {"other 2 tag", "other 3 untag"},
		"pulls":     append(slices.Clone(everything), pulls...),
		"pullsonly": pulls,
	}
	var wantRows []string
	for name, list := range expected {
		for _, s := range list {
			wantRows = append(wantRows, name+" "+s+" pending")
		}
	}
	slices.Sort(wantRows)
	if got := evDeliveries(t, u); !slices.Equal(got, wantRows) {
		t.Errorf("deliveries\n got %q\nwant %q", got, wantRows)
	}

	// The pull events themselves.
	evs := evAll(t, d, "lib/a", 2)
	expectedPulls := []db.Event{
		{Seq: 3, Action: "pull", Target: db.EventTarget{MediaType: evManifestType, Digest: evDigest(2), Size: 42, Length: 42,
			Repository: "lib/a", URL: "https://registry.example/v2/lib/a/manifests/" + evDigest(2), Tag: "v1"},
			Request: db.EventRequest{ID: "req-p", Addr: "192.0.2.1", Host: "registry.example", Method: "GET", UserAgent: "containerd/2"},
			Actor:   db.EventActor{Name: "bob"}, Source: evConfig.Source},
		{Seq: 4, Action: "pull", Target: db.EventTarget{Digest: evDigest(2), Size: 42, Length: 42,
			Repository: "lib/a", URL: evFallbackBase + "/v2/lib/a/manifests/" + evDigest(2)},
			Actor: db.EventActor{Name: "anonymous@192.0.2.2"}, Source: evConfig.Source},
	}
	for i := range evs {
		evs[i].ID, evs[i].Timestamp = "", time.Time{}
	}
	if !reflect.DeepEqual(evs, expectedPulls) {
		t.Errorf("pull events\n got %s\nwant %s", evFormat(evs), evFormat(expectedPulls))
	}
	blobPull := evAll(t, d, "other", 3)
	if len(blobPull) != 1 || blobPull[0].Target.URL != "https://registry.example/v2/other/blobs/"+evDigest(0xb1) {
		t.Errorf("blob pull: %s", evFormat(blobPull))
	}
}

// evClaim claims up to n deliveries and returns them by "webhook repo".
func evClaim(t *testing.T, d *db.DB, n int, lease time.Duration) map[string]db.Delivery {
	t.Helper()
	got, err := d.DeliveriesClaim(context.Background(), "test", n, lease)
	mustDo(t, err)
	out := map[string]db.Delivery{}
	for _, dl := range got {
		k := dl.Webhook.Name + " " + dl.Event.Target.Repository
		if _, dup := out[k]; dup {
			t.Fatalf("two deliveries of lane %s in one claim", k)
		}
		out[k] = dl
	}
	return out
}

func evLanes(m map[string]db.Delivery) []string {
	var s []string
	for k, dl := range m {
		s = append(s, fmt.Sprintf("%s %d/%d", k, dl.Event.Seq, dl.Attempt))
	}
	slices.Sort(s)
	return s
}

// A claim returns the heads of the lanes only — the lowest pending seq of
// each (webhook, repository) — with the event and the webhook; the next
// event of a lane becomes claimable once its head is delivered, and no
// other lane moves meanwhile.
func TestDeliveriesClaimLaneHeads(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := evOpen(t, dbtest.NewURL(t), db.Options{})
	mustDo(t, d.WebhookAdd(ctx, db.Webhook{Name: "w1", URL: "http://one.example/hook", Secret: "s3cret",
		Headers: []db.Header{{Name: "X-Team", Value: "infra"}}, Timeout: 2 * time.Second}))
	mustDo(t, d.WebhookAdd(ctx, db.Webhook{Name: "w2", URL: "http://two.example/hook", Timeout: time.Second}))
	user := db.Actor{Name: "alice"}
	for i, repo := range []string{"r1", "r2", "r3"} {
		for j := range 3 {
			mustDo(t, evPush(ctx, d, repo, 10*i+j, user, fmt.Sprintf("t%d", j)))
		}
	}
	out := evClaim(t, d, 2, time.Minute)
	if len(out) != 2 {
		t.Fatalf("a claim of 2 took %v", evLanes(out))
	}
	for k, dl := range evClaim(t, d, 100, time.Minute) {
		if _, dup := out[k]; dup {
			t.Fatalf("lane %s claimed twice", k)
		}
		out[k] = dl
	}
	heads := []string{"w1 r1 1/1", "w1 r2 1/1", "w1 r3 1/1", "w2 r1 1/1", "w2 r2 1/1", "w2 r3 1/1"}
	if got := evLanes(out); !slices.Equal(got, heads) {
		t.Fatalf("claimed %v, want the heads %v", got, heads)
	}
	if again := evClaim(t, d, 100, time.Minute); len(again) != 0 {
		t.Fatalf("claimed %v while every head is out", evLanes(again))
	}

	// What a delivery carries: the event as the events API gives it, and
	// the webhook.
	r2 := evAll(t, d, "r2", 0)
	if dl := out["w1 r2"]; !reflect.DeepEqual(dl.Event, r2[0]) {
		t.Errorf("delivered event\n got %+v\nwant %+v", dl.Event, r2[0])
	}
	if w := out["w1 r1"].Webhook; w.Name != "w1" || w.URL != "http://one.example/hook" || w.Secret != "s3cret" ||
		w.Timeout != 2*time.Second || !slices.Equal(w.Headers, []db.Header{{Name: "X-Team", Value: "infra"}}) {
		t.Errorf("webhook of a delivery: %+v", w)
	}
	if w := out["w2 r3"].Webhook; w.Name != "w2" || w.Secret != "" || len(w.Headers) != 0 || w.Timeout != time.Second {
		t.Errorf("webhook of a delivery: %+v", w)
	}

	// Delivering one head frees its lane only.
	mustDo(t, d.DeliveryDone(ctx, out["w1 r1"].ID, 200))
	delete(out, "w1 r1")
	next := evClaim(t, d, 100, time.Minute)
	if got := evLanes(next); !slices.Equal(got, []string{"w1 r1 2/1"}) {
		t.Fatalf("after delivering the head of w1 r1, claimed %v", got)
	}
	out["w1 r1"] = next["w1 r1"]

	// Deliver everything, claim after claim: each lane in seq order, each
	// delivery once.
	order := map[string][]int64{"w1 r1": {1}}
	ids := map[int64]bool{}
	for rounds := 0; len(out) > 0; rounds++ {
		if rounds > 5 {
			t.Fatalf("still claiming after %d rounds", rounds)
		}
		for k, dl := range out {
			if ids[dl.ID] {
				t.Fatalf("delivery %d claimed twice", dl.ID)
			}
			ids[dl.ID] = true
			order[k] = append(order[k], dl.Event.Seq)
			mustDo(t, d.DeliveryDone(ctx, dl.ID, 204))
		}
		out = evClaim(t, d, 100, time.Minute)
	}
	for _, k := range []string{"w1 r1", "w1 r2", "w1 r3", "w2 r1", "w2 r2", "w2 r3"} {
		if !slices.Equal(order[k], []int64{1, 2, 3}) {
			t.Errorf("lane %s delivered %v", k, order[k])
		}
	}
	list, err := d.WebhookList(ctx)
	mustDo(t, err)
	for _, w := range list {
		if w.Pending != 0 || w.Delivered != 9 || w.Dead != 0 || !w.OldestPending.IsZero() {
			t.Errorf("webhook %s: %+v", w.Name, w)
		}
	}
}

// evWait calls claim until it returns something or the deadline passes.
func evWait(t *testing.T, d *db.DB, lease time.Duration, deadline time.Time) map[string]db.Delivery {
	t.Helper()
	for {
		if got := evClaim(t, d, 10, lease); len(got) > 0 {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing became claimable")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A claim lasts its lease: the delivery is not claimable meanwhile, and is
// again afterwards, as attempt 2. The expired attempt's late failure
// changes nothing. The lease is at least twice the webhook's timeout.
func TestDeliveryLease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := dbtest.NewURL(t)
	d := evOpen(t, u, db.Options{})
	mustDo(t, d.WebhookAdd(ctx, db.Webhook{Name: "w", URL: "http://hooks.example/", Timeout: time.Millisecond}))
	user := db.Actor{Name: "alice"}
	mustDo(t, evPush(ctx, d, "r", 1, user, "a"))
	mustDo(t, evPush(ctx, d, "r", 2, user, "b"))

	const lease = 500 * time.Millisecond
	start := time.Now()
	first := evClaim(t, d, 10, lease)
	if got := evLanes(first); !slices.Equal(got, []string{"w r 1/1"}) {
		t.Fatalf("claimed %v", got)
	}
	second := evClaim(t, d, 10, lease)
	if len(second) == 0 {
		second = evWait(t, d, lease, time.Now().Add(5*time.Second))
	}
	if elapsed := time.Since(start); elapsed < lease {
		t.Fatalf("claimed again after %v, before the lease of %v ended", elapsed, lease)
	}
	if got := evLanes(second); !slices.Equal(got, []string{"w r 1/2"}) || second["w r"].ID != first["w r"].ID {
		t.Fatalf("after the lease, claimed %v", got)
	}
	id := first["w r"].ID
	mustDo(t, d.DeliveryFailed(ctx, id, 1, 500, "late", time.Now().Add(time.Hour), true))
	if n := dbtest.QueryInt(t, u, `SELECT count(*) FROM webhook_deliveries
		WHERE id = $1 AND state = 'pending' AND attempts = 2 AND last_error IS NULL AND next_at < now() + interval '1 minute'`, id); n != 1 {
		t.Fatal("the expired attempt's failure changed the delivery")
	}
	mustDo(t, d.DeliveryDone(ctx, id, 200))
	if got := evLanes(evClaim(t, d, 10, lease)); !slices.Equal(got, []string{"w r 2/1"}) {
		t.Fatalf("after delivering seq 1, claimed %v", got)
	}

	// A webhook with a long timeout gets a lease of twice that, whatever
	// the claimer asks.
	mustDo(t, d.WebhookAdd(ctx, db.Webhook{Name: "slow", URL: "http://hooks.example/slow", Timeout: time.Minute}))
	mustDo(t, evPush(ctx, d, "s", 3, user, "a"))
	if got := evLanes(evClaim(t, d, 10, time.Millisecond)); !slices.Equal(got, []string{"slow s 1/1", "w s 1/1"}) {
		t.Fatalf("claimed %v", got)
	}
	if n := dbtest.QueryInt(t, u, `SELECT count(*) FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
		WHERE d.repository = 's' AND w.name = 'slow' AND d.next_at > now() + interval '100 seconds'`); n != 1 {
		t.Fatal("the lease is shorter than twice the webhook's timeout")
	}
}

// A failed attempt retried later keeps its lane blocked until then; a
// dead one frees the lane; a redrive brings the dead ones back, first in
// their lane.
func TestDeliveryRetryDeadRedrive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := dbtest.NewURL(t)
	d := evOpen(t, u, db.Options{})
	mustDo(t, d.WebhookAdd(ctx, db.Webhook{Name: "w", URL: "http://hooks.example/", Timeout: time.Second}))
	user := db.Actor{Name: "alice"}
	for i := range 4 {
		mustDo(t, evPush(ctx, d, "r", i, user, fmt.Sprintf("t%d", i)))
	}
	one := evClaim(t, d, 10, time.Minute)["w r"]
	if one.Event.Seq != 1 || one.Attempt != 1 {
		t.Fatalf("claimed seq %d attempt %d", one.Event.Seq, one.Attempt)
	}
	const wait = 400 * time.Millisecond
	retryAt := time.Now().Add(wait)
	mustDo(t, d.DeliveryFailed(ctx, one.ID, 1, 503, "503 Service Unavailable", retryAt, false))
	got := evClaim(t, d, 10, time.Minute)
	if len(got) == 0 {
		got = evWait(t, d, time.Minute, time.Now().Add(5*time.Second))
	}
	if time.Now().Before(retryAt) {
		t.Fatal("claimed before the retry time")
	}
	if lanes := evLanes(got); !slices.Equal(lanes, []string{"w r 1/2"}) {
		t.Fatalf("after the retry time, claimed %v", lanes)
	}
	mustDo(t, d.DeliveryFailed(ctx, one.ID, 2, 0, "connection refused", time.Now(), true))
	two := evClaim(t, d, 10, time.Minute)
	if lanes := evLanes(two); !slices.Equal(lanes, []string{"w r 2/1"}) {
		t.Fatalf("after seq 1 died, claimed %v", lanes)
	}
	mustDo(t, d.DeliveryFailed(ctx, two["w r"].ID, 1, 500, "500 Internal Server Error", time.Now(), true))
	if n := dbtest.QueryInt(t, u, `SELECT count(*) FROM webhook_deliveries WHERE state = 'dead' AND done_at IS NOT NULL
		AND ((seq = 1 AND last_status IS NULL AND last_error = 'connection refused' AND attempts = 2)
		  OR (seq = 2 AND last_status = 500 AND attempts = 1))`); n != 2 {
		t.Fatalf("%d dead deliveries as recorded", n)
	}
	list, err := d.WebhookList(ctx)
	mustDo(t, err)
	if len(list) != 1 || list[0].Pending != 2 || list[0].Dead != 2 || list[0].Delivered != 0 {
		t.Fatalf("webhook list: %+v", list)
	}

	if _, err := d.WebhookRedrive(ctx, "nope"); !errors.Is(err, db.ErrWebhookUnknown) {
		t.Fatalf("redrive of an unknown webhook: %v", err)
	}
	n, err := d.WebhookRedrive(ctx, "w")
	if err != nil || n != 2 {
		t.Fatalf("redrive: %d, %v", n, err)
	}
	var order []string
	for range 5 {
		got := evClaim(t, d, 10, time.Minute)
		if len(got) == 0 {
			break
		}
		order = append(order, evLanes(got)...)
		for _, dl := range got {
			mustDo(t, d.DeliveryDone(ctx, dl.ID, 200))
		}
	}
	if !slices.Equal(order, []string{"w r 1/1", "w r 2/1", "w r 3/1", "w r 4/1"}) {
		t.Fatalf("after the redrive, delivered %v", order)
	}
	if n, err := d.WebhookRedrive(ctx, "w"); err != nil || n != 0 {
		t.Fatalf("redrive with nothing dead: %d, %v", n, err)
	}
}

// Deleting a webhook deletes its deliveries, pending or not; a webhook
// added again gets only what is written after. Names are unique.
func TestWebhookDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := dbtest.NewURL(t)
	d := evOpen(t, u, db.Options{})
	evHook(t, d, "a", nil, nil, false)
	evHook(t, d, "b", nil, nil, false)
	if err := d.WebhookAdd(ctx, db.Webhook{Name: "b", URL: "http://x.example/", Timeout: time.Second}); !errors.Is(err, db.ErrWebhookExists) {
		t.Fatalf("a second webhook named b: %v", err)
	}
	user := db.Actor{Name: "alice"}
	mustDo(t, evPush(ctx, d, "r", 1, user, "x"))
	mustDo(t, evPush(ctx, d, "r", 2, user, "y"))
	mustDo(t, evPush(ctx, d, "q", 3, user, "x"))
	claimed := evClaim(t, d, 10, time.Minute)
	inFlight := claimed["a r"]
	mustDo(t, d.DeliveryDone(ctx, claimed["a q"].ID, 200))
	mustDo(t, d.WebhookDelete(ctx, "a"))
	if err := d.WebhookDelete(ctx, "a"); !errors.Is(err, db.ErrWebhookUnknown) {
		t.Fatalf("second delete: %v", err)
	}
	want := []string{"b q 1 push pending", "b r 1 push pending", "b r 2 push pending"}
	if got := evDeliveries(t, u); !slices.Equal(got, want) {
		t.Fatalf("deliveries after the delete: %q, want %q", got, want)
	}
	// The attempt in flight when the webhook went reports: nothing to record.
	mustDo(t, d.DeliveryDone(ctx, inFlight.ID, 200))
	mustDo(t, d.DeliveryFailed(ctx, inFlight.ID, 1, 500, "x", time.Now(), true))
	evHook(t, d, "a", nil, nil, false)
	mustDo(t, evPush(ctx, d, "r", 4, user, "z"))
	want = []string{"a r 3 push pending", "b q 1 push pending", "b r 1 push pending", "b r 2 push pending", "b r 3 push pending"}
	if got := evDeliveries(t, u); !slices.Equal(got, want) {
		t.Fatalf("deliveries after adding a again: %q, want %q", got, want)
	}
	list, err := d.WebhookList(ctx)
	mustDo(t, err)
	if len(list) != 2 || list[0].Name != "a" || list[0].Pending != 1 || list[0].Delivered != 0 || list[1].Name != "b" || list[1].Pending != 4 {
		t.Fatalf("webhook list: %+v", list)
	}
}

// A push that saw a webhook before its delete committed writes a delivery
// for a webhook that is gone. That orphan is never claimed, does not keep
// the deliveries of other webhooks from being claimed, and the cleanup
// removes it.
func TestWebhookOrphanDeliveries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := dbtest.NewURL(t)
	d := evOpen(t, u, db.Options{})
	evHook(t, d, "gone", nil, nil, false)
	user := db.Actor{Name: "alice"}
	mustDo(t, evPush(ctx, d, "r", 1, user, "a"))

	// Hold the stream of r, so that the next push of r waits in the
	// statement that writes its events, whose snapshot has the webhook.
	conn, err := pgx.Connect(ctx, u)
	mustDo(t, err)
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	mustDo(t, err)
	_, err = tx.Exec(ctx, `SELECT 1 FROM event_streams WHERE repository = 'r' FOR UPDATE`)
	mustDo(t, err)
	done := make(chan error, 1)
	go func() { done <- evPush(ctx, d, "r", 2, user, "b") }()
	waitBlockedBy(t, u, conn.PgConn().PID(), func() bool { return len(done) > 0 })
	mustDo(t, d.WebhookDelete(ctx, "gone"))
	mustDo(t, tx.Commit(ctx))
	mustDo(t, <-done)
	if got := evDeliveries(t, u); !slices.Equal(got, []string{"(deleted) r 2 push pending"}) {
		t.Fatalf("deliveries: %q, want the orphan of seq 2", got)
	}

	// A webhook added afterwards gets the next event, later than the
	// orphan: a claim of one must return it, not spend itself on the
	// orphan.
	evHook(t, d, "stays", nil, nil, false)
	mustDo(t, evPush(ctx, d, "r", 3, user, "c"))
	if got := evLanes(evClaim(t, d, 1, time.Minute)); !slices.Equal(got, []string{"stays r 3/1"}) {
		t.Fatalf("a claim of one took %v, want the delivery to stays", got)
	}
	if got := evClaim(t, d, 10, time.Minute); len(got) != 0 {
		t.Fatalf("claimed %v", evLanes(got))
	}
	if n := dbtest.QueryInt(t, u, `SELECT count(*) FROM webhook_deliveries WHERE seq = 2 AND attempts = 0 AND claimed_by IS NULL`); n != 1 {
		t.Fatal("the orphan was claimed")
	}
	list, err := d.WebhookList(ctx)
	mustDo(t, err)
	if len(list) != 1 || list[0].Name != "stays" || list[0].Pending != 1 {
		t.Fatalf("webhook list: %+v", list)
	}

	n, err := d.EventsCleanup(ctx, time.Hour, 100)
	if err != nil || n != 1 {
		t.Fatalf("cleanup: %d, %v; want the orphan removed", n, err)
	}
	if got := evDeliveries(t, u); !slices.Equal(got, []string{"stays r 3 push pending"}) {
		t.Fatalf("deliveries after the cleanup: %q", got)
	}
}

// The cleanup deletes delivered and dead deliveries finished longer than
// the retention ago, then the events older than that which no delivery
// refers to; never a pending delivery or its event; at most batch rows of
// each per call.
func TestEventsCleanup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := dbtest.NewURL(t)
	d := evOpen(t, u, db.Options{})
	user := db.Actor{Name: "alice"}
	mustDo(t, evPush(ctx, d, "q", 0, user, "x")) // q 1: no webhook yet, no delivery
	evHook(t, d, "w", nil, nil, false)
	for i := 1; i <= 5; i++ {
		mustDo(t, evPush(ctx, d, "r", i, user, fmt.Sprintf("t%d", i))) // r 1..5
	}
	mustDo(t, d.DeliveryDone(ctx, evClaim(t, d, 1, time.Minute)["w r"].ID, 200)) // r 1 delivered
	dl := evClaim(t, d, 1, time.Minute)["w r"]
	mustDo(t, d.DeliveryFailed(ctx, dl.ID, dl.Attempt, 410, "gone", time.Now(), true)) // r 2 dead
	// All of that happened two hours ago.
	dbtest.Exec(t, u, `UPDATE events SET at = at - interval '2 hours'`)
	dbtest.Exec(t, u, `UPDATE webhook_deliveries SET done_at = done_at - interval '2 hours', created_at = created_at - interval '2 hours'`)
	mustDo(t, evPush(ctx, d, "r", 6, user, "t6"))                                // r 6 pending, recent
	mustDo(t, d.DeliveryDone(ctx, evClaim(t, d, 1, time.Minute)["w r"].ID, 200)) // r 3 delivered just now

	// One row of each kind per call: r 1's delivery, then q 1's event.
	n, err := d.EventsCleanup(ctx, time.Hour, 1)
	if err != nil || n != 2 {
		t.Fatalf("cleanup by one: %d, %v", n, err)
	}
	n, err = d.EventsCleanup(ctx, time.Hour, 1000)
	if err != nil || n != 3 { // r 2's delivery, the events r 1 and r 2
		t.Fatalf("cleanup: %d, %v", n, err)
	}
	if n, err = d.EventsCleanup(ctx, time.Hour, 1000); err != nil || n != 0 {
		t.Fatalf("cleanup with nothing to do: %d, %v", n, err)
	}
	if got := evSeqs(evAll(t, d, "r", 0)); !slices.Equal(got, []int64{3, 4, 5, 6}) {
		t.Errorf("events of r left: %v", got)
	}
	if evs, _, err := d.EventList(ctx, "q", 0, 10); err != nil || len(evs) != 0 {
		t.Errorf("events of q left: %v, %v (want none, and the repository still known)", evs, err)
	}
	want := []string{"w r 3 push delivered", "w r 4 push pending", "w r 5 push pending", "w r 6 push pending"}
	if got := evDeliveries(t, u); !slices.Equal(got, want) {
		t.Errorf("deliveries left: %q, want %q", got, want)
	}

	// With no retention at all, pending deliveries and their events stay,
	// however old.
	time.Sleep(2 * time.Millisecond)
	if n, err = d.EventsCleanup(ctx, 0, 1000); err != nil || n != 2 { // r 3's delivery and event
		t.Fatalf("cleanup without retention: %d, %v", n, err)
	}
	if got := evSeqs(evAll(t, d, "r", 0)); !slices.Equal(got, []int64{4, 5, 6}) {
		t.Errorf("events of r left: %v", got)
	}
	// The numbers go on from where they were.
	mustDo(t, evPush(ctx, d, "q", 9, user, "y"))
	if got := evSeqs(evAll(t, d, "q", 0)); !slices.Equal(got, []int64{2}) {
		t.Errorf("q after the cleanup: %v", got)
	}
}

// WebhookList gives back each webhook as added, with its counts and the
// time of its oldest pending event; WebhookGauges the same counts.
func TestWebhookListAndGauges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := evOpen(t, dbtest.NewURL(t), db.Options{})
	alpha := db.Webhook{Name: "alpha", URL: "https://alpha.example/hook?x=1", Secret: "k",
		Repos: []string{"lib/**"}, ReposRegexp: []string{auth.GlobRegex("lib/**")},
		Actions: []string{db.EventPush, db.EventDelete, db.EventPull}, Headers: []db.Header{{Name: "X-A", Value: "1"}, {Name: "X-B", Value: "two"}},
		Timeout: 1500 * time.Millisecond, Pulls: true}
	start := time.Now()
	mustDo(t, d.WebhookAdd(ctx, alpha))
	evHook(t, d, "beta", nil, nil, false)
	list, err := d.WebhookList(ctx)
	mustDo(t, err)
	if len(list) != 2 {
		t.Fatalf("list: %+v", list)
	}
	got := list[0]
	if got.CreatedAt.Before(start.Add(-time.Minute)) || got.CreatedAt.After(time.Now().Add(time.Minute)) {
		t.Errorf("created at %v", got.CreatedAt)
	}
	got.CreatedAt = time.Time{}
	if !reflect.DeepEqual(got, db.WebhookStatus{Webhook: alpha}) {
		t.Errorf("alpha listed as\n%+v\nadded as\n%+v", got, alpha)
	}
	if b := list[1]; b.Name != "beta" || b.Repos != nil || b.Actions != nil || b.Pulls || b.Pending != 0 {
		t.Errorf("beta listed as %+v", b)
	}

	user := db.Actor{Name: "alice"}
	for i := range 3 {
		mustDo(t, evPush(ctx, d, "lib/x", i, user, fmt.Sprintf("t%d", i)))
	}
	mustDo(t, evPush(ctx, d, "app", 5, user, "t")) // beta only
	claimed := evClaim(t, d, 10, time.Minute)
	mustDo(t, d.DeliveryDone(ctx, claimed["alpha lib/x"].ID, 200))
	mustDo(t, d.DeliveryDone(ctx, claimed["beta app"].ID, 200))
	mustDo(t, d.DeliveryFailed(ctx, claimed["beta lib/x"].ID, 1, 500, "x", time.Now(), true))
	evs := evAll(t, d, "lib/x", 0)
	oldest := evs[1].Timestamp

	list, err = d.WebhookList(ctx)
	mustDo(t, err)
	type counts struct {
		name                     string
		pending, delivered, dead int64
		oldest                   time.Time
	}
	var gotCounts []counts
	for _, w := range list {
		gotCounts = append(gotCounts, counts{w.Name, w.Pending, w.Delivered, w.Dead, w.OldestPending})
	}
	wantCounts := []counts{{"alpha", 2, 1, 0, oldest}, {"beta", 2, 1, 1, oldest}}
	if len(gotCounts) != 2 || gotCounts[0].name != "alpha" || gotCounts[1].name != "beta" {
		t.Fatalf("list: %+v", gotCounts)
	}
	for i := range wantCounts {
		g, w := gotCounts[i], wantCounts[i]
		if g.pending != w.pending || g.delivered != w.delivered || g.dead != w.dead || !g.oldest.Equal(w.oldest) {
			t.Errorf("counts of %s: %+v, want %+v", w.name, g, w)
		}
	}
	gauges, err := d.WebhookGauges(ctx)
	mustDo(t, err)
	if len(gauges) != 2 {
		t.Fatalf("gauges: %+v", gauges)
	}
	for i, g := range gauges {
		w := wantCounts[i]
		if g.Name != w.name || g.Pending != w.pending || g.Dead != w.dead || !g.OldestPending.Equal(w.oldest) {
			t.Errorf("gauge %+v, want %+v", g, w)
		}
	}
	// Nothing pending: no oldest.
	for range 3 {
		for _, dl := range evClaim(t, d, 10, time.Minute) {
			mustDo(t, d.DeliveryDone(ctx, dl.ID, 200))
		}
	}
	gauges, err = d.WebhookGauges(ctx)
	mustDo(t, err)
	for _, g := range gauges {
		if g.Pending != 0 || !g.OldestPending.IsZero() {
			t.Errorf("gauge with nothing pending: %+v", g)
		}
	}
}

// Claimers on two handles (two replicas), several each, claim at once:
// no delivery is claimed twice, no lane ever has two deliveries out at
// once, and every lane is delivered in seq order.
func TestDeliveriesConcurrentClaimers(t *testing.T) {
	t.Parallel()
	const (
		hooks    = 2
		repos    = 4
		perRepo  = 10
		claimers = 3 // per handle
	)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u := dbtest.NewURL(t)
	handles := []*db.DB{evOpen(t, u, db.Options{MaxConns: 6}), evOpen(t, u, db.Options{MaxConns: 6})}
	for h := range hooks {
		evHook(t, handles[0], fmt.Sprintf("w%d", h), nil, nil, false)
	}
	user := db.Actor{Name: "alice"}
	for r := range repos {
		for i := range perRepo {
			mustDo(t, evPush(ctx, handles[r%2], fmt.Sprintf("r%d", r), 100*r+i, user, fmt.Sprintf("t%d", i)))
		}
	}
	const total = hooks * repos * perRepo

	var (
		mu        sync.Mutex
		out       = map[string]int64{} // lane → delivery out
		delivered = map[int64]bool{}
		order     = map[string][]int64{}
	)
	errs := make(chan error, 2*claimers)
	var failed atomic.Bool // stops the others at the first error
	fail := func(err error) {
		failed.Store(true)
		errs <- err
	}
	var wg sync.WaitGroup
	for i := range 2 * claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := handles[i%2]
			rng := rand.New(rand.NewPCG(uint64(i), 3))
			for {
				mu.Lock()
				finished := len(delivered) == total
				mu.Unlock()
				if finished || failed.Load() {
					return
				}
				dls, err := d.DeliveriesClaim(ctx, fmt.Sprintf("claimer%d", i), 3, time.Minute)
				if err != nil {
					fail(err)
					return
				}
				mu.Lock()
				for _, dl := range dls {
					lane := dl.Webhook.Name + " " + dl.Event.Target.Repository
					if other, busy := out[lane]; busy {
						err = fmt.Errorf("lane %s: delivery %d (seq %d) claimed while %d is out", lane, dl.ID, dl.Event.Seq, other)
					} else if delivered[dl.ID] {
						err = fmt.Errorf("delivery %d claimed again after it was delivered", dl.ID)
					} else if dl.Attempt != 1 {
						err = fmt.Errorf("delivery %d: attempt %d", dl.ID, dl.Attempt)
					}
					out[lane] = dl.ID
				}
				mu.Unlock()
				if err != nil {
					fail(err)
					return
				}
				if len(dls) == 0 {
					time.Sleep(time.Duration(rng.IntN(500)) * time.Microsecond)
					continue
				}
				time.Sleep(time.Duration(rng.IntN(1000)) * time.Microsecond) // sending
				for _, dl := range dls {
					lane := dl.Webhook.Name + " " + dl.Event.Target.Repository
					// Out of the lane before the database hears of it:
					// the next of the lane can only be claimed after.
					mu.Lock()
					delete(out, lane)
					delivered[dl.ID] = true
					order[lane] = append(order[lane], dl.Event.Seq)
					mu.Unlock()
					if err := d.DeliveryDone(ctx, dl.ID, 200); err != nil {
						fail(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	for h := range hooks {
		for r := range repos {
			lane := fmt.Sprintf("w%d r%d", h, r)
			if !slices.Equal(order[lane], evRange(1, perRepo)) {
				t.Errorf("lane %s delivered %v", lane, order[lane])
			}
		}
	}
	if n := dbtest.QueryInt(t, u, `SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered' AND attempts = 1`); n != total {
		t.Errorf("%d deliveries delivered at the first attempt, want %d", n, total)
	}
}

// A push of many tags, deletes and untags in the same repository, blob
// uploads, mounts and unlinks, and garbage collection passes, on two
// handles at once, all writing events: nothing waits in a cycle. The
// connections raise deadlock_timeout far above any legitimate wait, so a
// deadlock is not broken by PostgreSQL and retried by withTx but stalls,
// and the stalled change fails the test.
func TestEventsLockOrder(t *testing.T) {
	t.Parallel()
	const (
		manifests = 4
		tagPool   = 40
		rounds    = 6
		stall     = 15 * time.Second // the statement deadline (5s) usually ends a stalled change first
	)
	ctx := context.Background()
	base := dbtest.NewURL(t)
	stalling := dbtest.StallDeadlocks(t, base)
	policy := db.GCPolicy{CollectUntagged: true} // review delay, retention and untagged age all zero
	var handles []*db.DB
	for range 2 {
		d, err := db.Open(ctx, stalling, db.Options{MaxConns: 10, GC: policy, Events: evConfig})
		if err != nil {
			t.Logf("cannot raise deadlock_timeout (%v); deadlocks will be retried, not caught", err)
			d, err = db.Open(ctx, base, db.Options{MaxConns: 10, GC: policy, Events: evConfig})
			mustDo(t, err)
		}
		t.Cleanup(d.Close)
		handles = append(handles, d)
	}
	evHook(t, handles[0], "all", nil, nil, false)
	evHook(t, handles[0], "app", []string{"app"}, []string{db.EventPush, db.EventDelete}, false)

	var writers, collectors sync.WaitGroup
	var stop atomic.Bool
	errs := make(chan error, 100)
	// run calls fn n times, or until stop when n is 0, each call bounded
	// by stall.
	run := func(wg *sync.WaitGroup, name string, seed uint64, n int, fn func(ctx context.Context, rng *rand.Rand) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 11))
			for i := 0; (n == 0 && !stop.Load()) || i < n; i++ {
				cctx, cancel := context.WithTimeout(ctx, stall)
				err := fn(cctx, rng)
				cancel()
				if err != nil {
					if errors.Is(err, context.DeadlineExceeded) {
						err = fmt.Errorf("stalled, waiting in a cycle: %w", err)
					}
					errs <- fmt.Errorf("%s: %w", name, err)
					return
				}
			}
		}()
	}
	for h, d := range handles {
		actor := db.Actor{Name: fmt.Sprintf("replica%d", h)}
		seed := uint64(10 * h)
		for p := range 2 {
			run(&writers, "push", seed+uint64(p), rounds, func(ctx context.Context, rng *rand.Rand) error {
				set := rng.Perm(tagPool)[:16+rng.IntN(tagPool-15)] // 16 to all 40, in random order
				tags := make([]string, len(set))
				for i, n := range set {
					tags[i] = fmt.Sprintf("t%02d", n)
				}
				return evPush(ctx, d, "app", 1+rng.IntN(manifests), actor, tags...)
			})
		}
		run(&writers, "delete", seed+3, rounds, func(ctx context.Context, rng *rand.Rand) error {
			err := d.ManifestDelete(ctx, "app", evDigest(1+rng.IntN(manifests)), actor)
			if errors.Is(err, db.ErrManifestUnknown) {
				return nil
			}
			return err
		})
		run(&writers, "untag", seed+4, rounds, func(ctx context.Context, rng *rand.Rand) error {
			_, err := d.TagDelete(ctx, "app", fmt.Sprintf("t%02d", rng.IntN(tagPool)), db.TagCondition{}, actor)
			if errors.Is(err, db.ErrTagUnknown) {
				return nil
			}
			return err
		})
		run(&writers, "blobs", seed+5, 2*rounds, func(ctx context.Context, rng *rand.Rand) error {
			dgst := evDigest(0xb0 + rng.IntN(4))
			var err error
			switch rng.IntN(3) {
			case 0:
				err = d.BlobCommit(ctx, db.BlobCommit{Repository: []string{"app", "lib"}[rng.IntN(2)], Digest: dgst, Size: 1}, nopBytes, actor)
			case 1:
				_, err = d.BlobMount(ctx, "lib", "app", dgst, actor)
			case 2:
				err = d.BlobUnlink(ctx, []string{"app", "lib"}[rng.IntN(2)], dgst, actor)
			}
			if errors.Is(err, db.ErrBlobUnknown) {
				return nil
			}
			return err
		})
		// A collector per replica, until the writers are done.
		run(&collectors, "gc", uint64(100+h), 0, func(ctx context.Context, _ *rand.Rand) error { return evGCPass(ctx, d) })
	}
	writers.Wait()
	stop.Store(true)
	collectors.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	// Every repository's events are 1..last without a gap, each with its
	// deliveries.
	d := handles[0]
	var total, appPushDelete int64
	for _, repo := range []string{"app", "lib"} {
		last := dbtest.QueryInt(t, base, `SELECT last_seq FROM event_streams WHERE repository = $1`, repo)
		evs := evAll(t, d, repo, 0)
		if !slices.Equal(evSeqs(evs), evRange(1, last)) {
			t.Errorf("%s: seqs %v, want 1..%d", repo, evSeqs(evs), last)
		}
		total += last
		for _, ev := range evs {
			if repo == "app" && (ev.Action == db.EventPush || ev.Action == db.EventDelete) {
				appPushDelete++
			}
		}
	}
	if n := dbtest.QueryInt(t, base, `SELECT count(*) FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id WHERE w.name = 'all'`); n != total {
		t.Errorf("webhook all: %d deliveries for %d events", n, total)
	}
	if n := dbtest.QueryInt(t, base, `SELECT count(*) FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id WHERE w.name = 'app'`); n != appPushDelete {
		t.Errorf("webhook app: %d deliveries for %d push and delete events of app", n, appPushDelete)
	}
	if n := dbtest.QueryInt(t, base, `SELECT count(*) FROM tags t JOIN manifests m ON m.id = t.manifest_id WHERE m.deleted_at IS NOT NULL`); n != 0 {
		t.Errorf("%d tags point at deleted manifests", n)
	}
	t.Logf("%d events", total)
}
