package blobstore

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks Linux to start writing a range of f to disk without
// waiting for it. Only a hint: the fsync that follows is what counts.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
