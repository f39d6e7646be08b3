package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/berth-registry/berth/manifest"
)

// The upstream client. Authentication (the Docker token protocol,
// anonymous or with the stored credentials, and Basic) is go-containerregistry's
// transport, already a dependency of Berth's tests: it pings /v2/, follows
// the challenge, fetches and refreshes tokens for the repository's pull
// scope. One transport per upstream repository is kept (its token is for
// that repository).

// UpstreamError is an upstream's answer that is not the content asked
// for, or the lack of an answer (Status 0): refused connection, timeout.
type UpstreamError struct {
	Upstream string // the proxy's upstream URL
	Kind     string // "manifest", "blob", "tags", "referrers"
	Ref      string // what was asked for: repository:tag, repository@digest
	Status   int    // the upstream's status; 0: no answer
	Detail   string // the upstream's error code and message, or why there was no answer
	Timeout  bool
	// RetryAfter is the upstream's Retry-After, passed on with a 429.
	RetryAfter string
	// shared: the answer of another request's fetch (see failureMemory),
	// whose whole message is Detail.
	shared bool
}

func (e *UpstreamError) Error() string {
	if e.shared {
		return e.Detail
	}
	if e.Status == 0 {
		return fmt.Sprintf("upstream %s did not answer for %s %s: %s", e.Upstream, e.Kind, e.Ref, e.Detail)
	}
	msg := fmt.Sprintf("upstream %s answered %d %s for %s %s", e.Upstream, e.Status, http.StatusText(e.Status), e.Kind, e.Ref)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// Unavailable reports an upstream that cannot serve now: no answer, 429 or
// 5xx. A cached tag is then served as it is (stale).
func (e *UpstreamError) Unavailable() bool {
	return e.Status == 0 || e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// maxUpstreamErrorBody bounds what is read of an upstream's error body.
const maxUpstreamErrorBody = 16 << 10

// manifestAccept is every manifest format Berth stores.
var manifestAccept = strings.Join([]string{
	manifest.MediaTypeOCIIndex, manifest.MediaTypeOCIManifest,
	manifest.MediaTypeDockerManifestList, manifest.MediaTypeDockerManifest,
}, ", ")

// upstream talks to the registry behind one proxy.
type upstream struct {
	base     *url.URL // scheme and host (and path prefix, rarely)
	reg      name.Registry
	auth     authn.Authenticator
	inner    http.RoundTripper // counting, with the timeouts
	timeout  time.Duration
	metrics  *metrics
	mu       sync.Mutex
	repos    map[string]http.RoundTripper // remote repository → authenticated transport
	upstream string                       // the URL as configured, for messages
}

// maxTransports bounds the authenticated transports kept per upstream; past
// it the map starts afresh (a token fetch per repository is the cost).
const maxTransports = 1024

func newUpstream(rawURL, username, password string, timeout time.Duration, m *metrics) (*upstream, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("upstream URL %q: want http://host[:port] or https://host[:port]", rawURL)
	}
	if u.User != nil {
		// It would be stored and listed in clear.
		return nil, errors.New("the upstream URL must not hold credentials: give them with --username and --password-stdin")
	}
	var opts []name.Option
	if u.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("upstream URL %q: %w", rawURL, err)
	}
	var auth authn.Authenticator = authn.Anonymous
	if username != "" {
		auth = &authn.Basic{Username: username, Password: password}
	}
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	base := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &upstream{base: u, reg: reg, auth: auth, inner: countingTransport{base, m}, timeout: timeout, metrics: m,
		repos: map[string]http.RoundTripper{}, upstream: rawURL}, nil
}

// transport returns the authenticated transport for remote repository
// repo, creating it (which pings the upstream) on first use.
func (u *upstream) transport(ctx context.Context, repo string) (http.RoundTripper, error) {
	u.mu.Lock()
	t, ok := u.repos[repo]
	u.mu.Unlock()
	if ok {
		return t, nil
	}
	pctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	scope := u.reg.Repo(repo).Scope(transport.PullScope)
	t, err := transport.NewWithContext(pctx, u.reg, u.auth, u.inner, []string{scope})
	if err != nil {
		return nil, u.noAnswer(err, "", repo)
	}
	u.mu.Lock()
	if len(u.repos) >= maxTransports {
		u.repos = map[string]http.RoundTripper{}
	}
	u.repos[repo] = t
	u.mu.Unlock()
	return t, nil
}

// noAnswer turns a transport error into an UpstreamError.
func (u *upstream) noAnswer(err error, kind, ref string) error {
	ue := &UpstreamError{Upstream: u.upstream, Kind: kind, Ref: ref, Detail: err.Error()}
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode != 0 {
		ue.Status = te.StatusCode
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		ue.Timeout = true
		ue.Detail = fmt.Sprintf("no answer within %s (--proxy-upstream-timeout)", u.timeout)
	}
	if kind == "" {
		ue.Kind = "repository"
	}
	return ue
}

// do sends method to /v2/<repo>/<path> and returns the response when its
// status is 200 (or 404 with allow404), else an *UpstreamError.
func (u *upstream) do(ctx context.Context, method, repo, path, accept, kind, ref string, allow404 bool) (*http.Response, error) {
	t, err := u.transport(ctx, repo)
	if err != nil {
		if ue, ok := err.(*UpstreamError); ok {
			ue.Kind, ue.Ref = kind, ref
		}
		return nil, err
	}
	target := *u.base
	target.Path = strings.TrimSuffix(u.base.Path, "/") + "/v2/" + repo + "/" + path
	if i := strings.IndexByte(path, '?'); i >= 0 {
		target.Path = strings.TrimSuffix(u.base.Path, "/") + "/v2/" + repo + "/" + path[:i]
		target.RawQuery = path[i+1:]
	}
	req, err := http.NewRequestWithContext(ctx, method, target.String(), nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := (&http.Client{Transport: t}).Do(req)
	if err != nil {
		return nil, u.noAnswer(err, kind, ref)
	}
	if resp.StatusCode == http.StatusOK || allow404 && resp.StatusCode == http.StatusNotFound {
		return resp, nil
	}
	defer resp.Body.Close()
	ue := &UpstreamError{Upstream: u.upstream, Kind: kind, Ref: ref, Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamErrorBody))
	var oci struct {
		Errors []struct{ Code, Message string }
	}
	if json.Unmarshal(body, &oci) == nil && len(oci.Errors) > 0 {
		ue.Detail = oci.Errors[0].Code + " " + oci.Errors[0].Message
	}
	return nil, ue
}

// countingTransport counts every request sent upstream by method and
// status (0: no answer).
type countingTransport struct {
	next http.RoundTripper
	m    *metrics
}

func (c countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(req)
	status := 0
	if err == nil {
		status = resp.StatusCode
	}
	c.m.upstream(req.Method, status)
	return resp, err
}

// idleReader fails a read that waits longer than timeout for the
// upstream: cancel ends the request (and with it the blocked Read), and
// the error then says why. A blob may take an hour to arrive, but an
// upstream that stops sending is given up.
type idleReader struct {
	r       io.Reader
	timer   *time.Timer
	timeout time.Duration
	fired   chan struct{}
	once    sync.Once
}

func newIdleReader(r io.Reader, timeout time.Duration, cancel context.CancelFunc) *idleReader {
	ir := &idleReader{r: r, timeout: timeout, fired: make(chan struct{})}
	ir.timer = time.AfterFunc(timeout, func() { ir.once.Do(func() { close(ir.fired) }); cancel() })
	ir.timer.Stop()
	return ir
}

// Read counts only the time spent waiting for the upstream: what the
// caller does between reads (writing to a client, uploading a part to
// S3) is not the upstream's silence.
func (ir *idleReader) Read(p []byte) (int, error) {
	ir.timer.Reset(ir.timeout)
	n, err := ir.r.Read(p)
	ir.timer.Stop()
	if err != nil && err != io.EOF {
		select {
		case <-ir.fired:
			return n, fmt.Errorf("upstream sent nothing for %s (--proxy-upstream-timeout): %w", ir.timeout, context.DeadlineExceeded)
		default:
		}
	}
	return n, err
}

func (ir *idleReader) stop() { ir.timer.Stop() }
