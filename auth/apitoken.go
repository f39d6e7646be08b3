package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"strings"
)

// TokenPrefix starts every API token, so that secret scanners (GitHub's,
// gitleaks) and people recognise a leaked one.
const TokenPrefix = "berth_"

const (
	tokenIDBytes     = 6  // 12 hex characters: an identifier, not a secret
	tokenSecretBytes = 32 // 256 bits
)

// secretEncoding is lower-case base32 without padding: no '_' (the
// separator in a token), no characters that URLs, shells or YAML treat
// specially, and case-insensitive to read aloud. 32 bytes make 52
// characters.
var secretEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

var secretLength = secretEncoding.EncodedLen(tokenSecretBytes)

// NewAPIToken returns a new token's id (12 random lower-case hex
// characters, stored in clear to find the token) and secret (32 random
// bytes, base32, stored only as HashSecret).
func NewAPIToken() (id, secret string) {
	b := make([]byte, tokenIDBytes+tokenSecretBytes)
	rand.Read(b) // never fails: crypto/rand crashes the program rather than return an error
	return hex.EncodeToString(b[:tokenIDBytes]), secretEncoding.EncodeToString(b[tokenIDBytes:])
}

// FormatAPIToken returns the token as its owner uses it: "berth_<id>_<secret>".
func FormatAPIToken(id, secret string) string {
	return TokenPrefix + id + "_" + secret
}

// ParseAPIToken splits a token made by FormatAPIToken. ok is false for
// anything that is not exactly that shape, so that a password that merely
// starts with "berth_" is not taken for a token.
func ParseAPIToken(s string) (id, secret string, ok bool) {
	rest, found := strings.CutPrefix(s, TokenPrefix)
	if !found {
		return "", "", false
	}
	id, secret, found = strings.Cut(rest, "_")
	if !found || len(id) != 2*tokenIDBytes || len(secret) != secretLength {
		return "", "", false
	}
	if strings.Trim(id, "0123456789abcdef") != "" || strings.Trim(secret, "abcdefghijklmnopqrstuvwxyz234567") != "" {
		return "", "", false
	}
	return id, secret, true
}

// HashSecret returns the SHA-256 of an API token's secret, which is what
// the database keeps. A fast hash is enough here, unlike for passwords:
// the secret is 256 random bits, not chosen by a person, so there is no
// dictionary to try and guessing it is hopeless however fast the hash.
// Being fast also means checking a token on every request costs nothing.
func HashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// SecretMatches reports whether secret hashes to hash, in constant time.
func SecretMatches(hash []byte, secret string) bool {
	return subtle.ConstantTimeCompare(hash, HashSecret(secret)) == 1
}
