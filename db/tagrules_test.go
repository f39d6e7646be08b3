package db_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

func addTagRule(t *testing.T, d *db.DB, repos, tags, kind string) db.TagRule {
	t.Helper()
	r, err := d.TagRuleAdd(context.Background(), db.TagRule{Repos: repos, ReposRegexp: auth.GlobRegex(repos), Tags: tags, Kind: kind})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tagTarget is where tag points, "" when it does not exist.
func tagTarget(t *testing.T, d *db.DB, repo, tag string) string {
	t.Helper()
	m, err := d.ManifestByTag(context.Background(), repo, tag, false)
	if errors.Is(err, db.ErrManifestUnknown) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return m.Digest
}

func tagHistory(t *testing.T, d *db.DB, repo, tag string) []db.TagEvent {
	t.Helper()
	h, _, err := d.TagHistory(context.Background(), repo, tag, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Every change of a tag under each kind of rule, with and without the
// delete right: what is refused leaves the tag and its history as they
// were; creating the tag and pushing its digest again always pass.
func TestTagRules(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, err := db.Open(ctx, dbtest.NewURL(t), db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	immutable := addTagRule(t, d, "imm/**", "^v", db.TagRuleImmutable)
	protected := addTagRule(t, d, "prot/*", `^release-\d+$`, db.TagRuleProtected)
	// Both apply to both/…: immutable wins, whatever the ids.
	addTagRule(t, d, "both/*", "^v", db.TagRuleProtected)
	both := addTagRule(t, d, "both/*", "v", db.TagRuleImmutable)

	type op struct {
		name string
		run  func(repo, tag string, a db.Actor) error
	}
	ops := []op{
		{"move", func(repo, tag string, a db.Actor) error {
			_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: repo, Digest: digestN, MediaType: "application/vnd.oci.image.index.v1+json",
				Payload: []byte(digestN), Tags: []string{"aaa", tag, "zzz"}}, a)
			return err
		}},
		{"untag", func(repo, tag string, a db.Actor) error {
			_, err := d.TagDelete(ctx, repo, tag, db.TagCondition{}, a)
			return err
		}},
		{"delete by digest", func(repo, tag string, a db.Actor) error {
			return d.ManifestDelete(ctx, repo, digestM, a)
		}},
		{"restore", func(repo, tag string, a db.Actor) error {
			_, err := d.TagRestore(ctx, repo, tag, digestN, db.TagCondition{}, a)
			return err
		}},
	}
	for i, tc := range []struct {
		repo      string // a format: %s is a name of the case and operation
		tag       string
		mayDelete bool
		rule      *db.TagRule // the rule that refuses; nil: allowed
	}{
		{"imm/a/%s", "v1", false, &immutable},
		{"imm/a/%s", "v1", true, &immutable},
		{"imm/a/%s", "latest", false, nil}, // tag not matched
		{"immx/%s", "v1", false, nil},      // repository not matched
		{"prot/%s", "release-12", false, &protected},
		{"prot/%s", "release-12", true, nil},
		{"prot/%s", "release-12x", false, nil},
		{"prot/a/%s", "release-12", false, nil},
		{"both/%s", "v1", true, &both},
	} {
		for _, o := range ops {
			repo := fmt.Sprintf(tc.repo, fmt.Sprintf("%s-%d", strings.ReplaceAll(o.name, " ", "-"), i))
			tag := tc.tag
			t.Run(fmt.Sprintf("%s:%s/delete=%v", repo, tag, tc.mayDelete), func(t *testing.T) {
				a := db.Actor{Name: "test", MayDelete: tc.mayDelete}
				// Creating the tag passes, and so does pushing the
				// same digest to it again.
				for range 2 {
					if _, err := d.ManifestStore(ctx, db.ManifestPut{Repository: repo, Digest: digestM,
						MediaType: "application/vnd.oci.image.index.v1+json", Payload: []byte(digestM), Tags: []string{tag}}, a); err != nil {
						t.Fatalf("create %s: %v", tag, err)
					}
				}
				pushBare(t, d, repo, digestN)
				before := tagHistory(t, d, repo, tag)
				err := o.run(repo, tag, a)
				if tc.rule == nil {
					if err != nil {
						t.Fatalf("%s: %v; want it allowed", o.name, err)
					}
					return
				}
				var re *db.TagRuleError
				if !errors.As(err, &re) || re.Rule.ID != tc.rule.ID || re.Tag != tag || re.Repository != repo {
					t.Fatalf("%s: %v; want a TagRuleError of rule %d for tag %s", o.name, err, tc.rule.ID, tag)
				}
				if o.name == "delete by digest" && re.Manifest != digestM {
					t.Errorf("refused delete names manifest %q, want %s", re.Manifest, digestM)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("tag rule %d: repos '%s', tags '%s'", tc.rule.ID, tc.rule.Repos, tc.rule.Tags)) ||
					!strings.Contains(err.Error(), "tag "+tag+" of "+repo) {
					t.Errorf("message %q does not name the tag and the rule", err)
				}
				if got := tagTarget(t, d, repo, tag); got != digestM {
					t.Errorf("tag %s points at %q after the refusal, want %s", tag, got, digestM)
				}
				if after := tagHistory(t, d, repo, tag); len(after) != len(before) {
					t.Errorf("history of %s grew from %d to %d entries", tag, len(before), len(after))
				}
				// The whole push is refused: the other tags of it too.
				if got := tagTarget(t, d, repo, "aaa"); got != "" {
					t.Errorf("tag aaa of the refused push points at %s", got)
				}
			})
		}
	}
}

func TestTagRuleAdmin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, err := db.Open(ctx, dbtest.NewURL(t), db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, bad := range []db.TagRule{
		{Repos: "a", ReposRegexp: "^a$", Tags: "(", Kind: db.TagRuleImmutable},
		{Repos: "a", ReposRegexp: "^a$", Tags: "", Kind: db.TagRuleImmutable},
		{Repos: "a", ReposRegexp: "^a$", Tags: "v", Kind: "frozen"},
		{Repos: "a", ReposRegexp: "^a$", Tags: strings.Repeat("v", 2000), Kind: db.TagRuleImmutable},
	} {
		if _, err := d.TagRuleAdd(ctx, bad); !errors.Is(err, db.ErrTagRuleInvalid) {
			t.Errorf("add %+v: %v, want ErrTagRuleInvalid", bad, err)
		}
	}
	r1 := addTagRule(t, d, "demo/**", "^v", db.TagRuleImmutable)
	r2 := addTagRule(t, d, "*", "^release$", db.TagRuleProtected)
	list, err := d.TagRuleList(ctx)
	if err != nil || len(list) != 2 || list[0].ID != r1.ID || list[1].ID != r2.ID || list[1].Kind != db.TagRuleProtected {
		t.Fatalf("list: %+v, %v", list, err)
	}
	if err := d.TagRuleDelete(ctx, r1.ID); err != nil {
		t.Fatal(err)
	}
	if err := d.TagRuleDelete(ctx, r1.ID); !errors.Is(err, db.ErrTagRuleUnknown) {
		t.Fatalf("delete again: %v", err)
	}
	// Deleted: the tag moves again.
	pushBare(t, d, "demo/app", digestM, "v1")
	pushBare(t, d, "demo/app", digestN, "v1")
	if got := tagTarget(t, d, "demo/app", "v1"); got != digestN {
		t.Fatalf("v1 at %s after the rule's delete, want %s", got, digestN)
	}
}

// immutable tags survive a racing move: two handles (two replicas), 16
// goroutines racing to create the tag with digests of their own, then to
// move it, untag it, restore it elsewhere and delete its manifest by
// digest. The first creation wins and the tag never changes after: its
// history is that one creation. A protected tag, changed by principals
// without the delete right, behaves the same.
func TestImmutableTagSurvivesRacingMoves(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{db.TagRuleImmutable, db.TagRuleProtected} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			url := dbtest.NewURL(t)
			var handles [2]*db.DB
			for i := range handles {
				d, err := db.Open(ctx, url, db.Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				handles[i] = d
			}
			const repo, tag = "race/app", "v1"
			addTagRule(t, handles[0], "race/**", "^v", kind)
			const workers, opsEach = 16, 25
			digest := func(i int) string { return fmt.Sprintf("sha256:%064x", i+1) }
			put := func(d *db.DB, dg string, a db.Actor) error {
				_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: repo, Digest: dg, MediaType: "application/vnd.oci.image.index.v1+json",
					Payload: []byte(dg), Tags: []string{tag}}, a)
				return err
			}
			var (
				wg      sync.WaitGroup
				mu      sync.Mutex
				refused int
				failed  []error
			)
			start := make(chan struct{})
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					d := handles[w%2]
					a := db.Actor{Name: fmt.Sprintf("worker-%d", w)}
					rng := rand.New(rand.NewPCG(uint64(w), 1))
					<-start
					for i := range opsEach {
						var err error
						other := digest(rng.IntN(workers))
						switch op := i % 4; {
						case i == 0 || op == 0:
							err = put(d, digest(w), a)
						case op == 1:
							_, err = d.TagDelete(ctx, repo, tag, db.TagCondition{}, a)
						case op == 2:
							_, err = d.TagRestore(ctx, repo, tag, other, db.TagCondition{}, a)
						default:
							err = d.ManifestDelete(ctx, repo, other, a)
						}
						var re *db.TagRuleError
						mu.Lock()
						switch {
						case err == nil:
						case errors.As(err, &re):
							refused++
						case errors.Is(err, db.ErrTagUnknown), errors.Is(err, db.ErrManifestUnknown),
							errors.Is(err, db.ErrRepositoryUnknown):
							// Before the tag exists, or a manifest deleted meanwhile.
						default:
							failed = append(failed, err)
						}
						mu.Unlock()
					}
				}()
			}
			close(start)
			wg.Wait()
			for _, err := range failed {
				t.Error(err)
			}
			history := tagHistory(t, handles[1], repo, tag)
			for _, h := range history {
				t.Logf("history: %s %s ← %s by %s", h.Action, h.Digest, h.OldDigest, h.Actor)
			}
			// The tag may have been untagged or moved only before it first
			// existed, which is impossible: so one entry, its creation.
			if len(history) != 1 || history[0].Action != db.ActionTagCreate {
				t.Fatalf("history of %s has %d entries, want exactly its creation", tag, len(history))
			}
			if got := tagTarget(t, handles[0], repo, tag); got != history[0].Digest {
				t.Fatalf("%s points at %s, created at %s", tag, got, history[0].Digest)
			}
			t.Logf("%d changes refused; %s created at %s", refused, tag, history[0].Digest)
			if refused == 0 {
				t.Fatal("no change was refused: the race did not happen")
			}
		})
	}
}
