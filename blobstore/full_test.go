//go:build linux

package blobstore_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/blobstore/storetest"
)

// The tests of this file fill a real filesystem: a tmpfs of a few MiB
// mounted for the test, which needs root (CAP_SYS_ADMIN). Without it they
// skip.

// mountTmpfs mounts a tmpfs with the given options (e.g. "size=4m") on a
// new directory and unmounts it when the test ends.
func mountTmpfs(t *testing.T, options string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("filling a disk needs a small tmpfs, and mounting one needs root: run as root to test a full store")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, options); err != nil {
		t.Skipf("mount a tmpfs (%s) to fill: %v; a full store is not tested", options, err)
	}
	// Registered after TempDir's removal, so it runs before it.
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount the test's tmpfs %s: %v", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

// filler takes up a filesystem's free space, all of it or all but some.
type filler struct {
	t    *testing.T
	path string
	size int64
}

// fillDisk writes a file in dir until the filesystem is full.
func fillDisk(t *testing.T, dir string) *filler {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 64<<10)
	var size int64
	for {
		n, err := f.Write(block)
		size += int64(n)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatalf("fill the disk: %v", err)
		}
	}
	return &filler{t: t, path: f.Name(), size: size}
}

// leave frees n bytes (rounded to pages by the filesystem).
func (f *filler) leave(n int64) {
	f.t.Helper()
	if err := os.Truncate(f.path, f.size-n); err != nil {
		f.t.Fatal(err)
	}
	f.size -= n
}

func (f *filler) remove() {
	f.t.Helper()
	if err := os.Remove(f.path); err != nil {
		f.t.Fatal(err)
	}
}

// fillInodes creates empty files in a new directory of dir until the
// filesystem has no inode left, and returns a function that frees them.
func fillInodes(t *testing.T, dir string) (free func()) {
	t.Helper()
	fill := filepath.Join(dir, "inodes")
	if err := os.Mkdir(fill, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		f, err := os.Create(filepath.Join(fill, fmt.Sprint(i)))
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatalf("use up the inodes: %v", err)
		}
		f.Close()
	}
	return func() {
		t.Helper()
		if err := os.RemoveAll(fill); err != nil {
			t.Fatal(err)
		}
	}
}

// wantFull asserts that err is ErrStorageFull and still carries the
// filesystem's own error.
func wantFull(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, blobstore.ErrStorageFull) {
		t.Fatalf("%s on a full disk: %v; want ErrStorageFull", what, err)
	}
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("%s: %q does not keep the cause, ENOSPC", what, err)
	}
	t.Logf("%s: %v", what, err)
}

// fileSizes maps the files of an upload's directory to their sizes.
func fileSizes(t *testing.T, root, id string) map[string]int64 {
	t.Helper()
	sizes := map[string]int64{}
	entries, err := os.ReadDir(filepath.Join(root, "uploads", id))
	if errors.Is(err, fs.ErrNotExist) {
		return sizes
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		sizes[e.Name()] = fi.Size()
	}
	return sizes
}

// blobFiles lists every file under blobs/.
func blobFiles(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(root, "blobs"), func(path string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestFSFullDiskChunk: a chunk that fills the disk halfway through is cut
// off again, so the saved state still describes the upload file exactly;
// once there is room, the same chunk goes on from that state, into the same
// file, and the upload publishes the right bytes.
func TestFSFullDiskChunk(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	disk := mountTmpfs(t, "size=4m")
	root := filepath.Join(disk, "store")
	s := newFS(t, root)
	id := storetest.NewUploadID()
	first := s3RandomData(t, 512<<10)
	state, _, err := s.AppendChunk(ctx, id, nil, bytes.NewReader(first))
	if err != nil {
		t.Fatal(err)
	}
	saved := fileSizes(t, root, id)

	fill := fillDisk(t, disk)
	fill.leave(256 << 10)
	second := s3RandomData(t, 1<<20)
	newState, n, err := s.AppendChunk(ctx, id, state, bytes.NewReader(second))
	wantFull(t, "AppendChunk", err)
	if newState != nil || n != 0 {
		t.Errorf("the failed AppendChunk returned a state of %d bytes and n = %d", len(newState), n)
	}
	if got := fileSizes(t, root, id); !maps.Equal(got, saved) {
		t.Errorf("after the failed chunk the upload holds %v, want %v, what the saved state names", got, saved)
	}
	if got := s3ReadUpload(t, s, id, state); !bytes.Equal(got, first) {
		t.Fatalf("ReadUpload of the saved state gives %d bytes that differ from the %d appended", len(got), len(first))
	}

	fill.remove()
	state, _, err = s.AppendChunk(ctx, id, state, bytes.NewReader(second))
	if err != nil {
		t.Fatalf("AppendChunk with room again: %v", err)
	}
	if got := fileSizes(t, root, id); len(got) != 1 {
		t.Errorf("the upload holds %v, want its one file: the retried chunk should append to it", got)
	}
	want := s3Concat(first, second)
	dgst := digest.FromBytes(want)
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		t.Fatal(err)
	}
	checkFSBlob(t, s, dgst, string(want))
}

// TestFSFullDiskFirstChunk: the first chunk of an upload, which creates
// its file, leaves no file when the disk is full.
func TestFSFullDiskFirstChunk(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	disk := mountTmpfs(t, "size=4m")
	root := filepath.Join(disk, "store")
	s := newFS(t, root)
	fill := fillDisk(t, disk)
	fill.leave(64 << 10)
	id := storetest.NewUploadID()
	data := s3RandomData(t, 512<<10)
	_, _, err := s.AppendChunk(ctx, id, nil, bytes.NewReader(data))
	wantFull(t, "AppendChunk", err)
	if got := fileSizes(t, root, id); len(got) != 0 {
		t.Errorf("the failed first chunk left %v", got)
	}

	fill.remove()
	state, _, err := s.AppendChunk(ctx, id, nil, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("AppendChunk with room again: %v", err)
	}
	dgst := digest.FromBytes(data)
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		t.Fatal(err)
	}
	checkFSBlob(t, s, dgst, string(data))
}

// TestFSFullDiskPublishCopy: an upload spread over two files is copied
// into one by Publish; on a full disk the half-made copy is removed and no
// blob appears, and Publish succeeds once there is room.
func TestFSFullDiskPublishCopy(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	disk := mountTmpfs(t, "size=4m")
	root := filepath.Join(disk, "store")
	s := newFS(t, root)
	id := storetest.NewUploadID()
	dir := filepath.Join(root, "uploads", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	a, b := s3RandomData(t, 600<<10), s3RandomData(t, 600<<10)
	for name, data := range map[string][]byte{"data-aa": a, "data-bb": b} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	state := []byte(fmt.Sprintf(`{"parts":[{"name":"data-aa","size":%d},{"name":"data-bb","size":%d}]}`, len(a), len(b)))
	saved := fileSizes(t, root, id)
	want := s3Concat(a, b)
	dgst := digest.FromBytes(want)

	fill := fillDisk(t, disk)
	fill.leave(256 << 10)
	wantFull(t, "Publish", s.Publish(ctx, id, state, dgst))
	if got := fileSizes(t, root, id); !maps.Equal(got, saved) {
		t.Errorf("after the failed Publish the upload holds %v, want only %v", got, saved)
	}
	if files := blobFiles(t, root); len(files) != 0 {
		t.Errorf("the failed Publish left %q under blobs/", files)
	}
	if _, err := s.Stat(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat after the failed Publish: %v, want ErrNotFound", err)
	}

	fill.remove()
	if err := s.Publish(ctx, id, state, dgst); err != nil {
		t.Fatalf("Publish with room again: %v", err)
	}
	checkFSBlob(t, s, dgst, string(want))
}

// TestFSOutOfInodes: no inode left is a full disk too. Creating an upload's
// directory and a blob's directory fails, and so does linking a blob into
// place (tmpfs counts every link as an inode).
func TestFSOutOfInodes(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	disk := mountTmpfs(t, "size=4m,nr_inodes=64")
	root := filepath.Join(disk, "store")
	s := newFS(t, root)

	// Two uploads ready to publish, one whose blob directory exists (so
	// that Publish gets as far as the link) and one whose does not.
	type upload struct {
		id    string
		data  []byte
		state []byte
		dgst  digest.Digest
	}
	var ups []upload
	for len(ups) < 2 {
		u := upload{id: storetest.NewUploadID(), data: s3RandomData(t, 1000)}
		u.dgst = digest.FromBytes(u.data)
		if len(ups) == 1 && u.dgst.Encoded()[:2] == ups[0].dgst.Encoded()[:2] {
			continue // the second blob needs a directory of its own
		}
		var err error
		if u.state, _, err = s.AppendChunk(ctx, u.id, nil, bytes.NewReader(u.data)); err != nil {
			t.Fatal(err)
		}
		ups = append(ups, u)
	}
	linked, unlinked := ups[0], ups[1]
	if err := os.MkdirAll(filepath.Dir(blobFile(root, linked.dgst)), 0o755); err != nil {
		t.Fatal(err)
	}

	free := fillInodes(t, disk)
	newID := storetest.NewUploadID()
	_, _, err := s.AppendChunk(ctx, newID, nil, strings.NewReader("a first chunk"))
	wantFull(t, "AppendChunk of a new upload", err)
	if got := dirNames(t, filepath.Join(root, "uploads")); !slices.Equal(got, sorted(linked.id, unlinked.id)) {
		t.Errorf("uploads/ holds %q, want only the two uploads from before", got)
	}
	wantFull(t, "Publish (link)", s.Publish(ctx, linked.id, linked.state, linked.dgst))
	wantFull(t, "Publish (directory)", s.Publish(ctx, unlinked.id, unlinked.state, unlinked.dgst))
	if files := blobFiles(t, root); len(files) != 0 {
		t.Errorf("the failed Publishes left %q under blobs/", files)
	}

	free()
	for _, u := range ups {
		if err := s.Publish(ctx, u.id, u.state, u.dgst); err != nil {
			t.Fatalf("Publish with inodes again: %v", err)
		}
		checkFSBlob(t, s, u.dgst, string(u.data))
	}
	if _, _, err := s.AppendChunk(ctx, newID, nil, strings.NewReader("a first chunk")); err != nil {
		t.Fatalf("AppendChunk with inodes again: %v", err)
	}
}

func sorted(s ...string) []string {
	slices.Sort(s)
	return s
}
