package auth

import (
	"slices"
)

// Grant gives a subject actions on the repositories its glob matches.
type Grant struct {
	Subject  string // a user name, "group:<name>", "anonymous" or "authenticated"
	RepoGlob string
	Actions  []string // as ParseActions returns them; anything else (even "*") grants nothing
}

// Principal is who a request acts for, as the handlers found out from its
// credentials.
type Principal struct {
	Name   string // user name; "" when anonymous
	Admin  bool
	Groups []string
	// TokenID is the API token the request authenticated with, if any.
	TokenID string
	// TokenScopes is nil when the principal is not restricted by a token;
	// else the API token's scopes ("repository:GLOB:ACTIONS", the globs as
	// names, and possibly "registry:catalog:*"). An empty, non-nil slice
	// allows nothing.
	TokenScopes []Scope
}

// Anonymous reports whether no user is signed in.
func (p Principal) Anonymous() bool { return p.Name == "" }

// Subjects returns the grant subjects p acts as: its user name, each of
// its groups, "authenticated", and always "anonymous". An anonymous
// principal is only "anonymous", whatever Groups says.
func (p Principal) Subjects() []string {
	if p.Anonymous() {
		return []string{SubjectAnonymous}
	}
	s := make([]string, 0, len(p.Groups)+3)
	s = append(s, p.Name)
	for _, g := range p.Groups {
		s = append(s, GroupPrefix+g)
	}
	return append(s, SubjectAuthenticated, SubjectAnonymous)
}

// Allowed returns the actions p may take on the repository repo, sorted.
//
// For each of p's subjects, among that subject's grants whose glob matches
// repo, the longest glob (in bytes) wins, and grants with globs of that
// same length unite. So with "group:devs team-a/** pull,push" and
// "group:devs team-a/frozen/** pull", devs may only pull from
// team-a/frozen/app. Then the subjects' actions unite: if alice, one of
// the devs, has "alice team-a/** push" she may push to team-a/frozen/app,
// because what a user, a group, "authenticated" or "anonymous" is given is
// never taken away by another subject's grant. Admins have every action.
// Finally an API token restricts the result to the union of its scopes
// whose glob matches repo, so that a token never grants more than its
// owner has now, nor more than it was made for.
func Allowed(p Principal, grants []Grant, repo string) []string {
	var actions []string
	if p.Admin {
		actions = slices.Clone(allActions)
	} else {
		for _, subj := range p.Subjects() {
			actions = append(actions, subjectActions(subj, grants, repo)...)
		}
	}
	if p.TokenScopes != nil {
		var tok []string
		for _, sc := range p.TokenScopes {
			if sc.Type == TypeRepository && MatchGlob(sc.Name, repo) {
				tok = append(tok, sc.Actions...)
			}
		}
		actions = intersect(actions, tok)
	}
	return intersect(sortedSet(actions), allActions)
}

// subjectActions returns the actions of subj's longest-glob grants on repo.
func subjectActions(subj string, grants []Grant, repo string) []string {
	var actions []string
	longest := -1
	for _, g := range grants {
		if g.Subject != subj || len(g.RepoGlob) < longest || !MatchGlob(g.RepoGlob, repo) {
			continue
		}
		if len(g.RepoGlob) > longest {
			longest, actions = len(g.RepoGlob), nil
		}
		actions = append(actions, g.Actions...)
	}
	return actions
}

// Authorize down-scopes a token request: it returns what of requested p
// may have, never refusing, as the Docker token protocol expects (the
// registry then answers 401 or 403 to what the token lacks).
//
//   - A repository scope is cut to Allowed ∩ its actions.
//   - "registry:catalog:*" is kept only for admins; an admin's API token
//     must also list "registry:catalog:*" among its scopes, because the
//     catalog shows every repository name, which a token made for a few
//     repositories should not reveal.
//   - Scopes of unknown types, unknown actions and scopes left with no
//     action are dropped.
//
// The result keeps the order of requested, with duplicates merged.
func Authorize(p Principal, grants []Grant, requested []Scope) []Scope {
	var out []Scope
	for _, sc := range requested {
		var actions []string
		switch sc.Type {
		case TypeRepository:
			actions = intersect(sortedSet(slices.Clone(sc.Actions)), Allowed(p, grants, sc.Name))
		case TypeRegistry:
			if sc.Name == CatalogName && catalogAllowed(p) {
				actions = intersect(sortedSet(slices.Clone(sc.Actions)), []string{CatalogAction})
			}
		}
		if len(actions) > 0 {
			out = mergeScope(out, Scope{Type: sc.Type, Name: sc.Name, Actions: actions})
		}
	}
	return out
}

func catalogAllowed(p Principal) bool {
	if !p.Admin {
		return false
	}
	if p.TokenScopes == nil {
		return true
	}
	return Covers(p.TokenScopes, CatalogScope())
}

// Covers reports whether granted allows need: every action of need is in
// the union of the granted scopes of the same type and name (compared
// exactly: names here are repository names, not globs). A need with no
// actions is not covered, so that a caller's mistake fails closed.
func Covers(granted []Scope, need Scope) bool {
	if len(need.Actions) == 0 {
		return false
	}
	var have []string
	for _, g := range granted {
		if g.Type == need.Type && g.Name == need.Name {
			have = append(have, g.Actions...)
		}
	}
	for _, a := range need.Actions {
		if !slices.Contains(have, a) {
			return false
		}
	}
	return true
}

// intersect returns the elements of the sorted set a that are in b.
func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
