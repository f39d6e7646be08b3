package handlers

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Limits bound what one client can take from a replica. Zero values mean
// no limit.
type Limits struct {
	// UploadSessions is the most open upload sessions a repository may
	// have; opening one more answers 429.
	UploadSessions int
	// MinBodyRate is the least a request body must average, in bytes per
	// second, over each BodyRateWindow; a slower body is cut off with 408.
	MinBodyRate    int64
	BodyRateWindow time.Duration
}

// A client that sends its body slowly holds a connection, a goroutine and,
// for an upload, an open file, for as long as it likes: 500 clients sending
// a byte a second hold 500 of each, for ever. Berth requires every body to
// keep up a minimum average rate over a window (by default 1 KiB/s over
// 60 s: a body must bring 60 KiB every 60 s, so a trickle of a byte every
// few seconds counts as no progress). It is enforced with the connection's
// read deadline, pushed back each time a window's worth of bytes has
// arrived, so it costs nothing per read and ends a stalled read at once.
// An upload cut off this way keeps the bytes it had acknowledged before
// the request: the chunk is not recorded, and the client resumes from the
// upload's Range.

// slowBodyError is the error a body read gets when the body fell below
// the minimum rate. toWire answers it with 408 and closes the connection:
// the rest of the body may still be on its way.
type slowBodyError struct {
	rate   int64
	window time.Duration
	err    error // the read deadline's
}

func (e *slowBodyError) Error() string {
	return fmt.Sprintf("the request body arrived slower than %d bytes per second averaged over %v (--min-body-rate); "+
		"nothing of this request's body was kept: send it again (an upload resumes from its Range)", e.rate, e.window)
}

func (e *slowBodyError) Unwrap() error { return e.err }

// bodyRate wraps request bodies in a reader that enforces the minimum
// rate.
func (h *Handler) bodyRate(next http.Handler) http.Handler {
	if h.limits.MinBodyRate <= 0 || h.limits.BodyRateWindow <= 0 {
		return next
	}
	perWindow := int64(float64(h.limits.MinBodyRate) * h.limits.BodyRateWindow.Seconds())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &rateBody{ReadCloser: r.Body, rc: http.NewResponseController(w),
				rate: h.limits.MinBodyRate, perWindow: perWindow, window: h.limits.BodyRateWindow}
		}
		next.ServeHTTP(w, r)
	})
}

type rateBody struct {
	io.ReadCloser
	rc        *http.ResponseController
	rate      int64
	perWindow int64 // bytes each window must bring
	window    time.Duration
	got       int64 // bytes in the current window
	started   bool
	done      bool
}

func (b *rateBody) Read(p []byte) (int, error) {
	if !b.started || b.got >= b.perWindow {
		// A new window: the next perWindow bytes are due within it.
		b.started, b.got = true, 0
		if err := b.rc.SetReadDeadline(time.Now().Add(b.window)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return 0, err
		}
	}
	n, err := b.ReadCloser.Read(p)
	b.got += int64(n)
	switch {
	case err == io.EOF && !b.done:
		// The body is complete: lift the deadline, or net/http's read in
		// the background (which watches for the client going away while
		// the handler works) would take its expiry for a closed connection
		// and cancel the request.
		b.done = true
		b.rc.SetReadDeadline(time.Time{})
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = &slowBodyError{rate: b.rate, window: b.window, err: err}
	}
	return n, err
}

// LimitConnections returns ln limited to max open connections (max <= 0:
// no limit). A connection beyond the limit is answered at once with a 503
// and an OCI error body, then closed, instead of waiting unanswered in the
// listen queue: the client learns that the registry is busy, and a load
// balancer can try another replica.
//
// The open and refused connections are exported to reg.
func LimitConnections(ln net.Listener, max int, log *slog.Logger, reg prometheus.Registerer) net.Listener {
	if max <= 0 {
		return ln
	}
	l := &limitListener{Listener: ln, max: int64(max), log: log}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "berth_connections_open", Help: "Client connections open on the API port.",
		}, func() float64 { return float64(l.open.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "berth_connections_refused_total", Help: "Connections refused with 503 because --max-connections were open.",
		}, func() float64 { return float64(l.refused.Load()) }),
	)
	return l
}

type limitListener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused atomic.Int64
	log     *slog.Logger

	mu         sync.Mutex
	lastLogged time.Time
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) <= l.max {
			return &limitedConn{Conn: c, l: l}, nil
		}
		l.open.Add(-1)
		l.refused.Add(1)
		l.logRefusal()
		go refuseConnection(c, l.max)
	}
}

// logRefusal logs refused connections at most once a minute: under a
// flood of connections one line per connection would be a flood too.
func (l *limitListener) logRefusal() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.lastLogged) < time.Minute {
		return
	}
	l.lastLogged = time.Now()
	l.log.Warn("connection limit reached: refusing new connections with 503", "max_connections", l.max, "refused_so_far", l.refused.Load())
}

// refuseTimeout bounds the time spent on a refused connection.
const refuseTimeout = 2 * time.Second

// refuseConnection answers a connection over the limit and closes it. It
// writes its answer, stops writing, then reads what the client sends for a
// moment: closing a socket with unread data makes the kernel reset the
// connection, and the client could lose the answer.
func refuseConnection(c net.Conn, max int64) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(refuseTimeout))
	body := fmt.Sprintf(`{"errors":[{"code":%q,"message":"the registry has %d open connections, its limit (--max-connections); retry shortly"}]}`,
		CodeUnavailable, max)
	fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"+
		"Retry-After: 1\r\nConnection: close\r\n\r\n%s", len(body), body)
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
	io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

type limitedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

// CloseWrite lets net/http half-close the connection as it would a bare
// TCP connection.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}
