package handlers

import (
	"regexp"
	"strings"
	"testing"
)

const (
	testDigest   = "sha256:2804bad6fe94a55f18b2b37e300919a5fd517b95aa81e95db574c0ba069a3740"
	testUploadID = "8f1c3e0a-5b7d-4a39-9c2e-6d0f1b2a3c4d"
)

func TestParseRoute(t *testing.T) {
	t.Parallel()
	tests := []struct {
		path string
		want route
	}{
		{"library/ubuntu/manifests/latest", route{routeManifest, "library/ubuntu", "latest"}},
		{"a/b/c/manifests/" + testDigest, route{routeManifest, "a/b/c", testDigest}},
		{"ubuntu/manifests/latest", route{routeManifest, "ubuntu", "latest"}},
		{"library/ubuntu/blobs/" + testDigest, route{routeBlob, "library/ubuntu", testDigest}},

		// Repository names whose components are the API's keywords: the
		// resource is read from the end, everything before it is the name.
		{"foo/blobs/blobs/" + testDigest, route{routeBlob, "foo/blobs", testDigest}},
		{"x/manifests/y/manifests/v1", route{routeManifest, "x/manifests/y", "v1"}},
		{"x/tags/tags/list", route{routeTags, "x/tags", "list"}},
		{"x/referrers/referrers/" + testDigest, route{routeReferrers, "x/referrers", testDigest}},
		{"x/blobs/uploads/manifests/v1", route{routeManifest, "x/blobs/uploads", "v1"}},
		{"x/blobs/uploads/blobs/" + testDigest, route{routeBlob, "x/blobs/uploads", testDigest}},
		{"x/blobs/blobs/uploads/", route{routeUpload, "x/blobs", ""}},
		{"x/tags/y/history/tags/list", route{routeTags, "x/tags/y/history", "list"}},
		{"a/blobs/tags/list", route{routeTags, "a/blobs", "list"}},

		// Uploads: POST to start, with and without the trailing slash, and
		// the session's own URL.
		{"library/ubuntu/blobs/uploads/", route{routeUpload, "library/ubuntu", ""}},
		{"library/ubuntu/blobs/uploads", route{routeUpload, "library/ubuntu", ""}},
		{"library/ubuntu/blobs/uploads/" + testUploadID, route{routeUpload, "library/ubuntu", testUploadID}},

		{"library/ubuntu/tags/list", route{routeTags, "library/ubuntu", "list"}},
		{"library/ubuntu/tags/_list", route{routeTags, "library/ubuntu", "_list"}},
		{"library/ubuntu/tags/v1.2.3", route{routeTags, "library/ubuntu", "v1.2.3"}},
		{"library/ubuntu/tags/history", route{routeTags, "library/ubuntu", "history"}}, // a tag named history
		{"library/ubuntu/tags/22.04/history", route{routeTagHistory, "library/ubuntu", "22.04"}},
		// Tags named like keywords. "history" is never a digest, so a tag
		// called blobs or referrers still has a history; a tag called
		// manifests does not, as "history" is also a valid manifest tag.
		{"library/ubuntu/tags/blobs/history", route{routeTagHistory, "library/ubuntu", "blobs"}},
		{"library/ubuntu/tags/referrers/history", route{routeTagHistory, "library/ubuntu", "referrers"}},
		{"library/ubuntu/tags/tags/history", route{routeTagHistory, "library/ubuntu", "tags"}},
		{"library/ubuntu/tags/manifests/history", route{routeManifest, "library/ubuntu/tags", "history"}},
		{"library/ubuntu/referrers/" + testDigest, route{routeReferrers, "library/ubuntu", testDigest}},

		// Nothing to route.
		{"", route{kind: routeUnknown}},
		{"foo", route{kind: routeUnknown}},
		{"foo/bar", route{kind: routeUnknown}},
		{"foo/bar/baz", route{kind: routeUnknown}},
		{"library/ubuntu/catalog/x", route{kind: routeUnknown}},
	}
	for _, tt := range tests {
		if got := parseRoute(tt.path); got != tt.want {
			t.Errorf("parseRoute(%q) = %+v, want %+v", tt.path, got, tt.want)
		}
	}
}

// nameTests are the validName table and the fuzz seed corpus.
var nameTests = []struct {
	name string
	want bool
}{
	{"a", true},
	{"a/b", true},
	{"a-b", true},
	{"a--b", true},
	{"a---b", true},
	{"a_b", true},
	{"a__b", true},
	{"a.b", true},
	{"0/1", true},
	{"library/ubuntu", true},
	{"ghcr.io/berth-registry/berth", true},
	{"a0.b1_c2__d3-e4--f5/g6", true},
	{strings.Repeat("a", 255), true},
	{strings.Repeat("ab/", 84) + "abc", true}, // 255
	{"", false},
	{"A", false},
	{"library/Ubuntu", false},
	{"a/", false},
	{"/a", false},
	{"/", false},
	{"a//b", false},
	{"-a", false},
	{"a-", false},
	{"_a", false},
	{"a_", false},
	{".a", false},
	{"a.", false},
	{"a___b", false},
	{"a..b", false},
	{"a._b", false},
	{"a.-b", false},
	{"a-.b", false},
	{"a_-b", false},
	{"a/-b", false},
	{"a/b-", false},
	{"a/.b", false},
	{"a b", false},
	{"a:b", false},
	{"a@b", false},
	{"é", false},
	{"a/é", false},
	{"..", false},
	{"a/../b", false},
	{strings.Repeat("a", 256), false},
	{strings.Repeat("ab/", 84) + "abcd", false}, // 256
}

func TestValidName(t *testing.T) {
	t.Parallel()
	for _, tt := range nameTests {
		if got := validName(tt.name); got != tt.want {
			t.Errorf("validName(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestValidTag(t *testing.T) {
	t.Parallel()
	tests := []struct {
		tag  string
		want bool
	}{
		{"latest", true},
		{"v1.2.3", true},
		{"1.0-rc.1", true},
		{"Release_2024-05", true},
		{"_", true},
		{"_private", true},
		{"a", true},
		{"0", true},
		{"list", true},
		{"_list", true},
		{"sha256-" + strings.Repeat("a", 64) + ".sig", true}, // cosign's tag scheme
		{strings.Repeat("a", 128), true},
		{"_" + strings.Repeat(".", 127), true},
		{"", false},
		{".hidden", false},
		{"-rc1", false},
		{".", false},
		{"-", false},
		{strings.Repeat("a", 129), false},
		{"v1+build", false},
		{"v1/2", false},
		{"v1:2", false},
		{"sha256:" + strings.Repeat("a", 64), false},
		{"a b", false},
		{"tag\n", false},
		{"é", false},
	}
	for _, tt := range tests {
		if got := validTag(tt.tag); got != tt.want {
			t.Errorf("validTag(%q) = %v, want %v", tt.tag, got, tt.want)
		}
	}
}

// nameGrammar is the repository name grammar exactly as the distribution
// spec writes it, anchored; validName is a hand-written equivalent.
var nameGrammar = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)

func FuzzValidName(f *testing.F) {
	for _, tt := range nameTests {
		f.Add(tt.name)
	}
	f.Fuzz(func(t *testing.T, name string) {
		want := len(name) <= maxNameLength && nameGrammar.MatchString(name)
		if got := validName(name); got != want {
			t.Errorf("validName(%q) = %v, grammar says %v", name, got, want)
		}
	})
}
