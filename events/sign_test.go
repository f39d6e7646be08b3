package events

import (
	"strings"
	"testing"
)

func TestSignVerify(t *testing.T) {
	t.Parallel()
	// RFC 4231-style known answer (the HMAC-SHA256 example of Wikipedia):
	// receivers in any language must compute the same value.
	body := []byte("The quick brown fox jumps over the lazy dog")
	const want = "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
	if got := Sign("key", body); got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
	if !Verify("key", body, want) {
		t.Fatal("Verify refuses the signature Sign made")
	}

	envelope := []byte(`{"events":[{"id":"x","seq":1,"action":"push"}]}`)
	sig := Sign("s3cret", envelope)
	if !Verify("s3cret", envelope, sig) {
		t.Fatal("round trip fails")
	}
	tampered := []byte(strings.Replace(string(envelope), `"seq":1`, `"seq":2`, 1))
	for name, c := range map[string]struct {
		secret, sig string
		body        []byte
	}{
		"tampered body":             {"s3cret", sig, tampered},
		"body with a byte more":     {"s3cret", sig, append(append([]byte(nil), envelope...), ' ')},
		"empty body":                {"s3cret", sig, nil},
		"wrong secret":              {"s3cret!", sig, envelope},
		"empty secret":              {"", sig, envelope},
		"signature without sha256=": {"s3cret", strings.TrimPrefix(sig, "sha256="), envelope},
		"other algorithm prefix":    {"s3cret", "sha1=" + strings.TrimPrefix(sig, "sha256="), envelope},
		"truncated signature":       {"s3cret", sig[:len(sig)-2], envelope},
		"flipped hex digit":         {"s3cret", sig[:len(sig)-1] + flip(sig[len(sig)-1]), envelope},
		"empty signature":           {"s3cret", "", envelope},
	} {
		if Verify(c.secret, c.body, c.sig) {
			t.Errorf("%s: Verify accepts it", name)
		}
	}
}

func flip(c byte) string {
	if c == '0' {
		return "1"
	}
	return "0"
}
