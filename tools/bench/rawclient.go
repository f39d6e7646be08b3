package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// rawGetter is the load generator of the GET scenarios: one keep-alive
// HTTP/1.1 connection per worker, requests written from prepared bytes,
// responses parsed by net/http's ReadResponse. It skips http.Transport's
// per-connection goroutines and channel hand-offs, which cost about as much
// CPU as a registry answering a manifest GET; on a 2-core machine shared
// with the registry, that CPU comes straight out of the registry's share.
type rawGetter struct {
	addr  string
	host  string
	conns []*rawConn
}

type rawConn struct {
	c   net.Conn
	br  *bufio.Reader
	buf []byte
}

func newRawGetter(base string, workers int) *rawGetter {
	u, err := url.Parse(base)
	if err != nil {
		panic(err)
	}
	g := &rawGetter{addr: u.Host, host: u.Host, conns: make([]*rawConn, workers)}
	for i := range g.conns {
		g.conns[i] = &rawConn{buf: make([]byte, 256<<10)}
	}
	return g
}

// request prepares the bytes of GET path.
func (g *rawGetter) request(path string, hdr http.Header) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: berth-bench\r\n", path, g.host)
	for _, k := range sortedKeys(hdr) {
		fmt.Fprintf(&b, "%s: %s\r\n", k, strings.Join(hdr[k], ", "))
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

func (g *rawGetter) close() {
	for _, c := range g.conns {
		if c.c != nil {
			c.c.Close()
			c.c = nil
		}
	}
}

// get sends the prepared request on worker w's connection and reads the
// answer, which must be 200; it returns the body length.
func (g *rawGetter) get(ctx context.Context, w int, req []byte) (int64, error) {
	c := g.conns[w]
	fail := func(err error) (int64, error) {
		if c.c != nil {
			c.c.Close()
			c.c = nil
		}
		line, _, _ := strings.Cut(string(req), "\r\n")
		return 0, &exchangeError{Method: "GET", URL: "http://" + g.host + strings.Fields(line)[1], Err: err}
	}
	if c.c == nil {
		conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", g.addr)
		if err != nil {
			return fail(err)
		}
		c.c = conn
		c.br = bufio.NewReaderSize(conn, 64<<10)
	}
	if _, err := c.c.Write(req); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		resp.Body.Close()
		c.c.Close()
		c.c = nil
		line, _, _ := strings.Cut(string(req), "\r\n")
		return 0, &exchangeError{Method: "GET", URL: "http://" + g.host + strings.Fields(line)[1],
			Status: resp.Status, RespHeader: resp.Header, Body: string(body)}
	}
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, resp.Body, c.buf)
	resp.Body.Close()
	if err != nil {
		return fail(err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return fail(fmt.Errorf("read %d bytes of %d", n, resp.ContentLength))
	}
	if resp.Close {
		c.c.Close()
		c.c = nil
	}
	return n, nil
}
