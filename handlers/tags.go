package handlers

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db"
)

// Tags are rows in PostgreSQL, so Berth can offer what a registry of link
// files cannot: untag without touching the manifest, conditional tag
// changes (If-Match / If-None-Match with digests as entity tags), a history
// of every change, and restoring a tag to an earlier digest.

// tagCondition reads the conditional headers of a tag change. If-Match
// lists the digests the tag may point at ("*": any, it must exist);
// If-None-Match: * means the tag must not exist yet.
func tagCondition(r *http.Request) (db.TagCondition, error) {
	var cond db.TagCondition
	if v := r.Header.Get("If-Match"); v != "" {
		for _, etag := range strings.Split(v, ",") {
			etag = strings.TrimSpace(etag)
			if etag == "*" {
				cond.IfMatch = append(cond.IfMatch, "*")
				continue
			}
			d, err := parseDigest(strings.Trim(etag, `"`))
			if err != nil || strings.HasPrefix(etag, "W/") {
				return cond, errorf(CodeDigestInvalid, `If-Match must list quoted manifest digests ("sha256:…") or *, not %s`, clip(etag))
			}
			cond.IfMatch = append(cond.IfMatch, d.String())
		}
	}
	if v := r.Header.Get("If-None-Match"); v != "" {
		if strings.TrimSpace(v) != "*" {
			return cond, errorf(CodeUnsupported, "a tag change supports only If-None-Match: * (create the tag only if it does not exist)").
				withStatus(http.StatusBadRequest)
		}
		cond.IfNoneMatch = true
	}
	return cond, nil
}

// deleteTag serves DELETE /v2/<name>/tags/<tag>: it removes the tag and
// leaves the manifest, pullable by digest.
func (h *Handler) deleteTag(w http.ResponseWriter, r *http.Request, rt route) error {
	if !validTag(rt.ref) {
		return errorf(CodeManifestUnknown, "no tag %q in repository %s: not a valid tag", clip(rt.ref), rt.name)
	}
	return h.untag(w, r, rt.name, rt.ref)
}

func (h *Handler) untag(w http.ResponseWriter, r *http.Request, name, tag string) error {
	cond, err := tagCondition(r)
	if err != nil {
		return err
	}
	if cond.IfNoneMatch {
		return errorf(CodeUnsupported, "If-None-Match: * does not apply to removing a tag").withStatus(http.StatusBadRequest)
	}
	dgst, err := h.db.TagDelete(r.Context(), name, tag, cond, h.actorOn(r, name))
	if err != nil {
		return err
	}
	w.Header().Set("Docker-Content-Digest", dgst) // what the tag pointed at
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// maxRestoreBody bounds the JSON body of a tag restore.
const maxRestoreBody = 4 << 10

// restoreTag serves PUT /v2/<name>/tags/<tag> with the body
// {"digest": "<digest>"}: it points the tag at a live manifest of the
// repository without pushing the manifest again, typically an earlier
// digest from the tag's history. The conditional headers apply.
func (h *Handler) restoreTag(w http.ResponseWriter, r *http.Request, rt route) error {
	if !validTag(rt.ref) {
		return errorf(CodeManifestInvalid, "invalid tag %q: up to %d letters, digits, '_', '.' and '-', not starting with '.' or '-'", clip(rt.ref), maxTagLength)
	}
	cond, err := tagCondition(r)
	if err != nil {
		return err
	}
	var body struct {
		Digest string `json:"digest"`
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, maxRestoreBody+1))
	if err != nil {
		return bodyFailed(CodeManifestInvalid, err)
	}
	if len(raw) > maxRestoreBody || json.Unmarshal(raw, &body) != nil || body.Digest == "" {
		return errorf(CodeManifestInvalid, `the body must be {"digest": "<manifest digest>"}`)
	}
	dgst, err := parseDigest(body.Digest)
	if err != nil {
		return err
	}
	previous, err := h.db.TagRestore(r.Context(), rt.name, rt.ref, dgst.String(), cond, h.actorOn(r, rt.name))
	if errors.Is(err, db.ErrManifestUnknown) {
		previous, err = h.undelete(r, rt, dgst, cond)
	}
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v2/"+rt.name+"/manifests/"+rt.ref)
	w.Header().Set("Docker-Content-Digest", dgst.String())
	status := http.StatusOK
	if previous == "" {
		status = http.StatusCreated
	}
	return writeJSONStatus(w, r, status, "application/json", struct {
		Name     string `json:"name"`
		Tag      string `json:"tag"`
		Digest   string `json:"digest"`
		Previous any    `json:"previous"`
	}{rt.name, rt.ref, dgst.String(), nullable(previous)})
}

// undelete restores a tag to a manifest that was deleted but not yet purged
// by garbage collection: the stored bytes are pushed again, validated like
// any push (its blobs and children must still be there).
func (h *Handler) undelete(r *http.Request, rt route, dgst digest.Digest, cond db.TagCondition) (previous string, err error) {
	m, err := h.db.ManifestTombstone(r.Context(), rt.name, dgst.String())
	if errors.Is(err, db.ErrManifestUnknown) {
		// Not found as a tombstone either: say both.
		return "", errorf(CodeManifestUnknown, "manifest %s is not in repository %s (never pushed, or purged after deletion)", dgst, rt.name)
	}
	if err != nil {
		return "", err
	}
	release, err := h.reserveManifestBytes(r, m.Size) // parsed again, like a push
	if err != nil {
		return "", err
	}
	defer release()
	_, previous, err = h.storeManifest(r, rt.name, []string{rt.ref}, cond, m.MediaType, m.Payload, dgst, true)
	return previous, err
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// historyEntry is one change in GET /v2/<name>/tags/<tag>/history.
type historyEntry struct {
	ID        int64     `json:"id"`
	Action    string    `json:"action"`
	Digest    any       `json:"digest"`
	Previous  any       `json:"previous"`
	Time      time.Time `json:"time"`
	Actor     string    `json:"actor"`
	RequestID string    `json:"requestId"`
	// TokenID is the API token the change was made with (directly, or
	// through a token of the token service it was exchanged for).
	TokenID string `json:"tokenId,omitempty"`
}

// tagHistory serves GET /v2/<name>/tags/<tag>/history: every change of the
// tag, newest first. Pages are n long; last is the id of the final entry of
// the previous page, as the Link header says.
func (h *Handler) tagHistory(w http.ResponseWriter, r *http.Request, rt route) error {
	if !validTag(rt.ref) {
		return errorf(CodeManifestUnknown, "no tag %q in repository %s: not a valid tag", clip(rt.ref), rt.name)
	}
	n, last, err := page(r, "history entry id", func(s string) bool {
		v, ok := parseDecimal(s)
		return ok && v > 0
	})
	if err != nil {
		return err
	}
	var before int64
	if last != "" {
		before, _ = parseDecimal(last) // checked by page
	}
	events, more, err := h.db.TagHistory(r.Context(), rt.name, rt.ref, before, n)
	if err != nil {
		return err
	}
	entries := make([]historyEntry, len(events))
	for i, e := range events {
		entries[i] = historyEntry{ID: e.ID, Action: e.Action, Digest: nullable(e.Digest), Previous: nullable(e.OldDigest),
			Time: e.At.UTC(), Actor: e.Actor, RequestID: e.RequestID, TokenID: e.TokenID}
	}
	if more && n > 0 {
		setNextLink(w, r, n, strconv.FormatInt(events[len(events)-1].ID, 10))
	}
	return writeJSON(w, r, "application/json", struct {
		Name    string         `json:"name"`
		Tag     string         `json:"tag"`
		History []historyEntry `json:"history"`
	}{rt.name, rt.ref, entries})
}

// manifestEntry is one manifest in GET /v2/<name>/manifests/_list.
type manifestEntry struct {
	Digest       string    `json:"digest"`
	MediaType    string    `json:"mediaType"`
	ArtifactType string    `json:"artifactType,omitempty"`
	Size         int64     `json:"size"`
	Tags         []string  `json:"tags"`
	Created      time.Time `json:"created"`
}

// listManifests serves GET /v2/<name>/manifests/_list: every live manifest
// of the repository, tagged or not, in digest order, paginated like the tag
// list. ?untagged=true keeps only manifests that no tag points at.
func (h *Handler) listManifests(w http.ResponseWriter, r *http.Request, rt route) error {
	n, last, err := page(r, "manifest digest", func(s string) bool {
		_, err := parseDigest(s)
		return err == nil
	})
	if err != nil {
		return err
	}
	untagged := false
	if v := r.URL.Query().Get("untagged"); v != "" {
		if untagged, err = strconv.ParseBool(v); err != nil {
			return errorf(CodeUnsupported, "untagged must be true or false, not %q", clip(v)).withStatus(http.StatusBadRequest)
		}
	}
	list, more, err := h.db.ManifestList(r.Context(), rt.name, last, n, untagged)
	if err != nil {
		return err
	}
	entries := make([]manifestEntry, len(list))
	for i, m := range list {
		entries[i] = manifestEntry{Digest: m.Digest, MediaType: m.MediaType, ArtifactType: m.ArtifactType,
			Size: m.Size, Tags: m.Tags, Created: m.CreatedAt.UTC()}
	}
	if more && n > 0 {
		setNextLink(w, r, n, list[len(list)-1].Digest)
	}
	return writeJSON(w, r, "application/json", struct {
		Name      string          `json:"name"`
		Manifests []manifestEntry `json:"manifests"`
	}{rt.name, entries})
}
