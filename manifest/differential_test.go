package manifest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-registry/berth/internal/manifestgen"
)

// sameAsReference fails t unless Parse and the reference parser (see
// reference_test.go) agree on body: both refuse it, for the same reason
// (the wording of encoding/json's own errors aside), or both accept it and
// find the same references.
func sameAsReference(t *testing.T, contentType string, body []byte) {
	t.Helper()
	got, err := Parse(contentType, body)
	want, wantErr := refParse(contentType, body)
	const notJSON = "invalid manifest: body is not valid JSON"
	switch {
	case (err == nil) != (wantErr == nil):
		t.Fatalf("Parse(%q, %.300s):\n got error %v\nwant error %v", contentType, body, err, wantErr)
	case err != nil:
		if strings.HasPrefix(wantErr.Error(), notJSON) != strings.HasPrefix(err.Error(), notJSON) ||
			!strings.HasPrefix(wantErr.Error(), notJSON) && err.Error() != wantErr.Error() {
			t.Fatalf("Parse(%q, %.300s):\n got error %v\nwant error %v", contentType, body, err, wantErr)
		}
		return
	}
	kept := func(d ocispec.Descriptor) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, URLs: d.URLs, Data: d.Data, ArtifactType: d.ArtifactType}
	}
	keptAll := func(ds []ocispec.Descriptor) []ocispec.Descriptor {
		if ds == nil {
			return nil
		}
		out := make([]ocispec.Descriptor, len(ds))
		for i, d := range ds {
			out[i] = kept(d)
		}
		return out
	}
	keptPtr := func(d *ocispec.Descriptor) *ocispec.Descriptor {
		if d == nil {
			return nil
		}
		k := kept(*d)
		return &k
	}
	gotM := refManifest{MediaType: got.MediaType, ArtifactType: got.ArtifactType, Config: got.Config,
		Blobs: got.Blobs, Children: got.Children, Subject: got.Subject, Annotations: got.Annotations}
	wantM := refManifest{MediaType: want.MediaType, ArtifactType: want.ArtifactType, Config: keptPtr(want.Config),
		Blobs: keptAll(want.Blobs), Children: keptAll(want.Children), Subject: keptPtr(want.Subject), Annotations: want.Annotations}
	if !reflect.DeepEqual(gotM, wantM) {
		t.Fatalf("Parse(%q, %.300s):\n got %+v\nwant %+v", contentType, body, gotM, wantM)
	}
}

const (
	dgA = "sha256:c5c345d44fa1d442c4be8c3549ea421d896d78359060504174b795611ee72d15"
	dgB = "sha256:dad498a994fffe62e4e44f8bb1bb0013f8ec0422a470e9a364d96cab1ea90fef"
)

// trickyBodies are bodies at the edges of what encoding/json accepts for
// the fields Parse now decodes differently: the descriptors' annotations,
// platform, urls and data, schema 1's fsLayers, the lists it sizes in
// advance, keys in other cases and repeated keys.
func trickyBodies() []string {
	desc := func(extra string) string {
		return `{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + dgB + `","size":3` + extra + `}`
	}
	image := func(layers string) string {
		return `{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + dgA + `","size":2},"layers":[` + layers + `]}`
	}
	index := func(manifests string) string {
		return `{"schemaVersion":2,"manifests":[` + manifests + `]}`
	}
	var out []string
	for _, v := range []string{
		`5`, `"x"`, `[]`, `true`, `null`, `{}`, `{"a":1}`, `{"a":null}`, `{"a":"b","c":{"d":1}}`, `{"a":["x"]}`,
		`{ "a" : "b" , "c" : null }`, `{"a\"b":"c\\"}`, "{\n\t\"a\": \"b\"\r\n}", `{"a":"b",  "c":false}`,
	} {
		out = append(out, image(desc(`,"annotations":`+v)), index(desc(`,"annotations":`+v)))
	}
	for _, v := range []string{
		`"x"`, `5`, `[]`, `null`, `{}`, `{"architecture":5}`, `{"ARCHITECTURE":5}`, `{"os.features":"x"}`,
		`{"os.features":["a",null]}`, `{"os.features":[1]}`, `{"os.features":null}`, `{"OS.Features":[{}]}`,
		`{"unknown":{"x":[1,2]}}`, `{"variant":true}`, `{"oſ":1}`, `{"oſ":"linux"}`, `{"os":"linux","os":5}`,
		`{"architecture":"amd64","os":"linux","os.version":"10.0","os.features":["win32k"],"variant":"v8"}`,
		`{"os.features":[ "a" , "b" ]}`, `{"os.features":[[]]}`, `{"os.version":{}}`,
	} {
		out = append(out, index(desc(`,"platform":`+v)), image(desc(`,"platform":`+v)))
	}
	for _, v := range []string{`[1]`, `"x"`, `[null]`, `[]`, `null`, `["https://example.com/l"]`, `{}`} {
		out = append(out, image(desc(`,"urls":`+v)))
	}
	for _, v := range []string{`"e30="`, `"e30"`, `"!!"`, `null`, `5`, `[]`} {
		out = append(out, image(desc(`,"data":`+v)))
	}
	for _, v := range []string{`1.5`, `1e3`, `-1`, `9223372036854775808`, `"3"`, `null`} {
		out = append(out, image(`{"mediaType":"a","digest":"`+dgB+`","size":`+v+`}`))
	}
	for _, v := range []string{`null`, `5`, `{}`, `[]`, `"x"`} {
		out = append(out, image(`{"mediaType":`+v+`,"digest":"`+dgB+`"}`), image(`{"mediaType":"a","digest":`+v+`}`),
			image(desc(`,"artifactType":`+v)))
	}
	out = append(out,
		// Lists: absent, null, empty, of the wrong type, with null or
		// scalar elements.
		`{"schemaVersion":2,"config":`+desc("")+`}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":null}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":{}}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":"x"}`,
		image(`null`), image(`1`), image(`[]`), image(desc("")+`,null`),
		index(``), `{"schemaVersion":2,"manifests":null}`, `{"schemaVersion":2,"manifests":{}}`,
		`{"schemaVersion":2,"manifests":[],"layers":[]}`, `{"schemaVersion":2,"manifests":[`+desc("")+`],"layers":[]}`,
		`{"schemaVersion":2,"manifests":[`+desc("")+`],"layers":null}`,
		`{"schemaVersion":2,"manifests":[`+desc("")+`],"config":null}`,
		// Keys in other cases, and spelled with escapes.
		`{"SchemaVersion":2,"Config":`+desc("")+`,"LAYERS":[`+desc("")+`]}`,
		`{"schemaVersion":2,"MANIFESTS":[`+desc("")+`,`+desc("")+`]}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"l\u0061yers":[`+desc("")+`]}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layerſ":[`+desc("")+`]}`,
		// Repeated keys: encoding/json decodes a repeated list over the
		// first one's elements, and keeps the last fsLayers.
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":[`+desc("")+`,`+desc("")+`],"layers":[{"digest":"`+dgA+`"}]}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":[{"digest":"`+dgA+`"}],"layers":[`+desc("")+`,`+desc("")+`]}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":[`+desc(`,"urls":["u"]`)+`,`+desc("")+`],"layers":[],"layers":[{},{}]}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":[`+desc("")+`],"LAYERS":[{},{}]}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":[],"fsLayers":[1],"fsLayers":null}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":[],"fsLayers":null,"fsLayers":{}}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":[],"fsLayers":5}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":[],"annotations":{"a":"1"},"annotations":{"b":"2"}}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":[],"annotations":{"a":null}}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":[],"annotations":{}}`,
		`{"schemaVersion":2,"config":`+desc("")+`,"layers":[],"annotations":{"a\u0000":"x"}}`,
		image(desc(`,"annotations":{"a\u0000":"x"}`)),
		image(`{"mediaType":"a\u0000","digest":"`+dgB+`"}`),
		// Not an object, broken, or cut short.
		`null`, `[]`, `"x"`, `[{"layers":[`+desc("")+`]}]`, `{"layers":[`, `{"layers":[{"a":"]`, `{`, ``,
		`{"schemaVersion":2,"layers":[`+desc("")+`],"config":`+desc(""),
	)
	return out
}

var contentTypes = []string{"", "application/json", ctTestOCIManifest, ctTestOCIIndex, MediaTypeDockerManifest, MediaTypeDockerManifestList}

const (
	ctTestOCIManifest = MediaTypeOCIManifest
	ctTestOCIIndex    = MediaTypeOCIIndex
)

func TestParseMatchesReference(t *testing.T) {
	t.Parallel()
	var bodies [][]byte
	for _, b := range trickyBodies() {
		bodies = append(bodies, []byte(b))
	}
	golden, _ := filepath.Glob("../testdata/manifests/*.json")
	for _, f := range golden {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, b)
	}
	blobs := manifestgen.FakeBlobs(100)
	bodies = append(bodies, manifestgen.Image(blobs[0], blobs[1:], 64<<10), manifestgen.Index(blobs, 64<<10),
		manifestgen.Annotated(blobs[0], blobs[1], 64<<10))
	for _, b := range bodies {
		for _, ct := range contentTypes {
			sameAsReference(t, ct, b)
		}
	}
}

// FuzzParseMatchesReference looks for a body the two parsers disagree on:
//
//	go test ./manifest -run '^$' -fuzz FuzzParseMatchesReference -fuzztime 60s
func FuzzParseMatchesReference(f *testing.F) {
	for _, b := range trickyBodies() {
		f.Add(uint8(0), []byte(b))
	}
	golden, _ := filepath.Glob("../testdata/manifests/*.json")
	for _, g := range golden {
		b, _ := os.ReadFile(g)
		f.Add(uint8(2), b)
	}
	f.Fuzz(func(t *testing.T, ct uint8, body []byte) {
		sameAsReference(t, contentTypes[int(ct)%len(contentTypes)], body)
	})
}

// listHint counts what encoding/json will find, for bodies written the
// usual way, and never more than the body can hold.
func TestListHint(t *testing.T) {
	t.Parallel()
	blobs := manifestgen.FakeBlobs(10)
	image := manifestgen.Image(blobs[0], blobs[1:], 8<<10)
	d := `{"mediaType":"x","digest":"sha256:` + strings.Repeat("a", 64) + `"}`
	tests := []struct {
		body              string
		layers, manifests int
	}{
		{string(image), strings.Count(string(image), manifestgen.MediaTypeLayer), 0},
		{string(manifestgen.Index(blobs, 8<<10)), 0, strings.Count(string(manifestgen.Index(blobs, 8<<10)), `"size"`)},
		{`{"layers":[],"manifests":[ ]}`, 0, 0},
		{`{"LAYERS":[` + d + `,` + d + `,` + d + `], "Manifests" : [` + d + `]}`, 3, 1},
		{`{"layers":[` + d + `,` + d + `,` + d + `],"layers":[` + d + `]}`, 3, 0}, // room for the longest
		{`{"config":{"layers":[` + d + `,` + d + `]},"x":"\"layers\":[` + d + `]"}`, 0, 0},
		{`{"layers":[` + d + `,{"a":[1,2,{"b":"],` + strings.Repeat(" ", 120) + `"}]}]}`, 2, 0},
		{`{"layers":[{}` + strings.Repeat(`,{}`, 199) + `]}`, 6, 0}, // at most len/minDescriptorJSON
	}
	for _, tt := range tests {
		l, m := listHint([]byte(tt.body))
		if l != tt.layers || m != tt.manifests {
			t.Errorf("listHint(%.80s) = %d, %d; want %d, %d", tt.body, l, m, tt.layers, tt.manifests)
		}
	}
	// Cut anywhere, a body never makes it fail.
	for i := range image {
		listHint(image[:i])
	}
}
