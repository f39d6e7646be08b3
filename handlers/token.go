package handlers

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
)

// The built-in token service of the Docker token protocol, at /auth/token
// (token mode). A client that gets a Bearer challenge asks it for a token
// with the scopes it needs: GET with Basic credentials (or none, for an
// anonymous token) and repeated scope parameters, as docker, containerd,
// skopeo and crane do; or the OAuth2 POST form (grant_type password or
// refresh_token, space-separated scope), as docker login with a
// credential store does. What the caller may not have is dropped from the
// token (down-scoping), never refused: the registry then refuses the
// request that needs it.

// tokenResponse is the token service's answer; both spellings of the
// token, as the protocol's two generations of clients read them.
type tokenResponse struct {
	Token        string `json:"token,omitempty"`
	AccessToken  string `json:"access_token"`
	ExpiresIn    int    `json:"expires_in"`
	IssuedAt     string `json:"issued_at"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
	TokenType    string `json:"token_type,omitempty"`
}

// tokenRequest is a token request of either form.
type tokenRequest struct {
	user, password string // password: a password or an API token
	refreshToken   string
	hasCredentials bool
	scopes         []string
	service        string
	offline        bool
	clientID       string
	oauth          bool // the POST form, answered in its own shape
}

func (h *Handler) tokenService(w http.ResponseWriter, r *http.Request) error {
	setRoute(r.Context(), "token")
	req, err := parseTokenRequest(r)
	if err != nil {
		return err
	}
	if req.service != "" && req.service != h.auth.Service {
		return errorf(CodeUnsupported, "this token service serves %q, not %q", h.auth.Service, clip(req.service)).withStatus(http.StatusBadRequest)
	}
	requested, err := auth.ParseScopes(req.scopes)
	if err != nil {
		return errorf(CodeUnsupported, "%v", err).withStatus(http.StatusBadRequest)
	}
	var p *principal
	switch {
	case req.refreshToken != "":
		p, err = h.refreshLogin(r, req.refreshToken)
	case req.hasCredentials:
		p, err = h.login(r, req.user, req.password)
	default:
		p, err = h.lookup(r.Context(), auth.Principal{}, false)
	}
	if err != nil {
		var ae *authError
		if errors.As(err, &ae) {
			// The token service's refusal: no Bearer challenge (this is
			// where a client gets tokens), the Basic one instead.
			ae.challenge = `Basic realm="` + h.realm(r) + `"`
		}
		return err
	}
	granted := auth.Authorize(p.Principal, p.grants, requested)
	now := time.Now()
	token, expires, err := h.auth.Issuer.Issue(p.Name, granted, p.TokenID, now)
	if err != nil {
		return err
	}
	resp := tokenResponse{AccessToken: token, ExpiresIn: int(expires.Sub(now.Truncate(time.Second)).Seconds()),
		IssuedAt: now.UTC().Format(time.RFC3339)}
	if req.oauth {
		resp.TokenType = "Bearer"
		scopes := make([]string, len(granted))
		for i, sc := range granted {
			scopes[i] = sc.String()
		}
		resp.Scope = strings.Join(scopes, " ")
	} else {
		resp.Token = token
	}
	// A refresh token only for a password login: one for a login with an
	// API token would outlive, and could outgrow, that token's scopes; the
	// API token serves the client as well.
	if req.offline && p.authenticated && req.refreshToken == "" && p.TokenID == "" {
		if resp.RefreshToken, err = h.newRefreshToken(r.Context(), p.Name, req.clientID); err != nil {
			return err
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, r, "application/json", resp)
}

func parseTokenRequest(r *http.Request) (tokenRequest, error) {
	var req tokenRequest
	switch r.Method {
	case http.MethodGet:
		q := r.URL.Query()
		req.user, req.password, req.hasCredentials = r.BasicAuth()
		req.scopes, req.service, req.clientID = q["scope"], q.Get("service"), q.Get("client_id")
		req.offline, _ = strconv.ParseBool(q.Get("offline_token"))
	case http.MethodPost:
		r.Body = http.MaxBytesReader(nil, r.Body, maxTokenForm)
		if err := r.ParseForm(); err != nil {
			return req, errorf(CodeUnsupported, "malformed token request: %v", err).withStatus(http.StatusBadRequest)
		}
		f := r.PostForm
		req.oauth, req.service, req.clientID = true, f.Get("service"), f.Get("client_id")
		req.offline = f.Get("access_type") == "offline"
		if s := f.Get("scope"); s != "" {
			req.scopes = []string{s} // space-separated; ParseScopes splits it
		}
		switch f.Get("grant_type") {
		case "password":
			req.user, req.password, req.hasCredentials = f.Get("username"), f.Get("password"), true
		case "refresh_token":
			req.refreshToken = f.Get("refresh_token")
			if req.refreshToken == "" {
				return req, errorf(CodeUnsupported, "grant_type refresh_token needs a refresh_token").withStatus(http.StatusBadRequest)
			}
		default:
			return req, errorf(CodeUnsupported, "grant_type must be password or refresh_token, not %q", clip(f.Get("grant_type"))).withStatus(http.StatusBadRequest)
		}
	default:
		return req, errorf(CodeUnsupported, "the token service answers GET and POST").withStatus(http.StatusMethodNotAllowed)
	}
	return req, nil
}

// maxTokenForm bounds the body of a POST to the token service.
const maxTokenForm = 64 << 10

// refreshLogin authenticates with a refresh token: an API token of the
// user (see newRefreshToken), so revoking it ends the login.
func (h *Handler) refreshLogin(r *http.Request, refresh string) (*principal, error) {
	id, _, ok := auth.ParseAPIToken(refresh)
	if !ok {
		return nil, h.unauthorized(r, nil, "", "invalid refresh token")
	}
	info, err := h.db.AuthLookup(r.Context(), "", id)
	if err != nil {
		return nil, err
	}
	if info.Token == nil {
		return nil, h.unauthorized(r, nil, "", "invalid refresh token")
	}
	return h.login(r, info.Token.User, refresh)
}

// newRefreshToken makes the refresh token of an offline login: an API
// token of the user, with an expiry, listed by `berth token list` under
// the client's name.
func (h *Handler) newRefreshToken(ctx context.Context, user, clientID string) (string, error) {
	id, secret := auth.NewAPIToken()
	expires := time.Now().Add(refreshTokenTTL)
	desc := "refresh token of an offline login"
	if clientID != "" {
		desc += " by " + clip(clientID)
	}
	err := h.db.TokenCreate(ctx, db.APIToken{ID: id, User: user, SecretHash: auth.HashSecret(secret),
		Description: desc, ExpiresAt: &expires})
	if err != nil {
		return "", err
	}
	return auth.FormatAPIToken(id, secret), nil
}

// jwks publishes the public keys of Berth's tokens, for other services
// that verify them.
func (h *Handler) jwks(w http.ResponseWriter, r *http.Request) error {
	setRoute(r.Context(), "jwks")
	body, err := auth.JWKS(h.auth.Issuer.Key)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=300")
	w.Write(body)
	return nil
}

// tokenUses buffers the uses of API tokens, so that last_used_at is kept
// without a database write per request: the uses are flushed in one
// statement every tokenUseFlush. A replica killed between two flushes
// loses at most that much of its last-use times.
type tokenUses struct {
	db *db.DB
	mu sync.Mutex
	m  map[string]time.Time
}

// tokenUseFlush is how often the last use of API tokens is written.
const tokenUseFlush = 10 * time.Second

func (u *tokenUses) record(id string) {
	if u == nil {
		return
	}
	u.mu.Lock()
	if u.m == nil {
		u.m = make(map[string]time.Time)
	}
	u.m[id] = time.Now()
	u.mu.Unlock()
}

func (u *tokenUses) flush(ctx context.Context) error {
	u.mu.Lock()
	m := u.m
	u.m = nil
	u.mu.Unlock()
	if len(m) == 0 {
		return nil
	}
	return u.db.TokenTouch(ctx, m)
}
