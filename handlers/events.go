package handlers

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/berth-registry/berth/auth"
)

// Page sizes of the events API.
const (
	defaultEventsPage = 100
	maxEventsPage     = 1000
)

// events serves GET /berth/v1/events?repository=<name>&after=<seq>&n=<count>:
// the events of one repository with seq > after, in seq order, for a
// consumer that pulls instead of receiving webhooks. Whoever may pull the
// repository may read its events. A Link header names the next page; a
// consumer that stores the last seq it processed resumes from there.
func (h *Handler) events(w http.ResponseWriter, r *http.Request) error {
	setRoute(r.Context(), "events")
	q := r.URL.Query()
	repo := q.Get("repository")
	if !validName(repo) {
		return errorf(CodeNameInvalid, "repository must be a repository name, not %q", clip(repo)).withStatus(http.StatusBadRequest)
	}
	var after int64
	if s := q.Get("after"); s != "" {
		v, ok := parseDecimal(s)
		if !ok {
			return errorf(CodeUnsupported, "after must be a seq in decimal digits, not %q", clip(s)).withStatus(http.StatusBadRequest)
		}
		after = v
	}
	n := defaultEventsPage
	if s := q.Get("n"); s != "" {
		v, ok := parseDecimal(s)
		if !ok || v == 0 {
			return errorf(CodeUnsupported, "n must be a positive number of events in decimal digits, not %q", clip(s)).withStatus(http.StatusBadRequest)
		}
		n = int(min(v, maxEventsPage))
	}
	need := auth.Scope{Type: auth.TypeRepository, Name: repo, Actions: []string{auth.Pull}}
	r, err := h.authorizeRequest(r, nil, &need)
	if err != nil {
		return err
	}
	evs, more, err := h.db.EventList(r.Context(), repo, after, n)
	if err != nil {
		return err
	}
	if more {
		next := url.Values{"repository": {repo}, "after": {strconv.FormatInt(evs[len(evs)-1].Seq, 10)}, "n": {strconv.Itoa(n)}}
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, next.Encode()))
	}
	return writeJSON(w, r, "application/json", struct {
		Events any `json:"events"`
	}{evs})
}
