package auth

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseScope(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    Scope
		wantErr string
	}{
		{in: "repository:foo/bar:pull", want: Scope{"repository", "foo/bar", []string{"pull"}}},
		{in: "repository:foo:push,pull", want: Scope{"repository", "foo", []string{"pull", "push"}}},
		{in: "repository:foo:pull,pull,push,pull", want: Scope{"repository", "foo", []string{"pull", "push"}}},
		{in: "repository:foo:*", want: Scope{"repository", "foo", []string{"delete", "pull", "push"}}},
		{in: "repository:foo:pull,*", want: Scope{"repository", "foo", []string{"delete", "pull", "push"}}},
		// A name with host:port: the type ends at the first ':', the actions start after the last.
		{in: "repository:localhost:5000/foo/bar:pull,push", want: Scope{"repository", "localhost:5000/foo/bar", []string{"pull", "push"}}},
		{in: "repository:a:b:c:pull", want: Scope{"repository", "a:b:c", []string{"pull"}}},
		{in: "registry:catalog:*", want: Scope{"registry", "catalog", []string{"*"}}},
		// Unknown types and actions parse; Authorize drops them.
		{in: "plugin:foo:pull", want: Scope{"plugin", "foo", []string{"pull"}}},
		{in: "repository(plugin):foo:pull", want: Scope{"repository(plugin)", "foo", []string{"pull"}}},
		{in: "repository:foo:pull,mount", want: Scope{"repository", "foo", []string{"mount", "pull"}}},
		{in: "", wantErr: "want type:name:actions"},
		{in: "repository", wantErr: "want type:name:actions"},
		{in: "repository:foo", wantErr: "want type:name:actions"},
		{in: ":foo:pull", wantErr: "empty type"},
		{in: "repository::pull", wantErr: "empty name"},
		{in: "repository:foo:", wantErr: "empty action"},
		{in: "repository:foo:pull,", wantErr: "empty action"},
		{in: "repository:foo:pull,,push", wantErr: "empty action"},
		{in: "repository:foo bar:pull", wantErr: "white space"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseScope(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseScope(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseScope(%q) = %#v, %v; want %#v", tt.in, got, err, tt.want)
			}
			// String gives back what ParseScope reads.
			again, err := ParseScope(got.String())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("ParseScope(%q.String() = %q) = %#v, %v", tt.in, got.String(), again, err)
			}
		})
	}
}

func TestParseScopes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      []string
		want    []Scope
		wantErr bool
	}{
		{name: "none", in: nil, want: nil},
		{name: "empty value", in: []string{""}, want: nil},
		{name: "one per value", in: []string{"repository:a:pull", "repository:b:push"},
			want: []Scope{{"repository", "a", []string{"pull"}}, {"repository", "b", []string{"push"}}}},
		{name: "several in one value (OAuth2 POST form)", in: []string{"repository:a:pull repository:localhost:5000/b:push  registry:catalog:*"},
			want: []Scope{{"repository", "a", []string{"pull"}}, {"repository", "localhost:5000/b", []string{"push"}}, {"registry", "catalog", []string{"*"}}}},
		{name: "duplicates merge", in: []string{"repository:a:pull", "repository:b:pull repository:a:push,pull", "repository:a:delete"},
			want: []Scope{{"repository", "a", []string{"delete", "pull", "push"}}, {"repository", "b", []string{"pull"}}}},
		{name: "same name, other type, kept apart", in: []string{"repository:a:pull plugin:a:pull"},
			want: []Scope{{"repository", "a", []string{"pull"}}, {"plugin", "a", []string{"pull"}}}},
		{name: "one bad scope fails all", in: []string{"repository:a:pull", "repository:b"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseScopes(tt.in)
			if (err != nil) != tt.wantErr || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseScopes(%q) = %#v, %v; want %#v (error: %v)", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseScopesDoesNotAlias(t *testing.T) {
	t.Parallel()
	got, err := ParseScopes([]string{"repository:a:pull", "repository:a:push"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"pull", "push"}; !reflect.DeepEqual(got[0].Actions, want) {
		t.Fatalf("got %v, want %v", got[0].Actions, want)
	}
}

func TestParseActions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{in: "pull", want: []string{"pull"}},
		{in: "push,pull", want: []string{"pull", "push"}},
		{in: " pull , push ,delete", want: []string{"delete", "pull", "push"}},
		{in: "*", want: []string{"delete", "pull", "push"}},
		{in: "pull,*,pull", want: []string{"delete", "pull", "push"}},
		{in: "pull,pull", want: []string{"pull"}},
		{in: "", wantErr: "empty action"},
		{in: "pull,", wantErr: "empty action"},
		{in: "pull,mount", wantErr: `unknown action "mount"`},
		{in: "Pull", wantErr: `unknown action "Pull"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseActions(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseActions(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseActions(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseGrantScope(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    Scope
		wantErr string
	}{
		{in: "repository:team-a/**:pull,push", want: Scope{"repository", "team-a/**", []string{"pull", "push"}}},
		{in: "repository:*:*", want: Scope{"repository", "*", []string{"delete", "pull", "push"}}},
		{in: "repository:team-a/**:pull,mount", wantErr: `unknown action "mount"`},
		{in: "registry:catalog:*", want: Scope{"registry", "catalog", []string{"*"}}},
		{in: "registry:catalog:pull", wantErr: "want repository:GLOB:ACTIONS or registry:catalog:*"},
		{in: "plugin:a:pull", wantErr: "want repository:GLOB:ACTIONS or registry:catalog:*"},
		{in: "repository:localhost:5000/a:pull", wantErr: "not allowed"},
		{in: "repository:Team:pull", wantErr: "not allowed"},
		{in: "repository:a", wantErr: "want type:name:actions"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseGrantScope(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseGrantScope(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseGrantScope(%q) = %#v, %v; want %#v", tt.in, got, err, tt.want)
			}
		})
	}
}
