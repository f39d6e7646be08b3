package handlers

import (
	"strings"

	"github.com/berth-registry/berth/internal/names"
)

// Limits on names, from the OCI distribution spec and the reference
// registry (see package names).
const (
	maxNameLength = names.MaxRepositoryLength
	maxTagLength  = names.MaxTagLength
)

// routeKind says which API resource a /v2/ path addresses.
type routeKind int

const (
	routeUnknown    routeKind = iota
	routeManifest             // <name>/manifests/<reference>
	routeBlob                 // <name>/blobs/<digest>
	routeUpload               // <name>/blobs/uploads/ and <name>/blobs/uploads/<id>
	routeTags                 // <name>/tags/<tag>, including list and _list
	routeTagHistory           // <name>/tags/<tag>/history
	routeReferrers            // <name>/referrers/<digest>
)

type route struct {
	kind routeKind
	name string // repository name, not yet validated
	ref  string // reference, digest, upload id or tag; may be empty for uploads
}

// parseRoute splits the part of a path after /v2/. A repository name may
// contain slashes, and even components such as "blobs" or "tags", so chi
// cannot capture it in one parameter: the resource is recognised from the
// end of the path and everything before it is the name.
func parseRoute(rest string) route {
	parts := strings.Split(rest, "/")
	n := len(parts)
	at := func(i int) string { // i counts from the end: at(1) is the last part
		if i > n {
			return ""
		}
		return parts[n-i]
	}
	name := func(drop int) string { return strings.Join(parts[:n-drop], "/") }
	switch {
	case n >= 3 && at(3) == "blobs" && at(2) == "uploads":
		return route{kind: routeUpload, name: name(3), ref: at(1)}
	case n >= 3 && at(2) == "blobs" && at(1) == "uploads":
		return route{kind: routeUpload, name: name(2)}
	case n >= 2 && at(2) == "manifests":
		return route{kind: routeManifest, name: name(2), ref: at(1)}
	// Before blobs and referrers: in <name>/tags/blobs/history the
	// alternative reading has "history" as a digest, which it never is.
	case n >= 4 && at(3) == "tags" && at(1) == "history":
		return route{kind: routeTagHistory, name: name(3), ref: at(2)}
	case n >= 2 && at(2) == "blobs":
		return route{kind: routeBlob, name: name(2), ref: at(1)}
	case n >= 2 && at(2) == "tags":
		return route{kind: routeTags, name: name(2), ref: at(1)}
	case n >= 2 && at(2) == "referrers":
		return route{kind: routeReferrers, name: name(2), ref: at(1)}
	}
	return route{kind: routeUnknown}
}

// validName and validTag check names against the spec's grammar (see
// package names, which the web interface shares).
var (
	validName = names.ValidRepository
	validTag  = names.ValidTag
)
