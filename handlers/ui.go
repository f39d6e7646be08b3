package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/ui"
)

// The web interface (package ui) is served under /ui by the API's own
// handler, so that what it shows and changes passes through the same
// authentication, rights and error table as /v2. uiBackend is what it
// needs of the API.

// uiSessionAudience is the issuer and audience of the web interface's
// session tokens: neither the API nor the token service accepts them, and
// the interface accepts no API token as a session.
const uiSessionAudience = "berth-ui"

type uiBackend struct {
	h        *Handler
	sessions *auth.Issuer
	verifier *auth.Verifier
}

// newUI builds the web interface. Sessions are signed with keys (the
// registry's signing keys, shared by every replica); without keys, with a
// key made now, so that logins last as long as this process.
func newUI(h *Handler, keys []auth.Key) (*ui.Server, error) {
	b := &uiBackend{h: h}
	if h.auth.enabled() {
		if len(keys) == 0 {
			k, err := auth.NewKey()
			if err != nil {
				return nil, fmt.Errorf("web interface: session key: %w", err)
			}
			keys = []auth.Key{k}
		}
		b.sessions = &auth.Issuer{Key: keys[0], Name: uiSessionAudience, Service: uiSessionAudience, TTL: ui.DefaultSessionTTL}
		var err error
		b.verifier, err = auth.NewVerifier(auth.VerifierConfig{Issuer: uiSessionAudience, Service: uiSessionAudience, Own: keys})
		if err != nil {
			return nil, fmt.Errorf("web interface: session verifier: %w", err)
		}
	}
	var blobs = h.blobs
	return ui.New(ui.Config{DB: h.db, Blobs: blobs, Backend: b, Logger: h.log, SessionTTL: ui.DefaultSessionTTL}), nil
}

// serveUI is the interface's route, named for the metrics.
func serveUI(u http.Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		setRoute(r.Context(), "ui")
		u.ServeHTTP(w, r)
	}
}

func (b *uiBackend) AuthEnabled() bool { return b.h.auth.enabled() }

// Login is the API's login (throttled, password or API token), and a
// session token naming the user and the API token used, if any.
func (b *uiBackend) Login(r *http.Request, user, pass string) (string, error) {
	p, err := b.h.login(r, user, pass)
	if err != nil {
		return "", err
	}
	session, _, err := b.sessions.Issue(p.Name, nil, p.TokenID, time.Now())
	return session, err
}

// Session verifies the session token and reads the user, its API token
// and grants afresh, as every API request does: a user deleted or a token
// revoked ends its sessions at once.
func (b *uiBackend) Session(r *http.Request, session string) (*http.Request, ui.Viewer, error) {
	if !b.h.auth.enabled() {
		return r, ui.Viewer{}, nil
	}
	var (
		p   *principal
		err error
	)
	if session == "" {
		p, err = b.h.lookup(r.Context(), auth.Principal{}, false)
	} else {
		tok, verr := b.verifier.Verify(session, time.Now())
		if verr != nil || !tok.Own || tok.Subject == "" {
			return r, ui.Viewer{}, ui.ErrSession
		}
		p, err = b.h.lookup(r.Context(), auth.Principal{Name: tok.Subject, TokenID: tok.TokenID}, true)
	}
	if errors.Is(err, errCredentials) {
		return r, ui.Viewer{}, ui.ErrSession
	}
	if err != nil {
		return r, ui.Viewer{}, err
	}
	r = r.WithContext(context.WithValue(r.Context(), principalKey{}, p))
	return r, ui.Viewer{Name: p.Name, WholeRegistry: wholeRegistry(p)}, nil
}

// wholeRegistry is the catalog's rule (catalogPage) for a principal that
// logged in with a password or an API token: an admin sees every
// repository, unless the API token's scopes leave out registry:catalog:*.
// The interface's repositories and storage pages follow it, so that a
// scoped token shows there no more than the catalog would.
func wholeRegistry(p *principal) bool {
	return p != nil && p.Admin && (p.TokenScopes == nil || auth.Covers(p.TokenScopes, auth.CatalogScope()))
}

var allActions = []string{auth.Pull, auth.Push, auth.Delete}

func (b *uiBackend) Allowed(r *http.Request, repo string) []string {
	if !b.h.auth.enabled() {
		return allActions
	}
	p := principalOf(r.Context())
	if p == nil {
		return nil
	}
	return p.allowedActions(repo)
}

// Repositories is the catalog's rule: everything for an admin (whose API
// token, if any, has no scopes or registry:catalog:*), else what the
// grants let the viewer pull; an API token's scopes narrow the page
// further (which may then be short).
func (b *uiBackend) Repositories(r *http.Request, q db.RepositoryQuery) ([]db.RepositorySummary, bool, error) {
	p := principalOf(r.Context())
	if !b.h.auth.enabled() || wholeRegistry(p) {
		q.All = true
		return b.h.db.RepositorySummaries(r.Context(), q)
	}
	q.Visible = grantPatterns(p)
	list, more, err := b.h.db.RepositorySummaries(r.Context(), q)
	if err != nil || p.TokenScopes == nil {
		return list, more, err
	}
	return slices.DeleteFunc(list, func(s db.RepositorySummary) bool {
		return !p.may(auth.Scope{Type: auth.TypeRepository, Name: s.Name, Actions: []string{auth.Pull}})
	}), more, nil
}

// need refuses, in the API's words, a change the viewer may not make. The
// interface never challenges (a 401 with WWW-Authenticate would make the
// browser ask for a password): it offers its login page instead.
func (b *uiBackend) need(r *http.Request, repo string, actions ...string) error {
	if !b.h.auth.enabled() {
		return nil
	}
	p := principalOf(r.Context())
	if p == nil || !p.may(auth.Scope{Type: auth.TypeRepository, Name: repo, Actions: actions}) {
		return errorf(CodeDenied, "requested access to the resource is denied")
	}
	return nil
}

// Untag is DELETE /v2/<repo>/tags/<tag>.
func (b *uiBackend) Untag(r *http.Request, repo, tag string) error {
	if err := b.need(r, repo, auth.Delete); err != nil {
		return err
	}
	if err := b.h.refuseProxied(r, repo); err != nil {
		return err
	}
	_, err := b.h.db.TagDelete(r.Context(), repo, tag, db.TagCondition{}, b.h.actorOn(r, repo))
	return err
}

// DeleteManifest is DELETE /v2/<repo>/manifests/<digest>.
func (b *uiBackend) DeleteManifest(r *http.Request, repo, dgst string) error {
	if err := b.need(r, repo, auth.Delete); err != nil {
		return err
	}
	if err := b.h.refuseProxied(r, repo); err != nil {
		return err
	}
	return b.h.db.ManifestDelete(r.Context(), repo, dgst, b.h.actorOn(r, repo))
}

// RestoreTag is PUT /v2/<repo>/tags/<tag> with {"digest": dgst}:
// undeleting the manifest if it was deleted and not yet purged.
func (b *uiBackend) RestoreTag(r *http.Request, repo, tag, dgst string) error {
	if err := b.need(r, repo, auth.Pull, auth.Push); err != nil {
		return err
	}
	if err := b.h.refuseProxied(r, repo); err != nil {
		return err
	}
	d, err := parseDigest(dgst)
	if err != nil {
		return err
	}
	_, err = b.h.db.TagRestore(r.Context(), repo, tag, d.String(), db.TagCondition{}, b.h.actorOn(r, repo))
	if errors.Is(err, db.ErrManifestUnknown) {
		_, err = b.h.undelete(r, route{kind: routeTags, name: repo, ref: tag}, d, db.TagCondition{})
	}
	return err
}

// Explain is the API's answer to err: its status and message (0 when the
// client went away, which gets nothing).
func (b *uiBackend) Explain(r *http.Request, err error) (int, string) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		clientGone(r.Context())
		return 0, ""
	}
	e := b.h.toWire(r, err)
	return e.status(), clipTo(e.Message, maxMessage)
}
