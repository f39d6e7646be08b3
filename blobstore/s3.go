package blobstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// S3 stores blobs in a bucket of Amazon S3 or of any server speaking its
// API (MinIO, versitygw...). Layout under the configured prefix:
//
//	blobs/<algorithm>/<first two hex>/<hex>   published blobs, as in FS
//	uploads/<upload id>/part-<k>-<token>      part k of an upload: bytes [(k-1)P, kP)
//	uploads/<upload id>/tail-<token>          the bytes after the last full part (fewer than P)
//	uploads/<upload id>/publish-<token>       names a multipart upload that Publish has open
//
// P is the part size, fixed for the life of an upload; the token is random,
// one per AppendChunk call.
//
// # Chunked uploads
//
// An S3 object cannot be appended to, and the parts of an unfinished
// multipart upload can be neither read nor copied. So every AppendChunk
// writes new objects of its own, and a state names the objects that hold
// its bytes. The bytes are cut at fixed offsets: part k always holds bytes
// [(k-1)P, kP) of the blob, whatever the chunks were, and the bytes past the
// last full part are the tail. AppendChunk reads the old tail into a buffer
// of P bytes, fills it up from the request, writes every full buffer as the
// next part object and what is left as a new tail object.
//
// Every object is written once, under a name no other call uses, and is not
// touched again until DeleteUpload removes the whole upload. Two requests
// racing from one base state (a client retrying a PATCH, two replicas
// finishing one upload) therefore write disjoint objects, even where they
// write the same part numbers: whichever state the database keeps names
// exactly its request's bytes, and the other's objects are garbage that
// DeleteUpload removes. Because part boundaries depend on the offset alone,
// every part of every state is exactly P bytes, so Publish can make part k of
// the upload part k of one S3 multipart upload (S3 wants at least 5 MiB in
// every part but the last), and a state need not list its parts one by one:
// the parts one AppendChunk wrote are numbered consecutively and share its
// token, so a state is the list of (token, count) runs plus the tail.
//
// The obvious design, one S3 multipart upload per upload that every PATCH
// adds parts to, fails that race. Two states racing on a part number
// overwrite each other's part. The multipart upload can be completed only
// once, so of two states racing to finish the upload only one can publish,
// and a later Publish cannot tell whether the completed object holds its
// own bytes or those of another state of the same size. And ReadUpload
// would have to complete it, which ends the upload. Every state publishing
// its own bytes is the contract (storetest's
// RacingStatesPublishTheirOwnBytes); FS keeps it the same way, by never
// reusing a file.
//
// Publish joins the pieces on the server, with UploadPartCopy, into a
// multipart upload at the blob's own key: the blob appears whole or not at
// all, no byte passes through Berth, and since the sources never change,
// Publish can run again at any time, from any state, and give the same bytes.
//
// # A full store
//
// AppendChunk and Publish return ErrStorageFull, wrapping S3's error, when
// the server answers HTTP 507 Insufficient Storage, whatever the code, or
// one of these codes, whatever the status (s3Full):
//
//   - InsufficientStorage (507): versitygw's posix backend on ENOSPC, from
//     PutObject, UploadPart, UploadPartCopy, CopyObject and
//     CompleteMultipartUpload alike, with the message "No space left on
//     device." (seen with v1.8.0 on a full tmpfs);
//   - XMinioStorageFull: MinIO below its minimum free drive space, 507 (500
//     in old releases, which the SDK retries before giving up);
//   - QuotaExceeded (403): versitygw's posix backend on EDQUOT, and Ceph
//     RGW over a bucket or user quota;
//   - XMinioAdminBucketQuotaExceeded (400): MinIO over a bucket quota.
//
// A quota is counted as full, as EDQUOT is in FS: the store refuses the
// bytes until space is freed or the limit raised, which is what the 507
// the handlers answer says. Amazon S3 itself lists no such code (its
// capacity is not the customer's problem); S3 on Outposts, which has a
// capacity, documents an "insufficient capacity" error when out of space,
// recognised by its 507. Codes that only look alike are not full:
// EntityTooLarge is one object too large for any space, SlowDown and the
// like are request rates. The codes are compared, never the messages.
//
// On such a failure AppendChunk deletes the objects it wrote before the
// one that failed (they take the room that is missing and no state names
// them), and Publish aborts its multipart upload, as on any failure. A
// server that writes an object whole or not at all (versitygw, MinIO) then
// holds nothing of the failed call.
type S3 struct {
	client        *s3.Client
	presign       *s3.PresignClient
	bucket        string
	prefix        string
	partSize      int64
	maxCopyObject int64
	// bufs keeps up to s3IdleBuffers part buffers between AppendChunks.
	// Not a sync.Pool: a pool empties itself every other GC, and under the
	// race detector drops a quarter of what is put back; each time, the
	// next AppendChunk allocates a new part while the old one awaits
	// collection, so an upload briefly takes two parts of memory (which
	// storetest's heap budget catches, with 8 MiB parts under -race).
	bufs chan []byte
	// inFlight bounds the part buffers in use at once, so that many
	// concurrent uploads wait for memory rather than exhaust it.
	inFlight chan struct{}
}

var _ Store = (*S3)(nil)

// S3Config configures NewS3.
type S3Config struct {
	Bucket string
	// Prefix is prepended to every key, e.g. "registry/"; "" is the root
	// of the bucket. A missing final '/' is added.
	Prefix string
	// Region defaults to "us-east-1".
	Region string
	// Endpoint is the server's URL for anything but AWS, e.g.
	// "http://127.0.0.1:7070".
	Endpoint       string
	ForcePathStyle bool
	// AccessKey and SecretKey are optional: without them the SDK's default
	// chain applies (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, the
	// shared config files, the instance's role...).
	AccessKey, SecretKey string
	// PartSize is the size of the parts uploads are cut into, 8 MiB when
	// 0, at least 5 MiB. Each AppendChunk in flight holds one part in
	// memory, and an upload can have at most 10,000 parts, which bounds
	// the largest blob at 10,000 × PartSize (78 GiB with the default).
	PartSize int64
	// HTTPClient, if set, carries the requests to S3, as it is: it gets
	// none of the SDK's settings (AWS_CA_BUNDLE, for one).
	HTTPClient *http.Client
}

// S3's limits on multipart uploads
// (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
const (
	s3MinPartSize = 5 << 20 // every part but the last
	s3MaxPartSize = 5 << 30
	s3MaxParts    = 10000
)

// s3DefaultPartSize is the memory of an AppendChunk in flight. It is the
// most that keeps a store streaming a blob within the heap budget of
// storetest (16 MiB for the part and everything else), and still allows
// blobs of 78 GiB, bigger than any container layer Berth expects.
const s3DefaultPartSize = 8 << 20

// s3MaxCopyObject is the largest object one CopyObject may copy (5 GiB, an
// S3 limit): Publish copies a single larger piece with a multipart copy.
// No piece is larger than a part, at most 5 GiB too, so that takes a test
// lowering this to take the multipart path with one small piece. Each store
// takes the value when it is made.
var s3MaxCopyObject int64 = 5 << 30

// s3IdleBuffers is how many part buffers a store keeps for reuse: enough
// for a few uploads at once to allocate nothing, while an idle store holds
// 32 MiB at the default part size.
const s3IdleBuffers = 4

// s3MaxInFlightParts is how many AppendChunks may hold a part buffer at
// once: 32 parts of 8 MiB, 256 MiB at most, whatever the number of uploads.
// The others wait (their clients see a slower upload, not an error).
const s3MaxInFlightParts = 32

// s3CopyConcurrency is how many UploadPartCopy requests Publish runs at
// once: enough to copy a large blob many times faster than one request
// would, few enough to leave the connection pool to the requests being
// served.
const s3CopyConcurrency = 8

// NewS3 connects to the bucket and checks that it is reachable.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("blob store: S3 bucket name is empty")
	}
	partSize := cfg.PartSize
	if partSize == 0 {
		partSize = s3DefaultPartSize
	}
	if partSize < s3MinPartSize || partSize > s3MaxPartSize {
		return nil, fmt.Errorf("blob store: S3 part size %d is out of S3's range, %d (5 MiB) to %d (5 GiB)",
			partSize, s3MinPartSize, s3MaxPartSize)
	}
	region := cfg.Region
	if region == "" {
		region = "us-east-1"
	}
	opts := []func(*config.LoadOptions) error{config.WithRegion(region)}
	if cfg.AccessKey != "" || cfg.SecretKey != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("blob store: S3 configuration: %w", err)
	}
	// The SDK's default checksums stay on: CRC32 of every PUT, in a
	// trailer of an aws-chunked body over HTTPS and in a header over HTTP,
	// and checked on whole-object GETs. versitygw accepts both forms. For
	// a server that does not (some older S3 clones), the SDK's own
	// settings turn them off without a change here:
	// AWS_REQUEST_CHECKSUM_CALCULATION=when_required and
	// AWS_RESPONSE_CHECKSUM_VALIDATION=when_required.
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.ForcePathStyle
		// Given to the S3 client only, not to the configuration: the
		// SDK would try to add AWS_CA_BUNDLE to it, which it can do only
		// to its own kind of client. The credential providers keep the
		// SDK's client.
		if cfg.HTTPClient != nil {
			o.HTTPClient = cfg.HTTPClient
		}
	})
	prefix := cfg.Prefix
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	s := &S3{
		client:        client,
		presign:       s3.NewPresignClient(client),
		bucket:        cfg.Bucket,
		prefix:        prefix,
		partSize:      partSize,
		maxCopyObject: s3MaxCopyObject,
		bufs:          make(chan []byte, s3IdleBuffers),
		inFlight:      make(chan struct{}, s3MaxInFlightParts),
	}
	if err := s.Ping(ctx); err != nil {
		where := cfg.Endpoint
		if where == "" {
			where = "AWS region " + region
		}
		problem := "is not reachable"
		if isNotFound(err) {
			problem = "does not exist"
		}
		return nil, fmt.Errorf("blob store: S3 bucket %q at %s %s: %w", cfg.Bucket, where, problem, err)
	}
	return s, nil
}

// Ping checks that the bucket is reachable with the store's credentials.
func (s *S3) Ping(ctx context.Context) error {
	_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket})
	return err
}

// PresignGet returns a URL that fetches blob dgst without credentials until
// expires has passed, for redirecting clients to the bucket. It does not
// check that the blob exists: the URL of a missing blob answers 404.
func (s *S3) PresignGet(ctx context.Context, dgst digest.Digest, expires time.Duration) (string, error) {
	key, err := s.blobKey(dgst)
	if err != nil {
		return "", err
	}
	if expires <= 0 {
		return "", fmt.Errorf("blob store: presigned URL lifetime %v is not positive", expires)
	}
	req, err := s.presign.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key},
		s3.WithPresignExpires(expires))
	if err != nil {
		return "", fmt.Errorf("presign blob %s: %w", dgst, err)
	}
	return req.URL, nil
}

// blobKey maps a digest to its key, refusing anything that is not
// <algorithm>:<encoded> with plain names (see FS.blobPath).
func (s *S3) blobKey(dgst digest.Digest) (string, error) {
	alg, enc, ok := strings.Cut(string(dgst), ":")
	if !ok || !validName(alg) || len(enc) < 2 || !validName(enc) {
		return "", fmt.Errorf("blob store: malformed digest %q", dgst)
	}
	return s.prefix + "blobs/" + alg + "/" + enc[:2] + "/" + enc, nil
}

func (s *S3) uploadPrefix(id string) (string, error) {
	if !validName(id) {
		return "", fmt.Errorf("invalid upload id %q", id)
	}
	return s.prefix + "uploads/" + id + "/", nil
}

// copySource is the x-amz-copy-source of a key: bucket and key, URL-encoded.
func (s *S3) copySource(key string) *string {
	return aws.String((&url.URL{Path: s.bucket + "/" + key}).EscapedPath())
}

// isNotFound reports whether err is S3 saying that a key or multipart
// upload does not exist. A HEAD has no body, so its 404 is the generic
// NotFound.
func isNotFound(err error) bool {
	var (
		noKey    *types.NoSuchKey
		notFound *types.NotFound
		noUpload *types.NoSuchUpload
	)
	if errors.As(err, &noKey) || errors.As(err, &notFound) || errors.As(err, &noUpload) {
		return true
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "NoSuchKey", "NotFound", "NoSuchUpload":
			return true
		}
	}
	return false
}

// s3Full reports whether err is the server saying it has no room for the
// bytes; the S3 documentation above lists what is recognised and why.
func s3Full(err error) bool {
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "InsufficientStorage", "XMinioStorageFull", "QuotaExceeded", "XMinioAdminBucketQuotaExceeded":
			return true
		}
	}
	var resp *smithyhttp.ResponseError
	return errors.As(err, &resp) && resp.HTTPStatusCode() == http.StatusInsufficientStorage
}

// notFoundErr makes S3's not-found errors the package's ErrNotFound,
// keeping S3's message.
func notFoundErr(err error) error {
	if isNotFound(err) {
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	return err
}

// Stat implements Reader.
func (s *S3) Stat(ctx context.Context, dgst digest.Digest) (int64, error) {
	key, err := s.blobKey(dgst)
	if err != nil {
		return 0, err
	}
	size, err := s.HeadKey(ctx, key)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return 0, fmt.Errorf("stat blob %s: %w", dgst, err)
	}
	return size, err
}

// Open implements Reader. The result fetches bytes only when read, from
// where it was last sought to, so that http.ServeContent can seek to the end
// for the size and then to the start of a range without a request each.
func (s *S3) Open(ctx context.Context, dgst digest.Digest) (io.ReadSeekCloser, error) {
	key, err := s.blobKey(dgst)
	if err != nil {
		return nil, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	if isNotFound(err) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", dgst, err)
	}
	return &s3Object{ctx: ctx, s: s, key: key, size: aws.ToInt64(out.ContentLength)}, nil
}

// s3Object reads an object of known size from an offset with a ranged GET,
// opened on the first Read after a Seek that moved.
type s3Object struct {
	ctx       context.Context // of Open: Read has none of its own
	s         *S3
	key       string
	size, off int64
	body      io.ReadCloser // nil until Read, and after a Seek that moved
}

func (o *s3Object) Read(p []byte) (int, error) {
	if o.off >= o.size {
		return 0, io.EOF
	}
	if o.body == nil {
		out, err := o.s.client.GetObject(o.ctx, &s3.GetObjectInput{
			Bucket: &o.s.bucket,
			Key:    &o.key,
			Range:  aws.String(fmt.Sprintf("bytes=%d-", o.off)),
		})
		if err != nil {
			return 0, fmt.Errorf("read %s at %d: %w", o.key, o.off, notFoundErr(err))
		}
		o.body = out.Body
	}
	n, err := o.body.Read(p)
	o.off += int64(n)
	if err != nil {
		// A Read after a failure opens a new GET from where this one
		// stopped.
		o.body.Close()
		o.body = nil
		if err == io.EOF && o.off < o.size {
			err = fmt.Errorf("read %s: %w after %d of %d bytes", o.key, io.ErrUnexpectedEOF, o.off, o.size)
		}
	}
	return n, err
}

func (o *s3Object) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += o.off
	case io.SeekEnd:
		offset += o.size
	default:
		return 0, fmt.Errorf("seek %s: invalid whence %d", o.key, whence)
	}
	if offset < 0 {
		return 0, fmt.Errorf("seek %s: negative position %d", o.key, offset)
	}
	if offset != o.off && o.body != nil {
		o.body.Close()
		o.body = nil
	}
	o.off = offset
	return offset, nil
}

func (o *s3Object) Close() error {
	if o.body == nil {
		return nil
	}
	err := o.body.Close()
	o.body = nil
	return err
}

// Delete implements Deleter.
func (s *S3) Delete(ctx context.Context, dgst digest.Digest) error {
	key, err := s.blobKey(dgst)
	if err != nil {
		return err
	}
	_, err = s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete blob %s: %w", dgst, err)
	}
	return nil
}

// s3State is the state of an upload: the bytes are the parts of each run in
// order, then the tail. It is saved on every PATCH, so it is kept short: a
// run costs about 25 bytes and an upload has about one run per request that
// completed a part (one in all for a blob sent in one request, ~1280 for a
// 10 GiB blob sent in chunks under 8 MiB).
type s3State struct {
	// PartSize is P, fixed when the upload receives its first bytes, so
	// that a change of configuration does not cut an upload in progress.
	PartSize int64   `json:"ps,omitempty"`
	Runs     []s3Run `json:"r,omitempty"`
	Tail     string  `json:"t,omitempty"` // token of the tail object; "" when TailSize is 0
	TailSize int64   `json:"ts,omitempty"`
}

// s3Run is the parts written by one AppendChunk: the next Parts part
// numbers, under its token.
type s3Run struct {
	Token string `json:"t"`
	Parts int    `json:"n"`
}

// s3TokenBytes is the randomness of a token: the objects it names are
// per upload and per part number, so 48 bits are plenty.
const s3TokenBytes = 6

func validToken(t string) bool {
	if len(t) != 2*s3TokenBytes {
		return false
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// decodeS3State also checks the state, since its tokens become keys.
func decodeS3State(state []byte) (s3State, error) {
	var st s3State
	if len(state) == 0 {
		return st, nil
	}
	if err := json.Unmarshal(state, &st); err != nil {
		return st, fmt.Errorf("decode upload state: %w", err)
	}
	bad := func(what string) (s3State, error) {
		return st, fmt.Errorf("decode upload state: %s in %q", what, state)
	}
	if st.PartSize < s3MinPartSize || st.PartSize > s3MaxPartSize {
		return bad("bad part size")
	}
	parts := 0
	for _, r := range st.Runs {
		if !validToken(r.Token) || r.Parts <= 0 {
			return bad("bad run")
		}
		parts += r.Parts
	}
	if parts > s3MaxParts {
		return bad("too many parts")
	}
	if st.TailSize < 0 || st.TailSize >= st.PartSize || (st.TailSize > 0) != (st.Tail != "") ||
		st.Tail != "" && !validToken(st.Tail) {
		return bad("bad tail")
	}
	return st, nil
}

func (st s3State) parts() int {
	n := 0
	for _, r := range st.Runs {
		n += r.Parts
	}
	return n
}

func partKey(up string, k int, token string) string { return fmt.Sprintf("%spart-%d-%s", up, k, token) }

func tailKey(up, token string) string { return up + "tail-" + token }

// s3Piece is an object holding some of an upload's bytes.
type s3Piece struct {
	key  string
	size int64
}

// pieces lists the objects holding the state's bytes, in order.
func (st s3State) pieces(up string) []s3Piece {
	var ps []s3Piece
	k := 0
	for _, r := range st.Runs {
		for range r.Parts {
			k++
			ps = append(ps, s3Piece{partKey(up, k, r.Token), st.PartSize})
		}
	}
	if st.TailSize > 0 {
		ps = append(ps, s3Piece{tailKey(up, st.Tail), st.TailSize})
	}
	return ps
}

// AppendChunk implements Uploader; the documentation of S3 says how. Its
// memory is one part: a part must be whole before it is sent, since an S3
// PUT needs its length up front.
func (s *S3) AppendChunk(ctx context.Context, uploadID string, state []byte, r io.Reader) ([]byte, int64, error) {
	newState, n, err := s.appendChunk(ctx, uploadID, state, r)
	return newState, n, storageFull(err, s3Full)
}

func (s *S3) appendChunk(ctx context.Context, uploadID string, state []byte, r io.Reader) (_ []byte, _ int64, err error) {
	st, err := decodeS3State(state)
	if err != nil {
		return nil, 0, err
	}
	up, err := s.uploadPrefix(uploadID)
	if err != nil {
		return nil, 0, err
	}
	if st.PartSize == 0 {
		st.PartSize = s.partSize
	}
	select {
	case s.inFlight <- struct{}{}:
		defer func() { <-s.inFlight }()
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
	buf := s.getBuf(st.PartSize)
	defer s.putBuf(buf)

	// The old tail goes first in the buffer, but it is fetched only once r
	// has given a byte: an empty chunk costs no request.
	token := randomHex(s3TokenBytes)
	// The objects written so far: no state will name them if this call
	// fails, and on a full store they hold room that is missing, so they
	// go at once rather than with the upload (best effort: DeleteUpload
	// removes what is left).
	var mine []types.ObjectIdentifier
	defer func() {
		if err != nil && len(mine) > 0 {
			s.deleteObjects(context.WithoutCancel(ctx), mine)
		}
	}()
	fill := int(st.TailSize)
	haveTail := st.TailSize == 0
	k := st.parts()
	written := 0 // parts written under token
	var n int64
	for {
		m, err := io.ReadFull(r, buf[fill:])
		n += int64(m)
		fill += m
		done := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !done {
			return nil, 0, fmt.Errorf("read upload chunk: %w", err)
		}
		if n == 0 {
			return state, 0, nil
		}
		if !haveTail {
			if err := s.readTail(ctx, tailKey(up, st.Tail), buf[:st.TailSize]); err != nil {
				return nil, 0, fmt.Errorf("upload %s: %w", uploadID, err)
			}
			haveTail = true
		}
		if fill == len(buf) {
			if k+1 > s3MaxParts {
				return nil, 0, fmt.Errorf("upload %s exceeds %d parts of %d bytes, the most S3 can join", uploadID, s3MaxParts, st.PartSize)
			}
			k++
			key := partKey(up, k, token)
			if err := s.put(ctx, key, buf); err != nil {
				return nil, 0, fmt.Errorf("upload %s: write part %d: %w", uploadID, k, err)
			}
			mine = append(mine, types.ObjectIdentifier{Key: &key})
			written++
			fill = 0
		}
		if done {
			break
		}
	}
	if fill > 0 && k+1 > s3MaxParts {
		return nil, 0, fmt.Errorf("upload %s exceeds %d parts of %d bytes, the most S3 can join", uploadID, s3MaxParts, st.PartSize)
	}
	st.Tail, st.TailSize = "", int64(fill)
	if fill > 0 {
		key := tailKey(up, token)
		if err := s.put(ctx, key, buf[:fill]); err != nil {
			return nil, 0, fmt.Errorf("upload %s: write tail: %w", uploadID, err)
		}
		mine = append(mine, types.ObjectIdentifier{Key: &key})
		st.Tail = token
	}
	if written > 0 {
		st.Runs = append(st.Runs, s3Run{Token: token, Parts: written})
	}
	out, err := json.Marshal(st)
	if err != nil {
		return nil, 0, fmt.Errorf("encode upload state: %w", err)
	}
	return out, n, nil
}

func (s *S3) getBuf(size int64) []byte {
	if size == s.partSize { // else a state from before a configuration change
		select {
		case b := <-s.bufs:
			return b
		default:
		}
	}
	return make([]byte, size)
}

func (s *S3) putBuf(b []byte) {
	if int64(len(b)) != s.partSize {
		return
	}
	select {
	case s.bufs <- b:
	default: // enough kept; this one is garbage
	}
}

func (s *S3) put(ctx context.Context, key string, b []byte) error {
	_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        &s.bucket,
		Key:           &key,
		Body:          bytes.NewReader(b),
		ContentLength: aws.Int64(int64(len(b))),
	})
	return err
}

// readTail reads the whole object key into buf, which must be its size.
func (s *S3) readTail(ctx context.Context, key string, buf []byte) error {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return fmt.Errorf("read tail: %w", notFoundErr(err))
	}
	defer out.Body.Close()
	if size := aws.ToInt64(out.ContentLength); size != int64(len(buf)) {
		return fmt.Errorf("tail %s holds %d bytes, want %d", key, size, len(buf))
	}
	if _, err := io.ReadFull(out.Body, buf); err != nil {
		return fmt.Errorf("read tail: %w", err)
	}
	return nil
}

// ReadUpload implements Uploader: the pieces' bodies one after the other.
// The first is opened at once, so that an upload that is gone shows now.
func (s *S3) ReadUpload(ctx context.Context, uploadID string, state []byte) (io.ReadCloser, error) {
	st, err := decodeS3State(state)
	if err != nil {
		return nil, err
	}
	up, err := s.uploadPrefix(uploadID)
	if err != nil {
		return nil, err
	}
	rd := &s3Pieces{ctx: ctx, s: s, pieces: st.pieces(up)}
	if len(rd.pieces) > 0 {
		if err := rd.open(); err != nil {
			return nil, fmt.Errorf("upload %s: %w", uploadID, err)
		}
	}
	return rd, nil
}

// s3Pieces reads pieces in order, checking that each holds its size.
type s3Pieces struct {
	ctx    context.Context
	s      *S3
	pieces []s3Piece
	body   io.ReadCloser // of pieces[0]
	left   int64         // bytes of pieces[0] not read yet
}

func (p *s3Pieces) open() error {
	key := p.pieces[0].key
	out, err := p.s.client.GetObject(p.ctx, &s3.GetObjectInput{Bucket: &p.s.bucket, Key: &key})
	if err != nil {
		return fmt.Errorf("read %s: %w", key, notFoundErr(err))
	}
	if size := aws.ToInt64(out.ContentLength); size != p.pieces[0].size {
		out.Body.Close()
		return fmt.Errorf("%s holds %d bytes, want %d", key, size, p.pieces[0].size)
	}
	p.body, p.left = out.Body, p.pieces[0].size
	return nil
}

func (p *s3Pieces) Read(b []byte) (int, error) {
	for len(p.pieces) > 0 {
		if p.body == nil {
			if err := p.open(); err != nil {
				return 0, err
			}
		}
		if p.left == 0 {
			p.body.Close()
			p.body, p.pieces = nil, p.pieces[1:]
			continue
		}
		n, err := p.body.Read(b[:min(int64(len(b)), p.left)])
		p.left -= int64(n)
		if err == io.EOF {
			if p.left > 0 {
				return n, fmt.Errorf("read %s: %w", p.pieces[0].key, io.ErrUnexpectedEOF)
			}
			err = nil
		}
		return n, err
	}
	return 0, io.EOF
}

func (p *s3Pieces) Close() error {
	if p.body == nil {
		return nil
	}
	err := p.body.Close()
	p.body = nil
	return err
}

// Publish implements Uploader. The blob is written whole in one request
// (PutObject of nothing, CopyObject of one piece, or CompleteMultipartUpload
// of a multipart copy), so it never exists half-written.
func (s *S3) Publish(ctx context.Context, uploadID string, state []byte, dgst digest.Digest) error {
	return storageFull(s.publish(ctx, uploadID, state, dgst), s3Full)
}

func (s *S3) publish(ctx context.Context, uploadID string, state []byte, dgst digest.Digest) error {
	// Check the arguments even when the blob exists, so that a bad id or
	// state is reported the same way every time.
	st, err := decodeS3State(state)
	if err != nil {
		return err
	}
	up, err := s.uploadPrefix(uploadID)
	if err != nil {
		return err
	}
	final, err := s.blobKey(dgst)
	if err != nil {
		return err
	}
	_, err = s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &final})
	if err == nil {
		return nil // published before; content addressed, so identical
	}
	if !isNotFound(err) {
		return fmt.Errorf("publish blob %s: %w", dgst, err)
	}
	pieces := st.pieces(up)
	switch {
	case len(pieces) == 0:
		err = s.put(ctx, final, nil)
	case len(pieces) == 1 && pieces[0].size <= s.maxCopyObject:
		_, err = s.client.CopyObject(ctx, &s3.CopyObjectInput{
			Bucket:     &s.bucket,
			Key:        &final,
			CopySource: s.copySource(pieces[0].key),
		})
	default:
		err = s.multipartCopy(ctx, up, final, pieces)
	}
	if err != nil {
		return fmt.Errorf("publish blob %s from upload %s: %w", dgst, uploadID, notFoundErr(err))
	}
	return nil
}

// s3PublishRecord is the content of a publish-<token> object: the
// multipart upload that a Publish of the upload has open, for DeleteUpload
// to abort if that Publish never finished (its process died). It is the
// only part of an upload that lives outside uploads/<id>/: its parts are
// copies at the blob's key, costing storage until aborted.
type s3PublishRecord struct {
	Key      string `json:"key"`
	UploadID string `json:"upload"`
}

// startMultipart opens a multipart upload at key dst, recorded under the
// upload prefix up, and returns its id and a function that aborts it (and
// drops the record) unless it was completed.
func (s *S3) startMultipart(ctx context.Context, up, dst string) (mpuID string, finish func(completed bool), err error) {
	out, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &s.bucket, Key: &dst})
	if err != nil {
		return "", nil, err
	}
	mpuID = aws.ToString(out.UploadId)
	// Cleaning up must happen even when ctx is what failed.
	cleanupCtx := context.WithoutCancel(ctx)
	abort := func() error {
		_, err := s.client.AbortMultipartUpload(cleanupCtx, &s3.AbortMultipartUploadInput{
			Bucket: &s.bucket, Key: &dst, UploadId: &mpuID,
		})
		if isNotFound(err) {
			err = nil
		}
		return err
	}
	record, _ := json.Marshal(s3PublishRecord{Key: dst, UploadID: mpuID})
	recordKey := up + "publish-" + randomHex(s3TokenBytes)
	if err := s.put(ctx, recordKey, record); err != nil {
		abort()
		return "", nil, err
	}
	return mpuID, func(completed bool) {
		if !completed && abort() != nil {
			return // keep the record: DeleteUpload will try again
		}
		s.client.DeleteObject(cleanupCtx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &recordKey})
	}, nil
}

// multipartCopy joins the pieces into the object dst, one piece per part,
// on the server. Every piece but the last is a full part of at least 5 MiB,
// as S3 requires; the last may be smaller.
func (s *S3) multipartCopy(ctx context.Context, up, dst string, pieces []s3Piece) (err error) {
	if len(pieces) > s3MaxParts {
		return fmt.Errorf("%d pieces is more than S3's %d parts", len(pieces), s3MaxParts)
	}
	mpuID, finish, err := s.startMultipart(ctx, up, dst)
	if err != nil {
		return err
	}
	defer func() { finish(err == nil) }()

	parts := make([]types.CompletedPart, len(pieces))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s3CopyConcurrency)
	for i, p := range pieces {
		g.Go(func() error {
			// The explicit range makes S3 refuse a source shorter than
			// the state says, instead of joining the wrong bytes.
			out, err := s.client.UploadPartCopy(gctx, &s3.UploadPartCopyInput{
				Bucket:          &s.bucket,
				Key:             &dst,
				UploadId:        &mpuID,
				PartNumber:      aws.Int32(int32(i + 1)),
				CopySource:      s.copySource(p.key),
				CopySourceRange: aws.String(fmt.Sprintf("bytes=0-%d", p.size-1)),
			})
			if err != nil {
				return fmt.Errorf("copy %s: %w", p.key, err)
			}
			if out.CopyPartResult == nil {
				return fmt.Errorf("copy %s: no ETag in the response", p.key)
			}
			parts[i] = types.CompletedPart{ETag: out.CopyPartResult.ETag, PartNumber: aws.Int32(int32(i + 1))}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	_, err = s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket:          &s.bucket,
		Key:             &dst,
		UploadId:        &mpuID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	return err
}

// DeleteUpload implements Uploader. The state is not needed: every object of
// the upload is under its prefix, including those of states never saved.
func (s *S3) DeleteUpload(ctx context.Context, uploadID string, state []byte) error {
	up, err := s.uploadPrefix(uploadID)
	if err != nil {
		return err
	}
	// DeleteObjects takes at most 1000 keys.
	const batch = 1000
	var keys []types.ObjectIdentifier
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &up})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("delete upload %s: list: %w", uploadID, err)
		}
		for _, obj := range page.Contents {
			if strings.HasPrefix(strings.TrimPrefix(aws.ToString(obj.Key), up), "publish-") {
				if err := s.abortRecorded(ctx, aws.ToString(obj.Key)); err != nil {
					return fmt.Errorf("delete upload %s: %w", uploadID, err)
				}
			}
			keys = append(keys, types.ObjectIdentifier{Key: obj.Key})
			if len(keys) == batch {
				if err := s.deleteObjects(ctx, keys); err != nil {
					return fmt.Errorf("delete upload %s: %w", uploadID, err)
				}
				keys = keys[:0]
			}
		}
	}
	if err := s.deleteObjects(ctx, keys); err != nil {
		return fmt.Errorf("delete upload %s: %w", uploadID, err)
	}
	return nil
}

// abortRecorded aborts the multipart upload that the publish record at key
// names, if it is still open.
func (s *S3) abortRecorded(ctx context.Context, key string) error {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	defer out.Body.Close()
	var rec s3PublishRecord
	if err := json.NewDecoder(io.LimitReader(out.Body, 64<<10)).Decode(&rec); err != nil {
		return fmt.Errorf("decode %s: %w", key, err)
	}
	if !strings.HasPrefix(rec.Key, s.prefix+"blobs/") || rec.UploadID == "" {
		return fmt.Errorf("%s names %q, not a blob's multipart upload", key, rec.Key)
	}
	_, err = s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
		Bucket: &s.bucket, Key: &rec.Key, UploadId: &rec.UploadID,
	})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("abort the multipart upload %s names: %w", key, err)
	}
	return nil
}

func (s *S3) deleteObjects(ctx context.Context, keys []types.ObjectIdentifier) error {
	if len(keys) == 0 {
		return nil
	}
	out, err := s.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
		Bucket: &s.bucket,
		Delete: &types.Delete{Objects: keys, Quiet: aws.Bool(true)},
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range out.Errors {
		if code := aws.ToString(e.Code); code != "NoSuchKey" {
			errs = append(errs, fmt.Errorf("delete %s: %s: %s", aws.ToString(e.Key), code, aws.ToString(e.Message)))
		}
	}
	return errors.Join(errs...)
}

// WalkBlobs implements Lister. Keys that are not named like a blob are
// skipped.
func (s *S3) WalkBlobs(ctx context.Context, fn func(dgst digest.Digest, size int64, modTime time.Time) error) error {
	root := s.prefix + "blobs/"
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &root})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list blobs: %w", err)
		}
		for _, obj := range page.Contents {
			parts := strings.Split(strings.TrimPrefix(aws.ToString(obj.Key), root), "/")
			if len(parts) != 3 || len(parts[1]) != 2 || !strings.HasPrefix(parts[2], parts[1]) {
				continue
			}
			dgst := digest.NewDigestFromEncoded(digest.Algorithm(parts[0]), parts[2])
			if dgst.Validate() != nil {
				continue
			}
			if err := fn(dgst, aws.ToInt64(obj.Size), aws.ToTime(obj.LastModified)); err != nil {
				return err
			}
		}
	}
	return nil
}

// WalkUploads implements Lister: the size of an upload is that of its
// objects, its time that of its newest object. An upload's multipart
// uploads need no listing of their own: only Publish opens one, and
// records it in an object of the upload first thing.
func (s *S3) WalkUploads(ctx context.Context, fn func(uploadID string, size int64, modTime time.Time) error) error {
	root := s.prefix + "uploads/"
	latest := map[string]time.Time{}
	sizes := map[string]int64{}
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &root})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list uploads: %w", err)
		}
		for _, obj := range page.Contents {
			id, _, ok := strings.Cut(strings.TrimPrefix(aws.ToString(obj.Key), root), "/")
			if !ok || !validName(id) {
				continue
			}
			mod := aws.ToTime(obj.LastModified)
			if prev, seen := latest[id]; !seen || mod.After(prev) {
				latest[id] = mod
			}
			sizes[id] += aws.ToInt64(obj.Size)
		}
	}
	for id, mod := range latest {
		if err := fn(id, sizes[id], mod); err != nil {
			return err
		}
	}
	return nil
}
