package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/handlers"
)

// TestTagRace runs the race the reference registry refused to support: two
// registry instances on one database, many clients pushing manifests A and
// B, moving one tag between them, untagging it with and without If-Match,
// deleting A and B by digest and pushing them again, all at once. When it
// settles, the metadata must be consistent and every conditional change
// must have applied exactly to the state its client saw.
func TestTagRace(t *testing.T) {
	t.Parallel()
	url := dbtest.NewURL(t)
	blobDir := t.TempDir()
	var servers []string
	for range 2 {
		d, err := db.Open(t.Context(), url, db.Options{MaxConns: 8})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		store, err := blobstore.NewFS(blobDir)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(handlers.New(handlers.Options{DB: d, Blobs: store,
			Logger: slog.New(slog.NewTextHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelError}))}))
		t.Cleanup(srv.Close)
		servers = append(servers, srv.URL)
	}
	bodies := map[string][]byte{"A": imageVia(t, servers[0], "race A"), "B": imageVia(t, servers[0], "race B")}
	digests := map[string]string{"A": digest.FromBytes(bodies["A"]).String(), "B": digest.FromBytes(bodies["B"]).String()}

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	type conditional struct {
		requestID string
		expected  string // where the client saw the tag; "" = absent
		op        string
	}
	var (
		mu           sync.Mutex
		conditionals []conditional // successful conditional changes
		refused      []string      // request ids of 412s
		failures     []string
		counts       = map[string]int{}
	)
	record := func(op string, resp *http.Response, body []byte, ok ...int) bool {
		mu.Lock()
		defer mu.Unlock()
		counts[fmt.Sprintf("%s %d", op, resp.StatusCode)]++
		for _, s := range ok {
			if resp.StatusCode == s {
				return true
			}
		}
		failures = append(failures, fmt.Sprintf("%s: %d %s", op, resp.StatusCode, body))
		return false
	}
	send := func(method, u string, body []byte, header ...string) (*http.Response, []byte) {
		req, _ := http.NewRequest(method, u, bytes.NewReader(body))
		for _, h := range header {
			k, v, _ := strings.Cut(h, ": ")
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			mu.Lock()
			failures = append(failures, fmt.Sprintf("%s %s: %v", method, u, err))
			mu.Unlock()
			return &http.Response{StatusCode: 0, Header: http.Header{}}, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	// current reads where the tag points, as a client about to make a
	// conditional change would.
	current := func(base string) string {
		resp, _ := send("HEAD", base+"/v2/race/manifests/t", nil)
		if resp.StatusCode == http.StatusOK {
			return resp.Header.Get("Docker-Content-Digest")
		}
		return ""
	}

	// The race runs for 3 s and, on a loaded machine where 3 s is not
	// enough, until the clients have made 600 attempts (a quiet machine
	// sends about 7,000 requests in the 3 s); the guard only stops a hang.
	deadline := time.Now().Add(3 * time.Second)
	guard := time.Now().Add(3 * time.Minute)
	var sent atomic.Int64
	running := func() bool {
		now := time.Now()
		return now.Before(deadline) || (sent.Load() < 600 && now.Before(guard))
	}
	var wg sync.WaitGroup
	for worker := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(worker), 42))
			for running() {
				sent.Add(1)
				base := servers[rng.IntN(2)]
				which := []string{"A", "B"}[rng.IntN(2)]
				ct := "Content-Type: " + mtManifest
				switch op := rng.IntN(7); op {
				case 0: // push by digest (revives a deleted manifest)
					resp, b := send("PUT", base+"/v2/race/manifests/"+digests[which], bodies[which], ct)
					record("push by digest", resp, b, 201)
				case 1: // move the tag unconditionally
					resp, b := send("PUT", base+"/v2/race/manifests/t", bodies[which], ct)
					record("move", resp, b, 201)
				case 2: // move the tag conditionally on what we saw
					seen := current(base)
					cond := "If-None-Match: *"
					if seen != "" {
						cond = `If-Match: "` + seen + `"`
					}
					resp, b := send("PUT", base+"/v2/race/manifests/t", bodies[which], ct, cond)
					if record("conditional move", resp, b, 201, 412) {
						mu.Lock()
						if resp.StatusCode == 201 {
							conditionals = append(conditionals, conditional{resp.Header.Get("X-Request-Id"), seen, "move"})
						} else {
							refused = append(refused, resp.Header.Get("X-Request-Id"))
						}
						mu.Unlock()
					}
				case 3: // untag conditionally, on either route
					seen := current(base)
					if seen == "" {
						continue
					}
					path := []string{"/v2/race/tags/t", "/v2/race/manifests/t"}[rng.IntN(2)]
					resp, b := send("DELETE", base+path, nil, `If-Match: "`+seen+`"`)
					if record("conditional untag", resp, b, 202, 412) {
						mu.Lock()
						if resp.StatusCode == 202 {
							conditionals = append(conditionals, conditional{resp.Header.Get("X-Request-Id"), seen, "untag"})
						} else {
							refused = append(refused, resp.Header.Get("X-Request-Id"))
						}
						mu.Unlock()
					}
				case 4: // untag unconditionally
					resp, b := send("DELETE", base+"/v2/race/tags/t", nil)
					record("untag", resp, b, 202, 404)
				case 5: // delete by digest
					resp, b := send("DELETE", base+"/v2/race/manifests/"+digests[which], nil)
					record("delete", resp, b, 202, 404)
				case 6: // restore the tag to a digest, which may be deleted
					resp, b := send("PUT", base+"/v2/race/tags/t", []byte(`{"digest":"`+digests[which]+`"}`))
					record("restore", resp, b, 200, 201, 404)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("responses: %v", counts)
	for _, f := range failures {
		t.Error(f)
	}

	// Invariant: no tag points at a deleted manifest.
	if n := dbtest.QueryInt(t, url, `
SELECT count(*) FROM tags t JOIN manifests m ON m.id = t.manifest_id WHERE m.deleted_at IS NOT NULL`); n != 0 {
		t.Errorf("%d tags point at deleted manifests", n)
	}
	// Invariant: deleted manifests are unreachable, live ones reachable.
	for name, d := range digests {
		live := dbtest.QueryInt(t, url, `SELECT count(*) FROM manifests WHERE digest = $1 AND deleted_at IS NULL`, d)
		resp, _ := send("GET", servers[1]+"/v2/race/manifests/"+d, nil)
		if (live == 1) != (resp.StatusCode == 200) {
			t.Errorf("manifest %s: live=%d but GET answers %d", name, live, resp.StatusCode)
		}
	}
	// Invariant: the tag list is exactly the tags that resolve.
	resp, body := send("GET", servers[0]+"/v2/race/tags/list", nil)
	var list struct{ Tags []string }
	json.Unmarshal(body, &list)
	final := current(servers[1])
	if listed := len(list.Tags) == 1 && list.Tags[0] == "t"; listed != (final != "") {
		t.Errorf("tag list %v (status %d) but the tag resolves to %q", list.Tags, resp.StatusCode, final)
	}

	// Invariant: the history replays to the final state, each change
	// starting where the previous one ended.
	history := readHistory(t, url)
	state := ""
	for _, h := range history {
		if h.old != state {
			t.Errorf("history entry %d (%s) starts from %q but the tag was at %q", h.id, h.action, h.old, state)
		}
		state = h.new
	}
	if state != final {
		t.Errorf("history replays to %q, the tag is at %q", state, final)
	}
	// Invariant: every successful conditional change applied to exactly the
	// state its client saw, and refused ones changed nothing.
	byRequest := map[string]historyRow{}
	for _, h := range history {
		byRequest[h.requestID] = h
	}
	for _, c := range conditionals {
		h, ok := byRequest[c.requestID]
		if !ok {
			if c.op == "move" && c.expected != "" { // a move onto the same digest changes nothing
				continue
			}
			t.Errorf("conditional %s %s succeeded but left no history", c.op, c.requestID)
			continue
		}
		if h.old != c.expected {
			t.Errorf("conditional %s expected the tag at %q but changed it from %q", c.op, c.expected, h.old)
		}
	}
	for _, id := range refused {
		if _, ok := byRequest[id]; ok {
			t.Errorf("refused request %s changed the tag", id)
		}
	}
	if len(conditionals) == 0 || len(history) < 20 {
		t.Errorf("the race did not exercise much: %d conditional changes, %d history entries", len(conditionals), len(history))
	}
}

type historyRow struct {
	id                          int64
	action, old, new, requestID string
}

func readHistory(t *testing.T, url string) []historyRow {
	t.Helper()
	d, err := db.Open(context.Background(), url, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var all []historyRow
	var before int64
	for {
		events, more, err := d.TagHistory(context.Background(), "race", "t", before, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range events {
			all = append(all, historyRow{e.ID, e.Action, e.OldDigest, e.Digest, e.RequestID})
			before = e.ID
		}
		if !more {
			break
		}
	}
	// Oldest first.
	for i, j := 0, len(all)-1; i < j; i, j = i+1, j-1 {
		all[i], all[j] = all[j], all[i]
	}
	return all
}

// imageVia pushes a config and a layer to repository "race" on base and
// returns the manifest body.
func imageVia(t *testing.T, base, seed string) []byte {
	t.Helper()
	push := func(content []byte) digest.Digest {
		d := digest.FromBytes(content)
		resp, err := http.Post(base+"/v2/race/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(content))
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("push blob: %v %v", resp, err)
		}
		resp.Body.Close()
		return d
	}
	config := []byte(`{"seed":"` + seed + `"}`)
	layer := []byte("layer " + seed)
	return ociManifest(push(config), int64(len(config)), push(layer), int64(len(layer)))
}
