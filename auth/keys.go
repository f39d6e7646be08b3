package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// Key is one of Berth's own token signing keys: ECDSA P-256, for ES256.
// ES256 rather than RS256: the keys are small enough to keep in a database
// row and to generate on first start without a pause, the signatures are
// short, and every registry client and token library verifies it.
type Key struct {
	ID      string // RFC 7638 JWK thumbprint (base64url) of the public key: the "kid"
	Private *ecdsa.PrivateKey
}

// NewKey generates a signing key.
func NewKey() (Key, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Key{}, err
	}
	return newKey(priv)
}

func newKey(priv *ecdsa.PrivateKey) (Key, error) {
	if priv.Curve != elliptic.P256() {
		return Key{}, fmt.Errorf("signing key: want an ECDSA P-256 key, have %s", priv.Curve.Params().Name)
	}
	id := jwkThumbprint(&priv.PublicKey)
	if id == "" {
		return Key{}, errors.New("signing key: invalid public key")
	}
	return Key{ID: id, Private: priv}, nil
}

// MarshalPrivate encodes the key as PKCS#8 DER, for the database.
func (k Key) MarshalPrivate() ([]byte, error) {
	return x509.MarshalPKCS8PrivateKey(k.Private)
}

// ParseKey decodes a key written by MarshalPrivate.
func ParseKey(der []byte) (Key, error) {
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return Key{}, fmt.Errorf("signing key: %w", err)
	}
	ec, ok := priv.(*ecdsa.PrivateKey)
	if !ok {
		return Key{}, fmt.Errorf("signing key: want an ECDSA P-256 key, have %T", priv)
	}
	return newKey(ec)
}

// jwk is a public JSON Web Key (RFC 7517) as JWKS documents hold them.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid,omitempty"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
	// EC
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
	// RSA
	N string `json:"n,omitempty"`
	E string `json:"e,omitempty"`
}

type jwkSet struct {
	Keys []jwk `json:"keys"`
}

// JWKS returns the JSON Web Key Set of the keys' public halves, served at
// /auth/jwks so that other services (or a second registry trusting Berth)
// can verify Berth's tokens.
func JWKS(keys ...Key) ([]byte, error) {
	set := jwkSet{Keys: []jwk{}}
	for _, k := range keys {
		pub, err := k.Private.PublicKey.Bytes()
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", k.ID, err)
		}
		n := (len(pub) - 1) / 2
		set.Keys = append(set.Keys, jwk{
			Kty: "EC", Crv: "P-256", Kid: k.ID, Alg: "ES256", Use: "sig",
			X: b64(pub[1 : 1+n]), Y: b64(pub[1+n:]),
		})
	}
	return json.Marshal(set)
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwkCurve returns the curve of a JWK "crv" and the algorithm that goes
// with it (RFC 7518 section 3.4).
func jwkCurve(crv string) (elliptic.Curve, string, bool) {
	switch crv {
	case "P-256":
		return elliptic.P256(), "ES256", true
	case "P-384":
		return elliptic.P384(), "ES384", true
	case "P-521":
		return elliptic.P521(), "ES512", true
	}
	return nil, "", false
}

// minRSABits is the smallest RSA key accepted from a JWKS file or a
// certificate: 2048 bits, NIST's floor since 2013.
const minRSABits = 2048

// publicKey decodes the public key of a JWK.
func (k jwk) publicKey() (crypto.PublicKey, error) {
	switch k.Kty {
	case "EC":
		curve, _, ok := jwkCurve(k.Crv)
		if !ok {
			return nil, fmt.Errorf("unsupported curve %q", k.Crv)
		}
		x, errX := base64.RawURLEncoding.DecodeString(k.X)
		y, errY := base64.RawURLEncoding.DecodeString(k.Y)
		size := (curve.Params().BitSize + 7) / 8
		if errX != nil || errY != nil || len(x) != size || len(y) != size {
			return nil, errors.New("bad x or y")
		}
		return ecdsa.ParseUncompressedPublicKey(curve, append(append([]byte{4}, x...), y...))
	case "RSA":
		n, errN := base64.RawURLEncoding.DecodeString(k.N)
		e, errE := base64.RawURLEncoding.DecodeString(k.E)
		if errN != nil || errE != nil || len(e) == 0 || len(e) > 4 {
			return nil, errors.New("bad n or e")
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		if err := checkRSA(pub); err != nil {
			return nil, err
		}
		return pub, nil
	}
	return nil, fmt.Errorf("unsupported key type %q", k.Kty)
}

func checkRSA(pub *rsa.PublicKey) error {
	if pub.N.BitLen() < minRSABits {
		return fmt.Errorf("RSA key of %d bits, want at least %d", pub.N.BitLen(), minRSABits)
	}
	if pub.E < 3 || pub.E%2 == 0 {
		return fmt.Errorf("bad RSA exponent %d", pub.E)
	}
	return nil
}

// jwkThumbprint returns the RFC 7638 thumbprint of an RSA or ECDSA public
// key: the SHA-256 of its required JWK members in lexical order, no white
// space, base64url. The EC coordinates keep their leading zeros, as RFC
// 7518 requires (the reference registry drops them, so for about one key in
// 128 its thumbprint differs; JWKS files carry their own kid, so that does
// not matter there). "" for other keys.
func jwkThumbprint(pub crypto.PublicKey) string {
	var s string
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		b, err := k.Bytes()
		if err != nil {
			return ""
		}
		n := (len(b) - 1) / 2
		s = fmt.Sprintf(`{"crv":%q,"kty":"EC","x":%q,"y":%q}`, k.Curve.Params().Name, b64(b[1:1+n]), b64(b[1+n:]))
	case *rsa.PublicKey:
		s = fmt.Sprintf(`{"e":%q,"kty":"RSA","n":%q}`, b64(big.NewInt(int64(k.E)).Bytes()), b64(k.N.Bytes()))
	default:
		return ""
	}
	h := sha256.Sum256([]byte(s))
	return b64(h[:])
}

// libtrustKeyID returns the key ID docker/libtrust computes, which
// docker_auth, GitLab and Portus put in the "kid" of their tokens and
// which the reference registry (until v3) matched against the keys of its
// root certificate bundle: the first 240 bits of the SHA-256 of the
// PKIX DER public key, base32, in 12 groups of 4 joined by ':'.
func libtrustKeyID(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	h := sha256.Sum256(der)
	s := strings.TrimRight(base32.StdEncoding.EncodeToString(h[:30]), "=")
	var groups []string
	for i := 0; i < len(s); i += 4 {
		groups = append(groups, s[i:min(i+4, len(s))])
	}
	return strings.Join(groups, ":")
}
