// Package proxy is Berth's pull-through cache: repositories under a
// proxy's prefix are filled from an upstream registry when clients pull
// them, and served from Berth's own database and blob store afterwards.
//
// Every replica shares the cache, and fetches cluster-wide once: the first
// replica that needs something claims it in the database (proxy_claims,
// with a lease it renews while it fetches); the other requests and
// replicas wait until it is stored, then serve it from the store. Within a
// replica, concurrent requests for the same thing share one claim. A
// replica killed mid-fetch stops renewing, and once the lease has expired
// the next waiter takes the claim over.
//
// Manifests by digest are cached for good; a cached tag is re-checked with
// a HEAD (which Docker Hub does not count as a pull) once older than the
// proxy's TTL, and fetched again only when its digest changed. Blobs are
// streamed to the client that caused the fetch while they are stored, and
// become visible to others only once their digest is verified. When the
// upstream cannot answer (no answer, timeout, 429, 5xx), a cached tag is
// served as it is, marked stale.
package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/digests"
	"github.com/berth-registry/berth/manifest"
)

// Defaults of the settings (see Config).
const (
	DefaultTimeout = 10 * time.Second
	DefaultLease   = 30 * time.Second
	DefaultTTL     = 5 * time.Minute
)

// proxiesReload is how long a replica uses the proxies it read before it
// reads them again: a proxy added or deleted by `berth proxy` applies on
// every replica within this time, without a restart.
const proxiesReload = time.Second

// failureMemory is how long a failed fetch's answer is shared with the
// requests that come after it, before the upstream is asked again: the
// waiters of the failed fetch get it at once, and a failing upstream is
// not asked once per request.
const failureMemory = 2 * time.Second

// maxWait bounds how long a request waits for another replica's fetch,
// which is renewed while it makes progress, on top of the request's own
// context.
const maxWait = 30 * time.Minute

// Store is what the cache needs of the blob store.
type Store interface {
	blobstore.Reader
	blobstore.Uploader
}

// Config configures the cache.
type Config struct {
	DB    *db.DB
	Blobs Store
	// Timeout bounds every wait for an upstream: connecting, its answer,
	// and each read of a blob's bytes (--proxy-upstream-timeout).
	Timeout time.Duration
	// Lease is how long a claim on a fetch lasts without renewal
	// (--proxy-fetch-lease): how soon a killed replica's fetch is taken
	// over.
	Lease time.Duration
	// SecretKey opens upstream passwords (--proxy-secret-key).
	SecretKey string
	// Instance names this replica in its claims.
	Instance string
	Logger   *slog.Logger
	// Registry receives the cache's metrics; nil registers none.
	Registry prometheus.Registerer
}

// Cache is the pull-through cache of one replica.
type Cache struct {
	cfg     Config
	db      *db.DB
	log     *slog.Logger
	metrics *metrics
	local   group

	snapshot atomic.Pointer[proxies]
	reload   sync.Mutex // held by the request that reads the proxies

	mu        sync.Mutex
	upstreams map[string]*upstream // by prefix + the row's identity
}

type proxyEntry struct {
	db.Proxy
	key string // identity of the row, for the upstream clients
}

// New returns the cache.
func New(cfg Config) *Cache {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Instance == "" {
		var b [8]byte
		rand.Read(b[:])
		cfg.Instance = hex.EncodeToString(b[:])
	}
	return &Cache{cfg: cfg, db: cfg.DB, log: cfg.Logger, metrics: newMetrics(cfg.Registry),
		local: group{calls: map[string]*call{}}, upstreams: map[string]*upstream{}}
}

// match returns the proxy whose prefix covers repository name (the
// longest; the empty prefix covers what no other does), or nil. Every API
// request asks, so the proxies are a snapshot read without a lock; one
// request at a time reads them again once the snapshot is older than
// proxiesReload, the others use the snapshot meanwhile.
func (c *Cache) match(ctx context.Context, repo string) (*proxyEntry, error) {
	snap := c.snapshot.Load()
	if snap == nil || time.Since(snap.at) > proxiesReload {
		if snap == nil {
			c.reload.Lock() // nothing to serve with before the first read
		} else if !c.reload.TryLock() {
			return snap.match(repo), nil
		}
		var err error
		snap, err = c.load(ctx)
		c.reload.Unlock()
		if err != nil {
			return nil, err
		}
	}
	return snap.match(repo), nil
}

// proxies is a snapshot of the proxies, longest prefix first.
type proxies struct {
	list []*proxyEntry
	at   time.Time
}

func (s *proxies) match(repo string) *proxyEntry {
	for _, p := range s.list {
		if p.Prefix == "" || repo == p.Prefix || strings.HasPrefix(repo, p.Prefix+"/") {
			return p
		}
	}
	return nil
}

// load reads the proxies (unless another request just did), with
// c.reload held.
func (c *Cache) load(ctx context.Context) (*proxies, error) {
	old := c.snapshot.Load()
	if old != nil && time.Since(old.at) <= proxiesReload {
		return old, nil
	}
	list, err := c.db.ProxyList(ctx)
	if err != nil {
		if old == nil {
			return nil, err
		}
		// Serve on with the proxies read last; the next request after
		// proxiesReload tries again.
		c.log.WarnContext(ctx, "read the proxies; using the ones read before", "err", err)
		s := &proxies{list: old.list, at: time.Now()}
		c.snapshot.Store(s)
		return s, nil
	}
	s := &proxies{at: time.Now()}
	for _, p := range list {
		s.list = append(s.list, &proxyEntry{Proxy: p,
			key: p.Prefix + "\x00" + p.Upstream + "\x00" + p.Username + "\x00" + hex.EncodeToString(p.Password)})
	}
	slices.SortFunc(s.list, func(a, b *proxyEntry) int { return len(b.Prefix) - len(a.Prefix) })
	c.snapshot.Store(s)
	return s, nil
}

// Upstream returns the upstream URL of the proxy that covers repository
// name, or "" when it is an ordinary repository.
func (c *Cache) Upstream(ctx context.Context, repo string) (string, error) {
	p, err := c.match(ctx, repo)
	if err != nil || p == nil {
		return "", err
	}
	return p.Upstream, nil
}

// remote is the upstream's name of local repository repo.
func (p *proxyEntry) remote(repo string) string {
	rest := repo
	if p.Prefix != "" {
		rest = strings.TrimPrefix(strings.TrimPrefix(repo, p.Prefix), "/")
	}
	if p.RemotePrefix == "" {
		return rest
	}
	if rest == "" {
		return p.RemotePrefix
	}
	return p.RemotePrefix + "/" + rest
}

// client returns the upstream client of p.
func (c *Cache) client(ctx context.Context, p *proxyEntry) (*upstream, error) {
	c.mu.Lock()
	u, ok := c.upstreams[p.key]
	c.mu.Unlock()
	if ok {
		return u, nil
	}
	var password string
	if p.Password != nil {
		var err error
		if password, err = openPassword(ctx, c.db, c.cfg.SecretKey, p.Prefix, p.Password); err != nil {
			return nil, fmt.Errorf("proxy %q: %w", p.Prefix, err)
		}
	}
	u, err := newUpstream(p.Upstream, p.Username, password, c.cfg.Timeout, c.metrics)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.upstreams[p.key] = u
	c.mu.Unlock()
	return u, nil
}

// actor is who the cache's changes are recorded as, in the audit trail.
var actor = db.Actor{Name: "proxy"}

// Manifest makes manifest ref (a tag or a digest) of repository repo,
// which a proxy covers, present and current in the cache. stale is not
// empty when the upstream could not be asked and the cached tag is to be
// served as it is: it says why.
func (c *Cache) Manifest(ctx context.Context, repo, ref string) (stale string, err error) {
	p, err := c.match(ctx, repo)
	if err != nil || p == nil {
		return "", err
	}
	if strings.Contains(ref, ":") {
		present := func(ctx context.Context) (bool, error) { return c.manifestPresent(ctx, repo, ref) }
		if ok, err := present(ctx); err != nil || ok {
			c.metrics.hit("manifest", ok)
			return "", err
		}
		c.metrics.miss("manifest")
		return "", c.flight(ctx, "m:"+repo+"@"+ref, present, func(ctx context.Context) error {
			_, err := c.fetchManifest(ctx, p, repo, ref, "")
			return err
		})
	}
	_, err = c.db.ManifestByTag(ctx, repo, ref, false)
	if err != nil && !errors.Is(err, db.ErrManifestUnknown) {
		return "", err
	}
	isCached := err == nil
	// Done when the tag was checked within the TTL and is cached: a
	// cached tag removed since (retention, garbage collection) is fetched
	// again, not answered 404 until the TTL runs out.
	fresh := func(ctx context.Context) (bool, error) {
		ok, err := c.db.ProxyCheckFresh(ctx, repo, ref, p.TTL)
		if err != nil || !ok {
			return false, err
		}
		_, err = c.db.ManifestByTag(ctx, repo, ref, false)
		if errors.Is(err, db.ErrManifestUnknown) {
			return false, nil
		}
		return err == nil, err
	}
	if isCached {
		if ok, err := fresh(ctx); err != nil || ok {
			c.metrics.hit("manifest", ok)
			return "", err
		}
	} else {
		c.metrics.miss("manifest")
	}
	err = c.flight(ctx, "t:"+repo+":"+ref, fresh, func(ctx context.Context) error {
		return c.checkTag(ctx, p, repo, ref)
	})
	var ue *UpstreamError
	if err != nil && errors.As(err, &ue) && ue.Unavailable() {
		if _, cerr := c.db.ManifestByTag(ctx, repo, ref, false); cerr == nil {
			c.metrics.staleServe("manifest")
			return ue.Error(), nil
		}
	}
	return "", err
}

func (c *Cache) manifestPresent(ctx context.Context, repo, dgst string) (bool, error) {
	_, err := c.db.ManifestByDigest(ctx, repo, dgst, false)
	if errors.Is(err, db.ErrManifestUnknown) {
		return false, nil
	}
	return err == nil, err
}

// checkTag brings tag of repo up to date: a HEAD when it is cached (a GET
// only when its digest moved), a GET when it is not.
func (c *Cache) checkTag(ctx context.Context, p *proxyEntry, repo, tag string) error {
	cached, err := c.db.ManifestByTag(ctx, repo, tag, false)
	if err != nil && !errors.Is(err, db.ErrManifestUnknown) {
		return err
	}
	if err == nil {
		u, err := c.client(ctx, p)
		if err != nil {
			return err
		}
		remote := p.remote(repo)
		hctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		resp, err := u.do(hctx, http.MethodHead, remote, "manifests/"+tag, manifestAccept, "manifest", remote+":"+tag, false)
		cancel()
		if err != nil {
			return err
		}
		resp.Body.Close()
		upstreamDigest := resp.Header.Get("Docker-Content-Digest")
		if upstreamDigest == cached.Digest {
			return c.db.ProxyChecked(ctx, repo, tag)
		}
		if _, err := digest.Parse(upstreamDigest); err == nil {
			// Moved: fetch the new digest (once, cluster-wide), then the tag.
			present := func(ctx context.Context) (bool, error) { return c.manifestPresent(ctx, repo, upstreamDigest) }
			err := c.flight(ctx, "m:"+repo+"@"+upstreamDigest, present, func(ctx context.Context) error {
				_, err := c.fetchManifest(ctx, p, repo, upstreamDigest, "")
				return err
			})
			if err != nil {
				return err
			}
			m, err := c.db.ManifestByDigest(ctx, repo, upstreamDigest, true)
			if err != nil {
				return err
			}
			if err := c.store(ctx, p.Upstream, repo, m.MediaType, m.Payload, digest.Digest(m.Digest), tag); err != nil {
				return err
			}
			return c.db.ProxyChecked(ctx, repo, tag)
		}
		// No digest in the HEAD's answer: a GET by tag tells.
	}
	_, err = c.fetchManifest(ctx, p, repo, tag, tag)
	return err
}

// fetchManifest GETs manifest ref (a digest, or the tag) of repo from the
// upstream, verifies it and stores it, tagged tag when tag is set.
func (c *Cache) fetchManifest(ctx context.Context, p *proxyEntry, repo, ref, tag string) (digest.Digest, error) {
	u, err := c.client(ctx, p)
	if err != nil {
		return "", err
	}
	remote := p.remote(repo)
	what := remote + ":" + ref
	if strings.Contains(ref, ":") {
		what = remote + "@" + ref
	}
	gctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	resp, err := u.do(gctx, http.MethodGet, remote, "manifests/"+ref, manifestAccept, "manifest", what, false)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	payload, err := io.ReadAll(io.LimitReader(resp.Body, manifest.MaxSize+1))
	if err != nil {
		return "", u.noAnswer(err, "manifest", what)
	}
	c.metrics.bytes.Add(float64(len(payload)))
	if len(payload) > manifest.MaxSize {
		return "", &UpstreamError{Upstream: p.Upstream, Kind: "manifest", Ref: what, Status: resp.StatusCode,
			Detail: fmt.Sprintf("the manifest is larger than %d bytes", manifest.MaxSize)}
	}
	alg := digest.SHA256
	if d, err := digest.Parse(ref); err == nil {
		alg = d.Algorithm()
	} else if d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil && d.Algorithm().Available() {
		alg = d.Algorithm()
	}
	dgst := manifest.Digest(payload, alg)
	want := ref
	if !strings.Contains(ref, ":") {
		want = resp.Header.Get("Docker-Content-Digest")
	}
	if want != "" && want != dgst.String() {
		return "", &UpstreamError{Upstream: p.Upstream, Kind: "manifest", Ref: what, Status: resp.StatusCode,
			Detail: fmt.Sprintf("the manifest's bytes have digest %s, not %s", dgst, want)}
	}
	if err := c.store(ctx, p.Upstream, repo, resp.Header.Get("Content-Type"), payload, dgst, tag); err != nil {
		return "", err
	}
	if tag != "" {
		if err := c.db.ProxyChecked(ctx, repo, tag); err != nil {
			return "", err
		}
	}
	return dgst, nil
}

// store records a fetched manifest through ManifestStore, sparse: what it
// references is fetched when a client asks for it.
func (c *Cache) store(ctx context.Context, upstream, repo, contentType string, payload []byte, dgst digest.Digest, tag string) error {
	m, err := manifest.Parse(contentType, payload)
	if err != nil {
		return &UpstreamError{Upstream: upstream, Kind: "manifest", Ref: repo + "@" + dgst.String(), Status: http.StatusOK,
			Detail: fmt.Sprintf("Berth cannot store it: %v", err)}
	}
	put := db.ManifestPutOf(repo, dgst.String(), payload, m)
	put.Sparse = true
	if tag != "" {
		put.Tags = []string{tag}
	}
	if _, err := c.db.ManifestStore(ctx, put, actor); err != nil {
		return err
	}
	// An index cached before this child lists it as absent: now present.
	_, err = c.db.ProxyResolve(ctx, repo, dgst.String(), true)
	return err
}

// Blob makes blob dgst of repo present in the cache. When it must be
// fetched and w is not nil, the bytes are streamed to w as they arrive
// (served true: the response is written, or broken off on err).
func (c *Cache) Blob(ctx context.Context, w http.ResponseWriter, repo string, dgst digest.Digest) (served bool, err error) {
	p, err := c.match(ctx, repo)
	if err != nil || p == nil {
		return false, err
	}
	present := func(ctx context.Context) (bool, error) { return c.blobPresent(ctx, repo, dgst) }
	if ok, err := present(ctx); err != nil || ok {
		c.metrics.hit("blob", ok)
		return false, err
	}
	c.metrics.miss("blob")
	// Within this replica, requests for the same blob of the same
	// repository share a fetch; across repositories and replicas, the
	// claim is the upstream's digest, so that images sharing a layer fetch
	// it once: a request of another repository waits for it, then finds
	// it stored (present links it, as a manifest of its own names it).
	// What a repository-specific answer says (404, 401, 403) is not
	// shared beyond the request (see holding).
	err = c.flightKeys(ctx, "b:"+repo+"@"+dgst.String(), "b:"+p.Upstream+"@"+dgst.String(), present, func(ctx context.Context) error {
		return c.fetchBlob(ctx, p, repo, dgst, w, &served)
	})
	return served, err
}

func (c *Cache) blobPresent(ctx context.Context, repo string, dgst digest.Digest) (bool, error) {
	_, err := c.db.BlobSize(ctx, repo, dgst.String())
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, db.ErrBlobUnknown) {
		return false, err
	}
	// Stored for another repository, and named by a cached manifest of
	// this one: link it, no fetch.
	ready, err := c.db.BlobReady(ctx, dgst.String())
	if err != nil || !ready {
		return false, err
	}
	return c.db.ProxyResolve(ctx, repo, dgst.String(), false)
}

// fetchBlob GETs blob dgst of repo from the upstream, storing it and, with
// w, sending it on; it becomes visible once verified.
func (c *Cache) fetchBlob(ctx context.Context, p *proxyEntry, repo string, dgst digest.Digest, w http.ResponseWriter, wrote *bool) error {
	u, err := c.client(ctx, p)
	if err != nil {
		return err
	}
	remote := p.remote(repo)
	what := remote + "@" + dgst.String()
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := u.do(bctx, http.MethodGet, remote, "blobs/"+dgst.String(), "", "blob", what, false)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// A cached manifest that names the blob says how large it is: an
	// upstream that sends more is cut off there (and fails the digest),
	// instead of filling the store.
	declared, known, err := c.db.ProxyAbsentBlob(ctx, repo, dgst.String())
	if err != nil {
		return err
	}
	if known && resp.ContentLength >= 0 && resp.ContentLength != declared {
		return &UpstreamError{Upstream: p.Upstream, Kind: "blob", Ref: what, Status: resp.StatusCode,
			Detail: fmt.Sprintf("it has %d bytes, the manifest says %d", resp.ContentLength, declared)}
	}
	body := newIdleReader(resp.Body, c.cfg.Timeout, cancel)
	defer body.stop()
	var limited io.Reader = body
	if known {
		limited = io.LimitReader(body, declared+1)
	}
	hsh := digests.New(dgst.Algorithm())
	src := &teeReader{r: limited, hash: hsh, w: w, counted: c.metrics.bytes, timeout: c.cfg.Timeout}
	if w != nil {
		src.rc = http.NewResponseController(w)
		// The deadlines set per write must not outlive this response on a
		// kept-alive connection.
		defer src.rc.SetWriteDeadline(time.Time{})
		hdr := w.Header()
		hdr.Set("Docker-Content-Digest", dgst.String())
		hdr.Set("Content-Type", "application/octet-stream")
		hdr.Set("ETag", `"`+dgst.String()+`"`)
		if resp.ContentLength >= 0 {
			hdr.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
		}
		w.WriteHeader(http.StatusOK)
		*wrote = true
	}
	staging := "p-" + randomID()
	state, n, err := c.cfg.Blobs.AppendChunk(ctx, staging, nil, src)
	defer func() {
		if err := c.cfg.Blobs.DeleteUpload(context.WithoutCancel(ctx), staging, state); err != nil {
			c.log.Warn("remove a fetched blob's staging data", "digest", dgst, "err", err)
		}
	}()
	if err != nil {
		if errors.Is(err, blobstore.ErrStorageFull) {
			return err
		}
		return u.noAnswer(err, "blob", what)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return &UpstreamError{Upstream: p.Upstream, Kind: "blob", Ref: what, Status: resp.StatusCode,
			Detail: fmt.Sprintf("sent %d bytes of %d", n, resp.ContentLength)}
	}
	if got := digest.NewDigest(dgst.Algorithm(), hsh); got != dgst {
		return &UpstreamError{Upstream: p.Upstream, Kind: "blob", Ref: what, Status: resp.StatusCode,
			Detail: fmt.Sprintf("the bytes have digest %s", got)}
	}
	publish := func(ctx context.Context) error { return c.cfg.Blobs.Publish(ctx, staging, state, dgst) }
	if err := c.db.PublishIfNew(ctx, dgst.String(), publish); err != nil {
		return err
	}
	return c.db.ProxyBlobCommit(ctx, repo, dgst.String(), n, publish, actor)
}

// teeReader hashes what it reads and sends it to w as well; a client that
// goes away, or stops reading for longer than timeout (each write has that
// deadline, through rc), stops getting it, but the fetch goes on for the
// others: a client that does not read must not hold up the fetch that
// every replica waits for.
type teeReader struct {
	r       io.Reader
	hash    io.Writer
	w       io.Writer
	rc      *http.ResponseController
	timeout time.Duration
	broken  bool
	counted prometheus.Counter
}

func (t *teeReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		t.hash.Write(p[:n])
		t.counted.Add(float64(n))
		if t.w != nil && !t.broken {
			if t.rc != nil {
				// Not supported by a writer: no bound, as before.
				_ = t.rc.SetWriteDeadline(time.Now().Add(t.timeout))
			}
			if _, werr := t.w.Write(p[:n]); werr != nil {
				t.broken = true
			}
		}
	}
	return n, err
}

// Tags returns the upstream's tags of repo, sorted.
func (c *Cache) Tags(ctx context.Context, repo string) ([]string, error) {
	p, err := c.match(ctx, repo)
	if err != nil || p == nil {
		return nil, err
	}
	u, err := c.client(ctx, p)
	if err != nil {
		return nil, err
	}
	remote := p.remote(repo)
	var all []string
	path := "tags/list"
	for page := 0; page < maxTagPages && path != ""; page++ {
		tctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		resp, err := u.do(tctx, http.MethodGet, remote, path, "", "tags", remote, false)
		if err != nil {
			cancel()
			return nil, err
		}
		var body struct{ Tags []string }
		err = jsonDecode(resp.Body, &body)
		next := nextPage(resp.Header.Get("Link"), remote)
		resp.Body.Close()
		cancel()
		if err != nil {
			return nil, u.noAnswer(err, "tags", remote)
		}
		all = append(all, body.Tags...)
		path = next
	}
	slices.Sort(all)
	return slices.Compact(all), nil
}

// maxTagPages bounds the pages of an upstream's tag list that are read.
const maxTagPages = 100

// nextPage reads the Link header of a tag list page: the path after
// /v2/<remote>/, or "".
func nextPage(link, remote string) string {
	start, end := strings.IndexByte(link, '<'), strings.IndexByte(link, '>')
	if start < 0 || end < start {
		return ""
	}
	target := link[start+1 : end]
	if i := strings.Index(target, "/v2/"+remote+"/"); i >= 0 {
		return target[i+len("/v2/"+remote+"/"):]
	}
	return ""
}

// Referrers fetches into the cache the referrers that the upstream knows
// of subject dgst of repo: from its referrers API, or else from the
// fallback tag sha256-<hex>. Re-checked after the proxy's TTL; stale is
// the reason when the upstream could not be asked (what is cached is
// served).
func (c *Cache) Referrers(ctx context.Context, repo string, dgst digest.Digest) (stale string, err error) {
	p, err := c.match(ctx, repo)
	if err != nil || p == nil {
		return "", err
	}
	key := "referrers:" + dgst.String()
	fresh := func(ctx context.Context) (bool, error) { return c.db.ProxyCheckFresh(ctx, repo, key, p.TTL) }
	if ok, err := fresh(ctx); err != nil || ok {
		return "", err
	}
	err = c.flight(ctx, "r:"+repo+"@"+dgst.String(), fresh, func(ctx context.Context) error {
		return c.fetchReferrers(ctx, p, repo, dgst)
	})
	var ue *UpstreamError
	if err != nil && errors.As(err, &ue) && ue.Unavailable() {
		c.metrics.staleServe("referrers")
		return ue.Error(), nil
	}
	return "", err
}

func (c *Cache) fetchReferrers(ctx context.Context, p *proxyEntry, repo string, dgst digest.Digest) error {
	u, err := c.client(ctx, p)
	if err != nil {
		return err
	}
	remote := p.remote(repo)
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	resp, err := u.do(rctx, http.MethodGet, remote, "referrers/"+dgst.String(), manifest.MediaTypeOCIIndex, "referrers", remote+"@"+dgst.String(), true)
	var ue *UpstreamError
	if err != nil && !(errors.As(err, &ue) && (ue.Status == http.StatusNotFound || ue.Status == http.StatusMethodNotAllowed)) {
		cancel()
		return err
	}
	if err != nil {
		// 404 or 405: no referrers API, which is an answer: the
		// fallback tag below.
		err, resp = nil, nil
	}
	var index struct {
		Manifests []struct {
			Digest string `json:"digest"`
		} `json:"manifests"`
	}
	api := err == nil && resp.StatusCode == http.StatusOK
	if api {
		err = jsonDecode(resp.Body, &index)
	}
	if resp != nil {
		resp.Body.Close()
	}
	cancel()
	if err != nil {
		return u.noAnswer(err, "referrers", remote+"@"+dgst.String())
	}
	if !api {
		// No referrers API: the fallback tag, an index of the referrers.
		tag := dgst.Algorithm().String() + "-" + dgst.Encoded()
		rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		resp, err := u.do(rctx, http.MethodGet, remote, "manifests/"+tag, manifestAccept, "referrers", remote+":"+tag, true)
		if err != nil {
			cancel()
			return err
		}
		if resp.StatusCode == http.StatusOK {
			err = jsonDecode(resp.Body, &index)
		}
		resp.Body.Close()
		cancel()
		if err != nil {
			return u.noAnswer(err, "referrers", remote+":"+tag)
		}
	}
	for _, m := range index.Manifests {
		d, err := digest.Parse(m.Digest)
		if err != nil {
			continue
		}
		if _, err := c.Manifest(ctx, repo, d.String()); err != nil {
			return err
		}
	}
	return c.db.ProxyChecked(ctx, repo, "referrers:"+dgst.String())
}

// CheckUpstreamURL checks an upstream URL as `berth proxy add` takes it.
func CheckUpstreamURL(rawURL string) error {
	_, err := newUpstream(rawURL, "", "", DefaultTimeout, newMetrics(nil))
	return err
}

func randomID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
