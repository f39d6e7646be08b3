package handlers

import (
	"context"
	"errors"
	"net/http"
	"net/http/pprof"
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
