package handlers

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"slices"
	"strconv"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-registry/berth/proxy"
)

// Page sizes of the listing routes. Without n a client gets defaultPage
// entries and a Link header to the next page; n above maxPage is cut to
// maxPage, also with a Link, as the spec allows.
const (
	defaultPage = 1000
	maxPage     = 10000
)

// page reads the n and last query parameters. last must be of the form
// of what the route lists (validLast), so that nothing a client sends
// reaches the database unchecked.
func page(r *http.Request, what string, validLast func(string) bool) (n int, last string, err error) {
	q := r.URL.Query()
	n = defaultPage
	if s := q.Get("n"); s != "" {
		v, ok := parseDecimal(s)
		if !ok {
			return 0, "", errorf(CodeUnsupported, "n must be a number of entries in decimal digits, not %q", clip(s)).
				withStatus(http.StatusBadRequest)
		}
		n = int(min(v, maxPage))
	}
	last = q.Get("last")
	if last != "" && !validLast(last) {
		return 0, "", errorf(CodeUnsupported, "last must be a %s, not %q", what, clip(last)).withStatus(http.StatusBadRequest)
	}
	return n, last, nil
}

// setNextLink sets the Link header (RFC 8288) to the page after last,
// keeping the path and the other parameters the client used.
func setNextLink(w http.ResponseWriter, r *http.Request, n int, last string) {
	q := r.URL.Query()
	q.Set("n", strconv.Itoa(n))
	q.Set("last", last)
	w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, q.Encode()))
}

func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) error {
	return writeJSONStatus(w, r, http.StatusOK, contentType, v)
}

func writeJSONStatus(w http.ResponseWriter, r *http.Request, status int, contentType string, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
	return nil
}

// listTags serves GET /v2/<name>/tags/list and its alias tags/_list. A tag
// literally named "list" or "_list" exists like any other, but these GET
// routes always mean the listing.
func (h *Handler) listTags(w http.ResponseWriter, r *http.Request, rt route) error {
	n, last, err := page(r, "tag", validTag)
	if err != nil {
		return err
	}
	var tags []string
	var more bool
	if proxied(r) {
		tags, more, err = h.proxyTags(w, r, rt, last, n)
	} else {
		tags, more, err = h.db.TagList(r.Context(), rt.name, last, n)
	}
	if err != nil {
		return err
	}
	if more && n > 0 {
		setNextLink(w, r, n, tags[len(tags)-1])
	}
	return writeJSON(w, r, "application/json", struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{rt.name, tags})
}

// catalog serves GET /v2/_catalog.
func (h *Handler) catalog(w http.ResponseWriter, r *http.Request) error {
	setRoute(r.Context(), "catalog")
	n, last, err := page(r, "repository name", validName)
	if err != nil {
		return err
	}
	names, more, err := h.catalogPage(r, last, n)
	if err != nil {
		return err
	}
	if more && n > 0 {
		setNextLink(w, r, n, names[len(names)-1])
	}
	return writeJSON(w, r, "application/json", struct {
		Repositories []string `json:"repositories"`
	}{names})
}

// referrers serves GET /v2/<name>/referrers/<digest>: an image index of the
// manifests whose subject is the digest, empty (not 404) when there are
// none, optionally filtered by artifactType.
func (h *Handler) referrers(w http.ResponseWriter, r *http.Request, rt route) error {
	dgst, err := parseDigest(rt.ref)
	if err != nil {
		return err
	}
	artifactType := r.URL.Query().Get("artifactType")
	if artifactType != "" {
		if _, _, err := mime.ParseMediaType(artifactType); err != nil {
			return errorf(CodeUnsupported, "artifactType must be a media type, not %q", clip(artifactType)).withStatus(http.StatusBadRequest)
		}
	}
	if proxied(r) {
		stale, err := h.proxy.Referrers(r.Context(), rt.name, dgst)
		if err != nil {
			return err
		}
		setStale(w, stale)
	}
	refs, err := h.db.Referrers(r.Context(), rt.name, dgst.String(), artifactType)
	if err != nil {
		return err
	}
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: make([]ocispec.Descriptor, 0, len(refs)),
	}
	for _, ref := range refs {
		d := ocispec.Descriptor{
			MediaType:    ref.MediaType,
			Digest:       digest.Digest(ref.Digest),
			Size:         ref.Size,
			ArtifactType: ref.ArtifactType,
		}
		if len(ref.Annotations) > 0 {
			if err := json.Unmarshal(ref.Annotations, &d.Annotations); err != nil {
				return fmt.Errorf("decode annotations of %s: %w", ref.Digest, err)
			}
		}
		index.Manifests = append(index.Manifests, d)
	}
	if artifactType != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	return writeJSON(w, r, ocispec.MediaTypeImageIndex, index)
}

// proxyTags is a page of the upstream's tags of a pull-through cache
// repository; the cached ones, marked stale, when the upstream cannot
// answer.
func (h *Handler) proxyTags(w http.ResponseWriter, r *http.Request, rt route, last string, n int) ([]string, bool, error) {
	all, err := h.proxy.Tags(r.Context(), rt.name)
	var ue *proxy.UpstreamError
	if errors.As(err, &ue) && ue.Unavailable() {
		setStale(w, ue.Error())
		return h.db.TagList(r.Context(), rt.name, last, n)
	}
	if err != nil {
		return nil, false, err
	}
	i, _ := slices.BinarySearch(all, last)
	if i < len(all) && all[i] == last {
		i++
	}
	if last == "" {
		i = 0
	}
	tags := append([]string{}, all[i:]...) // [] rather than null when there are none
	if n >= 0 && len(tags) > n {
		return tags[:n], true, nil
	}
	return tags, false, nil
}
