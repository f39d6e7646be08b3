// Package handlers is Berth's HTTP layer: the OCI distribution API routes on
// a chi router, the translation of every error into the spec's JSON body,
// and the middleware around them (request ids, logs). It holds no SQL: the
// metadata comes from package db, the bytes from a blob store.
package handlers

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/ui"
)

// BlobStore is what the API needs of a blob store: it reads and receives
// bytes but never deletes published blobs (garbage collection does).
type BlobStore interface {
	blobstore.Reader
	blobstore.Uploader
}

// Presigner is a blob store that can hand out time-limited URLs of its
// blobs, so that clients download straight from it (S3).
type Presigner interface {
	PresignGet(ctx context.Context, dgst digest.Digest, expires time.Duration) (string, error)
}

// Options configure the API.
type Options struct {
	DB     *db.DB
	Blobs  BlobStore
	Logger *slog.Logger
	// Registry receives the request metrics and is served at /metrics;
	// nil makes a private one.
	Registry *prometheus.Registry
	// Ready reports whether this replica can serve (database and blob
	// store reachable, schema current), for GET /readyz; nil means ready.
	// Its error is shown in full on the admin listener only; on the API
	// port /readyz names just the part that is not ready (see
	// NotReadyError).
	Ready func(context.Context) error
	// AdminSeparate moves /metrics off the API port, to the handler that
	// Admin returns (served on --admin-listen).
	AdminSeparate bool
	// Limits bound what clients may take; the zero value bounds nothing.
	Limits Limits
	// Redirect, when set, answers blob downloads with a 307 to a presigned
	// URL of the store instead of streaming the bytes through Berth.
	Redirect Presigner
	// ManifestBudget is how many bytes of manifest bodies this process
	// takes in at once (see DefaultManifestBudget); 0 means the default,
	// less than MinManifestBudget means MinManifestBudget.
	ManifestBudget int64
	// Auth configures authentication; the zero value is none.
	Auth AuthConfig
	// Pulls records pull events for the webhooks that want them; nil
	// records none.
	Pulls PullRecorder
	// NoUI turns the web interface (/ui/, see package ui) off.
	NoUI bool
	// PullStats counts manifest pulls for the pull statistics
	// (pullstats.Stats); nil counts none.
	PullStats PullCounter
	// Proxy is the pull-through cache (package proxy); nil: none.
	Proxy PullThrough
}

// PullCounter counts manifest pulls (pullstats.Stats). Record is called on
// every manifest GET that serves content, so it must be cheap.
type PullCounter interface {
	Record(repo, digest, tag string)
}

// PullRecorder buffers pull events (events.Pulls).
type PullRecorder interface {
	// Wanted reports whether pulls are recorded at all.
	Wanted() bool
	Record(db.PullEvent)
}

// Handler serves the OCI distribution API.
type Handler struct {
	db       *db.DB
	blobs    BlobStore
	log      *slog.Logger
	redirect Presigner
	router   chi.Router
	ready    func(context.Context) error
	registry *prometheus.Registry
	limits   Limits
	storage  *storageWatch
	// manifests is the budget of manifest bytes in flight.
	manifests *manifestBudget

	auth      AuthConfig
	pulls     PullRecorder
	pullStats PullCounter
	proxy     PullThrough
	throttle  *auth.Throttle
	passwords passwordCache
	tokenUses *tokenUses
	// scrapers are the admin scrapes of /metrics trusted in an outage.
	scrapers  scrapers
	stopFlush chan struct{}
	flushed   chan struct{}
}

// redirectExpiry is how long a presigned blob URL stays valid: long enough
// for a slow client to start a large download, short enough that a leaked
// URL soon stops working.
const redirectExpiry = 20 * time.Minute

// New returns the API's http.Handler.
func New(opts Options) *Handler {
	h := &Handler{db: opts.DB, log: opts.Logger, redirect: opts.Redirect, ready: opts.Ready, limits: opts.Limits, auth: opts.Auth, pulls: opts.Pulls,
		pullStats: opts.PullStats, proxy: opts.Proxy}
	if opts.ManifestBudget == 0 {
		opts.ManifestBudget = DefaultManifestBudget
	}
	h.manifests = newManifestBudget(opts.ManifestBudget)
	if h.log == nil {
		h.log = slog.Default()
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	h.registry = reg
	h.storage = newStorageWatch(h.log, reg)
	h.blobs = watchedStore{opts.Blobs, h.storage}
	if h.auth.enabled() {
		h.throttle = h.auth.Throttle
		if h.throttle == nil {
			h.throttle = auth.NewThrottle(0, 0)
		}
		h.tokenUses = &tokenUses{db: h.db}
		h.stopFlush, h.flushed = make(chan struct{}), make(chan struct{})
		go h.flushTokenUses()
	}
	metrics := newHTTPMetrics(reg)
	r := chi.NewRouter()
	r.Use(requestID, metrics.instrument, h.accessLog, h.recoverer, h.bodyRate)
	r.Route("/v2", func(r chi.Router) {
		r.Use(apiVersion)
		r.Get("/", h.serve(h.base))
		r.Head("/", h.serve(h.base))
		r.Get("/_catalog", h.serve(h.catalog))
		r.HandleFunc("/*", h.serve(h.dispatch))
	})
	// /v2 without the slash is what some clients probe first.
	r.With(apiVersion).Get("/v2", h.serve(h.base))
	if h.auth.Mode == AuthToken {
		r.Get("/auth/token", h.serve(h.tokenService))
		r.Post("/auth/token", h.serve(h.tokenService))
		r.Get("/auth/jwks", h.serve(h.jwks))
	}
	r.Get("/berth/v1/events", h.serve(h.events))
	if !opts.NoUI {
		u, err := newUI(h, opts.Auth.SessionKeys)
		if err != nil {
			// Only the random source can fail here: the API serves on,
			// without the interface.
			h.log.Error("web interface off", "err", err)
		} else {
			r.Handle(ui.Prefix, serveUI(u))
			r.Handle(ui.Prefix+"/*", serveUI(u))
			r.Get("/", func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, ui.Prefix+"/", http.StatusFound)
			})
		}
	}
	r.Get("/healthz", healthz)
	r.Get("/readyz", h.readyz(false))
	if !opts.AdminSeparate {
		r.Handle("/metrics", h.adminOnly(h.metricsHandler()))
	}
	h.router = r
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.router.ServeHTTP(w, r) }

// Close stops the background work of the API and writes what it buffered
// (the last uses of API tokens). Call it once the server has stopped.
func (h *Handler) Close(ctx context.Context) error {
	if h.stopFlush == nil {
		return nil
	}
	close(h.stopFlush)
	<-h.flushed
	return h.tokenUses.flush(ctx)
}

func (h *Handler) flushTokenUses() {
	defer close(h.flushed)
	t := time.NewTicker(tokenUseFlush)
	defer t.Stop()
	for {
		select {
		case <-h.stopFlush:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), tokenUseFlush)
			if err := h.tokenUses.flush(ctx); err != nil {
				h.log.Warn("record the last use of API tokens", "err", err)
			}
			cancel()
		}
	}
}

// base answers the version check: 200 means "this is a v2 registry and you
// may use it".
func (h *Handler) base(w http.ResponseWriter, r *http.Request) error {
	setRoute(r.Context(), "base")
	if _, err := h.authorizeRequest(r, nil, nil); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	if r.Method != http.MethodHead {
		w.Write([]byte("{}"))
	}
	return nil
}

// dispatch routes everything under /v2/<name>/ by the end of the path (see
// parseRoute) and the method. The repository name is validated here, before
// any handler can reach the database.
func (h *Handler) dispatch(w http.ResponseWriter, r *http.Request) error {
	rt := parseRoute(chi.URLParam(r, "*"))
	setRoute(r.Context(), routeNames[rt.kind])
	if rt.kind == routeUnknown {
		return errorf(CodeUnsupported, "no API route matches %s", clip(r.URL.Path)).withStatus(http.StatusNotFound)
	}
	if !validName(rt.name) {
		return errorf(CodeNameInvalid, "invalid repository name %q: lower-case letters and digits in components separated by '/', with '.', '_', '__' or '-' inside components, at most %d characters", clip(rt.name), maxNameLength)
	}
	need := requiredScope(rt, r.Method)
	r, err := h.authorizeRequest(r, &rt, &need)
	if err != nil {
		return err
	}
	upstream, err := h.proxyOf(r, rt)
	if err != nil {
		return err
	}
	if upstream != "" {
		if err := proxyWrite(rt, r.Method, upstream); err != nil {
			return err
		}
		r = r.WithContext(context.WithValue(r.Context(), proxiedKey, true))
	}
	m := r.Method
	switch rt.kind {
	case routeManifest:
		switch m {
		case http.MethodGet, http.MethodHead:
			if rt.ref == "_list" && m == http.MethodGet {
				return h.listManifests(w, r, rt)
			}
			return h.getManifest(w, r, rt)
		case http.MethodPut:
			return h.putManifest(w, r, rt)
		case http.MethodDelete:
			return h.deleteManifest(w, r, rt)
		}
	case routeBlob:
		switch m {
		case http.MethodGet, http.MethodHead:
			return h.getBlob(w, r, rt)
		case http.MethodDelete:
			return h.deleteBlob(w, r, rt)
		}
	case routeUpload:
		if rt.ref == "" {
			if m == http.MethodPost {
				return h.startUpload(w, r, rt)
			}
			break
		}
		switch m {
		case http.MethodGet:
			return h.uploadStatus(w, r, rt)
		case http.MethodPatch:
			return h.patchUpload(w, r, rt)
		case http.MethodPut:
			return h.finishUpload(w, r, rt)
		case http.MethodDelete:
			return h.cancelUpload(w, r, rt)
		}
	case routeTags:
		switch {
		case (m == http.MethodGet || m == http.MethodHead) && (rt.ref == "list" || rt.ref == "_list"):
			return h.listTags(w, r, rt)
		case m == http.MethodDelete:
			return h.deleteTag(w, r, rt)
		case m == http.MethodPut:
			return h.restoreTag(w, r, rt)
		}
	case routeTagHistory:
		if m == http.MethodGet || m == http.MethodHead {
			return h.tagHistory(w, r, rt)
		}
	case routeReferrers:
		if m == http.MethodGet || m == http.MethodHead {
			return h.referrers(w, r, rt)
		}
	}
	return errorf(CodeUnsupported, "%s is not supported on %s", clip(m), clip(r.URL.Path))
}

// actor identifies who makes a change, for the audit trail: the user (and
// the API token it used), or the client's address when anonymous.
func (h *Handler) actor(r *http.Request) db.Actor {
	a := db.Actor{Name: "anonymous", RequestID: requestIDFrom(r.Context()), Request: &db.RequestInfo{
		Addr: r.RemoteAddr, Host: r.Host, Method: r.Method, UserAgent: r.UserAgent(), BaseURL: h.externalURL(r),
	}}
	if p := principalOf(r.Context()); p != nil && p.Name != "" {
		a.Name, a.TokenID = p.Name, p.TokenID
		return a
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		a.Name = "anonymous@" + host
	}
	return a
}

// uploadOwner is the name an upload session opened by r is recorded
// under: its principal with authentication on, nobody without.
func uploadOwner(r *http.Request) string {
	if p := principalOf(r.Context()); p != nil {
		return p.owner()
	}
	return ""
}

// apiVersion sets the header by which Docker clients recognise a v2
// registry, on every /v2 response.
func apiVersion(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		next.ServeHTTP(w, r)
	})
}

type ctxKey int

const requestIDKey ctxKey = iota

// requestID gives every request an id, returned in X-Request-Id and attached
// to every log line of the request. A sane id sent by a proxy in front is
// kept, so one id follows the request through both logs.
func requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if !saneRequestID(id) {
			// Request ids name log lines; they need to be unique, not
			// secret, so a fast generator will do.
			var b [12]byte
			binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
			binary.LittleEndian.PutUint32(b[8:], rand.Uint32())
			id = hex.EncodeToString(b[:])
		}
		w.Header().Set("X-Request-Id", id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey, id)))
	})
}

func saneRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	return strings.IndexFunc(id, func(c rune) bool {
		return !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.')
	}) < 0
}

func requestIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

// LogHandler wraps a slog.Handler so that records logged with a request's
// context carry its request id.
func LogHandler(next slog.Handler) slog.Handler { return requestIDLogHandler{next} }

type requestIDLogHandler struct{ slog.Handler }

func (h requestIDLogHandler) Handle(ctx context.Context, rec slog.Record) error {
	if id := requestIDFrom(ctx); id != "" {
		rec.AddAttrs(slog.String("request_id", id))
	}
	return h.Handler.Handle(ctx, rec)
}

func (h requestIDLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return requestIDLogHandler{h.Handler.WithAttrs(attrs)}
}

func (h requestIDLogHandler) WithGroup(name string) slog.Handler {
	return requestIDLogHandler{h.Handler.WithGroup(name)}
}

// accessLog logs every request once it is done: reads at debug level (a
// registry serves them by the thousand), changes at info, server faults at
// error.
func (h *Handler) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := wrapWriter(w, r)
		next.ServeHTTP(ww, r)
		status := statusOf(ww, r)
		level := slog.LevelDebug
		switch {
		case r.URL.Path == "/readyz" || r.URL.Path == "/healthz" || r.URL.Path == "/metrics":
			// Probes and scrapes come every few seconds; /readyz logs its
			// own reason when it says no.
		case status == http.StatusServiceUnavailable || status == http.StatusInsufficientStorage:
			// An outage of the database or a full disk refuses every
			// request for a while: the start and the end of the episode
			// are logged once (db, storageWatch), each refusal is counted
			// in the metrics, and a line per request would bury the log.
		case status >= 500:
			level = slog.LevelError
		case r.Method != http.MethodGet && r.Method != http.MethodHead:
			level = slog.LevelInfo
		}
		if !h.log.Enabled(r.Context(), level) {
			return // pulls at debug level: skip building the record at all
		}
		h.log.Log(r.Context(), level, "request",
			"method", r.Method, "path", clip(r.URL.Path), "status", status,
			"bytes_out", ww.BytesWritten(), "duration", time.Since(start), "remote", r.RemoteAddr)
	})
}

// recoverer turns a panic into a logged 500 instead of a dropped connection.
func (h *Handler) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				h.log.ErrorContext(r.Context(), "panic serving request", "panic", p, "path", clip(r.URL.Path))
				writeError(w, r, internalError())
			}
		}()
		next.ServeHTTP(w, r)
	})
}
