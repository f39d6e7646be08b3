// Package roundrobin is the load balancer of Berth's multi-replica tests
// and of tools/rrproxy: a reverse proxy that sends each request to the next
// backend, with no stickiness, so that consecutive requests of one push
// land on different replicas.
package roundrobin

import (
	"net/http/httputil"
	"net/url"
	"sync/atomic"
)

// New returns a proxy over backends. It keeps the client's Host header,
// from which the backends build Location URLs, and streams bodies both ways.
func New(backends []*url.URL) *httputil.ReverseProxy {
	var next atomic.Uint64
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(backends[next.Add(1)%uint64(len(backends))])
			pr.Out.Host = pr.In.Host
		},
		FlushInterval: -1, // stream responses as they come
	}
}
