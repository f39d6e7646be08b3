package proxy

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/berth-registry/berth/db"
)

// Upstream passwords must be sent to the upstream, so they cannot be
// hashed: they are sealed with AES-256-GCM, the proxy's prefix as
// additional data (a sealed password copied to another row does not
// open). The key is --proxy-secret-key (hashed with SHA-256 to 32 bytes)
// when set, else a random key kept in the database (proxy_keys). The
// first byte after the version says which, so a key set later still
// opens what the database key sealed.
//
// What each protects against: the database key keeps passwords out of
// `berth proxy list`, logs, the audit trail and any export of the proxies
// table alone; anyone who can read the whole database can open them. With
// --proxy-secret-key, a copy of the database (a backup, a replica) is not
// enough: the key must be stolen from the replicas' configuration too.

const (
	sealVersion  = 1
	keyDatabase  = 'd'
	keySetting   = 's'
	minSecretLen = 16
)

// SealPassword seals password for the proxy of prefix, with the key
// secret (--proxy-secret-key) or, when it is empty, the database's.
func SealPassword(ctx context.Context, d *db.DB, secret, prefix, password string) ([]byte, error) {
	which, key, err := sealKey(ctx, d, secret)
	if err != nil {
		return nil, err
	}
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := append([]byte{sealVersion, which}, nonce...)
	return gcm.Seal(out, nonce, []byte(password), []byte(prefix)), nil
}

func sealKey(ctx context.Context, d *db.DB, secret string) (byte, []byte, error) {
	if secret != "" {
		if len(secret) < minSecretLen {
			return 0, nil, fmt.Errorf("--proxy-secret-key must be at least %d characters", minSecretLen)
		}
		k := sha256.Sum256([]byte(secret))
		return keySetting, k[:], nil
	}
	k, err := d.ProxyKey(ctx)
	return keyDatabase, k, err
}

// openPassword opens what SealPassword sealed for prefix.
func openPassword(ctx context.Context, d *db.DB, secret, prefix string, sealed []byte) (string, error) {
	if len(sealed) < 2 || sealed[0] != sealVersion {
		return "", errors.New("the stored upstream password is not in a known format")
	}
	var key []byte
	switch sealed[1] {
	case keySetting:
		if secret == "" {
			return "", errors.New("the upstream password was sealed with --proxy-secret-key, which is not set")
		}
		k := sha256.Sum256([]byte(secret))
		key = k[:]
	case keyDatabase:
		var err error
		if key, err = d.ProxyKey(ctx); err != nil {
			return "", err
		}
	default:
		return "", errors.New("the stored upstream password names an unknown key")
	}
	gcm, err := newGCM(key)
	if err != nil {
		return "", err
	}
	rest := sealed[2:]
	if len(rest) < gcm.NonceSize() {
		return "", errors.New("the stored upstream password is truncated")
	}
	plain, err := gcm.Open(nil, rest[:gcm.NonceSize()], rest[gcm.NonceSize():], []byte(prefix))
	if err != nil {
		return "", errors.New("the stored upstream password does not open with this key (was --proxy-secret-key changed?)")
	}
	return string(plain), nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
