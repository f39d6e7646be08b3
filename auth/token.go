package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultTokenTTL is how long an issued token lives when Issuer.TTL is
// zero: 5 minutes, what Docker Hub gives. Clients ask for a new token when
// one expires, so short is cheap; a push outliving it is finished with the
// expired token (see ErrTokenExpired).
const DefaultTokenTTL = 5 * time.Minute

// DefaultLeeway is the clock skew allowed between the token server and the
// registry when VerifierConfig.Leeway is zero: 60 seconds, the reference
// registry's.
const DefaultLeeway = 60 * time.Second

// maxChainLength bounds an x5c certificate chain, so that a token cannot
// make the verifier parse an unbounded number of certificates.
const maxChainLength = 8

// tokenAlgorithms are the signature algorithms a token may use. No "none"
// and no HMAC: a verifier that holds a public key must never treat it as a
// shared secret. Each key further restricts this to its own type (algFits).
var tokenAlgorithms = []string{"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}

// accessEntry is one element of the "access" claim of the Docker token
// protocol.
type accessEntry struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// claims are the claims of a registry token.
type claims struct {
	jwt.RegisteredClaims
	Access []accessEntry `json:"access"`
	// TokenID names the API token the JWT was issued for, so that the
	// registry can refuse the JWT as soon as the API token is revoked.
	TokenID string `json:"berth_tid,omitempty"`
}

// Issuer makes Berth's own tokens.
type Issuer struct {
	Key     Key
	Name    string        // "iss"
	Service string        // "aud"
	TTL     time.Duration // 0: DefaultTokenTTL
}

// Issue signs a token for subject ("" when anonymous) granting access,
// which the caller has already cut down with Authorize. tokenID, if not
// empty, is the API token the caller authenticated with.
func (i Issuer) Issue(subject string, access []Scope, tokenID string, now time.Time) (token string, expiresAt time.Time, err error) {
	if i.Key.Private == nil || i.Key.ID == "" {
		return "", time.Time{}, errors.New("issuer: no signing key")
	}
	if i.Name == "" || i.Service == "" {
		return "", time.Time{}, errors.New("issuer: name and service are required")
	}
	ttl := i.TTL
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	// JWT times are whole seconds: truncate now so that expiresAt is the
	// exp the client sees.
	now = now.Truncate(time.Second)
	expiresAt = now.Add(ttl)
	c := claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    i.Name,
			Subject:   subject,
			Audience:  jwt.ClaimStrings{i.Service},
			ExpiresAt: jwt.NewNumericDate(expiresAt),
			NotBefore: jwt.NewNumericDate(now),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        rand.Text(),
		},
		Access:  []accessEntry{}, // "access": [] rather than null, as the protocol shows it
		TokenID: tokenID,
	}
	for _, sc := range access {
		c.Access = append(c.Access, accessEntry{Type: sc.Type, Name: sc.Name, Actions: sc.Actions})
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, c)
	t.Header["kid"] = i.Key.ID
	token, err = t.SignedString(i.Key.Private)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("signing token: %w", err)
	}
	return token, expiresAt, nil
}

// Token is a verified registry token.
type Token struct {
	Subject, Issuer string
	ID              string // "jti"
	TokenID         string // the API token it was issued for; only in Berth's own tokens
	Access          []Scope
	ExpiresAt       time.Time
	Own             bool // signed by one of Berth's own keys
}

var (
	// ErrTokenExpired: the token is valid but for its expiry. Verify
	// returns the Token with it, so that the registry can let the user who
	// started an upload with a token finish it after the token expired.
	ErrTokenExpired = errors.New("token expired")
	// ErrTokenInvalid: the token cannot be trusted; the error wraps why.
	ErrTokenInvalid = errors.New("invalid token")
)

// VerifierConfig says which tokens a Verifier accepts.
type VerifierConfig struct {
	Issuer  string // "iss" must equal it
	Service string // "aud" must contain it
	Own     []Key  // Berth's own keys, found by "kid"
	// JWKSFile is a JSON Web Key Set of an external token server's keys
	// (RSA or EC), found by "kid".
	JWKSFile string
	// RootCertBundle is a PEM file of certificates. A token whose x5c chain
	// verifies against them is accepted, signed by the chain's leaf; so is a
	// token whose "kid" names one of their keys, by its libtrust key ID (as
	// docker_auth, GitLab and Portus send) or its RFC 7638 thumbprint (as
	// the reference registry v3 computes).
	RootCertBundle string
	Leeway         time.Duration // allowed clock skew; 0: DefaultLeeway; negative: none
}

// Verifier checks registry tokens. It is safe for concurrent use.
type Verifier struct {
	issuer, service string
	leeway          time.Duration
	own             map[string]*ecdsa.PublicKey
	trusted         map[string]trustedKey // by kid: JWKS keys, then the bundle's keys
	roots           *x509.CertPool        // nil without a bundle
}

type trustedKey struct {
	pub crypto.PublicKey
	alg string // the JWK's "alg": "" allows any algorithm of the key's type
}

// NewVerifier loads the JWKS file and the certificate bundle, if given.
func NewVerifier(c VerifierConfig) (*Verifier, error) {
	if c.Issuer == "" || c.Service == "" {
		return nil, errors.New("token verifier: issuer and service are required")
	}
	if len(c.Own) == 0 && c.JWKSFile == "" && c.RootCertBundle == "" {
		return nil, errors.New("token verifier: no keys: give own keys, a JWKS file or a root certificate bundle")
	}
	v := &Verifier{
		issuer:  c.Issuer,
		service: c.Service,
		leeway:  max(c.Leeway, 0),
		own:     map[string]*ecdsa.PublicKey{},
		trusted: map[string]trustedKey{},
	}
	if c.Leeway == 0 {
		v.leeway = DefaultLeeway
	}
	for _, k := range c.Own {
		if k.Private == nil || k.ID == "" {
			return nil, errors.New("token verifier: own key without private key or ID")
		}
		v.own[k.ID] = &k.Private.PublicKey
	}
	if c.JWKSFile != "" {
		if err := v.loadJWKS(c.JWKSFile); err != nil {
			return nil, fmt.Errorf("token verifier: JWKS file %s: %w", c.JWKSFile, err)
		}
	}
	if c.RootCertBundle != "" {
		if err := v.loadBundle(c.RootCertBundle); err != nil {
			return nil, fmt.Errorf("token verifier: root certificate bundle %s: %w", c.RootCertBundle, err)
		}
	}
	return v, nil
}

func (v *Verifier) loadJWKS(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var set jwkSet
	if err := json.Unmarshal(data, &set); err != nil {
		return fmt.Errorf("not a JWKS document: %w", err)
	}
	if len(set.Keys) == 0 {
		return errors.New("no keys")
	}
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue // an encryption key signs nothing
		}
		if k.Kid == "" {
			return fmt.Errorf("key %d: no kid (tokens find their key by kid)", i)
		}
		if _, dup := v.trusted[k.Kid]; dup {
			return fmt.Errorf("key %d: kid %q twice", i, k.Kid)
		}
		pub, err := k.publicKey()
		if err != nil {
			return fmt.Errorf("key %q: %w", k.Kid, err)
		}
		if k.Alg != "" && !algFits(pub, k.Alg) {
			return fmt.Errorf("key %q: alg %q does not fit a key of type %s", k.Kid, k.Alg, k.Kty)
		}
		v.trusted[k.Kid] = trustedKey{pub: pub, alg: k.Alg}
	}
	return nil
}

func (v *Verifier) loadBundle(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	v.roots = x509.NewCertPool()
	n := 0
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
		n++
		v.roots.AddCert(cert)
		if keyUsable(cert.PublicKey) != nil {
			continue // can still be a CA of x5c chains
		}
		for _, kid := range []string{libtrustKeyID(cert.PublicKey), jwkThumbprint(cert.PublicKey)} {
			if _, taken := v.trusted[kid]; kid != "" && !taken {
				v.trusted[kid] = trustedKey{pub: cert.PublicKey}
			}
		}
	}
	if n == 0 {
		return errors.New("no PEM certificates")
	}
	return nil
}

// keyUsable reports why a public key cannot sign tokens, or nil.
func keyUsable(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return checkRSA(k)
	case *ecdsa.PublicKey:
		if _, _, ok := jwkCurve(k.Curve.Params().Name); !ok {
			return fmt.Errorf("unsupported curve %s", k.Curve.Params().Name)
		}
		return nil
	}
	return fmt.Errorf("unsupported key type %T", pub)
}

// algFits reports whether alg is a signature algorithm for pub, so that a
// token cannot pick an algorithm its key was not made for.
func algFits(pub crypto.PublicKey, alg string) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		_, want, ok := jwkCurve(k.Curve.Params().Name)
		return ok && alg == want
	case *rsa.PublicKey:
		switch alg {
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
			return true
		}
	}
	return false
}

// Verify checks a token and returns what it grants. It accepts a token
// signed by one of the own keys (found by "kid"), by a key of the JWKS
// file or the bundle (by "kid"), or by the leaf of an "x5c" chain that
// verifies against the bundle at now. The algorithm must fit the key; iss
// must equal the configured issuer, aud contain the service; exp is
// required; exp, nbf and iat are checked with the leeway.
//
// A token valid but for its expiry is returned along with an error
// wrapping ErrTokenExpired. Every other failure is an error wrapping
// ErrTokenInvalid and the reason.
func (v *Verifier) Verify(raw string, now time.Time) (Token, error) {
	var c claims
	own := false
	keyfunc := func(t *jwt.Token) (any, error) {
		if _, ok := t.Header["crit"]; ok {
			// RFC 7515 section 4.1.11: extensions the recipient does not
			// understand make the token invalid, and none are understood.
			return nil, errors.New("crit header: no extensions are supported")
		}
		alg := t.Method.Alg()
		kid, _ := t.Header["kid"].(string)
		var pub crypto.PublicKey
		var keyAlg string
		x5c, hasChain := t.Header["x5c"]
		switch {
		case v.own[kid] != nil:
			pub, own = v.own[kid], true
		case hasChain && v.roots != nil:
			var err error
			if pub, err = v.verifyChain(x5c, now); err != nil {
				return nil, err
			}
		case kid == "":
			return nil, errors.New("no kid and no x5c chain to find the key by")
		default:
			tk, ok := v.trusted[kid]
			if !ok {
				return nil, fmt.Errorf("unknown kid %q", kid)
			}
			pub, keyAlg = tk.pub, tk.alg
		}
		if !algFits(pub, alg) || keyAlg != "" && keyAlg != alg {
			return nil, fmt.Errorf("alg %s does not fit the key", alg)
		}
		return pub, nil
	}
	p := jwt.NewParser(jwt.WithValidMethods(tokenAlgorithms), jwt.WithoutClaimsValidation())
	if _, err := p.ParseWithClaims(raw, &c, keyfunc); err != nil {
		return Token{}, fmt.Errorf("%w: %w", ErrTokenInvalid, err)
	}

	invalid := func(format string, a ...any) (Token, error) {
		return Token{}, fmt.Errorf("%w: "+format, append([]any{ErrTokenInvalid}, a...)...)
	}
	switch {
	case c.Issuer != v.issuer:
		return invalid("issuer %q, want %q", c.Issuer, v.issuer)
	case !slices.Contains(c.Audience, v.service):
		return invalid("audience %q does not include %q", []string(c.Audience), v.service)
	case c.ExpiresAt == nil:
		return invalid("no expiry (exp)")
	case c.NotBefore != nil && now.Before(c.NotBefore.Add(-v.leeway)):
		return invalid("not valid before %s", c.NotBefore.UTC().Format(time.RFC3339))
	case c.IssuedAt != nil && now.Before(c.IssuedAt.Add(-v.leeway)):
		return invalid("issued in the future, at %s", c.IssuedAt.UTC().Format(time.RFC3339))
	}
	tok := Token{
		Subject:   c.Subject,
		Issuer:    c.Issuer,
		ID:        c.ID,
		Access:    accessScopes(c.Access),
		ExpiresAt: c.ExpiresAt.Time,
		Own:       own,
	}
	if own {
		// Only Berth's tokens name an API token: another issuer's claim of
		// the same name means nothing here.
		tok.TokenID = c.TokenID
	}
	if !now.Before(c.ExpiresAt.Add(v.leeway)) {
		return tok, fmt.Errorf("%w at %s", ErrTokenExpired, c.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return tok, nil
}

// verifyChain verifies an x5c header (RFC 7515 section 4.1.6: standard
// base64 DER certificates, leaf first) against the bundle and returns the
// leaf's key.
func (v *Verifier) verifyChain(x5c any, now time.Time) (crypto.PublicKey, error) {
	list, ok := x5c.([]any)
	if !ok || len(list) == 0 || len(list) > maxChainLength {
		return nil, fmt.Errorf("x5c: want an array of 1 to %d certificates", maxChainLength)
	}
	var certs []*x509.Certificate
	for i, e := range list {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("x5c[%d]: not a string", i)
		}
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("x5c[%d]: %w", i, err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("x5c[%d]: %w", i, err)
		}
		certs = append(certs, cert)
	}
	intermediates := x509.NewCertPool()
	for _, c := range certs[1:] {
		intermediates.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         v.roots,
		Intermediates: intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("x5c: %w", err)
	}
	if err := keyUsable(certs[0].PublicKey); err != nil {
		return nil, fmt.Errorf("x5c leaf: %w", err)
	}
	return certs[0].PublicKey, nil
}

// accessScopes turns an "access" claim into scopes, as ParseScope would:
// actions sorted and deduplicated, "*" of a repository expanded, entries
// of the same type and name merged, empty ones dropped.
func accessScopes(access []accessEntry) []Scope {
	var out []Scope
	for _, a := range access {
		if a.Type == "" || a.Name == "" {
			continue
		}
		var actions []string
		for _, act := range a.Actions {
			switch {
			case act == "":
			case act == "*" && a.Type == TypeRepository:
				actions = append(actions, allActions...)
			default:
				actions = append(actions, act)
			}
		}
		if len(actions) > 0 {
			out = mergeScope(out, Scope{Type: a.Type, Name: a.Name, Actions: sortedSet(actions)})
		}
	}
	return out
}
