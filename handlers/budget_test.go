package handlers_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/handlers"
	"github.com/berth-registry/berth/manifest"
)

// newBudgetRegistry is newRegistry with the smallest manifest budget: one
// manifest of the largest size at a time, besides the room for small
// ones. A single byte lost from it would refuse every full-size manifest
// from then on.
func newBudgetRegistry(t *testing.T) *registry {
	t.Helper()
	return newRegistryWith(t, func(o *handlers.Options) { o.ManifestBudget = handlers.MinManifestBudget })
}

// fullSize returns a valid manifest of exactly manifest.MaxSize bytes,
// made of img (a manifest whose blobs are pushed) and one annotation.
func fullSize(t *testing.T, img []byte, seed string) []byte {
	t.Helper()
	var m map[string]any
	json.Unmarshal(img, &m)
	m["annotations"] = map[string]string{"seed": seed, "pad": ""}
	b, _ := json.Marshal(m)
	m["annotations"] = map[string]string{"seed": seed, "pad": strings.Repeat("x", manifest.MaxSize-len(b))}
	b, _ = json.Marshal(m)
	if len(b) != manifest.MaxSize {
		t.Fatalf("the full-size manifest has %d bytes", len(b))
	}
	return b
}

// held is a manifest PUT whose body the test sends when it chooses.
type held struct {
	body   *io.PipeWriter
	status chan int // the answer's status, or 0 if the request failed
}

// holdPut starts a PUT of a body of size bytes, of which it sends first.
func (r *registry) holdPut(ref string, size int, first []byte) *held {
	r.t.Helper()
	pr, pw := io.Pipe()
	req, err := http.NewRequest("PUT", r.srv.URL+"/v2/repo/manifests/"+ref, pr)
	if err != nil {
		r.t.Fatal(err)
	}
	req.ContentLength = int64(size)
	req.Header.Set("Content-Type", mtManifest)
	h := &held{body: pw, status: make(chan int, 1)}
	// Should the test fail first, the server can still end this request
	// and close.
	r.t.Cleanup(func() { pw.CloseWithError(errors.New("the test ended")) })
	go func() {
		resp, err := r.srv.Client().Do(req)
		if err != nil {
			h.status <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		h.status <- resp.StatusCode
	}()
	if _, err := pw.Write(first); err != nil {
		r.t.Fatal(err)
	}
	return h
}

// waitRefused sends PUTs of 100 KiB (too large for the room kept for
// small manifests) until one is refused for want of budget, which means a
// held PUT has taken its share, and checks the refusal. A PUT that gets
// the budget is refused as an invalid manifest, and gives it back.
func (r *registry) waitRefused() {
	r.t.Helper()
	junk := bytes.Repeat([]byte("x"), 100<<10)
	for range 500 {
		resp := r.do("PUT", "/v2/repo/manifests/probe", junk, "Content-Type: "+mtManifest)
		if resp.StatusCode == http.StatusBadRequest {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		resp.expect(r.t, http.StatusTooManyRequests, "TOOMANYREQUESTS")
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
			r.t.Errorf("Retry-After %q, want a number of seconds", resp.Header.Get("Retry-After"))
		}
		if msg := string(resp.body); !strings.Contains(msg, "--manifest-budget") || !strings.Contains(msg, "BERTH_MANIFEST_BUDGET") ||
			!strings.Contains(msg, "5 MiB") {
			r.t.Errorf("the refusal does not name the limit and its setting: %s", msg)
		}
		return
	}
	r.t.Fatal("the held PUT never took its share of the budget")
}

// putEventually puts body until it is not refused for want of budget, and
// returns the status: a PUT waits only manifestBudgetWait, and a PUT the
// client has just given up may take a moment to end on the server.
func (r *registry) putEventually(ref string, body []byte) int {
	r.t.Helper()
	for range 10 {
		resp := r.do("PUT", "/v2/repo/manifests/"+ref, body, "Content-Type: "+mtManifest)
		if resp.StatusCode != http.StatusTooManyRequests {
			return resp.StatusCode
		}
	}
	r.t.Fatalf("PUT %s: refused for want of budget, again and again: the budget leaked", ref)
	return 0
}

func TestManifestBudget(t *testing.T) {
	t.Parallel()
	t.Run("refuses when exhausted, gives back when done", func(t *testing.T) {
		t.Parallel()
		r := newBudgetRegistry(t)
		img := r.image("repo", "done")
		full := fullSize(t, img, "held")
		h := r.holdPut("held", len(full), full[:1000])
		r.waitRefused()

		// Small manifests have room of their own: a usual push goes
		// through while the budget is taken, even with a large PUT
		// waiting for it.
		waiting := make(chan int, 1)
		go func() {
			waiting <- r.do("PUT", "/v2/repo/manifests/waiting", bytes.Repeat([]byte(" "), 200<<10), "Content-Type: "+mtManifest).StatusCode
		}()
		r.do("PUT", "/v2/repo/manifests/small", img, "Content-Type: "+mtManifest).expect(t, 201, "")
		if st := <-waiting; st != http.StatusTooManyRequests {
			t.Errorf("a large PUT while the budget was taken: %d, want 429", st)
		}

		if _, err := h.body.Write(full[1000:]); err != nil {
			t.Fatal(err)
		}
		h.body.Close()
		if st := <-h.status; st != http.StatusCreated {
			t.Fatalf("the held PUT: %d, want 201", st)
		}
		// A manifest without Content-Length takes the largest share,
		// and gives it back too.
		req, _ := http.NewRequest("PUT", r.srv.URL+"/v2/repo/manifests/chunked", hiddenLength{bytes.NewReader(img)})
		req.Header.Set("Content-Type", mtManifest)
		resp, err := r.srv.Client().Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT without Content-Length: %v %v", resp.Status, err)
		}
		resp.Body.Close()
		if st := r.putEventually("full", fullSize(t, img, "after")); st != http.StatusCreated {
			t.Fatalf("a full-size PUT after the others: %d, want 201", st)
		}
	})
	t.Run("gives back when the client gives up", func(t *testing.T) {
		t.Parallel()
		r := newBudgetRegistry(t)
		img := r.image("repo", "abort")
		full := fullSize(t, img, "aborted")
		h := r.holdPut("aborted", len(full), full[:1000])
		r.waitRefused()
		h.body.CloseWithError(errors.New("the client gives up"))
		if st := <-h.status; st != 0 {
			t.Fatalf("the aborted PUT got an answer: %d", st)
		}
		if st := r.putEventually("full", fullSize(t, img, "after")); st != http.StatusCreated {
			t.Fatalf("a full-size PUT after the aborted one: %d, want 201", st)
		}
	})
}
