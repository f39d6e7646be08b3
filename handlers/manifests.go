package handlers

import (
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/manifest"
)

// reference is a manifest reference from a URL: a tag or a digest.
type reference struct {
	tag    string
	digest digest.Digest
}

func (r reference) String() string {
	if r.tag != "" {
		return r.tag
	}
	return r.digest.String()
}

// parseReference tells a digest (it has a colon, which a tag cannot) from a
// tag and validates either. badTag is the error for a malformed tag, which
// differs by method: a GET of a tag that cannot exist is simply unknown.
func parseReference(s string, badTag func(string) error) (reference, error) {
	if strings.Contains(s, ":") {
		d, err := parseDigest(s)
		return reference{digest: d}, err
	}
	if !validTag(s) {
		return reference{}, badTag(clip(s)) // badTag only words a message
	}
	return reference{tag: s}, nil
}

// getManifest serves GET and HEAD of /v2/<name>/manifests/<reference>, in
// one database round trip. The stored bytes are served exactly as pushed,
// with the media type they were pushed with.
func (h *Handler) getManifest(w http.ResponseWriter, r *http.Request, rt route) error {
	ref, err := parseReference(rt.ref, func(tag string) error {
		return errorf(CodeManifestUnknown, "no manifest %q in repository %s: it is neither a digest nor a valid tag", tag, rt.name)
	})
	if err != nil {
		return err
	}
	if proxied(r) {
		stale, err := h.proxy.Manifest(r.Context(), rt.name, ref.String())
		if err != nil {
			return err
		}
		setStale(w, stale)
	}
	withPayload := r.Method != http.MethodHead
	var m db.Manifest
	if ref.tag != "" {
		m, err = h.db.ManifestByTag(r.Context(), rt.name, ref.tag, withPayload)
	} else {
		m, err = h.db.ManifestByDigest(r.Context(), rt.name, ref.digest.String(), withPayload)
	}
	if err != nil {
		return err
	}
	hdr := w.Header()
	hdr.Set("Docker-Content-Digest", m.Digest)
	hdr.Set("ETag", `"`+m.Digest+`"`)
	if ref.tag != "" {
		// A tag can move at any time: caches must ask again each time,
		// and can do so cheaply with If-None-Match.
		hdr.Set("Cache-Control", "no-cache")
	} else {
		// Content addressed: these bytes never change.
		hdr.Set("Cache-Control", "public, max-age=31536000, immutable")
	}
	if etagMatches(r.Header.Get("If-None-Match"), m.Digest) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	hdr.Set("Content-Type", m.MediaType)
	hdr.Set("Content-Length", strconv.FormatInt(m.Size, 10))
	w.WriteHeader(http.StatusOK)
	if withPayload {
		w.Write(m.Payload)
		if h.pullStats != nil {
			h.pullStats.Record(rt.name, m.Digest, ref.tag)
		}
		h.recordPull(r, db.PullEvent{Repository: rt.name, Digest: m.Digest, MediaType: m.MediaType, Size: m.Size, Tag: ref.tag})
	}
	return nil
}

// recordPull hands a pull to the pull events buffer, when a webhook
// wants pulls: a GET that served content (not a HEAD, not a 304).
func (h *Handler) recordPull(r *http.Request, ev db.PullEvent) {
	if h.pulls == nil || !h.pulls.Wanted() {
		return
	}
	ev.Actor = h.actor(r)
	h.pulls.Record(ev)
}

// etagMatches evaluates an If-None-Match header against a manifest's ETag,
// with the weak comparison RFC 9110 prescribes for it.
func etagMatches(header, dgst string) bool {
	if header == "" {
		return false
	}
	for _, etag := range strings.Split(header, ",") {
		etag = strings.TrimPrefix(strings.TrimSpace(etag), "W/")
		if etag == "*" || strings.Trim(etag, `"`) == dgst {
			return true
		}
	}
	return false
}

// putManifest validates and stores a manifest, and points at it the tag it
// was pushed by and the ?tag= parameters (see pushTags).
func (h *Handler) putManifest(w http.ResponseWriter, r *http.Request, rt route) error {
	ref, err := parseReference(rt.ref, func(tag string) error {
		return errorf(CodeManifestInvalid, "invalid tag %q: up to %d letters, digits, '_', '.' and '-', not starting with '.' or '-'", tag, maxTagLength)
	})
	if err != nil {
		return err
	}
	tags, err := pushTags(r, ref)
	if err != nil {
		return err
	}
	var cond db.TagCondition
	if len(tags) > 0 {
		if cond, err = tagCondition(r); err != nil {
			return err
		}
	}
	if r.ContentLength > manifest.MaxSize {
		return tooLarge()
	}
	release, err := h.reserveManifest(r)
	if err != nil {
		return err
	}
	defer release()
	payload, err := readManifest(r)
	if err != nil {
		return bodyFailed(CodeManifestInvalid, err)
	}
	if len(payload) > manifest.MaxSize {
		return tooLarge()
	}
	alg := digest.SHA256
	if ref.digest != "" {
		alg = ref.digest.Algorithm()
	}
	dgst := manifest.Digest(payload, alg)
	if ref.digest != "" && dgst != ref.digest {
		return digestMismatch(dgst, ref.digest)
	}
	m, _, err := h.storeManifest(r, rt.name, tags, cond, r.Header.Get("Content-Type"), payload, dgst, false)
	if err != nil {
		return err
	}
	hdr := w.Header()
	hdr.Set("Location", "/v2/"+rt.name+"/manifests/"+dgst.String())
	hdr.Set("Docker-Content-Digest", dgst.String())
	if m.Subject != nil {
		hdr.Set("OCI-Subject", m.Subject.Digest.String())
	}
	setTagHeaders(w, tags)
	hdr.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// storeManifest validates payload and stores it as manifest dgst of
// repository name, pointing tags at it; it returns the manifest, without
// its blobs, children and annotations (let go once handed to the
// database), and where the first tag pointed before. A restore of a
// deleted manifest comes here too, with the stored bytes and its one tag:
// it is validated and recorded exactly like a push.
func (h *Handler) storeManifest(r *http.Request, name string, tags []string, cond db.TagCondition, contentType string,
	payload []byte, dgst digest.Digest, restore bool) (*manifest.Manifest, string, error) {
	m, err := manifest.Parse(contentType, payload)
	if err != nil {
		return nil, "", errorf(CodeManifestInvalid, "%v", err)
	}
	put := db.ManifestPutOf(name, dgst.String(), payload, m)
	put.Tags, put.TagCondition, put.Restore = tags, cond, restore
	// From here the database needs only put: let the descriptors (3 MB
	// for 27,000 layers) and the annotations go before its statements
	// run. Callers use the manifest's type and subject.
	m.Blobs, m.Children, m.Annotations = nil, nil, nil
	previous, err := h.db.ManifestStore(r.Context(), put, h.actorOn(r, name))
	if err != nil {
		return nil, "", err
	}
	if len(tags) == 0 {
		return m, "", nil
	}
	return m, previous[tags[0]], nil
}

// readManifest reads a manifest body. Like io.ReadAll of the body cut at
// manifest.MaxSize+1 bytes, which it replaces, it returns more than
// MaxSize bytes for a body that is too large (a larger Content-Length is
// refused before). With a Content-Length it reads into one buffer of that
// size, without into chunks joined once at the end: io.ReadAll grows its
// buffer step by step, which for 4 MiB allocated more than twice that.
func readManifest(r *http.Request) ([]byte, error) {
	if n := r.ContentLength; n >= 0 {
		// net/http ends the body at Content-Length; a shorter one is an
		// io.ErrUnexpectedEOF.
		payload := make([]byte, n)
		if _, err := io.ReadFull(r.Body, payload); err != nil {
			return nil, err
		}
		return payload, nil
	}
	body := io.LimitReader(r.Body, manifest.MaxSize+1)
	var chunks [][]byte
	total := 0
	for size := 16 << 10; ; size = min(2*size, 1<<20) {
		chunk := make([]byte, size)
		n, err := io.ReadFull(body, chunk)
		total += n
		chunks = append(chunks, chunk[:n])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if len(chunks) == 1 {
		return chunks[0], nil
	}
	payload := make([]byte, 0, total)
	for _, c := range chunks {
		payload = append(payload, c...)
	}
	return payload, nil
}

func tooLarge() error {
	return errorf(CodeManifestInvalid, "manifest is larger than the %d MiB limit", manifest.MaxSize>>20).
		withStatus(http.StatusRequestEntityTooLarge)
}

// deleteManifest deletes by digest (a soft delete that also removes the
// manifest's tags) or, by tag, removes only the tag.
func (h *Handler) deleteManifest(w http.ResponseWriter, r *http.Request, rt route) error {
	ref, err := parseReference(rt.ref, func(tag string) error {
		return errorf(CodeManifestUnknown, "no manifest %q in repository %s: it is neither a digest nor a valid tag", tag, rt.name)
	})
	if err != nil {
		return err
	}
	if ref.tag != "" {
		return h.untag(w, r, rt.name, ref.tag)
	}
	if err := h.db.ManifestDelete(r.Context(), rt.name, ref.digest.String(), h.actorOn(r, rt.name)); err != nil {
		return err
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}
