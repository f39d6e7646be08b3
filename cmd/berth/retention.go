package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
)

// The commands that manage retention policies. A policy is a row: every
// replica's scheduler sees it from the moment the command commits.

const retentionUsage = `Usage:
  berth retention add NAME --repos GLOB [--keep-last N] [--keep-pulled-within D] [--keep-pushed-within D]
                           [--keep-tags REGEX]... [--delete-untagged-after D] [--schedule D]
                               remove the tags no keep rule keeps, and untagged manifests after D
  berth retention list         policies, with their last run
  berth retention preview NAME what a run would remove now, and the rule that failed to keep it
  berth retention run NAME     remove exactly that, now, and print it
  berth retention delete NAME  delete a policy (what it removed stays removed)

Durations: 90m, 36h, 30d. Every command also takes the database settings of berth serve (berth serve --help).
`

func retentionCommand(ctx context.Context, args []string, env cmdEnv) error {
	sub, rest, err := env.subcommand(args, retentionUsage)
	if err != nil {
		return err
	}
	switch sub {
	case "add":
		return retentionAdd(ctx, rest, env)
	case "list":
		return env.withDB(ctx, "retention list", "retention list [flags]", rest, 0, 0, func(d *db.DB, _ []string) error {
			return printRetentionPolicies(ctx, d, env)
		})
	case "preview", "run":
		return env.withDB(ctx, "retention "+sub, "retention "+sub+" NAME [flags]", rest, 1, 1, func(d *db.DB, pos []string) error {
			return retentionApply(ctx, d, env, sub, pos[0])
		})
	case "delete":
		return env.withDB(ctx, "retention delete", "retention delete NAME [flags]", rest, 1, 1, func(d *db.DB, pos []string) error {
			if err := d.RetentionDelete(ctx, pos[0]); err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "deleted retention policy %s\n", pos[0])
			return nil
		})
	}
	fmt.Fprint(env.stderr, retentionUsage)
	return fmt.Errorf("unknown command: retention %s", sub)
}

// printRetentionPolicies prints the policies with their last run.
func printRetentionPolicies(ctx context.Context, d *db.DB, env cmdEnv) error {
	ps, err := d.RetentionList(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tREPOS\tKEEP\tUNTAGGED\tSCHEDULE\tLAST RUN\tREMOVED (LAST RUN)\tREMOVED (TOTAL)")
	for _, p := range ps {
		untagged, schedule, last := "kept", "by hand", "never"
		if p.DeleteUntaggedAfter != nil {
			untagged = "after " + db.FormatDays(*p.DeleteUntaggedAfter)
		}
		if p.Schedule > 0 {
			schedule = "every " + db.FormatDays(p.Schedule)
		}
		if !p.LastRunAt.IsZero() {
			last = timestamp(p.LastRunAt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d tags, %d manifests\t%d tags, %d manifests\n", p.Name, listOr(p.Repos, "-"),
			keepRules(p), untagged, schedule, last, p.LastRunTags, p.LastRunManifests, p.TagsRemoved, p.ManifestsRemoved)
	}
	return tw.Flush()
}

// retentionApply previews (sub "preview") or runs policy name, and prints
// what it removes.
func retentionApply(ctx context.Context, d *db.DB, env cmdEnv, sub, name string) error {
	var rs []db.Removal
	var err error
	if sub == "preview" {
		rs, err = d.RetentionPreview(ctx, name)
	} else {
		rs, err = d.RetentionRun(ctx, name)
	}
	if err != nil {
		return err
	}
	printRemovals(env, rs)
	tags := 0
	for _, r := range rs {
		if r.Tag != "" {
			tags++
		}
	}
	verb := "would remove"
	if sub == "run" {
		verb = "removed"
	}
	fmt.Fprintf(env.stderr, "retention policy %s %s %s and %s\n", name, verb, plural(tags, "tag"), plural(len(rs)-tags, "manifest"))
	return nil
}

// printRemovals writes one line per removal, the same for a preview and
// the run that follows it: repository, tag or manifest, and why.
func printRemovals(env cmdEnv, rs []db.Removal) {
	for _, r := range rs {
		if r.Tag != "" {
			fmt.Fprintf(env.stdout, "%s  tag %s  %s\n", r.Repository, r.Tag, r.Reason)
		} else {
			fmt.Fprintf(env.stdout, "%s  manifest %s  %s\n", r.Repository, r.Digest, r.Reason)
		}
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// keepRules describes a policy's keep rules for the listing.
func keepRules(p db.RetentionPolicy) string {
	var rules []string
	if p.KeepLast > 0 {
		rules = append(rules, fmt.Sprintf("last %d", p.KeepLast))
	}
	if p.KeepPushedWithin > 0 {
		rules = append(rules, "pushed within "+db.FormatDays(p.KeepPushedWithin))
	}
	if p.KeepPulledWithin > 0 {
		rules = append(rules, "pulled within "+db.FormatDays(p.KeepPulledWithin))
	}
	for _, re := range p.KeepTags {
		rules = append(rules, "tags ~ "+re)
	}
	if len(rules) == 0 {
		return "all tags"
	}
	return strings.Join(rules, ", ")
}

// daysFlag is a duration flag that also takes whole days ("30d").
type daysFlag struct {
	d   *time.Duration
	set *bool
}

func (f daysFlag) String() string {
	if f.d == nil {
		return ""
	}
	return db.FormatDays(*f.d)
}

func (f daysFlag) Set(s string) error {
	d, err := parseDays(s)
	if err != nil {
		return err
	}
	if d <= 0 && f.set == nil {
		return fmt.Errorf("must be positive: %s", s)
	}
	*f.d = d
	if f.set != nil {
		*f.set = true
	}
	return nil
}

func parseDays(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 {
			return 0, fmt.Errorf("not a number of days: %s", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, fmt.Errorf("must not be negative: %s", s)
	}
	return d, nil
}

func retentionAdd(ctx context.Context, args []string, env cmdEnv) error {
	var p db.RetentionPolicy
	var repos, keepTags stringList
	var untagged time.Duration
	var untaggedSet bool
	c, pos, err := env.parse("retention add", "retention add NAME --repos GLOB [--keep-last N] [--keep-pulled-within D] [--keep-pushed-within D] [--keep-tags REGEX]... [--delete-untagged-after D] [--schedule D] [flags]",
		args, 1, 1, func(fs *flag.FlagSet) {
			fs.Var(&repos, "repos", "the repositories this glob matches (repeatable; required)")
			fs.IntVar(&p.KeepLast, "keep-last", 0, "keep the N most recently pushed (or moved) tags of each repository")
			fs.Var(daysFlag{d: &p.KeepPulledWithin}, "keep-pulled-within", "keep tags pulled within this long")
			fs.Var(daysFlag{d: &p.KeepPushedWithin}, "keep-pushed-within", "keep tags pushed (or moved) within this long")
			fs.Var(&keepTags, "keep-tags", "keep tags whose name matches this regular expression (Go syntax, as berth tag-rule), anywhere unless anchored (repeatable)")
			fs.Var(daysFlag{d: &untagged, set: &untaggedSet}, "delete-untagged-after", "delete manifests untagged this long that nothing references (default: keep them)")
			fs.Var(daysFlag{d: &p.Schedule}, "schedule", "run every this long in a replica of berth serve (default: only by hand)")
		})
	if err != nil {
		return err
	}
	p.Name = pos[0]
	if len(repos) == 0 {
		return fmt.Errorf("retention add %s: give the repositories with --repos GLOB", p.Name)
	}
	for _, g := range repos {
		if err := auth.ValidGlob(g); err != nil {
			return fmt.Errorf("--repos %s: %w", g, err)
		}
		p.Repos = append(p.Repos, g)
		p.ReposRegexp = append(p.ReposRegexp, auth.GlobRegex(g))
	}
	if p.KeepLast < 0 {
		return fmt.Errorf("--keep-last must be positive")
	}
	p.KeepTags = keepTags
	if untaggedSet {
		p.DeleteUntaggedAfter = &untagged
	}
	if !p.HasTagRules() && p.DeleteUntaggedAfter == nil {
		return fmt.Errorf("retention add %s: give a keep rule (--keep-last, --keep-pushed-within, --keep-pulled-within, --keep-tags) or --delete-untagged-after", p.Name)
	}
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	if err := d.RetentionAdd(ctx, p); err != nil {
		return err
	}
	what := "removes no tag"
	if p.HasTagRules() {
		what = "keeps " + keepRules(p)
	}
	fmt.Fprintf(env.stdout, "added retention policy %s for %s: %s; untagged manifests %s; %s\n", p.Name, strings.Join(p.Repos, ","), what,
		map[bool]string{true: "deleted after " + db.FormatDays(untagged), false: "kept"}[untaggedSet],
		map[bool]string{true: "runs every " + db.FormatDays(p.Schedule), false: "runs by hand (berth retention run " + p.Name + ")"}[p.Schedule > 0])
	fmt.Fprintf(env.stdout, "see what it would remove now: berth retention preview %s\n", p.Name)
	return nil
}
