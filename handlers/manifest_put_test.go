package handlers_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/manifest"
)

// imageOf returns an OCI image manifest of config and layers, each given
// as digest and size.
func imageOf(config digest.Digest, configSize int, layers ...any) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, `{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[`,
		mtManifest, config, configSize)
	for i := 0; i < len(layers); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, layers[i], layers[i+1])
	}
	b.WriteString("]}")
	return []byte(b.String())
}

// Every referenced blob is checked, wherever it falls in digest order
// among the others: the database matches its rows to the blobs in that
// order.
func TestManifestPutChecksEveryBlob(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	contents := [][]byte{[]byte("config"), []byte("layer one"), []byte("layer two"), []byte("layer three")}
	var ds []digest.Digest
	for _, c := range contents {
		ds = append(ds, r.pushBlob("repo", c))
	}
	other := r.pushBlob("other", []byte("only in other"))
	missing := digest.FromString("never pushed")
	size := func(i int) int { return len(contents[i]) }

	// Repeated layers are one reference.
	r.do("PUT", "/v2/repo/manifests/ok", imageOf(ds[0], size(0), ds[1], size(1), ds[2], size(2), ds[3], size(3), ds[1], size(1)),
		"Content-Type: "+mtManifest).expect(t, 201, "")

	byDigest := slices.Clone(ds[1:])
	slices.Sort(byDigest)
	for pos := range len(byDigest) + 1 {
		for _, bad := range []struct {
			what   string
			dgst   digest.Digest
			size   int
			code   string
			detail bool
		}{
			{"never pushed", missing, 12, "MANIFEST_BLOB_UNKNOWN", true},
			{"of another repository", other, len("only in other"), "MANIFEST_BLOB_UNKNOWN", true},
			{"of the wrong size", byDigest[0], 999, "MANIFEST_INVALID", false},
		} {
			t.Run(fmt.Sprintf("%s at %d", bad.what, pos), func(t *testing.T) {
				var layers []any
				for i, d := range byDigest {
					if i == pos {
						layers = append(layers, bad.dgst, bad.size)
					}
					if bad.size == 999 && d == bad.dgst {
						continue
					}
					layers = append(layers, d, size(slices.Index(ds, d)))
				}
				if pos == len(byDigest) {
					layers = append(layers, bad.dgst, bad.size)
				}
				resp := r.do("PUT", "/v2/repo/manifests/bad", imageOf(ds[0], size(0), layers...), "Content-Type: "+mtManifest)
				resp.expect(t, 400, bad.code)
				if !strings.Contains(string(resp.body), bad.dgst.String()) {
					t.Errorf("the error does not name %s: %s", bad.dgst, resp.body)
				}
			})
		}
	}
}

// hiddenLength hides a body's length, so the client sends it chunked,
// without Content-Length.
type hiddenLength struct{ io.Reader }

// A manifest sent without Content-Length is read whole, across the chunks
// it is read in, and refused once it passes the limit.
func TestManifestPutWithoutContentLength(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	img := r.image("repo", "chunked")
	var m map[string]any
	json.Unmarshal(img, &m)
	padded := func(n int) []byte {
		m["annotations"] = map[string]string{"pad": strings.Repeat("x", n)}
		b, _ := json.Marshal(m)
		return b
	}
	put := func(body []byte) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("PUT", r.srv.URL+"/v2/repo/manifests/"+digest.FromBytes(body).String(), hiddenLength{bytes.NewReader(body)})
		req.Header.Set("Content-Type", mtManifest)
		resp, err := r.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if req.ContentLength != -1 && req.ContentLength != 0 {
			t.Fatalf("the request had a Content-Length: %d", req.ContentLength)
		}
		return resp
	}
	largest := padded(manifest.MaxSize - len(padded(0)))
	if len(largest) != manifest.MaxSize {
		t.Fatalf("the largest body has %d bytes", len(largest))
	}
	for _, body := range [][]byte{img, padded(16 << 10), padded(3 << 20), largest} {
		if resp := put(body); resp.StatusCode != 201 {
			t.Fatalf("PUT of %d bytes without Content-Length: %s", len(body), resp.Status)
		}
		got := r.do("GET", "/v2/repo/manifests/"+digest.FromBytes(body).String(), nil)
		got.expect(t, 200, "")
		if !bytes.Equal(got.body, body) {
			t.Fatalf("GET returned %d bytes, not the %d pushed", len(got.body), len(body))
		}
	}
	if resp := put(padded(manifest.MaxSize - len(padded(0)) + 1)); resp.StatusCode != 413 {
		t.Fatalf("PUT of MaxSize+1 bytes without Content-Length: %s, want 413", resp.Status)
	}
}
