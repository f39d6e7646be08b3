// Package blobstore keeps the bytes of blobs; the database keeps everything
// about them. Blobs are content addressed: once published under a digest,
// the bytes at that address never change, so readers need no coordination
// and the only writes are "publish" and "delete".
//
// Uploads arrive in chunks, possibly on different replicas. A store appends
// each chunk somewhere private to the upload and returns an opaque state
// (which parts hold the bytes) that the caller saves with the upload session
// in the database. The session row, not the store, decides which chunks
// count: a chunk whose state was never saved is garbage that DeleteUpload
// removes with the rest of the upload.
//
// Layout of the filesystem store under its root:
//
//	blobs/<algorithm>/<first two hex>/<hex>   published blobs, read-only
//	uploads/<upload id>/data-<random>         an upload in progress, chunk after chunk
//	uploads/<upload id>/assembling-<random>   the bytes being joined by Publish, when they are not one whole file
//
// # A full store
//
// When the store has no room for the bytes, AppendChunk and Publish return
// an error that errors.Is reports as ErrStorageFull, so that the caller can
// answer 507 rather than 500; it wraps the store's own error, which keeps
// the cause for the log. The filesystem store reports ENOSPC (no space, or
// no inodes left) and EDQUOT (a quota) so, from any write: creating a
// directory or file, writing or syncing a chunk, linking a blob into place
// or copying an upload spread over several files into one. A file
// too large for the filesystem (EFBIG) is not reported as full: freeing
// space would not let it through. The S3 store reports so the answers of
// the server that mean it has no room or is over a quota (see S3).
//
// A full store leaves nothing that a later request could take for data.
// AppendChunk does not extend the bytes any saved state names, so once
// there is room again the upload goes on from its last saved state; the
// bytes the failed call wrote itself are removed at once, since they hold
// the very room that is missing (where that fails, they are garbage that
// DeleteUpload removes, as for any failed chunk). Publish puts nothing at
// the blob's address: a blob appears whole or not at all.
package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
)

// ErrNotFound reports a blob or upload part that is not in the store.
var ErrNotFound = errors.New("not found in blob store")

// ErrStorageFull means the store has no room for the bytes of an upload:
// the disk or a quota is full. It is temporary in the sense that the same
// request succeeds once space has been freed; nothing the failed call
// wrote remains (see "A full store" above).
var ErrStorageFull = errors.New("blob storage is full")

// storageFull marks err with ErrStorageFull when full says it reports a
// full store, keeping err in the chain (and in the message) as the cause.
func storageFull(err error, full func(error) bool) error {
	if err == nil || errors.Is(err, ErrStorageFull) || !full(err) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrStorageFull, err)
}

// ErrFileChanged means a blob's file shrank while CopyFile was sending it:
// what was already sent cannot be completed.
var ErrFileChanged = errors.New("the file changed under its mapping")

// Reader serves published blobs.
type Reader interface {
	// Stat returns the size of blob dgst, or ErrNotFound.
	Stat(ctx context.Context, dgst digest.Digest) (int64, error)
	// Open returns the bytes of blob dgst for reading and seeking, or
	// ErrNotFound. The filesystem store returns an *os.File, which
	// downloads send from a mapping (CopyFile).
	Open(ctx context.Context, dgst digest.Digest) (io.ReadSeekCloser, error)
}

// Uploader receives the bytes of uploads and publishes them as blobs.
type Uploader interface {
	// AppendChunk stores everything r yields after the bytes that state
	// describes, and returns the state describing both, with the number of
	// bytes read from r. state is nil for an upload with no bytes yet. On
	// error nothing the caller has saved is affected.
	AppendChunk(ctx context.Context, uploadID string, state []byte, r io.Reader) (newState []byte, n int64, err error)
	// ReadUpload returns the bytes of the upload as state describes them.
	ReadUpload(ctx context.Context, uploadID string, state []byte) (io.ReadCloser, error)
	// Publish makes the upload's bytes readable as blob dgst. The caller
	// has verified the digest. Publish is idempotent and leaves the upload's
	// own data in place, so it can run again if the bytes must be
	// re-published; DeleteUpload discards the upload afterwards.
	Publish(ctx context.Context, uploadID string, state []byte, dgst digest.Digest) error
	// DeleteUpload removes every byte stored for the upload, including
	// chunks whose state was never saved. Deleting an unknown upload is not
	// an error.
	DeleteUpload(ctx context.Context, uploadID string, state []byte) error
}

// Deleter removes published blobs. Only garbage collection calls it, with
// the blob's database row locked.
type Deleter interface {
	// Delete removes blob dgst. Deleting a missing blob is not an error.
	Delete(ctx context.Context, dgst digest.Digest) error
}

// Lister enumerates what a store holds, for the garbage collector's sweep
// of bytes that no database row describes and for `berth check`.
type Lister interface {
	// WalkBlobs calls fn for every published blob, in no particular order.
	// An error from fn stops the walk and is returned.
	WalkBlobs(ctx context.Context, fn func(dgst digest.Digest, size int64, modTime time.Time) error) error
	// WalkUploads calls fn for every upload that has data in the store,
	// with the bytes it holds and the time its data last changed.
	WalkUploads(ctx context.Context, fn func(uploadID string, size int64, modTime time.Time) error) error
}

// Store is everything a blob store does.
type Store interface {
	Reader
	Uploader
	Deleter
	Lister
}
