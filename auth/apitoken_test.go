package auth

import (
	"strings"
	"testing"
)

func TestNewAPIToken(t *testing.T) {
	t.Parallel()
	id, secret := NewAPIToken()
	if len(id) != 12 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Errorf("id %q: want 12 lower-case hex characters", id)
	}
	if len(secret) != 52 || strings.Contains(secret, "_") {
		t.Errorf("secret %q: want 52 base32 characters", secret)
	}
	tok := FormatAPIToken(id, secret)
	if !strings.HasPrefix(tok, "berth_"+id+"_") {
		t.Errorf("token %q", tok)
	}
	gotID, gotSecret, ok := ParseAPIToken(tok)
	if !ok || gotID != id || gotSecret != secret {
		t.Errorf("ParseAPIToken(%q) = %q, %q, %v", tok, gotID, gotSecret, ok)
	}
	id2, secret2 := NewAPIToken()
	if id2 == id || secret2 == secret {
		t.Error("two tokens alike")
	}
}

func TestParseAPIToken(t *testing.T) {
	t.Parallel()
	const id = "0123456789ab"
	secret := strings.Repeat("a2", 26)
	good := "berth_" + id + "_" + secret
	if gid, gs, ok := ParseAPIToken(good); !ok || gid != id || gs != secret {
		t.Fatalf("ParseAPIToken(%q) = %q, %q, %v", good, gid, gs, ok)
	}
	bad := []string{
		"",
		"berth_",
		"berth__",
		id + "_" + secret,                  // no prefix
		"Berth_" + id + "_" + secret,       // prefix case
		"berth_" + id + secret,             // no separator
		"berth_0123456789a_" + secret,      // short id
		"berth_0123456789AB_" + secret,     // upper-case id
		"berth_" + id + "_" + secret[1:],   // short secret
		"berth_" + id + "_" + secret + "a", // long secret
		"berth_" + id + "_" + strings.Repeat("A2", 26), // upper-case secret
		"berth_" + id + "_" + strings.Repeat("a1", 26), // '1' is not base32
		"berth_" + id + "_" + secret[:51] + "_",
		"berth_my-password",
	}
	for _, s := range bad {
		if gid, gs, ok := ParseAPIToken(s); ok {
			t.Errorf("ParseAPIToken(%q) = %q, %q, true; want false", s, gid, gs)
		}
	}
}

func TestSecretMatches(t *testing.T) {
	t.Parallel()
	_, secret := NewAPIToken()
	h := HashSecret(secret)
	if len(h) != 32 {
		t.Fatalf("hash of %d bytes", len(h))
	}
	if !SecretMatches(h, secret) {
		t.Error("the secret does not match its hash")
	}
	_, other := NewAPIToken()
	for _, s := range []string{other, "", secret[:51], secret + "a"} {
		if SecretMatches(h, s) {
			t.Errorf("%q matches", s)
		}
	}
	if SecretMatches(nil, secret) || SecretMatches(h[:31], secret) {
		t.Error("a truncated hash matches")
	}
}
