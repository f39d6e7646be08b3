package auth

import (
	"strings"
	"testing"
)

func TestValidName(t *testing.T) {
	t.Parallel()
	valid := []string{"alice", "Alice", "a", "0", "alice.smith@example.com", "ci-bot_2", strings.Repeat("x", 128)}
	invalid := []string{"", "-alice", ".alice", "_a", "@a", "al ice", "al:ice", "group:a", "a/b", "é",
		"anonymous", "Anonymous", "authenticated", "AUTHENTICATED", strings.Repeat("x", 129)}
	for _, n := range valid {
		if err := ValidName(n); err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range invalid {
		if err := ValidName(n); err == nil {
			t.Errorf("ValidName(%q) = nil, want an error", n)
		}
	}
}

func TestValidSubject(t *testing.T) {
	t.Parallel()
	valid := []string{"alice", "group:devs", "group:Dev.Ops", "anonymous", "authenticated"}
	invalid := []string{"", "group:", "group:anonymous", "group:group:x", "Anonymous", "user:alice", "-x"}
	for _, s := range valid {
		if err := ValidSubject(s); err != nil {
			t.Errorf("ValidSubject(%q) = %v, want nil", s, err)
		}
	}
	for _, s := range invalid {
		if err := ValidSubject(s); err == nil {
			t.Errorf("ValidSubject(%q) = nil, want an error", s)
		}
	}
}
