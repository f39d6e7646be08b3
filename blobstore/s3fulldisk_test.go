//go:build linux

package blobstore_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/smithy-go"
	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/blobstore/storetest"
)

// versitygwVersion is the version scripts/versitygw.sh installs.
const versitygwVersion = "v1.8.0"

// startVersitygw runs a versitygw of its own for the test, serving the
// directory dir/gw (its bucket "berth-test" included) on a free port of
// 127.0.0.1, and returns its configuration. The binary is
// $BERTH_TEST_VERSITYGW, else the one scripts/versitygw.sh installs; the
// test skips when there is none.
func startVersitygw(t *testing.T, dir string) blobstore.S3Config {
	t.Helper()
	bin := os.Getenv("BERTH_TEST_VERSITYGW")
	if bin == "" {
		cache := os.Getenv("BERTH_CACHE_DIR")
		if cache == "" {
			cache = filepath.Join("..", ".cache") // the repository's, from the package directory
		}
		bin = filepath.Join(cache, "bin", "versitygw-"+versitygwVersion)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no versitygw to fill (%v): set BERTH_TEST_VERSITYGW to its binary, or run "+
			"scripts/versitygw.sh start DIR once, which installs it into .cache/bin", err)
	}
	root := filepath.Join(dir, "gw")
	const bucket, access, secret = "berth-test", "berthtest", "berthtestsecret"
	if err := os.MkdirAll(filepath.Join(root, bucket), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	logPath := filepath.Join(t.TempDir(), "versitygw.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--access", access, "--secret", secret, "--port", addr, "--quiet", "posix", root)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			log, _ := os.ReadFile(logPath)
			t.Fatalf("versitygw exited (%v) before it answered on %s; its log:\n%s", err, addr, log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			t.Fatalf("versitygw did not answer on %s within 10s; its log:\n%s", addr, log)
		}
	}
	return blobstore.S3Config{
		Bucket: bucket, Endpoint: "http://" + addr, ForcePathStyle: true, AccessKey: access, SecretKey: secret,
	}
}

// TestS3FullDisk runs a versitygw whose bucket lives on a small tmpfs and
// fills that: every write that finds no room is ErrStorageFull, the failed
// AppendChunk leaves only the objects its saved state names, the failed
// Publish leaves no blob, no multipart upload and no record of one, and
// everything succeeds from the same state once there is room.
func TestS3FullDisk(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	disk := mountTmpfs(t, "size=64m")
	f := newS3At(t, startVersitygw(t, disk), minPart)
	id := storetest.NewUploadID()
	uploadKeys := func(id string) []string { return f.keys(t, ctx, f.prefix+"uploads/"+id+"/") }

	// AppendChunk: part 2 fits, part 3 does not.
	first := s3RandomData(t, minPart+100)
	state := s3Append(t, f.store, id, nil, first)
	saved := uploadKeys(id)
	fill := fillDisk(t, disk)
	fill.leave(minPart + 2<<20)
	second := s3RandomData(t, 2*minPart)
	_, _, err := f.store.AppendChunk(ctx, id, state, bytes.NewReader(second))
	wantS3Full(t, "AppendChunk", err, "write part 3")
	if got := uploadKeys(id); !slices.Equal(got, saved) {
		t.Errorf("after the failed chunk the upload holds %q, want only what its saved state names, %q", got, saved)
	}
	if got := s3ReadUpload(t, f.store, id, state); !bytes.Equal(got, first) {
		t.Fatalf("ReadUpload of the saved state gives %d bytes that differ from the %d appended", len(got), len(first))
	}
	fill.remove()
	state = s3Append(t, f.store, id, state, second)
	saved = uploadKeys(id)
	want := s3Concat(first, second)
	dgst := digest.FromBytes(want)

	// Publish, four pieces: each step of the multipart copy runs out.
	for _, tc := range []struct {
		step  string
		leave int64
		where string // in the error: the step that failed
	}{
		{"Record", 0, "PutObject"},
		{"UploadPartCopy", 1 << 20, "UploadPartCopy"},
		{"Complete", int64(len(want)) + 2<<20, "CompleteMultipartUpload"},
	} {
		fill := fillDisk(t, disk)
		fill.leave(tc.leave)
		wantS3Full(t, "Publish failing at "+tc.step, f.store.Publish(ctx, id, state, dgst), tc.where)
		fill.remove()
		if _, err := f.store.Stat(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("%s: Stat after the failed Publish: %v, want ErrNotFound", tc.step, err)
		}
		// versitygw on a full disk has been seen to list an aborted
		// multipart upload for a moment after the abort succeeded: look
		// again for a while before calling it left open.
		mpus := f.openMultipart(t, ctx, f.prefix)
		for deadline := time.Now().Add(5 * time.Second); len(mpus) != 0 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			mpus = f.openMultipart(t, ctx, f.prefix)
		}
		if len(mpus) != 0 {
			t.Errorf("%s: the failed Publish left %d multipart uploads open", tc.step, len(mpus))
		}
		if got := uploadKeys(id); !slices.Equal(got, saved) {
			t.Errorf("%s: after the failed Publish the upload holds %q, want %q", tc.step, got, saved)
		}
	}
	if err := f.store.Publish(ctx, id, state, dgst); err != nil {
		t.Fatalf("Publish with room again: %v", err)
	}
	s3CheckBlob(t, f.store, dgst, want)

	// A first chunk, and a Publish of one piece (CopyObject).
	small := s3RandomData(t, 1<<20)
	other := storetest.NewUploadID()
	fill = fillDisk(t, disk)
	_, _, err = f.store.AppendChunk(ctx, other, nil, bytes.NewReader(small))
	wantS3Full(t, "AppendChunk of a first chunk", err, "PutObject")
	if got := uploadKeys(other); len(got) != 0 {
		t.Errorf("the failed first chunk left %q", got)
	}
	fill.remove()
	state = s3Append(t, f.store, other, nil, small)
	fill = fillDisk(t, disk)
	dgst = digest.FromBytes(small)
	wantS3Full(t, "Publish of one piece", f.store.Publish(ctx, other, state, dgst), "CopyObject")
	if _, err := f.store.Stat(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat after the failed CopyObject: %v, want ErrNotFound", err)
	}
	fill.remove()
	if err := f.store.Publish(ctx, other, state, dgst); err != nil {
		t.Fatalf("Publish with room again: %v", err)
	}
	s3CheckBlob(t, f.store, dgst, small)
}

// wantS3Full asserts that err is ErrStorageFull, keeps S3's error, and
// came from the step named where.
func wantS3Full(t *testing.T, what string, err error, where string) {
	t.Helper()
	if !errors.Is(err, blobstore.ErrStorageFull) {
		t.Fatalf("%s on a full disk: %v; want ErrStorageFull", what, err)
	}
	var api smithy.APIError
	if !errors.As(err, &api) {
		t.Errorf("%s: %v does not keep S3's error", what, err)
	}
	if !strings.Contains(err.Error(), where) {
		t.Errorf("%s: %v; want it to fail at %s", what, err, where)
	}
	t.Logf("%s: %v", what, err)
}
