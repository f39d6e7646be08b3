// Package manifest validates manifest bodies before Berth stores them and
// extracts what the database needs to know: the blobs and child manifests a
// manifest references, its subject and its artifact type.
//
// Berth stores and serves the bytes exactly as pushed; this package only
// reads them. It accepts the four formats clients push today (OCI image
// manifest and index, Docker schema 2 manifest and manifest list), with the
// OCI 1.1 artifact fields, and refuses Docker schema 1.
package manifest

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-registry/berth/digests"
)

// MaxSize is the largest manifest body Berth accepts: 4 MiB, the limit the
// OCI distribution spec says registries should accept at least, and what
// the reference registry enforces.
const MaxSize = 4 << 20

// Media types of the formats Berth accepts.
const (
	MediaTypeOCIManifest        = ocispec.MediaTypeImageManifest
	MediaTypeOCIIndex           = ocispec.MediaTypeImageIndex
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"

	mediaTypeDockerSchema1       = "application/vnd.docker.distribution.manifest.v1+json"
	mediaTypeDockerSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws"
)

// ErrInvalid wraps every reason a manifest is refused.
var ErrInvalid = errors.New("invalid manifest")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Manifest is what Berth records about a valid manifest. Its descriptors
// carry the fields Berth reads (mediaType, digest, size, urls, data,
// artifactType), not their annotations or platform, which Berth checks but
// does not record.
type Manifest struct {
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

// wire is the union of the fields of every accepted format.
//
// A 4 MiB manifest can hold 27,000 layers, so the descriptors are decoded
// into a lean type (see descriptor), the two lists are allocated once at
// their final size (see listHint), and schema 1's fsLayers is only noted,
// not copied.
type wire struct {
	SchemaVersion *int              `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        *descriptor       `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Manifests     []descriptor      `json:"manifests"`
	Subject       *descriptor       `json:"subject"`
	Annotations   map[string]string `json:"annotations"`
	FSLayers      nonNull           `json:"fsLayers"` // schema 1 only
}

// descriptor is ocispec.Descriptor as Berth decodes it: the fields Berth
// reads, and the two it does not (annotations and platform) checked by
// types that accept exactly the JSON ocispec's types accept, without
// keeping anything. So a body is accepted or refused exactly as when it
// was decoded into ocispec.Descriptor, at a fraction of the allocations.
type descriptor struct {
	MediaType    string         `json:"mediaType"`
	Digest       digest.Digest  `json:"digest"`
	Size         int64          `json:"size"`
	URLs         []string       `json:"urls"`
	Annotations  stringMapShape `json:"annotations"`
	Data         []byte         `json:"data"`
	Platform     *platformShape `json:"platform"`
	ArtifactType string         `json:"artifactType"`
}

// oci returns the fields Berth records, as the OCI type.
func (d *descriptor) oci() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, URLs: d.URLs,
		Data: d.Data, ArtifactType: d.ArtifactType}
}

// Parse validates payload, pushed with the given Content-Type header, and
// returns what it references. Errors wrap ErrInvalid and say what is wrong.
func Parse(contentType string, payload []byte) (*Manifest, error) {
	ct := contentType
	// A malformed parameter (say "; charset") does not hide the type.
	if mt, _, err := mime.ParseMediaType(contentType); err == nil || errors.Is(err, mime.ErrInvalidMediaParameter) {
		ct = mt
	}
	if isSchema1(ct) {
		return nil, schema1Error()
	}
	var w wire
	if layers, manifests := listHint(payload); layers > 0 || manifests > 0 {
		w.Layers = make([]descriptor, 0, max(layers, 1))
		w.Manifests = make([]descriptor, 0, max(manifests, 1))
	}
	if err := json.Unmarshal(payload, &w); err != nil {
		return nil, invalid("body is not valid JSON: %v", err)
	}
	// encoding/json leaves a list it did not find as it was, and makes
	// every list it decodes nil (null), empty with no capacity ([]) or
	// non-empty: so an empty list with capacity is one the body does not
	// have, which must read as nil, as it did without the hint. (A hint
	// of 0 makes a list with no capacity that the body may not have: the
	// lists are made only when one hint is not 0, and then both have
	// capacity.)
	if len(w.Layers) == 0 && cap(w.Layers) > 0 {
		w.Layers = nil
	}
	if len(w.Manifests) == 0 && cap(w.Manifests) > 0 {
		w.Manifests = nil
	}
	// A literal null is no fsLayers field (see nonNull).
	if isSchema1(w.MediaType) || (w.SchemaVersion != nil && *w.SchemaVersion == 1) || bool(w.FSLayers) {
		return nil, schema1Error()
	}
	if w.SchemaVersion == nil || *w.SchemaVersion != 2 {
		return nil, invalid("schemaVersion must be 2")
	}
	mediaType, err := resolveMediaType(ct, &w)
	if err != nil {
		return nil, err
	}
	m := &Manifest{MediaType: mediaType, Annotations: w.Annotations}
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
	if err := checkText(&w); err != nil {
		return nil, err
	}
	if w.ArtifactType != "" && mediaType != MediaTypeOCIManifest && mediaType != MediaTypeOCIIndex {
		return nil, invalid("artifactType is only defined for OCI manifests and indexes")
	}
	if w.Subject != nil {
		if mediaType != MediaTypeOCIManifest && mediaType != MediaTypeOCIIndex {
			return nil, invalid("subject is only defined for OCI manifests and indexes")
		}
		if err := checkDescriptor("subject", -1, w.Subject); err != nil {
			return nil, err
		}
		subject := w.Subject.oci()
		m.Subject = &subject
	}
	return m, nil
}

// checkText refuses NUL characters in the strings Berth stores and indexes
// (media types, artifact type, annotations): JSON allows "\u0000", but
// PostgreSQL text and jsonb cannot hold it, and no real manifest has one.
func checkText(w *wire) error {
	bad := func(s string) bool { return strings.IndexByte(s, 0) >= 0 }
	badDesc := func(d *descriptor) bool { return d != nil && (bad(d.MediaType) || bad(d.ArtifactType)) }
	for _, list := range [][]descriptor{w.Layers, w.Manifests} {
		for i := range list {
			if badDesc(&list[i]) {
				return invalid("a media type contains a NUL character")
			}
		}
	}
	if badDesc(w.Config) || badDesc(w.Subject) {
		return invalid("a media type contains a NUL character")
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

func isSchema1(mediaType string) bool {
	return mediaType == mediaTypeDockerSchema1 || mediaType == mediaTypeDockerSchema1Signed
}

func schema1Error() error {
	return invalid("Docker schema 1 manifests are not supported (deprecated since 2017); push with a client that writes schema 2 or OCI manifests")
}

// resolveMediaType reconciles the Content-Type header with the body's
// mediaType field. OCI manifests may omit the field, so the header (or, for
// a generic header, the shape of the body) decides.
func resolveMediaType(ct string, w *wire) (string, error) {
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

func (m *Manifest) image(w *wire) error {
	if w.Manifests != nil {
		return invalid("an image manifest has no manifests field")
	}
	if w.Config == nil {
		return invalid("an image manifest needs a config descriptor")
	}
	if err := checkDescriptor("config", -1, w.Config); err != nil {
		return err
	}
	config := w.Config.oci()
	m.Config = &config
	m.Blobs = make([]ocispec.Descriptor, 1, 1+len(w.Layers))
	m.Blobs[0] = config
	for i := range w.Layers {
		l := &w.Layers[i]
		if err := checkDescriptor("layers", i, l); err != nil {
			return err
		}
		if len(l.URLs) == 0 {
			m.Blobs = append(m.Blobs, l.oci())
		}
	}
	m.ArtifactType = w.ArtifactType
	if m.ArtifactType == "" {
		m.ArtifactType = w.Config.MediaType
	}
	return nil
}

func (m *Manifest) index(w *wire) error {
	if w.Config != nil || w.Layers != nil {
		return invalid("an index has no config or layers; did you mean an image manifest?")
	}
	if w.Manifests == nil {
		return invalid("an index needs a manifests list")
	}
	m.Children = make([]ocispec.Descriptor, len(w.Manifests))
	for i := range w.Manifests {
		c := &w.Manifests[i]
		if err := checkDescriptor("manifests", i, c); err != nil {
			return err
		}
		m.Children[i] = c.oci()
	}
	m.ArtifactType = w.ArtifactType
	return nil
}

// checkDescriptor checks descriptor d, element i of list field (i < 0: not
// a list).
func checkDescriptor(field string, i int, d *descriptor) error {
	problem := descriptorProblem(d)
	if problem == "" {
		return nil
	}
	// Formatted only now: a manifest can have tens of thousands of
	// descriptors.
	if i >= 0 {
		field = fmt.Sprintf("%s[%d]", field, i)
	}
	return invalid("%s: %s", field, problem)
}

// descriptorProblem says what is wrong with d, or "".
func descriptorProblem(d *descriptor) string {
	if d.MediaType == "" {
		return "mediaType is required"
	}
	if _, err := digests.Parse(string(d.Digest)); err != nil {
		return err.Error()
	}
	if d.Size < 0 {
		return "size must not be negative"
	}
	if d.Data != nil {
		if int64(len(d.Data)) != d.Size {
			return fmt.Sprintf("embedded data holds %d bytes but size says %d", len(d.Data), d.Size)
		}
		if got := d.Digest.Algorithm().FromBytes(d.Data); got != d.Digest {
			return fmt.Sprintf("embedded data has digest %s, not %s", got, d.Digest)
		}
	}
	return ""
}

// Digest computes the digest of payload with algorithm alg, so that a
// manifest pushed by an sha512 reference is checked against an sha512.
func Digest(payload []byte, alg digest.Algorithm) digest.Digest {
	h := digests.New(alg)
	h.Write(payload)
	return digest.NewDigest(alg, h)
}
