package manifestgen

import (
	"encoding/json"
	"testing"
)

// Every body is valid JSON, fills its size to within a descriptor, and
// SetSeq changes it without changing its length.
func TestBodies(t *testing.T) {
	const size = 1 << 20
	blobs := FakeBlobs(100)
	for name, body := range map[string][]byte{
		"image":     Image(blobs[0], blobs[1:], size),
		"index":     Index(blobs, size),
		"annotated": Annotated(blobs[0], blobs[1], size),
	} {
		if !json.Valid(body) {
			t.Fatalf("%s: not valid JSON: %.300s", name, body)
		}
		if len(body) > size || len(body) < size-400 {
			t.Errorf("%s: %d bytes, want just under %d", name, len(body), size)
		}
		before := string(body)
		SetSeq(body, 42)
		if len(body) != len(before) || string(body) == before || !json.Valid(body) {
			t.Errorf("%s: SetSeq did not make a distinct valid body of the same length", name)
		}
	}
}
