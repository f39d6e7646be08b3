package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"testing"
)

func TestKeyRoundTrip(t *testing.T) {
	t.Parallel()
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if len(k.ID) != 43 { // base64url of 32 bytes
		t.Errorf("ID %q", k.ID)
	}
	der, err := k.MarshalPrivate()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParseKey(der)
	if err != nil {
		t.Fatal(err)
	}
	if k2.ID != k.ID || !k2.Private.Equal(k.Private) {
		t.Fatal("the key changed on the way through the database")
	}
	other, _ := NewKey()
	if other.ID == k.ID {
		t.Fatal("two keys, one ID")
	}
}

func TestParseKeyRefuses(t *testing.T) {
	t.Parallel()
	if _, err := ParseKey([]byte("junk")); err == nil {
		t.Error("junk parsed")
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := newKey(p384); err == nil {
		t.Error("a P-384 key was taken for ES256")
	}
}

// TestJWKS: the published set holds each public key with its kid, and the
// kid is the RFC 7638 thumbprint of what is published, so any JOSE library
// finds the key by it. Keys are generated until one has a coordinate with
// a leading zero byte, which must be kept (RFC 7518 section 6.2.1.2).
func TestJWKS(t *testing.T) {
	t.Parallel()
	var keys []Key
	for i := 0; i < 2000; i++ {
		k, err := NewKey()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := k.Private.PublicKey.Bytes()
		if i == 0 || b[1] == 0 || b[33] == 0 {
			keys = append(keys, k)
		}
		if len(keys) == 2 {
			break
		}
	}
	if len(keys) != 2 {
		t.Fatal("no key with a leading zero found")
	}
	data, err := JWKS(keys...)
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 2 {
		t.Fatalf("%s", data)
	}
	for i, got := range set.Keys {
		if got["kid"] != keys[i].ID || got["kty"] != "EC" || got["crv"] != "P-256" || got["alg"] != "ES256" || got["use"] != "sig" {
			t.Errorf("key %d: %v", i, got)
		}
		if _, private := got["d"]; private {
			t.Fatalf("the private key is published: %v", got)
		}
		x, _ := base64.RawURLEncoding.DecodeString(got["x"])
		y, _ := base64.RawURLEncoding.DecodeString(got["y"])
		if len(x) != 32 || len(y) != 32 {
			t.Errorf("key %d: x %d bytes, y %d bytes", i, len(x), len(y))
		}
		pub, err := jwk{Kty: "EC", Crv: "P-256", X: got["x"], Y: got["y"]}.publicKey()
		if err != nil || !keys[i].Private.PublicKey.Equal(pub) {
			t.Errorf("key %d: does not decode to the key: %v", i, err)
		}
		if tp := jwkThumbprint(pub); tp != got["kid"] {
			t.Errorf("key %d: thumbprint %s, kid %s", i, tp, got["kid"])
		}
	}
	if empty, _ := JWKS(); string(empty) != `{"keys":[]}` {
		t.Errorf("JWKS() = %s", empty)
	}
}

// rfc7638Key is the example key of RFC 7638 section 3.1.
var rfc7638Key = jwk{
	Kty: "RSA", E: "AQAB",
	N: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
}

func TestKeyIDs(t *testing.T) {
	t.Parallel()
	pub, err := rfc7638Key.publicKey()
	if err != nil {
		t.Fatal(err)
	}
	// RFC 7638 section 3.1.
	if got, want := jwkThumbprint(pub), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"; got != want {
		t.Errorf("thumbprint %s, want %s", got, want)
	}
	// Computed with github.com/docker/libtrust's PublicKey.KeyID.
	if got, want := libtrustKeyID(pub), "VUZD:EDHW:YWLN:RBFQ:KOA3:UVZ2:XKG5:2V2J:WTPI:6SRD:U6PZ:VCO5"; got != want {
		t.Errorf("libtrust key ID %s, want %s", got, want)
	}
}

func TestJWKPublicKeyRefuses(t *testing.T) {
	t.Parallel()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ec, _ := NewKey()
	b, _ := ec.Private.PublicKey.Bytes()
	offCurve := append([]byte(nil), b...)
	offCurve[40] ^= 1
	tests := map[string]jwk{
		"RSA under 2048 bits": {Kty: "RSA", N: b64(small.N.Bytes()), E: "AQAB"},
		"RSA even exponent":   {Kty: "RSA", N: rfc7638Key.N, E: b64([]byte{2})},
		"RSA no exponent":     {Kty: "RSA", N: rfc7638Key.N},
		"EC unknown curve":    {Kty: "EC", Crv: "P-192", X: b64(b[1:33]), Y: b64(b[33:])},
		"EC short x":          {Kty: "EC", Crv: "P-256", X: b64(b[2:33]), Y: b64(b[33:])},
		"EC point off curve":  {Kty: "EC", Crv: "P-256", X: b64(offCurve[1:33]), Y: b64(offCurve[33:])},
		"oct (HMAC)":          {Kty: "oct"},
		"OKP":                 {Kty: "OKP"},
	}
	for name, k := range tests {
		if _, err := k.publicKey(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
