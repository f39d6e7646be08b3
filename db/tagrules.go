package db

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
)

// Tag rules make tags immutable or protected:
//
//   - immutable: once the tag exists it points at the same manifest for
//     good. Creating it is allowed, and so is pushing the same digest to it
//     again (no change); moving it, untagging it, restoring it to another
//     digest and deleting its manifest by digest are refused.
//   - protected: only a principal with the delete right on the repository
//     (Actor.MayDelete) may move or untag it, or delete its manifest by
//     digest; retention never removes it.
//
// The check runs inside the transaction that would change the tag, after
// the tag row is locked (see tagSet, TagDelete, ManifestDelete): a check
// made before the transaction, as a request handler could make it, would
// race with a concurrent push of the same tag. The rules are read with
// the statement that follows the lock and lock nothing, so a rule applies
// to every change whose transaction reads the rules after the rule was
// committed; a change whose transaction read them before may still
// commit. A rule added while pushes run therefore holds from that point
// on, and never retroactively: a tag that a push moved before the rule's
// commit stays where the push put it.
//
// The rules are read only when an existing tag would change, so pushing
// new tags or the same digest costs no statement more; a change costs one
// statement, however many tags it touches.

// Kinds of tag rule.
const (
	TagRuleImmutable = "immutable"
	TagRuleProtected = "protected"
)

// Errors of tag rule administration.
var (
	ErrTagRuleUnknown = errors.New("tag rule not known")
	ErrTagRuleInvalid = errors.New("invalid tag rule")
)

// maxTagRegexp bounds a rule's tag expression: tags are at most 128
// characters, and an expression ten times that is already unreadable.
const maxTagRegexp = 1024

// TagRule is a rule on the tags of the repositories a glob matches.
type TagRule struct {
	ID int64
	// Repos is the repository glob, and ReposRegexp the same as an
	// anchored regular expression (auth.GlobRegex), which selects a
	// repository's rules in SQL.
	Repos       string
	ReposRegexp string
	// Tags is a Go regular expression (regexp package syntax), matched
	// anywhere in the tag's name unless anchored with ^ and $.
	Tags      string
	Kind      string // TagRuleImmutable or TagRuleProtected
	CreatedAt time.Time
}

// String names the rule for the client it refuses.
func (r TagRule) String() string {
	return fmt.Sprintf("tag rule %d: repos '%s', tags '%s'", r.ID, r.Repos, r.Tags)
}

// ValidTagRegexp checks a rule's tag expression: Go's syntax, as the
// rules are matched.
func ValidTagRegexp(expr string) error {
	if expr == "" {
		return notFound(ErrTagRuleInvalid, "empty tag expression: give a regular expression, e.g. '^v[0-9]'")
	}
	if len(expr) > maxTagRegexp {
		return notFound(ErrTagRuleInvalid, "tag expression longer than %d bytes", maxTagRegexp)
	}
	if _, err := regexp.Compile(expr); err != nil {
		return notFound(ErrTagRuleInvalid, "tag expression %q: %v", expr, err)
	}
	return nil
}

// TagRuleAdd stores rule r and returns it with its id and creation time.
// The caller has validated the glob and computed ReposRegexp; the tag
// expression and kind are checked here. The rule applies to the tag
// changes whose transactions read the rules after it commits.
func (d *DB) TagRuleAdd(ctx context.Context, r TagRule) (TagRule, error) {
	if r.Kind != TagRuleImmutable && r.Kind != TagRuleProtected {
		return TagRule{}, notFound(ErrTagRuleInvalid, "tag rule kind %q: want %s or %s", r.Kind, TagRuleImmutable, TagRuleProtected)
	}
	if r.Repos == "" || r.ReposRegexp == "" {
		return TagRule{}, notFound(ErrTagRuleInvalid, "a tag rule needs a repository glob")
	}
	if err := ValidTagRegexp(r.Tags); err != nil {
		return TagRule{}, err
	}
	err := d.q.QueryRow(ctx, `
INSERT INTO tag_rules (repos, repos_re, tags, kind) VALUES ($1, $2, $3, $4)
RETURNING id, created_at`, r.Repos, r.ReposRegexp, r.Tags, r.Kind).Scan(&r.ID, &r.CreatedAt)
	if err != nil {
		return TagRule{}, fmt.Errorf("add tag rule: %w", err)
	}
	return r, nil
}

// TagRuleList returns every tag rule, by id.
func (d *DB) TagRuleList(ctx context.Context) ([]TagRule, error) {
	rows, err := d.q.Query(ctx, `SELECT id, repos, repos_re, tags, kind, created_at FROM tag_rules ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list tag rules: %w", err)
	}
	rules, err := pgx.CollectRows(rows, scanTagRule)
	if err != nil {
		return nil, fmt.Errorf("list tag rules: %w", err)
	}
	return rules, nil
}

func scanTagRule(row pgx.CollectableRow) (TagRule, error) {
	var r TagRule
	err := row.Scan(&r.ID, &r.Repos, &r.ReposRegexp, &r.Tags, &r.Kind, &r.CreatedAt)
	return r, err
}

// TagRuleDelete removes rule id; ErrTagRuleUnknown if there is none.
func (d *DB) TagRuleDelete(ctx context.Context, id int64) error {
	tag, err := d.q.Exec(ctx, `DELETE FROM tag_rules WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete tag rule %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return notFound(ErrTagRuleUnknown, "tag rule %d does not exist; berth tag-rule list shows the rules", id)
	}
	return nil
}

// TagRuleError refuses a change of a tag that a rule covers: moving or
// untagging it or, when Manifest is set, deleting by digest the manifest
// it points at (which would remove it).
type TagRuleError struct {
	Repository string
	Tag        string
	Manifest   string // the manifest whose delete was refused, if that was the change
	Rule       TagRule
}

func (e *TagRuleError) Error() string {
	var what, why string
	if e.Rule.Kind == TagRuleImmutable {
		what, why = "immutable", "it cannot be moved or untagged"
	} else {
		what, why = "protected", fmt.Sprintf("only a principal with delete on %s may move or untag it", e.Repository)
	}
	if e.Manifest != "" {
		return fmt.Sprintf("manifest %s cannot be deleted: that would remove tag %s of %s, which is %s (%v): %s",
			e.Manifest, e.Tag, e.Repository, what, e.Rule, why)
	}
	return fmt.Sprintf("tag %s of %s is %s (%v): %s", e.Tag, e.Repository, what, e.Rule, why)
}

// tagRules are the rules of one repository, read at most once per
// transaction, when a first existing tag would change. A transaction that
// withTx runs again starts with a fresh value (make it inside fn).
type tagRules struct {
	loaded bool
	rules  []compiledTagRule // immutable rules first, then by id
}

type compiledTagRule struct {
	TagRule
	re *regexp.Regexp
}

// check refuses, with a *TagRuleError, a change of tag (moving or
// untagging it; deleting manifest by digest when manifest is set) that
// a rule forbids to actor. The caller holds the tag row's lock.
func (rs *tagRules) check(ctx context.Context, tx pgx.Tx, repo, tag, manifest string, actor Actor) error {
	if !rs.loaded {
		if err := rs.load(ctx, tx, repo); err != nil {
			return err
		}
	}
	for _, r := range rs.rules {
		if r.Kind == TagRuleProtected && actor.MayDelete {
			continue
		}
		if r.re.MatchString(tag) {
			return &TagRuleError{Repository: repo, Tag: tag, Manifest: manifest, Rule: r.TagRule}
		}
	}
	return nil
}

func (rs *tagRules) load(ctx context.Context, tx pgx.Tx, repo string) error {
	rows, err := tx.Query(ctx, `
SELECT id, repos, repos_re, tags, kind, created_at FROM tag_rules
WHERE $1 ~ repos_re
ORDER BY kind = 'protected', id`, repo)
	if err != nil {
		return fmt.Errorf("read tag rules: %w", err)
	}
	rules, err := pgx.CollectRows(rows, scanTagRule)
	if err != nil {
		return fmt.Errorf("read tag rules: %w", err)
	}
	rs.rules = make([]compiledTagRule, len(rules))
	for i, r := range rules {
		re, err := regexp.Compile(r.Tags)
		if err != nil { // validated when added: refuse rather than ignore
			return fmt.Errorf("tag rule %d: %w", r.ID, err)
		}
		rs.rules[i] = compiledTagRule{r, re}
	}
	rs.loaded = true
	return nil
}
