package db_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

const (
	bigTags      = 10000
	bigManifests = 100 // tags spread over these, bigTags/bigManifests each
)

// bigRepository fills repository "big" with 10,000 tags over 100
// manifests, pushed (by SQL) between 0 and 99 days ago, a third of them
// pulled between 0 and 59 days ago, and returns the policy the tests run:
// keep the 500 most recent, anything pushed within 30 days or pulled
// within 14, and tags named keep-*.
func bigRepository(t *testing.T, d *db.DB, url string) db.RetentionPolicy {
	t.Helper()
	for m := range bigManifests {
		var tags []string
		for i := m; i < bigTags; i += bigManifests {
			name := fmt.Sprintf("t%05d", i)
			if i%97 == 0 {
				name = fmt.Sprintf("keep-%05d", i)
			}
			tags = append(tags, name)
		}
		pushBare(t, d, "big", dgstOf(fmt.Sprint("m", m)), tags...)
	}
	// Ages from a hash of the name, so that push order and name order
	// disagree; whole seconds apart, so that no two ages tie.
	dbtest.Exec(t, url, `
UPDATE tags SET updated_at = now() - (abs(hashtext(name)) % (99 * 86400)) * interval '1 second'`)
	// Pulls: a third of the tags, last pulled between 0 and 59 days ago.
	dbtest.Exec(t, url, `
INSERT INTO tag_pulls (repository_id, name, pull_count, last_pulled_at)
SELECT repository_id, name, 1, now() - (abs(hashtext(name || 'pull')) % (59 * 86400)) * interval '1 second'
FROM tags WHERE abs(hashtext(name || 'pulled')) % 3 = 0`)
	p := policy("big", "big")
	p.KeepLast, p.KeepPushedWithin, p.KeepPulledWithin, p.KeepTags = 500, 30*day, 14*day, []string{"^keep-"}
	if err := d.RetentionAdd(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	return p
}

// With nothing changing in between, the run removes exactly what the
// preview showed, 10,000 tags deep.
func TestRetentionBigPreviewEqualsRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	bigRepository(t, d, url)
	start := time.Now()
	preview, err := d.RetentionPreview(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	previewTook := time.Since(start)
	start = time.Now()
	run, err := d.RetentionRun(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("10,000 tags: preview %d removals in %v, run in %v", len(preview), previewTook, time.Since(start))
	if len(preview) < 1000 {
		t.Fatalf("only %d removals: the ages do not exercise the rules", len(preview))
	}
	if !slices.Equal(run, preview) {
		t.Fatalf("run (%d) differs from preview (%d)", len(run), len(preview))
	}
	left := dbtest.QueryInt(t, url, `SELECT count(*) FROM tags`)
	if left != int64(bigTags-len(run)) {
		t.Errorf("%d tags left, want %d", left, bigTags-len(run))
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM audit_log WHERE actor = 'retention:big' AND action = 'tag.untag'`); n != int64(len(run)) {
		t.Errorf("%d audit rows, want %d", n, len(run))
	}
	// What is left is what the policy keeps: nothing more to remove.
	if again, err := d.RetentionPreview(ctx, "big"); err != nil || len(again) != 0 {
		t.Errorf("a second preview found %d removals, %v", len(again), err)
	}
}

// While pushes create and move tags, a run never removes a tag pushed or
// moved after the preview (which the policy keeps: it was pushed within 30
// days), and removes nothing that the preview did not show except tags
// that new pushes ranked out of the 500 most recent.
func TestRetentionBigRunDuringPushes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	// The pushes that move a tag the run holds wait for the run's
	// transaction; on a loaded machine that can outlast the default 5 s
	// statement deadline, which is not what this test is about.
	d, err := db.Open(ctx, url, db.Options{MaxConns: 8, Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	bigRepository(t, d, url)

	// Every tag's age class at the preview: kept by a rule other than
	// keep-last, or not.
	keptRegardless := map[string]bool{}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `
SELECT name FROM tags t WHERE updated_at > now() - interval '30 days' OR name ~ '^keep-'
    OR EXISTS (SELECT 1 FROM tag_pulls p WHERE p.repository_id = t.repository_id AND p.name = t.name
               AND p.last_pulled_at > now() - interval '14 days')`)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range kept {
		keptRegardless[k] = true
	}
	var watermark int64
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM audit_log`).Scan(&watermark); err != nil {
		t.Fatal(err)
	}
	preview, err := d.RetentionPreview(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	previewed := map[string]bool{}
	var targets []string
	for _, r := range preview {
		previewed[r.Tag] = true
		targets = append(targets, r.Tag)
	}

	// Pushers: move previewed tags to another manifest, and create new
	// tags, until the run has finished. The run starts once they have
	// made 50 changes, so that it overlaps them.
	pusher := db.Actor{Name: "pusher"}
	stop := make(chan struct{})
	var pushes atomic.Int64
	started := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				tag := targets[rng.IntN(len(targets))]
				if i%3 == 0 {
					tag = fmt.Sprintf("new-%d-%d", w, i)
				}
				m := dgstOf(fmt.Sprint("m", rng.IntN(bigManifests)))
				_, err := d.ManifestStore(ctx, db.ManifestPut{Repository: "big", Digest: m,
					MediaType: "application/vnd.oci.image.index.v1+json", Payload: []byte(m), Tags: []string{tag}}, pusher)
				if err != nil {
					errs <- err
					return
				}
				if pushes.Add(1) >= 50 {
					once.Do(func() { close(started) })
				}
			}
		}()
	}
	select {
	case <-started:
	case err := <-errs:
		t.Fatal(err)
	}
	before := pushes.Load()
	run, err := d.RetentionRun(ctx, "big")
	during := pushes.Load() - before
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("preview %d, run %d removals; %d pushes before the run, %d during it", len(preview), len(run), before, during)

	// 1. No removed tag had been created or moved after the preview
	//    before the run removed it: the audit trail orders the two.
	var violations int64
	if err := conn.QueryRow(ctx, `
SELECT count(*) FROM audit_log u
WHERE u.actor = 'retention:big' AND u.action = 'tag.untag'
  AND EXISTS (SELECT 1 FROM audit_log p WHERE p.repository = u.repository AND p.tag = u.tag
              AND p.actor = 'pusher' AND p.id > $1 AND p.id < u.id)`, watermark).Scan(&violations); err != nil {
		t.Fatal(err)
	}
	if violations > 0 {
		t.Errorf("the run removed %d tags that were pushed or moved after the preview", violations)
	}
	// 2. The run removed only previewed tags, or tags that no rule but
	//    keep-last kept at the preview (new pushes ranked them out).
	for _, r := range run {
		if !previewed[r.Tag] && keptRegardless[r.Tag] {
			t.Errorf("the run removed %s, which the preview kept and only keep-last could have released", r.Tag)
		}
		if !previewed[r.Tag] && len(r.Tag) > 4 && r.Tag[:4] == "new-" {
			t.Errorf("the run removed %s, created after the preview", r.Tag)
		}
	}
	// 3. What the run removed is gone, and the audit trail says so.
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM audit_log WHERE actor = 'retention:big' AND action = 'tag.untag'`); n != int64(len(run)) {
		t.Errorf("%d untag audit rows, want %d", n, len(run))
	}
}
