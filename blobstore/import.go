package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"
)

// What `berth import` needs of a store, to take blobs from another
// registry's storage without sending their bytes through Berth when both
// sides are the same kind of storage.

// ErrCannotLink means FS.ImportFile could not hard-link the file: it is on
// another filesystem (EXDEV), or the kernel does not allow this process to
// link a file it does not own (EPERM, Linux's fs.protected_hardlinks). The
// caller copies the bytes instead (through Uploader, which it must do for
// every other kind of source anyway). The error wraps the system's.
var ErrCannotLink = errors.New("the file cannot be hard-linked into the store")

// ErrTooLargeToCopy means S3.CopyObject was given an object larger than
// one CopyObject request may copy (5 GiB); the caller streams it instead.
var ErrTooLargeToCopy = errors.New("object too large for one server-side copy")

// FileImporter publishes a file that already holds a blob's bytes.
type FileImporter interface {
	// ImportFile makes the file at path readable as blob dgst by giving it
	// the blob's name (a hard link): no byte is copied, and the file must
	// never change afterwards (a reference registry never rewrites a
	// blob's data). The caller has verified the digest, or chose not to.
	// A blob already published is left as it is. ErrCannotLink when the
	// file cannot be linked (another filesystem, or not allowed).
	ImportFile(ctx context.Context, dgst digest.Digest, path string) error
}

// ObjectCopier publishes an object of another bucket (or key) of the same
// S3 server as a blob.
type ObjectCopier interface {
	// CopyObject copies bucket/key, of size bytes, to blob dgst's key on
	// the server. The caller has verified the digest, or chose not to.
	// ErrTooLargeToCopy above 5 GiB.
	CopyObject(ctx context.Context, dgst digest.Digest, bucket, key string, size int64) error
}

// ImportFile implements FileImporter.
func (s *FS) ImportFile(ctx context.Context, dgst digest.Digest, path string) error {
	final, err := s.blobPath(dgst)
	if err != nil {
		return err
	}
	if _, err := os.Stat(final); err == nil {
		return nil
	}
	if err := mkdirDurable(filepath.Dir(final)); err != nil {
		return storageFull(fmt.Errorf("create blob directory: %w", err), fsFull)
	}
	err = os.Link(path, final)
	if errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("%w: %w", ErrCannotLink, err)
	}
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return storageFull(fmt.Errorf("import blob %s: %w", dgst, notFound(err)), fsFull)
	}
	return syncDir(filepath.Dir(final))
}

// CopyObject implements ObjectCopier: one CopyObject request, which S3
// runs on the server.
func (s *S3) CopyObject(ctx context.Context, dgst digest.Digest, bucket, key string, size int64) error {
	if size > s.maxCopyObject {
		return ErrTooLargeToCopy
	}
	dst, err := s.blobKey(dgst)
	if err != nil {
		return err
	}
	if _, err := s.Stat(ctx, dgst); err == nil {
		return nil
	}
	src := aws.String(bucketKeyPath(bucket, key))
	_, err = s.client.CopyObject(ctx, &s3.CopyObjectInput{Bucket: &s.bucket, Key: &dst, CopySource: src})
	if err != nil {
		return storageFull(fmt.Errorf("copy %s/%s to blob %s: %w", bucket, key, dgst, notFoundErr(err)), s3Full)
	}
	return nil
}

// Bucket is the store's bucket.
func (s *S3) Bucket() string { return s.bucket }

// KeyInfo describes one object of a listing.
type KeyInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
	// ETag changes whenever the content does (for an object written in
	// one PUT it is the MD5 of the content): a reader may skip fetching
	// an object whose ETag it has seen.
	ETag string
}

// ListKeys calls fn for every key of the bucket under prefix (a full key
// prefix: the store's own prefix does not apply), in key order. An error
// from fn stops the listing and is returned.
func (s *S3) ListKeys(ctx context.Context, prefix string, fn func(KeyInfo) error) error {
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		for _, obj := range page.Contents {
			info := KeyInfo{Key: aws.ToString(obj.Key), Size: aws.ToInt64(obj.Size), ModTime: aws.ToTime(obj.LastModified),
				ETag: aws.ToString(obj.ETag)}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

// GetKey returns the object at key (a full key) and its size; ErrNotFound
// when there is none.
func (s *S3) GetKey(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if isNotFound(err) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", key, err)
	}
	return out.Body, aws.ToInt64(out.ContentLength), nil
}

// HeadKey returns the size of the object at key (a full key); ErrNotFound
// when there is none.
func (s *S3) HeadKey(ctx context.Context, key string) (int64, error) {
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	if isNotFound(err) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("head %s: %w", key, err)
	}
	return aws.ToInt64(out.ContentLength), nil
}

// bucketKeyPath is the x-amz-copy-source of bucket/key, URL-encoded.
func bucketKeyPath(bucket, key string) string {
	return (&url.URL{Path: bucket + "/" + key}).EscapedPath()
}
