package handlers

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
)

// Authentication and authorization of the API. Every request under /v2/
// passes through authorizeRequest, which works out the one scope the
// request needs (requiredScope: the reference registry's table), who the
// caller is (Basic credentials, a Bearer token or nobody), and whether the
// grants in the database, read afresh for the request, let them. The rules
// themselves are package auth's; the rows are package db's. Nothing is
// cached across requests but the result of a bcrypt check (see
// passwordCache): a grant revoked or a token revoked through any replica
// holds at the next request everywhere.

// Authentication modes.
const (
	AuthNone  = "none"
	AuthBasic = "basic"
	AuthToken = "token"
)

// AuthConfig configures authentication. The zero value (Mode "" or "none")
// lets everyone do everything, as Berth did before authentication existed.
type AuthConfig struct {
	Mode string
	// Realm is the Basic realm, or in token mode the token service's URL
	// (empty: <external URL>/auth/token).
	Realm string
	// Service is the token audience ("aud") and the service clients name.
	Service string
	// ExternalURL is what clients use to reach Berth, e.g.
	// https://registry.example.com; empty: from each request's Host.
	ExternalURL string
	// Issuer signs Berth's own tokens (token mode).
	Issuer *auth.Issuer
	// Verifier checks Bearer tokens: Berth's own and an external token
	// server's.
	Verifier *auth.Verifier
	// UploadGrace is how long after its expiry a Berth token still lets its
	// subject continue an upload session the subject opened: a large layer
	// pushed in chunks must not fail because a short token expired
	// between two chunks. Use the upload sessions' own life.
	UploadGrace time.Duration
	// Throttle slows repeated failed logins; nil makes a default one.
	Throttle *auth.Throttle
	// SessionKeys sign the web interface's session cookies: the
	// registry's signing keys, so that a login holds on every replica.
	// Empty: a key made at start, and logins last as long as the process.
	SessionKeys []auth.Key
}

func (c AuthConfig) enabled() bool { return c.Mode == AuthBasic || c.Mode == AuthToken }

// refreshTokenTTL is the life of the refresh tokens the token service
// hands out for offline_token=true (docker login keeps one): they are API
// tokens of the user, listed and revocable with `berth token`.
const refreshTokenTTL = 30 * 24 * time.Hour

// principal is who makes a request, as far as this request is concerned.
type principal struct {
	auth.Principal
	// authenticated: credentials or a token were given and accepted.
	authenticated bool
	// grants are the grants of the principal's subjects, read for this
	// request (nil for an external token, which carries its own access).
	grants []auth.Grant
	// access is what a Bearer token grants, cut down for Berth's own
	// tokens to what the grants allow now; nil without a token.
	access []auth.Scope
	bearer bool
}

// owner is the name an upload session is recorded under.
func (p *principal) owner() string {
	if p.Name != "" {
		return p.Name
	}
	return auth.SubjectAnonymous
}

type principalKey struct{}

func principalOf(ctx context.Context) *principal {
	p, _ := ctx.Value(principalKey{}).(*principal)
	return p
}

// requiredScope is the one table of what a request needs, as the reference
// registry computes it: reading needs pull; writing (POST, PUT, PATCH;
// tag restore included) pull and push; deleting anything, delete.
func requiredScope(rt route, method string) auth.Scope {
	sc := auth.Scope{Type: auth.TypeRepository, Name: rt.name}
	switch method {
	case http.MethodGet, http.MethodHead:
		sc.Actions = []string{auth.Pull}
	case http.MethodDelete:
		sc.Actions = []string{auth.Delete}
	default:
		sc.Actions = []string{auth.Pull, auth.Push}
	}
	return sc
}

// authError is a refusal on authentication grounds: 401 with a challenge,
// or 403 (basic mode, authenticated but not allowed).
type authError struct {
	status    int
	challenge string // WWW-Authenticate
	need      *auth.Scope
	message   string
}

func (e *authError) Error() string { return e.message }

// wire is the OCI error of the refusal, with the detail the reference
// registry gives: the access that was needed.
func (e *authError) wire() *Error {
	code := CodeUnauthorized
	if e.status == http.StatusForbidden {
		code = CodeDenied
	}
	out := &Error{Code: code, Status: e.status, Message: e.message, Header: http.Header{}}
	if e.challenge != "" {
		out.Header.Set("WWW-Authenticate", e.challenge)
	}
	if e.need != nil {
		detail := make([]map[string]string, 0, len(e.need.Actions))
		for _, a := range e.need.Actions {
			detail = append(detail, map[string]string{"Type": e.need.Type, "Class": "", "Name": e.need.Name, "Action": a})
		}
		out.Detail = detail
	}
	return out
}

// authenticate works out who makes r. A request without credentials is
// the anonymous principal; credentials that do not hold are an error
// (401), never a silent fall back to anonymous. rt is the route, for the
// upload grace of expired tokens (nil for routes that are not repository
// routes).
func (h *Handler) authenticate(r *http.Request, rt *route) (*principal, error) {
	if p := principalOf(r.Context()); p != nil {
		return p, nil
	}
	hdr := r.Header.Get("Authorization")
	scheme, cred, _ := strings.Cut(hdr, " ")
	switch {
	case hdr == "":
		return h.lookup(r.Context(), auth.Principal{}, false)
	case strings.EqualFold(scheme, "Basic") && h.auth.Mode == AuthBasic:
		user, pass, ok := r.BasicAuth()
		if !ok {
			return nil, h.unauthorized(r, nil, "invalid_request", "malformed Basic credentials")
		}
		if user == "" && pass == "" {
			// No credentials at all, as containers/image (skopeo, podman,
			// buildah) sends them when it has none: anonymous. No login
			// can have an empty name, so this grants nothing more.
			return h.lookup(r.Context(), auth.Principal{}, false)
		}
		return h.login(r, user, pass)
	case strings.EqualFold(scheme, "Bearer") && h.auth.Mode == AuthToken:
		return h.bearer(r, strings.TrimSpace(cred), rt)
	}
	return nil, h.unauthorized(r, nil, "invalid_request", fmt.Sprintf("this registry takes %s credentials", h.schemeName()))
}

func (h *Handler) schemeName() string {
	if h.auth.Mode == AuthToken {
		return "Bearer"
	}
	return "Basic"
}

// lookup reads the principal's user, token and grants, and checks that
// they still stand (see resolve).
func (h *Handler) lookup(ctx context.Context, p auth.Principal, authenticated bool) (*principal, error) {
	info, err := h.db.AuthLookup(ctx, p.Name, p.TokenID)
	if err != nil {
		return nil, err
	}
	return h.resolve(p, info, authenticated)
}

// resolve builds the principal p from what the database holds, checking
// that it still stands: the user exists; the API token, if any, is the
// user's, neither revoked nor expired.
func (h *Handler) resolve(p auth.Principal, info db.AuthInfo, authenticated bool) (*principal, error) {
	out := &principal{Principal: p, authenticated: authenticated}
	if p.Name != "" {
		if info.User == nil {
			return nil, errCredentials
		}
		out.Admin, out.Groups = info.User.Admin, info.User.Groups
	}
	if p.TokenID != "" {
		t := info.Token
		if t == nil || t.User != p.Name || t.RevokedAt != nil || (t.ExpiresAt != nil && !time.Now().Before(*t.ExpiresAt)) {
			return nil, errCredentials
		}
		if len(t.Scopes) > 0 {
			out.TokenScopes = make([]auth.Scope, 0, len(t.Scopes))
			for _, s := range t.Scopes {
				sc, err := auth.ParseGrantScope(s)
				if err != nil {
					return nil, fmt.Errorf("stored scope %q of token %s: %w", s, t.ID, err)
				}
				out.TokenScopes = append(out.TokenScopes, sc)
			}
		}
		h.tokenUses.record(t.ID)
	}
	out.grants = make([]auth.Grant, len(info.Grants))
	for i, g := range info.Grants {
		out.grants[i] = auth.Grant{Subject: g.Subject, RepoGlob: g.RepoGlob, Actions: g.Actions}
	}
	return out, nil
}

// errCredentials is any failed login: unknown user, wrong password, a
// token revoked, expired or another user's. One error for all, so that an
// answer never tells which users exist.
var errCredentials = errors.New("invalid username or password")

// login checks a user name with a password, or with an API token given as
// the password, in one lookup. Repeated failures are slowed down per user
// and per address (see auth.Throttle) — but not credentials this replica
// already knows to be good (an API token's secret, or a password whose
// bcrypt check passed against the stored hash): a guesser never holds
// them, and with Basic authentication every request is a login, so
// throttling them would let anyone slow down every user behind the same
// address with a few bad guesses.
func (h *Handler) login(r *http.Request, user, pass string) (*principal, error) {
	ctx, addr := r.Context(), remoteHost(r)
	id, secret, isToken := auth.ParseAPIToken(pass)
	if !isToken {
		id = ""
	}
	var info db.AuthInfo
	validName := auth.ValidName(user) == nil
	if validName {
		var err error
		if info, err = h.db.AuthLookup(ctx, user, id); err != nil {
			return nil, err
		}
	}
	good := validName && (isToken && info.Token != nil && auth.SecretMatches(info.Token.SecretHash, secret) ||
		!isToken && info.User != nil && h.passwords.known(user, pass, info.User.PasswordHash))
	if !good {
		if d := h.throttle.Delay(user, addr, time.Now()); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		switch {
		case isToken:
		case !validName || info.User == nil:
			auth.DummyPasswordCheck(pass) // an unknown user costs what a known one does
		default:
			good = h.passwords.check(user, pass, info.User.PasswordHash)
		}
	}
	var p *principal
	err := errCredentials
	if good {
		p, err = h.resolve(auth.Principal{Name: user, TokenID: id}, info, true)
	}
	if errors.Is(err, errCredentials) {
		h.throttle.Failed(user, addr, time.Now())
		h.log.InfoContext(ctx, "failed login", "user", clip(user), "remote", addr)
		return nil, h.unauthorized(r, nil, "", errCredentials.Error())
	}
	if err != nil {
		return nil, err
	}
	h.throttle.Succeeded(user, addr, time.Now())
	return p, nil
}

// bearer verifies a token. A token of Berth's own is checked against the
// database as well: its user must still exist, the API token it was
// issued for must still stand, and it grants no more than the grants
// allow now. An external token server's token is taken at its word, as
// the reference registry does.
func (h *Handler) bearer(r *http.Request, raw string, rt *route) (*principal, error) {
	tok, err := h.auth.Verifier.Verify(raw, time.Now())
	if errors.Is(err, auth.ErrTokenExpired) && tok.Own && h.auth.UploadGrace > 0 &&
		rt != nil && rt.kind == routeUpload && rt.ref != "" && time.Since(tok.ExpiresAt) < h.auth.UploadGrace {
		// Finishing an upload: allowed if the session is the subject's
		// (checked with the session) and the grants still allow it.
		err = nil
	}
	if err != nil {
		h.log.DebugContext(r.Context(), "token refused", "err", err)
		return nil, h.unauthorized(r, nil, "invalid_token", "invalid or expired token: get a new one from the token service")
	}
	if !tok.Own {
		return &principal{Principal: auth.Principal{Name: tok.Subject}, authenticated: tok.Subject != "",
			access: tok.Access, bearer: true}, nil
	}
	p, err := h.lookup(r.Context(), auth.Principal{Name: tok.Subject, TokenID: tok.TokenID}, tok.Subject != "")
	if errors.Is(err, errCredentials) {
		return nil, h.unauthorized(r, nil, "invalid_token", "the token's user or API token no longer exists or was revoked")
	}
	if err != nil {
		return nil, err
	}
	p.access = auth.Authorize(p.Principal, p.grants, tok.Access)
	p.bearer = true
	return p, nil
}

// allowedActions is what p may do on repository repo.
func (p *principal) allowedActions(repo string) []string {
	if p.bearer {
		var out []string
		for _, sc := range p.access {
			if sc.Type == auth.TypeRepository && sc.Name == repo {
				out = append(out, sc.Actions...)
			}
		}
		return out
	}
	return auth.Allowed(p.Principal, p.grants, repo)
}

func (p *principal) may(need auth.Scope) bool {
	have := p.allowedActions(need.Name)
	for _, a := range need.Actions {
		if !slices.Contains(have, a) {
			return false
		}
	}
	return true
}

// actorOn is actor for a change of repository repo's tags: with whether
// the principal holds delete there, which moving or untagging a protected
// tag needs (see db.TagRuleError). That is the principal's right, as its
// grants give it (narrowed by an API token's scopes), not only what the
// request's Bearer token carries: docker push asks for pull,push only,
// and a user who may delete may move a protected tag with it. An
// external token server's token is taken at its word.
func (h *Handler) actorOn(r *http.Request, repo string) db.Actor {
	a := h.actor(r)
	if !h.auth.enabled() {
		a.MayDelete = true
		return a
	}
	p := principalOf(r.Context())
	if p == nil {
		return a
	}
	var have []string
	if p.grants != nil {
		have = auth.Allowed(p.Principal, p.grants, repo)
	} else {
		have = p.allowedActions(repo)
	}
	a.MayDelete = slices.Contains(have, auth.Delete)
	return a
}

// authorizeRequest authenticates r, checks that it may have need, and
// returns the request with its principal in the context (for the audit
// trail and upload ownership). With authentication off it lets everything
// through.
func (h *Handler) authorizeRequest(r *http.Request, rt *route, need *auth.Scope) (*http.Request, error) {
	if !h.auth.enabled() {
		return r, nil
	}
	p, err := h.authenticate(r, rt)
	if err != nil {
		return r, err
	}
	r = r.WithContext(context.WithValue(r.Context(), principalKey{}, p))
	if need == nil {
		// The version check: any caller the registry knows, or, when
		// nobody is logged in, the challenge that tells clients how to.
		if !p.authenticated && !p.bearer {
			return r, h.unauthorized(r, nil, "", "authentication required")
		}
		return r, nil
	}
	if p.may(*need) {
		return r, nil
	}
	switch {
	case h.auth.Mode == AuthToken && p.bearer:
		return r, h.unauthorized(r, need, "insufficient_scope", "authentication required")
	case h.auth.Mode == AuthToken, !p.authenticated:
		return r, h.unauthorized(r, need, "", "authentication required")
	}
	return r, &authError{status: http.StatusForbidden, need: need, message: "requested access to the resource is denied"}
}

// unauthorized is a 401 with the challenge of the mode: Basic with the
// realm, or Bearer with the token service, the service, the scope needed
// and the token spec's error.
func (h *Handler) unauthorized(r *http.Request, need *auth.Scope, tokenError, message string) error {
	var challenge string
	if h.auth.Mode == AuthToken {
		challenge = fmt.Sprintf(`Bearer realm=%q,service=%q`, h.realm(r), h.auth.Service)
		if need != nil {
			scope := need.String()
			if from := mountSource(r); from != "" && need.Name != from {
				// A mount reads its source too: ask for both, as the
				// reference registry does, so that the token the client
				// comes back with lets the mount happen.
				scope += " " + auth.Scope{Type: auth.TypeRepository, Name: from, Actions: []string{auth.Pull}}.String()
			}
			challenge += fmt.Sprintf(`,scope=%q`, scope)
		}
		if tokenError != "" {
			challenge += fmt.Sprintf(`,error=%q`, tokenError)
		}
	} else {
		challenge = fmt.Sprintf(`Basic realm=%q`, h.realm(r))
	}
	return &authError{status: http.StatusUnauthorized, challenge: challenge, need: need, message: message}
}

// mountSource is the repository a cross-repository mount request reads
// from, or "" when r is not one.
func mountSource(r *http.Request) string {
	if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/blobs/uploads/") {
		return ""
	}
	q := r.URL.Query()
	if from := q.Get("from"); q.Has("mount") && validName(from) {
		return from
	}
	return ""
}

// realm is the Basic realm, or the token service's URL.
func (h *Handler) realm(r *http.Request) string {
	if h.auth.Realm != "" {
		return h.auth.Realm
	}
	if h.auth.Mode == AuthBasic {
		return "berth"
	}
	return h.externalURL(r) + "/auth/token"
}

// externalURL is the URL clients reach Berth at.
func (h *Handler) externalURL(r *http.Request) string {
	if h.auth.ExternalURL != "" {
		return strings.TrimSuffix(h.auth.ExternalURL, "/")
	}
	scheme := "http"
	if r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func remoteHost(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// passwordCache remembers the passwords that passed a bcrypt check, keyed
// by a hash of the user and password, with the stored hash they matched.
// Docker sends Basic credentials with every request, and bcrypt costs
// tens of milliseconds by design; with the cache a request costs one
// SHA-256 instead, and a changed password or deleted user still fails at
// once, because the stored hash is read afresh for every request and must
// be the one remembered.
type passwordCache struct {
	mu sync.Mutex
	m  map[[32]byte]string
}

// maxPasswordCache bounds the cache: past it, it starts afresh.
const maxPasswordCache = 10000

// known reports whether pass passed a bcrypt check against hash before.
func (c *passwordCache) known(user, pass, hash string) bool {
	key := sha256.Sum256([]byte(user + "\x00" + pass))
	c.mu.Lock()
	defer c.mu.Unlock()
	cached, ok := c.m[key]
	return ok && cached == hash
}

// check reports whether pass matches hash, with bcrypt unless known.
func (c *passwordCache) check(user, pass, hash string) bool {
	if c.known(user, pass, hash) {
		return true
	}
	key := sha256.Sum256([]byte(user + "\x00" + pass))
	if !auth.CheckPassword(hash, pass) {
		return false
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxPasswordCache {
		c.m = make(map[[32]byte]string)
	}
	c.m[key] = hash
	c.mu.Unlock()
	return true
}

// catalogPage is a page of the catalog as r's principal may see it: every
// repository for an admin (or a token granting registry:catalog:*), else
// only those it may pull, still in name order and paginated.
func (h *Handler) catalogPage(r *http.Request, last string, n int) ([]string, bool, error) {
	if !h.auth.enabled() {
		return h.db.RepositoryList(r.Context(), last, n)
	}
	p, err := h.authenticate(r, nil)
	if err != nil {
		return nil, false, err
	}
	if !p.authenticated && !p.bearer {
		// Nobody logged in: the challenge, so that a client with
		// credentials uses them (and, in token mode, asks for the
		// catalog scope); a token of anonymous sees what anonymous may.
		need := auth.CatalogScope()
		return nil, false, h.unauthorized(r, &need, "", "authentication required")
	}
	if p.bearer && auth.Covers(p.access, auth.CatalogScope()) ||
		!p.bearer && p.Admin && (p.TokenScopes == nil || auth.Covers(p.TokenScopes, auth.CatalogScope())) {
		return h.db.RepositoryList(r.Context(), last, n)
	}
	if p.grants == nil {
		// An external token: the repositories its access names.
		return accessPage(p, last, n), false, nil
	}
	patterns := grantPatterns(p)
	if p.TokenScopes == nil {
		return h.db.RepositoryListVisible(r.Context(), last, n, patterns)
	}
	// An API token with scopes sees less than its owner: filter further,
	// reading on until the page is full.
	var names []string
	for {
		batch, more, err := h.db.RepositoryListVisible(r.Context(), last, n, patterns)
		if err != nil {
			return nil, false, err
		}
		for _, name := range batch {
			if p.may(auth.Scope{Type: auth.TypeRepository, Name: name, Actions: []string{auth.Pull}}) {
				names = append(names, name)
			}
			if len(names) == n {
				return names, more || name != batch[len(batch)-1], nil
			}
		}
		if !more || len(batch) == 0 {
			return nonNilStrings(names), false, nil
		}
		last = batch[len(batch)-1]
	}
}

// grantPatterns are p's grants as the listings of visible repositories
// match them in the database.
func grantPatterns(p *principal) []db.GrantPattern {
	patterns := make([]db.GrantPattern, len(p.grants))
	for i, g := range p.grants {
		patterns[i] = db.GrantPattern{Subject: g.Subject, Regex: auth.GlobRegex(g.RepoGlob), Length: len(g.RepoGlob),
			Pull: slices.Contains(g.Actions, auth.Pull)}
	}
	return patterns
}

// accessPage is a catalog page of the repositories an external token's
// access lets its bearer pull.
func accessPage(p *principal, last string, n int) []string {
	var names []string
	for _, sc := range p.access {
		if sc.Type == auth.TypeRepository && sc.Name > last && slices.Contains(sc.Actions, auth.Pull) && !slices.Contains(names, sc.Name) {
			names = append(names, sc.Name)
		}
	}
	slices.Sort(names)
	if len(names) > n {
		names = names[:n]
	}
	return nonNilStrings(names)
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
