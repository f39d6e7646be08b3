package blobstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"
)

// FS stores blobs as files under a root directory (layout in the package
// documentation). Every file is written under a fresh name, completely, then
// linked or renamed into its final name, so a reader never sees a partial
// blob and a crash leaves only files that nothing names.
type FS struct {
	root string
}

// NewFS returns a store rooted at dir, creating it if needed.
func NewFS(dir string) (*FS, error) {
	for _, sub := range []string{"blobs", "uploads"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("create blob store directory: %w", err)
		}
	}
	return &FS{root: dir}, nil
}

func (s *FS) blobPath(dgst digest.Digest) string {
	enc := dgst.Encoded()
	return filepath.Join(s.root, "blobs", string(dgst.Algorithm()), enc[:2], enc)
}

func (s *FS) uploadDir(id string) (string, error) {
	if !validUploadID(id) {
		return "", fmt.Errorf("invalid upload id %q", id)
	}
	return filepath.Join(s.root, "uploads", id), nil
}

// validUploadID keeps upload ids from naming anything outside uploads/.
func validUploadID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Stat implements Reader.
func (s *FS) Stat(ctx context.Context, dgst digest.Digest) (int64, error) {
	fi, err := os.Stat(s.blobPath(dgst))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("stat blob %s: %w", dgst, err)
	}
	return fi.Size(), nil
}

// Open implements Reader. The result is an *os.File.
func (s *FS) Open(ctx context.Context, dgst digest.Digest) (io.ReadSeekCloser, error) {
	f, err := os.Open(s.blobPath(dgst))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", dgst, err)
	}
	return f, nil
}

// Delete implements Deleter.
func (s *FS) Delete(ctx context.Context, dgst digest.Digest) error {
	if err := os.Remove(s.blobPath(dgst)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete blob %s: %w", dgst, err)
	}
	return nil
}

// fsUploadState lists the part files of an upload, in order.
type fsUploadState struct {
	Parts []fsPart `json:"parts"`
}

type fsPart struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

func decodeFSState(state []byte) (fsUploadState, error) {
	var st fsUploadState
	if len(state) == 0 {
		return st, nil
	}
	if err := json.Unmarshal(state, &st); err != nil {
		return st, fmt.Errorf("decode upload state: %w", err)
	}
	for _, p := range st.Parts {
		if !validUploadID(p.Name) {
			return st, fmt.Errorf("decode upload state: bad part name %q", p.Name)
		}
	}
	return st, nil
}

// copyBufSize is the buffer for streaming request bodies to disk: large
// enough that the per-read overhead vanishes next to hashing, small enough
// to keep memory flat with many uploads at once.
const copyBufSize = 256 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// AppendChunk implements Uploader. Each chunk goes to a new part file, so
// two requests racing on one upload never write into the same file: the one
// whose state the database accepts wins, and the other's part is garbage
// that DeleteUpload removes. The part is fsynced before AppendChunk returns,
// because the caller acknowledges the chunk to the client right after.
func (s *FS) AppendChunk(ctx context.Context, uploadID string, state []byte, r io.Reader) ([]byte, int64, error) {
	st, err := decodeFSState(state)
	if err != nil {
		return nil, 0, err
	}
	dir, err := s.uploadDir(uploadID)
	if err != nil {
		return nil, 0, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, fmt.Errorf("create upload directory: %w", err)
	}
	name := fmt.Sprintf("part-%d-%s", len(st.Parts), randomHex(8))
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("create upload part: %w", err)
	}
	buf := copyBufs.Get().(*[]byte)
	n, err := io.CopyBuffer(onlyWriter{f}, r, *buf)
	copyBufs.Put(buf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil || n == 0 {
		os.Remove(path)
		if err != nil {
			return nil, 0, fmt.Errorf("write upload part: %w", err)
		}
		return state, 0, nil
	}
	st.Parts = append(st.Parts, fsPart{Name: name, Size: n})
	out, err := json.Marshal(st)
	if err != nil {
		return nil, 0, fmt.Errorf("encode upload state: %w", err)
	}
	return out, n, nil
}

// onlyWriter hides *os.File's ReadFrom so io.CopyBuffer uses our buffer
// instead of falling back to a small one for a non-file source.
type onlyWriter struct{ io.Writer }

// ReadUpload implements Uploader.
func (s *FS) ReadUpload(ctx context.Context, uploadID string, state []byte) (io.ReadCloser, error) {
	st, err := decodeFSState(state)
	if err != nil {
		return nil, err
	}
	dir, err := s.uploadDir(uploadID)
	if err != nil {
		return nil, err
	}
	files := make(multiFile, 0, len(st.Parts))
	readers := make([]io.Reader, 0, len(st.Parts))
	for _, p := range st.Parts {
		f, err := os.Open(filepath.Join(dir, p.Name))
		if err != nil {
			files.Close()
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("upload %s part %s: %w", uploadID, p.Name, ErrNotFound)
			}
			return nil, fmt.Errorf("open upload part: %w", err)
		}
		files = append(files, f)
		readers = append(readers, io.LimitReader(f, p.Size))
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(readers...), files}, nil
}

type multiFile []*os.File

func (m multiFile) Close() error {
	var errs []error
	for _, f := range m {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// Publish implements Uploader: it hard-links the upload's single data file
// to the blob's address. The link, unlike a rename, leaves the upload's own
// name in place so that Publish can run again.
func (s *FS) Publish(ctx context.Context, uploadID string, state []byte, dgst digest.Digest) error {
	final := s.blobPath(dgst)
	if _, err := os.Stat(final); err == nil {
		return nil // published before; content addressed, so identical
	}
	st, err := decodeFSState(state)
	if err != nil {
		return err
	}
	src, err := s.assemble(uploadID, st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return fmt.Errorf("create blob directory: %w", err)
	}
	if err := os.Link(src, final); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("publish blob %s: %w", dgst, err)
	}
	return syncDir(filepath.Dir(final))
}

// assemble returns the path of one file holding all of the upload's bytes:
// the single part itself, or the parts joined into "assembled".
func (s *FS) assemble(uploadID string, st fsUploadState) (string, error) {
	dir, err := s.uploadDir(uploadID)
	if err != nil {
		return "", err
	}
	if len(st.Parts) == 1 {
		return filepath.Join(dir, st.Parts[0].Name), nil
	}
	var total int64
	for _, p := range st.Parts {
		total += p.Size
	}
	out := filepath.Join(dir, "assembled")
	if fi, err := os.Stat(out); err == nil && fi.Size() == total {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create upload directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "assembling-*")
	if err != nil {
		return "", fmt.Errorf("assemble upload: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	for _, p := range st.Parts {
		if err := appendFile(tmp, filepath.Join(dir, p.Name), p.Size); err != nil {
			tmp.Close()
			return "", err
		}
	}
	err = tmp.Sync()
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("assemble upload: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("assemble upload: %w", err)
	}
	return out, nil
}

// appendFile copies size bytes of file src to dst. *os.File.ReadFrom uses
// copy_file_range on Linux, so the kernel copies (or reflinks) the data.
func appendFile(dst *os.File, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("assemble upload: %w", err)
	}
	defer f.Close()
	n, err := dst.ReadFrom(io.LimitReader(f, size))
	if err != nil {
		return fmt.Errorf("assemble upload: %w", err)
	}
	if n != size {
		return fmt.Errorf("assemble upload: part %s holds %d bytes, want %d", filepath.Base(src), n, size)
	}
	return nil
}

// DeleteUpload implements Uploader.
func (s *FS) DeleteUpload(ctx context.Context, uploadID string, state []byte) error {
	dir, err := s.uploadDir(uploadID)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("delete upload %s: %w", uploadID, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // cannot fail on Linux
	}
	return hex.EncodeToString(b)
}
