// Package names holds the grammar of repository names and tags, which the
// API (package handlers) and the web interface (package ui) both check
// before anything reaches the database.
package names

import "strings"

// Limits on names, from the OCI distribution spec and the reference
// registry.
const (
	// MaxRepositoryLength bounds a repository name. The spec leaves it to
	// the registry; 255 is what the reference registry and Docker enforce
	// for a name including its host, so no client can expect more.
	MaxRepositoryLength = 255
	// MaxTagLength is the spec's: a tag is at most 128 characters.
	MaxTagLength = 128
)

// ValidRepository checks a repository name against the spec's grammar:
//
//	[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
//
// written out by hand because it runs on every request.
func ValidRepository(name string) bool {
	if name == "" || len(name) > MaxRepositoryLength {
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

// ValidTag checks a tag against the spec's grammar [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}.
func ValidTag(tag string) bool {
	if tag == "" || len(tag) > MaxTagLength {
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
