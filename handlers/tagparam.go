package handlers

import (
	"net/http"
)

// A manifest PUT may set several tags at once: the spec's
// PUT /v2/<name>/manifests/<digest>?tag=a&tag=b (end-7b). It is the only
// way to tag a manifest whose digest is not sha256, since a push by tag
// digests the body with sha256. Berth accepts ?tag= on a push by tag too
// and sets the path's tag and the parameters together: the client asked
// for every one of them, and the OCI-Tag headers of the answer say what
// was set. Every tag obeys the rules of a push by tag, conditional headers
// included, and all of them change in the manifest's transaction, or none.

// maxTagsPerPush bounds the distinct tags one manifest PUT sets (the
// path's tag and the ?tag= parameters together). The spec says a registry
// "SHOULD support pushing at least 10 tags per request" and "MAY return a
// 414 Request-URI Too Long status if too many tags are included"; 100 is
// ten times that, room for any release scheme (1, 1.2, 1.2.3, latest, …),
// while bounding the rows one transaction locks and the history it writes.
const maxTagsPerPush = 100

// pushTags returns the tags a manifest PUT points at the manifest: the
// path's tag, if the reference is one, then the ?tag= parameters in the
// order given, each once. Every tag must be valid, and there may be at
// most maxTagsPerPush.
func pushTags(r *http.Request, ref reference) ([]string, error) {
	params := r.URL.Query()["tag"]
	tags := make([]string, 0, 1+len(params))
	seen := make(map[string]bool, 1+len(params))
	if ref.tag != "" {
		tags = append(tags, ref.tag)
		seen[ref.tag] = true
	}
	for _, tag := range params {
		if seen[tag] {
			continue
		}
		if !validTag(tag) {
			return nil, invalidTag(tag)
		}
		seen[tag] = true
		tags = append(tags, tag)
		if len(tags) > maxTagsPerPush {
			return nil, errorf(CodeManifestInvalid, "a manifest push may set at most %d tags (the path's and ?tag= together); push the others in further requests", maxTagsPerPush).
				withStatus(http.StatusRequestURITooLong).
				withDetail(map[string]int{"limit": maxTagsPerPush})
		}
	}
	return tags, nil
}

// invalidTag is the error for a tag that the spec's grammar does not
// allow, in a push.
func invalidTag(tag string) error {
	return errorf(CodeManifestInvalid, "invalid tag %q: up to %d letters, digits, '_', '.' and '-', not starting with '.' or '-'", clip(tag), maxTagLength).
		withDetail(map[string]string{"tag": clip(tag)})
}

// setTagHeaders adds one OCI-Tag header per tag the push set (RFC 9110
// allows a list header to be sent as several lines).
func setTagHeaders(w http.ResponseWriter, tags []string) {
	for _, tag := range tags {
		w.Header().Add("OCI-Tag", tag)
	}
}
