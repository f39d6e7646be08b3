package manifest

// The parser as it was before it decoded into lean types (commit ec034a2,
// manifest.go), kept verbatim but for its names, as the reference that
// TestParseMatchesReference and FuzzParseMatchesReference hold Parse to:
// every body must be accepted or refused by both, for the same reason, and
// what an accepted one references must be the same.

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-registry/berth/digests"
)

// refManifest is what Berth records about a valid manifest.
type refManifest struct {
	MediaType string
	// ArtifactType is the manifest's artifactType or, for an image manifest
	// without one, its config media type: what the referrers API reports.
	ArtifactType string
	Config       *ocispec.Descriptor
	// Blobs are the config and layers that must be present in the
	// repository. Layers with external URLs (foreign, non-distributable)
	// are left out: they are never pushed.
	Blobs []ocispec.Descriptor
	// Children are the manifests an index or manifest list lists.
	Children    []ocispec.Descriptor
	Subject     *ocispec.Descriptor
	Annotations map[string]string
}

// refWire is the union of the fields of every accepted format.
type refWire struct {
	SchemaVersion *int                 `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	ArtifactType  string               `json:"artifactType"`
	Config        *ocispec.Descriptor  `json:"config"`
	Layers        []ocispec.Descriptor `json:"layers"`
	Manifests     []ocispec.Descriptor `json:"manifests"`
	Subject       *ocispec.Descriptor  `json:"subject"`
	Annotations   map[string]string    `json:"annotations"`
	FSLayers      json.RawMessage      `json:"fsLayers"` // schema 1 only
}

// refParse validates payload, pushed with the given Content-Type header, and
// returns what it references. Errors wrap ErrInvalid and say what is wrong.
func refParse(contentType string, payload []byte) (*refManifest, error) {
	ct := contentType
	// A malformed parameter (say "; charset") does not hide the type.
	if mt, _, err := mime.ParseMediaType(contentType); err == nil || errors.Is(err, mime.ErrInvalidMediaParameter) {
		ct = mt
	}
	if isSchema1(ct) {
		return nil, schema1Error()
	}
	var w refWire
	if err := json.Unmarshal(payload, &w); err != nil {
		return nil, invalid("body is not valid JSON: %v", err)
	}
	// json.RawMessage keeps a literal null, so "fsLayers": null is not
	// taken for the schema 1 field.
	hasFSLayers := w.FSLayers != nil && string(w.FSLayers) != "null"
	if isSchema1(w.MediaType) || (w.SchemaVersion != nil && *w.SchemaVersion == 1) || hasFSLayers {
		return nil, schema1Error()
	}
	if w.SchemaVersion == nil || *w.SchemaVersion != 2 {
		return nil, invalid("schemaVersion must be 2")
	}
	mediaType, err := refResolveMediaType(ct, &w)
	if err != nil {
		return nil, err
	}
	m := &refManifest{MediaType: mediaType, Annotations: w.Annotations}
	switch mediaType {
	case MediaTypeOCIManifest, MediaTypeDockerManifest:
		err = m.image(&w)
	case MediaTypeOCIIndex, MediaTypeDockerManifestList:
		err = m.index(&w)
	default:
		err = invalid("media type %q is not a manifest type Berth accepts (OCI image manifest or index, Docker manifest or manifest list)", mediaType)
	}
	if err != nil {
		return nil, err
	}
	if err := refCheckText(&w); err != nil {
		return nil, err
	}
	if w.ArtifactType != "" && mediaType != MediaTypeOCIManifest && mediaType != MediaTypeOCIIndex {
		return nil, invalid("artifactType is only defined for OCI manifests and indexes")
	}
	if w.Subject != nil {
		if mediaType != MediaTypeOCIManifest && mediaType != MediaTypeOCIIndex {
			return nil, invalid("subject is only defined for OCI manifests and indexes")
		}
		if err := refCheckDescriptor("subject", *w.Subject); err != nil {
			return nil, err
		}
		m.Subject = w.Subject
	}
	return m, nil
}

// refCheckText refuses NUL characters in the strings Berth stores and indexes
// (media types, artifact type, annotations): JSON allows "\u0000", but
// PostgreSQL text and jsonb cannot hold it, and no real manifest has one.
func refCheckText(w *refWire) error {
	bad := func(s string) bool { return strings.IndexByte(s, 0) >= 0 }
	descriptors := append(append([]ocispec.Descriptor{}, w.Layers...), w.Manifests...)
	for _, d := range []*ocispec.Descriptor{w.Config, w.Subject} {
		if d != nil {
			descriptors = append(descriptors, *d)
		}
	}
	for _, d := range descriptors {
		if bad(d.MediaType) || bad(d.ArtifactType) {
			return invalid("a media type contains a NUL character")
		}
	}
	if bad(w.MediaType) || bad(w.ArtifactType) {
		return invalid("mediaType or artifactType contains a NUL character")
	}
	for k, v := range w.Annotations {
		if bad(k) || bad(v) {
			return invalid("annotation %q contains a NUL character", strings.ReplaceAll(k, "\x00", `\0`))
		}
	}
	return nil
}

// refResolveMediaType reconciles the Content-Type header with the body's
// mediaType field. OCI manifests may omit the field, so the header (or, for
// a generic header, the shape of the body) decides.
func refResolveMediaType(ct string, w *refWire) (string, error) {
	generic := ct == "" || ct == "application/json" || ct == "application/octet-stream"
	switch {
	case w.MediaType != "" && !generic && ct != w.MediaType:
		return "", invalid("Content-Type %q does not match the manifest's mediaType %q", ct, w.MediaType)
	case w.MediaType != "":
		return w.MediaType, nil
	case !generic:
		if ct == MediaTypeDockerManifest || ct == MediaTypeDockerManifestList {
			return "", invalid("a Docker %s must carry its mediaType field", ct)
		}
		return ct, nil
	case w.Manifests != nil:
		return MediaTypeOCIIndex, nil
	case w.Config != nil:
		return MediaTypeOCIManifest, nil
	}
	return "", invalid("cannot tell the manifest type: send a Content-Type header or a mediaType field")
}

func (m *refManifest) image(w *refWire) error {
	if w.Manifests != nil {
		return invalid("an image manifest has no manifests field")
	}
	if w.Config == nil {
		return invalid("an image manifest needs a config descriptor")
	}
	if err := refCheckDescriptor("config", *w.Config); err != nil {
		return err
	}
	m.Config = w.Config
	m.Blobs = append(m.Blobs, *w.Config)
	for i, l := range w.Layers {
		if err := refCheckDescriptor(fmt.Sprintf("layers[%d]", i), l); err != nil {
			return err
		}
		if len(l.URLs) == 0 {
			m.Blobs = append(m.Blobs, l)
		}
	}
	m.ArtifactType = w.ArtifactType
	if m.ArtifactType == "" {
		m.ArtifactType = w.Config.MediaType
	}
	return nil
}

func (m *refManifest) index(w *refWire) error {
	if w.Config != nil || w.Layers != nil {
		return invalid("an index has no config or layers; did you mean an image manifest?")
	}
	if w.Manifests == nil {
		return invalid("an index needs a manifests list")
	}
	for i, c := range w.Manifests {
		if err := refCheckDescriptor(fmt.Sprintf("manifests[%d]", i), c); err != nil {
			return err
		}
	}
	m.Children = w.Manifests
	m.ArtifactType = w.ArtifactType
	return nil
}

func refCheckDescriptor(field string, d ocispec.Descriptor) error {
	if d.MediaType == "" {
		return invalid("%s: mediaType is required", field)
	}
	if _, err := digests.Parse(string(d.Digest)); err != nil {
		return invalid("%s: %v", field, err)
	}
	if d.Size < 0 {
		return invalid("%s: size must not be negative", field)
	}
	if d.Data != nil {
		if int64(len(d.Data)) != d.Size {
			return invalid("%s: embedded data holds %d bytes but size says %d", field, len(d.Data), d.Size)
		}
		if got := d.Digest.Algorithm().FromBytes(d.Data); got != d.Digest {
			return invalid("%s: embedded data has digest %s, not %s", field, got, d.Digest)
		}
	}
	return nil
}
