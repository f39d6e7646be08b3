package ui

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"time"
)

// Cookies. Both are HttpOnly (no script reads them), SameSite=Strict (no
// other site's page sends them, which is the first defence against
// cross-site requests) and scoped to the interface's path, so that the API
// under /v2 never sees them.
const (
	// sessionCookie holds the login: a token signed by the registry (see
	// Backend.Login), naming the user; it carries no rights, which are read
	// afresh from the database on every request.
	sessionCookie = "berth_session"
	// csrfCookie holds a random value that the forms' tokens derive from
	// while nobody is logged in (the login form, and every form with
	// --auth none).
	csrfCookie = "berth_csrf"
	csrfField  = "csrf"
)

func (s *Server) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge time.Duration) {
	c := &http.Cookie{Name: name, Value: value, Path: Prefix + "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"}
	switch {
	case maxAge > 0:
		c.MaxAge = int(maxAge / time.Second)
	case maxAge < 0:
		c.MaxAge = -1 // delete
	}
	http.SetCookie(w, c)
}

// csrfSeed is the secret the request's form tokens derive from: the
// session cookie when logged in, else the CSRF cookie, which it sets when
// missing.
func (s *Server) csrfSeed(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
		return c.Value
	}
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) >= 16 {
		return c.Value
	}
	v := rand.Text()
	s.setCookie(w, r, csrfCookie, v, 0)
	// The request itself has no cookie yet: its forms use the new value.
	r.AddCookie(&http.Cookie{Name: csrfCookie, Value: v})
	return v
}

// csrfToken is the token the forms of a page carry: a hash of the seed, so
// the page holds no cookie value, and another site, which can read neither
// the cookie nor the page, cannot forge it.
func csrfToken(seed string) string {
	sum := sha256.Sum256([]byte("berth-ui csrf\x00" + seed))
	return base64.RawURLEncoding.EncodeToString(sum[:18])
}

// csrfValid checks the token of a form posted with r, and that the browser
// does not say the request comes from another site.
func csrfValid(r *http.Request, seed string) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		return false
	}
	got := r.PostFormValue(csrfField)
	want := csrfToken(seed)
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
