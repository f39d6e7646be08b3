package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/golang-migrate/migrate/v4"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx" for golang-migrate

	"github.com/berth-registry/berth/migrations"
)

// Migrator applies the embedded migrations to one database.
//
// Several replicas may start at once: golang-migrate's PostgreSQL driver
// holds a session-level advisory lock (pg_advisory_lock, keyed by database,
// schema and migrations table) around reading the version and applying
// files, so exactly one process migrates and the others wait, then find
// nothing left to do.
type Migrator struct {
	m     *migrate.Migrate
	sqlDB *sql.DB
}

// NewMigrator connects to url for migrating. Close it when done.
func NewMigrator(url string) (*Migrator, error) {
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	sqlDB, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("open database for migrations: %w", err)
	}
	driver, err := migratepgx.WithInstance(sqlDB, &migratepgx.Config{})
	if err != nil {
		sqlDB.Close()
		return nil, fmt.Errorf("prepare migrations: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx", driver)
	if err != nil {
		sqlDB.Close()
		return nil, fmt.Errorf("prepare migrations: %w", err)
	}
	return &Migrator{m: m, sqlDB: sqlDB}, nil
}

// Up applies every pending migration. It is a no-op when the schema is
// current.
func (mg *Migrator) Up() error {
	if err := mg.m.Up(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return fmt.Errorf("apply migrations: %w", err)
	}
	return nil
}

// Down reverts the most recent migration (one step).
func (mg *Migrator) Down() error {
	if err := mg.m.Steps(-1); err != nil {
		return fmt.Errorf("revert migration: %w", err)
	}
	return nil
}

// Version reports the schema version and whether a failed migration left it
// dirty. Version 0 means no migration has run.
func (mg *Migrator) Version() (version uint, dirty bool, err error) {
	v, d, err := mg.m.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read schema version: %w", err)
	}
	return v, d, nil
}

// Latest reports the highest version among the embedded migrations.
func Latest() (uint, error) {
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return 0, fmt.Errorf("read embedded migrations: %w", err)
	}
	defer src.Close()
	v, err := src.First()
	if err != nil {
		return 0, fmt.Errorf("read embedded migrations: %w", err)
	}
	for {
		next, err := src.Next(v)
		if err != nil {
			return v, nil // no further file
		}
		v = next
	}
}

// Close releases the migration connection.
func (mg *Migrator) Close() error {
	srcErr, dbErr := mg.m.Close()
	return errors.Join(srcErr, dbErr)
}

// Migrate brings the database at url to the latest schema.
func Migrate(url string) error {
	mg, err := NewMigrator(url)
	if err != nil {
		return err
	}
	defer mg.Close()
	return mg.Up()
}

// SchemaCurrent reports whether the schema is at the latest embedded
// migration and clean, for readiness probes: a replica must not serve on a
// schema it does not know, nor on one a newer replica already moved past.
func (d *DB) SchemaCurrent(ctx context.Context) error {
	latest, err := Latest()
	if err != nil {
		return err
	}
	var version int64
	var dirty bool
	err = d.q.QueryRow(ctx, `SELECT version, dirty FROM schema_migrations LIMIT 1`).Scan(&version, &dirty)
	if err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if dirty {
		return fmt.Errorf("schema version %d is dirty: a migration failed halfway", version)
	}
	if uint(version) != latest {
		return fmt.Errorf("schema version %d, this binary needs %d", version, latest)
	}
	return nil
}
