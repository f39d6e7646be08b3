package digests

import (
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestParse(t *testing.T) {
	sha256Hex := strings.Repeat("a", 64)
	sha512Hex := strings.Repeat("b", 128)
	tests := []struct {
		in      string
		wantErr error
	}{
		{"sha256:" + sha256Hex, nil},
		{"sha512:" + sha512Hex, nil},
		{"sha256:totallywrong", ErrMalformed},
		{"sha256:" + strings.Repeat("A", 64), ErrMalformed}, // upper case is not canonical
		{"sha256:" + sha512Hex, ErrMalformed},
		{"sha512:" + sha256Hex, ErrMalformed},
		{"sha384:" + strings.Repeat("c", 96), ErrUnsupported},
		{"md5:d41d8cd98f00b204e9800998ecf8427e", ErrUnsupported},
		{"nocolon", ErrMalformed},
		{":abc", ErrMalformed},
		{"sha256:", ErrMalformed},
	}
	for _, tt := range tests {
		d, err := Parse(tt.in)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("Parse(%q) error = %v, want %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && d.String() != tt.in {
			t.Errorf("Parse(%q) = %q", tt.in, d)
		}
	}
}

// A hash suspended after each piece and resumed must end where one hash over
// the whole input ends: this is what lets any replica take the next chunk.
func TestResumeAcrossChunks(t *testing.T) {
	pieces := []string{"", "hello ", "chunked ", "", "world"}
	state := EmptySha256()
	for _, p := range pieces {
		h, err := Resume(state)
		if err != nil {
			t.Fatal(err)
		}
		h.Write([]byte(p))
		if state, err = Save(h); err != nil {
			t.Fatal(err)
		}
	}
	h, err := Resume(state)
	if err != nil {
		t.Fatal(err)
	}
	got := digest.NewDigest(digest.SHA256, h)
	want := digest.FromString(strings.Join(pieces, ""))
	if got != want {
		t.Fatalf("resumed digest %s, want %s", got, want)
	}
	if _, err := Resume([]byte("garbage")); err == nil {
		t.Fatal("Resume accepted a corrupt state")
	}
}
