// Command berth is the Berth container registry: one binary that serves
// the OCI distribution API (berth serve), manages its database (berth
// migrate), collects garbage (berth gc, berth check) and manages who may do
// what (berth user, group, grant, revoke, token).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"
)

const usageText = `Berth: an OCI container registry with its metadata in PostgreSQL.

Usage:
  berth serve [flags]                 run the registry
  berth migrate up|down|version [flags]  manage the database schema
  berth gc [--once] [--dry-run] [flags]  garbage collection (continuous, or one pass)
  berth check [--repair] [--min-age D] [flags]  compare the blob store with the database
  berth healthcheck [--url U]         exit 0 if a running berth is ready (for containers)

  berth user add NAME [--admin] --password-stdin   create a user (password: first line of stdin)
  berth user delete NAME | list | import-htpasswd FILE
  berth group add GROUP [USER...]     add users to a group (also: group remove, group delete)
  berth grant SUBJECT REPO_GLOB ACTIONS  let a user, group:NAME, anonymous or authenticated pull,push,delete
  berth grant list                    every grant
  berth revoke SUBJECT REPO_GLOB      delete a grant
  berth token create --user NAME [--scope S]... [--expires D] [--description T]  print a new API token
  berth token revoke ID | list
  berth webhook add NAME URL [--secret S] [--repos G]... [--actions A,...] [--header 'K: V']... [--timeout D] [--pulls]
  berth webhook list | delete NAME | redrive NAME   webhooks and their deliveries
  berth retention add NAME --repos G [--keep-last N] [--keep-pulled-within D] [--keep-pushed-within D] [--keep-tags RE]... [--delete-untagged-after D] [--schedule D]
  berth retention list | preview NAME | run NAME | delete NAME   what retention removes, and removing it
  berth tag-rule add --repos GLOB --tags REGEX --immutable|--protected   immutable or protected tags; prints the rule's id
  berth tag-rule list | delete ID     tag rules
  berth usage [PREFIX] | check        bytes used per repository and namespace; check recomputes it and exits 1 on drift
  berth quota set PREFIX --limit 10GiB [--warn 80%] | list | delete PREFIX   quotas, enforced at manifest push

  berth import --from-dir PATH | --from-s3 --s3-bucket B [--s3-prefix P]   move a reference registry's storage tree into Berth
                                      (--s3-* flags name the source; Berth's own store comes from BERTH_*)

  berth proxy add PREFIX UPSTREAM_URL [--username U --password-stdin] [--ttl 5m] [--remote-prefix P]   a pull-through cache
  berth proxy list | delete PREFIX    pull-through caches

  berth help <command>                flags of a command

Run "berth serve --help" for every setting.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runIO(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "berth:", err)
		}
		stop()
		os.Exit(1)
	}
}

// run is runIO with the process's standard input.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return runIO(ctx, args, getenv, os.Stdin, stdout, stderr)
}

// runIO runs the command args; stdin is read only by the commands that
// take input there (berth user add --password-stdin, import-htpasswd -).
func runIO(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	env := cmdEnv{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
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
	case "user":
		return userCommand(ctx, rest, env)
	case "group":
		return groupCommand(ctx, rest, env)
	case "grant":
		return grantCommand(ctx, rest, env)
	case "revoke":
		return revokeCommand(ctx, rest, env)
	case "token":
		return tokenCommand(ctx, rest, env)
	case "webhook":
		return webhookCommand(ctx, rest, env)
	case "retention":
		return retentionCommand(ctx, rest, env)
	case "tag-rule":
		return tagRuleCommand(ctx, rest, env)
	case "import":
		return importCommand(ctx, rest, getenv, stdout, stderr)
	case "usage":
		return usageCommand(ctx, rest, env)
	case "quota":
		return quotaCommand(ctx, rest, env)
	case "proxy":
		return proxyCommand(ctx, rest, env)
	case "help", "-h", "--help":
		if len(rest) > 0 {
			return runIO(ctx, append(slices.Clone(rest), "--help"), getenv, stdin, stdout, stderr)
		}
		fmt.Fprint(stdout, usageText)
		return nil
	}
	fmt.Fprint(stderr, usageText)
	return fmt.Errorf("unknown command %q", cmd)
}
