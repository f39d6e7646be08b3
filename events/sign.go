package events

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
)

// SignatureHeader carries the HMAC of a request's body when the webhook
// has a secret: "sha256=<hex>".
const SignatureHeader = "Berth-Signature"

// EventIDHeader names the event a request carries.
const EventIDHeader = "Berth-Event-Id"

// MediaType is the Content-Type of webhook requests: the reference
// registry's, so that its receivers accept them.
const MediaType = "application/vnd.docker.distribution.events.v2+json"

// Sign returns the Berth-Signature value of body under secret.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether signature (a Berth-Signature value) is body's
// under secret, in constant time: what a receiver does.
func Verify(secret string, body []byte, signature string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(signature))
}
