//go:build unix

package blobstore

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"syscall"
)

// mapWindow is how much of a file CopyFile maps at a time. The pages a
// download touches count in the process's resident memory while mapped,
// so each download holds at most this much, whatever the blob's size.
const mapWindow = 4 << 20

// CopyFile writes the next n bytes of f, from its current offset, to w and
// leaves the offset after them. It maps the file and hands the mapping to
// w.Write, so that the bytes are copied once, from the page cache to the
// socket, instead of read into a buffer first: on loopback, the fastest of
// read/write, sendfile(2) and this (see README, "Blob bytes").
func CopyFile(w io.Writer, f *os.File, n int64) (written int64, err error) {
	off, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, fmt.Errorf("copy blob: %w", err)
	}
	defer func() {
		if _, serr := f.Seek(off+written, io.SeekStart); serr != nil && err == nil {
			err = fmt.Errorf("copy blob: %w", serr)
		}
	}()
	for written < n {
		k, err := copyWindow(w, f, off+written, off+n)
		written += k
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// copyWindow writes bytes [start, min(end, the end of start's window)) of
// f to w.
func copyWindow(w io.Writer, f *os.File, start, end int64) (written int64, err error) {
	base := start &^ (mapWindow - 1) // a multiple of the page size, as mmap needs
	end = min(end, base+mapWindow)
	m, err := syscall.Mmap(int(f.Fd()), base, int(end-base), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("map blob: %w", err)
	}
	defer syscall.Munmap(m)
	// Published blobs are never truncated, but if a file shrank under the
	// mapping anyway (a disk error, an operator), touching the lost pages
	// would kill the process with SIGBUS; this turns it into an error.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, fault := r.(interface{ Addr() uintptr }); !fault {
				panic(r) // not ours to handle
			}
			err = fmt.Errorf("read blob %s: %w (%v)", f.Name(), ErrFileChanged, r)
		}
	}()
	k, err := w.Write(m[start-base:])
	return int64(k), err
}
