package handlers

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClip(t *testing.T) {
	short := strings.Repeat("a", maxEcho)
	if got := clip(short); got != short {
		t.Errorf("clip of %d bytes changed it", len(short))
	}
	long := strings.Repeat("é", 300_000) // 600,000 bytes, 2 per character
	got := clip(long)
	if !utf8.ValidString(got) {
		t.Errorf("clip cut inside a character")
	}
	if len(got) > maxEcho+64 || !strings.HasSuffix(got, "…(cut, 600000 bytes in all)") {
		t.Errorf("clip(600,000 bytes) = %d bytes ending %q", len(got), got[max(0, len(got)-40):])
	}
}
