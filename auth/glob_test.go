package auth

import (
	"regexp"
	"strings"
	"testing"
)

func TestValidGlob(t *testing.T) {
	t.Parallel()
	valid := []string{
		"foo", "team-a/app", "team-a/**", "**", "*", "*/*", "**/cache", "a/**/b",
		"team-a**", "team-*/app", "a.b_c-d/*.x", "a/*", "a/**/b/**",
	}
	invalid := map[string]string{
		"":                       "empty",
		"Team":                   "not allowed",
		"a b":                    "not allowed",
		"localhost:5000/a":       "not allowed",
		"a?":                     "not allowed",
		"/a":                     "empty path component",
		"a/":                     "empty path component",
		"a//b":                   "empty path component",
		"***":                    "more than two",
		"a/***":                  "more than two",
		"a**b":                   "whole path component",
		"**b":                    "whole path component",
		"a**/b":                  "whole path component",
		"a/**b/c":                "whole path component",
		strings.Repeat("a", 256): "longer than",
	}
	for _, g := range valid {
		if err := ValidGlob(g); err != nil {
			t.Errorf("ValidGlob(%q) = %v, want nil", g, err)
		}
	}
	for g, want := range invalid {
		if err := ValidGlob(g); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidGlob(%q) = %v, want error containing %q", g, err, want)
		}
	}
}

// globCases is shared by TestMatchGlob and TestGlobRegex, so that the Go
// matcher and the regex PostgreSQL runs are held to the same answers.
var globCases = []struct {
	glob, name string
	want       bool
}{
	{"foo", "foo", true},
	{"foo", "foo/bar", false},
	{"foo", "fo", false},
	{"*", "foo", true},
	{"*", "foo/bar", false},
	{"*/*", "foo/bar", true},
	{"*/*", "foo/bar/baz", false},
	{"team-a/*", "team-a/app", true},
	{"team-a/*", "team-a/x/app", false},
	{"team-a/*", "team-a", false},
	{"team-a/**", "team-a/app", true},
	{"team-a/**", "team-a/x/y/z", true},
	{"team-a/**", "team-a", false},
	{"team-a/**", "team-ab/app", false},
	{"team-a**", "team-a", true},
	{"team-a**", "team-ab/app", true},
	{"**", "anything/at/all", true},
	{"**/cache", "a/b/cache", true},
	{"**/cache", "cache", false},
	{"**/cache", "a/cachex", false},
	{"a/**/b", "a/x/y/b", true},
	{"a/**/b", "a/x/b", true},
	{"a/**/b", "a/b", false},
	{"team-*/app", "team-a/app", true},
	{"team-*/app", "team-/app", true},
	{"team-*/app", "team-a/b/app", false},
	{"*.io/x", "ghcr.io/x", true},
	{"a.b", "a.b", true},
	{"a.b", "axb", false}, // '.' is literal, in the regex too
	{"a*b*c", "aXbYc", true},
	{"a*b*c", "abc", true},
	{"a*b*c", "aXb/Yc", false},
	{"a/b", "a/b", true},
	// Invalid globs match nothing.
	{"***", "a", false},
	{"", "", false},
	{"A", "A", false},
}

func TestMatchGlob(t *testing.T) {
	t.Parallel()
	for _, tt := range globCases {
		if got := MatchGlob(tt.glob, tt.name); got != tt.want {
			t.Errorf("MatchGlob(%q, %q) = %v, want %v", tt.glob, tt.name, got, tt.want)
		}
	}
}

// TestGlobRegex checks GlobRegex with Go's regexp, whose syntax agrees with
// PostgreSQL's for the few constructs GlobRegex writes (^ $ [.] [^/]* .*).
// The db package's tests run the same regexes in PostgreSQL.
func TestGlobRegex(t *testing.T) {
	t.Parallel()
	want := map[string]string{
		"team-a/**":  `^team-a/.*$`,
		"team-*/app": `^team-[^/]*/app$`,
		"ghcr.io/*":  `^ghcr[.]io/[^/]*$`,
		"***":        `^$`,
	}
	for g, w := range want {
		if got := GlobRegex(g); got != w {
			t.Errorf("GlobRegex(%q) = %q, want %q", g, got, w)
		}
	}
	for _, tt := range globCases {
		re := regexp.MustCompile(GlobRegex(tt.glob))
		if got := re.MatchString(tt.name) && tt.name != ""; got != tt.want {
			t.Errorf("GlobRegex(%q) = %q matches %q: %v, want %v", tt.glob, re, tt.name, got, tt.want)
		}
	}
}

// TestMatchGlobNoBacktracking: a glob of many stars against a long name
// that almost matches would take exponential time in a backtracking matcher.
func TestMatchGlobNoBacktracking(t *testing.T) {
	t.Parallel()
	glob := strings.Repeat("a*", 100) + "b"
	name := strings.Repeat("a", 255)
	if MatchGlob(glob, name) {
		t.Fatal("matched")
	}
}
