package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/internal/names"
)

// The commands that show usage and manage quotas. Usage is kept by the
// transactions that change it (see db/usage.go): these commands read it.

const usageUsage = `Usage:
  berth usage [PREFIX]   the bytes every repository of the namespace PREFIX uses (default: every repository),
                         and the namespace's total, each blob counted once
  berth usage check      count every repository's and quota's usage from scratch and compare; exit 1 on any drift

PREFIX "team" covers the repository team and team/..., not teamx. (A namespace named check: berth usage check/.)
Every command also takes the database settings of berth serve (berth serve --help).
`

const quotaUsage = `Usage:
  berth quota set PREFIX --limit 10GiB [--warn 80%]   limit the namespace PREFIX (a push that would go over is refused)
  berth quota list                                   quotas with their usage
  berth quota delete PREFIX                          remove a quota

Every command also takes the database settings of berth serve (berth serve --help).
`

func usageCommand(ctx context.Context, args []string, env cmdEnv) error {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "--help", "help":
			fmt.Fprint(env.stdout, usageUsage)
			return flag.ErrHelp
		case "check":
			return env.withDB(ctx, "usage check", "usage check [flags]", args[1:], 0, 0, func(d *db.DB, _ []string) error {
				return usageCheck(ctx, d, env)
			})
		}
	}
	return env.withDB(ctx, "usage", "usage [PREFIX] [flags]", args, 0, 1, func(d *db.DB, pos []string) error {
		prefix := ""
		if len(pos) == 1 {
			var err error
			if prefix, err = namespace(pos[0]); err != nil {
				return err
			}
		}
		return printUsage(ctx, d, env, prefix)
	})
}

// namespace checks a namespace prefix given on the command line: a
// repository name, or its first components ("team", "team/app"); a
// trailing slash is allowed.
func namespace(arg string) (string, error) {
	p := strings.TrimSuffix(arg, "/")
	if !names.ValidRepository(p) {
		return "", fmt.Errorf("%q is not a namespace: give a repository name or its first components (team, team/app)", arg)
	}
	return p, nil
}

func printUsage(ctx context.Context, d *db.DB, env cmdEnv, prefix string) error {
	rep, err := d.UsageOf(ctx, prefix)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REPOSITORY\tMANIFESTS\tBLOBS\tMANIFEST BYTES\tTOTAL\tTOTAL BYTES")
	for _, u := range rep.Repositories {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\n", u.Name, u.Manifests, db.HumanBytes(u.BlobBytes),
			db.HumanBytes(u.ManifestBytes), db.HumanBytes(u.Total()), u.Total())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	ns := rep.Namespace
	what := "namespace " + prefix
	if prefix == "" {
		what = "all repositories"
	}
	fmt.Fprintf(env.stdout, "%s: %d repositories, %d manifests, %s (blobs %s, each counted once; manifests %s)\n",
		what, ns.Repositories, ns.Manifests, db.FormatBytes(ns.Total()), db.HumanBytes(ns.BlobBytes), db.HumanBytes(ns.ManifestBytes))
	return nil
}

// errDrift makes berth usage check exit non-zero.
var errDrift = errors.New("usage drift found")

func usageCheck(ctx context.Context, d *db.DB, env cmdEnv) error {
	start := time.Now()
	drift, repos, quotas, err := d.UsageCheck(ctx)
	if err != nil {
		return err
	}
	for _, dr := range drift {
		fmt.Fprintf(env.stdout, "drift: %s: recorded %s, counted %s\n", dr.What, dr.Recorded, dr.Counted)
	}
	fmt.Fprintf(env.stdout, "checked %d repositories and %d quotas in one snapshot in %v: %d differences\n",
		repos, quotas, time.Since(start).Round(time.Millisecond), len(drift))
	if len(drift) > 0 {
		return fmt.Errorf("%w: %d differences between the usage bookkeeping and a count from scratch", errDrift, len(drift))
	}
	return nil
}

func quotaCommand(ctx context.Context, args []string, env cmdEnv) error {
	sub, rest, err := env.subcommand(args, quotaUsage)
	if err != nil {
		return err
	}
	switch sub {
	case "set":
		return quotaSet(ctx, rest, env)
	case "list":
		return env.withDB(ctx, "quota list", "quota list [flags]", rest, 0, 0, func(d *db.DB, _ []string) error {
			return printQuotas(ctx, d, env)
		})
	case "delete":
		return env.withDB(ctx, "quota delete", "quota delete PREFIX [flags]", rest, 1, 1, func(d *db.DB, pos []string) error {
			prefix, err := namespace(pos[0])
			if err != nil {
				return err
			}
			if err := d.QuotaDelete(ctx, prefix); err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "deleted the quota of %s\n", prefix)
			return nil
		})
	}
	fmt.Fprint(env.stderr, quotaUsage)
	return fmt.Errorf("unknown command: quota %s", sub)
}

func quotaSet(ctx context.Context, args []string, env cmdEnv) error {
	var limit, warn string
	c, pos, err := env.parse("quota set", "quota set PREFIX --limit SIZE [--warn PERCENT%] [flags]", args, 1, 1, func(fs *flag.FlagSet) {
		fs.StringVar(&limit, "limit", "", "the most the namespace may use: bytes, or with a KiB, MiB or GiB suffix (10GiB)")
		fs.StringVar(&warn, "warn", "", "warn (log, metric, quota list, web interface) once usage reaches this share of the limit (80%)")
	})
	if err != nil {
		return err
	}
	prefix, err := namespace(pos[0])
	if err != nil {
		return err
	}
	if limit == "" {
		return errors.New("quota set: --limit is required (e.g. --limit 10GiB)")
	}
	bytes, err := parseSize(limit)
	if err != nil {
		return fmt.Errorf("--limit: %w", err)
	}
	percent := 0
	if warn != "" {
		percent, err = strconv.Atoi(strings.TrimSuffix(warn, "%"))
		if err != nil || percent < 1 || percent > 100 {
			return fmt.Errorf("--warn %q: give a percentage of the limit from 1%% to 100%%", warn)
		}
	}
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	created, err := d.QuotaSet(ctx, prefix, bytes, percent)
	if err != nil {
		return err
	}
	verb := "changed"
	if created {
		verb = "set"
	}
	warnText := ""
	if percent > 0 {
		warnText = fmt.Sprintf(", warning at %d%%", percent)
	}
	fmt.Fprintf(env.stdout, "%s the quota of %s: %s%s\n", verb, prefix, db.FormatBytes(bytes), warnText)
	return printQuotas(ctx, d, env, prefix)
}

// printQuotas prints the quotas, or only those of prefixes.
func printQuotas(ctx context.Context, d *db.DB, env cmdEnv, prefixes ...string) error {
	qs, err := d.QuotaList(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tLIMIT\tWARN\tUSAGE\tUSED\tREPOSITORIES\tMANIFESTS\tSTATE")
	for _, q := range qs {
		if len(prefixes) > 0 && q.Prefix != prefixes[0] {
			continue
		}
		warn := "-"
		if q.WarnPercent > 0 {
			warn = fmt.Sprintf("%d%%", q.WarnPercent)
		}
		used := "-"
		if q.Limit > 0 {
			used = fmt.Sprintf("%.1f%%", float64(q.Total())*100/float64(q.Limit))
		}
		state := "ok"
		switch {
		case q.Over():
			state = "over the limit: pushes that add bytes are refused"
		case q.Warned():
			state = "warning since " + q.WarnedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", q.Prefix, db.FormatBytes(q.Limit), warn,
			db.FormatBytes(q.Total()), used, q.Repositories, q.Manifests, state)
	}
	return tw.Flush()
}
