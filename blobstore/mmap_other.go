//go:build !unix

package blobstore

import (
	"io"
	"os"
)

// CopyFile writes the next n bytes of f, from its current offset, to w and
// leaves the offset after them.
func CopyFile(w io.Writer, f *os.File, n int64) (int64, error) {
	return io.CopyN(struct{ io.Writer }{w}, f, n)
}
