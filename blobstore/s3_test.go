package blobstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/blobstore/storetest"
)

// minPart is S3's smallest part, the part size of most tests here: the
// smaller the part, the less data it takes to cross part boundaries.
const minPart = 5 << 20

// s3Fixture is a store under a fresh prefix of the test bucket, with a
// client of its own to look at what the store left there.
type s3Fixture struct {
	store  *blobstore.S3
	raw    *s3.Client
	bucket string
	prefix string
}

// s3Config returns the test server's configuration from the environment,
// skipping the test when there is none.
func s3Config(tb testing.TB) blobstore.S3Config {
	tb.Helper()
	endpoint := os.Getenv("BERTH_TEST_S3_ENDPOINT")
	if endpoint == "" {
		tb.Skip("BERTH_TEST_S3_ENDPOINT is not set; scripts/test.sh sets it when it starts versitygw " +
			`(by hand: eval "$(scripts/versitygw.sh start DIR)")`)
	}
	return blobstore.S3Config{
		Bucket:         os.Getenv("BERTH_TEST_S3_BUCKET"),
		Endpoint:       endpoint,
		ForcePathStyle: true,
		AccessKey:      os.Getenv("BERTH_TEST_S3_ACCESS_KEY"),
		SecretKey:      os.Getenv("BERTH_TEST_S3_SECRET_KEY"),
	}
}

// newS3 returns a store of part size partSize (0: the default) under a
// random prefix, removed with everything under it when the test ends.
func newS3(tb testing.TB, partSize int64, opts ...func(*blobstore.S3Config)) *s3Fixture {
	tb.Helper()
	return newS3At(tb, s3Config(tb), partSize, opts...)
}

// newS3At is newS3 on the server and bucket of cfg.
func newS3At(tb testing.TB, cfg blobstore.S3Config, partSize int64, opts ...func(*blobstore.S3Config)) *s3Fixture {
	tb.Helper()
	cfg.Prefix = "berth-test-" + s3RandomHex(tb, 8) + "/"
	cfg.PartSize = partSize
	for _, o := range opts {
		o(&cfg)
	}
	store, err := blobstore.NewS3(tb.Context(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	f := &s3Fixture{
		store:  store,
		bucket: cfg.Bucket,
		prefix: cfg.Prefix,
		raw: s3.New(s3.Options{
			Region:       "us-east-1",
			BaseEndpoint: aws.String(cfg.Endpoint),
			UsePathStyle: true,
			Credentials:  credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, ""),
		}),
	}
	tb.Cleanup(func() { f.removeAll(tb) })
	return f
}

func (f *s3Fixture) removeAll(tb testing.TB) {
	ctx := context.Background() // the test's context is done by now
	for _, mpu := range f.openMultipart(tb, ctx, f.prefix) {
		if _, err := f.raw.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
			Bucket: &f.bucket, Key: mpu.Key, UploadId: mpu.UploadId,
		}); err != nil {
			tb.Errorf("clean up: %v", err)
		}
	}
	for _, key := range f.keys(tb, ctx, f.prefix) {
		if _, err := f.raw.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &f.bucket, Key: &key}); err != nil {
			tb.Errorf("clean up: %v", err)
		}
	}
}

// keys lists the keys under prefix.
func (f *s3Fixture) keys(tb testing.TB, ctx context.Context, prefix string) []string {
	tb.Helper()
	var keys []string
	pages := s3.NewListObjectsV2Paginator(f.raw, &s3.ListObjectsV2Input{Bucket: &f.bucket, Prefix: &prefix})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			tb.Fatalf("list %s: %v", prefix, err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return keys
}

// openMultipart lists the multipart uploads open under prefix.
func (f *s3Fixture) openMultipart(tb testing.TB, ctx context.Context, prefix string) []types.MultipartUpload {
	tb.Helper()
	out, err := f.raw.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &f.bucket, Prefix: &prefix})
	if err != nil {
		tb.Fatalf("list multipart uploads under %s: %v", prefix, err)
	}
	return out.Uploads
}

func s3RandomHex(tb testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func s3RandomData(tb testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestS3Contract is not parallel: storetest.Run measures the heap. It runs
// the suite with the smallest part S3 allows, so that its larger blobs take
// the multipart paths, and with the default.
func TestS3Contract(t *testing.T) {
	s3Config(t)
	for _, tc := range []struct {
		name     string
		partSize int64
	}{
		{"PartSize5MiB", minPart},
		{"DefaultPartSize", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) blobstore.Store { return newS3(t, tc.partSize).store })
		})
	}
}

func BenchmarkS3(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) blobstore.Store { return newS3(b, 0).store })
}

// appendChunk appends data and checks that all of it was taken.
func s3Append(t *testing.T, s blobstore.Store, id string, state, data []byte) []byte {
	t.Helper()
	st, n, err := s.AppendChunk(t.Context(), id, state, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("AppendChunk of %d bytes: %v", len(data), err)
	}
	if n != int64(len(data)) {
		t.Fatalf("AppendChunk read %d bytes, want %d", n, len(data))
	}
	return st
}

func s3ReadUpload(t *testing.T, s blobstore.Store, id string, state []byte) []byte {
	t.Helper()
	rc, err := s.ReadUpload(t.Context(), id, state)
	if err != nil {
		t.Fatalf("ReadUpload: %v", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("ReadUpload: %v", err)
	}
	return b
}

// s3CheckBlob asserts that blob dgst holds exactly want.
func s3CheckBlob(t *testing.T, s blobstore.Store, dgst digest.Digest, want []byte) {
	t.Helper()
	if size, err := s.Stat(t.Context(), dgst); err != nil || size != int64(len(want)) {
		t.Fatalf("Stat(%s) = %d, %v; want %d bytes", dgst, size, err, len(want))
	}
	rc, err := s.Open(t.Context(), dgst)
	if err != nil {
		t.Fatalf("Open(%s): %v", dgst, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", dgst, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("blob %s holds %d bytes that differ from the %d published", dgst, len(got), len(want))
	}
}

// TestS3ChunksStraddleParts appends chunks that end just before, on and
// just after part boundaries, and several parts at once.
func TestS3ChunksStraddleParts(t *testing.T) {
	t.Parallel()
	f := newS3(t, minPart)
	ctx := t.Context()
	id := storetest.NewUploadID()
	var state, want []byte
	for _, size := range []int{1, minPart - 1, minPart, minPart + 1, 3*minPart + 7, 5} {
		chunk := s3RandomData(t, size)
		state = s3Append(t, f.store, id, state, chunk)
		want = append(want, chunk...)
		if got := s3ReadUpload(t, f.store, id, state); !bytes.Equal(got, want) {
			t.Fatalf("after a chunk of %d bytes, ReadUpload gives %d bytes, want the %d uploaded", size, len(got), len(want))
		}
	}
	t.Logf("state after %d bytes (%d parts): %d bytes: %s", len(want), len(want)/minPart, len(state), state)
	dgst := digest.FromBytes(want)
	if err := f.store.Publish(ctx, id, state, dgst); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	s3CheckBlob(t, f.store, dgst, want)
	if mpus := f.openMultipart(t, ctx, f.prefix); len(mpus) != 0 {
		t.Errorf("Publish left %d multipart uploads open", len(mpus))
	}
}

// TestS3StateStaysSmall appends many chunks that each complete a part: the
// state, saved with every chunk, must stay small.
func TestS3StateStaysSmall(t *testing.T) {
	t.Parallel()
	f := newS3(t, minPart)
	ctx := t.Context()
	const chunks = 20
	id := storetest.NewUploadID()
	h := sha256.New()
	var state []byte
	for range chunks {
		chunk := s3RandomData(t, minPart+1)
		h.Write(chunk)
		state = s3Append(t, f.store, id, state, chunk)
	}
	if len(state) >= 4<<10 {
		t.Errorf("the state of an upload of %d parts is %d bytes, want under 4 KiB", chunks, len(state))
	}
	t.Logf("state of an upload of %d parts in %d chunks: %d bytes", chunks, chunks, len(state))
	dgst := digest.NewDigest(digest.SHA256, h)
	if err := f.store.Publish(ctx, id, state, dgst); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	rc, err := f.store.Open(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, err := digest.SHA256.FromReader(rc); err != nil || got != dgst {
		t.Errorf("the blob hashes to %s, %v; want %s", got, err, dgst)
	}
}

// TestS3RacingAppends is two requests appending to the same saved state at
// once, across a part boundary, so that both write part 2. Whichever state
// the database keeps, it must publish exactly its own bytes. (Completing one
// shared multipart upload would at best let the winner's Publish fail; with
// objects of their own, both states publish, each its own bytes.)
func TestS3RacingAppends(t *testing.T) {
	t.Parallel()
	f := newS3(t, minPart)
	ctx := t.Context()
	id := storetest.NewUploadID()
	base := s3RandomData(t, minPart+100)
	baseState := s3Append(t, f.store, id, nil, base)

	race := func(a, b []byte) (stateA, stateB []byte) {
		t.Helper()
		var wg sync.WaitGroup
		var errA, errB error
		wg.Go(func() { stateA, _, errA = f.store.AppendChunk(ctx, id, baseState, bytes.NewReader(a)) })
		wg.Go(func() { stateB, _, errB = f.store.AppendChunk(ctx, id, baseState, bytes.NewReader(b)) })
		wg.Wait()
		if errA != nil || errB != nil {
			t.Fatalf("racing AppendChunk: %v; %v", errA, errB)
		}
		return stateA, stateB
	}
	// publishes checks that state reads and publishes as want, then deletes
	// the blob, so that the next state's Publish must write it again.
	publishes := func(state, want []byte) {
		t.Helper()
		if got := s3ReadUpload(t, f.store, id, state); !bytes.Equal(got, want) {
			t.Fatalf("ReadUpload gives %d bytes that differ from the %d of this state", len(got), len(want))
		}
		dgst := digest.FromBytes(want)
		if err := f.store.Publish(ctx, id, state, dgst); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		s3CheckBlob(t, f.store, dgst, want)
		if err := f.store.Delete(ctx, dgst); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("SameBytes", func(t *testing.T) {
		chunk := s3RandomData(t, minPart+50)
		stateA, stateB := race(chunk, chunk)
		want := s3Concat(base, chunk)
		publishes(stateA, want)
		publishes(stateB, want)
	})
	t.Run("DifferentBytes", func(t *testing.T) {
		a, b := s3RandomData(t, minPart+50), s3RandomData(t, minPart+50)
		stateA, stateB := race(a, b)
		publishes(stateA, s3Concat(base, a))
		publishes(stateB, s3Concat(base, b))
		publishes(stateA, s3Concat(base, a)) // whatever the order
	})
}

// TestS3FailedChunkAfterParts: a request that dies after it wrote parts
// leaves the saved state as it was, and the upload goes on from it.
func TestS3FailedChunkAfterParts(t *testing.T) {
	t.Parallel()
	f := newS3(t, minPart)
	ctx := t.Context()
	id := storetest.NewUploadID()
	base := s3RandomData(t, minPart/2)
	baseState := s3Append(t, f.store, id, nil, base)
	cut := io.MultiReader(bytes.NewReader(s3RandomData(t, 2*minPart+10)), iotest.ErrReader(errors.New("connection reset")))
	if _, _, err := f.store.AppendChunk(ctx, id, baseState, cut); err == nil {
		t.Fatal("AppendChunk of a body cut short succeeded")
	}
	if got := s3ReadUpload(t, f.store, id, baseState); !bytes.Equal(got, base) {
		t.Fatalf("after a failed chunk, ReadUpload of the saved state gives %d bytes, want its %d", len(got), len(base))
	}
	chunk := s3RandomData(t, minPart+1)
	want := s3Concat(base, chunk)
	state := s3Append(t, f.store, id, baseState, chunk)
	dgst := digest.FromBytes(want)
	if err := f.store.Publish(ctx, id, state, dgst); err != nil {
		t.Fatal(err)
	}
	s3CheckBlob(t, f.store, dgst, want)
}

func s3Concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestS3MultipartCopy makes every Publish a multipart copy, as it is for
// more than one piece, or one over 5 GiB (CopyObject's limit): here also a
// lone tail or part.
func TestS3MultipartCopy(t *testing.T) {
	t.Parallel()
	f := newS3(t, minPart)
	f.store.SetMaxCopyObjectForTest(0)
	ctx := t.Context()
	for _, tc := range []struct {
		name   string
		chunks []int
	}{
		{"TailOnly", []int{300 << 10}},
		{"OnePart", []int{minPart}},
		{"PartsAndTail", []int{minPart - 3, minPart + 1000, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := storetest.NewUploadID()
			var state, want []byte
			for _, size := range tc.chunks {
				chunk := s3RandomData(t, size)
				state = s3Append(t, f.store, id, state, chunk)
				want = append(want, chunk...)
			}
			dgst := digest.FromBytes(want)
			for range 2 {
				if err := f.store.Publish(ctx, id, state, dgst); err != nil {
					t.Fatalf("Publish: %v", err)
				}
				s3CheckBlob(t, f.store, dgst, want)
				if err := f.store.Delete(ctx, dgst); err != nil {
					t.Fatal(err)
				}
			}
			for _, key := range f.keys(t, ctx, f.prefix+"uploads/"+id+"/") {
				if strings.Contains(key, "/publish-") {
					t.Errorf("Publish left its record %s", key)
				}
			}
		})
	}
	if mpus := f.openMultipart(t, ctx, f.prefix); len(mpus) != 0 {
		t.Errorf("Publish left %d multipart uploads open", len(mpus))
	}
}

// TestS3DeleteUploadRemovesEverything: objects of saved and unsaved states,
// and the multipart upload of a Publish that never finished.
func TestS3DeleteUploadRemovesEverything(t *testing.T) {
	t.Parallel()
	f := newS3(t, minPart)
	ctx := t.Context()
	id := storetest.NewUploadID()
	data := s3RandomData(t, 2*minPart+10)
	state := s3Append(t, f.store, id, nil, data[:minPart+5])
	s3Append(t, f.store, id, state, s3RandomData(t, minPart)) // a racing request's, never saved
	state = s3Append(t, f.store, id, state, data[minPart+5:])
	dgst := digest.FromBytes(data)
	key, mpuID, err := f.store.StartPublishForTest(ctx, id, dgst)
	if err != nil {
		t.Fatal(err)
	}
	mpus := f.openMultipart(t, ctx, f.prefix)
	if len(mpus) != 1 || aws.ToString(mpus[0].Key) != key || aws.ToString(mpus[0].UploadId) != mpuID {
		t.Fatalf("multipart uploads open: %v, want the one at %s", mpus, key)
	}
	if keys := f.keys(t, ctx, f.prefix+"uploads/"+id+"/"); len(keys) < 5 {
		t.Fatalf("the upload has %d objects, want at least 5: %v", len(keys), keys)
	}

	if err := f.store.DeleteUpload(ctx, id, nil); err != nil {
		t.Fatalf("DeleteUpload: %v", err)
	}
	if keys := f.keys(t, ctx, f.prefix+"uploads/"+id+"/"); len(keys) != 0 {
		t.Errorf("DeleteUpload left %v", keys)
	}
	if mpus := f.openMultipart(t, ctx, f.prefix); len(mpus) != 0 {
		t.Errorf("DeleteUpload left %d multipart uploads open", len(mpus))
	}
	if _, err := f.store.Stat(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat = %v, want ErrNotFound", err)
	}
}

// countingTransport counts requests by method.
type countingTransport struct {
	counts sync.Map // method → *atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	n, _ := c.counts.LoadOrStore(r.Method, new(atomic.Int64))
	n.(*atomic.Int64).Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

func (c *countingTransport) take(method string) int64 {
	n, ok := c.counts.Load(method)
	if !ok {
		return 0
	}
	return n.(*atomic.Int64).Swap(0)
}

// TestS3OpenServesRanges serves a blob with http.ServeContent, as the
// handlers do: the size comes from Open's HEAD, and each range costs one
// GET from its offset.
func TestS3OpenServesRanges(t *testing.T) {
	t.Parallel()
	transport := &countingTransport{}
	f := newS3(t, minPart, func(c *blobstore.S3Config) { c.HTTPClient = &http.Client{Transport: transport} })
	ctx := t.Context()
	data := s3RandomData(t, 1<<20+17)
	dgst := digest.FromBytes(data)
	id := storetest.NewUploadID()
	if err := f.store.Publish(ctx, id, s3Append(t, f.store, id, nil, data), dgst); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc, err := f.store.Open(r.Context(), dgst)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer rc.Close()
		w.Header().Set("Content-Type", "application/octet-stream") // or ServeContent reads to sniff
		http.ServeContent(w, r, "", time.Time{}, rc)
	}))
	defer srv.Close()

	get := func(rng string) *http.Response {
		t.Helper()
		transport.take(http.MethodHead)
		transport.take(http.MethodGet)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	size := len(data)
	for _, tc := range []struct {
		rng        string
		status     int
		start, end int // of the body, end exclusive
	}{
		{"", http.StatusOK, 0, size},
		{"bytes=1000-1999", http.StatusPartialContent, 1000, 2000},
		{"bytes=-10", http.StatusPartialContent, size - 10, size},
		{fmt.Sprintf("bytes=%d-", size-5000), http.StatusPartialContent, size - 5000, size},
	} {
		resp := get(tc.rng)
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tc.status || !bytes.Equal(body, data[tc.start:tc.end]) {
			t.Errorf("Range %q: status %d, %d bytes; want %d and bytes [%d, %d)",
				tc.rng, resp.StatusCode, len(body), tc.status, tc.start, tc.end)
		}
		if heads, gets := transport.take(http.MethodHead), transport.take(http.MethodGet); heads != 1 || gets != 1 {
			t.Errorf("Range %q took %d HEAD and %d GET requests to S3, want 1 and 1", tc.rng, heads, gets)
		}
	}

	// Two ranges: ServeContent seeks to each, so each costs a GET.
	resp := get("bytes=0-9,500000-500009")
	_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusPartialContent || err != nil {
		t.Fatalf("two ranges: status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	for _, start := range []int{0, 500000} {
		part, err := mr.NextPart()
		if err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(part); err != nil || !bytes.Equal(got, data[start:start+10]) {
			t.Errorf("range at %d: %v, or bytes that differ", start, err)
		}
	}
	if gets := transport.take(http.MethodGet); gets != 2 {
		t.Errorf("two ranges took %d GET requests to S3, want 2", gets)
	}
}

// TestS3NotFound: S3's NoSuchKey and NotFound are the package's ErrNotFound,
// wherever they come from.
func TestS3NotFound(t *testing.T) {
	t.Parallel()
	f := newS3(t, minPart)
	ctx := t.Context()
	missing := digest.FromBytes(s3RandomData(t, 10))
	if _, err := f.store.Stat(ctx, missing); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat = %v, want ErrNotFound", err)
	}
	if _, err := f.store.Open(ctx, missing); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Open = %v, want ErrNotFound", err)
	}
	if err := f.store.Delete(ctx, missing); err != nil {
		t.Errorf("Delete of a missing blob: %v", err)
	}

	for _, size := range []int{1000, minPart + 1000} { // tail only; parts and tail
		id := storetest.NewUploadID()
		state := s3Append(t, f.store, id, nil, s3RandomData(t, size))
		if err := f.store.DeleteUpload(ctx, id, state); err != nil {
			t.Fatal(err)
		}
		if _, err := f.store.ReadUpload(ctx, id, state); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("%d bytes: ReadUpload after DeleteUpload = %v, want ErrNotFound", size, err)
		}
		if err := f.store.Publish(ctx, id, state, missing); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("%d bytes: Publish after DeleteUpload = %v, want ErrNotFound", size, err)
		}
		if _, _, err := f.store.AppendChunk(ctx, id, state, strings.NewReader("more")); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("%d bytes: AppendChunk after DeleteUpload = %v, want ErrNotFound", size, err)
		}
	}
	if mpus := f.openMultipart(t, ctx, f.prefix); len(mpus) != 0 {
		t.Errorf("failed Publishes left %d multipart uploads open", len(mpus))
	}

	// Malformed names are refused before they become keys.
	for _, id := range []string{"", "..", "a/b", "../uploads", strings.Repeat("a", 200)} {
		if _, _, err := f.store.AppendChunk(ctx, id, nil, strings.NewReader("x")); err == nil {
			t.Errorf("AppendChunk accepted upload id %q", id)
		}
		if err := f.store.DeleteUpload(ctx, id, nil); err == nil {
			t.Errorf("DeleteUpload accepted upload id %q", id)
		}
	}
	for _, d := range []digest.Digest{"", "sha256", "sha256:", "sha256:a", "sha256:../../x", "../x:abc", "sha256:ab/cd"} {
		if _, err := f.store.Stat(ctx, d); err == nil || errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("Stat(%q) = %v, want an error other than ErrNotFound", d, err)
		}
		if err := f.store.Delete(ctx, d); err == nil {
			t.Errorf("Delete accepted digest %q", d)
		}
	}
	for _, state := range []string{"{", `{"ps":1}`, `{"ps":5242880,"t":"../../x","ts":3}`, `{"ps":5242880,"r":[{"t":"zz","n":1}]}`} {
		if _, err := f.store.ReadUpload(ctx, storetest.NewUploadID(), []byte(state)); err == nil {
			t.Errorf("ReadUpload accepted state %s", state)
		}
	}
}

func TestS3PresignGet(t *testing.T) {
	t.Parallel()
	f := newS3(t, minPart)
	ctx := t.Context()
	data := s3RandomData(t, 12345)
	dgst := digest.FromBytes(data)
	id := storetest.NewUploadID()
	if err := f.store.Publish(ctx, id, s3Append(t, f.store, id, nil, data), dgst); err != nil {
		t.Fatal(err)
	}
	fetch := func(d digest.Digest) (int, []byte) {
		t.Helper()
		u, err := f.store.PresignGet(ctx, d, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	if status, body := fetch(dgst); status != http.StatusOK || !bytes.Equal(body, data) {
		t.Errorf("GET of the presigned URL: status %d, %d bytes; want 200 and the blob: %.300s", status, len(body), body)
	}
	if status, _ := fetch(digest.FromBytes(s3RandomData(t, 10))); status != http.StatusNotFound {
		t.Errorf("GET of a missing blob's presigned URL: status %d, want 404", status)
	}
	if _, err := f.store.PresignGet(ctx, dgst, 0); err == nil {
		t.Errorf("PresignGet accepted a lifetime of 0")
	}
}

func TestNewS3Errors(t *testing.T) {
	t.Parallel()
	cfg := s3Config(t)
	bad := cfg
	bad.Bucket = "berth-no-such-bucket-" + s3RandomHex(t, 4)
	if _, err := blobstore.NewS3(t.Context(), bad); err == nil || !strings.Contains(err.Error(), bad.Bucket) {
		t.Errorf("NewS3 with a missing bucket: %v; want an error naming %s", err, bad.Bucket)
	} else {
		t.Logf("missing bucket: %v", err)
	}
	bad = cfg
	bad.SecretKey += "-wrong"
	if _, err := blobstore.NewS3(t.Context(), bad); err == nil {
		t.Errorf("NewS3 with a wrong secret key succeeded")
	} else {
		t.Logf("wrong secret: %v", err)
	}
	for _, size := range []int64{1, minPart - 1, 5<<30 + 1} {
		bad = cfg
		bad.PartSize = size
		if _, err := blobstore.NewS3(t.Context(), bad); err == nil {
			t.Errorf("NewS3 accepted part size %d", size)
		}
	}
}

// Part buffers in use are bounded: with room for one, a second upload waits
// (here until its context ends) while the first holds its buffer.
func TestS3BoundsPartBuffers(t *testing.T) {
	f := newS3(t, 0)
	f.store.SetMaxInFlightPartsForTest(1)
	pr, pw := io.Pipe()
	first := make(chan error, 1)
	go func() {
		_, _, err := f.store.AppendChunk(t.Context(), storetest.NewUploadID(), nil, pr)
		first <- err
	}()
	pw.Write([]byte("the first upload holds the only buffer"))
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, _, err := f.store.AppendChunk(ctx, storetest.NewUploadID(), nil, bytes.NewReader([]byte("second"))); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second upload: %v, want it to wait for a buffer", err)
	}
	pw.Close()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.store.AppendChunk(t.Context(), storetest.NewUploadID(), nil, bytes.NewReader([]byte("third"))); err != nil {
		t.Fatalf("after the first finished: %v", err)
	}
}
