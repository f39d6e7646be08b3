package auth

import (
	"fmt"
	"strings"
)

// The subjects that are not a user or a group.
const (
	SubjectAnonymous     = "anonymous"     // everyone, signed in or not
	SubjectAuthenticated = "authenticated" // every signed-in user
	GroupPrefix          = "group:"
)

// MaxNameLength bounds user and group names: long enough for an e-mail
// address (user names are often one), short enough to print in a table.
const MaxNameLength = 128

// ValidName reports whether name can be a user or group name:
// [A-Za-z0-9][A-Za-z0-9._@-]{0,127}, and not one of the reserved subjects
// "anonymous" and "authenticated" in any case, so that no user can be
// mistaken for them in a grant or a listing.
func ValidName(name string) error {
	if name == "" {
		return fmt.Errorf("empty name")
	}
	if len(name) > MaxNameLength {
		return fmt.Errorf("name %.40q…: longer than %d characters", name, MaxNameLength)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("name %q: must start with a letter or digit", name)
		}
		if !alnum && c != '.' && c != '_' && c != '@' && c != '-' {
			return fmt.Errorf("name %q: character %q not allowed (want A-Z a-z 0-9 . _ @ -)", name, c)
		}
	}
	if strings.EqualFold(name, SubjectAnonymous) || strings.EqualFold(name, SubjectAuthenticated) {
		return fmt.Errorf("name %q is reserved", name)
	}
	return nil
}

// ValidSubject reports whether s can be the subject of a grant: a user
// name, "group:<name>", "anonymous" or "authenticated".
func ValidSubject(s string) error {
	switch {
	case s == SubjectAnonymous || s == SubjectAuthenticated:
		return nil
	case strings.HasPrefix(s, GroupPrefix):
		if err := ValidName(s[len(GroupPrefix):]); err != nil {
			return fmt.Errorf("group: %w", err)
		}
		return nil
	}
	return ValidName(s)
}
