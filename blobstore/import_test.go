package blobstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
)

// ImportFile gives the file the blob's name: the same inode, no copy; a
// second import of the same blob changes nothing.
func TestFSImportFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := newFS(t, filepath.Join(dir, "store"))
	data := []byte("bytes of another registry's blob")
	dgst := digest.FromBytes(data)
	src := filepath.Join(dir, "data")
	if err := os.WriteFile(src, data, 0o444); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := s.ImportFile(t.Context(), dgst, src); err != nil {
			t.Fatal(err)
		}
	}
	f, err := s.Open(t.Context(), dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, _ := io.ReadAll(f)
	if !bytes.Equal(got, data) {
		t.Fatalf("blob holds %q", got)
	}
	a, _ := os.Stat(src)
	b, _ := f.(*os.File).Stat()
	if !os.SameFile(a, b) {
		t.Error("the blob is a copy, not a hard link")
	}
	if err := s.ImportFile(t.Context(), "sha256:../../x", src); err == nil {
		t.Error("a malformed digest was accepted")
	}
	if err := s.ImportFile(t.Context(), digest.FromString("nothing"), filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file was imported")
	}
}

// A file on another filesystem cannot be linked: ErrCannotLink, for the
// caller to copy the bytes.
func TestFSImportFileCrossDevice(t *testing.T) {
	t.Parallel()
	other, err := os.MkdirTemp("/dev/shm", "berth-import-")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	defer os.RemoveAll(other)
	dir := t.TempDir()
	var a, b syscall.Stat_t
	if syscall.Stat(other, &a) != nil || syscall.Stat(dir, &b) != nil || a.Dev == b.Dev {
		t.Skip("/dev/shm is on the same filesystem as the temporary directory")
	}
	src := filepath.Join(other, "data")
	if err := os.WriteFile(src, []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	s := newFS(t, dir)
	if err := s.ImportFile(t.Context(), digest.FromString("x"), src); !errors.Is(err, blobstore.ErrCannotLink) {
		t.Fatalf("got %v, want ErrCannotLink", err)
	}
}

// CopyObject copies an object of the bucket to a blob's key on the server;
// above the CopyObject limit it refuses, for the caller to stream.
func TestS3CopyObject(t *testing.T) {
	t.Parallel()
	f := newS3(t, 0)
	ctx := context.Background()
	data := s3RandomData(t, 100<<10)
	dgst := digest.FromBytes(data)
	key := f.prefix + "other-registry/docker/registry/v2/blobs/sha256/" + dgst.Encoded()[:2] + "/" + dgst.Encoded() + "/data"
	if _, err := f.raw.PutObject(ctx, &s3.PutObjectInput{Bucket: &f.bucket, Key: &key, Body: bytes.NewReader(data)}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := f.store.CopyObject(ctx, dgst, f.bucket, key, int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	s3CheckBlob(t, f.store, dgst, data)
	f.store.SetMaxCopyObjectForTest(1000)
	other := digest.FromString("other")
	if err := f.store.CopyObject(ctx, other, f.bucket, key, int64(len(data))); !errors.Is(err, blobstore.ErrTooLargeToCopy) {
		t.Errorf("got %v, want ErrTooLargeToCopy", err)
	}
	if err := f.store.CopyObject(ctx, digest.FromString("absent"), f.bucket, f.prefix+"absent", 10); err == nil {
		t.Error("a missing object was copied")
	}
	n := 0
	if err := f.store.ListKeys(ctx, f.prefix+"other-registry/", func(k blobstore.KeyInfo) error {
		n++
		if k.Key != key || k.Size != int64(len(data)) || k.ETag == "" || time.Since(k.ModTime) > time.Hour {
			t.Errorf("listed %+v", k)
		}
		return nil
	}); err != nil || n != 1 {
		t.Errorf("ListKeys: %d keys, %v", n, err)
	}
}
