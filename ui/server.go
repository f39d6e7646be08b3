package ui

import (
	"bytes"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/berth-registry/berth/digests"
	"github.com/berth-registry/berth/internal/names"
)

// Every response of the interface carries these: the pages load nothing
// from elsewhere and run no inline script, so a value that escaped its
// escaping could still not run; they cannot be framed (clickjacking); a
// page is never cached, since what it shows depends on the viewer.
func securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
}

// request is one request to the interface, with what every page needs.
type request struct {
	w      http.ResponseWriter
	r      *http.Request
	viewer Viewer
	csrf   string // the token the page's forms carry
	seed   string
}

// ServeHTTP routes a request under Prefix.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w.Header())
	path := strings.TrimPrefix(r.URL.Path, Prefix)
	if strings.HasPrefix(path, "/static/") {
		w.Header().Set("Cache-Control", "no-cache")
		s.static.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if path == "" {
		http.Redirect(w, r, Prefix+"/", http.StatusMovedPermanently)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rq := &request{w: w, r: r}
	rq.seed = s.csrfSeed(w, r)
	rq.csrf = csrfToken(rq.seed)
	session := ""
	if c, err := r.Cookie(sessionCookie); err == nil {
		session = c.Value
	}
	r, viewer, err := s.backend.Session(r, session)
	if err != nil {
		if errors.Is(err, ErrSession) {
			s.setCookie(w, r, sessionCookie, "", -1)
			rq.seed = s.csrfSeed(w, stripCookie(r, sessionCookie))
			rq.csrf = csrfToken(rq.seed)
			rq.r = r
			s.render(rq, http.StatusUnauthorized, "login", "Log in", loginPage{Next: r.URL.RequestURI()}, err.Error())
			return
		}
		s.fail(rq, err)
		return
	}
	rq.r, rq.viewer = r, viewer
	if r.Method == http.MethodPost {
		if err := r.ParseForm(); err != nil || !csrfValid(r, rq.seed) || !sameOrigin(r) {
			s.render(rq, http.StatusForbidden, "error", "Forbidden", nil,
				"this form has expired or did not come from this site: reload the page and try again")
			return
		}
	}
	s.route(rq, path)
}

// sameOrigin checks the Origin header a browser sends with a POST: it must
// be this host (a browser that sends none is checked by the token alone).
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// stripCookie is r without its cookie name.
func stripCookie(r *http.Request, name string) *http.Request {
	r2 := r.Clone(r.Context())
	r2.Header.Del("Cookie")
	for _, c := range r.Cookies() {
		if c.Name != name {
			r2.AddCookie(c)
		}
	}
	return r2
}

// route dispatches by path. Repository names contain slashes, so the
// parts after a name follow a "/-/", which no name can contain.
func (s *Server) route(rq *request, path string) {
	post := rq.r.Method == http.MethodPost
	switch path {
	case "/":
		if !post {
			s.repositories(rq)
			return
		}
	case "/login":
		s.login(rq)
		return
	case "/logout":
		if post {
			s.logout(rq)
			return
		}
	case "/gc":
		if !post {
			s.gc(rq)
			return
		}
	}
	rest, ok := strings.CutPrefix(path, "/r/")
	if !ok {
		s.notFound(rq)
		return
	}
	name, sub, paged := strings.Cut(rest, "/-/")
	if !paged {
		// The repository's own page is /ui/r/<name>/.
		var slash bool
		if name, slash = strings.CutSuffix(rest, "/"); !slash {
			if names.ValidRepository(rest) && !post {
				http.Redirect(rq.w, rq.r, repoPath(rest), http.StatusMovedPermanently)
				return
			}
			s.notFound(rq)
			return
		}
	}
	if !names.ValidRepository(name) {
		s.notFound(rq)
		return
	}
	page, arg, _ := strings.Cut(sub, "/")
	switch {
	case !paged && !post:
		s.repository(rq, name)
	case page == "audit" && arg == "" && !post:
		s.audit(rq, name)
	case page == "untagged" && arg == "" && !post:
		s.untagged(rq, name)
	case page == "history" && arg != "" && !post:
		s.tag(rq, name, arg)
	case page == "manifests" && arg != "" && !post:
		s.manifest(rq, name, arg)
	case page == "untag" && arg != "":
		s.untag(rq, name, arg)
	case page == "restore" && arg != "":
		s.restore(rq, name, arg)
	case page == "delete" && arg != "":
		s.deleteManifest(rq, name, arg)
	default:
		s.notFound(rq)
	}
}

// page is what the layout renders around a page's content.
type page struct {
	Title       string
	Viewer      Viewer
	AuthEnabled bool
	CSRF        string
	Alert       string // an error, shown with role="alert"
	Flash       string // what the last action did, shown with role="status"
	Path        string // the request's path and query, for the login link
	Content     any
}

func (s *Server) render(rq *request, status int, name, title string, content any, alert string) {
	p := page{Title: title, Viewer: rq.viewer, AuthEnabled: s.backend.AuthEnabled(), CSRF: rq.csrf, Alert: alert,
		Flash: flash(rq.r.URL.Query()), Path: rq.r.URL.RequestURI(), Content: content}
	var buf bytes.Buffer
	if err := s.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		s.log.ErrorContext(rq.r.Context(), "render page", "page", name, "err", err)
		http.Error(rq.w, "internal server error", http.StatusInternalServerError)
		return
	}
	rq.w.Header().Set("Content-Type", "text/html; charset=utf-8")
	rq.w.WriteHeader(status)
	if rq.r.Method != http.MethodHead {
		rq.w.Write(buf.Bytes())
	}
}

// fail shows err as the API would answer it: its status and message.
func (s *Server) fail(rq *request, err error) {
	status, msg := s.backend.Explain(rq.r, err)
	if status == 0 {
		return // the client went away
	}
	s.render(rq, status, "error", http.StatusText(status), nil, msg)
}

func (s *Server) notFound(rq *request) {
	s.render(rq, http.StatusNotFound, "error", http.StatusText(http.StatusNotFound), nil,
		"there is no page at "+rq.r.URL.Path)
}

// denied is the refusal of a page or action the viewer may not see or do,
// in the API's words.
const denied = "requested access to the resource is denied"

func (s *Server) forbidden(rq *request) {
	s.render(rq, http.StatusForbidden, "error", http.StatusText(http.StatusForbidden), nil, denied)
}

// redirect answers a POST that did its work: 303, so that reloading the
// page it leads to does not post again.
func (rq *request) redirect(to string) {
	http.Redirect(rq.w, rq.r, to, http.StatusSeeOther)
}

// flash is the sentence that says what the action a page was redirected
// from did. It is built from the values of a fixed set of parameters, never
// taken from the URL as text.
func flash(q url.Values) string {
	if tag := q.Get("tag"); tag != "" && !names.ValidTag(tag) {
		return ""
	}
	if d := q.Get("digest"); d != "" {
		if _, err := digests.Parse(d); err != nil {
			return ""
		}
	}
	switch q.Get("done") {
	case "untag":
		return "Untagged " + q.Get("tag")
	case "delete":
		msg := "Deleted manifest " + q.Get("digest") + " and its tags: "
		tags := q["tags"]
		for _, t := range tags {
			if !names.ValidTag(t) {
				return ""
			}
		}
		if len(tags) == 0 {
			return msg + "none"
		}
		return msg + strings.Join(tags, ", ")
	case "restore":
		return "Restored " + q.Get("tag") + " to " + q.Get("digest")
	case "logout":
		return "Logged out"
	}
	return ""
}
