package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// testNow is the fixed time of the token tests.
var testNow = time.Unix(1_900_000_000, 0)

const (
	testIssuer  = "berth.example"
	testService = "registry.example"
)

func TestIssueAndVerify(t *testing.T) {
	t.Parallel()
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	iss := Issuer{Key: key, Name: testIssuer, Service: testService, TTL: 10 * time.Minute}
	v, err := NewVerifier(VerifierConfig{Issuer: testIssuer, Service: testService, Own: []Key{key}})
	if err != nil {
		t.Fatal(err)
	}
	access := []Scope{
		{"repository", "team-a/app", []string{"pull", "push"}},
		{"registry", "catalog", []string{"*"}},
	}
	now := testNow.Add(1500 * time.Millisecond)
	raw, exp, err := iss.Issue("alice", access, "0123456789ab", now)
	if err != nil {
		t.Fatal(err)
	}
	if want := testNow.Add(time.Second + 10*time.Minute); !exp.Equal(want) {
		t.Errorf("expiresAt %v, want %v (whole seconds, as in the token)", exp, want)
	}

	// The claims the issue names, under their names.
	header, payload := decodeJWT(t, raw)
	if header["alg"] != "ES256" || header["kid"] != key.ID {
		t.Errorf("header %v", header)
	}
	for _, c := range []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access", "berth_tid"} {
		if _, ok := payload[c]; !ok {
			t.Errorf("claim %s missing: %v", c, payload)
		}
	}
	if payload["sub"] != "alice" || payload["berth_tid"] != "0123456789ab" {
		t.Errorf("payload %v", payload)
	}

	tok, err := v.Verify(raw, now)
	if err != nil {
		t.Fatal(err)
	}
	want := Token{Subject: "alice", Issuer: testIssuer, ID: tok.ID, TokenID: "0123456789ab", Access: access, ExpiresAt: exp, Own: true}
	if !reflect.DeepEqual(tok, want) || tok.ID == "" {
		t.Errorf("Verify = %+v\nwant %+v", tok, want)
	}

	// Anonymous, no API token, no access: sub and berth_tid absent, access [].
	raw, _, err = iss.Issue("", nil, "", now)
	if err != nil {
		t.Fatal(err)
	}
	_, payload = decodeJWT(t, raw)
	if _, ok := payload["sub"]; ok {
		t.Errorf("anonymous token has sub: %v", payload)
	}
	if _, ok := payload["berth_tid"]; ok {
		t.Errorf("berth_tid without an API token: %v", payload)
	}
	if a, ok := payload["access"].([]any); !ok || len(a) != 0 {
		t.Errorf("access %v, want []", payload["access"])
	}
	if tok, err := v.Verify(raw, now); err != nil || tok.Subject != "" || tok.Access != nil {
		t.Errorf("anonymous: %+v, %v", tok, err)
	}

	// Two tokens, two jtis.
	raw2, _, _ := iss.Issue("alice", access, "", now)
	tok2, _ := v.Verify(raw2, now)
	if tok2.ID == want.ID {
		t.Error("two tokens with one jti")
	}
}

func TestIssueDefaultsAndErrors(t *testing.T) {
	t.Parallel()
	key, _ := NewKey()
	_, exp, err := Issuer{Key: key, Name: "i", Service: "s"}.Issue("a", nil, "", testNow)
	if err != nil || !exp.Equal(testNow.Add(DefaultTokenTTL)) {
		t.Errorf("default TTL: %v, %v", exp, err)
	}
	for _, i := range []Issuer{{Name: "i", Service: "s"}, {Key: key, Service: "s"}, {Key: key, Name: "i"}} {
		if _, _, err := i.Issue("a", nil, "", testNow); err == nil {
			t.Errorf("%+v issued", i)
		}
	}
}

// TestVerifyTimes: exp, nbf and iat with the leeway, and an expired token
// returned with ErrTokenExpired.
func TestVerifyTimes(t *testing.T) {
	t.Parallel()
	key, _ := NewKey()
	v, err := NewVerifier(VerifierConfig{Issuer: testIssuer, Service: testService, Own: []Key{key}})
	if err != nil {
		t.Fatal(err)
	}
	strict, err := NewVerifier(VerifierConfig{Issuer: testIssuer, Service: testService, Own: []Key{key}, Leeway: -1})
	if err != nil {
		t.Fatal(err)
	}
	// exp = testNow+5m, nbf = iat = testNow.
	raw, exp, err := Issuer{Key: key, Name: testIssuer, Service: testService}.Issue("alice", nil, "", testNow)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		v       *Verifier
		at      time.Time
		wantErr error
	}{
		{"fresh", v, testNow, nil},
		{"just before exp", v, exp.Add(-time.Second), nil},
		{"after exp, within leeway", v, exp.Add(59 * time.Second), nil},
		{"at exp + leeway", v, exp.Add(60 * time.Second), ErrTokenExpired},
		{"long expired", v, exp.Add(24 * time.Hour), ErrTokenExpired},
		{"at exp, no leeway", strict, exp, ErrTokenExpired},
		{"before nbf, within leeway", v, testNow.Add(-60 * time.Second), nil},
		{"before nbf, beyond leeway", v, testNow.Add(-61 * time.Second), ErrTokenInvalid},
		{"before nbf, no leeway", strict, testNow.Add(-time.Second), ErrTokenInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := tt.v.Verify(raw, tt.at)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("Verify at %v: %v, want %v", tt.at, err, tt.wantErr)
			}
			switch tt.wantErr {
			case nil, ErrTokenExpired:
				// An expired token is still returned whole, for the upload
				// its user started.
				if tok.Subject != "alice" || !tok.Own || !tok.ExpiresAt.Equal(exp) {
					t.Fatalf("token %+v", tok)
				}
				if errors.Is(err, ErrTokenInvalid) {
					t.Fatal("expired is also invalid")
				}
			default:
				if !reflect.DeepEqual(tok, Token{}) {
					t.Fatalf("an invalid token returned %+v", tok)
				}
			}
		})
	}
}

// TestVerifyOwnKeys: key rotation and foreign keys.
func TestVerifyOwnKeys(t *testing.T) {
	t.Parallel()
	oldKey, _ := NewKey()
	newKey, _ := NewKey()
	stranger, _ := NewKey()
	v, err := NewVerifier(VerifierConfig{Issuer: testIssuer, Service: testService, Own: []Key{newKey, oldKey}})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []Key{oldKey, newKey} {
		raw, _, _ := Issuer{Key: k, Name: testIssuer, Service: testService}.Issue("a", nil, "", testNow)
		if _, err := v.Verify(raw, testNow); err != nil {
			t.Errorf("key %s: %v", k.ID, err)
		}
	}
	raw, _, _ := Issuer{Key: stranger, Name: testIssuer, Service: testService}.Issue("a", nil, "", testNow)
	if _, err := v.Verify(raw, testNow); !errors.Is(err, ErrTokenInvalid) || !strings.Contains(err.Error(), "unknown kid") {
		t.Errorf("a stranger's key: %v", err)
	}
	// A stranger's signature under our kid.
	forged := Issuer{Key: Key{ID: newKey.ID, Private: stranger.Private}, Name: testIssuer, Service: testService}
	raw, _, _ = forged.Issue("a", nil, "", testNow)
	if _, err := v.Verify(raw, testNow); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("forged signature: %v", err)
	}
}

// external is an external token server of the tests: an RSA key (what
// GitLab, Harbor and docker_auth sign with), its certificate, and the CA
// that issued it.
type external struct {
	key              *rsa.PrivateKey
	caKey            *ecdsa.PrivateKey
	ca, inter, leaf  *x509.Certificate
	interKey         *ecdsa.PrivateKey
	selfSigned       *x509.Certificate // the RSA key's own self-signed certificate
	dir              string
	jwksFile         string
	caBundle         string
	selfSignedBundle string
}

func newExternal(t *testing.T) *external {
	t.Helper()
	e := &external{dir: t.TempDir()}
	var err error
	if e.key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	e.caKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e.interKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e.ca = makeCert(t, "test CA", true, e.caKey.Public(), nil, e.caKey, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	e.inter = makeCert(t, "test intermediate", true, e.interKey.Public(), e.ca, e.caKey, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	e.leaf = makeCert(t, "token signer", false, e.key.Public(), e.inter, e.interKey, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	e.selfSigned = makeCert(t, "token signer", false, e.key.Public(), nil, e.key, testNow.Add(-time.Hour), testNow.Add(time.Hour))

	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "kid": "gitlab-1", "use": "sig", "alg": "RS256",
		"n": b64(e.key.N.Bytes()), "e": b64(big.NewInt(int64(e.key.E)).Bytes()),
	}}})
	e.jwksFile = writeFile(t, e.dir, "jwks.json", jwks)
	e.caBundle = writeFile(t, e.dir, "ca.pem", pemCerts(e.ca))
	e.selfSignedBundle = writeFile(t, e.dir, "self.pem", pemCerts(e.selfSigned))
	return e
}

func makeCert(t *testing.T, cn string, isCA bool, pub crypto.PublicKey, parent *x509.Certificate, signer crypto.Signer, from, to time.Time) *x509.Certificate {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             from,
		NotAfter:              to,
		BasicConstraintsValid: true,
		IsCA:                  isCA,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func pemCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// dockerAuthClaims are the claims docker_auth, GitLab and Harbor put in a
// registry token: aud a single string, access a list of
// {type, name, actions}.
func dockerAuthClaims(now time.Time) jwt.MapClaims {
	return jwt.MapClaims{
		"iss": testIssuer,
		"sub": "alice",
		"aud": testService,
		"exp": now.Add(5 * time.Minute).Unix(),
		"nbf": now.Add(-5 * time.Second).Unix(),
		"iat": now.Unix(),
		"jti": "5577006791947779410",
		"access": []map[string]any{
			{"type": "repository", "name": "localhost:5000/team-a/app", "actions": []string{"push", "pull"}},
			{"type": "repository", "name": "public/x", "actions": []string{"*"}},
			{"type": "registry", "name": "catalog", "actions": []string{"*"}},
		},
		"berth_tid": "0123456789ab", // an external issuer cannot name an API token
	}
}

func sign(t *testing.T, method jwt.SigningMethod, key any, header map[string]any, claims jwt.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func x5c(certs ...*x509.Certificate) []string {
	var out []string
	for _, c := range certs {
		out = append(out, base64.StdEncoding.EncodeToString(c.Raw))
	}
	return out
}

func TestVerifyExternal(t *testing.T) {
	t.Parallel()
	e := newExternal(t)
	own, _ := NewKey()
	wantAccess := []Scope{
		{"repository", "localhost:5000/team-a/app", []string{"pull", "push"}},
		{"repository", "public/x", []string{"delete", "pull", "push"}},
		{"registry", "catalog", []string{"*"}},
	}
	tests := []struct {
		name   string
		config VerifierConfig
		method jwt.SigningMethod
		header map[string]any
	}{
		{"JWKS file, kid", VerifierConfig{JWKSFile: e.jwksFile}, jwt.SigningMethodRS256, map[string]any{"kid": "gitlab-1"}},
		{"JWKS file and own keys", VerifierConfig{JWKSFile: e.jwksFile, Own: []Key{own}}, jwt.SigningMethodRS256, map[string]any{"kid": "gitlab-1"}},
		{"bundle, x5c chain leaf+intermediate", VerifierConfig{RootCertBundle: e.caBundle}, jwt.SigningMethodRS256, map[string]any{"x5c": x5c(e.leaf, e.inter)}},
		{"bundle, x5c chain, kid ignored", VerifierConfig{RootCertBundle: e.caBundle}, jwt.SigningMethodRS256, map[string]any{"x5c": x5c(e.leaf, e.inter), "kid": "whatever"}},
		{"bundle, x5c, RS512", VerifierConfig{RootCertBundle: e.caBundle}, jwt.SigningMethodRS512, map[string]any{"x5c": x5c(e.leaf, e.inter)}},
		{"bundle, x5c, PS256", VerifierConfig{RootCertBundle: e.caBundle}, jwt.SigningMethodPS256, map[string]any{"x5c": x5c(e.leaf, e.inter)}},
		{"bundle of the signing cert, libtrust kid (docker_auth)", VerifierConfig{RootCertBundle: e.selfSignedBundle}, jwt.SigningMethodRS256, map[string]any{"kid": libtrustKeyID(e.key.Public())}},
		{"bundle of the signing cert, thumbprint kid (reference registry v3)", VerifierConfig{RootCertBundle: e.selfSignedBundle}, jwt.SigningMethodRS256, map[string]any{"kid": jwkThumbprint(e.key.Public())}},
		{"both sources", VerifierConfig{JWKSFile: e.jwksFile, RootCertBundle: e.caBundle}, jwt.SigningMethodRS256, map[string]any{"x5c": x5c(e.leaf, e.inter)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.config.Issuer, tt.config.Service = testIssuer, testService
			v, err := NewVerifier(tt.config)
			if err != nil {
				t.Fatal(err)
			}
			raw := sign(t, tt.method, e.key, tt.header, dockerAuthClaims(testNow))
			tok, err := v.Verify(raw, testNow)
			if err != nil {
				t.Fatal(err)
			}
			want := Token{Subject: "alice", Issuer: testIssuer, ID: "5577006791947779410", Access: wantAccess,
				ExpiresAt: testNow.Add(5 * time.Minute), Own: false}
			if !reflect.DeepEqual(tok, want) {
				t.Fatalf("Verify = %+v\nwant %+v", tok, want)
			}
			// The access claim feeds Covers directly.
			if !Covers(tok.Access, Scope{"repository", "localhost:5000/team-a/app", []string{"push"}}) {
				t.Fatal("not covered")
			}
		})
	}
}

// TestVerifyRefuses: everything a token must not get away with.
func TestVerifyRefuses(t *testing.T) {
	t.Parallel()
	e := newExternal(t)
	own, _ := NewKey()
	v, err := NewVerifier(VerifierConfig{Issuer: testIssuer, Service: testService, Own: []Key{own}, JWKSFile: e.jwksFile, RootCertBundle: e.caBundle})
	if err != nil {
		t.Fatal(err)
	}
	rs := func(claims jwt.MapClaims) string {
		return sign(t, jwt.SigningMethodRS256, e.key, map[string]any{"kid": "gitlab-1"}, claims)
	}
	with := func(k string, val any) jwt.MapClaims {
		c := dockerAuthClaims(testNow)
		if val == nil {
			delete(c, k)
		} else {
			c[k] = val
		}
		return c
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(e.key.Public())
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)
	expiredLeaf := makeCert(t, "old signer", false, e.key.Public(), e.inter, e.interKey, testNow.Add(-2*time.Hour), testNow.Add(-time.Hour))
	otherCAKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherCA := makeCert(t, "other CA", true, otherCAKey.Public(), nil, otherCAKey, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	untrustedLeaf := makeCert(t, "token signer", false, e.key.Public(), otherCA, otherCAKey, testNow.Add(-time.Hour), testNow.Add(time.Hour))

	noneToken := func() string {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT","kid":"gitlab-1"}`))
		p, _ := json.Marshal(dockerAuthClaims(testNow))
		return h + "." + base64.RawURLEncoding.EncodeToString(p) + "."
	}
	tampered := func() string {
		parts := strings.Split(rs(dockerAuthClaims(testNow)), ".")
		c := dockerAuthClaims(testNow)
		c["sub"] = "admin"
		p, _ := json.Marshal(c)
		parts[1] = base64.RawURLEncoding.EncodeToString(p)
		return strings.Join(parts, ".")
	}

	tests := []struct {
		name    string
		raw     string
		wantErr error
		reason  string
	}{
		{"wrong audience", rs(with("aud", "other-registry")), ErrTokenInvalid, "audience"},
		{"audience list without us", rs(with("aud", []string{"a", "b"})), ErrTokenInvalid, "audience"},
		{"no audience", rs(with("aud", nil)), ErrTokenInvalid, "audience"},
		{"wrong issuer", rs(with("iss", "evil")), ErrTokenInvalid, "issuer"},
		{"no issuer", rs(with("iss", nil)), ErrTokenInvalid, "issuer"},
		{"no exp", rs(with("exp", nil)), ErrTokenInvalid, "no expiry"},
		{"expired beyond leeway", rs(with("exp", testNow.Add(-61*time.Second).Unix())), ErrTokenExpired, "expired"},
		{"nbf in the future", rs(with("nbf", testNow.Add(2*time.Minute).Unix())), ErrTokenInvalid, "not valid before"},
		{"iat in the future", rs(with("iat", testNow.Add(2*time.Minute).Unix())), ErrTokenInvalid, "issued in the future"},
		{"alg none", noneToken(), ErrTokenInvalid, "signing method none is invalid"},
		{"HS256 with the public key (PEM) as secret", sign(t, jwt.SigningMethodHS256, pubPEM, map[string]any{"kid": "gitlab-1"}, dockerAuthClaims(testNow)), ErrTokenInvalid, "signing method HS256 is invalid"},
		{"HS256 with the public key (DER) as secret", sign(t, jwt.SigningMethodHS256, pubDER, map[string]any{"kid": "gitlab-1"}, dockerAuthClaims(testNow)), ErrTokenInvalid, "signing method HS256 is invalid"},
		{"alg the JWKS key was not declared for", sign(t, jwt.SigningMethodRS384, e.key, map[string]any{"kid": "gitlab-1"}, dockerAuthClaims(testNow)), ErrTokenInvalid, "does not fit"},
		{"RSA alg on our EC key", sign(t, jwt.SigningMethodRS256, e.key, map[string]any{"kid": own.ID}, dockerAuthClaims(testNow)), ErrTokenInvalid, "does not fit"},
		{"ES384 on a P-256 key", sign(t, jwt.SigningMethodES384, mustP384(t), map[string]any{"kid": own.ID}, dockerAuthClaims(testNow)), ErrTokenInvalid, "does not fit"},
		{"signed by another key", sign(t, jwt.SigningMethodRS256, otherRSA, map[string]any{"kid": "gitlab-1"}, dockerAuthClaims(testNow)), ErrTokenInvalid, "verification error"},
		{"tampered payload", tampered(), ErrTokenInvalid, "verification error"},
		{"unknown kid", sign(t, jwt.SigningMethodRS256, e.key, map[string]any{"kid": "nope"}, dockerAuthClaims(testNow)), ErrTokenInvalid, "unknown kid"},
		{"no kid, no x5c", sign(t, jwt.SigningMethodRS256, e.key, nil, dockerAuthClaims(testNow)), ErrTokenInvalid, "no kid"},
		{"x5c from an untrusted CA", sign(t, jwt.SigningMethodRS256, e.key, map[string]any{"x5c": x5c(untrustedLeaf, otherCA)}, dockerAuthClaims(testNow)), ErrTokenInvalid, "x509"},
		{"x5c chain without the intermediate", sign(t, jwt.SigningMethodRS256, e.key, map[string]any{"x5c": x5c(e.leaf)}, dockerAuthClaims(testNow)), ErrTokenInvalid, "x509"},
		{"x5c leaf expired", sign(t, jwt.SigningMethodRS256, e.key, map[string]any{"x5c": x5c(expiredLeaf, e.inter)}, dockerAuthClaims(testNow)), ErrTokenInvalid, "x509"},
		{"x5c leaf of another key", sign(t, jwt.SigningMethodRS256, otherRSA, map[string]any{"x5c": x5c(e.leaf, e.inter)}, dockerAuthClaims(testNow)), ErrTokenInvalid, "verification error"},
		{"x5c not base64", sign(t, jwt.SigningMethodRS256, e.key, map[string]any{"x5c": []string{"!!"}}, dockerAuthClaims(testNow)), ErrTokenInvalid, "x5c[0]"},
		{"x5c not a list", sign(t, jwt.SigningMethodRS256, e.key, map[string]any{"x5c": "abc"}, dockerAuthClaims(testNow)), ErrTokenInvalid, "x5c"},
		{"x5c too long", sign(t, jwt.SigningMethodRS256, e.key, map[string]any{"x5c": x5c(e.leaf, e.inter, e.inter, e.inter, e.inter, e.inter, e.inter, e.inter, e.inter)}, dockerAuthClaims(testNow)), ErrTokenInvalid, "x5c"},
		{"crit header", sign(t, jwt.SigningMethodRS256, e.key, map[string]any{"kid": "gitlab-1", "crit": []string{"exp"}}, dockerAuthClaims(testNow)), ErrTokenInvalid, "crit"},
		{"garbage", "a.b.c", ErrTokenInvalid, "malformed"},
		{"empty", "", ErrTokenInvalid, "malformed"},
		{"access claim of the wrong shape", rs(with("access", "everything")), ErrTokenInvalid, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := v.Verify(tt.raw, testNow)
			t.Log(err)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("Verify: %v; want %v with %q", err, tt.wantErr, tt.reason)
			}
			if tt.wantErr == ErrTokenInvalid && !reflect.DeepEqual(tok, Token{}) {
				t.Fatalf("an invalid token returned %+v", tok)
			}
		})
	}
}

func mustP384(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNewVerifierRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	own, _ := NewKey()
	jwks := func(keys ...map[string]string) string {
		b, _ := json.Marshal(map[string]any{"keys": keys})
		return writeFile(t, dir, rand.Text()+".json", b)
	}
	good := map[string]string{"kty": "RSA", "kid": "k", "n": rfc7638Key.N, "e": "AQAB"}
	withKV := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range good {
			m[a] = b
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name   string
		config VerifierConfig
		reason string
	}{
		{"no issuer", VerifierConfig{Service: "s", Own: []Key{own}}, "issuer and service"},
		{"no service", VerifierConfig{Issuer: "i", Own: []Key{own}}, "issuer and service"},
		{"no keys", VerifierConfig{Issuer: "i", Service: "s"}, "no keys"},
		{"own key without ID", VerifierConfig{Issuer: "i", Service: "s", Own: []Key{{Private: own.Private}}}, "without"},
		{"JWKS missing", VerifierConfig{Issuer: "i", Service: "s", JWKSFile: filepath.Join(dir, "nope")}, "no such file"},
		{"JWKS not JSON", VerifierConfig{Issuer: "i", Service: "s", JWKSFile: writeFile(t, dir, "bad.json", []byte("{"))}, "not a JWKS"},
		{"JWKS empty", VerifierConfig{Issuer: "i", Service: "s", JWKSFile: jwks()}, "no keys"},
		{"JWKS key without kid", VerifierConfig{Issuer: "i", Service: "s", JWKSFile: jwks(withKV("kid", ""))}, "no kid"},
		{"JWKS kid twice", VerifierConfig{Issuer: "i", Service: "s", JWKSFile: jwks(good, good)}, "twice"},
		{"JWKS small RSA key", VerifierConfig{Issuer: "i", Service: "s", JWKSFile: jwks(withKV("n", b64(small.N.Bytes())))}, "1024 bits"},
		{"JWKS alg of another key type", VerifierConfig{Issuer: "i", Service: "s", JWKSFile: jwks(withKV("alg", "ES256"))}, "does not fit"},
		{"JWKS HMAC key", VerifierConfig{Issuer: "i", Service: "s", JWKSFile: jwks(map[string]string{"kty": "oct", "kid": "h", "k": "c2VjcmV0"})}, "unsupported key type"},
		{"bundle missing", VerifierConfig{Issuer: "i", Service: "s", RootCertBundle: filepath.Join(dir, "nope.pem")}, "no such file"},
		{"bundle without certificates", VerifierConfig{Issuer: "i", Service: "s", RootCertBundle: writeFile(t, dir, "empty.pem", []byte("hello"))}, "no PEM certificates"},
		{"bundle with a broken certificate", VerifierConfig{Issuer: "i", Service: "s", RootCertBundle: writeFile(t, dir, "broken.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("x")}))}, "certificate 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewVerifier(tt.config); err == nil || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("NewVerifier: %v, want an error with %q", err, tt.reason)
			}
		})
	}
	// An encryption key is skipped, not refused.
	if _, err := NewVerifier(VerifierConfig{Issuer: "i", Service: "s", JWKSFile: jwks(withKV("use", "enc"), withKV("kid", "k2"))}); err != nil {
		t.Errorf("use=enc: %v", err)
	}
}

// decodeJWT returns a token's header and payload, unverified.
func decodeJWT(t *testing.T, raw string) (header, payload map[string]any) {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %q", raw)
	}
	for i, dst := range []*map[string]any{&header, &payload} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, dst); err != nil {
			t.Fatal(err)
		}
	}
	return header, payload
}
