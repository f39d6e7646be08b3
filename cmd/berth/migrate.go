package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/berth-registry/berth/db"
)

// migrateCommand runs `berth migrate up|down|version`. With no database URL
// it works on the embedded database of the data directory: through the
// server of the berth process running it, else one it starts itself.
func migrateCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "up" && args[0] != "down" && args[0] != "version") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprintln(stdout, "Usage: berth migrate up|down|version [flags of berth serve]")
			return nil
		}
		return errors.New("usage: berth migrate up|down|version [flags]; `down` reverts one migration")
	}
	action := args[0]
	c, err := loadConfig("migrate "+action, args[1:], getenv, stderr)
	if err != nil {
		return err
	}
	log := newLogger(c, stderr)
	dbase, err := joinDatabase(ctx, c, log)
	if err != nil {
		return err
	}
	defer dbase.close(context.WithoutCancel(ctx))
	mg, err := db.NewMigrator(dbase.url)
	if err != nil {
		return err
	}
	defer mg.Close()
	switch action {
	case "up":
		err = mg.Up()
	case "down":
		err = mg.Down()
	}
	if err != nil {
		return err
	}
	v, dirty, err := mg.Version()
	if err != nil {
		return err
	}
	latest, err := db.Latest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "schema version %d of %d", v, latest)
	if dirty {
		fmt.Fprint(stdout, " (dirty: a migration failed halfway; fix the database, then force the version)")
	}
	fmt.Fprintln(stdout)
	return nil
}
