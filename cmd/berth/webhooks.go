package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/events"
)

// The commands that manage webhooks. Webhooks are rows: every replica
// delivers to a webhook from the moment the command commits.

const webhookUsage = `Usage:
  berth webhook add NAME URL [--secret S] [--repos GLOB]... [--actions push,delete,...] [--header 'K: V']... [--timeout 5s] [--pulls]
                             send the registry's events to URL (a POST per event)
  berth webhook list         webhooks, with their pending, delivered and dead-lettered deliveries
  berth webhook delete NAME  delete a webhook and its deliveries
  berth webhook redrive NAME send the dead-lettered deliveries of a webhook again

Actions: push, pull, mount, delete, tag, untag, restore (default: all but pull; --pulls adds pull).
Every command also takes the database settings of berth serve (berth serve --help).
`

func webhookCommand(ctx context.Context, args []string, env cmdEnv) error {
	sub, rest, err := env.subcommand(args, webhookUsage)
	if err != nil {
		return err
	}
	switch sub {
	case "add":
		return webhookAdd(ctx, rest, env)
	case "list":
		return env.withDB(ctx, "webhook list", "webhook list [flags]", rest, 0, 0, func(d *db.DB, _ []string) error {
			return printWebhooks(ctx, d, env)
		})
	case "delete":
		return env.withDB(ctx, "webhook delete", "webhook delete NAME [flags]", rest, 1, 1, func(d *db.DB, pos []string) error {
			if err := d.WebhookDelete(ctx, pos[0]); err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "deleted webhook %s with its deliveries\n", pos[0])
			return nil
		})
	case "redrive":
		return env.withDB(ctx, "webhook redrive", "webhook redrive NAME [flags]", rest, 1, 1, func(d *db.DB, pos []string) error {
			n, err := d.WebhookRedrive(ctx, pos[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "redrove %d dead-lettered deliveries of webhook %s: they go out again, each repository's oldest first\n", n, pos[0])
			return nil
		})
	}
	fmt.Fprint(env.stderr, webhookUsage)
	return fmt.Errorf("unknown command: webhook %s", sub)
}

// printWebhooks prints the webhooks: never a secret, nor header values
// (they often hold credentials).
func printWebhooks(ctx context.Context, d *db.DB, env cmdEnv) error {
	hooks, err := d.WebhookList(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tURL\tREPOS\tACTIONS\tSECRET\tHEADERS\tTIMEOUT\tPENDING\tOLDEST PENDING\tDELIVERED\tDEAD")
	for _, h := range hooks {
		actions := listOr(h.Actions, "all but pull")
		if h.Actions == nil && h.Pulls {
			actions = "all"
		}
		headers := make([]string, len(h.Headers))
		for i, hd := range h.Headers {
			headers[i] = hd.Name
		}
		oldest := "-"
		if !h.OldestPending.IsZero() {
			oldest = time.Since(h.OldestPending).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%d\n", h.Name, h.URL, listOr(h.Repos, "*"), actions,
			yesNo(h.Secret != ""), listOr(headers, "-"), h.Timeout, h.Pending, oldest, h.Delivered, h.Dead)
	}
	return tw.Flush()
}

func webhookAdd(ctx context.Context, args []string, env cmdEnv) error {
	var spec events.WebhookSpec
	var repos, actions, headers stringList
	c, pos, err := env.parse("webhook add", "webhook add NAME URL [--secret S] [--repos GLOB]... [--actions A,...] [--header 'K: V']... [--timeout 5s] [--pulls] [flags]",
		args, 2, 2, func(fs *flag.FlagSet) {
			fs.StringVar(&spec.Secret, "secret", "", "sign every request: Berth-Signature: sha256=<hex HMAC-SHA256 of the body with this key>")
			fs.Var(&repos, "repos", "only events of repositories this glob matches (repeatable; default: all)")
			fs.Var(&actions, "actions", "only these actions, comma-separated: push, pull, mount, delete, tag, untag, restore (default: all but pull)")
			fs.Var(&headers, "header", "add this header to every request, 'Name: value' (repeatable)")
			fs.DurationVar(&spec.Timeout, "timeout", events.DefaultTimeout, "how long the endpoint has to answer a request")
			fs.BoolVar(&spec.Pulls, "pulls", false, "also send pull events (buffered: a crash of a replica loses its last second of them)")
		})
	if err != nil {
		return err
	}
	spec.Name, spec.URL = pos[0], pos[1]
	spec.Repos, spec.Actions, spec.Headers = repos, actions, headers
	w, err := spec.Webhook()
	if err != nil {
		return err
	}
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	if err := d.WebhookAdd(ctx, w); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "added webhook %s: events committed from now on go to %s\n", w.Name, w.URL)
	return nil
}
