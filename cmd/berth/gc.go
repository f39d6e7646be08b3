package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/gc"
)

// maintenance parses the flags of a maintenance command (the settings of
// serve plus the command's own) and opens what it works on.
func maintenance(ctx context.Context, cmd string, args []string, getenv func(string) string, stderr io.Writer,
	flags func(*flag.FlagSet)) (*gc.Collector, func(), error) {
	c, err := loadConfig(cmd, args, getenv, stderr, flags)
	if err != nil {
		return nil, nil, err
	}
	return openForMaintenance(ctx, c, newLogger(c, stderr))
}

// openForMaintenance opens what `berth gc` and `berth check` work on: the
// database (see openCommandDB) and the blob store, with the configured
// garbage collection settings.
func openForMaintenance(ctx context.Context, c Config, log *slog.Logger) (*gc.Collector, func(), error) {
	d, closeDB, err := openCommandDB(ctx, c, log)
	if err != nil {
		return nil, nil, err
	}
	store, err := openStore(ctx, c)
	if err != nil {
		closeDB()
		return nil, nil, err
	}
	return newCollector(c, d, store, log), closeDB, nil
}

// openCommandDB opens the database for a command other than serve,
// migrated as serve would (unless --auto-migrate=false). Without a
// database URL it is the embedded database of the data directory: through
// the server of the berth process running it, if there is one, else one it
// starts for the command's duration. closeAll releases it all.
func openCommandDB(ctx context.Context, c Config, log *slog.Logger) (d *db.DB, closeAll func(), err error) {
	dbase, err := joinDatabase(ctx, c, log)
	if err != nil {
		return nil, nil, err
	}
	if c.AutoMigrate {
		if err := db.Migrate(dbase.url); err != nil {
			dbase.close(context.WithoutCancel(ctx))
			return nil, nil, err
		}
	}
	d, err = db.Open(ctx, dbase.url, c.dbOptions(log))
	if err != nil {
		dbase.close(context.WithoutCancel(ctx))
		return nil, nil, err
	}
	return d, func() { d.Close(); dbase.close(context.WithoutCancel(ctx)) }, nil
}

// gcCommand runs `berth gc`: garbage collection without serving the API.
// With --once it makes one pass (and one sweep for orphaned bytes) and
// reports what it collected; --dry-run reports what it would collect.
// Without either it collects continuously, like serve does, until
// interrupted: for deployments that run collection in its own process
// (--gc-disabled on the replicas).
func gcCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var once, dryRun bool
	collector, closeAll, err := maintenance(ctx, "gc", args, getenv, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&once, "once", false, "run one pass and one sweep, report what was collected, and exit")
		fs.BoolVar(&dryRun, "dry-run", false, "report what one pass and sweep would collect; change nothing")
	})
	if err != nil {
		return err
	}
	defer closeAll()
	if !once && !dryRun {
		collector.Run(ctx)
		return nil
	}
	rep, err := collector.Pass(ctx, dryRun)
	if err == nil {
		var sweep gc.Report
		sweep, err = collector.SweepIfDue(ctx, 0, dryRun)
		rep.Add(sweep)
	}
	printReport(stdout, rep)
	return err
}

func printReport(w io.Writer, rep gc.Report) {
	verb := "collected"
	if rep.DryRun {
		verb = "would collect"
		for i := range rep.Items {
			rep.Items[i] = "would " + rep.Items[i]
		}
	}
	for _, item := range rep.Items {
		fmt.Fprintln(w, item)
	}
	fmt.Fprintf(w, "%s: %d manifests purged, %d untagged manifests deleted, %d blob links removed, "+
		"%d blobs deleted, %d uploads ended, %d orphaned blobs and %d orphaned uploads swept; %d bytes freed; %d candidates kept\n",
		verb, rep.ManifestsPurged, rep.ManifestsUntagged, rep.LinksRemoved, rep.BlobsDeleted, rep.UploadsExpired,
		rep.OrphanBlobs, rep.OrphanUploads, rep.FreedBytes(), rep.Kept)
	if rep.SkippedBlobs+rep.SkippedUploads > 0 {
		fmt.Fprintf(w, "left %d blobs (%d bytes) and %d uploads (%d bytes) without rows to a later sweep: "+
			"too young to tell from uploads in progress (see berth check --min-age)\n",
			rep.SkippedBlobs, rep.SkippedBlobBytes, rep.SkippedUploads, rep.SkippedUploadBytes)
	}
}

// checkCommand runs `berth check`: it compares the blob store with the
// database and reports blobs whose bytes are gone and bytes no row
// describes; --repair fixes both (see gc.Collector.Check). Bytes without a
// row younger than --min-age are only counted: while the registry runs,
// they may belong to uploads in progress.
func checkCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var repair bool
	var minAge optionalDuration
	collector, closeAll, err := maintenance(ctx, "check", args, getenv, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&repair, "repair", false, "mark blobs whose bytes are gone as missing (clients then upload them again) and delete orphaned bytes")
		fs.Var(&minAge, "min-age", "take bytes without a row for orphans only once they are this old; younger ones are counted as skipped, "+
			"since they may belong to uploads in progress (default: --gc-review-delay for blobs, --gc-upload-timeout for upload data, "+
			"as the sweep of serve and gc). 0s right after a crash, with the registry stopped")
	})
	if err != nil {
		return err
	}
	defer closeAll()
	ages := collector.DefaultAges()
	if minAge.set {
		ages = gc.Ages{Blobs: minAge.d, Uploads: minAge.d}
	}
	rep, err := collector.Check(ctx, repair, ages)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "checked %d blobs\n", rep.BlobsChecked)
	for _, d := range rep.MissingBytes {
		action := "(run with --repair to mark it missing)"
		if repair {
			action = "marked missing: it will be served again once a client uploads it"
		}
		fmt.Fprintf(stdout, "blob %s: row without bytes %s\n", d, action)
	}
	for _, m := range rep.Unpullable {
		fmt.Fprintf(stdout, "manifest %s cannot be pulled until its missing blob is pushed again\n", m)
	}
	for _, item := range rep.Orphans.Items {
		if !repair {
			item = "found: " + item
		}
		fmt.Fprintln(stdout, item)
	}
	fmt.Fprintf(stdout, "%d blobs without bytes, %d orphaned blobs (%d bytes), %d orphaned uploads",
		len(rep.MissingBytes), rep.Orphans.OrphanBlobs, rep.Orphans.OrphanBytes, rep.Orphans.OrphanUploads)
	if repair {
		fmt.Fprintln(stdout, ": repaired")
	} else {
		fmt.Fprintln(stdout)
	}
	o := rep.Orphans
	age := rep.Ages.Blobs.String()
	if rep.Ages.Uploads != rep.Ages.Blobs {
		age = fmt.Sprintf("%s (blobs) or %s (upload data)", rep.Ages.Blobs, rep.Ages.Uploads)
	}
	fmt.Fprintf(stdout, "skipped %d blobs (%d bytes) and %d uploads (%d bytes) without rows, younger than %s: they may belong to uploads in progress",
		o.SkippedBlobs, o.SkippedBlobBytes, o.SkippedUploads, o.SkippedUploadBytes, age)
	if o.SkippedBlobs+o.SkippedUploads > 0 {
		fmt.Fprint(stdout, "; with the registry stopped, --min-age 0s counts them as orphans")
	}
	fmt.Fprintln(stdout)
	return nil
}

// optionalDuration is a duration flag that knows whether it was given, for
// a default that depends on other settings.
type optionalDuration struct {
	d   time.Duration
	set bool
}

func (o *optionalDuration) String() string {
	if o == nil || !o.set {
		return ""
	}
	return o.d.String()
}

func (o *optionalDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if d < 0 {
		return errors.New("must not be negative")
	}
	o.d, o.set = d, true
	return nil
}
