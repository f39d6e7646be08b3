package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// flight runs fetch once for key across the cluster, unless done reports
// the work done: within this replica, concurrent callers share one run
// (group); across replicas, the claim in the database decides who runs
// it, and the others poll done until it holds, the claim fails (they get
// its error) or the claimant's lease expires (one of them takes over).
//
// fetch runs on a context detached from the caller's: the bytes it stores
// serve every waiter, so a client that goes away must not cut it short
// (the upstream timeouts bound it instead).
func (c *Cache) flight(ctx context.Context, key string, done func(context.Context) (bool, error), fetch func(context.Context) error) error {
	return c.flightKeys(ctx, key, key, done, fetch)
}

// flightKeys is flight with a key of its own for the sharing within this
// replica (local) and for the claim in the database (claim).
func (c *Cache) flightKeys(ctx context.Context, local, claim string, done func(context.Context) (bool, error), fetch func(context.Context) error) error {
	return c.local.do(ctx, local, func() error {
		return c.cluster(context.WithoutCancel(ctx), claim, done, fetch)
	})
}

// claimKinds is what the claims' keys name, by their prefix.
var claimKinds = map[string]string{"m:": "manifest", "t:": "manifest", "b:": "blob", "r:": "referrers"}

// Polling bounds for the wait on another replica's fetch.
const (
	pollFirst = 10 * time.Millisecond
	pollMax   = 250 * time.Millisecond
)

func (c *Cache) cluster(ctx context.Context, key string, done func(context.Context) (bool, error), fetch func(context.Context) error) error {
	deadline := time.Now().Add(maxWait)
	wait := pollFirst
	for {
		if ok, err := done(ctx); err != nil || ok {
			return err
		}
		st, err := c.db.ProxyClaim(ctx, key, c.cfg.Instance, c.cfg.Lease)
		if err != nil {
			return err
		}
		if st.Won {
			// The claimant before may have stored it and released the
			// claim between our look and our claim: look again, now that
			// no one else can be fetching.
			if ok, err := done(ctx); err != nil || ok {
				if rerr := c.db.ProxyRelease(ctx, key, c.cfg.Instance); rerr != nil && err == nil {
					err = rerr
				}
				return err
			}
			return c.holding(ctx, key, fetch)
		}
		if st.Failed {
			return &UpstreamError{Kind: claimKinds[key[:2]], Status: st.Status, Detail: st.Error, shared: true}
		}
		if time.Now().After(deadline) {
			return &UpstreamError{Kind: claimKinds[key[:2]], Detail: fmt.Sprintf("waited %s for another replica's fetch of it", maxWait), shared: true}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, pollMax)
	}
}

// holding runs fetch while holding the claim on key, renewing it every
// third of the lease, then releases it: on success by deleting it, on an
// upstream's failure by leaving the error for failureMemory.
func (c *Cache) holding(ctx context.Context, key string, fetch func(context.Context) error) error {
	stop := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(c.cfg.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				ok, err := c.db.ProxyRenew(ctx, key, c.cfg.Instance, c.cfg.Lease)
				if err != nil || !ok {
					c.log.Warn("lost the claim on a proxy fetch; another replica may fetch it too", "key", key, "err", err)
				}
			}
		}
	}()
	err := fetch(ctx)
	close(stop)
	<-renewed
	var ue *UpstreamError
	if errors.As(err, &ue) && sharable(key, ue) {
		msg := ue.Error()
		if ue.shared {
			msg = ue.Detail
		}
		if ferr := c.db.ProxyFail(ctx, key, c.cfg.Instance, msg, ue.Status, failureMemory); ferr != nil {
			c.log.Warn("record a failed proxy fetch", "key", key, "err", ferr)
		}
		return err
	}
	if rerr := c.db.ProxyRelease(ctx, key, c.cfg.Instance); rerr != nil && err == nil {
		return rerr
	}
	return err
}

// sharable reports whether a failed fetch's answer is shared with the
// requests that wait for the claim on key: always for a manifest, tag or
// referrers key, which name one repository; for a blob, whose claim is the
// upstream's digest across repositories, only an answer about the
// upstream (no answer, 429, 5xx), not what it says of one repository
// (404, 401, 403): another repository's request then fetches for itself.
func sharable(key string, ue *UpstreamError) bool {
	if !strings.HasPrefix(key, "b:") {
		return true
	}
	return ue.Status == 0 || ue.Status == http.StatusTooManyRequests || ue.Status >= 500
}

// group collapses concurrent calls with the same key within a replica.
type group struct {
	mu    sync.Mutex
	calls map[string]*call
}

type call struct {
	done chan struct{}
	err  error
}

// do runs fn for the first caller of key, in its goroutine; the callers
// that come while it runs wait for its result, each until its own ctx
// ends. The first caller waits for fn whatever its ctx.
func (g *group) do(ctx context.Context, key string, fn func() error) error {
	g.mu.Lock()
	if c, ok := g.calls[key]; ok {
		g.mu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c := &call{done: make(chan struct{})}
	g.calls[key] = c
	g.mu.Unlock()
	c.err = fn()
	g.mu.Lock()
	delete(g.calls, key)
	g.mu.Unlock()
	close(c.done)
	return c.err
}

// maxJSON bounds an upstream's tag list or referrers page.
const maxJSON = 4 << 20

func jsonDecode(r io.Reader, v any) error {
	return json.NewDecoder(io.LimitReader(r, maxJSON)).Decode(v)
}

// metrics are the cache's Prometheus metrics.
type metrics struct {
	hits, misses, stale *prometheus.CounterVec
	requests            *prometheus.CounterVec
	bytes               prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_proxy_hits_total",
			Help: "Pulls of proxied repositories served from the cache without asking the upstream, by kind (manifest, blob)."}, []string{"kind"}),
		misses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_proxy_misses_total",
			Help: "Pulls of proxied repositories that were not cached and went (or waited for a fetch) upstream, by kind."}, []string{"kind"}),
		stale: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_proxy_stale_total",
			Help: "Cached content served as it is because the upstream could not be asked (no answer, timeout, 429, 5xx), by kind."}, []string{"kind"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_proxy_upstream_requests_total",
			Help: "Requests sent to upstreams (token requests and pings included), by method and status (0: no answer)."}, []string{"method", "status"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_proxy_upstream_bytes_total",
			Help: "Bytes of manifests and blobs received from upstreams."}),
	}
	if reg != nil {
		reg.MustRegister(m.hits, m.misses, m.stale, m.requests, m.bytes)
	}
	return m
}

func (m *metrics) hit(kind string, ok bool) {
	if ok {
		m.hits.WithLabelValues(kind).Inc()
	}
}
func (m *metrics) miss(kind string)       { m.misses.WithLabelValues(kind).Inc() }
func (m *metrics) staleServe(kind string) { m.stale.WithLabelValues(kind).Inc() }
func (m *metrics) upstream(method string, status int) {
	m.requests.WithLabelValues(method, fmt.Sprint(status)).Inc()
}
