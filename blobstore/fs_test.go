package blobstore_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/blobstore/storetest"
)

// TestFSContract is not parallel: storetest.Run measures the heap.
func TestFSContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) blobstore.Store { return newFS(t, t.TempDir()) })
}

func BenchmarkFS(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) blobstore.Store { return newFS(b, b.TempDir()) })
}

func newFS(tb testing.TB, dir string) *blobstore.FS {
	tb.Helper()
	s, err := blobstore.NewFS(dir)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// fsSetup returns a store rooted at parent/store, with a file "secret" in
// parent that an escaping path could reach, and a published blob that an
// escaping DeleteUpload could remove.
func fsSetup(t *testing.T) (s *blobstore.FS, parent, root string, blob digest.Digest) {
	t.Helper()
	parent = t.TempDir()
	root = filepath.Join(parent, "store")
	s = newFS(t, root)
	if err := os.WriteFile(filepath.Join(parent, "secret"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	data := []byte("a published blob")
	blob = digest.FromBytes(data)
	id := storetest.NewUploadID()
	state, _, err := s.AppendChunk(t.Context(), id, nil, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(t.Context(), id, state, blob); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteUpload(t.Context(), id, state); err != nil {
		t.Fatal(err)
	}
	return s, parent, root, blob
}

// checkUntouched asserts that parent holds only the store and the secret,
// the store only its two directories with no upload left, and that the
// blob is still there.
func checkUntouched(t *testing.T, s *blobstore.FS, parent, root string, blob digest.Digest) {
	t.Helper()
	if got := dirNames(t, parent); !slices.Equal(got, []string{"secret", "store"}) {
		t.Errorf("the store's parent holds %q, want only secret and store", got)
	}
	if got := dirNames(t, root); !slices.Equal(got, []string{"blobs", "uploads"}) {
		t.Errorf("the store's root holds %q, want only blobs and uploads", got)
	}
	if got := dirNames(t, filepath.Join(root, "uploads")); len(got) != 0 {
		t.Errorf("uploads/ holds %q, want nothing", got)
	}
	if got := dirNames(t, filepath.Join(root, "blobs")); !slices.Equal(got, []string{"sha256"}) {
		t.Errorf("blobs/ holds %q, want only sha256", got)
	}
	if secret, err := os.ReadFile(filepath.Join(parent, "secret")); err != nil || string(secret) != "secret" {
		t.Errorf("the file beside the store: %q, %v", secret, err)
	}
	if _, err := s.Stat(t.Context(), blob); err != nil {
		t.Errorf("the published blob: %v", err)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestFSRejectsUnsafeUploadIDs(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, parent, root, blob := fsSetup(t)
	empty := digest.FromBytes(nil)
	for _, id := range []string{
		"", ".", "..", "../escape", "../../escape", "a/b", "/abs", "../blobs", "../../store",
		"ok/../../escape", "..\\escape", "x\x00y", strings.Repeat("a", 129),
	} {
		if _, _, err := s.AppendChunk(ctx, id, nil, strings.NewReader("data")); err == nil {
			t.Errorf("AppendChunk(%q) succeeded", id)
		}
		if rc, err := s.ReadUpload(ctx, id, nil); err == nil {
			rc.Close()
			t.Errorf("ReadUpload(%q) succeeded", id)
		}
		if err := s.Publish(ctx, id, nil, empty); err == nil {
			t.Errorf("Publish(%q) succeeded", id)
		}
		if err := s.DeleteUpload(ctx, id, nil); err == nil {
			t.Errorf("DeleteUpload(%q) succeeded", id)
		}
	}
	if _, err := s.Stat(ctx, empty); err == nil {
		t.Errorf("a rejected Publish stored the blob")
	}
	checkUntouched(t, s, parent, root, blob)
}

func TestFSRejectsCorruptState(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, parent, root, blob := fsSetup(t)
	for _, state := range []string{
		"not json",
		`{"parts":`,
		`{"parts":[{"name":"../../../secret","size":6}]}`,
		`{"parts":[{"name":"..","size":6}]}`,
		`{"parts":[{"name":"a/b","size":6}]}`,
		`{"parts":[{"name":"","size":6}]}`,
		`{"parts":[{"name":"/etc/passwd","size":6}]}`,
	} {
		id := storetest.NewUploadID()
		if _, _, err := s.AppendChunk(ctx, id, []byte(state), strings.NewReader("data")); err == nil {
			t.Errorf("AppendChunk with state %s succeeded", state)
		}
		if rc, err := s.ReadUpload(ctx, id, []byte(state)); err == nil {
			rc.Close()
			t.Errorf("ReadUpload with state %s succeeded", state)
		}
		if err := s.Publish(ctx, id, []byte(state), digest.FromString("secret")); err == nil {
			t.Errorf("Publish with state %s succeeded", state)
		}
		// The bytes of the known blob: a bad state must be rejected even
		// when Publish has nothing to do.
		if err := s.Publish(ctx, id, []byte(state), blob); err == nil {
			t.Errorf("Publish of an existing blob with state %s succeeded", state)
		}
	}
	checkUntouched(t, s, parent, root, blob)
}

func TestFSRejectsMalformedDigests(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, parent, root, blob := fsSetup(t)
	id := storetest.NewUploadID()
	state, _, err := s.AppendChunk(ctx, id, nil, strings.NewReader("data"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dgst := range []digest.Digest{
		"", "sha256", "sha256:", "sha256:a", ":abcd", "sha256:../../../escape", "../x:abcdef", "sha256:ab/cd",
	} {
		// Any error will do; a panic or a file outside blobs/ will not.
		if _, err := s.Stat(ctx, dgst); err == nil {
			t.Errorf("Stat(%q) succeeded", dgst)
		}
		if rc, err := s.Open(ctx, dgst); err == nil {
			rc.Close()
			t.Errorf("Open(%q) succeeded", dgst)
		}
		if err := s.Publish(ctx, id, state, dgst); err == nil {
			t.Errorf("Publish(%q) succeeded", dgst)
		}
		if err := s.Delete(ctx, dgst); err == nil {
			t.Errorf("Delete(%q) succeeded", dgst)
		}
	}
	if err := s.DeleteUpload(ctx, id, state); err != nil {
		t.Fatal(err)
	}
	checkUntouched(t, s, parent, root, blob)
}

// TestFSPublishedLayout checks the documented blob path and that the file
// there is read-only: a blob never changes once published.
func TestFSPublishedLayout(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	root := t.TempDir()
	s := newFS(t, root)
	for _, tc := range []struct {
		name   string
		chunks []string
		alg    digest.Algorithm
	}{
		{"OneChunk", []string{"one chunk"}, digest.SHA256},
		{"ThreeChunks", []string{"three ", "chunks", "!"}, digest.SHA256},
		{"SHA512", []string{"sha", "512"}, digest.SHA512},
		{"Empty", nil, digest.SHA256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := strings.Join(tc.chunks, "")
			dgst := tc.alg.FromString(data)
			id := storetest.NewUploadID()
			var state []byte
			for _, c := range tc.chunks {
				st, _, err := s.AppendChunk(ctx, id, state, strings.NewReader(c))
				if err != nil {
					t.Fatal(err)
				}
				state = st
			}
			if err := s.Publish(ctx, id, state, dgst); err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteUpload(ctx, id, state); err != nil {
				t.Fatal(err)
			}
			enc := dgst.Encoded()
			path := filepath.Join(root, "blobs", string(tc.alg), enc[:2], enc)
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != data {
				t.Errorf("%s holds %q, want %q", path, got, data)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o222 != 0 || fi.Mode().Perm()&0o444 != 0o444 {
				t.Errorf("%s has mode %v, want a regular file readable by all and writable by none", path, fi.Mode())
			}
		})
	}
}

// TestFSOpenReturnsFile: net/http's ServeContent sends an *os.File with
// sendfile, which is most of the bandwidth of a pull.
func TestFSOpenReturnsFile(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newFS(t, t.TempDir())
	id := storetest.NewUploadID()
	state, _, err := s.AppendChunk(ctx, id, nil, strings.NewReader("sendfile"))
	if err != nil {
		t.Fatal(err)
	}
	dgst := digest.FromString("sendfile")
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		t.Fatal(err)
	}
	rc, err := s.Open(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, ok := rc.(*os.File); !ok {
		t.Errorf("Open returned a %T, want an *os.File", rc)
	}
}

// uploadFiles lists the files of an upload's directory.
func uploadFiles(t *testing.T, root, id string) []string {
	t.Helper()
	return dirNames(t, filepath.Join(root, "uploads", id))
}

// blobFile is the path of a published blob under root.
func blobFile(root string, dgst digest.Digest) string {
	return filepath.Join(root, "blobs", string(dgst.Algorithm()), dgst.Encoded()[:2], dgst.Encoded())
}

// sameFile reports whether the published blob is the upload's file itself
// (linked, not copied).
func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(fa, fb)
}

// TestFSChunksAppendToOneFile: the bytes of a chunked upload are written
// once. Every chunk, including one retried after a failure, lands in the
// same file, and Publish links that file as the blob instead of copying.
func TestFSChunksAppendToOneFile(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	root := t.TempDir()
	s := newFS(t, root)
	id := storetest.NewUploadID()
	var state []byte
	var want []byte
	for i, c := range []string{"first chunk, ", "second, ", "third"} {
		if i == 2 {
			// The client goes away in the middle of the third chunk, then
			// sends it again.
			r := io.MultiReader(strings.NewReader(c[:2]), iotest.ErrReader(errors.New("reset")))
			if _, _, err := s.AppendChunk(ctx, id, state, r); err == nil {
				t.Fatal("AppendChunk from a failing reader succeeded")
			}
		}
		st, _, err := s.AppendChunk(ctx, id, state, strings.NewReader(c))
		if err != nil {
			t.Fatal(err)
		}
		state = st
		want = append(want, c...)
	}
	files := uploadFiles(t, root, id)
	if len(files) != 1 {
		t.Fatalf("the upload directory holds %q, want one file", files)
	}
	dgst := digest.FromBytes(want)
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		t.Fatal(err)
	}
	if !sameFile(t, blobFile(root, dgst), filepath.Join(root, "uploads", id, files[0])) {
		t.Error("Publish copied the upload, want a link to its file")
	}
	if got := uploadFiles(t, root, id); !slices.Equal(got, files) {
		t.Errorf("after Publish the upload directory holds %q, want %q", got, files)
	}
}

// TestFSBusyFileIsNotShared: while a request holds an upload file's lock
// (it is still appending), another request's chunk goes to a file of its
// own, and Publish copies rather than sealing a file that is being written.
func TestFSBusyFileIsNotShared(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	root := t.TempDir()
	s := newFS(t, root)
	id := storetest.NewUploadID()
	state, _, err := s.AppendChunk(ctx, id, nil, strings.NewReader("base "))
	if err != nil {
		t.Fatal(err)
	}
	first := filepath.Join(root, "uploads", id, uploadFiles(t, root, id)[0])
	holder, err := os.Open(first)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := unix.Flock(int(holder.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}

	state, _, err = s.AppendChunk(ctx, id, state, strings.NewReader("and more"))
	if err != nil {
		t.Fatal(err)
	}
	if got := uploadFiles(t, root, id); len(got) != 2 {
		t.Errorf("with the first file locked the upload directory holds %q, want two files", got)
	}
	whole := digest.FromString("base and more")
	if err := s.Publish(ctx, id, state, whole); err != nil {
		t.Fatal(err)
	}
	checkFSBlob(t, s, whole, "base and more")

	// The base alone is the whole first file, but locked: copied, and the
	// file left writable.
	base := digest.FromString("base ")
	baseState := []byte(`{"parts":[{"name":"` + filepath.Base(first) + `","size":5}]}`)
	if err := s.Publish(ctx, id, baseState, base); err != nil {
		t.Fatal(err)
	}
	if sameFile(t, blobFile(root, base), first) {
		t.Error("Publish linked a file another request holds locked")
	}
	checkFSBlob(t, s, base, "base ")
	if fi, err := os.Stat(first); err != nil || fi.Mode().Perm()&0o200 == 0 {
		t.Errorf("the locked file: %v, %v; want it untouched (writable)", fi.Mode(), err)
	}
}

// TestFSReadsStatesOfPartFiles: upload sessions saved before chunks shared
// one file name a whole file per chunk ({"name","size"}, no offset); they
// still read and publish after an upgrade.
func TestFSReadsStatesOfPartFiles(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	root := t.TempDir()
	s := newFS(t, root)
	id := storetest.NewUploadID()
	dir := filepath.Join(root, "uploads", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"part-0-aa": "old ", "part-1-bb": "parts"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	state := []byte(`{"parts":[{"name":"part-0-aa","size":4},{"name":"part-1-bb","size":5}]}`)
	state, _, err := s.AppendChunk(ctx, id, state, strings.NewReader(" and a new chunk"))
	if err != nil {
		t.Fatal(err)
	}
	want := "old parts and a new chunk"
	dgst := digest.FromString(want)
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		t.Fatal(err)
	}
	checkFSBlob(t, s, dgst, want)
}

func checkFSBlob(t *testing.T, s *blobstore.FS, dgst digest.Digest, want string) {
	t.Helper()
	rc, err := s.Open(t.Context(), dgst)
	if err != nil {
		t.Fatalf("Open(%s): %v", dgst, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || string(got) != want {
		t.Errorf("blob %s holds %q, %v; want %q", dgst, got, err, want)
	}
}
