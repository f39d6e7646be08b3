package db

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// TagCondition makes a tag change conditional on the state the client has
// seen, like HTTP's If-Match and If-None-Match. The zero value is no
// condition.
type TagCondition struct {
	// IfMatch lists the digests the tag may point at for the change to
	// happen. "*" means "the tag exists".
	IfMatch []string
	// IfNoneMatch means the tag must not exist: create, never move.
	IfNoneMatch bool
}

func (c TagCondition) holds(current string) bool {
	if c.IfNoneMatch && current != "" {
		return false
	}
	if c.IfMatch == nil {
		return true
	}
	if current == "" {
		return false
	}
	return slices.Contains(c.IfMatch, "*") || slices.Contains(c.IfMatch, current)
}

// PreconditionError reports a conditional tag change refused because the
// tag is not in the expected state. Current is where it points now, empty
// when it does not exist.
type PreconditionError struct {
	Repository string
	Tag        string
	Current    string
}

func (e *PreconditionError) Error() string {
	if e.Current == "" {
		return fmt.Sprintf("precondition failed: tag %s of %s does not exist; nothing was changed", e.Tag, e.Repository)
	}
	return fmt.Sprintf("precondition failed: tag %s of %s now points at %s; nothing was changed", e.Tag, e.Repository, e.Current)
}

// tagLock locks the row of tag FOR UPDATE and returns the manifest it points
// at. A missing tag locks nothing: creators race on the primary key instead
// (see tagSet).
//
// The digest is read in a second statement, after the lock is granted: a
// statement that waits for the lock re-reads only the locked row, so a join
// in it would still see the manifest the tag pointed at before the wait,
// and miss a tag that a concurrent push had just moved.
func tagLock(ctx context.Context, tx pgx.Tx, repoID int64, tag string) (manifestID int64, dgst string, found bool, err error) {
	err = tx.QueryRow(ctx, `
SELECT manifest_id FROM tags WHERE repository_id = $1 AND name = $2 FOR UPDATE`, repoID, tag).Scan(&manifestID)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, "", false, nil
	}
	if err != nil {
		return 0, "", false, fmt.Errorf("lock tag %s: %w", tag, err)
	}
	if err := tx.QueryRow(ctx, `SELECT digest FROM manifests WHERE id = $1`, manifestID).Scan(&dgst); err != nil {
		return 0, "", false, fmt.Errorf("read the target of tag %s: %w", tag, err)
	}
	return manifestID, dgst, true, nil
}

// tagTarget is the manifest a tag change points the tag at.
type tagTarget struct {
	repoID     int64
	repo       string
	tag        string
	manifestID int64
	digest     string
}

// tagSet points a tag at a manifest whose row the caller has locked, so it
// cannot be deleted meanwhile, if cond holds; and records the change in the
// tag's history. action is tag.move for a push, which records a new tag as
// tag.create, or tag.restore for an explicit restore.
//
// Locks: the tag row FOR UPDATE. When the tag does not exist there is no
// row to lock; the INSERT then races on the primary key, and the loser
// (ON CONFLICT DO NOTHING, after waiting for the winner to commit) goes
// round again and finds the winner's row.
//
// It returns the digest the tag pointed at before (empty for a new tag)
// and, if the tag moved away from a manifest, that manifest's id: it may
// be untagged now, and the caller queues it for garbage collection once it
// holds its other locks.
//
// Moving an existing tag is refused with a *TagRuleError when a tag rule
// forbids it to actor; rules holds the repository's rules, read once per
// transaction, after the first lock that needs them.
func tagSet(ctx context.Context, tx pgx.Tx, t tagTarget, cond TagCondition, action string, actor Actor, rules *tagRules) (movedFrom int64, previous string, err error) {
	for range contentionRounds {
		previousID, current, found, err := tagLock(ctx, tx, t.repoID, t.tag)
		if err != nil {
			return 0, "", err
		}
		if !cond.holds(current) {
			return 0, "", &PreconditionError{Repository: t.repo, Tag: t.tag, Current: current}
		}
		if found {
			if current == t.digest {
				return 0, current, nil // already there: no change, no history
			}
			if err := rules.check(ctx, tx, t.repo, t.tag, "", actor); err != nil {
				return 0, "", err
			}
			if _, err := tx.Exec(ctx, `
UPDATE tags SET manifest_id = $3, updated_at = now() WHERE repository_id = $1 AND name = $2`,
				t.repoID, t.tag, t.manifestID); err != nil {
				return 0, "", fmt.Errorf("move tag %s: %w", t.tag, err)
			}
			return previousID, current, audit(ctx, tx, actor, event{action: action, repository: t.repo, tag: t.tag, digest: t.digest, oldDigest: current})
		}
		tag, err := tx.Exec(ctx, `
INSERT INTO tags (repository_id, name, manifest_id) VALUES ($1, $2, $3)
ON CONFLICT (repository_id, name) DO NOTHING`, t.repoID, t.tag, t.manifestID)
		if err != nil {
			return 0, "", fmt.Errorf("create tag %s: %w", t.tag, err)
		}
		if tag.RowsAffected() == 1 {
			if action == ActionTagMove {
				action = ActionTagCreate
			}
			return 0, "", audit(ctx, tx, actor, event{action: action, repository: t.repo, tag: t.tag, digest: t.digest})
		}
		// Created concurrently: go round and lock the winner's row.
	}
	return 0, "", fmt.Errorf("set tag %s: %w", t.tag, errContended)
}

// TagDelete removes tag from repo, if cond holds, and returns the digest it
// pointed at. The manifest stays, pullable by digest. ErrTagUnknown when
// there is no such tag (and no condition was given); a *TagRuleError when
// a tag rule forbids actor to untag it.
//
// Locks: the tag row FOR UPDATE, then deletes it.
func (d *DB) TagDelete(ctx context.Context, repo, tag string, cond TagCondition, actor Actor) (string, error) {
	var dgst string
	err := d.withTx(ctx, func(tx pgx.Tx) error {
		repoID, err := repositoryID(ctx, tx, repo)
		if errors.Is(err, ErrRepositoryUnknown) {
			return d.tagAbsent(repo, tag, cond)
		}
		if err != nil {
			return err
		}
		_, current, found, err := tagLock(ctx, tx, repoID, tag)
		if err != nil {
			return err
		}
		if !found {
			return d.tagAbsent(repo, tag, cond)
		}
		if dgst = current; !cond.holds(dgst) {
			return &PreconditionError{Repository: repo, Tag: tag, Current: dgst}
		}
		return d.tagsRemove(ctx, tx, repoID, repo, []string{tag}, actor)
	})
	return dgst, err
}

// tagsRemove deletes tags of repo, which the caller has locked FOR
// UPDATE (in name order), as an untag by actor: the rows, their history
// (tag.untag, in name order), and the garbage candidacy of the manifests
// they pointed at. A tag that is gone is skipped. One statement for any
// number of tags: a retention run removes thousands at once.
func (d *DB) tagsRemove(ctx context.Context, tx pgx.Tx, repoID int64, repo string, tags []string, actor Actor) error {
	rows, err := tx.Query(ctx, `
DELETE FROM tags t USING manifests m
WHERE t.repository_id = $1 AND t.name = ANY($2) AND m.id = t.manifest_id
RETURNING t.name, t.manifest_id, m.digest`, repoID, tags)
	if err != nil {
		return fmt.Errorf("delete tags of %s: %w", repo, err)
	}
	type removed struct {
		tag        string
		manifestID int64
		digest     string
	}
	gone, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (removed, error) {
		var r removed
		err := row.Scan(&r.tag, &r.manifestID, &r.digest)
		return r, err
	})
	if err != nil {
		return fmt.Errorf("delete tags of %s: %w", repo, err)
	}
	slices.SortFunc(gone, func(a, b removed) int { return strings.Compare(a.tag, b.tag) })
	// The rows are deleted (locked) now: a tag a rule forbids removing
	// refuses the change, and the rollback restores them.
	rules := &tagRules{}
	for _, r := range gone {
		if err := rules.check(ctx, tx, repo, r.tag, "", actor); err != nil {
			return err
		}
	}
	ids := make([]int64, 0, len(gone))
	for _, r := range gone {
		if err := audit(ctx, tx, actor, event{action: ActionTagUntag, repository: repo, tag: r.tag, oldDigest: r.digest}); err != nil {
			return err
		}
		ids = append(ids, r.manifestID)
	}
	// In ascending id order, as enqueueDependents queues them.
	slices.Sort(ids)
	for _, id := range slices.Compact(ids) {
		if err := d.enqueueUntagged(ctx, tx, id); err != nil {
			return err
		}
	}
	return nil
}

// tagAbsent is the error for a change of a tag that does not exist: a
// failed precondition when the client required a state, else unknown.
func (d *DB) tagAbsent(repo, tag string, cond TagCondition) error {
	if cond.IfMatch != nil {
		return &PreconditionError{Repository: repo, Tag: tag}
	}
	return tagUnknown(repo, tag)
}

// TagRestore points tag at the live manifest dgst of repo, if cond holds:
// the explicit request that restores a tag to an earlier digest, without
// pushing the manifest again. ErrManifestUnknown when dgst is not live.
//
// Locks: the manifest row FOR SHARE (a concurrent delete of it, which takes
// FOR UPDATE, is serialised with this), then the tag row.
func (d *DB) TagRestore(ctx context.Context, repo, tag, dgst string, cond TagCondition, actor Actor) (previous string, err error) {
	err = d.withTx(ctx, func(tx pgx.Tx) error {
		repoID, err := repositoryID(ctx, tx, repo)
		if errors.Is(err, ErrRepositoryUnknown) {
			return manifestUnknown(repo, dgst)
		}
		if err != nil {
			return err
		}
		var id int64
		err = tx.QueryRow(ctx, `
SELECT id FROM manifests WHERE repository_id = $1 AND digest = $2 AND deleted_at IS NULL
FOR SHARE`, repoID, dgst).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return manifestUnknown(repo, dgst)
		}
		if err != nil {
			return fmt.Errorf("lock manifest %s: %w", dgst, err)
		}
		var movedFrom int64
		movedFrom, previous, err = tagSet(ctx, tx, tagTarget{repoID: repoID, repo: repo, tag: tag, manifestID: id, digest: dgst},
			cond, ActionTagRestore, actor, &tagRules{})
		if err != nil || movedFrom == 0 {
			return err
		}
		return d.enqueueUntagged(ctx, tx, movedFrom)
	})
	return previous, err
}

// TagList returns up to n tags of repo after last, in byte order, and
// whether more follow. ErrRepositoryUnknown when repo does not exist. One
// round trip: the repository row and the page come from one query.
func (d *DB) TagList(ctx context.Context, repo, last string, n int) (tags []string, more bool, err error) {
	rows, err := d.q.Query(ctx, `
SELECT t.name
FROM repositories r
LEFT JOIN LATERAL (
    SELECT name FROM tags
    WHERE repository_id = r.id AND name > $2
    ORDER BY name LIMIT $3
) t ON true
WHERE r.name = $1`, repo, last, n+1)
	if err != nil {
		return nil, false, fmt.Errorf("list tags of %s: %w", repo, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[*string])
	if err != nil {
		return nil, false, fmt.Errorf("list tags of %s: %w", repo, err)
	}
	if len(names) == 0 {
		return nil, false, repositoryUnknown(repo)
	}
	tags = make([]string, 0, len(names))
	for _, name := range names {
		if name != nil { // the NULL row of a repository without tags
			tags = append(tags, *name)
		}
	}
	if len(tags) > n {
		return tags[:n], true, nil
	}
	return tags, false, nil
}
