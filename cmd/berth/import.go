package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/importer"
)

// `berth import`: moves a reference registry's storage tree into Berth
// (package importer). Which side is which: the --from-* and --s3-* flags
// of this command describe the SOURCE; Berth's own database and blob store
// come from its usual settings, BERTH_* environment and the YAML file (and
// the non-S3 flags, --storage, --storage-dir, --database-url…), exactly as
// for berth serve. An --s3-* flag never configures Berth's own store here.

const importSynopsis = `import (--from-dir PATH | --from-s3 --s3-bucket B [--s3-prefix P] [--s3-endpoint U] [--s3-region R] [--s3-force-path-style])
       [--trust-digests] [--workers N] [--passes N] [--settle N] [--progress auto|bar|lines] [flags]`

// sourceS3Flags are the flags that describe the source bucket in berth
// import; the same names configure Berth's store in every other command.
var sourceS3Flags = map[string]bool{"s3-bucket": true, "s3-prefix": true, "s3-region": true, "s3-endpoint": true, "s3-force-path-style": true}

// takeSourceS3Flags removes the --s3-* flags from args and returns them,
// name → value.
func takeSourceS3Flags(args []string) (rest []string, src map[string]string, err error) {
	src = map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		name, val, hasVal := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		if !strings.HasPrefix(a, "-") || !sourceS3Flags[name] {
			rest = append(rest, a)
			continue
		}
		switch {
		case hasVal:
		case name == "s3-force-path-style":
			val = "true"
		case i+1 < len(args):
			i++
			val = args[i]
		default:
			return nil, nil, fmt.Errorf("flag needs an argument: --%s", name)
		}
		src[name] = val
	}
	return rest, src, nil
}

func importCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	args, srcFlags, err := takeSourceS3Flags(args)
	if err != nil {
		return err
	}
	var fromDir, progress string
	var fromS3, trust bool
	var workers, passes, settle int
	c, positional, err := loadCommandConfig("import", importSynopsis, args, getenv, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&fromDir, "from-dir", "", "the reference registry's rootdirectory (filesystem driver): the tree that starts at docker/registry/v2/")
		fs.BoolVar(&fromS3, "from-s3", false, "read the tree from S3: --s3-bucket, --s3-prefix (the S3 driver's rootdirectory), --s3-endpoint, --s3-region, "+
			"--s3-force-path-style name the SOURCE here (endpoint, region and path style default to Berth's own, BERTH_S3_*); credentials from the AWS SDK's chain")
		fs.BoolVar(&trust, "trust-digests", false, "do not read and hash every blob before Berth serves it (manifests are always hashed)")
		fs.IntVar(&workers, "workers", 4, "repositories imported at once")
		fs.IntVar(&passes, "passes", 10, "at most this many passes: a bulk pass, then catch-up passes while the source keeps changing")
		fs.IntVar(&settle, "settle", 0, "stop after a pass that changed at most this many things (manifests, tags, blob links)")
		fs.StringVar(&progress, "progress", "auto", "auto (a bar on a terminal, else lines), bar or lines")
	})
	if err != nil {
		return err
	}
	if len(positional) > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(positional, " "))
	}
	if (fromDir == "") == !fromS3 {
		fmt.Fprintf(stderr, "Usage: berth %s\n", importSynopsis)
		return errors.New("give exactly one of --from-dir PATH and --from-s3")
	}
	if !fromS3 && len(srcFlags) > 0 {
		return errors.New("--s3-* flags describe the source of --from-s3; Berth's own S3 store is set with BERTH_S3_* or the YAML file")
	}
	log := newLogger(c, stderr)
	var src importer.Source
	if fromDir != "" {
		if src, err = importer.NewDirSource(fromDir); err != nil {
			return err
		}
	} else {
		cfg := blobstore.S3Config{Bucket: srcFlags["s3-bucket"], Region: c.S3.Region, Endpoint: c.S3.Endpoint, ForcePathStyle: c.S3.ForcePathStyle}
		if cfg.Bucket == "" {
			return errors.New("--from-s3 needs --s3-bucket, the source bucket")
		}
		if v, ok := srcFlags["s3-region"]; ok {
			cfg.Region = v
		}
		if v, ok := srcFlags["s3-endpoint"]; ok {
			cfg.Endpoint = v
		}
		if v, ok := srcFlags["s3-force-path-style"]; ok {
			if cfg.ForcePathStyle, err = strconv.ParseBool(v); err != nil {
				return fmt.Errorf("--s3-force-path-style: %w", err)
			}
		}
		bucket, err := blobstore.NewS3(ctx, cfg)
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		src = importer.NewS3Source(bucket, srcFlags["s3-prefix"])
	}
	d, closeDB, err := openCommandDB(ctx, c, log)
	if err != nil {
		return err
	}
	defer closeDB()
	store, err := openStore(ctx, c)
	if err != nil {
		return err
	}
	p := &importer.Progress{W: stderr}
	switch progress {
	case "bar":
		p.Terminal = true
	case "lines":
	case "auto":
		f, ok := stderr.(*os.File)
		p.Terminal = ok && importer.IsTerminal(f)
	default:
		return fmt.Errorf("--progress: %q is not auto, bar or lines", progress)
	}
	where := c.StorageDir
	if c.Storage == "s3" {
		where = "s3://" + c.S3.Bucket + "/" + c.S3.Prefix
	}
	fmt.Fprintf(stdout, "importing from %s (%s) into Berth's %s store %s; digests %s\n", src, src.Kind(), c.Storage, where,
		map[bool]string{true: "trusted (not verified)", false: "verified"}[trust])
	im := importer.New(importer.Config{TrustDigests: trust, Workers: workers, MaxPasses: passes, Settle: settle, Progress: p, Log: log},
		src, d, store)
	reports, err := im.Run(ctx)
	for _, r := range reports {
		r.Print(stdout)
	}
	if len(reports) > 0 {
		importer.PrintTotal(stdout, reports)
		last := reports[len(reports)-1]
		last.PrintSkipped(stdout)
		if err == nil && last.Changes() > int64(settle) {
			fmt.Fprintf(stdout, "the source kept changing: %d passes made, the last changed %d things; run berth import again (after making the source read-only, for the final pass)\n",
				len(reports), last.Changes())
		} else if err == nil {
			fmt.Fprintln(stdout, "done: the last pass found nothing more to import")
		}
	}
	return err
}
