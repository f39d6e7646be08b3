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
	"strings"
	"sync"
	"time"

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

// Ping checks that the store's directory is there, for readiness probes.
func (s *FS) Ping(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(s.root, "blobs")); err != nil {
		return fmt.Errorf("blob store: %w", err)
	}
	return nil
}

// blobPath maps a digest to its file. The digest is checked here, not only
// by callers, because a malformed one would otherwise panic (Encoded of a
// string without ':') or name a file outside the root ("sha256:../..").
func (s *FS) blobPath(dgst digest.Digest) (string, error) {
	alg, enc, ok := strings.Cut(string(dgst), ":")
	if !ok || !validName(alg) || len(enc) < 2 || !validName(enc) {
		return "", fmt.Errorf("blob store: malformed digest %q", dgst)
	}
	return filepath.Join(s.root, "blobs", alg, enc[:2], enc), nil
}

func (s *FS) uploadDir(id string) (string, error) {
	if !validName(id) {
		return "", fmt.Errorf("invalid upload id %q", id)
	}
	return filepath.Join(s.root, "uploads", id), nil
}

// validName keeps upload ids, part names and the halves of a digest from
// naming anything outside their directory: no '/', no '.'.
func validName(id string) bool {
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
	path, err := s.blobPath(dgst)
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(path)
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
	path, err := s.blobPath(dgst)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
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
	path, err := s.blobPath(dgst)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete blob %s: %w", dgst, err)
	}
	return nil
}

// fsUploadState says where the bytes of an upload are: ranges of files in
// the upload's directory, in order. Normally there is one range, [0, size)
// of one data file that every chunk was appended to.
type fsUploadState struct {
	Parts []fsPart `json:"parts"`
}

type fsPart struct {
	Name string `json:"name"`
	Off  int64  `json:"off,omitempty"`
	Size int64  `json:"size"`
}

func (p fsPart) end() int64 { return p.Off + p.Size }

func decodeFSState(state []byte) (fsUploadState, error) {
	var st fsUploadState
	if len(state) == 0 {
		return st, nil
	}
	if err := json.Unmarshal(state, &st); err != nil {
		return st, fmt.Errorf("decode upload state: %w", err)
	}
	for _, p := range st.Parts {
		if !validName(p.Name) {
			return st, fmt.Errorf("decode upload state: bad part name %q", p.Name)
		}
		if p.Off < 0 || p.Size < 0 {
			return st, fmt.Errorf("decode upload state: bad range %d+%d of %q", p.Off, p.Size, p.Name)
		}
	}
	return st, nil
}

// copyBufSize is the buffer for streaming request bodies to disk: large
// enough that the per-read overhead vanishes next to hashing, small enough
// to keep memory flat with many uploads at once.
const copyBufSize = 256 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// AppendChunk implements Uploader. A chunk is appended to the file that
// holds the end of the upload, so that Publish can link that one file as the
// blob instead of copying the bytes again.
//
// The rule that keeps racing requests (two replicas, a client retrying a
// request that is still running) from corrupting each other: bytes inside a
// range that some state names are never written again. A writer appends
// only when the file ends exactly where its state ends, checked and written
// under an exclusive flock on the file; otherwise (the lock is busy, a
// failed or racing request left bytes after that end, or Publish sealed the
// file) the chunk starts a new file, and the state gets a second range.
// Whichever state the database accepts, its ranges hold what it says.
//
// The bytes are fsynced before AppendChunk returns, because the caller
// acknowledges the chunk to the client right after.
//
// On a full disk the same rule keeps the saved state good: a chunk that
// fails half-written is cut off again (appendTo), or its new file removed,
// so the file ends where the state ends and the next try appends to it.
func (s *FS) AppendChunk(ctx context.Context, uploadID string, state []byte, r io.Reader) ([]byte, int64, error) {
	newState, n, err := s.appendChunk(uploadID, state, r)
	return newState, n, storageFull(err, fsFull)
}

func (s *FS) appendChunk(uploadID string, state []byte, r io.Reader) ([]byte, int64, error) {
	st, err := decodeFSState(state)
	if err != nil {
		return nil, 0, err
	}
	dir, err := s.uploadDir(uploadID)
	if err != nil {
		return nil, 0, err
	}
	if err := mkdirDurable(dir); err != nil {
		return nil, 0, fmt.Errorf("create upload directory: %w", err)
	}
	if len(st.Parts) > 0 {
		last := &st.Parts[len(st.Parts)-1]
		f, err := openForAppend(filepath.Join(dir, last.Name), last.end())
		if err != nil {
			return nil, 0, err
		}
		if f != nil {
			n, err := appendTo(f, last.end(), r)
			if err != nil {
				return nil, 0, err
			}
			if n == 0 {
				return state, 0, nil
			}
			last.Size += n
			return encodeFSState(st, n)
		}
	}

	name := "data-" + randomHex(8)
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("create upload file: %w", err)
	}
	n, err := appendTo(f, 0, r)
	if err == nil && n > 0 {
		// The file's name must survive a crash as well as its bytes.
		err = syncDir(dir)
	}
	if err != nil || n == 0 {
		os.Remove(path)
		if err != nil {
			return nil, 0, err
		}
		return state, 0, nil
	}
	st.Parts = append(st.Parts, fsPart{Name: name, Size: n})
	return encodeFSState(st, n)
}

func encodeFSState(st fsUploadState, n int64) ([]byte, int64, error) {
	out, err := json.Marshal(st)
	if err != nil {
		return nil, 0, fmt.Errorf("encode upload state: %w", err)
	}
	return out, n, nil
}

// openForAppend opens an upload file for appending at end and locks it, or
// returns nil (and no error) when the chunk must go to a new file instead:
// the file is gone, another request holds its lock, Publish sealed it, or
// its size is not end.
//
// The flock is released when the file is closed, or by the kernel when the
// process dies, so a crashed writer never blocks the upload; what it wrote
// after end stays in the file, unnamed by any state. Over NFS, Linux maps
// flock to a byte-range lock that other hosts see too.
func openForAppend(path string, end int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open upload file: %w", err)
	}
	if err := tryLock(f); err != nil {
		f.Close()
		return nil, nil
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open upload file: %w", err)
	}
	if fi.Mode().Perm()&0o222 == 0 || fi.Size() != end {
		f.Close()
		return nil, nil
	}
	return f, nil
}

// appendTo writes everything r yields to f at offset off, fsyncs it and
// closes f (releasing its lock). On error it cuts f back to off: those bytes
// were this call's own, named by no state yet.
func appendTo(f *os.File, off int64, r io.Reader) (int64, error) {
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return 0, fmt.Errorf("write upload: %w", err)
	}
	buf := copyBufs.Get().(*[]byte)
	n, err := io.CopyBuffer(&writeback{f: f, written: off, started: off}, r, *buf)
	copyBufs.Put(buf)
	if err == nil && n > 0 {
		err = f.Sync()
	}
	if err != nil && n > 0 {
		_ = f.Truncate(off) // best effort: a longer file only costs the next chunk a new file
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("write upload: %w", err)
	}
	return n, nil
}

// writeback writes to a file and asks the kernel to start writing each
// completed stretch to disk while the rest still arrives, so that the fsync
// at the end of the chunk waits for the last stretch only, not for the
// whole chunk. (Being a plain Writer, it also keeps io.CopyBuffer on our
// buffer rather than *os.File's ReadFrom with a small one.)
type writeback struct {
	f       *os.File
	written int64 // file offset written up to
	started int64 // file offset up to which writeback has been started
}

// writebackStretch is how much is written between two writeback starts:
// large enough to make few calls, small enough to keep the disk busy.
const writebackStretch = 8 << 20

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.written += int64(n)
	if w.written-w.started >= writebackStretch {
		startWriteback(w.f, w.started, w.written-w.started)
		w.started = w.written
	}
	return n, err
}

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
			return nil, fmt.Errorf("open upload %s: %w", uploadID, notFound(err))
		}
		files = append(files, f)
		readers = append(readers, io.NewSectionReader(f, p.Off, p.Size))
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

// Publish implements Uploader. When the upload is the whole of one file,
// which is the rule, Publish seals that file and hard-links it to the blob's
// address: no byte is copied. Otherwise it copies the ranges into a new file
// and links that. A link, unlike a rename, leaves the upload's own data in
// place so that Publish can run again.
//
// On a full disk the blob's name is never made: the link fails, or the
// copy fails and is removed before anything is linked.
func (s *FS) Publish(ctx context.Context, uploadID string, state []byte, dgst digest.Digest) error {
	return storageFull(s.publish(uploadID, state, dgst), fsFull)
}

func (s *FS) publish(uploadID string, state []byte, dgst digest.Digest) error {
	// Check the arguments even when the blob exists, so that a bad id or
	// state is reported the same way every time.
	st, err := decodeFSState(state)
	if err != nil {
		return err
	}
	dir, err := s.uploadDir(uploadID)
	if err != nil {
		return err
	}
	final, err := s.blobPath(dgst)
	if err != nil {
		return err
	}
	if _, err := os.Stat(final); err == nil {
		return nil // published before; content addressed, so identical
	}
	if err := mkdirDurable(filepath.Dir(final)); err != nil {
		return fmt.Errorf("create blob directory: %w", err)
	}
	if len(st.Parts) == 1 && st.Parts[0].Off == 0 {
		src := filepath.Join(dir, st.Parts[0].Name)
		sealed, err := seal(src, st.Parts[0].Size)
		if err != nil {
			return fmt.Errorf("publish blob %s: %w", dgst, err)
		}
		if sealed {
			return link(src, final, dgst)
		}
	}
	src, err := assemble(dir, st)
	if err != nil {
		return err
	}
	defer os.Remove(src) // the blob's own name keeps the bytes
	return link(src, final, dgst)
}

// seal makes the upload file at path read-only, so that no chunk is ever
// appended to it again (openForAppend checks), if it holds exactly size
// bytes: it is about to become a blob, and a blob never changes. It reports
// false, leaving the file alone, when it cannot: the file is longer (bytes
// of a failed or racing request follow), or a request is appending to it
// right now. The caller then copies the bytes instead.
func seal(path string, size int64) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, notFound(err)
	}
	defer f.Close()
	if err := tryLock(f); err != nil {
		return false, nil
	}
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	if fi.Size() != size {
		return false, nil
	}
	if fi.Mode().Perm()&0o222 != 0 {
		if err := f.Chmod(0o444); err != nil {
			return false, err
		}
	}
	return true, nil
}

// link gives the file src the blob's name and makes the name durable. A
// blob that appeared meanwhile (another upload of the same bytes) wins.
func link(src, final string, dgst digest.Digest) error {
	if err := os.Link(src, final); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("publish blob %s: %w", dgst, notFound(err))
	}
	return syncDir(filepath.Dir(final))
}

// assemble copies the ranges into a new file of the upload directory and
// returns its path. The file gets a fresh name on every call and is never
// reused: two requests racing to finish one upload can hold different
// states of the same size, and a shared "assembled" file would let one
// publish the other's bytes under its digest.
func assemble(dir string, st fsUploadState) (string, error) {
	if err := mkdirDurable(dir); err != nil {
		return "", fmt.Errorf("create upload directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "assembling-*")
	if err != nil {
		return "", fmt.Errorf("assemble upload: %w", err)
	}
	for _, p := range st.Parts {
		if err = appendRange(tmp, filepath.Join(dir, p.Name), p); err != nil {
			break
		}
	}
	if err == nil {
		err = tmp.Chmod(0o444)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("assemble upload: %w", err)
	}
	return tmp.Name(), nil
}

// notFound makes a missing file the package's ErrNotFound, keeping the
// path in the message.
func notFound(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	return err
}

// appendRange copies the range p of file src to dst. *os.File.ReadFrom of
// a LimitedReader over an *os.File uses copy_file_range on Linux, so the
// kernel copies (or reflinks) the data.
func appendRange(dst *os.File, src string, p fsPart) error {
	f, err := os.Open(src)
	if err != nil {
		return notFound(err)
	}
	defer f.Close()
	if _, err := f.Seek(p.Off, io.SeekStart); err != nil {
		return err
	}
	n, err := dst.ReadFrom(io.LimitReader(f, p.Size))
	if err != nil {
		return err
	}
	if n != p.Size {
		return fmt.Errorf("%s holds %d bytes at %d, want %d", filepath.Base(src), n, p.Off, p.Size)
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

// mkdirDurable creates dir and its missing parents, syncing the parent of
// each new directory: a file whose directory entry can vanish in a crash is
// not durable however often the file itself is synced.
func mkdirDurable(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirDurable(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
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

// WalkBlobs implements Lister. Files that are not named like a blob (left
// by other tools) are skipped.
func (s *FS) WalkBlobs(ctx context.Context, fn func(dgst digest.Digest, size int64, modTime time.Time) error) error {
	root := filepath.Join(s.root, "blobs")
	return filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		parts := strings.Split(rel, string(filepath.Separator))
		if len(parts) != 3 || !strings.HasPrefix(parts[2], parts[1]) {
			return nil
		}
		dgst := digest.NewDigestFromEncoded(digest.Algorithm(parts[0]), parts[2])
		if dgst.Validate() != nil {
			return nil
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted while we walked
		}
		if err != nil {
			return err
		}
		return fn(dgst, info.Size(), info.ModTime())
	})
}

// WalkUploads implements Lister: the size of an upload is that of its
// files, its time the newest modification among its directory and files.
func (s *FS) WalkUploads(ctx context.Context, fn func(uploadID string, size int64, modTime time.Time) error) error {
	entries, err := os.ReadDir(filepath.Join(s.root, "uploads"))
	if err != nil {
		return fmt.Errorf("list uploads: %w", err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !e.IsDir() || !validName(e.Name()) {
			continue
		}
		size, latest, err := uploadDirStat(filepath.Join(s.root, "uploads", e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed while we walked
		}
		if err != nil {
			return err
		}
		if err := fn(e.Name(), size, latest); err != nil {
			return err
		}
	}
	return nil
}

func uploadDirStat(dir string) (size int64, latest time.Time, err error) {
	info, err := os.Stat(dir)
	if err != nil {
		return 0, time.Time{}, err
	}
	latest = info.ModTime()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, time.Time{}, err
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			continue // removed while we looked
		}
		size += fi.Size()
		if fi.ModTime().After(latest) {
			latest = fi.ModTime()
		}
	}
	return size, latest, nil
}
