package events

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/db"
)

func TestWebhookSpec(t *testing.T) {
	t.Parallel()
	ok := WebhookSpec{Name: "hook", URL: "https://hooks.example/berth"}
	with := func(change func(*WebhookSpec)) WebhookSpec {
		s := ok
		change(&s)
		return s
	}
	long := strings.Repeat("a", 64)
	for _, c := range []struct {
		name string
		spec WebhookSpec
		err  string // a part of the error; "" for valid
		// check, for a valid spec, looks at the webhook made of it.
		check func(t *testing.T, w db.Webhook)
	}{
		{name: "minimal", spec: ok, check: func(t *testing.T, w db.Webhook) {
			if w.Name != "hook" || w.URL != "https://hooks.example/berth" || w.Timeout != DefaultTimeout ||
				w.Actions != nil || w.Repos != nil || w.Pulls || w.Headers != nil {
				t.Errorf("%+v", w)
			}
		}},

		// Names.
		{name: "name of one letter", spec: with(func(s *WebhookSpec) { s.Name = "a" })},
		{name: "name with . _ -", spec: with(func(s *WebhookSpec) { s.Name = "Ops.team_1-ci" })},
		{name: "name of 64", spec: with(func(s *WebhookSpec) { s.Name = long })},
		{name: "name of 65", spec: with(func(s *WebhookSpec) { s.Name = long + "a" }), err: "webhook name"},
		{name: "empty name", spec: with(func(s *WebhookSpec) { s.Name = "" }), err: "webhook name"},
		{name: "name starting with -", spec: with(func(s *WebhookSpec) { s.Name = "-hook" }), err: "webhook name"},
		{name: "name starting with .", spec: with(func(s *WebhookSpec) { s.Name = ".hook" }), err: "webhook name"},
		{name: "name with a space", spec: with(func(s *WebhookSpec) { s.Name = "my hook" }), err: "webhook name"},
		{name: "name with a slash", spec: with(func(s *WebhookSpec) { s.Name = "a/b" }), err: "webhook name"},
		{name: "name not ASCII", spec: with(func(s *WebhookSpec) { s.Name = "hoök" }), err: "webhook name"},
		{name: "name with a newline", spec: with(func(s *WebhookSpec) { s.Name = "hook\n" }), err: "webhook name"},

		// URLs.
		{name: "http URL with port and query", spec: with(func(s *WebhookSpec) { s.URL = "http://10.0.0.1:8080/hook?x=1" }),
			check: func(t *testing.T, w db.Webhook) {
				if w.URL != "http://10.0.0.1:8080/hook?x=1" {
					t.Errorf("URL %q", w.URL)
				}
			}},
		{name: "empty URL", spec: with(func(s *WebhookSpec) { s.URL = "" }), err: "webhook URL"},
		{name: "URL without scheme", spec: with(func(s *WebhookSpec) { s.URL = "hooks.example/berth" }), err: "webhook URL"},
		{name: "ftp URL", spec: with(func(s *WebhookSpec) { s.URL = "ftp://hooks.example/berth" }), err: "webhook URL"},
		{name: "URL without host", spec: with(func(s *WebhookSpec) { s.URL = "http:///berth" }), err: "webhook URL"},
		{name: "scheme only", spec: with(func(s *WebhookSpec) { s.URL = "https://" }), err: "webhook URL"},
		{name: "unparsable URL", spec: with(func(s *WebhookSpec) { s.URL = "http://hooks example/" }), err: "webhook URL"},
		{name: "relative URL", spec: with(func(s *WebhookSpec) { s.URL = "/berth" }), err: "webhook URL"},

		// Repository globs.
		{name: "globs", spec: with(func(s *WebhookSpec) { s.Repos = []string{"team-a/**", "base/*", "exact/name"} }),
			check: func(t *testing.T, w db.Webhook) {
				if fmt.Sprint(w.Repos) != "[team-a/** base/* exact/name]" || len(w.ReposRegexp) != 3 {
					t.Errorf("repos %v, regexps %v", w.Repos, w.ReposRegexp)
				}
			}},
		{name: "empty glob", spec: with(func(s *WebhookSpec) { s.Repos = []string{""} }), err: "glob"},
		{name: "upper-case glob", spec: with(func(s *WebhookSpec) { s.Repos = []string{"Team/*"} }), err: "glob"},
		{name: "glob with an empty component", spec: with(func(s *WebhookSpec) { s.Repos = []string{"a//b"} }), err: "glob"},
		{name: "glob with three stars", spec: with(func(s *WebhookSpec) { s.Repos = []string{"a/***"} }), err: "glob"},
		{name: "glob with a space", spec: with(func(s *WebhookSpec) { s.Repos = []string{"a b"} }), err: "glob"},
		{name: "a bad glob after a good one", spec: with(func(s *WebhookSpec) { s.Repos = []string{"ok/**", "bad?"} }), err: "glob"},

		// Actions.
		{name: "one action", spec: with(func(s *WebhookSpec) { s.Actions = []string{"push"} }), check: actions("[push]", false)},
		{name: "comma list", spec: with(func(s *WebhookSpec) { s.Actions = []string{"push,delete"} }), check: actions("[push delete]", false)},
		{name: "comma list with spaces, repeated flags, duplicates", spec: with(func(s *WebhookSpec) {
			s.Actions = []string{"push, tag", "untag", "tag ,push"}
		}), check: actions("[push tag untag]", false)},
		{name: "every action", spec: with(func(s *WebhookSpec) { s.Actions = []string{strings.Join(db.EventActions, ",")} }),
			check: actions(fmt.Sprint(db.EventActions), true)},
		{name: "pull means pulls", spec: with(func(s *WebhookSpec) { s.Actions = []string{"pull"} }), check: actions("[pull]", true)},
		{name: "pull in a list means pulls", spec: with(func(s *WebhookSpec) { s.Actions = []string{"push,pull"} }), check: actions("[push pull]", true)},
		{name: "--pulls adds pull to the list", spec: with(func(s *WebhookSpec) { s.Actions = []string{"push,tag"}; s.Pulls = true }),
			check: actions("[push tag pull]", true)},
		{name: "--pulls with pull listed already", spec: with(func(s *WebhookSpec) { s.Actions = []string{"pull,push"}; s.Pulls = true }),
			check: actions("[pull push]", true)},
		{name: "--pulls without a list: every action and pulls", spec: with(func(s *WebhookSpec) { s.Pulls = true }), check: actions("[]", true)},
		{name: "unknown action", spec: with(func(s *WebhookSpec) { s.Actions = []string{"pushed"} }), err: `action "pushed"`},
		{name: "upper-case action", spec: with(func(s *WebhookSpec) { s.Actions = []string{"PUSH"} }), err: `action "PUSH"`},
		{name: "empty action", spec: with(func(s *WebhookSpec) { s.Actions = []string{""} }), err: `action ""`},
		{name: "trailing comma", spec: with(func(s *WebhookSpec) { s.Actions = []string{"push,"} }), err: `action ""`},
		{name: "unknown action in a list", spec: with(func(s *WebhookSpec) { s.Actions = []string{"push,pul"} }), err: `action "pul"`},

		// Headers.
		{name: "headers", spec: with(func(s *WebhookSpec) {
			s.Headers = []string{"X-Team: infra", "authorization:Bearer a:b ", "x-empty:"}
		}), check: func(t *testing.T, w db.Webhook) {
			if got := fmt.Sprint(w.Headers); got != "[{X-Team infra} {Authorization Bearer a:b} {X-Empty }]" {
				t.Errorf("headers %s", got)
			}
		}},
		{name: "header without colon", spec: with(func(s *WebhookSpec) { s.Headers = []string{"X-Team infra"} }), err: "'Name: value'"},
		{name: "header without name", spec: with(func(s *WebhookSpec) { s.Headers = []string{": infra"} }), err: "'Name: value'"},
		{name: "header name with a space", spec: with(func(s *WebhookSpec) { s.Headers = []string{"X Team: infra"} }), err: "'Name: value'"},
		{name: "header value with a line break", spec: with(func(s *WebhookSpec) { s.Headers = []string{"X-A: a\r\nX-B: b"} }), err: "'Name: value'"},
		{name: "header value with a bare LF", spec: with(func(s *WebhookSpec) { s.Headers = []string{"X-A: a\nb"} }), err: "'Name: value'"},
		// Names that HTTP does not allow (not tokens), and values with
		// control characters: net/http refuses to send them, so every
		// delivery would fail.
		{name: "header name with @", spec: with(func(s *WebhookSpec) { s.Headers = []string{"X@Team: infra"} }), err: "'Name: value'"},
		{name: "header name with parentheses", spec: with(func(s *WebhookSpec) { s.Headers = []string{"X(Team): infra"} }), err: "'Name: value'"},
		{name: "header name not ASCII", spec: with(func(s *WebhookSpec) { s.Headers = []string{"X-Tëam: infra"} }), err: "'Name: value'"},
		{name: "header value with NUL", spec: with(func(s *WebhookSpec) { s.Headers = []string{"X-Team: in\x00fra"} }), err: "'Name: value'"},
		{name: "header value with a tab", spec: with(func(s *WebhookSpec) { s.Headers = []string{"X-Team: in\tfra"} }),
			check: func(t *testing.T, w db.Webhook) {
				if w.Headers[0].Value != "in\tfra" {
					t.Errorf("headers %q", w.Headers)
				}
			}},
		{name: "Content-Type is reserved", spec: with(func(s *WebhookSpec) { s.Headers = []string{"Content-Type: text/plain"} }), err: "Berth sets it"},
		{name: "reserved in lower case", spec: with(func(s *WebhookSpec) { s.Headers = []string{"content-length: 3"} }), err: "Berth sets it"},
		{name: "Host is reserved", spec: with(func(s *WebhookSpec) { s.Headers = []string{"Host: elsewhere"} }), err: "Berth sets it"},
		{name: "the signature is reserved", spec: with(func(s *WebhookSpec) { s.Headers = []string{"berth-signature: sha256=00"} }), err: "Berth sets it"},
		{name: "the event id is reserved", spec: with(func(s *WebhookSpec) { s.Headers = []string{"Berth-Event-Id: x"} }), err: "Berth sets it"},
		// The delivery sets User-Agent after the webhook's headers: one
		// given here would be dropped without a word.
		{name: "User-Agent is reserved", spec: with(func(s *WebhookSpec) { s.Headers = []string{"User-Agent: mine"} }), err: "Berth sets it"},

		// Timeouts.
		{name: "timeout 1ms", spec: with(func(s *WebhookSpec) { s.Timeout = time.Millisecond }), check: timeout(time.Millisecond)},
		{name: "timeout 5m", spec: with(func(s *WebhookSpec) { s.Timeout = 5 * time.Minute }), check: timeout(5 * time.Minute)},
		{name: "timeout 0 is the default", spec: with(func(s *WebhookSpec) { s.Timeout = 0 }), check: timeout(DefaultTimeout)},
		{name: "negative timeout", spec: with(func(s *WebhookSpec) { s.Timeout = -time.Second }), err: "timeout"},
		{name: "timeout over 5m", spec: with(func(s *WebhookSpec) { s.Timeout = 5*time.Minute + time.Millisecond }), err: "timeout"},
		// Stored in milliseconds: less than 1ms would be 0, which the
		// database refuses (and a request could not be sent in anyway).
		{name: "timeout under 1ms", spec: with(func(s *WebhookSpec) { s.Timeout = 500 * time.Microsecond }), err: "timeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w, err := c.spec.Webhook()
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.check != nil {
				c.check(t, w)
			}
		})
	}
}

func actions(want string, pulls bool) func(*testing.T, db.Webhook) {
	return func(t *testing.T, w db.Webhook) {
		t.Helper()
		if got := fmt.Sprint(w.Actions); got != want || w.Pulls != pulls {
			t.Errorf("actions %s, pulls %v; want %s, %v", got, w.Pulls, want, pulls)
		}
	}
}

func timeout(want time.Duration) func(*testing.T, db.Webhook) {
	return func(t *testing.T, w db.Webhook) {
		t.Helper()
		if w.Timeout != want {
			t.Errorf("timeout %v, want %v", w.Timeout, want)
		}
	}
}

// A webhook's filters, as Webhook makes them, select its deliveries in the
// outbox's SQL: the globs' regular expressions match in PostgreSQL, the
// actions and pulls too.
func TestWebhookFiltersInTheOutbox(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.hook(WebhookSpec{Name: "all", URL: "http://127.0.0.1:1/"})
	w.hook(WebhookSpec{Name: "team-a", URL: "http://127.0.0.1:1/", Repos: []string{"team-a/*"}})
	w.hook(WebhookSpec{Name: "tags-only", URL: "http://127.0.0.1:1/", Actions: []string{"tag"}})
	w.hook(WebhookSpec{Name: "deep", URL: "http://127.0.0.1:1/", Repos: []string{"team-a/**", "x.y"}, Actions: []string{"push,tag"}})

	w.push("team-a/app", "v1")     // push: all, team-a, deep
	w.push("team-a/app/sub", "v1") // push: all, deep (team-a/* is one component)
	w.push("team-b/app", "v1")     // push: all
	w.push("x.y", "v1")            // push: all, deep
	w.push("xzy", "v1")            // push: all (the dot is no wildcard)
	// A tag of an existing manifest is a tag event: all, team-a, tags-only, deep.
	dgst := w.push("team-a/app", "v2")
	if _, err := w.db.ManifestStore(t.Context(), db.ManifestPut{Repository: "team-a/app", Digest: dgst,
		MediaType: "application/vnd.oci.image.index.v1+json", Payload: []byte("ignored: exists"), Tags: []string{"v3"}}, db.Actor{Name: "tester"}); err != nil {
		t.Fatal(err)
	}
	for hook, want := range map[string]int64{"all": 7, "team-a": 3, "tags-only": 1, "deep": 5} {
		if n := w.count(`SELECT count(*) FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id WHERE w.name = $1`, hook); n != want {
			t.Errorf("webhook %s: %d deliveries, want %d", hook, n, want)
		}
	}
	if n := w.count(`SELECT count(*) FROM events WHERE action = 'tag'`); n != 1 {
		t.Errorf("%d tag events, want 1", n)
	}
}
