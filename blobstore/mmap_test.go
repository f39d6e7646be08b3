//go:build unix

package blobstore

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// CopyFile sends exactly the n bytes after the file's offset, across
// mapping windows and from offsets inside a page, and leaves the offset
// after them, as io.CopyN would.
func TestCopyFileRanges(t *testing.T) {
	size := 2*mapWindow + 12345
	content := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range content {
		content[i] = byte(rng.Uint32())
	}
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, content, 0o444); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct{ off, n int64 }{
		{0, int64(size)},                   // whole blob
		{0, 0},                             // nothing
		{7, 1},                             // one byte inside the first page
		{mapWindow - 10, 20},               // across the first window's end
		{4097, 2*mapWindow + 12345 - 4097}, // from inside a page to the end
		{int64(size) - 1, 1},               // the last byte
	} {
		if _, err := f.Seek(tc.off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		n, err := CopyFile(&got, f, tc.n)
		if err != nil || n != tc.n {
			t.Errorf("range %d+%d: copied %d, %v", tc.off, tc.n, n, err)
			continue
		}
		if !bytes.Equal(got.Bytes(), content[tc.off:tc.off+tc.n]) {
			t.Errorf("range %d+%d: wrong bytes", tc.off, tc.n)
		}
		if pos, _ := f.Seek(0, io.SeekCurrent); pos != tc.off+tc.n {
			t.Errorf("range %d+%d: offset %d after, want %d", tc.off, tc.n, pos, tc.off+tc.n)
		}
	}
}

// truncatingWriter truncates the file being sent when it is first written
// to, then reads what it was given, as a buffering writer would.
type truncatingWriter struct {
	path string
	sum  int
}

func (w *truncatingWriter) Write(p []byte) (int, error) {
	if err := os.Truncate(w.path, 0); err != nil {
		return 0, err
	}
	for _, b := range p { // touches the pages the truncation took away
		w.sum += int(b)
	}
	return len(p), nil
}

// A file that shrinks under its mapping gives an error, not a SIGBUS that
// would take the whole registry down.
func TestCopyFileOfATruncatedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = CopyFile(&truncatingWriter{path: path}, f, 1<<20)
	if !errors.Is(err, ErrFileChanged) {
		t.Fatalf("copy of a file truncated under it: err %v", err)
	}
}
