//go:build !linux

package blobstore

import "os"

// startWriteback is a no-op where sync_file_range does not exist; the
// fsync that follows does all the work.
func startWriteback(f *os.File, off, n int64) {}
