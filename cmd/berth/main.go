// Command berth is the Berth container registry: one binary that serves
// the OCI distribution API (berth serve), manages its database (berth
// migrate) and collects garbage (berth gc, berth check).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usageText = `Berth: an OCI container registry with its metadata in PostgreSQL.

Usage:
  berth serve [flags]                 run the registry
  berth migrate up|down|version [flags]  manage the database schema
  berth gc [--once] [--dry-run] [flags]  garbage collection (continuous, or one pass)
  berth check [--repair] [--min-age D] [flags]  compare the blob store with the database
  berth healthcheck [--url U]         exit 0 if a running berth is ready (for containers)
  berth help <command>                flags of a command

Run "berth serve --help" for every setting.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "berth:", err)
		}
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return errors.New("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		m := NewMain()
		if err := m.ParseFlags(rest, getenv, stderr); err != nil {
			return err
		}
		if err := m.Run(ctx); err != nil {
			m.Close(context.Background())
			return err
		}
		<-ctx.Done()
		m.Logger.Info("shutting down: finishing in-flight requests", "timeout", m.Config.ShutdownTimeout)
		shutdownCtx, cancel := context.WithTimeout(context.Background(), m.Config.ShutdownTimeout)
		defer cancel()
		return m.Close(shutdownCtx)
	case "migrate":
		return migrateCommand(ctx, rest, getenv, stdout, stderr)
	case "gc":
		return gcCommand(ctx, rest, getenv, stdout, stderr)
	case "check":
		return checkCommand(ctx, rest, getenv, stdout, stderr)
	case "healthcheck":
		return healthcheckCommand(ctx, rest, stdout, stderr)
	case "help", "-h", "--help":
		if len(rest) > 0 {
			return run(ctx, []string{rest[0], "--help"}, getenv, stdout, stderr)
		}
		fmt.Fprint(stdout, usageText)
		return nil
	}
	fmt.Fprint(stderr, usageText)
	return fmt.Errorf("unknown command %q", cmd)
}
