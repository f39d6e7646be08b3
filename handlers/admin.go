package handlers

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berth-registry/berth/db"
)

// The operator's endpoints. /healthz and /readyz are on the API port for
// load balancers. With --admin-listen, /metrics, a /readyz that says why a
// replica is not ready, and Go's profiler are on a listener of their own,
// which the operator keeps private: the reasons name database hosts and
// users, and profiles show everything.

// NotReadyError says which part of a replica is not ready. The API port's
// /readyz shows only Part; the admin listener's shows Err too.
type NotReadyError struct {
	Part string // "database", "database schema", "blob store"
	Err  error
}

func (e *NotReadyError) Error() string { return e.Part + ": " + e.Err.Error() }
func (e *NotReadyError) Unwrap() error { return e.Err }

// readyTimeout bounds a readiness check, so that a load balancer's probe
// gets its 503 well within the usual probe timeouts (2 s and more) even
// when the database does not answer at all.
const readyTimeout = 1500 * time.Millisecond

func healthz(w http.ResponseWriter, r *http.Request) {
	setRoute(r.Context(), "healthz")
	w.Write([]byte("ok\n"))
}

// readyz answers 200 when the replica can serve, else 503 with the part
// that is not ready and, with details, why.
func (h *Handler) readyz(details bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		setRoute(r.Context(), "readyz")
		if h.ready == nil {
			w.Write([]byte("ready\n"))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		err := h.ready(ctx)
		if err == nil {
			w.Write([]byte("ready\n"))
			return
		}
		if errors.Is(err, db.ErrUnavailable) {
			// The database's outage is logged once by db, not per probe.
			h.log.DebugContext(r.Context(), "not ready", "err", err)
		} else {
			h.log.WarnContext(r.Context(), "not ready", "err", err)
		}
		msg := "not ready"
		var nr *NotReadyError
		switch {
		case details:
			msg += ": " + err.Error()
		case errors.As(err, &nr):
			msg += ": " + nr.Part
		}
		http.Error(w, msg, http.StatusServiceUnavailable)
	}
}

func (h *Handler) metricsHandler() http.Handler {
	return promhttp.HandlerFor(h.registry, promhttp.HandlerOpts{Registry: h.registry})
}

// adminOnly guards next (the metrics, on the API port) with authentication
// on: the metrics name namespaces and quota prefixes, which only those who
// may see the whole registry may list — an admin, with a password or with
// an API token that is unscoped or holds registry:catalog:* (the rule of
// the catalog and the web interface's storage page). An admin
// authenticates with Basic credentials in either mode — what Prometheus's
// basic_auth sends — or with a Bearer token in token mode. With
// authentication off, and on the admin listener (the private port),
// nothing is asked.
//
// Checking credentials needs the database, and the metrics matter most
// when it is down (berth_db_up 0): credentials that passed within
// scrapeMemory are let through while the database is unreachable, so an
// outage does not blind the scraper that would report it.
func (h *Handler) adminOnly(next http.Handler) http.Handler {
	if !h.auth.enabled() {
		return next
	}
	return h.serve(func(w http.ResponseWriter, r *http.Request) error {
		p, err := h.adminPrincipal(r)
		if errors.Is(err, db.ErrUnavailable) && h.scrapers.remembers(r.Header.Get("Authorization")) {
			next.ServeHTTP(w, r)
			return nil
		}
		if err != nil {
			return err
		}
		if !p.authenticated {
			return h.unauthorized(r, nil, "", "authentication required")
		}
		if !wholeRegistry(p) {
			return &authError{status: http.StatusForbidden, message: "requested access to the resource is denied: the metrics are for admins"}
		}
		h.scrapers.remember(r.Header.Get("Authorization"))
		next.ServeHTTP(w, r)
		return nil
	})
}

// scrapeMemory is how long the credentials of an admin's scrape are
// trusted without the database: longer than any scrape interval, short
// enough that a revoked admin is not served for long in an outage.
const scrapeMemory = 15 * time.Minute

// scrapers remembers, as SHA-256 hashes (never the secrets), the
// Authorization headers of recent admin scrapes.
type scrapers struct {
	mu   sync.Mutex
	seen map[[sha256.Size]byte]time.Time // hash → when it last passed
}

// maxScrapers bounds the memory: a handful of scrapers is normal.
const maxScrapers = 16

func (s *scrapers) remember(header string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = make(map[[sha256.Size]byte]time.Time)
	}
	now := time.Now()
	for k, at := range s.seen {
		if now.Sub(at) > scrapeMemory || len(s.seen) >= maxScrapers {
			delete(s.seen, k)
		}
	}
	s.seen[sha256.Sum256([]byte(header))] = now
}

func (s *scrapers) remembers(header string) bool {
	if header == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.seen[sha256.Sum256([]byte(header))]
	return ok && time.Since(at) <= scrapeMemory
}

// adminPrincipal is who makes r, taking Basic credentials in token mode
// too (see adminOnly).
func (h *Handler) adminPrincipal(r *http.Request) (*principal, error) {
	scheme, _, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if h.auth.Mode == AuthToken && strings.EqualFold(scheme, "Basic") {
		user, pass, ok := r.BasicAuth()
		if !ok {
			return nil, h.unauthorized(r, nil, "invalid_request", "malformed Basic credentials")
		}
		return h.login(r, user, pass)
	}
	return h.authenticate(r, nil)
}

// Admin returns the handler of the admin listener: /metrics, /readyz with
// the reasons, /healthz and Go's profiler under /debug/pprof/.
func (h *Handler) Admin() http.Handler {
	r := chi.NewRouter()
	r.Get("/healthz", healthz)
	r.Get("/readyz", h.readyz(true))
	r.Handle("/metrics", h.metricsHandler())
	r.HandleFunc("/debug/pprof/*", pprof.Index)
	r.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	r.HandleFunc("/debug/pprof/profile", pprof.Profile)
	r.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	r.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return r
}
