package db

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// repositoryEnsure returns the id of repository name, creating the row on
// first use. It takes no lock on an existing row: repositories are only ever
// inserted, so the id cannot change under the caller.
func repositoryEnsure(ctx context.Context, tx pgx.Tx, name string) (int64, error) {
	return repositoryEnsureQuery(ctx, tx, name, repositoryEnsureSQL)
}

// One round trip in both common cases (exists / new). The WHERE NOT
// EXISTS guard keeps the identity sequence from advancing on every call.
const repositoryEnsureSQL = `
WITH ins AS (
    INSERT INTO repositories (name)
    SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM repositories WHERE name = $1)
    ON CONFLICT (name) DO NOTHING
    RETURNING id
)
SELECT id FROM ins
UNION ALL
SELECT id FROM repositories WHERE name = $1`

// repositoryEnsureUsage is repositoryEnsure for a transaction that may
// make a manifest live: the same statement also takes the usage advisory
// lock of the repository's namespace, shared (see usage.go), so that every
// later statement of the transaction sees any quota created before, and
// no quota can be created in the namespace until it commits. The lock is
// taken in the condition of both branches; whichever returns the id has
// taken it (an InitPlan, run once).
func repositoryEnsureUsage(ctx context.Context, tx pgx.Tx, name string) (int64, error) {
	id, err := repositoryEnsureQuery(ctx, tx, name, `
WITH lk AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(`+fmt.Sprint(usageLockSpace)+`, hashtext(split_part($1, '/', 1))) IS NOT NULL AS ok),
ins AS (
    INSERT INTO repositories (name)
    SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM repositories WHERE name = $1)
    ON CONFLICT (name) DO NOTHING
    RETURNING id
)
SELECT id FROM ins WHERE (SELECT ok FROM lk)
UNION ALL
SELECT id FROM repositories WHERE name = $1 AND (SELECT ok FROM lk)`)
	if err == nil {
		usageLocked(tx, name)
	}
	return id, err
}

func repositoryEnsureQuery(ctx context.Context, tx pgx.Tx, name, q string) (int64, error) {
	for range contentionRounds {
		var id int64
		err := tx.QueryRow(ctx, q, name).Scan(&id)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("ensure repository %s: %w", name, err)
		}
		// A concurrent transaction inserted the same name after our
		// snapshot was taken; ON CONFLICT waited for it to commit, so the
		// next statement (new snapshot under READ COMMITTED) sees it.
	}
	return 0, fmt.Errorf("ensure repository %s: %w", name, errContended)
}

// repositoryID looks up an existing repository.
func repositoryID(ctx context.Context, q querier, name string) (int64, error) {
	var id int64
	err := q.QueryRow(ctx, `SELECT id FROM repositories WHERE name = $1`, name).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, repositoryUnknown(name)
	}
	if err != nil {
		return 0, fmt.Errorf("look up repository %s: %w", name, err)
	}
	return id, nil
}

// RepositoryList returns up to n repository names after last, in byte
// order, and whether more follow.
func (d *DB) RepositoryList(ctx context.Context, last string, n int) (names []string, more bool, err error) {
	rows, err := d.q.Query(ctx,
		`SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2`, last, n+1)
	if err != nil {
		return nil, false, fmt.Errorf("list repositories: %w", err)
	}
	names, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, false, fmt.Errorf("list repositories: %w", err)
	}
	if names == nil {
		names = []string{}
	}
	if len(names) > n {
		return names[:n], true, nil
	}
	return names, false, nil
}
