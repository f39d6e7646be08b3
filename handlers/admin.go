package handlers

import (
	"context"
	"errors"
	"net/http"
	"net/http/pprof"
	"strings"
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
// on: the metrics name namespaces and quota prefixes, which only admins
// may list. An admin authenticates with Basic credentials (a password or
// an API token without scopes) in either mode — what Prometheus's
// basic_auth sends — or with a Bearer token in token mode. With
// authentication off, and on the admin listener (the private port),
// nothing is asked.
func (h *Handler) adminOnly(next http.Handler) http.Handler {
	if !h.auth.enabled() {
		return next
	}
	return h.serve(func(w http.ResponseWriter, r *http.Request) error {
		p, err := h.adminPrincipal(r)
		if err != nil {
			return err
		}
		if !p.authenticated {
			return h.unauthorized(r, nil, "", "authentication required")
		}
		if !p.Admin || p.TokenScopes != nil {
			return &authError{status: http.StatusForbidden, message: "requested access to the resource is denied: the metrics are for admins"}
		}
		next.ServeHTTP(w, r)
		return nil
	})
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
