package gc_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/gc"
)

// TestGCRace runs garbage collection against the traffic that could trip
// it: two registry instances on one database and blob store, each with a
// collector running continuously with no review delay and no retention,
// while clients upload the same layer (monolithic, chunked, mounted), HEAD
// it, push manifests that reference it, untag and delete them. Whatever a
// client was told exists must be there when it looks, and once the traffic
// stops, everything unreferenced must be gone and nothing referenced lost.
func TestGCRace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, collectAll, time.Hour)
	second := e.attach(collectAll, time.Hour)
	instances := []*env{e, second}

	layer := bytes.Repeat([]byte("shared layer "), 2000)
	layerDigest := digest.FromBytes(layer)
	configs := make([][]byte, 3)
	for i := range configs {
		configs[i] = []byte(fmt.Sprintf(`{"variant":%d}`, i))
	}

	ctx, stopGC := context.WithCancel(context.Background())
	var gcWG sync.WaitGroup
	var gcErrs []error
	var gcMu sync.Mutex
	var totals gc.Report
	for _, inst := range instances {
		gcWG.Add(1)
		go func() {
			defer gcWG.Done()
			for ctx.Err() == nil {
				rep, err := inst.collector.Pass(ctx, false)
				gcMu.Lock()
				totals.Add(rep)
				if err != nil && ctx.Err() == nil {
					gcErrs = append(gcErrs, err)
				}
				gcMu.Unlock()
			}
		}()
	}

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	var mu sync.Mutex
	var violations []string
	counts := map[string]int{}
	note := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		violations = append(violations, fmt.Sprintf(format, args...))
	}
	call := func(op, method, url string, body []byte, header ...string) (*http.Response, []byte) {
		req, _ := http.NewRequest(method, url, bytes.NewReader(body))
		for _, h := range header {
			k, v, _ := strings.Cut(h, ": ")
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			note("%s: %v", op, err)
			return &http.Response{Header: http.Header{}}, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		mu.Lock()
		counts[fmt.Sprintf("%s %d", op, resp.StatusCode)]++
		mu.Unlock()
		if resp.StatusCode >= 500 {
			note("%s: %d %s", op, resp.StatusCode, b)
		}
		return resp, b
	}
	upload := func(base, repo string, content []byte, chunked bool) bool {
		d := digest.FromBytes(content)
		if !chunked {
			resp, b := call("upload", "POST", base+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), content)
			if resp.StatusCode != 201 {
				note("monolithic upload of %s: %d %s", d, resp.StatusCode, b)
			}
			return resp.StatusCode == 201
		}
		resp, _ := call("upload start", "POST", base+"/v2/"+repo+"/blobs/uploads/", nil)
		loc := resp.Header.Get("Location")
		half := len(content) / 2
		call("upload chunk", "PATCH", base+loc, content[:half], fmt.Sprintf("Content-Range: 0-%d", half-1))
		resp, b := call("upload finish", "PUT", base+loc+"?digest="+d.String(), content[half:])
		if resp.StatusCode != 201 {
			note("chunked upload of %s: %d %s", d, resp.StatusCode, b)
		}
		return resp.StatusCode == 201
	}
	// pullable checks, right after a client was told the manifest exists,
	// that it and every blob it references can be pulled, byte for byte.
	pullable := func(base, repo string, manifest digest.Digest, blobs map[digest.Digest][]byte) {
		if resp, _ := call("verify manifest", "GET", base+"/v2/"+repo+"/manifests/"+manifest.String(), nil); resp.StatusCode != 200 {
			note("manifest %s was pushed but GET answers %d", manifest, resp.StatusCode)
		}
		for d, want := range blobs {
			resp, got := call("verify blob", "GET", base+"/v2/"+repo+"/blobs/"+d.String(), nil)
			if resp.StatusCode != 200 || !bytes.Equal(got, want) {
				note("blob %s of pushed manifest %s: GET %d: %.200s", d, manifest, resp.StatusCode, got)
			}
		}
	}

	// The race runs for 3 seconds, and on until it has seen both a
	// collection and a successful push: on a busy machine the collectors
	// can win every push of the first seconds. The bound only keeps a
	// broken registry from running for ever.
	start := time.Now()
	racing := func() bool {
		elapsed := time.Since(start)
		if elapsed < 3*time.Second {
			return true
		}
		mu.Lock()
		pushed := counts["push manifest 201"] > 0
		mu.Unlock()
		gcMu.Lock()
		collected := totals.BlobsDeleted > 0
		gcMu.Unlock()
		return !(pushed && collected) && elapsed < time.Minute
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			repo := fmt.Sprintf("race/w%d", w)
			for racing() {
				base := instances[rng.IntN(2)].api.URL
				switch op := rng.IntN(12); min(op, 6) {
				case 0:
					upload(base, repo, layer, false)
				case 1:
					upload(base, repo, layer, true)
				case 2: // mount from a neighbour, or fall back to uploading
					from := fmt.Sprintf("race/w%d", (w+1)%8)
					resp, _ := call("mount", "POST", base+"/v2/"+repo+"/blobs/uploads/?mount="+layerDigest.String()+"&from="+from, nil)
					if resp.StatusCode == 202 {
						call("cancel", "DELETE", base+resp.Header.Get("Location"), nil)
					}
				case 3, 6: // push an image as docker does: HEAD each blob, upload what is missing, push the manifest; retry when a blob was collected in between
					variant := rng.IntN(len(configs))
					cfg := configs[variant]
					body := imageManifest(digest.FromBytes(cfg), len(cfg), layerDigest, len(layer))
					for range 3 {
						for _, blob := range [][]byte{layer, cfg} {
							if resp, _ := call("head", "HEAD", base+"/v2/"+repo+"/blobs/"+digest.FromBytes(blob).String(), nil); resp.StatusCode != 200 {
								upload(base, repo, blob, rng.IntN(2) == 0)
							}
						}
						resp, b := call("push manifest", "PUT", base+"/v2/"+repo+"/manifests/t", body, "Content-Type: "+mtManifest)
						if resp.StatusCode == 201 {
							pullable(instances[rng.IntN(2)].api.URL, repo, digest.FromBytes(body),
								map[digest.Digest][]byte{layerDigest: layer, digest.FromBytes(cfg): cfg})
							break
						}
						// 400: a blob was collected between HEAD and push. That is
						// allowed (nothing was created); anything else is not.
						if resp.StatusCode != 400 || !strings.Contains(string(b), "MANIFEST_BLOB_UNKNOWN") {
							note("push manifest: %d %s", resp.StatusCode, b)
							break
						}
					}
				case 4:
					call("untag", "DELETE", base+"/v2/"+repo+"/tags/t", nil)
				case 5:
					variant := rng.IntN(len(configs))
					cfg := configs[variant]
					body := imageManifest(digest.FromBytes(cfg), len(cfg), layerDigest, len(layer))
					call("delete", "DELETE", base+"/v2/"+repo+"/manifests/"+digest.FromBytes(body).String(), nil)
				}
			}
		}()
	}
	wg.Wait()
	stopGC()
	gcWG.Wait()
	t.Logf("responses: %v", counts)
	t.Logf("collected while running: %d blobs deleted, %d manifests purged, %d links removed, %d kept",
		totals.BlobsDeleted, totals.ManifestsPurged, totals.LinksRemoved, totals.Kept)
	for _, err := range gcErrs {
		t.Errorf("collector: %v", err)
	}
	for _, v := range violations {
		t.Error(v)
	}
	if totals.BlobsDeleted == 0 || counts["push manifest 201"] == 0 {
		t.Errorf("the race did not exercise collection and pushes together: %+v", counts)
	}

	// Quiesce: the collectors were stopped in the middle of a pass, as a
	// crash would stop them; let their leases run out, collect whatever is
	// left, then check the invariants.
	e.exec(`UPDATE gc_queue SET leased_until = NULL`)
	for range 3 {
		e.pass()
	}
	if _, err := e.collector.Sweep(context.Background(), gc.Ages{}, false); err != nil {
		t.Fatal(err)
	}
	rows, err := e.db.BlobRows(context.Background(), "", 100000)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range rows {
		if b.State != db.BlobReady {
			t.Errorf("blob %s left in state %s", b.Digest, b.State)
			continue
		}
		content, err := os.ReadFile(e.blobFile(digest.Digest(b.Digest)))
		if err != nil {
			t.Errorf("ready blob %s has no bytes: %v", b.Digest, err)
			continue
		}
		if got := fmt.Sprintf("sha256:%x", sha256.Sum256(content)); got != b.Digest {
			t.Errorf("blob %s holds bytes of %s", b.Digest, got)
		}
	}
	// Every live manifest can be pulled with all its blobs.
	live := e.count(`SELECT count(*) FROM manifests WHERE deleted_at IS NULL`)
	unpullable := e.count(`
SELECT count(*) FROM manifests m JOIN manifest_blobs mb ON mb.manifest_id = m.id
LEFT JOIN repository_blobs rb ON rb.repository_id = m.repository_id AND rb.digest = mb.digest
LEFT JOIN blobs b ON b.digest = mb.digest AND b.state = 'ready'
WHERE m.deleted_at IS NULL AND (rb.digest IS NULL OR b.digest IS NULL)`)
	if unpullable != 0 {
		t.Errorf("%d blob references of live manifests are not pullable", unpullable)
	}
	// Nothing unreferenced is left.
	for what, sql := range map[string]string{
		"unreferenced blobs": `SELECT count(*) FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.digest = b.digest)`,
		"links no manifest of their repository needs": `SELECT count(*) FROM repository_blobs rb WHERE NOT EXISTS (
			SELECT 1 FROM manifest_blobs mb JOIN manifests m ON m.id = mb.manifest_id
			WHERE mb.digest = rb.digest AND m.repository_id = rb.repository_id)`,
		"tombstones past retention": `SELECT count(*) FROM manifests WHERE deleted_at IS NOT NULL`,
		"queued candidates":         `SELECT count(*) FROM gc_queue`,
	} {
		if n := e.count(sql); n != 0 {
			t.Errorf("%d %s after collection", n, what)
		}
	}
	var orphans int
	err = e.store.WalkBlobs(context.Background(), func(d digest.Digest, _ int64, _ time.Time) error {
		if known, _ := e.db.BlobsKnown(context.Background(), []string{d.String()}); !known[d.String()] {
			orphans++
		}
		return nil
	})
	if err != nil || orphans != 0 {
		t.Errorf("%d blobs in the store without a row (%v)", orphans, err)
	}
	t.Logf("after quiescence: %d live manifests, %d blobs", live, len(rows))
}
