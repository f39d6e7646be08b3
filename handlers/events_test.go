package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/events"
	"github.com/berth-registry/berth/handlers"
	"github.com/berth-registry/berth/metrics"
)

// events reads a page of the events API; header is "Name: value" pairs.
func (r *registry) events(query string, header ...string) (response, []db.Event) {
	r.t.Helper()
	resp := r.do("GET", "/berth/v1/events?"+query, nil, header...)
	if resp.StatusCode != http.StatusOK {
		return resp, nil
	}
	var body struct {
		Events []db.Event `json:"events"`
	}
	if err := json.Unmarshal(resp.body, &body); err != nil {
		r.t.Fatalf("events body %s: %v", resp.body, err)
	}
	if body.Events == nil {
		r.t.Fatalf("events body %s: no events list", resp.body)
	}
	return resp, body.Events
}

// storeTagged stores n manifests in repo through the db API, tagged t1..tn:
// n push events.
func storeTagged(t *testing.T, d *db.DB, repo string, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		payload := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[],"annotations":{"n":"%d"}}`, mtIndex, i))
		if _, err := d.ManifestStore(context.Background(), db.ManifestPut{Repository: repo, Digest: digest.FromBytes(payload).String(),
			MediaType: mtIndex, Payload: payload, Tags: []string{fmt.Sprint("t", i)}}, db.Actor{Name: "tester"}); err != nil {
			t.Fatal(err)
		}
	}
}

func seqs(evs []db.Event) string {
	var s []string
	for _, ev := range evs {
		s = append(s, fmt.Sprint(ev.Seq))
	}
	return "[" + strings.Join(s, " ") + "]"
}

// quickBasicRegistry is newBasicRegistry's world (see authWorld) with
// passwords hashed at bcrypt's minimum cost: at the default cost, under
// -race, each hash and each first check of a password takes seconds.
func quickBasicRegistry(t *testing.T) *registry {
	t.Helper()
	r := newRegistryWith(t, func(o *handlers.Options) { o.Auth = handlers.AuthConfig{Mode: handlers.AuthBasic} })
	quickAuthWorld(t, r.db)
	return r
}

func quickAuthWorld(t *testing.T, d *db.DB) {
	t.Helper()
	ctx := context.Background()
	for _, u := range []struct {
		name  string
		admin bool
	}{{"alice", false}, {"bob", false}, {"root", true}} {
		hash, err := bcrypt.GenerateFromPassword([]byte(u.name+"-secret"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.UserCreate(ctx, u.name, string(hash), u.admin); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []db.Grant{
		{Subject: "alice", RepoGlob: "team-a/**", Actions: []string{"delete", "pull", "push"}},
		{Subject: "bob", RepoGlob: "team-a/**", Actions: []string{"pull"}},
		{Subject: "anonymous", RepoGlob: "public/**", Actions: []string{"pull"}},
	} {
		if err := d.GrantSet(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
}

var linkNext = regexp.MustCompile(`^<([^>]+)>; rel="next"$`)

// Pages of n events follow each other through the Link header; the last
// page has none, and a consumer resuming after the last seq gets an empty
// page.
func TestEventsPagination(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	storeTagged(t, r.db, "team/app", 5)
	storeTagged(t, r.db, "team/other", 2)

	resp, evs := r.events("repository=team/app")
	resp.expect(t, http.StatusOK, "")
	if seqs(evs) != "[1 2 3 4 5]" || resp.Header.Get("Link") != "" {
		t.Fatalf("default page: seqs %s, Link %q", seqs(evs), resp.Header.Get("Link"))
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	for i, ev := range evs {
		if ev.Action != db.EventPush || ev.Target.Repository != "team/app" || ev.Target.Tag != fmt.Sprint("t", i+1) || ev.ID == "" || ev.Timestamp.IsZero() {
			t.Errorf("event %d: %+v", i, ev)
		}
	}

	// n=2: three pages, by following Link.
	query := "repository=team/app&n=2"
	var pages []string
	for query != "" {
		resp, evs := r.events(query)
		resp.expect(t, http.StatusOK, "")
		pages = append(pages, seqs(evs))
		query = ""
		if link := resp.Header.Get("Link"); link != "" {
			m := linkNext.FindStringSubmatch(link)
			if m == nil {
				t.Fatalf("Link %q", link)
			}
			u, err := url.Parse(m[1])
			if err != nil || u.Path != "/berth/v1/events" {
				t.Fatalf("Link %q names %v", link, u)
			}
			query = u.RawQuery
		}
		if len(pages) > 5 {
			t.Fatal("Link goes round in circles")
		}
	}
	if got := strings.Join(pages, " "); got != "[1 2] [3 4] [5]" {
		t.Errorf("pages %s", got)
	}

	for query, want := range map[string]string{
		"repository=team/app&after=3":          "[4 5]",
		"repository=team/app&after=3&n=1":      "[4]",
		"repository=team/app&after=0&n=5":      "[1 2 3 4 5]",
		"repository=team/app&after=5":          "[]", // caught up
		"repository=team/app&after=99":         "[]",
		"repository=team/app&n=1000000":        "[1 2 3 4 5]", // capped, not refused
		"repository=team/app&after=002&n=0002": "[3 4]",       // leading zeros are digits
		"repository=team/other":                "[1 2]",       // numbered per repository
		"after=1&repository=team/other&n=1":    "[2]",
	} {
		resp, evs := r.events(query)
		resp.expect(t, http.StatusOK, "")
		if seqs(evs) != want {
			t.Errorf("%s: seqs %s, want %s", query, seqs(evs), want)
		}
	}
	// A full page that happens to be the last one: no Link (nothing more).
	resp, _ = r.events("repository=team/app&after=3&n=2")
	if link := resp.Header.Get("Link"); link != "" {
		t.Errorf("Link %q on the last page", link)
	}
	resp, _ = r.events("repository=team/app&after=2&n=2")
	if link := resp.Header.Get("Link"); !strings.Contains(link, "after=4") {
		t.Errorf("Link %q after a page ending at 4", link)
	}
}

func TestEventsErrors(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	storeTagged(t, r.db, "team/app", 1)
	for _, c := range []struct {
		query  string
		status int
		code   string
	}{
		{"", http.StatusBadRequest, "NAME_INVALID"},
		{"repository=", http.StatusBadRequest, "NAME_INVALID"},
		{"repository=Team/App", http.StatusBadRequest, "NAME_INVALID"},
		{"repository=team//app", http.StatusBadRequest, "NAME_INVALID"},
		{"repository=team/app/", http.StatusBadRequest, "NAME_INVALID"},
		{"repository=" + url.QueryEscape("team/app\n"), http.StatusBadRequest, "NAME_INVALID"},
		{"repository=team/app&after=x", http.StatusBadRequest, "UNSUPPORTED"},
		{"repository=team/app&after=-1", http.StatusBadRequest, "UNSUPPORTED"},
		{"repository=team/app&after=%2B1", http.StatusBadRequest, "UNSUPPORTED"},
		{"repository=team/app&after=", http.StatusOK, ""}, // empty: from the start
		{"repository=team/app&after=99999999999999999999", http.StatusBadRequest, "UNSUPPORTED"},
		{"repository=team/app&n=0", http.StatusBadRequest, "UNSUPPORTED"},
		{"repository=team/app&n=-5", http.StatusBadRequest, "UNSUPPORTED"},
		{"repository=team/app&n=ten", http.StatusBadRequest, "UNSUPPORTED"},
		{"repository=team/app&n=1.5", http.StatusBadRequest, "UNSUPPORTED"},
		{"repository=team/nothing", http.StatusNotFound, "NAME_UNKNOWN"},
		{"repository=nothing&after=3", http.StatusNotFound, "NAME_UNKNOWN"},
	} {
		resp := r.do("GET", "/berth/v1/events?"+c.query, nil)
		if resp.StatusCode != c.status || resp.errorCode() != c.code {
			t.Errorf("?%s: %d %q, want %d %q; body %s", c.query, resp.StatusCode, resp.errorCode(), c.status, c.code, resp.body)
		}
	}
}

// Reading a repository's events takes what pulling it takes, and is
// refused the way the repository's other reads are.
func TestEventsAuthorization(t *testing.T) {
	t.Parallel()
	r := quickBasicRegistry(t)
	alice, bob, root := basicHeader("alice", "alice-secret"), basicHeader("bob", "bob-secret"), basicHeader("root", "root-secret")
	for _, c := range []struct{ repo, who string }{{"team-a/app", alice}, {"team-b/app", root}, {"public/app", root}} {
		cfg := []byte(`{"repo":"` + c.repo + `"}`)
		cd := digest.FromBytes(cfg)
		r.do("POST", "/v2/"+c.repo+"/blobs/uploads/?digest="+cd.String(), cfg, c.who).expect(t, http.StatusCreated, "")
		r.do("PUT", "/v2/"+c.repo+"/manifests/v1", ociManifest(cd, int64(len(cfg)), cd, int64(len(cfg))), c.who,
			"Content-Type: "+mtManifest).expect(t, http.StatusCreated, "")
	}

	// With a pull grant: the events.
	for _, who := range []string{alice, bob, root} {
		resp, evs := r.events("repository=team-a/app", who)
		resp.expect(t, http.StatusOK, "")
		if seqs(evs) != "[1 2]" {
			t.Errorf("seqs %s", seqs(evs))
		}
	}
	// Anonymous may pull public/**.
	resp, evs := r.events("repository=public/app")
	resp.expect(t, http.StatusOK, "")
	if len(evs) != 2 {
		t.Errorf("anonymous reads %d events of public/app", len(evs))
	}

	// Without: as a manifest read of the same repository is refused.
	for _, c := range []struct {
		name, repo string
		header     []string
		status     int
		code       string
	}{
		{"bob on a repository he may not pull", "team-b/app", []string{bob}, http.StatusForbidden, "DENIED"},
		{"bob on an unknown repository he may not pull", "team-b/none", []string{bob}, http.StatusForbidden, "DENIED"},
		{"anonymous", "team-a/app", nil, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"anonymous on an unknown repository", "team-a/none", nil, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"a wrong password", "team-a/app", []string{basicHeader("bob", "wrong")}, http.StatusUnauthorized, "UNAUTHORIZED"},
	} {
		manifest := r.do("GET", "/v2/"+c.repo+"/manifests/v1", nil, c.header...)
		resp := r.do("GET", "/berth/v1/events?repository="+c.repo, nil, c.header...)
		if resp.StatusCode != c.status || resp.errorCode() != c.code {
			t.Errorf("%s: %d %q, want %d %q; body %s", c.name, resp.StatusCode, resp.errorCode(), c.status, c.code, resp.body)
		}
		if resp.StatusCode != manifest.StatusCode || resp.errorCode() != manifest.errorCode() ||
			resp.Header.Get("WWW-Authenticate") != manifest.Header.Get("WWW-Authenticate") {
			t.Errorf("%s: events %d %q %q, a manifest read %d %q %q", c.name, resp.StatusCode, resp.errorCode(), resp.Header.Get("WWW-Authenticate"),
				manifest.StatusCode, manifest.errorCode(), manifest.Header.Get("WWW-Authenticate"))
		}
		if c.status == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") != `Basic realm="berth"` {
			t.Errorf("%s: challenge %q", c.name, resp.Header.Get("WWW-Authenticate"))
		}
	}
	// bob may pull team-a/**: an unknown repository there is unknown.
	r.do("GET", "/berth/v1/events?repository=team-a/none", nil, bob).expect(t, http.StatusNotFound, "NAME_UNKNOWN")
}

// An event made through the API describes the request that made it.
func TestEventsCarryTheRequest(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name     string
		auth     handlers.AuthConfig
		header   []string
		actor    string // "": anonymous@<client address>
		external string // the base URL of target.url; "": http://<Host>
	}{
		{name: "anonymous"},
		{name: "basic", auth: handlers.AuthConfig{Mode: handlers.AuthBasic}, header: []string{basicHeader("alice", "alice-secret")}, actor: "alice"},
		{name: "external URL", auth: handlers.AuthConfig{ExternalURL: "https://registry.example/"}, external: "https://registry.example"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := newRegistryWith(t, func(o *handlers.Options) { o.Auth = c.auth })
			if c.auth.Mode != "" {
				quickAuthWorld(t, r.db)
			}
			const repo = "team-a/app"
			ua := "events-test/1.0 (" + c.name + ")"
			hdr := append([]string{"User-Agent: " + ua}, c.header...)
			cfg := []byte(`{"os":"linux"}`)
			cd := digest.FromBytes(cfg)
			blob := r.do("POST", "/v2/"+repo+"/blobs/uploads/?digest="+cd.String(), cfg, hdr...)
			blob.expect(t, http.StatusCreated, "")
			put := r.do("PUT", "/v2/"+repo+"/manifests/v1", ociManifest(cd, int64(len(cfg)), cd, int64(len(cfg))),
				append(hdr, "Content-Type: "+mtManifest)...)
			put.expect(t, http.StatusCreated, "")

			resp, evs := r.events("repository="+repo, c.header...)
			resp.expect(t, http.StatusOK, "")
			if len(evs) != 2 {
				t.Fatalf("%d events: %+v", len(evs), evs)
			}
			host := strings.TrimPrefix(r.srv.URL, "http://")
			base := c.external
			if base == "" {
				base = "http://" + host
			}
			actor := c.actor
			if actor == "" {
				actor = "anonymous@127.0.0.1"
			}
			for i, want := range []struct {
				method, kind, requestID string
			}{{"POST", "blobs", blob.Header.Get("X-Request-Id")}, {"PUT", "manifests", put.Header.Get("X-Request-Id")}} {
				ev := evs[i]
				if ev.Action != db.EventPush || ev.Request.Method != want.method || ev.Request.UserAgent != ua ||
					ev.Request.Host != host || ev.Request.ID != want.requestID || want.requestID == "" || ev.Actor.Name != actor {
					t.Errorf("event %d: action %s, request %+v, actor %+v", i, ev.Action, ev.Request, ev.Actor)
				}
				if addrHost, port, err := net.SplitHostPort(ev.Request.Addr); err != nil || addrHost != "127.0.0.1" || port == "" {
					t.Errorf("event %d: request.addr %q", i, ev.Request.Addr)
				}
				if prefix := base + "/v2/" + repo + "/" + want.kind + "/sha256:"; !strings.HasPrefix(ev.Target.URL, prefix) {
					t.Errorf("event %d: target.url %q, want it to start with %s", i, ev.Target.URL, prefix)
				}
			}
			if evs[1].Target.Tag != "v1" || evs[1].Target.MediaType != mtManifest ||
				evs[1].Target.URL != base+"/v2/"+repo+"/manifests/"+put.Header.Get("Docker-Content-Digest") {
				t.Errorf("manifest event target %+v", evs[1].Target)
			}
		})
	}
}

// A manifest GET and a whole blob GET are pulls, recorded by the real
// pull buffer for a webhook that wants pulls; a HEAD, a 304 and a blob GET
// with Range are not.
func TestPullEventsRecorded(t *testing.T) {
	t.Parallel()
	var pulls *events.Pulls
	r := newRegistryWith(t, func(o *handlers.Options) {
		if err := o.DB.WebhookAdd(context.Background(), db.Webhook{Name: "pulls", URL: "http://127.0.0.1:1/", Timeout: time.Second, Pulls: true}); err != nil {
			t.Fatal(err)
		}
		pulls = events.NewPulls(o.DB, 10*time.Millisecond, discard())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			pulls.Run(ctx)
		}()
		t.Cleanup(func() { cancel(); <-done }) // before the database closes
		o.Pulls = pulls
	})
	waitUntil(t, "the pull buffer to see the webhook", pulls.Wanted)
	const repo = "team/app"
	body := r.image(repo, "pulled")
	md := r.pushManifest(repo, "v1", mtManifest, body)
	layer := []byte("layer of pulled")
	ld := digest.FromBytes(layer)

	// Not pulls.
	r.do("HEAD", "/v2/"+repo+"/manifests/v1", nil).expect(t, http.StatusOK, "")
	r.do("GET", "/v2/"+repo+"/manifests/v1", nil, `If-None-Match: "`+md.String()+`"`).expect(t, http.StatusNotModified, "")
	r.do("HEAD", "/v2/"+repo+"/blobs/"+ld.String(), nil).expect(t, http.StatusOK, "")
	r.do("GET", "/v2/"+repo+"/blobs/"+ld.String(), nil, "Range: bytes=0-3").expect(t, http.StatusPartialContent, "")
	r.do("GET", "/v2/"+repo+"/manifests/v2", nil).expect(t, http.StatusNotFound, "MANIFEST_UNKNOWN")
	// Pulls.
	r.do("GET", "/v2/"+repo+"/manifests/v1", nil, "User-Agent: puller/1").expect(t, http.StatusOK, "")
	r.do("GET", "/v2/"+repo+"/manifests/"+md.String(), nil).expect(t, http.StatusOK, "")
	r.do("GET", "/v2/"+repo+"/blobs/"+ld.String(), nil).expect(t, http.StatusOK, "")

	// The buffer is written in order: once the last pull is an event, any
	// pull recorded before it is too.
	var got []db.Event
	waitUntil(t, "the pull events", func() bool {
		_, evs := r.events("repository=" + repo)
		got = got[:0]
		for _, ev := range evs {
			if ev.Action == db.EventPull {
				got = append(got, ev)
			}
		}
		return len(got) >= 3
	})
	if len(got) != 3 || pulls.Written() != 3 || pulls.Dropped() != 0 {
		t.Fatalf("%d pull events (written %d, dropped %d): %+v", len(got), pulls.Written(), pulls.Dropped(), got)
	}
	host := strings.TrimPrefix(r.srv.URL, "http://")
	byTag, byDigest, blob := got[0], got[1], got[2]
	if byTag.Target.Tag != "v1" || byTag.Target.Digest != md.String() || byTag.Target.MediaType != mtManifest ||
		byTag.Target.Size != int64(len(body)) || byTag.Request.Method != "GET" || byTag.Request.UserAgent != "puller/1" ||
		byTag.Actor.Name != "anonymous@127.0.0.1" || byTag.Target.URL != "http://"+host+"/v2/"+repo+"/manifests/"+md.String() {
		t.Errorf("pull by tag: %+v", byTag)
	}
	if byDigest.Target.Tag != "" || byDigest.Target.Digest != md.String() {
		t.Errorf("pull by digest: %+v", byDigest.Target)
	}
	if blob.Target.Digest != ld.String() || blob.Target.Size != int64(len(layer)) ||
		blob.Target.URL != "http://"+host+"/v2/"+repo+"/blobs/"+ld.String() {
		t.Errorf("blob pull: %+v", blob.Target)
	}
	if n := dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id WHERE e.action = 'pull'`); n != 3 {
		t.Errorf("%d deliveries of pull events, want 3", n)
	}
}

// Without a webhook that wants pulls, GETs record nothing.
func TestPullEventsNotWanted(t *testing.T) {
	t.Parallel()
	var pulls *events.Pulls
	r := newRegistryWith(t, func(o *handlers.Options) {
		pulls = events.NewPulls(o.DB, 10*time.Millisecond, discard())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			pulls.Run(ctx)
		}()
		t.Cleanup(func() { cancel(); <-done })
		o.Pulls = pulls
	})
	const repo = "team/app"
	r.pushManifest(repo, "v1", mtManifest, r.image(repo, "unwanted"))
	r.do("GET", "/v2/"+repo+"/manifests/v1", nil).expect(t, http.StatusOK, "")
	_, evs := r.events("repository=" + repo)
	for _, ev := range evs {
		if ev.Action == db.EventPull {
			t.Errorf("a pull event nobody wanted: %+v", ev)
		}
	}
	if pulls.Wanted() || pulls.Written() != 0 {
		t.Errorf("wanted %v, written %d", pulls.Wanted(), pulls.Written())
	}
}

// A dead-lettered delivery shows in /metrics.
func TestEventsDeadLetterMetrics(t *testing.T) {
	t.Parallel()
	refuse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(refuse.Close)
	r := newRegistryWith(t, func(o *handlers.Options) {
		wh, err := events.WebhookSpec{Name: "ci", URL: refuse.URL}.Webhook()
		if err != nil {
			t.Fatal(err)
		}
		if err := o.DB.WebhookAdd(context.Background(), wh); err != nil {
			t.Fatal(err)
		}
		worker := events.NewWorker(o.DB, events.Config{Owner: "test", MaxAttempts: 2, Backoff: 5 * time.Millisecond,
			Poll: 10 * time.Millisecond, Logger: discard()})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			worker.Run(ctx)
		}()
		t.Cleanup(func() { cancel(); <-done })
		o.Registry = metrics.Registry(o.DB, nil, worker, nil, discard())
	})
	r.pushBlob("team/app", []byte("one event")) // one push event
	waitUntil(t, "the delivery dead-lettered", func() bool {
		return dbtest.QueryInt(t, r.dbURL, `SELECT count(*) FROM webhook_deliveries WHERE state = 'dead'`) == 1
	})
	resp := r.do("GET", "/metrics", nil)
	resp.expect(t, http.StatusOK, "")
	for _, line := range []string{
		`berth_webhook_dead{webhook="ci"} 1`,
		`berth_webhook_pending{webhook="ci"} 0`,
		`berth_webhook_oldest_pending_seconds{webhook="ci"} 0`,
		`berth_webhook_deliveries_total{result="dead",webhook="ci"} 1`,
		`berth_webhook_deliveries_total{result="retried",webhook="ci"} 1`,
	} {
		if !strings.Contains("\n"+string(resp.body), "\n"+line+"\n") {
			t.Errorf("/metrics lacks %s", line)
		}
	}
	if t.Failed() {
		for _, l := range strings.Split(string(resp.body), "\n") {
			if strings.HasPrefix(l, "berth_webhook") {
				t.Log(l)
			}
		}
	}
}

// waitUntil polls cond; the deadline only keeps a broken test from
// hanging.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
