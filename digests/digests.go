// Package digests decides which content digests Berth accepts and hashes
// upload bytes in a way that can be suspended between requests: the state
// of a running sha256 is saved in the database after each chunk, so the next
// chunk of the same upload can continue on any replica.
package digests

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding"
	"errors"
	"fmt"
	"hash"
	"strings"

	"github.com/opencontainers/go-digest"
)

// The algorithms the OCI image spec registers. go-digest also knows
// sha384, which the distribution spec does not allow.
var supported = map[digest.Algorithm]func() hash.Hash{
	digest.SHA256: sha256.New,
	digest.SHA512: sha512.New,
}

// hexLen is the length of the hex part of each supported algorithm's
// digests. Parse runs once per descriptor of a manifest, tens of thousands
// of times for a large one: asking a new hash its size each time cost an
// allocation every time.
var hexLen = func() map[digest.Algorithm]int {
	m := make(map[digest.Algorithm]int, len(supported))
	for alg, newHash := range supported {
		m[alg] = newHash().Size() * 2
	}
	return m
}()

var (
	// ErrMalformed is a string that is not algorithm:hex of the right length.
	ErrMalformed = errors.New("malformed digest")
	// ErrUnsupported is a well-formed digest of an algorithm Berth does not
	// accept.
	ErrUnsupported = errors.New("unsupported digest algorithm")
)

// Parse validates s as a digest Berth accepts. The error wraps ErrMalformed
// or ErrUnsupported and says what is wrong in words a client can act on.
func Parse(s string) (digest.Digest, error) {
	alg, hexPart, ok := strings.Cut(s, ":")
	if !ok || alg == "" || hexPart == "" {
		return "", fmt.Errorf("%w: %q is not of the form algorithm:hex", ErrMalformed, s)
	}
	want, ok := hexLen[digest.Algorithm(alg)]
	if !ok {
		return "", fmt.Errorf("%w: %q (use sha256 or sha512)", ErrUnsupported, alg)
	}
	if len(hexPart) != want {
		return "", fmt.Errorf("%w: a %s digest has %d hex characters, %q has %d", ErrMalformed, alg, want, s, len(hexPart))
	}
	for i := 0; i < len(hexPart); i++ {
		if c := hexPart[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", fmt.Errorf("%w: %q has a character that is not lower-case hex", ErrMalformed, s)
		}
	}
	return digest.Digest(s), nil
}

// New returns a hash for alg, which must be supported.
func New(alg digest.Algorithm) hash.Hash {
	return supported[alg]()
}

// Sha256State is the serialised state of an sha256 hash, as stored with an
// upload session.
type Sha256State []byte

// EmptySha256 is the state of an sha256 that has hashed nothing.
func EmptySha256() Sha256State {
	s, err := sha256.New().(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic(fmt.Sprintf("sha256 state: %v", err)) // the standard library supports it
	}
	return s
}

// Resume rebuilds the hash from a saved state.
func Resume(state Sha256State) (hash.Hash, error) {
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		return nil, fmt.Errorf("restore sha256 state: %w", err)
	}
	return h, nil
}

// Save serialises the state of an sha256 made by Resume.
func Save(h hash.Hash) (Sha256State, error) {
	s, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("save sha256 state: %w", err)
	}
	return s, nil
}
