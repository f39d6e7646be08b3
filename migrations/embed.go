// Package migrations holds Berth's database schema as golang-migrate SQL
// files. They are embedded in the binary so that `berth migrate` and
// `berth serve` can bring any database up to date without files on disk.
//
// Rules for new files: never edit a migration that has shipped; add a new
// pair NNNN_name.up.sql / NNNN_name.down.sql instead. Each file runs in its
// own transaction (golang-migrate's pgx driver sends the file as one
// multi-statement query, which PostgreSQL executes atomically).
package migrations

import "embed"

// FS contains every *.sql migration of this directory.
//
//go:embed *.sql
var FS embed.FS
