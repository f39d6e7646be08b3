package manifest

import (
	"encoding/json"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// View is a stored manifest as a person reads it: what Parse leaves out
// because Berth does not record it (the platforms of an index's manifests,
// the annotations of each descriptor, layers with external URLs) is kept.
// It is for display only: the manifest was validated by Parse when it was
// pushed, and View trusts that.
type View struct {
	ArtifactType string
	Config       *ocispec.Descriptor
	Layers       []ocispec.Descriptor
	// Manifests are an index's entries, each with its platform if given.
	Manifests   []ocispec.Descriptor
	Subject     *ocispec.Descriptor
	Annotations map[string]string
}

// ParseView decodes a stored manifest for display.
func ParseView(payload []byte) (View, error) {
	var w struct {
		ArtifactType string               `json:"artifactType"`
		Config       *ocispec.Descriptor  `json:"config"`
		Layers       []ocispec.Descriptor `json:"layers"`
		Manifests    []ocispec.Descriptor `json:"manifests"`
		Subject      *ocispec.Descriptor  `json:"subject"`
		Annotations  map[string]string    `json:"annotations"`
	}
	if err := json.Unmarshal(payload, &w); err != nil {
		return View{}, fmt.Errorf("decode manifest: %w", err)
	}
	return View(w), nil
}

// MaxConfigView is the most of an image config ParseConfig is given: the
// configs of real images are a few KiB (a long history makes tens); one
// larger is shown without its details rather than read into memory.
const MaxConfigView = 1 << 20

// ParseConfig decodes an image config blob for display: platform, creation
// time, labels.
func ParseConfig(b []byte) (ocispec.Image, error) {
	var img ocispec.Image
	if err := json.Unmarshal(b, &img); err != nil {
		return img, fmt.Errorf("decode image config: %w", err)
	}
	return img, nil
}
