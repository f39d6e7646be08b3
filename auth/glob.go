package auth

import (
	"fmt"
	"strings"
)

// MaxGlobLength bounds a repository glob at the length of the longest
// repository name (255 bytes, what the reference registry and Docker
// enforce, as handlers does): a longer glob is a mistake, and the bound
// keeps MatchGlob's work small.
const MaxGlobLength = 255

// ValidGlob reports whether glob is a repository glob: the characters of
// repository names (a-z 0-9 . _ / -) plus '*'; no empty path component;
// "**" only as a whole path component ("team-a/**", "**/cache",
// "a/**/b") or at the end ("team-a**"), because anywhere else ("a**b") it
// would only be a confusing spelling of something else. It does not check
// the finer rules of the name grammar (where '.', '_' and '-' may sit):
// a glob that no name can match is harmless.
func ValidGlob(glob string) error {
	if glob == "" {
		return fmt.Errorf("empty repository glob")
	}
	if len(glob) > MaxGlobLength {
		return fmt.Errorf("repository glob %.40q…: longer than %d bytes", glob, MaxGlobLength)
	}
	for i := 0; i < len(glob); i++ {
		c := glob[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/' || c == '*') {
			return fmt.Errorf("repository glob %q: character %q not allowed (want a-z 0-9 . _ - / *)", glob, c)
		}
	}
	for comp := range strings.SplitSeq(glob, "/") {
		if comp == "" {
			return fmt.Errorf("repository glob %q: empty path component", glob)
		}
	}
	for i := 0; i+1 < len(glob); i++ {
		if glob[i] != '*' || glob[i+1] != '*' {
			continue
		}
		end := i + 2
		switch {
		case end < len(glob) && glob[end] == '*':
			return fmt.Errorf("repository glob %q: more than two '*' in a row", glob)
		case end < len(glob) && (glob[end] != '/' || i > 0 && glob[i-1] != '/'):
			return fmt.Errorf("repository glob %q: '**' must be a whole path component or end the glob", glob)
		}
		i = end - 1
	}
	return nil
}

// globToken is one element of a glob: a literal byte, '*' or '**'.
type globToken struct {
	lit  byte
	kind int // tokLit, tokStar or tokDoubleStar
}

const (
	tokLit = iota
	tokStar
	tokDoubleStar
)

func globTokens(glob string) []globToken {
	var toks []globToken
	for i := 0; i < len(glob); i++ {
		switch {
		case strings.HasPrefix(glob[i:], "**"):
			toks = append(toks, globToken{kind: tokDoubleStar})
			i++
		case glob[i] == '*':
			toks = append(toks, globToken{kind: tokStar})
		default:
			toks = append(toks, globToken{lit: glob[i]})
		}
	}
	return toks
}

// MatchGlob reports whether the repository name matches glob: '*' matches
// any run of characters except '/', "**" any run including '/'. A run may be
// empty, so "team-a/**" matches "team-a/app" and "team-a/x/y" but not
// "team-a" itself, and "a/**/b" does not match "a/b". An invalid glob
// matches nothing.
//
// It runs in O(len(glob)·len(name)) time, never backtracking, so no glob can
// make it slow.
func MatchGlob(glob, name string) bool {
	if ValidGlob(glob) != nil {
		return false
	}
	// cur[j]: the tokens consumed so far match name[:j].
	cur := make([]bool, len(name)+1)
	next := make([]bool, len(name)+1)
	cur[0] = true
	for _, t := range globTokens(glob) {
		switch t.kind {
		case tokLit:
			next[0] = false
			for j := 1; j <= len(name); j++ {
				next[j] = cur[j-1] && name[j-1] == t.lit
			}
		case tokStar:
			next[0] = cur[0]
			for j := 1; j <= len(name); j++ {
				next[j] = cur[j] || next[j-1] && name[j-1] != '/'
			}
		case tokDoubleStar:
			next[0] = cur[0]
			for j := 1; j <= len(name); j++ {
				next[j] = cur[j] || next[j-1]
			}
		}
		cur, next = next, cur
	}
	return cur[len(name)]
}

// GlobRegex returns an anchored POSIX regular expression matching the same
// names as MatchGlob, for PostgreSQL's ~ operator, so that the database can
// select the repositories a grant covers. '.' is written "[.]", which means
// the same in every regex dialect and needs no escaping in any string
// syntax. For an invalid glob it returns "^$", which matches no repository
// name (names are never empty).
func GlobRegex(glob string) string {
	if ValidGlob(glob) != nil {
		return "^$"
	}
	var b strings.Builder
	b.WriteByte('^')
	for _, t := range globTokens(glob) {
		switch {
		case t.kind == tokStar:
			b.WriteString("[^/]*")
		case t.kind == tokDoubleStar:
			b.WriteString(".*")
		case t.lit == '.':
			b.WriteString("[.]")
		default:
			b.WriteByte(t.lit)
		}
	}
	b.WriteByte('$')
	return b.String()
}
