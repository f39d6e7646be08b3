package db

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// tagSet points tag at manifest id, creating the tag if needed. The caller
// holds a lock on the manifest row, so it cannot be deleted meanwhile.
//
// Locks: the tag row (through ON CONFLICT DO UPDATE).
func tagSet(ctx context.Context, tx pgx.Tx, repoID int64, tag string, manifestID int64) error {
	_, err := tx.Exec(ctx, `
INSERT INTO tags (repository_id, name, manifest_id) VALUES ($1, $2, $3)
ON CONFLICT (repository_id, name) DO UPDATE
    SET manifest_id = EXCLUDED.manifest_id, updated_at = now()
    WHERE tags.manifest_id <> EXCLUDED.manifest_id`, repoID, tag, manifestID)
	if err != nil {
		return fmt.Errorf("set tag %s: %w", tag, err)
	}
	return nil
}

// TagDelete removes tag from repo and returns the digest it pointed at. The
// manifest stays, pullable by digest. ErrTagUnknown when there is no such
// tag.
//
// Locks: the tag row (deleted).
func (d *DB) TagDelete(ctx context.Context, repo, tag string, actor Actor) (string, error) {
	var dgst string
	err := d.withTx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
DELETE FROM tags t USING repositories r, manifests m
WHERE r.id = t.repository_id AND m.id = t.manifest_id AND r.name = $1 AND t.name = $2
RETURNING m.digest`, repo, tag).Scan(&dgst)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrTagUnknown
		}
		if err != nil {
			return fmt.Errorf("delete tag %s: %w", tag, err)
		}
		return nil
	})
	return dgst, err
}

// TagList returns up to n tags of repo after last, in byte order, and
// whether more follow. ErrRepositoryUnknown when repo does not exist. One
// round trip: the repository row and the page come from one query.
func (d *DB) TagList(ctx context.Context, repo, last string, n int) (tags []string, more bool, err error) {
	rows, err := d.pool.Query(ctx, `
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
		return nil, false, ErrRepositoryUnknown
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
