package gc

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
)

// CheckReport is what `berth check` found: database rows whose bytes are
// gone, and (in Orphans) bytes that no row describes.
type CheckReport struct {
	Repair       bool
	BlobsChecked int
	// MissingBytes lists ready blobs whose bytes the store does not have.
	MissingBytes []string
	// Unpullable lists the manifests (repository@digest) that reference a
	// blob with missing bytes.
	Unpullable []string
	// Orphans is the sweep for bytes without rows (a dry run unless
	// repairing), with the ages it took them at: what is younger without
	// a row is only counted, as skipped.
	Orphans Report
	Ages    Ages
}

func (c *Collector) bytesMissing(ctx context.Context, dgst digest.Digest) (bool, error) {
	_, err := c.store.Stat(ctx, dgst)
	if errors.Is(err, blobstore.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat blob %s: %w", dgst, err)
	}
	return false, nil
}

// Check compares the database with the blob store. With repair, rows whose
// bytes are gone are marked 'missing' (invisible, so clients upload the
// blob again, and the next upload re-publishes the bytes), and orphaned
// bytes are deleted: those older than ages (see Sweep; DefaultAges is what
// Run uses, and only bytes that old are safe to delete while the registry
// serves).
func (c *Collector) Check(ctx context.Context, repair bool, ages Ages) (CheckReport, error) {
	rep := CheckReport{Repair: repair, Ages: ages}
	last := ""
	for {
		rows, err := c.db.BlobRows(ctx, last, sweepBatch)
		if err != nil {
			return rep, err
		}
		for _, b := range rows {
			last = b.Digest
			if b.State != db.BlobReady {
				continue
			}
			rep.BlobsChecked++
			dgst := digest.Digest(b.Digest)
			missing, err := c.bytesMissing(ctx, dgst)
			if err != nil {
				return rep, err
			}
			if !missing {
				continue
			}
			if !repair {
				rep.MissingBytes = append(rep.MissingBytes, b.Digest)
				continue
			}
			marked, affected, err := c.db.BlobMarkMissing(ctx, b.Digest, func(ctx context.Context) (bool, error) {
				return c.bytesMissing(ctx, dgst)
			})
			if err != nil {
				return rep, err
			}
			if marked {
				rep.MissingBytes = append(rep.MissingBytes, b.Digest)
				rep.Unpullable = append(rep.Unpullable, affected...)
			}
		}
		if len(rows) < sweepBatch {
			break
		}
	}
	orphans, err := c.Sweep(ctx, ages, !repair)
	rep.Orphans = orphans
	return rep, err
}
