//go:build unix

package blobstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestFSFullErrnos covers the errors a tmpfs cannot produce for the tests
// of full_test.go: EDQUOT (root is exempt from quotas) and EFBIG, which is
// not a full disk: no amount of freed space lets the file grow.
func TestFSFullErrnos(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		full bool
	}{
		{&fs.PathError{Op: "write", Path: "/blobs/data-1", Err: syscall.ENOSPC}, true},
		{&fs.PathError{Op: "write", Path: "/blobs/data-1", Err: syscall.EDQUOT}, true},
		{&os.LinkError{Op: "link", Old: "/a", New: "/b", Err: syscall.ENOSPC}, true},
		{fmt.Errorf("assemble upload: %w", &fs.PathError{Op: "copy_file_range", Path: "/x", Err: syscall.EDQUOT}), true},
		{&fs.PathError{Op: "write", Path: "/blobs/data-1", Err: syscall.EFBIG}, false},
		{&fs.PathError{Op: "write", Path: "/blobs/data-1", Err: syscall.EIO}, false},
		{errors.New("no space left on device"), false}, // text is not an errno
	} {
		err := storageFull(tc.err, fsFull)
		if errors.Is(err, ErrStorageFull) != tc.full {
			t.Errorf("%v: ErrStorageFull is %v, want %v", tc.err, !tc.full, tc.full)
		}
		if !errors.Is(err, tc.err) || !strings.HasSuffix(err.Error(), tc.err.Error()) {
			t.Errorf("%v became %v: the cause is lost", tc.err, err)
		}
		if again := storageFull(err, fsFull); again.Error() != err.Error() {
			t.Errorf("marked twice: %v", again)
		}
	}
	if storageFull(nil, fsFull) != nil {
		t.Error("storageFull(nil) is not nil")
	}
}
