package handlers

import (
	"net/http"
	"testing"
)

// TestRequiredScope checks the table of what each request needs against
// the reference registry's: reads pull, writes pull and push (a tag
// restore too), deletes delete — on every route, with the repository
// name the route parsed.
func TestRequiredScope(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		method, path string
		want         string
	}{
		{"GET", "team/app/manifests/v1", "repository:team/app:pull"},
		{"HEAD", "team/app/manifests/v1", "repository:team/app:pull"},
		{"PUT", "team/app/manifests/v1", "repository:team/app:pull,push"},
		{"DELETE", "team/app/manifests/sha256:abc", "repository:team/app:delete"},
		{"DELETE", "team/app/manifests/v1", "repository:team/app:delete"},
		{"GET", "team/app/manifests/_list", "repository:team/app:pull"},
		{"DELETE", "team/app/tags/v1", "repository:team/app:delete"},
		{"PUT", "team/app/tags/v1", "repository:team/app:pull,push"},
		{"GET", "team/app/tags/list", "repository:team/app:pull"},
		{"GET", "team/app/tags/_list", "repository:team/app:pull"},
		{"GET", "team/app/tags/v1/history", "repository:team/app:pull"},
		{"HEAD", "team/app/tags/v1/history", "repository:team/app:pull"},
		{"GET", "team/app/referrers/sha256:abc", "repository:team/app:pull"},
		{"GET", "team/app/blobs/sha256:abc", "repository:team/app:pull"},
		{"HEAD", "team/app/blobs/sha256:abc", "repository:team/app:pull"},
		{"DELETE", "team/app/blobs/sha256:abc", "repository:team/app:delete"},
		{"POST", "team/app/blobs/uploads/", "repository:team/app:pull,push"},
		{"PATCH", "team/app/blobs/uploads/id", "repository:team/app:pull,push"},
		{"PUT", "team/app/blobs/uploads/id", "repository:team/app:pull,push"},
		{"GET", "team/app/blobs/uploads/id", "repository:team/app:pull"},
		{"DELETE", "team/app/blobs/uploads/id", "repository:team/app:delete"},
		// Names that contain the route words are still the name.
		{"GET", "a/tags/blobs/tags/x/history", "repository:a/tags/blobs:pull"},
		{"POST", "blobs/uploads/blobs/uploads/", "repository:blobs/uploads:pull,push"},
		{"DELETE", "manifests/manifests/x", "repository:manifests:delete"},
	} {
		rt := parseRoute(c.path)
		if rt.kind == routeUnknown {
			t.Errorf("%s %s: no route", c.method, c.path)
			continue
		}
		if got := requiredScope(rt, c.method).String(); got != c.want {
			t.Errorf("%s %s needs %s, want %s", c.method, c.path, got, c.want)
		}
	}
	// Every method the API answers falls in the table.
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if sc := requiredScope(route{kind: routeManifest, name: "x"}, m); len(sc.Actions) == 0 {
			t.Errorf("%s needs nothing", m)
		}
	}
}
