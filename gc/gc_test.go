package gc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/gc"
)

// collectAll is a policy with no delays: everything unreferenced is
// collected on the next pass.
var collectAll = db.GCPolicy{}

func TestUnreferencedBlobIsCollected(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	d := e.pushBlob("repo", []byte("never referenced"))
	rep := e.pass()
	if rep.BlobsDeleted != 1 || rep.LinksRemoved != 1 || rep.BlobBytes != int64(len("never referenced")) {
		t.Fatalf("report %+v", rep)
	}
	if e.hasBytes(d) || e.count(`SELECT count(*) FROM blobs`) != 0 || e.count(`SELECT count(*) FROM repository_blobs`) != 0 {
		t.Fatal("blob bytes, row or link left behind")
	}
	e.expect(404, "HEAD", "/v2/repo/blobs/"+d.String(), nil)
	if n := e.count(`SELECT count(*) FROM gc_queue`); n != 0 {
		t.Fatalf("%d candidates left in the queue", n)
	}
	if n := e.count(`SELECT count(*) FROM audit_log WHERE actor = 'gc' AND action IN ('blob.delete', 'blob.unlink')`); n != 2 {
		t.Fatalf("%d gc audit rows, want unlink + delete", n)
	}
}

func TestReviewDelayProtectsFreshBlobs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, db.GCPolicy{ReviewDelay: time.Hour}, time.Hour)
	d := e.pushBlob("repo", []byte("fresh"))
	if rep := e.pass(); rep.Collected() {
		t.Fatalf("collected a fresh blob: %+v", rep)
	}
	e.expect(200, "HEAD", "/v2/repo/blobs/"+d.String(), nil)
	if n := e.count(`SELECT count(*) FROM gc_queue WHERE review_after > now() + interval '50 minutes'`); n != 1 {
		t.Fatalf("the blob is not queued for review in an hour (%d)", n)
	}
}

func TestReferencedBlobsStay(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	img := e.pushImage("repo", "v1", "kept")
	if rep := e.pass(); rep.Collected() || rep.Kept != 2 {
		t.Fatalf("report %+v, want both blobs kept", rep)
	}
	e.expect(200, "GET", "/v2/repo/manifests/"+img.manifest.String(), nil)
	e.expect(200, "GET", "/v2/repo/blobs/"+img.config.String(), nil)
	e.expect(200, "GET", "/v2/repo/blobs/"+img.layer.String(), nil)
	if n := e.count(`SELECT count(*) FROM gc_queue`); n != 0 {
		t.Fatalf("%d candidates left after they were found referenced", n)
	}
}

// A link in a repository that has no manifest using the blob goes, while
// the blob stays for the repository whose manifest references it.
func TestStaleLinkRemovedBlobKept(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	img := e.pushImage("app", "v1", "shared")
	e.pushBlob("scratch", []byte("layer shared"))
	rep := e.pass()
	if rep.LinksRemoved != 1 || rep.BlobsDeleted != 0 {
		t.Fatalf("report %+v", rep)
	}
	e.expect(404, "HEAD", "/v2/scratch/blobs/"+img.layer.String(), nil)
	e.expect(200, "GET", "/v2/app/blobs/"+img.layer.String(), nil)
}

func TestDeletedManifestPurgedAfterRetention(t *testing.T) {
	t.Parallel()
	t.Run("within retention", func(t *testing.T) {
		e := newEnv(t, db.GCPolicy{TombstoneRetention: time.Hour}, time.Hour)
		img := e.pushImage("repo", "v1", "retained")
		e.expect(202, "DELETE", "/v2/repo/manifests/"+img.manifest.String(), nil)
		if rep := e.pass(); rep.Collected() {
			t.Fatalf("collected within retention: %+v", rep)
		}
		// The tombstone keeps the blobs, so a re-push brings it all back.
		e.pushManifest("repo", "v1", img)
		e.expect(200, "GET", "/v2/repo/blobs/"+img.layer.String(), nil)
	})
	t.Run("after retention", func(t *testing.T) {
		e := newEnv(t, collectAll, time.Hour)
		img := e.pushImage("repo", "v1", "purged")
		e.expect(202, "DELETE", "/v2/repo/manifests/"+img.manifest.String(), nil)
		rep := e.pass()
		if rep.ManifestsPurged != 1 || rep.BlobsDeleted != 2 {
			t.Fatalf("report %+v, want the manifest purged and both blobs deleted in one pass", rep)
		}
		if e.hasBytes(img.config) || e.hasBytes(img.layer) || e.count(`SELECT count(*) FROM manifests`) != 0 {
			t.Fatal("left behind after purge")
		}
	})
}

// Pushing a deleted manifest again before the collector gets to it saves
// the manifest and its blobs.
func TestRepushSavesTombstone(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	img := e.pushImage("repo", "v1", "saved")
	e.expect(202, "DELETE", "/v2/repo/manifests/"+img.manifest.String(), nil)
	e.pushManifest("repo", "v1", img)
	if rep := e.pass(); rep.Collected() {
		t.Fatalf("collected a re-pushed manifest: %+v", rep)
	}
	e.expect(200, "GET", "/v2/repo/manifests/v1", nil)
	e.expect(200, "GET", "/v2/repo/blobs/"+img.layer.String(), nil)
}

func TestUntaggedManifests(t *testing.T) {
	t.Parallel()
	t.Run("kept by default", func(t *testing.T) {
		e := newEnv(t, collectAll, time.Hour)
		img := e.pushImage("repo", "", "untagged")
		if rep := e.pass(); rep.Collected() {
			t.Fatalf("collected an untagged manifest without the untagged policy: %+v", rep)
		}
		e.expect(200, "GET", "/v2/repo/manifests/"+img.manifest.String(), nil)
	})
	t.Run("collected when enabled, unless something needs it", func(t *testing.T) {
		e := newEnv(t, db.GCPolicy{CollectUntagged: true, TombstoneRetention: time.Hour}, time.Hour)
		tagged := e.pushImage("repo", "v1", "tagged")
		loose := e.pushImage("repo", "", "loose")
		sig := e.pushImage("repo", "", "signature", tagged.manifest) // attached to a live subject
		child := e.pushImage("repo", "", "child")
		idx := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
			`{"mediaType":"` + mtManifest + `","digest":"` + child.manifest.String() + `","size":1}]}`)
		e.expect(201, "PUT", "/v2/repo/manifests/multi", idx, "Content-Type: application/vnd.oci.image.index.v1+json")
		retagged := e.pushImage("repo", "moving", "moved away")
		e.pushImage("repo", "moving", "moved to") // "moved away" loses its only tag

		rep := e.pass()
		if rep.ManifestsUntagged != 2 {
			t.Fatalf("report %+v, want the loose manifest and the one the tag moved away from", rep)
		}
		for _, gone := range []image{loose, retagged} {
			e.expect(404, "GET", "/v2/repo/manifests/"+gone.manifest.String(), nil)
		}
		for _, kept := range []image{tagged, sig, child} {
			e.expect(200, "GET", "/v2/repo/manifests/"+kept.manifest.String(), nil)
		}
		// Within the retention the collected manifest can be restored.
		e.expect(201, "PUT", "/v2/repo/tags/back", []byte(`{"digest":"`+loose.manifest.String()+`"}`))
	})
	t.Run("a subject with referrers stays when untagged", func(t *testing.T) {
		e := newEnv(t, db.GCPolicy{CollectUntagged: true, TombstoneRetention: time.Hour}, time.Hour)
		subject := e.pushImage("repo", "v1", "subject")
		e.pushImage("repo", "", "sbom", subject.manifest)
		e.expect(202, "DELETE", "/v2/repo/tags/v1", nil)
		if rep := e.pass(); rep.ManifestsUntagged != 0 {
			t.Fatalf("collected a subject with a live referrer: %+v", rep)
		}
		e.expect(200, "GET", "/v2/repo/manifests/"+subject.manifest.String(), nil)
	})
}

func TestAbandonedUploads(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, 0)
	resp, _ := e.do("POST", "/v2/repo/blobs/uploads/", nil)
	loc := resp.Header.Get("Location")
	e.expect(202, "PATCH", loc, []byte("partial data"))
	uploadDir := filepath.Join(e.blobDir, "uploads", filepath.Base(loc))
	if _, err := os.Stat(uploadDir); err != nil {
		t.Fatal(err)
	}
	rep := e.pass()
	if rep.UploadsExpired != 1 || rep.UploadBytes != int64(len("partial data")) {
		t.Fatalf("report %+v", rep)
	}
	e.expect(404, "GET", loc, nil)
	if _, err := os.Stat(uploadDir); !os.IsNotExist(err) {
		t.Fatalf("upload data left behind: %v", err)
	}

	active := newEnv(t, collectAll, time.Hour)
	resp, _ = active.do("POST", "/v2/repo/blobs/uploads/", nil)
	if rep := active.pass(); rep.UploadsExpired != 0 {
		t.Fatalf("expired an active upload: %+v", rep)
	}
	active.expect(204, "GET", resp.Header.Get("Location"), nil)
}

// An upload of a blob the collector has marked for deletion takes it back:
// the bytes stay (or are published again) and nothing is deleted.
func TestUploadRevivesBlobBeingCollected(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	content := []byte("contested blob")
	d := e.pushBlob("repo", content)
	cands, err := e.db.GCClaim(context.Background(), 10, time.Minute)
	if err != nil || len(cands) != 1 {
		t.Fatalf("claim: %v %v", cands, err)
	}
	rev, err := e.db.GCReviewBlob(context.Background(), cands[0], false)
	if err != nil || !rev.Collect {
		t.Fatalf("review: %+v %v", rev, err)
	}
	e.expect(404, "HEAD", "/v2/repo/blobs/"+d.String(), nil) // 'deleting' is invisible
	e.pushBlob("repo", content)                              // revives it under the row lock
	deleted, _, err := e.db.GCDeleteBlob(context.Background(), cands[0], func(context.Context) error {
		t.Fatal("bytes deleted although an upload revived the blob")
		return nil
	})
	if err != nil || deleted {
		t.Fatalf("delete: %v %v", deleted, err)
	}
	if got := e.expect(200, "GET", "/v2/repo/blobs/"+d.String(), nil); string(got) != string(content) {
		t.Fatalf("GET returned %q", got)
	}
}

// If the collector deletes the bytes first, the upload that waited on the
// row lock publishes them again.
func TestUploadAfterCollectionRepublishes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	content := []byte("collected then uploaded")
	d := e.pushBlob("repo", content)
	e.pass()
	if e.hasBytes(d) {
		t.Fatal("blob not collected")
	}
	e.pushBlob("repo", content)
	if got := e.expect(200, "GET", "/v2/repo/blobs/"+d.String(), nil); string(got) != string(content) {
		t.Fatalf("GET returned %q", got)
	}
}

// A collector that stops between marking a blob and deleting it (crash,
// or the store failing) leaves a 'deleting' row that no client sees and a
// later pass finishes.
func TestInterruptedDeletionIsFinished(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	d := e.pushBlob("repo", []byte("interrupted"))
	cands, _ := e.db.GCClaim(context.Background(), 10, 0) // a lease that has already run out
	if _, err := e.db.GCReviewBlob(context.Background(), cands[0], false); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("store unavailable")
	if _, _, err := e.db.GCDeleteBlob(context.Background(), cands[0], func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("delete error %v", err)
	}
	if !e.hasBytes(d) || e.count(`SELECT count(*) FROM blobs WHERE state = 'deleting'`) != 1 {
		t.Fatal("a failed deletion must leave the bytes and the 'deleting' row")
	}
	e.expect(404, "HEAD", "/v2/repo/blobs/"+d.String(), nil)
	if rep := e.pass(); rep.BlobsDeleted != 1 {
		t.Fatalf("the next pass did not finish the deletion: %+v", rep)
	}
	if e.hasBytes(d) || e.count(`SELECT count(*) FROM blobs`) != 0 {
		t.Fatal("left behind")
	}
}

func TestSweepRemovesOrphans(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, 0)
	ctx := context.Background()
	// Bytes published without a row, as a crash between publish and commit
	// leaves them, and upload data without a session.
	orphan := []byte("orphaned bytes")
	od := digest.FromBytes(orphan)
	state, _, err := e.store.AppendChunk(ctx, "m-orphan", nil, bytes.NewReader(orphan))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.Publish(ctx, "m-orphan", state, od); err != nil {
		t.Fatal(err)
	}
	kept := e.pushImage("repo", "v1", "kept by the sweep")
	rep, err := e.collector.Sweep(ctx, gc.Ages{}, true)
	if err != nil || rep.OrphanBlobs != 1 || rep.OrphanUploads != 1 || !e.hasBytes(od) {
		t.Fatalf("dry run: %+v %v", rep, err)
	}
	rep, err = e.collector.Sweep(ctx, gc.Ages{}, false)
	if err != nil || rep.OrphanBlobs != 1 || rep.OrphanBytes != int64(len(orphan)) || rep.OrphanUploads != 1 {
		t.Fatalf("sweep: %+v %v", rep, err)
	}
	if e.hasBytes(od) {
		t.Fatal("orphaned bytes left")
	}
	if _, err := os.Stat(filepath.Join(e.blobDir, "uploads", "m-orphan")); !os.IsNotExist(err) {
		t.Fatal("orphaned upload data left")
	}
	e.expect(200, "GET", "/v2/repo/blobs/"+kept.layer.String(), nil)
	if e.count(`SELECT count(*) FROM blobs WHERE state <> 'ready'`) != 0 {
		t.Fatal("the sweep left a claim row behind")
	}
}

// Bytes without a row that are younger than the sweep's ages are left
// alone — they may belong to an upload in progress — but counted, with
// their size, so that a check right after a crash does not say "nothing".
func TestSweepCountsWhatIsTooYoung(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	ctx := context.Background()
	orphan := []byte("published, never committed")
	od := digest.FromBytes(orphan)
	state, _, err := e.store.AppendChunk(ctx, "m-orphan", nil, bytes.NewReader(orphan))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.Publish(ctx, "m-orphan", state, od); err != nil {
		t.Fatal(err)
	}
	young := []byte("staging of a monolithic upload")
	if _, _, err := e.store.AppendChunk(ctx, "m-young", nil, bytes.NewReader(young)); err != nil {
		t.Fatal(err)
	}
	// What rows describe is not counted: a pushed image, a session in progress.
	e.pushImage("repo", "v1", "described")
	resp, _ := e.do("POST", "/v2/repo/blobs/uploads/", nil)
	e.expect(202, "PATCH", resp.Header.Get("Location"), []byte("in progress"))

	hour := gc.Ages{Blobs: time.Hour, Uploads: time.Hour}
	rep, err := e.collector.Sweep(ctx, hour, false)
	if err != nil {
		t.Fatal(err)
	}
	want := gc.Report{SkippedBlobs: 1, SkippedBlobBytes: int64(len(orphan)),
		SkippedUploads: 2, SkippedUploadBytes: int64(len(orphan) + len(young))} // m-orphan keeps its data until discarded
	if rep.SkippedBlobs != want.SkippedBlobs || rep.SkippedBlobBytes != want.SkippedBlobBytes ||
		rep.SkippedUploads != want.SkippedUploads || rep.SkippedUploadBytes != want.SkippedUploadBytes || rep.Collected() {
		t.Fatalf("sweep with an hour's age: %+v, want %+v and nothing collected", rep, want)
	}
	if !e.hasBytes(od) {
		t.Fatal("the sweep deleted bytes younger than its age")
	}
	// The ages apart: blobs an hour, upload data none.
	rep, err = e.collector.Sweep(ctx, gc.Ages{Blobs: time.Hour}, true)
	if err != nil || rep.SkippedBlobs != 1 || rep.SkippedUploads != 0 || rep.OrphanUploads != 2 || rep.OrphanBlobs != 0 {
		t.Fatalf("dry sweep with young blobs, old uploads: %+v %v", rep, err)
	}
	// Check passes its ages on, and with none finds the orphans.
	check, err := e.collector.Check(ctx, false, hour)
	if err != nil || check.Orphans.SkippedBlobs != 1 || check.Orphans.OrphanBlobs != 0 || check.Ages != hour {
		t.Fatalf("check with an hour's age: %+v %v", check, err)
	}
	check, err = e.collector.Check(ctx, false, gc.Ages{})
	if err != nil || check.Orphans.SkippedBlobs+check.Orphans.SkippedUploads != 0 ||
		check.Orphans.OrphanBlobs != 1 || check.Orphans.OrphanBytes != int64(len(orphan)) || check.Orphans.OrphanUploads != 2 {
		t.Fatalf("check with no age: %+v %v", check.Orphans, err)
	}
	var total gc.Report
	total.Add(rep)
	total.Add(rep)
	if total.SkippedBlobs != 2 || total.SkippedBlobBytes != 2*rep.SkippedBlobBytes {
		t.Fatalf("Add lost the skipped counts: %+v", total)
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	img := e.pushImage("repo", "v1", "dry")
	e.expect(202, "DELETE", "/v2/repo/manifests/"+img.manifest.String(), nil)
	d := e.pushBlob("repo", []byte("loose"))
	dry, err := e.collector.Pass(context.Background(), true)
	if err != nil || dry.ManifestsPurged != 1 || dry.BlobsDeleted != 1 || len(dry.Items) == 0 {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	if !e.hasBytes(d) || e.count(`SELECT count(*) FROM manifests`) != 1 || e.count(`SELECT count(*) FROM gc_queue WHERE leased_until IS NOT NULL`) != 0 {
		t.Fatal("the dry run changed something")
	}
	if rep := e.pass(); rep.ManifestsPurged != 1 || rep.BlobsDeleted != 3 {
		t.Fatalf("real pass %+v", rep)
	}
}

func TestCheckFindsAndRepairs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, db.GCPolicy{ReviewDelay: time.Hour, TombstoneRetention: time.Hour}, time.Hour)
	ctx := context.Background()
	img := e.pushImage("repo", "v1", "checked")
	if err := os.Remove(e.blobFile(img.layer)); err != nil {
		t.Fatal(err)
	}
	rep, err := e.collector.Check(ctx, false, e.collector.DefaultAges())
	if err != nil || len(rep.MissingBytes) != 1 || rep.MissingBytes[0] != img.layer.String() {
		t.Fatalf("check: %+v %v", rep, err)
	}
	e.expect(200, "HEAD", "/v2/repo/blobs/"+img.layer.String(), nil) // unchanged without --repair
	rep, err = e.collector.Check(ctx, true, e.collector.DefaultAges())
	if err != nil || len(rep.Unpullable) != 1 || rep.Unpullable[0] != "repo@"+img.manifest.String() {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	// Clients see the blob as absent, push it again, and that heals it.
	e.expect(404, "HEAD", "/v2/repo/blobs/"+img.layer.String(), nil)
	e.pushBlob("repo", []byte("layer checked"))
	e.expect(200, "GET", "/v2/repo/blobs/"+img.layer.String(), nil)
	if rep, _ := e.collector.Check(ctx, false, e.collector.DefaultAges()); len(rep.MissingBytes) != 0 {
		t.Fatalf("still missing after re-upload: %+v", rep)
	}
}

// Uploading (or mounting) a blob again restarts its review delay: a client
// just told "201 Created" must get the delay in full, even when an old,
// unreferenced link was there before.
func TestReuploadRefreshesProtection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, db.GCPolicy{ReviewDelay: time.Hour}, time.Hour)
	content := []byte("old link, new upload")
	d := e.pushBlob("repo", content)
	e.exec(`UPDATE repository_blobs SET created_at = now() - interval '2 hours'`)
	e.exec(`UPDATE gc_queue SET review_after = now() - interval '1 hour'`)
	e.pushBlob("repo", content) // the upload the client relies on
	e.exec(`UPDATE gc_queue SET review_after = now() - interval '1 hour'`)
	if rep := e.pass(); rep.Collected() {
		t.Fatalf("collected a blob uploaded a moment ago: %+v", rep)
	}
	e.expect(200, "HEAD", "/v2/repo/blobs/"+d.String(), nil)

	e.pushBlob("source", []byte("mounted"))
	md := digest.FromBytes([]byte("mounted"))
	e.exec(`UPDATE repository_blobs SET created_at = now() - interval '2 hours'`)
	e.expect(201, "POST", "/v2/repo/blobs/uploads/?mount="+md.String()+"&from=source", nil)
	if n := e.count(`SELECT count(*) FROM gc_queue WHERE key = $1`, md.String()); n != 1 {
		t.Fatalf("a mount did not queue its blob for review (%d)", n)
	}
	e.exec(`UPDATE gc_queue SET review_after = now() - interval '1 hour'`)
	e.pass()
	e.expect(200, "HEAD", "/v2/repo/blobs/"+md.String(), nil)
	e.expect(404, "HEAD", "/v2/source/blobs/"+md.String(), nil) // the old link was stale
}

// When an index or a subject goes, the manifests it kept become candidates
// again: children of a deleted index, referrers of a deleted subject.
func TestDeletedManifestsReleaseDependents(t *testing.T) {
	t.Parallel()
	e := newEnv(t, db.GCPolicy{CollectUntagged: true, TombstoneRetention: time.Hour}, time.Hour)
	child := e.pushImage("repo", "", "child of a deleted index")
	idx := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		`{"mediaType":"` + mtManifest + `","digest":"` + child.manifest.String() + `","size":1}]}`)
	e.expect(201, "PUT", "/v2/repo/manifests/"+digest.FromBytes(idx).String(), idx, "Content-Type: application/vnd.oci.image.index.v1+json")
	subject := e.pushImage("repo", "", "a subject")
	sbom := e.pushImage("repo", "", "sbom of a deleted subject", subject.manifest)
	// The index is untagged: the collector deletes it, then its child; the
	// client deletes the subject, then the collector deletes its referrer.
	e.expect(202, "DELETE", "/v2/repo/manifests/"+subject.manifest.String(), nil)
	for range 3 {
		e.pass()
	}
	for _, gone := range []digest.Digest{digest.FromBytes(idx), child.manifest, sbom.manifest} {
		e.expect(404, "GET", "/v2/repo/manifests/"+gone.String(), nil)
	}
}

func TestSweepOncePerInterval(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	ctx := context.Background()
	e.store.AppendChunk(ctx, "m-orphan", nil, bytes.NewReader([]byte("x")))
	if rep, err := e.collector.SweepIfDue(ctx, time.Hour, false); err != nil || rep.OrphanUploads != 0 {
		t.Fatalf("the first sweep: %+v %v (the upload is younger than the timeout)", rep, err)
	}
	if n := e.count(`SELECT count(*) FROM gc_state WHERE name = 'sweep'`); n != 1 {
		t.Fatal("the sweep was not recorded")
	}
	// Another replica, or a restart, within the interval does not sweep.
	e.exec(`UPDATE gc_state SET at = now() - interval '30 minutes'`)
	other := e.attach(collectAll, 0)
	if rep, err := other.collector.SweepIfDue(ctx, time.Hour, false); err != nil || rep.OrphanUploads != 0 {
		t.Fatalf("swept again within the interval: %+v %v", rep, err)
	}
	e.exec(`UPDATE gc_state SET at = now() - interval '2 hours'`)
	if rep, err := other.collector.SweepIfDue(ctx, time.Hour, false); err != nil || rep.OrphanUploads != 1 {
		t.Fatalf("a sweep due after the interval: %+v %v", rep, err)
	}
}

// The batched path keeps the semantics of one blob at a time: in one batch,
// a blob an upload revived between the two steps is left alone, a blob
// whose bytes cannot be deleted keeps its 'deleting' row and its bytes and
// is finished by a later pass, and the others go, bytes and rows.
func TestBatchRevivedFailedDeleted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	ctx := context.Background()
	revived := e.pushBlob("repo", []byte("revived"))
	failing := e.pushBlob("repo", []byte("failing"))
	var gone []digest.Digest
	for i := range 5 {
		gone = append(gone, e.pushBlob("repo", []byte(fmt.Sprintf("gone %d", i))))
	}
	cands, err := e.db.GCClaim(ctx, 100, 0) // a lease that has already run out
	if err != nil || len(cands) != 7 {
		t.Fatalf("claim: %v %v", cands, err)
	}
	revs, err := e.db.GCReviewBlobs(ctx, cands, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, rev := range revs {
		if !rev.Collect || len(rev.UnlinkedFrom) != 1 {
			t.Fatalf("review: %+v", rev)
		}
	}
	e.expect(404, "HEAD", "/v2/repo/blobs/"+revived.String(), nil) // 'deleting' is invisible
	e.pushBlob("repo", []byte("revived"))                          // revives it under the row lock
	boom := errors.New("store unavailable")
	res, err := e.db.GCDeleteBlobs(ctx, cands, 4, func(_ context.Context, dgst string) error {
		switch dgst {
		case revived.String():
			t.Error("bytes deleted although an upload revived the blob")
		case failing.String():
			return boom
		}
		return e.store.Delete(ctx, digest.Digest(dgst))
	})
	if err != nil {
		t.Fatal(err)
	}
	deleted := 0
	for _, r := range res {
		switch {
		case r.Digest == revived.String() && (r.Deleted || r.Err != nil):
			t.Errorf("revived blob: %+v", r)
		case r.Digest == failing.String() && (r.Deleted || !errors.Is(r.Err, boom)):
			t.Errorf("failing blob: %+v", r)
		case r.Deleted:
			deleted++
		}
	}
	if deleted != len(gone) {
		t.Fatalf("%d deleted, want %d: %+v", deleted, len(gone), res)
	}
	for _, d := range gone {
		if e.hasBytes(d) || e.count(`SELECT count(*) FROM blobs WHERE digest = $1`, d.String()) != 0 {
			t.Errorf("blob %s left behind", d)
		}
	}
	if got := e.expect(200, "GET", "/v2/repo/blobs/"+revived.String(), nil); string(got) != "revived" {
		t.Fatalf("GET revived blob returned %q", got)
	}
	if !e.hasBytes(failing) || e.count(`SELECT count(*) FROM blobs WHERE digest = $1 AND state = 'deleting'`, failing.String()) != 1 ||
		e.count(`SELECT count(*) FROM gc_queue WHERE key = $1`, failing.String()) != 1 {
		t.Fatal("a failed deletion must leave the bytes, the 'deleting' row and the candidate")
	}
	if n := e.count(`SELECT count(*) FROM audit_log WHERE action = 'blob.delete'`); n != int64(len(gone)) {
		t.Errorf("%d blob.delete audit rows, want %d", n, len(gone))
	}
	// The next pass finishes the failed deletion, and collects the revived
	// blob, unreferenced and (with no review delay) unprotected.
	if rep := e.pass(); rep.BlobsDeleted != 2 {
		t.Fatalf("the next pass did not finish the failed deletion: %+v", rep)
	}
	if e.hasBytes(failing) || e.hasBytes(revived) || e.count(`SELECT count(*) FROM blobs`) != 0 {
		t.Fatal("failed deletion left behind")
	}
}
