package handlers

import (
	"context"
	"net/http"

	"github.com/opencontainers/go-digest"
)

// PullThrough is the pull-through cache (package proxy), seen from the
// API: the manifest, blob, tag list and referrers reads of a repository
// under a proxy's prefix ask it first to make what they serve present and
// current, then serve from the database and the blob store as for any
// repository. Everything that would change such a repository through the
// API is refused (see dispatch).
type PullThrough interface {
	// Upstream is the upstream URL of the proxy covering repository
	// name; "" for an ordinary repository.
	Upstream(ctx context.Context, name string) (string, error)
	// Manifest makes manifest ref (a tag or a digest) present and
	// current. stale, when not empty, says why the cached tag is served
	// without the upstream's confirmation.
	Manifest(ctx context.Context, name, ref string) (stale string, err error)
	// Blob makes blob dgst present. When it must be fetched and w is not
	// nil, the bytes may be streamed to w as they arrive: served is then
	// true, and an error means the response was broken off.
	Blob(ctx context.Context, w http.ResponseWriter, name string, dgst digest.Digest) (served bool, err error)
	// Tags lists the upstream's tags of name, sorted.
	Tags(ctx context.Context, name string) ([]string, error)
	// Referrers fetches the upstream's referrers of dgst into the cache.
	Referrers(ctx context.Context, name string, dgst digest.Digest) (stale string, err error)
}

// proxyOf returns the upstream of the proxy covering rt's repository, "" if
// none does (or the cache is off).
func (h *Handler) proxyOf(r *http.Request, rt route) (string, error) {
	if h.proxy == nil {
		return "", nil
	}
	return h.proxy.Upstream(r.Context(), rt.name)
}

// proxiedKey marks the context of a request to a pull-through cache
// repository.
const proxiedKey ctxKey = 100

func proxied(r *http.Request) bool {
	v, _ := r.Context().Value(proxiedKey).(bool)
	return v
}

// proxyWrite refuses a change to a repository of the pull-through cache.
func proxyWrite(rt route, method, upstream string) error {
	read := method == http.MethodGet || method == http.MethodHead
	if read && rt.kind != routeUpload {
		return nil
	}
	return errorf(CodeDenied, "repository %s is a pull-through cache of %s: it cannot be pushed to, deleted from or tagged (pull from it, or change the upstream)",
		rt.name, upstream)
}

// refuseProxied refuses a change the web interface would make to a
// repository of the pull-through cache, as the API does.
func (h *Handler) refuseProxied(r *http.Request, repo string) error {
	upstream, err := h.proxyOf(r, route{name: repo})
	if err != nil || upstream == "" {
		return err
	}
	return proxyWrite(route{kind: routeManifest, name: repo}, http.MethodDelete, upstream)
}

// setStale marks a response served from the cache without the
// upstream's confirmation (RFC 9111's warn-code 110, and Berth's own
// header with the reason).
func setStale(w http.ResponseWriter, reason string) {
	if reason == "" {
		return
	}
	w.Header().Set("Warning", `110 - "Response is Stale"`)
	w.Header().Set("X-Berth-Proxy-Stale", clipTo(reason, maxMessage))
}
