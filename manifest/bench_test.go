package manifest_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-registry/berth/internal/manifestgen"
	"github.com/berth-registry/berth/manifest"
)

// BenchmarkParse measures Parse on the worst cases of the size limit:
//
//	go test ./manifest -run '^$' -bench Parse -benchmem
//
// B/op against the body size (the bytes/op column's input) is what
// matters: the handler admits bodies by a budget of bytes in flight, so
// what Parse allocates per body byte sets how far that budget can go.
func BenchmarkParse(b *testing.B) {
	blobs := manifestgen.FakeBlobs(30_000)
	golden, err := os.ReadFile(filepath.Join(goldenDir, "oci-image-manifest.json"))
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name, contentType string
		body              []byte
	}{
		{"typical", ctOCIManifest, golden},
		{"image-4MiB-layers", ctOCIManifest, manifestgen.Image(blobs[0], blobs[1:], manifest.MaxSize)},
		{"index-4MiB", ctOCIIndex, manifestgen.Index(blobs, manifest.MaxSize)},
		{"annotations-4MiB", ctOCIManifest, manifestgen.Annotated(blobs[0], blobs[1], manifest.MaxSize)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if _, err := manifest.Parse(c.contentType, c.body); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(c.body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := manifest.Parse(c.contentType, c.body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
