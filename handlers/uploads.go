package handlers

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/auth"
	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/digests"
)

// Blob uploads. A session's state (bytes received, running sha256, where the
// store keeps the parts) lives in the database, so every request of an
// upload may land on a different replica. Chunks are appended without any
// lock held while they stream: the store writes each one somewhere new, and
// the database accepts it with a compare-and-set on the session's size. Of
// two requests racing on one session, one wins and the other gets 416 with
// the current range, exactly as if it had been sent out of order.

// startUpload serves POST /v2/<name>/blobs/uploads/: a cross-repository
// mount, a monolithic upload (?digest=), or a new session.
func (h *Handler) startUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	q := r.URL.Query()
	if q.Has("mount") {
		done, err := h.mountBlob(w, r, rt, q.Get("mount"), q.Get("from"))
		if done || err != nil {
			return err
		}
		// The blob is not available to mount: fall back to a session, as
		// the spec asks, so the client simply uploads.
	} else if q.Has("digest") {
		dgst, err := parseDigest(q.Get("digest"))
		if err != nil {
			return err
		}
		return h.monolithicUpload(w, r, rt, dgst)
	}
	id := newUploadID()
	if err := h.db.UploadCreate(r.Context(), rt.name, id, uploadOwner(r), digests.EmptySha256(), h.limits.UploadSessions, h.actor(r)); err != nil {
		return err
	}
	uploadHeaders(w, rt.name, id, 0)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// mountBlob links a blob of repository from into rt.name. done is false when
// the blob cannot be mounted and the caller should open a session instead.
func (h *Handler) mountBlob(w http.ResponseWriter, r *http.Request, rt route, mount, from string) (done bool, err error) {
	dgst, err := parseDigest(mount)
	if err != nil {
		return false, err
	}
	if from == "" {
		// Without from, mounting would mean searching every repository;
		// that would reveal what other repositories hold, so Berth opens a
		// session instead (the spec allows both).
		return false, nil
	}
	if !validName(from) {
		return false, errorf(CodeNameInvalid, "invalid repository name %q in the from parameter", clip(from))
	}
	if p := principalOf(r.Context()); p != nil && !p.may(auth.Scope{Type: auth.TypeRepository, Name: from, Actions: []string{auth.Pull}}) {
		// Not allowed to read the source: an ordinary upload instead,
		// which tells nothing of whether the blob is there.
		return false, nil
	}
	_, err = h.db.BlobMount(r.Context(), from, rt.name, dgst.String(), h.actor(r))
	if errors.Is(err, db.ErrBlobUnknown) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	w.Header().Set("Location", blobLocation(rt.name, dgst))
	w.Header().Set("Docker-Content-Digest", dgst.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return true, nil
}

// monolithicUpload takes a whole blob in the body of the POST. There is no
// session: the bytes are staged under a private id, verified, published.
func (h *Handler) monolithicUpload(w http.ResponseWriter, r *http.Request, rt route, dgst digest.Digest) error {
	ctx := r.Context()
	staging := "m-" + newUploadID()
	hsh := digests.New(dgst.Algorithm())
	body := &bodyReader{r: r.Body}
	state, size, err := h.blobs.AppendChunk(ctx, staging, nil, io.TeeReader(body, hsh))
	defer h.discardUpload(ctx, staging, state)
	if err != nil {
		return body.explain(err)
	}
	if got := digest.NewDigest(dgst.Algorithm(), hsh); got != dgst {
		return digestMismatch(got, dgst)
	}
	if err := h.commitBlob(ctx, r, rt.name, dgst, size, staging, state, db.BlobCommit{}); err != nil {
		return err
	}
	blobCreated(w, rt.name, dgst)
	return nil
}

// uploadStatus serves GET of a session: how many bytes it holds.
func (h *Handler) uploadStatus(w http.ResponseWriter, r *http.Request, rt route) error {
	u, err := h.loadUpload(r, rt)
	if err != nil {
		return err
	}
	uploadHeaders(w, rt.name, u.ID, u.Size)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// patchUpload appends a chunk. With Content-Range the chunk must start where
// the session stands (416 otherwise, with the current Range); without it
// the body is streamed on at the end.
func (h *Handler) patchUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	ctx := r.Context()
	u, state, hsh, n, err := h.receiveChunk(r, rt)
	if err != nil {
		return err
	}
	hashState, err := digests.Save(hsh)
	if err != nil {
		return err
	}
	err = h.db.UploadAdvance(ctx, rt.name, u.ID, u.Size, u.Size+n, hashState, state)
	if errors.Is(err, db.ErrUploadOffset) {
		return h.rangeConflict(r, rt, u.ID)
	}
	if err != nil {
		return err
	}
	uploadHeaders(w, rt.name, u.ID, u.Size+n)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// finishUpload serves PUT ?digest=: an optional last chunk in the body, then
// verification and commit.
func (h *Handler) finishUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	ctx := r.Context()
	q := r.URL.Query()
	if !q.Has("digest") {
		return errorf(CodeDigestInvalid, "the digest query parameter is required to complete an upload")
	}
	dgst, err := parseDigest(q.Get("digest"))
	if err != nil {
		return err
	}
	u, state, hsh, n, err := h.receiveChunk(r, rt)
	if err != nil {
		return err
	}
	got := digest.NewDigest(digest.SHA256, hsh)
	if dgst.Algorithm() != digest.SHA256 {
		// The running hash is sha256; any other algorithm needs one more
		// pass over the stored bytes.
		if got, err = h.rehash(ctx, u.ID, state, dgst.Algorithm()); err != nil {
			return err
		}
	}
	if got != dgst {
		if _, err := h.db.UploadDelete(ctx, rt.name, u.ID, h.actor(r)); err == nil {
			h.discardUpload(ctx, u.ID, state)
		}
		return digestMismatch(got, dgst)
	}
	err = h.commitBlob(ctx, r, rt.name, dgst, u.Size+n, u.ID, state,
		db.BlobCommit{UploadID: u.ID, UploadSize: u.Size})
	if errors.Is(err, blobstore.ErrNotFound) {
		// The upload's bytes are gone: another request finished or
		// cancelled it (and discarded them) while this one was publishing.
		if _, gerr := h.db.UploadGet(ctx, rt.name, u.ID); gerr != nil {
			return gerr
		}
	}
	if errors.Is(err, db.ErrUploadOffset) {
		return h.rangeConflict(r, rt, u.ID)
	}
	if err != nil {
		return err
	}
	h.discardUpload(ctx, u.ID, state)
	blobCreated(w, rt.name, dgst)
	return nil
}

// cancelUpload serves DELETE of a session.
func (h *Handler) cancelUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	if _, err := h.loadUpload(r, rt); err != nil {
		return err // unknown, or another principal's: cancelled by its owner only
	}
	u, err := h.db.UploadDelete(r.Context(), rt.name, rt.ref, h.actor(r))
	if err != nil {
		return err
	}
	h.discardUpload(r.Context(), u.ID, u.StoreState)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// commitBlob makes verified staged bytes the blob dgst of repository name.
// Publishing may copy a lot of data (assembling parts, an S3 copy), so it is
// done before the transaction when the blob is new; the transaction then
// only re-checks, under the blob's row lock, that the bytes are still there
// (see db.BlobCommit for why that closes the race with garbage collection).
func (h *Handler) commitBlob(ctx context.Context, r *http.Request, name string, dgst digest.Digest, size int64,
	stagingID string, state []byte, c db.BlobCommit) error {
	publish := func(ctx context.Context) error { return h.blobs.Publish(ctx, stagingID, state, dgst) }
	if err := h.db.PublishIfNew(ctx, dgst.String(), publish); err != nil {
		return err
	}
	c.Repository, c.Digest, c.Size = name, dgst.String(), size
	return h.db.BlobCommit(ctx, c, publish, h.actor(r))
}

func (h *Handler) loadUpload(r *http.Request, rt route) (db.Upload, error) {
	if !validUploadID(rt.ref) {
		return db.Upload{}, unknownUpload(rt.name, rt.ref)
	}
	u, err := h.db.UploadGet(r.Context(), rt.name, rt.ref)
	if err != nil {
		return db.Upload{}, err
	}
	if u.Owner != "" && u.Owner != uploadOwner(r) {
		// Another principal's session: as unknown as a session that never
		// was, so that ids cannot be probed.
		return db.Upload{}, unknownUpload(rt.name, rt.ref)
	}
	return u, nil
}

// receiveChunk loads the session of a PATCH or final PUT and appends the
// request body to it in the store, continuing the session's sha256. The
// session row is not changed: the caller saves the new state (PATCH) or
// commits the blob (PUT), both with a compare-and-set on u.Size.
func (h *Handler) receiveChunk(r *http.Request, rt route) (u db.Upload, state []byte, hsh hash.Hash, n int64, err error) {
	if u, err = h.loadUpload(r, rt); err != nil {
		return u, nil, nil, 0, err
	}
	body, err := chunkBody(r, u)
	if err != nil {
		return u, nil, nil, 0, err
	}
	state, hsh, n, err = h.appendChunk(r.Context(), u, body)
	return u, state, hsh, n, err
}

// appendChunk streams body into the store after the session's bytes,
// continuing the session's sha256.
func (h *Handler) appendChunk(ctx context.Context, u db.Upload, body *chunkReader) (state []byte, hsh hash.Hash, n int64, err error) {
	hsh, err = digests.Resume(u.HashState)
	if err != nil {
		return nil, nil, 0, err
	}
	br := &bodyReader{r: body}
	state, n, err = h.blobs.AppendChunk(ctx, u.ID, u.StoreState, io.TeeReader(br, hsh))
	if err != nil {
		return nil, nil, 0, br.explain(err)
	}
	if want := body.want; want >= 0 && n > want {
		return nil, nil, 0, errorf(CodeSizeInvalid, "the chunk holds more than the %d bytes Content-Range announced", want)
	}
	if want := body.want; want >= 0 && n != want {
		return nil, nil, 0, errorf(CodeSizeInvalid, "the chunk held %d bytes but Content-Range announced %d", n, want)
	}
	return state, hsh, n, nil
}

// rehash digests the stored bytes of an upload with another algorithm.
func (h *Handler) rehash(ctx context.Context, id string, state []byte, alg digest.Algorithm) (digest.Digest, error) {
	rc, err := h.blobs.ReadUpload(ctx, id, state)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	hsh := digests.New(alg)
	if _, err := io.Copy(hsh, rc); err != nil {
		return "", fmt.Errorf("re-read upload %s: %w", id, err)
	}
	return digest.NewDigest(alg, hsh), nil
}

// discardUpload removes an upload's bytes from the store. A failure only
// leaves garbage for the sweeper, so it is logged, not returned.
func (h *Handler) discardUpload(ctx context.Context, id string, state []byte) {
	if err := h.blobs.DeleteUpload(context.WithoutCancel(ctx), id, state); err != nil {
		h.log.WarnContext(ctx, "discard upload data", "upload", id, "err", err)
	}
}

// rangeConflict answers 416 with the session's current range, so the client
// can resume from the right offset.
func (h *Handler) rangeConflict(r *http.Request, rt route, id string) error {
	u, err := h.db.UploadGet(r.Context(), rt.name, id)
	if err != nil {
		return err
	}
	return outOfOrder(rt.name, id, u.Size,
		fmt.Sprintf("the chunk does not start at byte %d, where upload %s stands; resume from there", u.Size, id))
}

// outOfOrder is the 416 of a chunk that does not start where the upload
// stands, with the headers a client needs to resume.
func outOfOrder(name, id string, size int64, msg string) *Error {
	e := errorf(CodeBlobUploadInvalid, "%s", msg).withStatus(http.StatusRequestedRangeNotSatisfiable)
	e.Header = http.Header{}
	e.Header.Set("Location", uploadLocation(name, id))
	e.Header.Set("Range", uploadRange(size))
	e.Header.Set("Docker-Upload-UUID", id)
	return e
}

// chunkBody checks the optional Content-Range of a PATCH or final PUT
// against the session and returns the body to read.
func chunkBody(r *http.Request, u db.Upload) (*chunkReader, error) {
	cr := &chunkReader{r: r.Body, want: -1}
	hdr := r.Header.Get("Content-Range")
	if hdr == "" {
		return cr, nil
	}
	start, end, ok := parseContentRange(hdr)
	if !ok {
		return nil, errorf(CodeBlobUploadInvalid, "malformed Content-Range %q: want <start>-<end>, inclusive byte offsets in decimal digits", clip(hdr))
	}
	if start != u.Size {
		return nil, outOfOrder(u.Repository, u.ID, u.Size,
			fmt.Sprintf("chunk starts at byte %d but upload %s holds %d bytes; resume from byte %d", start, u.ID, u.Size, u.Size))
	}
	if end == math.MaxInt64 {
		// The upload would hold end+1 bytes, more than an int64 counts:
		// end-start+1 would wrap around, and the chunk be taken as empty.
		return nil, outOfOrder(u.Repository, u.ID, u.Size,
			fmt.Sprintf("Content-Range %s ends beyond the largest upload (%d bytes); upload %s holds %d bytes", clip(hdr), int64(math.MaxInt64), u.ID, u.Size))
	}
	cr.want = end - start + 1
	if r.ContentLength >= 0 && r.ContentLength != cr.want {
		return nil, errorf(CodeSizeInvalid, "Content-Length %d does not match Content-Range %s", r.ContentLength, clip(hdr))
	}
	// One byte more than announced (when that is still an int64), so that
	// a (chunked) body longer than its Content-Range is refused rather than
	// silently cut.
	cr.r = io.LimitReader(r.Body, cr.want+min(1, math.MaxInt64-cr.want))
	return cr, nil
}

// chunkReader is a request body with the length Content-Range announced
// (want < 0 when none did). It yields at most one byte more than want,
// which appendChunk then refuses.
type chunkReader struct {
	r    io.Reader
	want int64
}

func (c *chunkReader) Read(p []byte) (int, error) { return c.r.Read(p) }

// parseContentRange accepts "<start>-<end>" as the spec writes it, and the
// "bytes <start>-<end>/<total>" form of RFC 9110 that some clients send
// (total "*" when unknown, else beyond end). Every number is strict
// decimal digits that fit an int64 (parseDecimal), and end is not before
// start.
func parseContentRange(s string) (start, end int64, ok bool) {
	if rest, found := strings.CutPrefix(s, "bytes "); found {
		s = rest
	} else {
		s = strings.TrimPrefix(s, "bytes=")
	}
	s, total, hasTotal := strings.Cut(s, "/")
	a, b, found := strings.Cut(s, "-")
	if !found {
		return 0, 0, false
	}
	start, ok1 := parseDecimal(a)
	end, ok2 := parseDecimal(b)
	if !ok1 || !ok2 || end < start {
		return 0, 0, false
	}
	if hasTotal && total != "*" {
		if t, ok := parseDecimal(total); !ok || t <= end {
			return 0, 0, false
		}
	}
	return start, end, true
}

// bodyReader remembers a failure to read the request body, so that an
// upload cut short by the client is reported as the client's error and not
// as a storage fault.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

func (b *bodyReader) explain(err error) error {
	if b.err == nil {
		return err
	}
	return bodyFailed(CodeBlobUploadInvalid, b.err)
}

// bodyFailed is the error of a request body that could not be read: the
// client's fault, with code, or too slow (see slowBodyError).
func bodyFailed(code Code, err error) error {
	if errors.As(err, new(*slowBodyError)) {
		return err
	}
	return errorf(code, "reading the request body failed: %v", err)
}

func digestMismatch(got, want digest.Digest) error {
	return errorf(CodeDigestInvalid, "the uploaded content has digest %s, not %s", got, want).
		withDetail(map[string]string{"expected": want.String(), "actual": got.String()})
}

// unknownUpload answers an upload id that cannot be one of Berth's, without
// asking the database.
func unknownUpload(name, id string) error {
	return errorf(CodeBlobUploadUnknown, "upload %s is not known in repository %s (finished, cancelled or expired)", clip(id), name)
}

func blobCreated(w http.ResponseWriter, name string, dgst digest.Digest) {
	w.Header().Set("Location", blobLocation(name, dgst))
	w.Header().Set("Docker-Content-Digest", dgst.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

func uploadHeaders(w http.ResponseWriter, name, id string, size int64) {
	w.Header().Set("Location", uploadLocation(name, id))
	w.Header().Set("Docker-Upload-UUID", id)
	w.Header().Set("Range", uploadRange(size))
	w.Header().Set("Content-Length", "0")
}

func uploadLocation(name, id string) string { return fmt.Sprintf("/v2/%s/blobs/uploads/%s", name, id) }

// uploadRange is the Range header of a session holding size bytes. An
// empty session reports "0-0", as the reference registry does; clients
// read the Range only after sending bytes.
func uploadRange(size int64) string { return fmt.Sprintf("0-%d", max(size-1, 0)) }

// newUploadID returns a random (version 4) UUID: 122 random bits, so an
// upload URL cannot be guessed, in the form Docker clients expect.
func newUploadID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// validUploadID accepts only ids of newUploadID's form, so anything else is
// refused before it reaches the database or the store.
func validUploadID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}
