// Package dbtest gives each test its own freshly migrated PostgreSQL schema
// on a real server, so tests run in parallel without seeing each other's
// rows. The server comes from BERTH_TEST_DATABASE_URL, by default the local
// PostgreSQL's "test" database.
package dbtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/berth-registry/berth/db"
)

// DefaultURL is used when BERTH_TEST_DATABASE_URL is not set.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// ServerURL is the database server tests use.
func ServerURL() string {
	if u := os.Getenv("BERTH_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// NewURL creates a schema with the current migrations applied and returns a
// URL whose connections use it (through search_path). The schema is dropped
// when the test ends.
func NewURL(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	base := ServerURL()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to test database %s (set BERTH_TEST_DATABASE_URL): %v", base, err)
	}
	defer conn.Close(ctx)
	var b [6]byte
	rand.Read(b[:])
	schema := "test_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("create test schema: %v", err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), base)
		if err != nil {
			t.Errorf("connect to drop test schema: %v", err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop test schema: %v", err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", base, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	if err := db.Migrate(u.String()); err != nil {
		t.Fatalf("migrate test schema: %v", err)
	}
	return u.String()
}

// StallDeadlocks returns dbURL with deadlock_timeout far above any
// legitimate wait (a startup parameter, like search_path): PostgreSQL then
// does not break a wait cycle for withTx to retry, the cycle stalls its
// changes past their statement deadline, and the test sees them fail. For
// tests that check a lock order has no cycle.
func StallDeadlocks(t testing.TB, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatalf("parse %s: %v", dbURL, err)
	}
	q := u.Query()
	q.Set("deadlock_timeout", "10min")
	u.RawQuery = q.Encode()
	return u.String()
}

// New returns a *db.DB on a fresh schema, closed when the test ends.
func New(t testing.TB) *db.DB {
	t.Helper()
	d, err := db.Open(context.Background(), NewURL(t), db.Options{})
	if err != nil {
		t.Fatalf("open test database: %v", err)
	}
	t.Cleanup(d.Close)
	return d
}

// Exec runs a statement on the test schema behind url, for tests that set
// up or inspect state the API does not expose.
func Exec(t testing.TB, dbURL, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

// QueryInt runs a query returning one integer, for invariant checks.
func QueryInt(t testing.TB, dbURL, sql string, args ...any) int64 {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	var n int64
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("query %q: %v", sql, fmt.Errorf("%w", err))
	}
	return n
}
