package blobstore_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/aws/smithy-go"
	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/blobstore/storetest"
)

// TestS3FullAnswers: which answers of an S3 server are a full store, as the
// SDK parses them from the wire. The server here answers every write with
// one canned error; TestS3FullDisk has a real server run out of space.
func TestS3FullAnswers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		status int
		code   string // "" for a body that is not S3's XML
		full   bool
	}{
		{"Versitygw", http.StatusInsufficientStorage, "InsufficientStorage", true},
		{"MinIO", http.StatusInsufficientStorage, "XMinioStorageFull", true},
		{"QuotaExceeded", http.StatusForbidden, "QuotaExceeded", true},
		{"MinIOBucketQuota", http.StatusBadRequest, "XMinioAdminBucketQuotaExceeded", true},
		{"Bare507", http.StatusInsufficientStorage, "", true},
		{"UnknownCode507", http.StatusInsufficientStorage, "SomethingElse", true},
		{"EntityTooLarge", http.StatusBadRequest, "EntityTooLarge", false},
		{"AccessDenied", http.StatusForbidden, "AccessDenied", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.Method == http.MethodHead && r.URL.Path == "/bucket": // NewS3's check
				case r.Method == http.MethodHead: // Publish: the blob is not there
					w.WriteHeader(http.StatusNotFound)
				case r.Method == http.MethodPut: // every write fails
					if tc.code == "" {
						w.WriteHeader(tc.status)
						fmt.Fprint(w, "Insufficient Storage")
						return
					}
					w.Header().Set("Content-Type", "application/xml")
					w.WriteHeader(tc.status)
					fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+
						`<Error><Code>%s</Code><Message>canned</Message><RequestId>1</RequestId></Error>`, tc.code)
				default:
					t.Errorf("unexpected %s %s", r.Method, r.URL)
					w.WriteHeader(http.StatusNotImplemented)
				}
			}))
			defer srv.Close()
			s, err := blobstore.NewS3(t.Context(), blobstore.S3Config{
				Bucket: "bucket", Endpoint: srv.URL, ForcePathStyle: true, AccessKey: "a", SecretKey: "s",
			})
			if err != nil {
				t.Fatal(err)
			}
			id := storetest.NewUploadID()
			_, _, appendErr := s.AppendChunk(t.Context(), id, nil, strings.NewReader("a chunk"))
			// One piece: Publish copies it with CopyObject.
			state := []byte(`{"ps":5242880,"t":"0123456789ab","ts":7}`)
			publishErr := s.Publish(t.Context(), id, state, digest.FromString("a chunk"))
			for what, err := range map[string]error{"AppendChunk": appendErr, "Publish": publishErr} {
				if err == nil {
					t.Fatalf("%s succeeded", what)
				}
				if errors.Is(err, blobstore.ErrStorageFull) != tc.full {
					t.Errorf("%s: %v; ErrStorageFull is %v, want %v", what, err, !tc.full, tc.full)
				}
				var api smithy.APIError
				if !errors.As(err, &api) || tc.code != "" && api.ErrorCode() != tc.code {
					t.Errorf("%s: %v does not keep S3's error", what, err)
				}
			}
		})
	}
}
