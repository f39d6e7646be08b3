package main

import (
	"context"
	"fmt"
	"net"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/handlers"
)

// authConfig builds the API's authentication from the settings. With
// authentication on it loads Berth's signing keys from the database,
// creating the first one on the first start: every replica signs and
// verifies tokens (token mode) and the web interface's sessions with the
// same keys.
func authConfig(ctx context.Context, c Config, d *db.DB) (handlers.AuthConfig, error) {
	ac := handlers.AuthConfig{Mode: c.Auth, Realm: c.AuthRealm, Service: c.AuthService, ExternalURL: c.ExternalURL,
		UploadGrace: c.GCUploadTimeout}
	if c.Auth != handlers.AuthToken && (c.AuthTokenJWKS != "" || c.AuthTokenRootCertBundle != "") {
		return ac, fmt.Errorf("--auth-token-jwks and --auth-token-rootcertbundle need --auth token")
	}
	if c.Auth != handlers.AuthToken && c.Auth != handlers.AuthBasic {
		return ac, nil
	}
	rows, err := d.SigningKeys(ctx, func() (db.SigningKey, error) {
		k, err := auth.NewKey()
		if err != nil {
			return db.SigningKey{}, err
		}
		der, err := k.MarshalPrivate()
		return db.SigningKey{ID: k.ID, Private: der}, err
	})
	if err != nil {
		return ac, fmt.Errorf("load the token signing keys: %w", err)
	}
	keys := make([]auth.Key, 0, len(rows))
	for _, row := range rows {
		k, err := auth.ParseKey(row.Private)
		if err != nil {
			return ac, fmt.Errorf("signing key %s: %w", row.ID, err)
		}
		keys = append(keys, k)
	}
	// The web interface signs its sessions with the same keys, under an
	// issuer and audience of its own, so that a login holds on every
	// replica.
	ac.SessionKeys = keys
	if c.Auth != handlers.AuthToken {
		return ac, nil
	}
	ac.Issuer = &auth.Issuer{Key: keys[0], Name: c.AuthIssuer, Service: c.AuthService, TTL: c.AuthTokenTTL}
	ac.Verifier, err = auth.NewVerifier(auth.VerifierConfig{Issuer: c.AuthIssuer, Service: c.AuthService, Own: keys,
		JWKSFile: c.AuthTokenJWKS, RootCertBundle: c.AuthTokenRootCertBundle})
	if err != nil {
		return ac, fmt.Errorf("token verification: %w", err)
	}
	return ac, nil
}

// loopback reports whether addr is reachable from this host only.
func loopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}
