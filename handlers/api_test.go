package handlers_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestRoutes is the table of every read route and its errors, against one
// repository holding an image, an index over it and an artifact referring
// to it.
func TestRoutes(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	img := r.image("lib/app", "one")
	imgDigest := r.pushManifest("lib/app", "v1", mtManifest, img)
	r.pushManifest("lib/app", "v2", mtManifest, img)
	idx := ociIndex(img)
	idxDigest := r.pushManifest("lib/app", "multi", mtIndex, idx)
	empty := r.pushBlob("lib/app", []byte("{}"))
	artifact := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"artifactType":"application/vnd.example.sbom",`+
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2},`+
		`"layers":[{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2}],`+
		`"subject":{"mediaType":%q,"digest":%q,"size":%d},"annotations":{"org.example":"yes"}}`,
		mtManifest, empty, empty, mtManifest, imgDigest, len(img)))
	artifactDigest := r.pushManifest("lib/app", artifactDigestRef(artifact), mtManifest, artifact)
	layer := []byte("layer of one")
	layerDigest := digest.FromBytes(layer)
	r.pushBlob("other", []byte("elsewhere"))
	sha384 := "sha384:" + strings.Repeat("a", 96)
	longName := strings.Repeat("a", 256)

	tests := []struct {
		name, method, path string
		header             []string
		status             int
		code               string
		wantHeader         map[string]string
		wantBody           []byte
	}{
		{name: "base", method: "GET", path: "/v2/", status: 200,
			wantHeader: map[string]string{"Docker-Distribution-API-Version": "registry/2.0"}, wantBody: []byte("{}")},
		{name: "base without slash", method: "GET", path: "/v2", status: 200},
		{name: "base head", method: "HEAD", path: "/v2/", status: 200},
		{name: "invalid name", method: "GET", path: "/v2/Lib/App/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "name too long", method: "GET", path: "/v2/" + longName + "/tags/list", status: 400, code: "NAME_INVALID"},
		{name: "unknown route", method: "GET", path: "/v2/lib/app/nothing", status: 404, code: "UNSUPPORTED"},
		{name: "wrong method", method: "POST", path: "/v2/lib/app/manifests/v1", status: 405, code: "UNSUPPORTED"},

		{name: "manifest by tag", method: "GET", path: "/v2/lib/app/manifests/v1", status: 200, wantBody: img,
			wantHeader: map[string]string{"Content-Type": mtManifest, "Docker-Content-Digest": imgDigest.String(),
				"Content-Length": fmt.Sprint(len(img))}},
		{name: "manifest head by tag", method: "HEAD", path: "/v2/lib/app/manifests/v1", status: 200,
			wantHeader: map[string]string{"Docker-Content-Digest": imgDigest.String(), "Content-Length": fmt.Sprint(len(img))}},
		{name: "manifest by digest", method: "GET", path: "/v2/lib/app/manifests/" + imgDigest.String(), status: 200, wantBody: img},
		{name: "index by tag", method: "GET", path: "/v2/lib/app/manifests/multi", status: 200, wantBody: idx,
			wantHeader: map[string]string{"Content-Type": mtIndex, "Docker-Content-Digest": idxDigest.String()}},
		{name: "manifest unknown tag", method: "GET", path: "/v2/lib/app/manifests/nope", status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "manifest unknown head", method: "HEAD", path: "/v2/lib/app/manifests/nope", status: 404},
		{name: "manifest invalid tag", method: "GET", path: "/v2/lib/app/manifests/.INVALID", status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "manifest malformed digest", method: "GET", path: "/v2/lib/app/manifests/sha256:totallywrong", status: 400, code: "DIGEST_INVALID"},
		{name: "manifest unsupported algorithm", method: "GET", path: "/v2/lib/app/manifests/" + sha384, status: 400, code: "UNSUPPORTED"},
		{name: "manifest unknown repository", method: "GET", path: "/v2/no/such/manifests/v1", status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "manifest of another repository", method: "GET", path: "/v2/other/manifests/" + imgDigest.String(), status: 404, code: "MANIFEST_UNKNOWN"},

		{name: "blob", method: "GET", path: "/v2/lib/app/blobs/" + layerDigest.String(), status: 200, wantBody: layer,
			wantHeader: map[string]string{"Docker-Content-Digest": layerDigest.String(), "Content-Length": fmt.Sprint(len(layer))}},
		{name: "blob head", method: "HEAD", path: "/v2/lib/app/blobs/" + layerDigest.String(), status: 200,
			wantHeader: map[string]string{"Content-Length": fmt.Sprint(len(layer)), "Docker-Content-Digest": layerDigest.String()}},
		{name: "blob range", method: "GET", path: "/v2/lib/app/blobs/" + layerDigest.String(), header: []string{"Range: bytes=6-7"},
			status: 206, wantBody: []byte("of"), wantHeader: map[string]string{"Content-Range": fmt.Sprintf("bytes 6-7/%d", len(layer))}},
		{name: "blob range beyond end", method: "GET", path: "/v2/lib/app/blobs/" + layerDigest.String(), header: []string{"Range: bytes=100-200"}, status: 416, code: "SIZE_INVALID"},
		{name: "blob unknown", method: "GET", path: "/v2/lib/app/blobs/" + digest.FromString("nope").String(), status: 404, code: "BLOB_UNKNOWN"},
		{name: "blob of another repository", method: "GET", path: "/v2/other/blobs/" + layerDigest.String(), status: 404, code: "BLOB_UNKNOWN"},
		{name: "blob malformed digest", method: "GET", path: "/v2/lib/app/blobs/sha256:xyz", status: 400, code: "DIGEST_INVALID"},
		{name: "blob unsupported algorithm", method: "HEAD", path: "/v2/lib/app/blobs/" + sha384, status: 400},

		{name: "tags", method: "GET", path: "/v2/lib/app/tags/list", status: 200,
			wantBody: []byte(`{"name":"lib/app","tags":["multi","v1","v2"]}`)},
		{name: "tags alias", method: "GET", path: "/v2/lib/app/tags/_list", status: 200,
			wantBody: []byte(`{"name":"lib/app","tags":["multi","v1","v2"]}`)},
		{name: "tags first page", method: "GET", path: "/v2/lib/app/tags/list?n=2", status: 200,
			wantBody:   []byte(`{"name":"lib/app","tags":["multi","v1"]}`),
			wantHeader: map[string]string{"Link": `</v2/lib/app/tags/list?last=v1&n=2>; rel="next"`}},
		{name: "tags last page", method: "GET", path: "/v2/lib/app/tags/_list?n=2&last=v1", status: 200,
			wantBody: []byte(`{"name":"lib/app","tags":["v2"]}`), wantHeader: map[string]string{"Link": ""}},
		{name: "tags n=0", method: "GET", path: "/v2/lib/app/tags/list?n=0", status: 200,
			wantBody: []byte(`{"name":"lib/app","tags":[]}`)},
		{name: "tags bad n", method: "GET", path: "/v2/lib/app/tags/list?n=-1", status: 400, code: "UNSUPPORTED"},
		{name: "tags unknown repository", method: "GET", path: "/v2/no/such/tags/list", status: 404, code: "NAME_UNKNOWN"},
		{name: "tags of repository without tags", method: "GET", path: "/v2/other/tags/list", status: 200,
			wantBody: []byte(`{"name":"other","tags":[]}`)},

		{name: "catalog", method: "GET", path: "/v2/_catalog", status: 200, wantBody: []byte(`{"repositories":["lib/app","other"]}`)},
		{name: "catalog page", method: "GET", path: "/v2/_catalog?n=1", status: 200, wantBody: []byte(`{"repositories":["lib/app"]}`),
			wantHeader: map[string]string{"Link": `</v2/_catalog?last=lib%2Fapp&n=1>; rel="next"`}},
		{name: "catalog after", method: "GET", path: "/v2/_catalog?n=1&last=lib/app", status: 200, wantBody: []byte(`{"repositories":["other"]}`)},

		{name: "referrers none", method: "GET", path: "/v2/lib/app/referrers/" + digest.FromString("x").String(), status: 200,
			wantBody:   []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`),
			wantHeader: map[string]string{"Content-Type": mtIndex}},
		{name: "referrers", method: "GET", path: "/v2/lib/app/referrers/" + imgDigest.String(), status: 200,
			wantBody: []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`+
				`{"mediaType":%q,"digest":%q,"size":%d,"annotations":{"org.example":"yes"},"artifactType":"application/vnd.example.sbom"}]}`,
				mtManifest, artifactDigest, len(artifact)))},
		{name: "referrers filtered out", method: "GET", path: "/v2/lib/app/referrers/" + imgDigest.String() + "?artifactType=application/other", status: 200,
			wantBody:   []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`),
			wantHeader: map[string]string{"OCI-Filters-Applied": "artifactType"}},
		{name: "referrers bad digest", method: "GET", path: "/v2/lib/app/referrers/sha256:nope", status: 400, code: "DIGEST_INVALID"},

		{name: "upload unknown", method: "GET", path: "/v2/lib/app/blobs/uploads/6f1c2a43-8a62-4c1b-9d3e-000000000000", status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
		{name: "upload malformed id", method: "PATCH", path: "/v2/lib/app/blobs/uploads/..%2F..%2Fetc", status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
		{name: "untag unknown", method: "DELETE", path: "/v2/lib/app/tags/nope", status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "delete unknown manifest", method: "DELETE", path: "/v2/lib/app/manifests/" + digest.FromString("x").String(), status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "delete unknown blob", method: "DELETE", path: "/v2/lib/app/blobs/" + digest.FromString("x").String(), status: 404, code: "BLOB_UNKNOWN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := r.do(tt.method, tt.path, nil, tt.header...)
			resp.expect(t, tt.status, tt.code)
			for k, v := range tt.wantHeader {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if tt.wantBody != nil && !bytes.Equal(resp.body, tt.wantBody) {
				t.Errorf("body\n got %s\nwant %s", resp.body, tt.wantBody)
			}
			if tt.method == "HEAD" && len(resp.body) != 0 {
				t.Errorf("HEAD response has a body of %d bytes", len(resp.body))
			}
			if resp.Header.Get("X-Request-Id") == "" {
				t.Error("no X-Request-Id header")
			}
		})
	}
}

func artifactDigestRef(b []byte) string { return digest.FromBytes(b).String() }

func TestMonolithicUpload(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	content := []byte("monolithic content")
	d := digest.FromBytes(content)

	resp := r.do("POST", "/v2/repo/blobs/uploads/?digest="+d.String(), content)
	resp.expect(t, 201, "")
	if got := resp.Header.Get("Location"); got != "/v2/repo/blobs/"+d.String() {
		t.Errorf("Location %q", got)
	}
	if got := r.do("GET", "/v2/repo/blobs/"+d.String(), nil); !bytes.Equal(got.body, content) {
		t.Fatalf("GET returned %q", got.body)
	}

	wrong := digest.FromString("something else")
	r.do("POST", "/v2/repo/blobs/uploads/?digest="+wrong.String(), content).expect(t, 400, "DIGEST_INVALID")
	r.do("HEAD", "/v2/repo/blobs/"+wrong.String(), nil).expect(t, 404, "")
	r.do("POST", "/v2/repo/blobs/uploads/?digest=sha256:short", content).expect(t, 400, "DIGEST_INVALID")

	sha512 := digest.SHA512.FromBytes(content)
	r.do("POST", "/v2/repo/blobs/uploads/?digest="+sha512.String(), content).expect(t, 201, "")
	if got := r.do("GET", "/v2/repo/blobs/"+sha512.String(), nil); !bytes.Equal(got.body, content) {
		t.Fatalf("GET by sha512 returned %q", got.body)
	}
}

func TestChunkedUpload(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	content := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	d := digest.FromBytes(content)

	start := r.do("POST", "/v2/repo/blobs/uploads/", nil)
	start.expect(t, 202, "")
	loc := start.Header.Get("Location")
	if !strings.HasPrefix(loc, "/v2/repo/blobs/uploads/") || start.Header.Get("Docker-Upload-UUID") == "" {
		t.Fatalf("Location %q, Docker-Upload-UUID %q", loc, start.Header.Get("Docker-Upload-UUID"))
	}
	if got := start.Header.Get("Range"); got != "0-0" {
		t.Errorf("Range of an empty session %q", got)
	}

	first := r.do("PATCH", loc, content[:10], "Content-Range: 0-9")
	first.expect(t, 202, "")
	if got := first.Header.Get("Range"); got != "0-9" {
		t.Errorf("Range after the first chunk %q", got)
	}
	// Out of order, and a retry of the same chunk: 416 with where to resume.
	for _, rng := range []string{"20-29", "0-9"} {
		resp := r.do("PATCH", loc, content[:10], "Content-Range: "+rng)
		resp.expect(t, 416, "BLOB_UPLOAD_INVALID")
		if got := resp.Header.Get("Range"); got != "0-9" {
			t.Errorf("416 for %s: Range %q, want 0-9", rng, got)
		}
	}
	r.do("PATCH", loc, content[10:12], "Content-Range: 10-19").expect(t, 400, "SIZE_INVALID")
	r.do("PATCH", loc, content[10:20], "Content-Range: garbage").expect(t, 400, "BLOB_UPLOAD_INVALID")

	status := r.do("GET", loc, nil)
	status.expect(t, 204, "")
	if got := status.Header.Get("Range"); got != "0-9" {
		t.Errorf("status Range %q", got)
	}
	// A streamed chunk without Content-Range is appended at the end.
	r.do("PATCH", loc, content[10:30], nil...).expect(t, 202, "")
	r.do("PUT", loc, content[30:], "Content-Type: application/octet-stream").expect(t, 400, "DIGEST_INVALID")
	done := r.do("PUT", loc+"?digest="+d.String(), content[30:])
	done.expect(t, 201, "")
	if got := done.Header.Get("Docker-Content-Digest"); got != d.String() {
		t.Errorf("Docker-Content-Digest %q", got)
	}
	if got := r.do("GET", "/v2/repo/blobs/"+d.String(), nil); !bytes.Equal(got.body, content) {
		t.Fatalf("GET returned %q", got.body)
	}
	r.do("GET", loc, nil).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
	r.do("PATCH", loc, []byte("late"), nil...).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
}

func TestUploadFailures(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	content := []byte("some bytes to upload")

	t.Run("wrong digest cancels the session", func(t *testing.T) {
		loc := r.do("POST", "/v2/repo/blobs/uploads/", nil).Header.Get("Location")
		r.do("PATCH", loc, content, nil...).expect(t, 202, "")
		r.do("PUT", loc+"?digest="+digest.FromString("other").String(), nil).expect(t, 400, "DIGEST_INVALID")
		r.do("GET", loc, nil).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
	})
	t.Run("sha512 over chunks", func(t *testing.T) {
		loc := r.do("POST", "/v2/repo/blobs/uploads/", nil).Header.Get("Location")
		r.do("PATCH", loc, content[:5], nil...).expect(t, 202, "")
		d := digest.SHA512.FromBytes(content)
		r.do("PUT", loc+"?digest="+d.String(), content[5:]).expect(t, 201, "")
		if got := r.do("GET", "/v2/repo/blobs/"+d.String(), nil); !bytes.Equal(got.body, content) {
			t.Fatalf("GET returned %q", got.body)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		loc := r.do("POST", "/v2/repo/blobs/uploads/", nil).Header.Get("Location")
		r.do("PATCH", loc, content, nil...).expect(t, 202, "")
		r.do("DELETE", loc, nil).expect(t, 204, "")
		r.do("GET", loc, nil).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
		r.do("DELETE", loc, nil).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
	})
	t.Run("session belongs to its repository", func(t *testing.T) {
		loc := r.do("POST", "/v2/repo/blobs/uploads/", nil).Header.Get("Location")
		other := strings.Replace(loc, "/v2/repo/", "/v2/elsewhere/", 1)
		r.do("PATCH", other, content, nil...).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
		r.do("PUT", other+"?digest="+digest.FromBytes(content).String(), content).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
	})
	t.Run("empty blob", func(t *testing.T) {
		loc := r.do("POST", "/v2/repo/blobs/uploads/", nil).Header.Get("Location")
		d := digest.FromBytes(nil)
		r.do("PUT", loc+"?digest="+d.String(), nil).expect(t, 201, "")
		resp := r.do("HEAD", "/v2/repo/blobs/"+d.String(), nil)
		resp.expect(t, 200, "")
		if resp.Header.Get("Content-Length") != "0" {
			t.Errorf("Content-Length %q", resp.Header.Get("Content-Length"))
		}
	})
	t.Run("digest missing on PUT", func(t *testing.T) {
		loc := r.do("POST", "/v2/repo/blobs/uploads/", nil).Header.Get("Location")
		r.do("PUT", loc, nil).expect(t, 400, "DIGEST_INVALID")
	})
}

func TestMount(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	d := r.pushBlob("source", []byte("shared layer"))

	resp := r.do("POST", "/v2/target/blobs/uploads/?mount="+d.String()+"&from=source", nil)
	resp.expect(t, 201, "")
	if got := resp.Header.Get("Location"); got != "/v2/target/blobs/"+d.String() {
		t.Errorf("Location %q", got)
	}
	r.do("HEAD", "/v2/target/blobs/"+d.String(), nil).expect(t, 200, "")

	// Not in the source, or no source named: fall back to an upload session.
	missing := digest.FromString("absent")
	r.do("POST", "/v2/target/blobs/uploads/?mount="+missing.String()+"&from=source", nil).expect(t, 202, "")
	r.do("POST", "/v2/third/blobs/uploads/?mount="+d.String(), nil).expect(t, 202, "")
	r.do("HEAD", "/v2/third/blobs/"+d.String(), nil).expect(t, 404, "")
	r.do("POST", "/v2/target/blobs/uploads/?mount="+d.String()+"&from=Bad_Name", nil).expect(t, 400, "NAME_INVALID")
	r.do("POST", "/v2/target/blobs/uploads/?mount=sha256:bad&from=source", nil).expect(t, 400, "DIGEST_INVALID")
}

func TestManifestPush(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	img := r.image("repo", "push")
	d := digest.FromBytes(img)

	t.Run("by tag", func(t *testing.T) {
		resp := r.do("PUT", "/v2/repo/manifests/latest", img, "Content-Type: "+mtManifest)
		resp.expect(t, 201, "")
		if resp.Header.Get("Location") != "/v2/repo/manifests/"+d.String() || resp.Header.Get("Docker-Content-Digest") != d.String() {
			t.Errorf("Location %q Docker-Content-Digest %q", resp.Header.Get("Location"), resp.Header.Get("Docker-Content-Digest"))
		}
	})
	t.Run("by digest", func(t *testing.T) {
		r.do("PUT", "/v2/repo/manifests/"+d.String(), img, "Content-Type: "+mtManifest).expect(t, 201, "")
	})
	t.Run("digest mismatch", func(t *testing.T) {
		r.do("PUT", "/v2/repo/manifests/"+digest.FromString("x").String(), img, "Content-Type: "+mtManifest).expect(t, 400, "DIGEST_INVALID")
	})
	t.Run("by sha512", func(t *testing.T) {
		d512 := digest.SHA512.FromBytes(img)
		r.do("PUT", "/v2/repo/manifests/"+d512.String(), img, "Content-Type: "+mtManifest).expect(t, 201, "")
		r.do("GET", "/v2/repo/manifests/"+d512.String(), nil).expect(t, 200, "")
	})
	t.Run("invalid tag", func(t *testing.T) {
		r.do("PUT", "/v2/repo/manifests/-bad", img, "Content-Type: "+mtManifest).expect(t, 400, "MANIFEST_INVALID")
	})
	t.Run("missing blob", func(t *testing.T) {
		body := ociManifest(digest.FromString("no config"), 9, digest.FromString("no layer"), 8)
		resp := r.do("PUT", "/v2/repo/manifests/broken", body, "Content-Type: "+mtManifest)
		resp.expect(t, 400, "MANIFEST_BLOB_UNKNOWN")
		if !strings.Contains(string(resp.body), digest.FromString("no config").String()) &&
			!strings.Contains(string(resp.body), digest.FromString("no layer").String()) {
			t.Errorf("error does not name the missing blob: %s", resp.body)
		}
	})
	t.Run("blob of another repository", func(t *testing.T) {
		r.do("PUT", "/v2/elsewhere/manifests/v1", img, "Content-Type: "+mtManifest).expect(t, 400, "MANIFEST_BLOB_UNKNOWN")
	})
	t.Run("wrong declared size", func(t *testing.T) {
		var m map[string]any
		json.Unmarshal(img, &m)
		m["layers"].([]any)[0].(map[string]any)["size"] = 12345
		body, _ := json.Marshal(m)
		r.do("PUT", "/v2/repo/manifests/badsize", body, "Content-Type: "+mtManifest).expect(t, 400, "MANIFEST_INVALID")
	})
	t.Run("schema1", func(t *testing.T) {
		resp := r.do("PUT", "/v2/repo/manifests/old", []byte(`{"schemaVersion":1,"name":"repo","tag":"old","fsLayers":[]}`),
			"Content-Type: application/vnd.docker.distribution.manifest.v1+prettyjws")
		resp.expect(t, 400, "MANIFEST_INVALID")
		if !strings.Contains(string(resp.body), "schema 1") {
			t.Errorf("message does not say schema 1 is unsupported: %s", resp.body)
		}
	})
	t.Run("not JSON", func(t *testing.T) {
		r.do("PUT", "/v2/repo/manifests/junk", []byte("blablabla"), "Content-Type: "+mtManifest).expect(t, 400, "MANIFEST_INVALID")
	})
	t.Run("too large", func(t *testing.T) {
		big := bytes.Repeat([]byte(" "), 4<<20+1)
		r.do("PUT", "/v2/repo/manifests/big", big, "Content-Type: "+mtManifest).expect(t, 413, "MANIFEST_INVALID")
	})
	t.Run("index needs its children", func(t *testing.T) {
		orphan := r.image("repo", "orphan child") // blobs pushed, manifest not
		r.do("PUT", "/v2/repo/manifests/idx", ociIndex(img, orphan), "Content-Type: "+mtIndex).expect(t, 400, "MANIFEST_BLOB_UNKNOWN")
		r.pushManifest("repo", digest.FromBytes(orphan).String(), mtManifest, orphan)
		r.do("PUT", "/v2/repo/manifests/idx", ociIndex(img, orphan), "Content-Type: "+mtIndex).expect(t, 201, "")
	})
	t.Run("subject", func(t *testing.T) {
		cfg := r.pushBlob("repo", []byte("{}"))
		body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"artifactType":"application/x.sig",`+
			`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2},"layers":[],`+
			`"subject":{"mediaType":%q,"digest":%q,"size":%d}}`, mtManifest, cfg, mtManifest, d, len(img)))
		resp := r.do("PUT", "/v2/repo/manifests/"+digest.FromBytes(body).String(), body, "Content-Type: "+mtManifest)
		resp.expect(t, 201, "")
		if got := resp.Header.Get("OCI-Subject"); got != d.String() {
			t.Errorf("OCI-Subject %q", got)
		}
	})
}

func TestDeletes(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	img := r.image("repo", "delete")
	d := r.pushManifest("repo", "v1", mtManifest, img)
	r.pushManifest("repo", "v2", mtManifest, img)
	r.pushManifest("repo", "keep", mtManifest, img)

	// Untag by either route: the manifest stays, by digest.
	r.do("DELETE", "/v2/repo/manifests/v2", nil).expect(t, 202, "")
	r.do("DELETE", "/v2/repo/tags/keep", nil).expect(t, 202, "")
	r.do("GET", "/v2/repo/manifests/v2", nil).expect(t, 404, "MANIFEST_UNKNOWN")
	r.do("GET", "/v2/repo/manifests/"+d.String(), nil).expect(t, 200, "")
	if got := string(r.do("GET", "/v2/repo/tags/list", nil).body); got != `{"name":"repo","tags":["v1"]}` {
		t.Errorf("tags after untag: %s", got)
	}

	// A manifest listed by an index cannot be deleted before the index.
	idx := r.pushManifest("repo", "idx", mtIndex, ociIndex(img))
	resp := r.do("DELETE", "/v2/repo/manifests/"+d.String(), nil)
	resp.expect(t, 409, "DENIED")
	if !strings.Contains(string(resp.body), idx.String()) {
		t.Errorf("409 does not name the index: %s", resp.body)
	}
	r.do("DELETE", "/v2/repo/manifests/"+idx.String(), nil).expect(t, 202, "")

	// Delete by digest removes its tags too; pushing again works at once.
	r.do("DELETE", "/v2/repo/manifests/"+d.String(), nil).expect(t, 202, "")
	r.do("GET", "/v2/repo/manifests/"+d.String(), nil).expect(t, 404, "MANIFEST_UNKNOWN")
	r.do("GET", "/v2/repo/manifests/v1", nil).expect(t, 404, "MANIFEST_UNKNOWN")
	r.do("DELETE", "/v2/repo/manifests/"+d.String(), nil).expect(t, 404, "MANIFEST_UNKNOWN")
	if got := string(r.do("GET", "/v2/repo/tags/list", nil).body); got != `{"name":"repo","tags":[]}` {
		t.Errorf("tags after delete: %s", got)
	}
	r.pushManifest("repo", "v1", mtManifest, img)
	if got := r.do("GET", "/v2/repo/manifests/v1", nil); got.StatusCode != 200 || !bytes.Equal(got.body, img) {
		t.Fatalf("re-pushed manifest: %d %s", got.StatusCode, got.body)
	}

	// Blob delete unlinks it from the repository only.
	layer := digest.FromBytes([]byte("layer of delete"))
	r.pushBlob("other", []byte("layer of delete"))
	r.do("DELETE", "/v2/repo/blobs/"+layer.String(), nil).expect(t, 202, "")
	r.do("GET", "/v2/repo/blobs/"+layer.String(), nil).expect(t, 404, "BLOB_UNKNOWN")
	r.do("DELETE", "/v2/repo/blobs/"+layer.String(), nil).expect(t, 404, "BLOB_UNKNOWN")
	r.do("GET", "/v2/other/blobs/"+layer.String(), nil).expect(t, 200, "")
}

func TestBadRequestsNeverFail500(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	paths := []string{
		"/v2/repo/manifests/", "/v2/repo/blobs/", "/v2/repo/tags/", "/v2/repo/referrers/",
		"/v2//manifests/x", "/v2/a//b/tags/list", "/v2/repo/blobs/uploads/x/y",
		"/v2/repo/manifests/sha256:" + strings.Repeat("z", 64), "/v2/repo/blobs/:",
		"/v2/_catalog?n=99999999999999999999", "/v2/repo/tags/list?last=" + strings.Repeat("x", 5000),
		"/v2/repo/tags/list?last=%00", "/v2/repo/tags/list?last=%ff", "/v2/_catalog?last=%00",
		"/v2/repo/manifests/_list?last=%ff", "/v2/repo/referrers/sha256:" + strings.Repeat("a", 64) + "?artifactType=%00",
		"/v2/repo/tags/t/history?last=%00",
	}
	for _, p := range paths {
		for _, m := range []string{"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"} {
			resp := r.do(m, p, []byte("x"))
			if resp.StatusCode >= 500 {
				t.Errorf("%s %s: %d %s", m, p, resp.StatusCode, resp.body)
			}
		}
	}
	// Manifests with NUL characters where PostgreSQL stores text.
	cfg := r.pushBlob("repo", []byte("{}"))
	for name, body := range map[string]string{
		"annotation":    `{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/x","digest":%q,"size":2},"layers":[],"annotations":{"k":"a\u0000b"}}`,
		"artifact type": `{"schemaVersion":2,"mediaType":%q,"artifactType":"a\u0000","config":{"mediaType":"application/x","digest":%q,"size":2},"layers":[]}`,
		"config type":   `{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"app\u0000","digest":%q,"size":2},"layers":[]}`,
	} {
		resp := r.do("PUT", "/v2/repo/manifests/nul", []byte(fmt.Sprintf(body, mtManifest, cfg)), "Content-Type: "+mtManifest)
		if resp.StatusCode != 400 || resp.errorCode() != "MANIFEST_INVALID" {
			t.Errorf("manifest with a NUL in its %s: %d %s", name, resp.StatusCode, resp.body)
		}
	}
}
