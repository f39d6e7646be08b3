package auth

import (
	"fmt"
	"slices"
	"strings"
)

// The actions of a repository scope.
const (
	Pull   = "pull"
	Push   = "push"
	Delete = "delete"
)

// allActions is what "*" stands for in a repository scope, sorted.
var allActions = []string{Delete, Pull, Push}

// Scope types Berth knows. Any other type parses, so that a client asking
// for something Berth does not know gets a token without it instead of an
// error, but it is never granted.
const (
	TypeRepository = "repository"
	TypeRegistry   = "registry"
	// CatalogName and CatalogAction make the one registry scope,
	// "registry:catalog:*", which lists every repository.
	CatalogName   = "catalog"
	CatalogAction = "*"
)

// CatalogScope is "registry:catalog:*".
func CatalogScope() Scope {
	return Scope{Type: TypeRegistry, Name: CatalogName, Actions: []string{CatalogAction}}
}

// Scope is one scope of the Docker token protocol:
// "repository:<name>:<actions>" or "registry:catalog:*".
type Scope struct {
	Type, Name string
	Actions    []string // sorted, deduplicated
}

// ParseScope parses one scope. The name may contain ':' (a repository
// name can start with host:port), so the type ends at the first ':' and the
// actions start after the last one. Unknown types and, in repository
// scopes, unknown actions parse and are kept, so that a request asking for
// more than Berth knows is down-scoped rather than refused; Authorize never
// grants them. In a repository scope "*" stands for pull, push and delete.
// Empty parts are errors.
func ParseScope(s string) (Scope, error) {
	first := strings.IndexByte(s, ':')
	last := strings.LastIndexByte(s, ':')
	if first < 0 || first == last {
		return Scope{}, fmt.Errorf("scope %q: want type:name:actions", s)
	}
	sc := Scope{Type: s[:first], Name: s[first+1 : last]}
	switch {
	case sc.Type == "":
		return Scope{}, fmt.Errorf("scope %q: empty type", s)
	case sc.Name == "":
		return Scope{}, fmt.Errorf("scope %q: empty name", s)
	case strings.ContainsFunc(s, isSpace):
		return Scope{}, fmt.Errorf("scope %q: contains white space", s)
	}
	for a := range strings.SplitSeq(s[last+1:], ",") {
		if a == "" {
			return Scope{}, fmt.Errorf("scope %q: empty action", s)
		}
		if a == "*" && sc.Type == TypeRepository {
			sc.Actions = append(sc.Actions, allActions...)
			continue
		}
		sc.Actions = append(sc.Actions, a)
	}
	sc.Actions = sortedSet(sc.Actions)
	return sc, nil
}

func isSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }

// ParseScopes parses the scope parameters of a token request. Each value may
// hold several scopes separated by spaces, as the OAuth2 POST form sends
// them. Scopes of the same type and name are merged into one holding the
// union of their actions; the result keeps the order of first appearance.
func ParseScopes(values []string) ([]Scope, error) {
	var out []Scope
	for _, v := range values {
		for f := range strings.FieldsSeq(v) {
			sc, err := ParseScope(f)
			if err != nil {
				return nil, err
			}
			out = mergeScope(out, sc)
		}
	}
	return out, nil
}

// mergeScope adds sc to list, uniting it with a scope of the same type and
// name if there is one.
func mergeScope(list []Scope, sc Scope) []Scope {
	for i := range list {
		if list[i].Type == sc.Type && list[i].Name == sc.Name {
			list[i].Actions = sortedSet(append(slices.Clone(list[i].Actions), sc.Actions...))
			return list
		}
	}
	return append(list, sc)
}

// String returns the scope in the form ParseScope reads.
func (s Scope) String() string {
	return s.Type + ":" + s.Name + ":" + strings.Join(s.Actions, ",")
}

// ParseActions parses a comma-separated list of repository actions, as
// given to "berth grant": "pull,push,delete", spaces around each trimmed,
// "*" for all three. An unknown or empty action is an error naming it. The
// result is sorted and deduplicated.
func ParseActions(s string) ([]string, error) {
	var out []string
	for a := range strings.SplitSeq(s, ",") {
		a = strings.TrimSpace(a)
		switch a {
		case Pull, Push, Delete:
			out = append(out, a)
		case "*":
			out = append(out, allActions...)
		case "":
			return nil, fmt.Errorf("actions %q: empty action (want pull, push, delete or *)", s)
		default:
			return nil, fmt.Errorf("unknown action %q (want pull, push, delete or *)", a)
		}
	}
	return sortedSet(out), nil
}

// ParseGrantScope parses a scope of an API token as given to
// "berth token create --scope": strictly "repository:GLOB:ACTIONS", with a
// valid glob and known actions, or "registry:catalog:*" (which only an
// admin's token can use). Unlike a token request, a mistake here is
// reported to the operator, not quietly dropped.
func ParseGrantScope(s string) (Scope, error) {
	sc, err := ParseScope(s)
	if err != nil {
		return Scope{}, err
	}
	if sc.Type == TypeRegistry && sc.Name == CatalogName && slices.Equal(sc.Actions, []string{CatalogAction}) {
		return sc, nil
	}
	if sc.Type != TypeRepository {
		return Scope{}, fmt.Errorf("scope %q: want repository:GLOB:ACTIONS or registry:catalog:*", s)
	}
	if err := ValidGlob(sc.Name); err != nil {
		return Scope{}, fmt.Errorf("scope %q: %w", s, err)
	}
	if sc.Actions, err = ParseActions(s[strings.LastIndexByte(s, ':')+1:]); err != nil {
		return Scope{}, fmt.Errorf("scope %q: %w", s, err)
	}
	return sc, nil
}

// sortedSet sorts and deduplicates in place.
func sortedSet(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}
