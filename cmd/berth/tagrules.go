package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/db"
)

// The commands that manage tag rules: immutable and protected tags. Rules
// are rows: every replica applies a rule to the tag changes whose
// transactions start reading rules after the command commits.

const tagRuleUsage = `Usage:
  berth tag-rule add --repos GLOB --tags REGEX --immutable|--protected
                             add a rule; prints its id
  berth tag-rule list        every rule: id, repositories, tags, kind, creation time
  berth tag-rule delete ID   delete a rule

--immutable: once a tag the rule covers exists, it cannot be moved, untagged or
  restored elsewhere, nor its manifest deleted by digest. Creating it, and pushing
  the digest it has again, are allowed.
--protected: only a principal with delete on the repository may do those; retention
  never removes the tag.
GLOB is a repository glob as for berth grant ('*' within a path component, '**' across).
REGEX is a Go regular expression (https://pkg.go.dev/regexp/syntax), matched anywhere
in the tag name: anchor it, e.g. '^v[0-9]+([.][0-9]+)*$'.
Refusals are 403 DENIED, naming the tag and the rule.
Every command also takes the database settings of berth serve (berth serve --help).
`

func tagRuleCommand(ctx context.Context, args []string, env cmdEnv) error {
	sub, rest, err := env.subcommand(args, tagRuleUsage)
	if err != nil {
		return err
	}
	switch sub {
	case "add":
		return tagRuleAdd(ctx, rest, env)
	case "list":
		return env.withDB(ctx, "tag-rule list", "tag-rule list [flags]", rest, 0, 0, func(d *db.DB, _ []string) error {
			rules, err := d.TagRuleList(ctx)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tREPOS\tTAGS\tKIND\tCREATED")
			for _, r := range rules {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", r.ID, r.Repos, r.Tags, r.Kind, timestamp(r.CreatedAt))
			}
			return tw.Flush()
		})
	case "delete":
		c, pos, err := env.parse("tag-rule delete", "tag-rule delete ID [flags]", rest, 1, 1)
		if err != nil {
			return err
		}
		id, err := strconv.ParseInt(pos[0], 10, 64)
		if err != nil || id <= 0 {
			return fmt.Errorf("tag rule id %q: want the number berth tag-rule list shows", pos[0])
		}
		d, closeDB, err := env.open(ctx, c)
		if err != nil {
			return err
		}
		defer closeDB()
		if err := d.TagRuleDelete(ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "deleted tag rule %d\n", id)
		return nil
	}
	fmt.Fprint(env.stderr, tagRuleUsage)
	return fmt.Errorf("unknown command: tag-rule %s", sub)
}

func tagRuleAdd(ctx context.Context, args []string, env cmdEnv) error {
	var repos, tags string
	var immutable, protected bool
	const synopsis = "tag-rule add --repos GLOB --tags REGEX --immutable|--protected [flags]"
	c, _, err := env.parse("tag-rule add", synopsis, args, 0, 0, func(fs *flag.FlagSet) {
		fs.StringVar(&repos, "repos", "", "the repositories the rule covers, a glob ('*' within a path component, '**' across)")
		fs.StringVar(&tags, "tags", "", "the tags it covers, a Go regular expression matched anywhere in the name (anchor it with ^ and $)")
		fs.BoolVar(&immutable, "immutable", false, "once such a tag exists, nobody may move or untag it")
		fs.BoolVar(&protected, "protected", false, "only a principal with delete on the repository may move or untag such a tag")
	})
	if err != nil {
		return err
	}
	r := db.TagRule{Repos: repos, Tags: tags}
	switch {
	case immutable == protected:
		return errors.New("give one of --immutable and --protected")
	case immutable:
		r.Kind = db.TagRuleImmutable
	default:
		r.Kind = db.TagRuleProtected
	}
	if repos == "" {
		return errors.New("--repos is required: the repository glob the rule covers ('**' for every repository)")
	}
	if err := auth.ValidGlob(repos); err != nil {
		return err
	}
	if err := db.ValidTagRegexp(tags); err != nil {
		return fmt.Errorf("--tags: %w", err)
	}
	r.ReposRegexp = auth.GlobRegex(repos)
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	r, err = d.TagRuleAdd(ctx, r)
	if err != nil {
		return err
	}
	// The id alone on standard output, for scripts; the sentence for
	// people on standard error.
	fmt.Fprintln(env.stdout, r.ID)
	fmt.Fprintf(env.stderr, "added %v, %s: it applies to tag changes from now on\n", r, r.Kind)
	return nil
}
