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
		if err := r.ParseForm(); err != nil || !csrfValid(r, rq.seed) {
			s.render(rq, http.StatusForbidden, "error", "Forbidden", nil,
				"this form has expired or did not come from this site: reload the page and try again")
			return
		}
	}
	s.route(rq, path)
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
		s.repositories(rq)
		return
	case "/login":
		s.login(rq)
		return
	case "/logout":
		if post {
			s.logout(rq)
			return
		}
	case "/storage":
		if !post {
			s.storage(rq)
			return
		}
	}
	rest, ok := strings.CutPrefix(path, "/repositories/")
	if !ok {
		s.notFound(rq)
		return
	}
	name, sub, _ := strings.Cut(rest, "/-/")
	if !names.ValidRepository(name) {
		s.notFound(rq)
		return
	}
	parts := strings.Split(sub, "/")
	switch {
	case sub == "" && !strings.HasSuffix(rest, "/-/") && !post:
		s.repository(rq, name)
	case sub == "audit" && !post:
		s.audit(rq, name)
	case len(parts) == 2 && parts[0] == "tags" && !post:
		s.tag(rq, name, parts[1])
	case len(parts) == 3 && parts[0] == "tags" && parts[2] == "untag":
		s.untag(rq, name, parts[1])
	case len(parts) == 3 && parts[0] == "tags" && parts[2] == "restore":
		s.restore(rq, name, parts[1])
	case len(parts) == 2 && parts[0] == "manifests" && !post:
		s.manifest(rq, name, parts[1])
	case len(parts) == 3 && parts[0] == "manifests" && parts[2] == "delete":
		s.deleteManifest(rq, name, parts[1])
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
		return "Tag " + q.Get("tag") + " removed. The manifest stays, pullable by digest; the tag can be restored from its history."
	case "delete":
		return "Manifest " + q.Get("digest") + " deleted, with its tags. It can be restored until garbage collection purges it."
	case "restore":
		return "Tag " + q.Get("tag") + " now points at " + q.Get("digest") + "."
	case "logout":
		return "Logged out."
	}
	return ""
}
