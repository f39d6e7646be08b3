package handlers_test

import (
	"encoding/json"
	"strings"
	"testing"
)

// A client can send a path, a parameter or a header of hundreds of
// kilobytes; every route that refuses it echoes at most a clipped piece
// of it, marked as cut, so the error body stays small.
//
// Not here, because handlers.go writes their messages (another change
// clips those): an unknown route, a malformed repository name, a method a
// route does not support.
func TestLongInputIsClippedInErrors(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	long := strings.Repeat("a", 500<<10)
	digits := strings.Repeat("1", 500<<10)
	valid := r.pushBlob("int/echo", []byte("echo")).String()
	upload := r.do("POST", "/v2/int/echo/blobs/uploads/", nil).Header.Get("Location")
	manifest := r.pushManifest("int/echo", "v1", mtManifest, r.image("int/echo", "echo")).String()
	sha := "sha256:" + long
	tests := []struct {
		name, method, path string
		header             []string
		status             int
		code               string
	}{
		{"manifest tag", "GET", "/v2/int/echo/manifests/" + long, nil, 404, "MANIFEST_UNKNOWN"},
		{"manifest tag push", "PUT", "/v2/int/echo/manifests/" + long, nil, 400, "MANIFEST_INVALID"},
		{"manifest tag delete", "DELETE", "/v2/int/echo/manifests/" + long, nil, 404, "MANIFEST_UNKNOWN"},
		{"manifest digest", "GET", "/v2/int/echo/manifests/" + sha, nil, 400, "DIGEST_INVALID"},
		{"manifest If-Match", "PUT", "/v2/int/echo/manifests/v2", []string{"If-Match: " + long}, 400, "DIGEST_INVALID"},
		{"blob digest", "GET", "/v2/int/echo/blobs/" + sha, nil, 400, "DIGEST_INVALID"},
		{"blob algorithm", "DELETE", "/v2/int/echo/blobs/" + long + ":0", nil, 400, "UNSUPPORTED"},
		{"blob Range", "GET", "/v2/int/echo/blobs/" + valid, []string{"Range: bytes=" + long}, 416, "SIZE_INVALID"},
		{"blob Range unit", "GET", "/v2/int/echo/blobs/" + valid, []string{"Range: " + long}, 416, "SIZE_INVALID"},
		{"upload id", "PATCH", "/v2/int/echo/blobs/uploads/" + long, nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"upload id status", "GET", "/v2/int/echo/blobs/uploads/" + long, nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"upload id cancel", "DELETE", "/v2/int/echo/blobs/uploads/" + long, nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"upload id finish", "PUT", "/v2/int/echo/blobs/uploads/" + long + "?digest=" + valid, nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"upload digest", "PUT", upload + "?digest=" + sha, nil, 400, "DIGEST_INVALID"},
		{"upload Content-Range", "PATCH", upload, []string{"Content-Range: " + long}, 400, "BLOB_UPLOAD_INVALID"},
		{"upload Content-Range zeros", "PATCH", upload, []string{"Content-Range: " + strings.Repeat("0", 500<<10) + "-9"}, 400, "SIZE_INVALID"},
		{"monolithic digest", "POST", "/v2/int/echo/blobs/uploads/?digest=" + sha, nil, 400, "DIGEST_INVALID"},
		{"mount digest", "POST", "/v2/int/echo/blobs/uploads/?from=other&mount=" + sha, nil, 400, "DIGEST_INVALID"},
		{"mount from", "POST", "/v2/int/echo/blobs/uploads/?mount=" + valid + "&from=" + long, nil, 400, "NAME_INVALID"},
		{"tags n", "GET", "/v2/int/echo/tags/list?n=" + digits, nil, 400, "UNSUPPORTED"},
		{"tags last", "GET", "/v2/int/echo/tags/list?last=" + long, nil, 400, "UNSUPPORTED"},
		{"catalog n", "GET", "/v2/_catalog?n=" + long, nil, 400, "UNSUPPORTED"},
		{"catalog last", "GET", "/v2/_catalog?last=" + long, nil, 400, "UNSUPPORTED"},
		{"manifest list last", "GET", "/v2/int/echo/manifests/_list?last=" + long, nil, 400, "UNSUPPORTED"},
		{"manifest list untagged", "GET", "/v2/int/echo/manifests/_list?untagged=" + long, nil, 400, "UNSUPPORTED"},
		{"referrers digest", "GET", "/v2/int/echo/referrers/" + sha, nil, 400, "DIGEST_INVALID"},
		{"referrers artifactType", "GET", "/v2/int/echo/referrers/" + manifest + "?artifactType=%40" + long, nil, 400, "UNSUPPORTED"},
		{"untag", "DELETE", "/v2/int/echo/tags/" + long, nil, 404, "MANIFEST_UNKNOWN"},
		{"restore tag", "PUT", "/v2/int/echo/tags/" + long, nil, 400, "MANIFEST_INVALID"},
		{"restore If-Match", "PUT", "/v2/int/echo/tags/v1", []string{"If-Match: " + long}, 400, "DIGEST_INVALID"},
		{"history tag", "GET", "/v2/int/echo/tags/" + long + "/history", nil, 404, "MANIFEST_UNKNOWN"},
		{"history last", "GET", "/v2/int/echo/tags/v1/history?last=" + digits, nil, 400, "UNSUPPORTED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := []byte("x")
			if tt.name == "upload Content-Range zeros" {
				body = []byte("short") // Content-Length 5 against a range of 10
			}
			resp := r.do(tt.method, tt.path, body, tt.header...)
			resp.expect(t, tt.status, tt.code)
			var e struct {
				Errors []struct{ Message string } `json:"errors"`
			}
			if len(resp.body) > 1<<10 || json.Unmarshal(resp.body, &e) != nil || !strings.Contains(e.Errors[0].Message, "(cut, ") {
				t.Errorf("%d bytes of body, starting %.300s", len(resp.body), resp.body)
			}
		})
	}
}
