package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/internal/names"
	"github.com/berth-registry/berth/proxy"
)

// The commands that manage the pull-through cache's proxies. Proxies are
// rows: every replica serves a proxy within a second of the command's
// commit (see proxy.proxiesReload), without a restart.

const proxyUsage = `Usage:
  berth proxy add PREFIX UPSTREAM_URL [--username U --password-stdin] [--ttl 5m] [--remote-prefix P]
                         serve repositories PREFIX/<path> from the cache, fetched from UPSTREAM_URL as <remote-prefix>/<path>
                         ("" as PREFIX: every repository no other prefix covers, a mirror for dockerd's registry-mirrors)
  berth proxy list       proxies (never passwords)
  berth proxy delete PREFIX  stop proxying PREFIX (what was cached stays, as ordinary repositories)

Every command also takes the database settings of berth serve (berth serve --help),
and --proxy-secret-key when upstream passwords are sealed with it.
`

func proxyCommand(ctx context.Context, args []string, env cmdEnv) error {
	sub, rest, err := env.subcommand(args, proxyUsage)
	if err != nil {
		return err
	}
	switch sub {
	case "add":
		return proxyAdd(ctx, rest, env)
	case "list":
		return env.withDB(ctx, "proxy list", "proxy list [flags]", rest, 0, 0, func(d *db.DB, _ []string) error {
			list, err := d.ProxyList(ctx)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "PREFIX\tUPSTREAM\tREMOTE PREFIX\tUSERNAME\tPASSWORD\tTTL\tCREATED")
			for _, p := range list {
				prefix := p.Prefix
				if prefix == "" {
					prefix = `"" (mirror)`
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", prefix, p.Upstream, orDash(p.RemotePrefix), orDash(printable(p.Username)),
					yesNo(p.Password != nil), p.TTL, timestamp(p.CreatedAt))
			}
			return tw.Flush()
		})
	case "delete":
		return env.withDB(ctx, "proxy delete", "proxy delete PREFIX [flags]", rest, 1, 1, func(d *db.DB, pos []string) error {
			if err := d.ProxyDelete(ctx, pos[0]); err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "deleted proxy %q: its repositories are ordinary ones from now on\n", pos[0])
			return nil
		})
	}
	fmt.Fprint(env.stderr, proxyUsage)
	return fmt.Errorf("unknown command: proxy %s", sub)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func proxyAdd(ctx context.Context, args []string, env cmdEnv) error {
	var p db.Proxy
	var passwordStdin bool
	c, pos, err := env.parse("proxy add", "proxy add PREFIX UPSTREAM_URL [--username U --password-stdin] [--ttl 5m] [--remote-prefix P] [flags]",
		args, 2, 2, func(fs *flag.FlagSet) {
			fs.StringVar(&p.Username, "username", "", "user name for the upstream (Basic, or the token service's credentials)")
			fs.BoolVar(&passwordStdin, "password-stdin", false, "read the upstream password from the first line of standard input")
			fs.DurationVar(&p.TTL, "ttl", proxy.DefaultTTL, "re-check a cached tag with the upstream (a HEAD) once it is this old")
			fs.StringVar(&p.RemotePrefix, "remote-prefix", "", "the upstream's repositories are <remote-prefix>/<path> (e.g. library for Docker Hub's official images)")
		})
	if err != nil {
		return err
	}
	p.Prefix, p.Upstream = pos[0], pos[1]
	if p.Prefix != "" && !names.ValidRepository(p.Prefix) {
		return fmt.Errorf("prefix %q is not a repository name (or \"\" for a mirror of everything)", p.Prefix)
	}
	if p.RemotePrefix != "" && !names.ValidRepository(p.RemotePrefix) {
		return fmt.Errorf("--remote-prefix %q is not a repository name", p.RemotePrefix)
	}
	if p.TTL < 0 {
		return fmt.Errorf("--ttl must not be negative")
	}
	if passwordStdin != (p.Username != "") {
		return fmt.Errorf("--username and --password-stdin go together")
	}
	if err := proxy.CheckUpstreamURL(p.Upstream); err != nil {
		return err
	}
	d, closeDB, err := env.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeDB()
	if passwordStdin {
		password, err := readPassword(env.stdin)
		if err != nil {
			return err
		}
		if p.Password, err = proxy.SealPassword(ctx, d, c.ProxySecretKey, p.Prefix, password); err != nil {
			return err
		}
	}
	if err := d.ProxyAdd(ctx, p); err != nil {
		return err
	}
	what := fmt.Sprintf("repositories %s/… are", p.Prefix)
	if p.Prefix == "" {
		what = "every repository that no other proxy covers is"
	}
	fmt.Fprintf(env.stdout, "added proxy %q: %s pulled through from %s, tags re-checked after %s\n", p.Prefix, what, p.Upstream, p.TTL.Round(time.Second))
	return nil
}
