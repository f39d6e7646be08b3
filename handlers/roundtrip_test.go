package handlers_test

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestClientRoundTrip pushes and pulls through go-containerregistry's
// remote package, the client library crane, ko and many CI tools use: an
// image, a multi-platform index, a cross-repository copy (mount) and an
// artifact found through the referrers API.
func TestClientRoundTrip(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	host := strings.TrimPrefix(r.srv.URL, "http://")
	ref := func(s string) name.Reference {
		t.Helper()
		n, err := name.ParseReference(host+"/"+s, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	img, err := random.Image(300_000, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref("roundtrip/app:v1"), img); err != nil {
		t.Fatalf("push image: %v", err)
	}
	pulled, err := remote.Image(ref("roundtrip/app:v1"))
	if err != nil {
		t.Fatalf("pull image: %v", err)
	}
	sameImage(t, img, pulled)

	// Copy to another repository: the client mounts the layers.
	if err := remote.Write(ref("roundtrip/copy:v1"), pulled); err != nil {
		t.Fatalf("copy image: %v", err)
	}
	copied, err := remote.Image(ref("roundtrip/copy:v1"))
	if err != nil {
		t.Fatal(err)
	}
	sameImage(t, img, copied)

	idx, err := random.Index(1000, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref("roundtrip/multi:latest"), idx); err != nil {
		t.Fatalf("push index: %v", err)
	}
	pulledIdx, err := remote.Index(ref("roundtrip/multi:latest"))
	if err != nil {
		t.Fatalf("pull index: %v", err)
	}
	wantDigest, _ := idx.Digest()
	if got, _ := pulledIdx.Digest(); got != wantDigest {
		t.Fatalf("index digest %s, want %s", got, wantDigest)
	}
	im, _ := pulledIdx.IndexManifest()
	for _, child := range im.Manifests {
		childImg, err := pulledIdx.Image(child.Digest)
		if err != nil {
			t.Fatalf("pull child %s: %v", child.Digest, err)
		}
		want, _ := idx.Image(child.Digest)
		sameImage(t, want, childImg)
	}

	// An artifact that refers to the image is found by the referrers API.
	subjectDigest, _ := img.Digest()
	subjectDesc, err := remote.Head(ref("roundtrip/app@" + subjectDigest.String()))
	if err != nil {
		t.Fatal(err)
	}
	sbom := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	sbom = mutate.ConfigMediaType(sbom, "application/vnd.example.sbom.v1")
	sbom = mutate.Subject(sbom, *subjectDesc).(v1.Image)
	sbomDigest, _ := sbom.Digest()
	if err := remote.Write(ref("roundtrip/app@"+sbomDigest.String()), sbom); err != nil {
		t.Fatalf("push artifact: %v", err)
	}
	refs, err := remote.Referrers(ref("roundtrip/app@" + subjectDigest.String()).(name.Digest))
	if err != nil {
		t.Fatalf("referrers: %v", err)
	}
	rm, _ := refs.IndexManifest()
	if len(rm.Manifests) != 1 || rm.Manifests[0].Digest != sbomDigest || rm.Manifests[0].ArtifactType != "application/vnd.example.sbom.v1" {
		t.Fatalf("referrers = %+v, want the artifact %s", rm.Manifests, sbomDigest)
	}

	tags, err := remote.List(ref("roundtrip/app:v1").Context())
	if err != nil || len(tags) != 1 || tags[0] != "v1" {
		t.Fatalf("list tags = %v, %v", tags, err)
	}
	repos, err := remote.Catalog(t.Context(), ref("roundtrip/app:v1").Context().Registry)
	if err != nil || len(repos) != 3 {
		t.Fatalf("catalog = %v, %v", repos, err)
	}
}

// sameImage compares manifests and every layer's bytes.
func sameImage(t *testing.T, want, got v1.Image) {
	t.Helper()
	wd, _ := want.Digest()
	gd, err := got.Digest()
	if err != nil || gd != wd {
		t.Fatalf("image digest %s (%v), want %s", gd, err, wd)
	}
	wl, _ := want.Layers()
	gl, err := got.Layers()
	if err != nil || len(gl) != len(wl) {
		t.Fatalf("layers %d (%v), want %d", len(gl), err, len(wl))
	}
	for i := range wl {
		wb := readAll(t, wl[i])
		gb := readAll(t, gl[i])
		if !bytes.Equal(wb, gb) {
			t.Fatalf("layer %d differs", i)
		}
	}
}

func readAll(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
