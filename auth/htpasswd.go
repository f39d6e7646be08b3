package auth

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// HtpasswdEntry is one accepted line of an htpasswd file.
type HtpasswdEntry struct {
	User, Hash string
}

// ParseHtpasswd reads an htpasswd file, the user store of the reference
// registry. Lines with a bcrypt hash ($2y$, $2a$, $2b$: "htpasswd -B") are
// returned as entries. Every other line is refused with one message saying
// its number, its user and why: the other schemes Apache supports (MD5
// $apr1$, {SHA}, crypt, plain text) are too weak to keep, and the reference
// registry refuses them too. Blank lines and lines starting with '#' are
// skipped. err is only for a failure to read.
func ParseHtpasswd(r io.Reader) (entries []HtpasswdEntry, refused []string, err error) {
	seen := map[string]int{} // user → line number
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok {
			refused = append(refused, fmt.Sprintf("line %d: no ':' between user and hash", n))
			continue
		}
		if err := ValidName(user); err != nil {
			refused = append(refused, fmt.Sprintf("line %d: user %q: invalid user name: %v", n, user, err))
			continue
		}
		if why := htpasswdRefusal(hash); why != "" {
			refused = append(refused, fmt.Sprintf("line %d: user %q: %s", n, user, why))
			continue
		}
		if first, dup := seen[user]; dup {
			refused = append(refused, fmt.Sprintf("line %d: user %q: already on line %d", n, user, first))
			continue
		}
		seen[user] = n
		entries = append(entries, HtpasswdEntry{User: user, Hash: hash})
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading htpasswd file: %w", err)
	}
	return entries, refused, nil
}

// htpasswdRefusal says why hash cannot be imported, or "" if it can.
func htpasswdRefusal(hash string) string {
	const retry = "; only bcrypt is accepted: set the password again with htpasswd -B, or with berth"
	switch {
	case strings.HasPrefix(hash, "$2y$"), strings.HasPrefix(hash, "$2a$"), strings.HasPrefix(hash, "$2b$"):
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return "malformed bcrypt hash: " + err.Error()
		}
		return ""
	case strings.HasPrefix(hash, "$apr1$"):
		return "MD5 ($apr1$) hash refused" + retry
	case strings.HasPrefix(hash, "{SHA}"):
		return "SHA-1 ({SHA}) hash refused" + retry
	case strings.HasPrefix(hash, "$1$"), strings.HasPrefix(hash, "$5$"), strings.HasPrefix(hash, "$6$"):
		return "crypt(3) (" + hash[:3] + ") hash refused" + retry
	case hash == "":
		return "empty hash refused" + retry
	default:
		return "crypt or plain-text password refused" + retry
	}
}
