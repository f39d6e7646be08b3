package handlers

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// truncateOnHeader truncates the blob's file when the response header
// goes out: after ServeContent has sized the file, before the body.
type truncateOnHeader struct {
	http.ResponseWriter
	path string
}

func (w truncateOnHeader) WriteHeader(code int) {
	os.Truncate(w.path, 0)
	w.ResponseWriter.WriteHeader(code)
}

// A blob file that shrinks during its download ends the connection: the
// client sees a short body at once, never a connection kept alive with
// bytes missing (it would wait for them, or read the next response as
// part of this one). Sizes within one mapping window and across several.
func TestDownloadOfAShrinkingFileClosesTheConnection(t *testing.T) {
	for _, size := range []int{1 << 20, 9 << 20} {
		path := filepath.Join(t.TempDir(), "blob")
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := os.WriteFile(path, bytes.Repeat([]byte("x"), size), 0o644); err != nil {
				t.Error(err)
				return
			}
			f, err := os.Open(path)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			w2 := copyingWriter{truncateOnHeader{w, path}, r, slog.New(slog.DiscardHandler)}
			http.ServeContent(w2, r, "", time.Time{}, f)
		}))
		c := &http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%d-byte blob: read %d bytes, err %v; want the connection closed early (unexpected EOF)", size, n, err)
		}
		srv.Close()
	}
}
