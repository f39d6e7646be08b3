package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/berth-registry/berth/manifest"
)

// The manifest budget bounds the manifest bytes a process holds at once.
// A manifest PUT holds its body, what Parse makes of it and the buffers of
// the database statements that store it: for the largest manifests, 25 to
// 50 MiB of RSS each while it is in flight, the garbage collector's
// headroom included (tools/bench). With nothing to bound them, 64
// concurrent PUTs of 4 MiB manifests took the server to 1.2 to 1.7 GB
// (1.9 to 2.8 GB before their allocations were cut). So
// a PUT first reserves its body's size (its Content-Length, or the largest
// manifest when it has none) and gives it back when it is done, however
// it ends; a PUT that cannot have its share within manifestBudgetWait is
// refused with 429.
const (
	// DefaultManifestBudget is the budget unless configured: 16 MiB, three
	// manifests of the largest size at once besides the room kept for
	// small ones. Measured with tools/bench (scenarios manifest/put-4MiB*:
	// rounds of 64 concurrent PUTs of 4 MiB manifests, on a 2-core
	// machine), the server's peak RSS was 135 MiB with manifests of 27,000
	// layers and 199 MiB with manifests of 40,000 annotations, the
	// costliest shape, under the 256 MiB it is held to; 24 MiB gave 174 and
	// 291 MiB, 32 MiB 222 MiB (layers). Manifests were stored as fast with
	// 16 MiB as with 24 (PostgreSQL and the CPU are what bound such
	// pushes), so a larger budget suits a larger machine.
	DefaultManifestBudget = 16 << 20

	// MinManifestBudget is the smallest budget: a manifest of the largest
	// size and the room kept for small manifests.
	MinManifestBudget = manifest.MaxSize + smallManifestRoom

	// manifestBudgetWait is how long a PUT waits for its share before it
	// is refused: a PUT of the largest manifests takes from a fraction of
	// a second alone to a second or two among others (tools/bench), so a
	// short burst gets through in turn, while the client of a saturated
	// replica hears soon that it should come back.
	manifestBudgetWait = 2 * time.Second

	// manifestRetryAfter is what the 429 tells the client to wait, in
	// seconds.
	manifestRetryAfter = 1

	// smallManifest is the largest body that may take its share from
	// smallManifestRoom, the room kept for small manifests: 16 of that
	// size, or hundreds of the usual ones of a few KB, which take a few
	// milliseconds each. The semaphore of the rest serves its waiters in
	// order, so without that room a usual push would queue behind every
	// 4 MiB one waiting for the budget.
	smallManifest     = 64 << 10
	smallManifestRoom = 1 << 20
)

// manifestBudget is the budget of manifest bytes in flight (see above).
type manifestBudget struct {
	size  int64
	large *semaphore.Weighted // size - smallManifestRoom, served in order
	small atomic.Int64        // bytes held from smallManifestRoom
}

func newManifestBudget(size int64) *manifestBudget {
	size = max(size, MinManifestBudget)
	return &manifestBudget{size: size, large: semaphore.NewWeighted(size - smallManifestRoom)}
}

// acquire reserves n bytes, waiting until ctx ends at most. release gives
// them back; call it once.
func (b *manifestBudget) acquire(ctx context.Context, n int64) (release func(), err error) {
	if n <= smallManifest {
		for {
			held := b.small.Load()
			if held+n > smallManifestRoom {
				break // the room is full: wait in turn with the others
			}
			if b.small.CompareAndSwap(held, held+n) {
				return func() { b.small.Add(-n) }, nil
			}
		}
	}
	if err := b.large.Acquire(ctx, n); err != nil {
		return nil, err
	}
	return func() { b.large.Release(n) }, nil
}

// reserveManifest takes the share of the manifest budget of PUT r, whose
// Content-Length, if any, is at most manifest.MaxSize. When it does not
// come in time the error is a 429 that names the limit and its setting.
func (h *Handler) reserveManifest(r *http.Request) (release func(), err error) {
	n := r.ContentLength
	if n < 0 {
		n = manifest.MaxSize
	}
	return h.reserveManifestBytes(r, n)
}

// reserveManifestBytes reserves n bytes of the budget for a manifest the
// request handles (a push, or the stored payload a restore parses again).
func (h *Handler) reserveManifestBytes(r *http.Request, n int64) (release func(), err error) {
	ctx, cancel := context.WithTimeout(r.Context(), manifestBudgetWait)
	defer cancel()
	release, err = h.manifests.acquire(ctx, n)
	if err == nil {
		return release, nil
	}
	if r.Context().Err() != nil {
		return nil, r.Context().Err() // the client went away
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		return nil, err
	}
	e := errorf(CodeTooManyRequests, "too many manifest bytes are being pushed to this registry at once: the limit is %s of manifests in flight (setting --manifest-budget, BERTH_MANIFEST_BUDGET); retry in a moment",
		formatMiB(h.manifests.size)).withDetail(map[string]any{"limit": "manifest-budget", "bytes": h.manifests.size})
	e.Header = http.Header{"Retry-After": {strconv.Itoa(manifestRetryAfter)}}
	return nil, e
}

func formatMiB(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
