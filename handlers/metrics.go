package handlers

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
)

// httpMetrics are the request metrics of the API, labelled by route (the
// kind of resource, never the repository name: that would make unbounded
// label sets), method and status.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	bytesIn  *prometheus.CounterVec
	bytesOut *prometheus.CounterVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_http_requests_total", Help: "HTTP requests served, by route, method and status.",
		}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "berth_http_request_duration_seconds", Help: "Time to serve an HTTP request, by route and method.",
			// From a manifest HEAD (sub-millisecond) to a large layer push.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"route", "method"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_http_request_bytes_total", Help: "Bytes received in request bodies, by route.",
		}, []string{"route"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_http_response_bytes_total", Help: "Bytes sent in response bodies, by route.",
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.duration, m.bytesIn, m.bytesOut)
	return m
}

// routeNames label metrics; the route kind is found only once the handler
// has parsed the path, so the middleware passes a slot down in the context.
var routeNames = map[routeKind]string{
	routeUnknown:    "other",
	routeManifest:   "manifest",
	routeBlob:       "blob",
	routeUpload:     "upload",
	routeTags:       "tags",
	routeTagHistory: "tag_history",
	routeReferrers:  "referrers",
}

// requestInfo is what the handlers learn about a request that the
// middleware around them reports: found only once the handler has parsed
// the path or met an error, so the middleware passes a slot down in the
// context.
type requestInfo struct {
	route      string
	clientGone bool // the client went away before the answer was written
}

type requestInfoKey struct{}

func infoOf(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return info
}

// setRoute names the route of the request for its metrics.
func setRoute(ctx context.Context, name string) {
	if info := infoOf(ctx); info != nil {
		info.route = name
	}
}

// clientGone records that the client of the request went away.
func clientGone(ctx context.Context) {
	if info := infoOf(ctx); info != nil {
		info.clientGone = true
	}
}

// statusClientClosed is the status proxies (nginx first) log for a request
// whose client closed the connection before the answer: no status was
// sent, and counting it as the 200 net/http assumes would hide it.
const statusClientClosed = 499

// instrument counts the request, its duration and its bytes in and out.
func (m *httpMetrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		info := &requestInfo{route: "other"}
		r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info))
		body := &countingReader{ReadCloser: r.Body}
		r.Body = body
		ww := wrapWriter(w, r)
		next.ServeHTTP(ww, r)
		status := statusOf(ww, r)
		method := methodLabel(r.Method)
		m.requests.WithLabelValues(info.route, method, strconv.Itoa(status)).Inc()
		m.duration.WithLabelValues(info.route, method).Observe(time.Since(start).Seconds())
		m.bytesIn.WithLabelValues(info.route).Add(float64(body.n))
		m.bytesOut.WithLabelValues(info.route).Add(float64(ww.BytesWritten()))
	})
}

// wrapWriter returns w as a writer that records the status and the bytes
// written, wrapping it only once for all the middleware.
func wrapWriter(w http.ResponseWriter, r *http.Request) middleware.WrapResponseWriter {
	if ww, ok := w.(middleware.WrapResponseWriter); ok {
		return ww
	}
	return middleware.NewWrapResponseWriter(w, r.ProtoMajor)
}

// statusOf is the status of a finished request for logs and metrics: the
// one the handler sent (200 when it only wrote a body), or 499 when the
// client went away before it got its answer: before any status was sent,
// with an error it caused by leaving (a body cut short), or in the middle
// of a body shorter than its Content-Length.
func statusOf(ww middleware.WrapResponseWriter, r *http.Request) int {
	if info := infoOf(r.Context()); info != nil && info.clientGone {
		return statusClientClosed
	}
	// Only the client's connection closing cancels the request's context
	// before the handler returns.
	gone := r.Context().Err() != nil
	s := ww.Status()
	switch {
	case s == 0 && gone, s >= 400 && gone:
		return statusClientClosed
	case s == 0:
		return http.StatusOK
	case gone && r.Method != http.MethodHead:
		if n, err := strconv.ParseInt(ww.Header().Get("Content-Length"), 10, 64); err == nil && int64(ww.BytesWritten()) < n {
			return statusClientClosed
		}
	}
	return s
}

// methodLabel keeps the method label to a known set: any other token a
// client sends would otherwise create metric series, and memory, forever.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return m
	}
	return "other"
}

type countingReader struct {
	io.ReadCloser
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n += int64(n)
	return n, err
}
