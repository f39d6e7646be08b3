// Package ui is Berth's web interface: server-rendered pages to browse
// repositories, tags, manifests and the audit trail, and to untag, delete
// and restore with a confirmation. It exists so that the questions people
// ask of a registry most ("what is in it, what points where, who changed
// it") need a browser, not curl and jq.
//
// Everything is embedded in the binary (templates, one stylesheet, one
// small script the pages work without). Pages read through package db;
// who the viewer is, what they may do, and every change go through the
// Backend, which is the API's own code (package handlers), so that a
// change made here is checked, recorded and refused exactly as through
// /v2, with the same messages.
package ui

import (
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
)

//go:embed templates/*.html templates/*.tmpl
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Prefix is where the interface is served.
const Prefix = "/ui"

// Backend is what the interface needs of the API: authentication, the
// rights of the viewer, and the changes, made by the API's code paths.
type Backend interface {
	// AuthEnabled reports whether users log in (--auth basic or token).
	AuthEnabled() bool
	// Login checks a user name and password (or API token) and returns
	// the value of a new session cookie.
	Login(r *http.Request, user, pass string) (session string, err error)
	// Session works out who makes r from the value of its session cookie
	// ("": nobody logged in) and returns r carrying the viewer, for the
	// audit trail. A session that is forged, tampered with, expired or
	// whose user is gone is ErrSession.
	Session(r *http.Request, session string) (*http.Request, Viewer, error)
	// Allowed is what the viewer of r may do on repository repo: pull,
	// push, delete.
	Allowed(r *http.Request, repo string) []string
	// Repositories is a page of the repository summaries that the viewer
	// of r may pull.
	Repositories(r *http.Request, q db.RepositoryQuery) ([]db.RepositorySummary, bool, error)
	// The changes, as DELETE /v2/<repo>/tags/<tag>, DELETE
	// /v2/<repo>/manifests/<digest> and PUT /v2/<repo>/tags/<tag>.
	Untag(r *http.Request, repo, tag string) error
	DeleteManifest(r *http.Request, repo, dgst string) error
	RestoreTag(r *http.Request, repo, tag, dgst string) error
	// Explain is the status and message the API answers err with.
	Explain(r *http.Request, err error) (status int, message string)
}

// ErrSession is a session cookie that does not hold.
var ErrSession = errors.New("your session is not valid (expired, or ended elsewhere): log in again")

// Viewer is who looks at a page.
type Viewer struct {
	Name string // "" when nobody is logged in
	// WholeRegistry: the viewer may see the whole registry, as the
	// catalog (GET /v2/_catalog) decides it: an admin, unless logged in
	// with an API token whose scopes leave out registry:catalog:*. It
	// opens the storage page (/ui/gc).
	WholeRegistry bool
}

// Config configures the interface.
type Config struct {
	DB      *db.DB
	Blobs   blobstore.Reader // for image configs; nil shows none
	Backend Backend
	Logger  *slog.Logger
	// SessionTTL is the life of a login; 0 means DefaultSessionTTL.
	SessionTTL time.Duration
}

// DefaultSessionTTL is how long a login lasts: a working day, so that a
// forgotten browser does not stay logged in for long.
const DefaultSessionTTL = 12 * time.Hour

// Server serves the interface under Prefix.
type Server struct {
	db      *db.DB
	blobs   blobstore.Reader
	backend Backend
	log     *slog.Logger
	ttl     time.Duration
	pages   map[string]*template.Template
	static  http.Handler
}

// New parses the templates; they are embedded, so a failure is a bug and
// panics at start.
func New(c Config) *Server {
	s := &Server{db: c.DB, blobs: c.Blobs, backend: c.Backend, log: c.Logger, ttl: c.SessionTTL, pages: map[string]*template.Template{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.ttl <= 0 {
		s.ttl = DefaultSessionTTL
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		panic(err)
	}
	for _, n := range names {
		if n == "templates/layout.html" {
			continue
		}
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		s.pages[name] = template.Must(template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/*.tmpl", n))
	}
	sub, _ := fs.Sub(staticFS, "static")
	s.static = http.StripPrefix(Prefix+"/static/", http.FileServerFS(sub))
	return s
}
