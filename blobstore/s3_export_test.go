package blobstore

import (
	"context"

	"github.com/opencontainers/go-digest"
)

// SetMaxCopyObjectForTest sets the size above which Publish copies a
// single piece with a multipart copy rather than CopyObject (5 GiB, S3's
// limit), so that tests can take that path with small objects.
func (s *S3) SetMaxCopyObjectForTest(n int64) { s.maxCopyObject = n }

// StartPublishForTest opens the multipart upload that Publish of dgst from
// upload id would, and leaves it open, as a Publish whose process died does.
// It returns the key and id of the multipart upload.
func (s *S3) StartPublishForTest(ctx context.Context, id string, dgst digest.Digest) (key, mpuID string, err error) {
	up, err := s.uploadPrefix(id)
	if err != nil {
		return "", "", err
	}
	if key, err = s.blobKey(dgst); err != nil {
		return "", "", err
	}
	mpuID, _, err = s.startMultipart(ctx, up, key)
	return key, mpuID, err
}

// SetMaxInFlightPartsForTest replaces the bound on part buffers in use.
func (s *S3) SetMaxInFlightPartsForTest(n int) { s.inFlight = make(chan struct{}, n) }
