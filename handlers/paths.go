package handlers

import (
	"strings"
)

// Limits on names, from the OCI distribution spec and the reference
// registry.
const (
	// maxNameLength bounds a repository name. The spec leaves it to the
	// registry; 255 is what the reference registry and Docker enforce for a
	// name including its host, so no client can expect more.
	maxNameLength = 255
	// maxTagLength is the spec's: a tag is at most 128 characters.
	maxTagLength = 128
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

// validName checks a repository name against the spec's grammar:
//
//	[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
//
// written out by hand because it runs on every request.
func validName(name string) bool {
	if name == "" || len(name) > maxNameLength {
		return false
	}
	for _, comp := range strings.Split(name, "/") {
		if !validComponent(comp) {
			return false
		}
	}
	return true
}

func validComponent(c string) bool {
	if c == "" || !isAlnum(c[0]) || !isAlnum(c[len(c)-1]) {
		return false
	}
	for i := 1; i < len(c)-1; i++ {
		if isAlnum(c[i]) {
			continue
		}
		// A separator run: ".", "_", "__" or one or more "-".
		j := i
		for j < len(c)-1 && !isAlnum(c[j]) {
			j++
		}
		switch sep := c[i:j]; {
		case sep == "." || sep == "_" || sep == "__":
		case strings.Trim(sep, "-") == "":
		default:
			return false
		}
		i = j - 1
	}
	return true
}

func isAlnum(b byte) bool { return 'a' <= b && b <= 'z' || '0' <= b && b <= '9' }

// validTag checks a tag against the spec's grammar [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}.
func validTag(tag string) bool {
	if tag == "" || len(tag) > maxTagLength {
		return false
	}
	for i := 0; i < len(tag); i++ {
		c := tag[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' ||
			(i > 0 && (c == '.' || c == '-'))
		if !ok {
			return false
		}
	}
	return true
}
