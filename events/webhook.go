package events

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
)

// DefaultTimeout is how long a webhook has to answer one request.
const DefaultTimeout = 5 * time.Second

// maxTimeout bounds a webhook's timeout: a claim lasts at least twice as
// long, and another replica takes over only after that.
const maxTimeout = 5 * time.Minute

// WebhookSpec is a webhook as `berth webhook add` takes it.
type WebhookSpec struct {
	Name, URL, Secret string
	Repos             []string // globs
	Actions           []string // may hold comma-separated lists
	Headers           []string // "Name: value"
	Timeout           time.Duration
	Pulls             bool
}

var webhookName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// reservedHeaders are set by the delivery itself.
var reservedHeaders = []string{"Content-Type", "Content-Length", "Host", "User-Agent", SignatureHeader, EventIDHeader}

// validHeader reports whether net/http will send a header of this name
// and value: a name of RFC 9110 token characters, a value without control
// characters other than tab. net/http refuses anything else at every
// request, so such a header would fail every delivery.
func validHeader(name, value string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// Webhook validates s and returns the webhook to store.
func (s WebhookSpec) Webhook() (db.Webhook, error) {
	w := db.Webhook{Name: s.Name, Secret: s.Secret, Timeout: s.Timeout, Pulls: s.Pulls}
	if !webhookName.MatchString(s.Name) {
		return w, fmt.Errorf("webhook name %q: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", s.Name)
	}
	u, err := url.Parse(s.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return w, fmt.Errorf("webhook URL %q: give an absolute http:// or https:// URL", s.URL)
	}
	w.URL = u.String()
	for _, g := range s.Repos {
		if err := auth.ValidGlob(g); err != nil {
			return w, err
		}
		w.Repos = append(w.Repos, g)
		w.ReposRegexp = append(w.ReposRegexp, auth.GlobRegex(g))
	}
	for _, list := range s.Actions {
		for _, a := range strings.Split(list, ",") {
			a = strings.TrimSpace(a)
			if !slices.Contains(db.EventActions, a) {
				return w, fmt.Errorf("action %q: use %s", a, strings.Join(db.EventActions, ", "))
			}
			if !slices.Contains(w.Actions, a) {
				w.Actions = append(w.Actions, a)
			}
		}
	}
	if slices.Contains(w.Actions, db.EventPull) {
		w.Pulls = true // asking for the action is asking for pulls
	} else if w.Pulls && w.Actions != nil {
		w.Actions = append(w.Actions, db.EventPull)
	}
	for _, h := range s.Headers {
		name, value, ok := strings.Cut(h, ":")
		name = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name))
		if !ok || name == "" || !validHeader(name, value) {
			return w, fmt.Errorf("header %q: write it as 'Name: value'", h)
		}
		if slices.ContainsFunc(reservedHeaders, func(r string) bool { return http.CanonicalHeaderKey(r) == name }) {
			return w, fmt.Errorf("header %s: Berth sets it on every request", name)
		}
		w.Headers = append(w.Headers, db.Header{Name: name, Value: strings.TrimSpace(value)})
	}
	if w.Timeout == 0 {
		w.Timeout = DefaultTimeout
	}
	if w.Timeout < time.Millisecond || w.Timeout > maxTimeout {
		return w, errors.New("timeout: between 1ms and 5m")
	}
	return w, nil
}
