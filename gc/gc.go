// Package gc collects garbage online: while the registry serves pushes and
// pulls, in every replica, with no read-only window.
//
// # What is garbage
//
//   - a deleted manifest (tombstone) older than the retention: purged, and
//     the blobs it referenced become candidates;
//   - with untagged collection on, a manifest untagged for long enough that
//     no live index lists, that has no live referrer and is not attached to
//     a live subject: deleted (a tombstone, restorable until purged);
//   - a blob link older than the review delay in a repository where no
//     manifest references the blob: removed;
//   - a blob that no manifest references (live, or a tombstone within
//     retention) and no link protects any more: bytes and row removed;
//   - an upload session idle for longer than the upload timeout, with its
//     partial bytes;
//   - bytes in the store that no row describes (left by a crash): swept.
//
// Candidates are queued (table gc_queue) by the very transactions that make
// them candidates — upload, unlink, untag, tag move, delete — each with a
// review time. Collectors in every replica claim due candidates with
// SELECT … FOR UPDATE SKIP LOCKED, re-check them inside a transaction and
// act. Anything that references a candidate again before then (a manifest
// push, a new link) simply makes the re-check keep it.
//
// # Deleting a blob without losing one
//
// A blob row and its bytes cannot change together: one is in PostgreSQL,
// the other in a file system or S3. The order of the two steps, and one
// row lock that every party takes, make it safe:
//
//	collector                          blob row   upload of the same digest
//	─────────                          ────────   ─────────────────────────
//	tx1: lock row FOR UPDATE            ready     (publishes bytes, then)
//	     re-check: no manifest, no
//	     fresh link references it                  tx: lock row FOR UPDATE
//	     state := 'deleting'; commit   deleting        ↳ waits for tx1/tx2
//	                                   (HEAD, GET, mount and manifest pushes
//	                                    see only 'ready': the blob is gone
//	                                    for them from here on)
//	tx2: lock row FOR UPDATE
//	     state still 'deleting'? ──no──▶ an upload revived it: stop
//	     delete the bytes
//	     delete the row; commit        (none)
//	                                                   ↳ row absent or
//	                                                     'deleting': publish
//	                                                     the bytes again under
//	                                                     the lock, then 'ready'
//
// The collector takes both steps for a batch of blob candidates at once
// (db.GCReviewBlobs, db.GCDeleteBlobs): tx1 locks the batch's rows in
// ascending digest order and checks them with set-based statements; tx2
// locks them again, deletes the bytes of those still 'deleting'
// concurrently (Config.DeleteConcurrency), still holding every lock, then
// the rows. A blob whose bytes could not be deleted keeps its 'deleting'
// row and its candidate, as if tx2 had rolled back for it alone.
//
// Bytes are deleted only inside tx2, holding the row lock. An upload takes
// the same lock before it trusts the bytes it published, and re-publishes
// them when it finds the row absent or not 'ready'. So an upload that
// succeeded always leaves bytes behind, and a manifest can only reference
// a 'ready' blob, which tx1 or tx2 cannot be collecting. A crash between
// deleting the bytes and committing tx2 leaves a 'deleting' row, which no
// reader serves and the next pass finishes; a crash elsewhere leaves at
// worst bytes without a row, which the sweep removes (claiming the digest
// with a 'deleting' row first, so it is just as safe against uploads).
// Never a 'ready' row without bytes.
package gc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
)

// Store is what the collector needs of a blob store.
type Store interface {
	blobstore.Deleter
	blobstore.Lister
	Stat(ctx context.Context, dgst digest.Digest) (int64, error)
	DeleteUpload(ctx context.Context, uploadID string, state []byte) error
}

// Config tunes the collector. The review delay, retention and untagged
// policy live in db.GCPolicy, because the transactions that queue
// candidates need them too.
type Config struct {
	Policy        db.GCPolicy
	UploadTimeout time.Duration // idle upload sessions older than this are ended
	Interval      time.Duration // time between passes of Run
	Batch         int           // candidates claimed per transaction round
	SweepInterval time.Duration // time between sweeps for orphaned bytes in Run
	// Lease is how long a claimed candidate stays with its collector; a
	// collector that dies gives it up when the lease ends.
	Lease time.Duration
	// DeleteConcurrency bounds the blob byte deletions a collector runs at
	// once (default 16): on S3 each is a round trip.
	DeleteConcurrency int
	// Workers is how many claim rounds a pass runs at once (default 2):
	// while one batch waits for the database or the store, another works.
	// More take more of the machine (and of the store) from pushes.
	Workers int
	Logger  *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Interval <= 0 {
		c.Interval = time.Minute
	}
	if c.Batch <= 0 {
		c.Batch = 100
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = 24 * time.Hour
	}
	if c.Lease <= 0 {
		c.Lease = 5 * time.Minute
	}
	if c.Workers <= 0 {
		c.Workers = 2
	}
	if c.DeleteConcurrency <= 0 {
		c.DeleteConcurrency = 16
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Collector runs garbage collection against one database and blob store.
type Collector struct {
	db    *db.DB
	store Store
	cfg   Config
	log   *slog.Logger
	stats Stats
}

// New returns a collector.
func New(d *db.DB, store Store, cfg Config) *Collector {
	cfg.setDefaults()
	return &Collector{db: d, store: store, cfg: cfg, log: cfg.Logger}
}

// Report counts what a pass or sweep collected (or, in a dry run, would
// collect). Items lists each action in words, for `berth gc`.
type Report struct {
	DryRun            bool
	ManifestsPurged   int
	ManifestsUntagged int
	LinksRemoved      int
	BlobsDeleted      int
	BlobBytes         int64
	UploadsExpired    int
	UploadBytes       int64
	OrphanBlobs       int
	OrphanBytes       int64
	OrphanUploads     int
	// Bytes that no row describes but that the sweep left alone because
	// they are younger than its Ages: they may belong to uploads in
	// progress, or be orphans too young to tell.
	SkippedBlobs       int
	SkippedBlobBytes   int64
	SkippedUploads     int
	SkippedUploadBytes int64
	Kept               int // candidates examined and kept
	Items              []string
}

// Add merges o into r: counts and items.
func (r *Report) Add(o Report) {
	r.ManifestsPurged += o.ManifestsPurged
	r.ManifestsUntagged += o.ManifestsUntagged
	r.LinksRemoved += o.LinksRemoved
	r.BlobsDeleted += o.BlobsDeleted
	r.BlobBytes += o.BlobBytes
	r.UploadsExpired += o.UploadsExpired
	r.UploadBytes += o.UploadBytes
	r.OrphanBlobs += o.OrphanBlobs
	r.OrphanBytes += o.OrphanBytes
	r.OrphanUploads += o.OrphanUploads
	r.SkippedBlobs += o.SkippedBlobs
	r.SkippedBlobBytes += o.SkippedBlobBytes
	r.SkippedUploads += o.SkippedUploads
	r.SkippedUploadBytes += o.SkippedUploadBytes
	r.Kept += o.Kept
	r.Items = append(r.Items, o.Items...)
}

// Collected reports whether anything was (or would be) collected.
func (r Report) Collected() bool {
	return r.ManifestsPurged+r.ManifestsUntagged+r.LinksRemoved+r.BlobsDeleted+
		r.UploadsExpired+r.OrphanBlobs+r.OrphanUploads > 0
}

// FreedBytes is the storage freed (or that would be freed).
func (r Report) FreedBytes() int64 { return r.BlobBytes + r.UploadBytes + r.OrphanBytes }

func (r *Report) item(format string, args ...any) {
	r.Items = append(r.Items, fmt.Sprintf(format, args...))
}

// LogAttrs summarises the report for a log line.
func (r Report) LogAttrs() []any {
	return []any{"dry_run", r.DryRun, "manifests_purged", r.ManifestsPurged, "manifests_untagged", r.ManifestsUntagged,
		"links_removed", r.LinksRemoved, "blobs_deleted", r.BlobsDeleted, "uploads_expired", r.UploadsExpired,
		"orphan_blobs", r.OrphanBlobs, "orphan_uploads", r.OrphanUploads,
		"skipped_young_blobs", r.SkippedBlobs, "skipped_young_uploads", r.SkippedUploads,
		"kept", r.Kept, "bytes_freed", r.FreedBytes()}
}

// Pass collects everything due now: it ends idle upload sessions, then
// claims and examines due candidates until none is left. With dryRun it only reports
// what it would do: candidates are examined in transactions that roll
// back, and only those due now are seen.
func (c *Collector) Pass(ctx context.Context, dryRun bool) (Report, error) {
	rep := Report{DryRun: dryRun}
	if err := c.expireUploads(ctx, dryRun, &rep); err != nil {
		return rep, err
	}
	if dryRun {
		return rep, c.reviewDue(ctx, &rep)
	}
	// Claim until nothing is due: Config.Workers claim rounds at a time,
	// each worker going on until it finds nothing due. Collecting can make
	// other candidates due at once (a purged manifest frees its blobs);
	// those are taken in the same pass, by another phase of the workers if
	// they had stopped. Candidates put back for later are due in the
	// future, so the loop ends; the bound is only a guard.
	var (
		mu      sync.Mutex
		failed  []error
		stop    bool
		rounds  int
		claimed bool
	)
	worker := func() {
		for {
			mu.Lock()
			if stop || rounds >= maxRounds || len(failed) > maxFailures {
				mu.Unlock()
				return
			}
			rounds++
			mu.Unlock()
			cands, err := c.db.GCClaim(ctx, c.cfg.Batch, c.cfg.Lease)
			if err != nil || len(cands) == 0 {
				mu.Lock()
				if err != nil {
					failed, stop = append(failed, err), true
				}
				mu.Unlock()
				return
			}
			var r Report
			errs, fatal := c.collectRound(ctx, cands, &r)
			mu.Lock()
			rep.Add(r)
			failed = append(failed, errs...)
			claimed = true
			stop = stop || fatal
			mu.Unlock()
		}
	}
	for {
		claimed = false
		var wg sync.WaitGroup
		for range c.cfg.Workers {
			wg.Add(1)
			go func() { defer wg.Done(); worker() }()
		}
		wg.Wait()
		if !claimed || stop || rounds >= maxRounds || len(failed) > maxFailures {
			break
		}
	}
	c.stats.record(rep)
	return rep, errors.Join(failed...)
}

// collectRound examines the candidates of one claim. One candidate failing
// (the store briefly unreachable, say) must not hold back the others; it
// stays leased and is examined again once its lease ends. fatal is true
// when the pass should stop: it is ending, or every other candidate would
// fail the same way (the database is unavailable), so the next pass takes
// them.
func (c *Collector) collectRound(ctx context.Context, cands []db.Candidate, rep *Report) (failed []error, fatal bool) {
	stopping := func(err error) bool { return ctx.Err() != nil || errors.Is(err, db.ErrUnavailable) }
	// Blob candidates are collected in batches (see collectBlobs); a batch
	// whose transaction fails stays leased.
	blobs, others := splitBlobs(cands)
	for _, err := range c.collectBlobs(ctx, blobs, rep) {
		failed = append(failed, err)
		if stopping(err) {
			return failed, true
		}
		c.log.WarnContext(ctx, "gc: blob candidate failed", "err", err)
	}
	for _, cand := range others {
		if err := c.review(ctx, cand, false, rep); err != nil {
			failed = append(failed, err)
			if stopping(err) {
				return failed, true
			}
			c.log.WarnContext(ctx, "gc: candidate failed", "kind", cand.Kind, "key", cand.Key, "err", err)
		}
	}
	return failed, false
}

// maxFailures ends a pass whose candidates keep failing: something is wrong
// beyond one candidate, and the next pass will try again.
const maxFailures = 10

// maxRounds bounds the claim rounds of one pass; the next pass continues.
const maxRounds = 10000

// reviewDue is the dry run of the candidate loop: it pages through the due
// candidates without claiming them.
func (c *Collector) reviewDue(ctx context.Context, rep *Report) error {
	var after db.Candidate
	for {
		cands, err := c.db.GCDue(ctx, after, c.cfg.Batch)
		if err != nil {
			return err
		}
		blobs, others := splitBlobs(cands)
		if len(blobs) > 0 {
			revs, err := c.db.GCReviewBlobs(ctx, blobs, true)
			if err != nil {
				return err
			}
			for _, rev := range revs {
				c.reportReview(rev, true, rep)
			}
		}
		for _, cand := range others {
			if err := c.review(ctx, cand, true, rep); err != nil {
				return err
			}
		}
		if len(cands) < c.cfg.Batch {
			return nil
		}
		after = cands[len(cands)-1]
	}
}

func (c *Collector) review(ctx context.Context, cand db.Candidate, dryRun bool, rep *Report) error {
	switch cand.Kind {
	case db.CandidateManifest:
		return c.reviewManifest(ctx, cand, dryRun, rep)
	}
	return fmt.Errorf("unknown garbage candidate kind %q", cand.Kind)
}

// splitBlobs separates blob candidates from the others.
func splitBlobs(cands []db.Candidate) (blobs, others []db.Candidate) {
	for _, cand := range cands {
		if cand.Kind == db.CandidateBlob {
			blobs = append(blobs, cand)
		} else {
			others = append(others, cand)
		}
	}
	return blobs, others
}

// collectBlobs collects a batch of blob candidates in two transactions,
// the two steps of the package documentation taken for the whole batch:
// GCReviewBlobs removes stale links and marks the unreferenced blobs
// 'deleting'; GCDeleteBlobs, holding their row locks, deletes their bytes
// DeleteConcurrency at a time, then their rows. It returns the errors of
// the batch: one for a transaction that failed (its candidates stay
// leased), or one per blob whose bytes could not be deleted.
func (c *Collector) collectBlobs(ctx context.Context, cands []db.Candidate, rep *Report) []error {
	if len(cands) == 0 {
		return nil
	}
	revs, err := c.db.GCReviewBlobs(ctx, cands, false)
	if err != nil {
		return []error{err}
	}
	var collect []db.Candidate
	for i, rev := range revs {
		if c.reportReview(rev, false, rep) {
			collect = append(collect, cands[i])
		}
	}
	if len(collect) == 0 {
		return nil
	}
	res, err := c.db.GCDeleteBlobs(ctx, collect, c.cfg.DeleteConcurrency, func(ctx context.Context, dgst string) error {
		return c.store.Delete(ctx, digest.Digest(dgst))
	})
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, r := range res {
		switch {
		case r.Err != nil:
			errs = append(errs, r.Err)
		case r.Deleted:
			rep.BlobsDeleted++
			rep.BlobBytes += r.Size
			rep.item("delete blob %s (%d bytes): nothing references it", r.Digest, r.Size)
		default:
			rep.Kept++ // an upload revived it between the two steps
		}
	}
	return errs
}

// reportReview adds what a blob review did to rep and reports whether the
// blob must now be deleted (always false in a dry run, which counts it
// as deleted).
func (c *Collector) reportReview(rev db.BlobReview, dryRun bool, rep *Report) bool {
	for _, repo := range rev.UnlinkedFrom {
		rep.LinksRemoved++
		rep.item("unlink blob %s from %s: no manifest of the repository references it", rev.Digest, repo)
	}
	if !rev.Collect {
		rep.Kept++
		return false
	}
	if dryRun {
		rep.BlobsDeleted++
		rep.BlobBytes += rev.Size
		rep.item("delete blob %s (%d bytes): nothing references it", rev.Digest, rev.Size)
		return false
	}
	return true
}

func (c *Collector) reviewManifest(ctx context.Context, cand db.Candidate, dryRun bool, rep *Report) error {
	rev, err := c.db.GCReviewManifest(ctx, cand, dryRun)
	if err != nil {
		return err
	}
	switch {
	case rev.Purged:
		rep.ManifestsPurged++
		rep.item("purge manifest %s@%s: deleted longer ago than the retention", rev.Repository, rev.Digest)
	case rev.Untagged:
		rep.ManifestsUntagged++
		rep.item("delete manifest %s@%s: untagged longer than the untagged age, and nothing needs it", rev.Repository, rev.Digest)
	default:
		rep.Kept++
	}
	return nil
}

// expireUploads ends idle upload sessions, then discards their bytes.
func (c *Collector) expireUploads(ctx context.Context, dryRun bool, rep *Report) error {
	for {
		expired, err := c.db.GCExpireUploads(ctx, c.cfg.UploadTimeout, c.cfg.Batch, dryRun)
		if err != nil {
			return err
		}
		for _, u := range expired {
			rep.UploadsExpired++
			rep.UploadBytes += u.Size
			rep.item("end upload %s of %s (%d bytes): idle since %s", u.ID, u.Repository, u.Size, u.UpdatedAt.UTC().Format(time.RFC3339))
			if dryRun {
				continue
			}
			if err := c.store.DeleteUpload(ctx, u.ID, u.StoreState); err != nil {
				// The session is gone; its bytes are orphans the sweep removes.
				c.log.WarnContext(ctx, "gc: discard upload data", "upload", u.ID, "err", err)
			}
		}
		if dryRun || len(expired) < c.cfg.Batch {
			return nil
		}
	}
}

// sweepBatch is how many digests or upload ids one database lookup checks.
const sweepBatch = 1000

// Ages are how old bytes that no database row describes must be before the
// sweep takes them for orphans. Younger ones may belong to an upload in
// progress — a blob published but not yet committed, the staging of a
// monolithic upload, the data of a finished upload not yet discarded — so
// the sweep leaves them alone and only counts them (Report.Skipped*).
type Ages struct {
	Blobs   time.Duration // published blobs
	Uploads time.Duration // upload data
}

// DefaultAges are the ages Run sweeps with: the review delay for blobs, the
// upload timeout for upload data.
func (c *Collector) DefaultAges() Ages {
	return Ages{Blobs: c.cfg.Policy.ReviewDelay, Uploads: c.cfg.UploadTimeout}
}

// Sweep walks the blob store for bytes that no database row describes —
// blobs and upload data left behind by a crash — and removes those older
// than ages, so that bytes in the middle of being committed are left
// alone (the commit protocol keeps even those safe; see the package
// documentation). The younger ones without a row are counted as skipped.
func (c *Collector) Sweep(ctx context.Context, ages Ages, dryRun bool) (Report, error) {
	rep := Report{DryRun: dryRun}
	// found is a blob or an upload in the store, waiting for its lookup.
	type found struct {
		key   string
		size  int64
		young bool
	}
	var pending []found
	keys := func() []string {
		k := make([]string, len(pending))
		for i, f := range pending {
			k[i] = f.key
		}
		return k
	}
	flushBlobs := func() error {
		known, err := c.db.BlobsKnown(ctx, keys())
		if err != nil {
			return err
		}
		for _, f := range pending {
			switch {
			case known[f.key]:
				continue
			case f.young:
				rep.SkippedBlobs++
				rep.SkippedBlobBytes += f.size
				continue
			}
			deleted := true
			if !dryRun {
				dgst := digest.Digest(f.key)
				deleted, err = c.db.GCDeleteOrphan(ctx, f.key, func(ctx context.Context) error { return c.store.Delete(ctx, dgst) })
				if err != nil {
					return err
				}
			}
			if deleted {
				rep.OrphanBlobs++
				rep.OrphanBytes += f.size
				rep.item("delete orphaned bytes of %s (%d bytes): no blob row describes them", f.key, f.size)
			}
		}
		pending = pending[:0]
		return nil
	}
	blobCutoff := time.Now().Add(-ages.Blobs)
	err := c.store.WalkBlobs(ctx, func(dgst digest.Digest, size int64, modTime time.Time) error {
		pending = append(pending, found{dgst.String(), size, modTime.After(blobCutoff)})
		if len(pending) >= sweepBatch {
			return flushBlobs()
		}
		return nil
	})
	if err == nil && len(pending) > 0 {
		err = flushBlobs()
	}
	if err != nil {
		return rep, fmt.Errorf("sweep blobs: %w", err)
	}

	flushUploads := func() error {
		known, err := c.db.UploadsKnown(ctx, keys())
		if err != nil {
			return err
		}
		for _, f := range pending {
			switch {
			case known[f.key]:
				continue
			case f.young:
				rep.SkippedUploads++
				rep.SkippedUploadBytes += f.size
				continue
			}
			rep.OrphanUploads++
			rep.item("delete orphaned upload data %s: no upload session", f.key)
			if !dryRun {
				if err := c.store.DeleteUpload(ctx, f.key, nil); err != nil {
					return err
				}
			}
		}
		pending = pending[:0]
		return nil
	}
	uploadCutoff := time.Now().Add(-ages.Uploads)
	err = c.store.WalkUploads(ctx, func(id string, size int64, modTime time.Time) error {
		pending = append(pending, found{id, size, modTime.After(uploadCutoff)})
		if len(pending) >= sweepBatch {
			return flushUploads()
		}
		return nil
	})
	if err == nil && len(pending) > 0 {
		err = flushUploads()
	}
	if err != nil {
		return rep, fmt.Errorf("sweep uploads: %w", err)
	}
	c.stats.record(rep)
	return rep, nil
}

// sweepLockKey is the advisory lock that makes one replica at a time sweep.
const sweepLockKey = 0x6265727468_5357 // "berth" "SW"

// Run collects until ctx ends: a pass every Interval, and a sweep whenever
// the last one, by any replica, is older than SweepInterval. It logs a
// summary of every pass that collected something.
func (c *Collector) Run(ctx context.Context) {
	c.log.Info("gc: online garbage collection running", "interval", c.cfg.Interval,
		"review_delay", c.cfg.Policy.ReviewDelay, "tombstone_retention", c.cfg.Policy.TombstoneRetention,
		"upload_timeout", c.cfg.UploadTimeout, "collect_untagged", c.cfg.Policy.CollectUntagged)
	ticker := time.NewTicker(c.cfg.Interval)
	defer ticker.Stop()
	for {
		rep, err := c.Pass(ctx, false)
		c.logResult(ctx, "gc: pass", rep, err)
		if _, err := c.SweepIfDue(ctx, c.cfg.SweepInterval, false); err != nil && ctx.Err() == nil {
			c.logResult(ctx, "gc: sweep", Report{}, err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// SweepIfDue sweeps (see Sweep, with DefaultAges) if
// no replica has done so for interval (0: sweep now), holding the advisory
// lock that keeps sweeps of the registry one at a time. ran is false when
// another process holds the lock or the sweep is not due.
func (c *Collector) SweepIfDue(ctx context.Context, interval time.Duration, dryRun bool) (rep Report, err error) {
	ran, lockErr := c.db.WithSessionLock(ctx, sweepLockKey, func() error {
		due, err := c.db.GCSweepDue(ctx, interval)
		if err != nil || !due {
			return err
		}
		rep, err = c.Sweep(ctx, c.DefaultAges(), dryRun)
		c.logResult(ctx, "gc: sweep", rep, err)
		if err != nil || dryRun {
			return err
		}
		return c.db.GCSweepDone(ctx)
	})
	if lockErr != nil {
		return rep, lockErr
	}
	if !ran {
		c.log.DebugContext(ctx, "gc: another process is sweeping")
	}
	return rep, nil
}

func (c *Collector) logResult(ctx context.Context, msg string, rep Report, err error) {
	switch {
	case errors.Is(err, db.ErrUnavailable):
		// Logged once for the whole outage by db; the next pass retries.
		c.log.DebugContext(ctx, msg+" failed", append(rep.LogAttrs(), "err", err)...)
	case err != nil && ctx.Err() == nil:
		c.log.ErrorContext(ctx, msg+" failed", append(rep.LogAttrs(), "err", err)...)
	case rep.Collected():
		c.log.InfoContext(ctx, msg, rep.LogAttrs()...)
	default:
		c.log.DebugContext(ctx, msg, rep.LogAttrs()...)
	}
}
