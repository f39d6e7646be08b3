// Package storetest is the test suite every blob store must pass. The
// handlers are written against the contracts in package blobstore, not
// against a store, so a store that passes Run can replace another without
// the rest of Berth noticing. The suite therefore tests only what those
// contracts promise: never a store's layout, file names or state format.
//
// A store's own test calls Run, and Bench from a benchmark:
//
//	func TestFSContract(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) blobstore.Store { ... })
//	}
package storetest

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	_ "crypto/sha512" // digest.SHA512 needs the hash linked in
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
)

// Run runs every contract test against stores made by newStore; each
// subtest gets a fresh, empty store. Most subtests run in parallel, but the
// large-blob test measures the process's heap, so Run must not be called
// from a test that runs in parallel with others (do not call t.Parallel in
// the test that calls Run).
func Run(t *testing.T, newStore func(t *testing.T) blobstore.Store) {
	// Sequential first: it runs alone, before the parallel subtests are
	// released, so their allocations do not count against its memory bound.
	t.Run("LargeBlobStreams", func(t *testing.T) { testLargeBlob(t, newStore(t)) })

	for _, tc := range []struct {
		name string
		test func(t *testing.T, s blobstore.Store)
	}{
		{"AbsentBlobNotFound", testAbsent},
		{"OneChunk", testOneChunk},
		{"ManyIrregularChunks", testManyChunks},
		{"UnsavedStateDoesNotCount", testUnsavedState},
		{"RacingStatesPublishTheirOwnBytes", testRacingStates},
		{"RacingAppendsKeepTheirOwnBytes", testRacingAppends},
		{"AppendAfterPublishLeavesBlob", testAppendAfterPublish},
		{"EmptyBlob", testEmptyBlob},
		{"PublishIdempotent", testPublishIdempotent},
		{"PublishExistingDigest", testPublishExisting},
		{"DeleteUpload", testDeleteUpload},
		{"Delete", testDelete},
		{"SHA512", testSHA512},
		{"Concurrent", testConcurrent},
		{"FailingReader", testFailingReader},
		{"WalkBlobsAndUploads", testWalk},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.test(t, newStore(t))
		})
	}
}

// testWalk checks the Lister: every published blob with its size, and
// every upload with data, are listed; deleted ones are not.
func testWalk(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	want := map[digest.Digest]int64{}
	for i := range 5 {
		content := randomBytes(100 + i)
		d := digest.FromBytes(content)
		id := NewUploadID()
		state := appendChunks(t, s, id, nil, content)
		if err := s.Publish(ctx, id, state, d); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := s.Delete(ctx, d); err != nil {
				t.Fatal(err)
			}
		} else {
			want[d] = int64(len(content))
		}
		if i < 2 {
			if err := s.DeleteUpload(ctx, id, state); err != nil {
				t.Fatal(err)
			}
		}
	}
	pending := NewUploadID()
	appendChunks(t, s, pending, nil, []byte("in progress"))

	got := map[digest.Digest]int64{}
	before := time.Now().Add(-time.Minute)
	err := s.WalkBlobs(ctx, func(d digest.Digest, size int64, mod time.Time) error {
		if mod.Before(before) {
			t.Errorf("blob %s has modification time %v", d, mod)
		}
		got[d] = size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("WalkBlobs listed %v, want %v", got, want)
	}
	uploads := map[string]int64{}
	err = s.WalkUploads(ctx, func(id string, size int64, mod time.Time) error {
		if mod.Before(before) {
			t.Errorf("upload %s has modification time %v", id, mod)
		}
		uploads[id] = size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	size, ok := uploads[pending]
	if !ok || len(uploads) != 4 { // three published but not deleted, one pending
		t.Errorf("WalkUploads listed %v, want 4 including %s", uploads, pending)
	}
	if size < int64(len("in progress")) {
		t.Errorf("WalkUploads gave the pending upload %d bytes, want at least the %d it holds", size, len("in progress"))
	}
	stop := errors.New("stop")
	if err := s.WalkBlobs(ctx, func(digest.Digest, int64, time.Time) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("WalkBlobs returned %v, want the callback's error", err)
	}
}

// NewUploadID returns an id of the form the API gives uploads: a random
// version 4 UUID, hex with dashes.
func NewUploadID() string {
	var b [16]byte
	if _, err := crand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // cannot fail on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func testAbsent(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	for _, dgst := range []digest.Digest{
		digest.FromBytes(randomBytes(16)),
		digest.SHA512.FromBytes(randomBytes(16)),
	} {
		if _, err := s.Stat(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("Stat(%s) = %v, want ErrNotFound", dgst.Algorithm(), err)
		}
		rc, err := s.Open(ctx, dgst)
		if !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("Open(%s) = %v, want ErrNotFound", dgst.Algorithm(), err)
		}
		if rc != nil {
			rc.Close()
		}
	}
}

func testOneChunk(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	data := randomBytes(300<<10 + 17)
	id := NewUploadID()
	state := appendChunks(t, s, id, nil, data)
	if got := mustReadUpload(t, s, id, state); !bytes.Equal(got, data) {
		t.Errorf("ReadUpload returned %d bytes that differ from the %d uploaded", len(got), len(data))
	}
	dgst := digest.FromBytes(data)
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	checkBlob(t, s, dgst, data)

	rc, err := s.Open(ctx, dgst)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer rc.Close()
	size := int64(len(data))
	if end, err := rc.Seek(0, io.SeekEnd); err != nil || end != size {
		t.Errorf("Seek(0, SeekEnd) = %d, %v; want %d", end, err, size)
	}
	// Range requests: a slice in the middle, then the tail, then back to
	// the start after having hit EOF.
	mid := size/2 + 3
	if pos, err := rc.Seek(mid, io.SeekStart); err != nil || pos != mid {
		t.Fatalf("Seek(%d, SeekStart) = %d, %v", mid, pos, err)
	}
	buf := make([]byte, 1000)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatalf("read from the middle: %v", err)
	}
	if !bytes.Equal(buf, data[mid:mid+1000]) {
		t.Errorf("bytes read at offset %d differ from those uploaded", mid)
	}
	if pos, err := rc.Seek(-100, io.SeekEnd); err != nil || pos != size-100 {
		t.Fatalf("Seek(-100, SeekEnd) = %d, %v; want %d", pos, err, size-100)
	}
	if tail, err := io.ReadAll(rc); err != nil || !bytes.Equal(tail, data[size-100:]) {
		t.Errorf("tail after Seek(-100, SeekEnd): %d bytes, %v; want the last 100 bytes", len(tail), err)
	}
	if _, err := rc.Seek(0, io.SeekStart); err != nil {
		t.Fatalf("Seek(0, SeekStart) after EOF: %v", err)
	}
	if all, err := io.ReadAll(rc); err != nil || !bytes.Equal(all, data) {
		t.Errorf("re-read after seeking back: %d bytes, %v; want the whole blob", len(all), err)
	}
}

func testManyChunks(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	// Irregular sizes, zero-length chunks first, in the middle and last, and
	// readers that return short reads or data together with io.EOF: the
	// store must take everything r yields, however it is delivered.
	plain := func(r io.Reader) io.Reader { return r }
	noWriterTo := func(r io.Reader) io.Reader { return struct{ io.Reader }{r} }
	chunks := []struct {
		size int
		wrap func(io.Reader) io.Reader
	}{
		{0, plain},
		{1, noWriterTo},
		{4095, iotest.HalfReader},
		{0, noWriterTo},
		{65537, iotest.DataErrReader},
		{3, iotest.OneByteReader},
		{200003, noWriterTo},
		{0, plain},
		{777, iotest.OneByteReader},
		{131072, iotest.HalfReader},
		{0, iotest.DataErrReader},
	}
	id := NewUploadID()
	var state []byte
	var want []byte
	for i, c := range chunks {
		size := c.size
		chunk := randomBytes(size)
		newState, n, err := s.AppendChunk(ctx, id, state, c.wrap(bytes.NewReader(chunk)))
		if err != nil {
			t.Fatalf("AppendChunk #%d (%d bytes): %v", i, size, err)
		}
		if n != int64(size) {
			t.Fatalf("AppendChunk #%d read %d bytes, want %d", i, n, size)
		}
		state = newState
		want = append(want, chunk...)
		if got := mustReadUpload(t, s, id, state); !bytes.Equal(got, want) {
			t.Fatalf("after chunk #%d (%d bytes): ReadUpload gives %d bytes, want the %d uploaded so far",
				i, size, len(got), len(want))
		}
	}
	dgst := digest.FromBytes(want)
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	checkBlob(t, s, dgst, want)
}

// testUnsavedState is two requests racing on one upload: both append to the
// same saved state, and the database accepts only the second one's state.
func testUnsavedState(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	base := randomBytes(50 << 10)
	first, second := randomBytes(30<<10), randomBytes(20<<10+1)
	id := NewUploadID()
	baseState := appendChunks(t, s, id, nil, base)
	appendChunks(t, s, id, baseState, first) // never saved
	state := appendChunks(t, s, id, baseState, second)

	want := concat(base, second)
	if got := mustReadUpload(t, s, id, state); !bytes.Equal(got, want) {
		t.Errorf("ReadUpload gives %d bytes, want base + second chunk (%d)", len(got), len(want))
	}
	dgst := digest.FromBytes(want)
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	checkBlob(t, s, dgst, want)
}

// testRacingStates is two requests racing to finish one upload with final
// chunks of the same size: each verifies its own digest and publishes its
// own state before the database picks a winner. Each blob must hold exactly
// the bytes of the state it was published from.
func testRacingStates(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	base := randomBytes(40 << 10)
	a, b := randomBytes(10<<10), randomBytes(10<<10)
	id := NewUploadID()
	baseState := appendChunks(t, s, id, nil, base)
	stateA := appendChunks(t, s, id, baseState, a)
	stateB := appendChunks(t, s, id, baseState, b)
	wantA, wantB := concat(base, a), concat(base, b)
	dgstA, dgstB := digest.FromBytes(wantA), digest.FromBytes(wantB)
	if err := s.Publish(ctx, id, stateA, dgstA); err != nil {
		t.Fatalf("Publish A: %v", err)
	}
	if err := s.Publish(ctx, id, stateB, dgstB); err != nil {
		t.Fatalf("Publish B: %v", err)
	}
	checkBlob(t, s, dgstA, wantA)
	checkBlob(t, s, dgstB, wantB)
}

// testRacingAppends is many requests appending to one upload at the same
// moment, all after the same saved state, as replicas do when a client
// retries a chunk that is still arriving. Whatever the store does to keep
// them apart, every state returned must read back, and publish, as the
// base followed by that request's own chunk, and the base state must still
// read as the base.
func testRacingAppends(t *testing.T, s blobstore.Store) {
	const racers = 8
	ctx := t.Context()
	base := randomBytes(100 << 10)
	id := NewUploadID()
	baseState := appendChunks(t, s, id, nil, base)
	chunks := make([][]byte, racers)
	states := make([][]byte, racers)
	for i := range chunks {
		chunks[i] = randomBytes(300<<10 + i*1000)
	}
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			// Small reads make the writes interleave.
			r := iotest.HalfReader(bytes.NewReader(chunks[i]))
			st, n, err := s.AppendChunk(ctx, id, baseState, r)
			if err != nil || n != int64(len(chunks[i])) {
				t.Errorf("racer %d: AppendChunk = %d bytes, %v; want %d", i, n, err, len(chunks[i]))
				return
			}
			states[i] = st
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if got := mustReadUpload(t, s, id, baseState); !bytes.Equal(got, base) {
		t.Errorf("the base state reads %d bytes that are not the base (%d)", len(got), len(base))
	}
	for i, st := range states {
		want := concat(base, chunks[i])
		if got := mustReadUpload(t, s, id, st); !bytes.Equal(got, want) {
			t.Errorf("racer %d: its state reads %d bytes, not base + its chunk (%d)", i, len(got), len(want))
		}
		dgst := digest.FromBytes(want)
		if err := s.Publish(ctx, id, st, dgst); err != nil {
			t.Fatalf("racer %d: Publish: %v", i, err)
		}
		checkBlob(t, s, dgst, want)
	}
}

// testAppendAfterPublish is a chunk that arrives, from a late or retried
// request, after the upload was published: the store may keep or drop it,
// but the published blob must not change.
func testAppendAfterPublish(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	for _, chunks := range []int{1, 3} {
		t.Run(fmt.Sprintf("%dChunks", chunks), func(t *testing.T) {
			parts := make([][]byte, chunks)
			for i := range parts {
				parts[i] = randomBytes(20<<10 + i)
			}
			id := NewUploadID()
			state := appendChunks(t, s, id, nil, parts...)
			want := concat(parts...)
			dgst := digest.FromBytes(want)
			if err := s.Publish(ctx, id, state, dgst); err != nil {
				t.Fatalf("Publish: %v", err)
			}
			late := randomBytes(10 << 10)
			lateState := appendChunks(t, s, id, state, late)
			checkBlob(t, s, dgst, want)
			if got := mustReadUpload(t, s, id, lateState); !bytes.Equal(got, concat(want, late)) {
				t.Errorf("the late state reads %d bytes, want the blob + the late chunk (%d)", len(got), len(want)+len(late))
			}
			if got := mustReadUpload(t, s, id, state); !bytes.Equal(got, want) {
				t.Errorf("the published state now reads %d bytes, want the blob's %d", len(got), len(want))
			}
		})
	}
}

func testEmptyBlob(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	id := NewUploadID()
	if got := mustReadUpload(t, s, id, nil); len(got) != 0 {
		t.Errorf("ReadUpload of a nil state gives %d bytes, want 0", len(got))
	}
	for _, dgst := range []digest.Digest{digest.FromBytes(nil), digest.SHA512.FromBytes(nil)} {
		if err := s.Publish(ctx, id, nil, dgst); err != nil {
			t.Fatalf("Publish %s with a nil state: %v", dgst.Algorithm(), err)
		}
		checkBlob(t, s, dgst, nil)
	}
	if err := s.DeleteUpload(ctx, id, nil); err != nil {
		t.Errorf("DeleteUpload: %v", err)
	}
	checkBlob(t, s, digest.FromBytes(nil), nil)
}

func testPublishIdempotent(t *testing.T, s blobstore.Store) {
	for _, chunks := range []int{1, 3} {
		t.Run(fmt.Sprintf("%dChunks", chunks), func(t *testing.T) {
			ctx := t.Context()
			parts := make([][]byte, chunks)
			for i := range parts {
				parts[i] = randomBytes(30<<10 + i)
			}
			data := concat(parts...)
			dgst := digest.FromBytes(data)
			id := NewUploadID()
			state := appendChunks(t, s, id, nil, parts...)
			for i := range 2 {
				if err := s.Publish(ctx, id, state, dgst); err != nil {
					t.Fatalf("Publish #%d: %v", i+1, err)
				}
				checkBlob(t, s, dgst, data)
			}
			// Garbage collection deleted the blob while the upload was
			// still committing; publishing again must restore it from the
			// upload's own data, which Publish left in place.
			if err := s.Delete(ctx, dgst); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := s.Stat(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
				t.Fatalf("Stat after Delete = %v, want ErrNotFound", err)
			}
			if got := mustReadUpload(t, s, id, state); !bytes.Equal(got, data) {
				t.Errorf("ReadUpload after Publish and Delete gives %d bytes, want the %d uploaded", len(got), len(data))
			}
			if err := s.Publish(ctx, id, state, dgst); err != nil {
				t.Fatalf("Publish after Delete: %v", err)
			}
			checkBlob(t, s, dgst, data)
			if err := s.DeleteUpload(ctx, id, state); err != nil {
				t.Fatalf("DeleteUpload: %v", err)
			}
			checkBlob(t, s, dgst, data)
		})
	}
}

func testPublishExisting(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	data := randomBytes(100 << 10)
	dgst := digest.FromBytes(data)
	first := NewUploadID()
	if err := s.Publish(ctx, first, appendChunks(t, s, first, nil, data), dgst); err != nil {
		t.Fatalf("Publish first upload: %v", err)
	}
	// A reader already streaming the blob (a pull) must not notice the
	// second publish, nor the first upload's removal.
	rc, err := s.Open(ctx, dgst)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer rc.Close()
	head := make([]byte, 10)
	if _, err := io.ReadFull(rc, head); err != nil {
		t.Fatalf("read: %v", err)
	}

	second := NewUploadID()
	state := appendChunks(t, s, second, nil, data[:60<<10], data[60<<10:])
	if err := s.Publish(ctx, second, state, dgst); err != nil {
		t.Fatalf("Publish of an existing digest from another upload: %v", err)
	}
	for _, id := range []string{first, second} {
		if err := s.DeleteUpload(ctx, id, nil); err != nil {
			t.Fatalf("DeleteUpload: %v", err)
		}
	}
	rest, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read on: %v", err)
	}
	if got := concat(head, rest); !bytes.Equal(got, data) {
		t.Errorf("the reader opened before the second Publish got %d bytes that differ from the blob", len(got))
	}
	checkBlob(t, s, dgst, data)
}

func testDeleteUpload(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	a, b := randomBytes(40<<10), randomBytes(50<<10)
	data := concat(a, b)
	dgst := digest.FromBytes(data)
	id := NewUploadID()
	aState := appendChunks(t, s, id, nil, a)
	state := appendChunks(t, s, id, aState, b)
	unsaved := appendChunks(t, s, id, aState, randomBytes(1000)) // a racing request's chunk
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if err := s.DeleteUpload(ctx, id, state); err != nil {
		t.Fatalf("DeleteUpload: %v", err)
	}
	for name, st := range map[string][]byte{"saved": state, "first chunk's": aState, "never saved": unsaved} {
		if got, err := readUpload(ctx, s, id, st); err == nil {
			t.Errorf("ReadUpload of the %s state after DeleteUpload gave %d bytes, want an error", name, len(got))
		}
	}
	other := digest.FromBytes(concat(data, []byte("x")))
	if err := s.Publish(ctx, id, state, other); err == nil {
		t.Errorf("Publish after DeleteUpload succeeded, want an error: the bytes are gone")
	}
	if _, err := s.Stat(ctx, other); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat of a blob whose Publish failed = %v, want ErrNotFound", err)
	}
	checkBlob(t, s, dgst, data)

	if err := s.DeleteUpload(ctx, id, state); err != nil {
		t.Errorf("DeleteUpload twice: %v", err)
	}
	if err := s.DeleteUpload(ctx, NewUploadID(), nil); err != nil {
		t.Errorf("DeleteUpload of an unknown upload: %v", err)
	}
	if err := s.DeleteUpload(ctx, NewUploadID(), state); err != nil {
		t.Errorf("DeleteUpload of an unknown upload with another's state: %v", err)
	}
}

func testDelete(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	keep, gone := randomBytes(5000), randomBytes(6000)
	for _, data := range [][]byte{keep, gone} {
		id := NewUploadID()
		if err := s.Publish(ctx, id, appendChunks(t, s, id, nil, data), digest.FromBytes(data)); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		if err := s.DeleteUpload(ctx, id, nil); err != nil {
			t.Fatalf("DeleteUpload: %v", err)
		}
	}
	dgst := digest.FromBytes(gone)
	if err := s.Delete(ctx, dgst); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Stat(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat after Delete = %v, want ErrNotFound", err)
	}
	if rc, err := s.Open(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Open after Delete = %v, want ErrNotFound", err)
		if rc != nil {
			rc.Close()
		}
	}
	if err := s.Delete(ctx, dgst); err != nil {
		t.Errorf("Delete of a deleted blob: %v", err)
	}
	if err := s.Delete(ctx, digest.FromBytes(randomBytes(8))); err != nil {
		t.Errorf("Delete of a blob never stored: %v", err)
	}
	checkBlob(t, s, digest.FromBytes(keep), keep)
}

func testSHA512(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	parts := [][]byte{randomBytes(70 << 10), randomBytes(1), randomBytes(33 << 10)}
	data := concat(parts...)
	d512, d256 := digest.SHA512.FromBytes(data), digest.FromBytes(data)
	id := NewUploadID()
	state := appendChunks(t, s, id, nil, parts...)
	for _, dgst := range []digest.Digest{d512, d256} {
		if err := s.Publish(ctx, id, state, dgst); err != nil {
			t.Fatalf("Publish %s: %v", dgst.Algorithm(), err)
		}
	}
	if err := s.DeleteUpload(ctx, id, state); err != nil {
		t.Fatalf("DeleteUpload: %v", err)
	}
	checkBlob(t, s, d512, data)
	checkBlob(t, s, d256, data)
	if err := s.Delete(ctx, d512); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Stat(ctx, d512); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat of the deleted sha512 blob = %v, want ErrNotFound", err)
	}
	checkBlob(t, s, d256, data) // the same bytes under the other algorithm stay
}

func testConcurrent(t *testing.T, s blobstore.Store) {
	const workers = 16
	ctx := t.Context()
	shared := randomBytes(256<<10 + 11)
	sharedDgst := digest.FromBytes(shared)
	own := make([][]byte, workers)
	for i := range own {
		own[i] = randomBytes(200<<10 + i*13<<10)
	}
	// Every worker uploads its own blob and the shared one, as many clients
	// pushing images with a common base layer do, then discards its uploads
	// as the handlers do.
	upload := func(data []byte) error {
		id := NewUploadID()
		var state []byte
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 64<<10+len(rest)%1000)
			st, got, err := s.AppendChunk(ctx, id, state, bytes.NewReader(rest[:n]))
			if err != nil {
				return fmt.Errorf("AppendChunk: %w", err)
			}
			if got != int64(n) {
				return fmt.Errorf("AppendChunk read %d bytes, want %d", got, n)
			}
			state, rest = st, rest[n:]
		}
		if err := s.Publish(ctx, id, state, digest.FromBytes(data)); err != nil {
			return fmt.Errorf("Publish: %w", err)
		}
		return s.DeleteUpload(ctx, id, state)
	}
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			if err := upload(own[i]); err != nil {
				t.Errorf("worker %d, own blob: %v", i, err)
			}
			if err := upload(shared); err != nil {
				t.Errorf("worker %d, shared blob: %v", i, err)
			}
		})
	}
	wg.Wait()
	checkBlob(t, s, sharedDgst, shared)
	for _, data := range own {
		checkBlob(t, s, digest.FromBytes(data), data)
	}
}

var errBoom = errors.New("connection reset by storetest")

func testFailingReader(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	base := randomBytes(30 << 10)
	id := NewUploadID()
	baseState := appendChunks(t, s, id, nil, base)

	// The client goes away after 100 KiB of the next chunk.
	chunk := randomBytes(300 << 10)
	r := io.MultiReader(bytes.NewReader(chunk[:100<<10]), iotest.ErrReader(errBoom))
	if st, n, err := s.AppendChunk(ctx, id, baseState, r); err == nil {
		t.Fatalf("AppendChunk from a failing reader = %d bytes, state %q, no error; want an error", n, st)
	}
	if got := mustReadUpload(t, s, id, baseState); !bytes.Equal(got, base) {
		t.Errorf("ReadUpload of the previous state after a failed chunk gives %d bytes, want the %d before it",
			len(got), len(base))
	}
	// A first chunk that fails leaves no upload either.
	if _, _, err := s.AppendChunk(ctx, NewUploadID(), nil, iotest.ErrReader(errBoom)); err == nil {
		t.Errorf("AppendChunk of a first chunk that fails at once succeeded")
	}

	// The client resumes from the saved state and finishes.
	state := appendChunks(t, s, id, baseState, chunk)
	want := concat(base, chunk)
	if got := mustReadUpload(t, s, id, state); !bytes.Equal(got, want) {
		t.Errorf("ReadUpload after the retried chunk gives %d bytes, want %d", len(got), len(want))
	}
	// The previous state still publishes exactly its own bytes.
	if err := s.Publish(ctx, id, baseState, digest.FromBytes(base)); err != nil {
		t.Fatalf("Publish of the state before the failed chunk: %v", err)
	}
	checkBlob(t, s, digest.FromBytes(base), base)
	if err := s.Publish(ctx, id, state, digest.FromBytes(want)); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	checkBlob(t, s, digest.FromBytes(want), want)
}

// largeBlobSize is big enough that a store holding a chunk, let alone the
// blob, in memory stands out against maxHeapGrowth.
const largeBlobSize = 64 << 20

// maxHeapGrowth bounds the heap a store may use while streaming a large
// blob. Copy buffers are expected (the filesystem store uses 256 KiB; an S3
// store may hold one multipart part of 5 to 8 MiB); a whole chunk, a third
// of largeBlobSize, is not.
const maxHeapGrowth = 16 << 20

// testLargeBlob streams a blob that neither the test nor the store may hold
// in memory: the bytes come from a seeded generator, hashed as they go.
func testLargeBlob(t *testing.T, s blobstore.Store) {
	ctx := t.Context()
	chunks := []int64{21<<20 + 12345, 30<<20 - 6789}
	chunks = append(chunks, largeBlobSize-chunks[0]-chunks[1])
	gen := newPattern(1)
	h := sha256.New()
	heap := newHeapWatch()

	id := NewUploadID()
	var state []byte
	for i, size := range chunks {
		r := heap.reader(io.TeeReader(io.LimitReader(gen, size), h))
		st, n, err := s.AppendChunk(ctx, id, state, r)
		heap.sample()
		if err != nil {
			t.Fatalf("AppendChunk #%d: %v", i, err)
		}
		if n != size {
			t.Fatalf("AppendChunk #%d read %d bytes, want %d", i, n, size)
		}
		state = st
	}
	dgst := digest.NewDigest(digest.SHA256, h)
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	heap.sample()

	if size, err := s.Stat(ctx, dgst); err != nil || size != largeBlobSize {
		t.Errorf("Stat = %d, %v; want %d", size, err, largeBlobSize)
	}
	rc, err := s.Open(ctx, dgst)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if got := hashStream(t, rc, heap); got != dgst {
		t.Errorf("the blob read back hashes to %s, want %s", got, dgst)
	}
	urc, err := s.ReadUpload(ctx, id, state)
	if err != nil {
		t.Fatalf("ReadUpload: %v", err)
	}
	if got := hashStream(t, urc, heap); got != dgst {
		t.Errorf("the upload read back hashes to %s, want %s", got, dgst)
	}
	if growth := heap.growth(); growth > maxHeapGrowth {
		t.Errorf("the heap grew by %d MiB while streaming a %d MiB blob, want under %d MiB",
			growth>>20, largeBlobSize>>20, maxHeapGrowth>>20)
	} else {
		t.Logf("heap growth while streaming %d MiB: %d KiB", largeBlobSize>>20, growth>>10)
	}
	if err := s.DeleteUpload(ctx, id, state); err != nil {
		t.Errorf("DeleteUpload: %v", err)
	}
}

func hashStream(t *testing.T, rc io.ReadCloser, heap *heapWatch) digest.Digest {
	t.Helper()
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, heap.reader(rc))
	if err != nil {
		t.Fatalf("read after %d bytes: %v", n, err)
	}
	return digest.NewDigest(digest.SHA256, h)
}

// heapWatch records the peak of HeapInuse over a baseline, sampled every
// heapSampleEvery bytes that pass through its readers. Sampling stops the
// world briefly, so it is not done on every read.
type heapWatch struct {
	base, peak uint64
	seen, next int64
}

const heapSampleEvery = 1 << 20

func newHeapWatch() *heapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return &heapWatch{base: ms.HeapInuse, peak: ms.HeapInuse}
}

func (w *heapWatch) sample() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w.peak = max(w.peak, ms.HeapInuse)
}

func (w *heapWatch) growth() uint64 { return w.peak - w.base }

func (w *heapWatch) reader(r io.Reader) io.Reader { return &watchedReader{r: r, w: w} }

type watchedReader struct {
	r io.Reader
	w *heapWatch
}

func (r *watchedReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.w.seen += int64(n)
	if r.w.seen >= r.w.next {
		r.w.sample()
		r.w.next = r.w.seen + heapSampleEvery
	}
	return n, err
}

// newPattern returns an endless reader of bytes that depend only on seed.
func newPattern(seed uint64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return rand.NewChaCha8(s)
}

// Bench runs the benchmarks against stores made by newStore, one store per
// benchmark. Upload benchmarks publish the same bytes each iteration under
// a new upload id and delete the blob afterwards, so every iteration writes
// and publishes for real.
func Bench(b *testing.B, newStore func(b *testing.B) blobstore.Store) {
	b.Run("Upload1MiB", func(b *testing.B) { benchUpload(b, newStore(b), 1<<20, 1<<20) })
	b.Run("Upload64MiB", func(b *testing.B) { benchUpload(b, newStore(b), 64<<20, 64<<20) })
	b.Run("Chunked64MiB5MiBChunks", func(b *testing.B) { benchUpload(b, newStore(b), 64<<20, 5<<20) })
	b.Run("Read1MiB", func(b *testing.B) { benchRead(b, newStore(b), 1<<20) })
}

func benchUpload(b *testing.B, s blobstore.Store, size, chunk int) {
	ctx := b.Context()
	data := make([]byte, size)
	io.ReadFull(newPattern(2), data)
	dgst := digest.FromBytes(data)
	b.SetBytes(int64(size))
	for b.Loop() {
		id := NewUploadID()
		var state []byte
		for off := 0; off < size; off += chunk {
			// A request body has no WriterTo; hide bytes.Reader's.
			r := struct{ io.Reader }{bytes.NewReader(data[off:min(off+chunk, size)])}
			st, _, err := s.AppendChunk(ctx, id, state, r)
			if err != nil {
				b.Fatalf("AppendChunk: %v", err)
			}
			state = st
		}
		if err := s.Publish(ctx, id, state, dgst); err != nil {
			b.Fatalf("Publish: %v", err)
		}
		if err := s.DeleteUpload(ctx, id, state); err != nil {
			b.Fatalf("DeleteUpload: %v", err)
		}
		if err := s.Delete(ctx, dgst); err != nil {
			b.Fatalf("Delete: %v", err)
		}
	}
}

func benchRead(b *testing.B, s blobstore.Store, size int) {
	ctx := b.Context()
	data := make([]byte, size)
	io.ReadFull(newPattern(3), data)
	dgst := digest.FromBytes(data)
	id := NewUploadID()
	state := appendChunks(b, s, id, nil, data)
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		b.Fatalf("Publish: %v", err)
	}
	if err := s.DeleteUpload(ctx, id, state); err != nil {
		b.Fatalf("DeleteUpload: %v", err)
	}
	b.SetBytes(int64(size))
	for b.Loop() {
		rc, err := s.Open(ctx, dgst)
		if err != nil {
			b.Fatalf("Open: %v", err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			b.Fatalf("read: %v", err)
		}
		rc.Close()
	}
}

// appendChunks appends each chunk in turn after state and returns the
// final state.
func appendChunks(tb testing.TB, s blobstore.Store, id string, state []byte, chunks ...[]byte) []byte {
	tb.Helper()
	for i, c := range chunks {
		st, n, err := s.AppendChunk(tb.Context(), id, state, bytes.NewReader(c))
		if err != nil {
			tb.Fatalf("AppendChunk #%d: %v", i, err)
		}
		if n != int64(len(c)) {
			tb.Fatalf("AppendChunk #%d read %d bytes, want %d", i, n, len(c))
		}
		state = st
	}
	return state
}

// readUpload returns the upload's bytes. A store may report missing data
// when asked or only when read, so both count as failure.
func readUpload(ctx context.Context, s blobstore.Store, id string, state []byte) ([]byte, error) {
	rc, err := s.ReadUpload(ctx, id, state)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func mustReadUpload(t *testing.T, s blobstore.Store, id string, state []byte) []byte {
	t.Helper()
	b, err := readUpload(t.Context(), s, id, state)
	if err != nil {
		t.Fatalf("ReadUpload: %v", err)
	}
	return b
}

// checkBlob asserts that blob dgst is stored with exactly want.
func checkBlob(t *testing.T, s blobstore.Store, dgst digest.Digest, want []byte) {
	t.Helper()
	ctx := t.Context()
	size, err := s.Stat(ctx, dgst)
	if err != nil {
		t.Errorf("Stat(%s): %v", dgst, err)
		return
	}
	if size != int64(len(want)) {
		t.Errorf("Stat(%s) = %d bytes, want %d", dgst, size, len(want))
	}
	rc, err := s.Open(ctx, dgst)
	if err != nil {
		t.Errorf("Open(%s): %v", dgst, err)
		return
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Errorf("read %s: %v", dgst, err)
		return
	}
	if !bytes.Equal(got, want) {
		t.Errorf("blob %s holds %d bytes that differ from the %d published (hash %s)",
			dgst, len(got), len(want), dgst.Algorithm().FromBytes(got))
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := crand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return b
}

func concat(parts ...[]byte) []byte {
	return bytes.Join(parts, nil)
}
