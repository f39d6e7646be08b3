package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// client speaks the OCI distribution API to one registry. Every failure is
// an *exchangeError carrying what was sent and what came back, so the
// report can show the HTTP exchange that failed.
type client struct {
	base *url.URL
	hc   *http.Client
}

// newTransport returns a keep-alive transport for conns concurrent
// connections to one host.
func newTransport(conns int) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns + 4,
		MaxIdleConnsPerHost: conns + 4,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		WriteBufferSize:     256 << 10,
		ReadBufferSize:      256 << 10,
	}
}

func newClient(base string, conns int) *client {
	u, err := url.Parse(base)
	if err != nil {
		panic(err)
	}
	return &client{base: u, hc: &http.Client{Transport: newTransport(conns), Timeout: 10 * time.Minute,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (c *client) close() { c.hc.CloseIdleConnections() }

// exchangeError describes a request that did not get the expected answer.
type exchangeError struct {
	Method, URL string
	ReqHeader   http.Header
	Status      string
	RespHeader  http.Header
	Body        string
	Err         error
}

func (e *exchangeError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s %s: %v", e.Method, e.URL, e.Err)
	}
	return fmt.Sprintf("%s %s → %s: %s", e.Method, e.URL, e.Status, strings.TrimSpace(e.Body))
}

// Exchange renders the request and response as text, for the report.
func (e *exchangeError) Exchange() string {
	var b strings.Builder
	fmt.Fprintf(&b, "> %s %s\n", e.Method, e.URL)
	writeHeader(&b, "> ", e.ReqHeader)
	if e.Err != nil {
		fmt.Fprintf(&b, "< error: %v\n", e.Err)
		return b.String()
	}
	fmt.Fprintf(&b, "< %s\n", e.Status)
	writeHeader(&b, "< ", e.RespHeader)
	if e.Body != "" {
		fmt.Fprintf(&b, "<\n%s\n", strings.TrimSpace(e.Body))
	}
	return b.String()
}

func writeHeader(b *strings.Builder, prefix string, h http.Header) {
	for _, k := range sortedKeys(h) {
		for _, v := range h[k] {
			fmt.Fprintf(b, "%s%s: %s\n", prefix, k, v)
		}
	}
}

// url resolves a path (or a Location header) against the registry.
func (c *client) url(ref string) string {
	u, err := c.base.Parse(ref)
	if err != nil {
		return c.base.String() + ref
	}
	return u.String()
}

// do sends a request and checks the status; the response body is drained
// into io.Discard (its length returned) unless keep is set, in which case
// the caller must close it.
func (c *client) do(ctx context.Context, method, ref string, hdr http.Header, body io.Reader, size int64, want ...int) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url(ref), body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.ContentLength = size
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, &exchangeError{Method: method, URL: req.URL.String(), ReqHeader: req.Header, Err: err}
	}
	for _, w := range want {
		if resp.StatusCode == w {
			return resp, nil
		}
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
	resp.Body.Close()
	return nil, &exchangeError{Method: method, URL: req.URL.String(), ReqHeader: req.Header,
		Status: resp.Status, RespHeader: resp.Header, Body: string(b)}
}

var discardBufs = make(chan []byte, 64)

// drain reads a body to the end without keeping it and closes it.
func drain(r io.ReadCloser) (int64, error) {
	defer r.Close()
	var buf []byte
	select {
	case buf = <-discardBufs:
	default:
		buf = make([]byte, 256<<10)
	}
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, r, buf)
	select {
	case discardBufs <- buf:
	default:
	}
	return n, err
}

// get fetches ref, expecting 200, and returns the body length.
func (c *client) get(ctx context.Context, ref string, hdr http.Header) (int64, error) {
	resp, err := c.do(ctx, http.MethodGet, ref, hdr, nil, 0, http.StatusOK)
	if err != nil {
		return 0, err
	}
	n, err := drain(resp.Body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("GET %s: read %d bytes of %d", ref, n, resp.ContentLength)
	}
	return n, err
}

// getBody fetches ref, expecting 200, and returns the body (small bodies).
func (c *client) getBody(ctx context.Context, ref string, hdr http.Header) ([]byte, http.Header, error) {
	resp, err := c.do(ctx, http.MethodGet, ref, hdr, nil, 0, http.StatusOK)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.Header, err
}

// startUpload opens an upload session and returns its location.
func (c *client) startUpload(ctx context.Context, repo string) (string, error) {
	resp, err := c.do(ctx, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil, bytes.NewReader(nil), 0, http.StatusAccepted)
	if err != nil {
		return "", err
	}
	drain(resp.Body)
	loc := resp.Header.Get("Location")
	if loc == "" {
		return "", fmt.Errorf("POST /v2/%s/blobs/uploads/: 202 without Location", repo)
	}
	return loc, nil
}

func withDigest(loc string, dgst digest.Digest) string {
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	return loc + sep + "digest=" + url.QueryEscape(dgst.String())
}

var octetStream = http.Header{"Content-Type": {"application/octet-stream"}}

// pushMonolithic uploads a blob as POST + PUT ?digest= with the whole body.
func (c *client) pushMonolithic(ctx context.Context, repo string, dgst digest.Digest, size int64, body io.Reader) error {
	loc, err := c.startUpload(ctx, repo)
	if err != nil {
		return err
	}
	resp, err := c.do(ctx, http.MethodPut, withDigest(loc, dgst), octetStream, body, size, http.StatusCreated)
	if err != nil {
		return err
	}
	_, err = drain(resp.Body)
	return err
}

// pushChunked uploads a blob as POST, one PATCH per chunk (with
// Content-Range, following the Location of each answer) and an empty
// PUT ?digest=.
func (c *client) pushChunked(ctx context.Context, repo string, dgst digest.Digest, size int64, body io.Reader, chunk int64) error {
	loc, err := c.startUpload(ctx, repo)
	if err != nil {
		return err
	}
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		hdr := http.Header{
			"Content-Type":  {"application/octet-stream"},
			"Content-Range": {fmt.Sprintf("%d-%d", off, off+n-1)},
		}
		resp, err := c.do(ctx, http.MethodPatch, loc, hdr, io.LimitReader(body, n), n, http.StatusAccepted, http.StatusNoContent)
		if err != nil {
			return err
		}
		drain(resp.Body)
		if l := resp.Header.Get("Location"); l != "" {
			loc = l
		}
	}
	resp, err := c.do(ctx, http.MethodPut, withDigest(loc, dgst), nil, bytes.NewReader(nil), 0, http.StatusCreated)
	if err != nil {
		return err
	}
	_, err = drain(resp.Body)
	return err
}

// pushBytes uploads a small blob monolithically.
func (c *client) pushBytes(ctx context.Context, repo string, b []byte) (digest.Digest, error) {
	d := digest.FromBytes(b)
	return d, c.pushMonolithic(ctx, repo, d, int64(len(b)), bytes.NewReader(b))
}

// mount links an existing blob of repository from into repo (201). A
// registry that answers 202 (mount refused, upload started) gets the bytes.
func (c *client) mount(ctx context.Context, repo, from string, dgst digest.Digest, b []byte) error {
	ref := "/v2/" + repo + "/blobs/uploads/?mount=" + url.QueryEscape(dgst.String()) + "&from=" + url.QueryEscape(from)
	resp, err := c.do(ctx, http.MethodPost, ref, nil, bytes.NewReader(nil), 0, http.StatusCreated, http.StatusAccepted)
	if err != nil {
		return err
	}
	drain(resp.Body)
	if resp.StatusCode == http.StatusCreated {
		return nil
	}
	loc := resp.Header.Get("Location")
	resp, err = c.do(ctx, http.MethodPut, withDigest(loc, dgst), octetStream, bytes.NewReader(b), int64(len(b)), http.StatusCreated)
	if err != nil {
		return err
	}
	drain(resp.Body)
	return nil
}

// putManifest stores a manifest under ref (tag or digest).
func (c *client) putManifest(ctx context.Context, repo, ref, mediaType string, b []byte) error {
	resp, err := c.do(ctx, http.MethodPut, "/v2/"+repo+"/manifests/"+ref, http.Header{"Content-Type": {mediaType}},
		bytes.NewReader(b), int64(len(b)), http.StatusCreated)
	if err != nil {
		return err
	}
	drain(resp.Body)
	return nil
}

// del sends DELETE, expecting 202 (or 200/204).
func (c *client) del(ctx context.Context, ref string) error {
	resp, err := c.do(ctx, http.MethodDelete, ref, nil, nil, 0, http.StatusAccepted, http.StatusOK, http.StatusNoContent)
	if err != nil {
		return err
	}
	drain(resp.Body)
	return nil
}

// status returns the status code of a request (for checks after a delete).
func (c *client) status(ctx context.Context, method, ref string, hdr http.Header) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url(ref), nil)
	if err != nil {
		return 0, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	drain(resp.Body)
	return resp.StatusCode, nil
}

// waitReady polls GET /v2/ until it answers 200.
func waitReady(ctx context.Context, base string, alive func() error) error {
	c := newClient(base, 1)
	defer c.close()
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if err := alive(); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, last = c.get(cctx, "/v2/", nil)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.Join(errors.New("registry not ready after 60s"), last)
}

func itoa(n int) string { return strconv.Itoa(n) }
