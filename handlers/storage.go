package handlers

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-registry/berth/blobstore"
)

// A full blob store refuses every push until an operator frees space:
// each refused write is answered 507 (see toWire) and counted, and the
// episode is logged twice, when the first write is refused and when it
// ends, not once per request. It ends when a write succeeds and none has
// been refused for fullQuiet: on a nearly full disk small pushes succeed
// between refused large ones, and that is still one episode.

// fullQuiet is how long no write may be refused for a full store to count
// as having room again.
const fullQuiet = time.Minute

// storageWatch follows whether the blob store has room.
type storageWatch struct {
	log     *slog.Logger
	refused prometheus.Counter
	full    prometheus.Gauge

	mu          sync.Mutex
	isFull      bool
	lastRefusal time.Time
}

func newStorageWatch(log *slog.Logger, reg prometheus.Registerer) *storageWatch {
	s := &storageWatch{
		log: log,
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_storage_full_refusals_total",
			Help: "Blob writes refused because the blob store was full (answered 507).",
		}),
		full: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_storage_full",
			Help: "1 from a blob write refused for lack of space until a write succeeds again.",
		}),
	}
	reg.MustRegister(s.refused, s.full)
	return s
}

// observe notes the outcome of a write of n bytes to the store.
func (s *storageWatch) observe(ctx context.Context, n int64, err error) {
	switch {
	case errors.Is(err, blobstore.ErrStorageFull):
		s.refused.Inc()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.lastRefusal = time.Now()
		if !s.isFull {
			s.isFull = true
			s.full.Set(1)
			s.log.ErrorContext(ctx, "blob storage is full: pushes are answered 507 until space is freed", "err", err)
		}
	case err == nil && n > 0:
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.isFull && time.Since(s.lastRefusal) >= fullQuiet {
			s.isFull = false
			s.full.Set(0)
			s.log.InfoContext(ctx, "blob storage accepts writes again")
		}
	}
}

// watchedStore is the API's blob store, with its writes observed.
type watchedStore struct {
	BlobStore
	watch *storageWatch
}

func (s watchedStore) AppendChunk(ctx context.Context, uploadID string, state []byte, r io.Reader) ([]byte, int64, error) {
	newState, n, err := s.BlobStore.AppendChunk(ctx, uploadID, state, r)
	s.watch.observe(ctx, n, err)
	return newState, n, err
}

func (s watchedStore) Publish(ctx context.Context, uploadID string, state []byte, dgst digest.Digest) error {
	err := s.BlobStore.Publish(ctx, uploadID, state, dgst)
	s.watch.observe(ctx, 1, err) // a published blob took room (a copy, a link, an object)
	return err
}
