package manifest_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-registry/berth/manifest"
)

// goldenDir holds manifests written the way real clients write them (docker
// push, buildx, oras, cosign, a Windows base image), so the tests parse what
// Berth will actually be sent rather than bodies shaped to fit the code.
const goldenDir = "../testdata/manifests"

const (
	ctOCIManifest  = manifest.MediaTypeOCIManifest
	ctOCIIndex     = manifest.MediaTypeOCIIndex
	ctDocker       = manifest.MediaTypeDockerManifest
	ctDockerList   = manifest.MediaTypeDockerManifestList
	ctSchema1      = "application/vnd.docker.distribution.manifest.v1+json"
	ctSchema1JWS   = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	mtEmpty        = "application/vnd.oci.empty.v1+json"
	digestEmptyObj = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a" // of "{}"
)

// want is what a case expects of Parse. errContains is empty for a manifest
// that must be accepted; otherwise the error must wrap ErrInvalid and
// contain it, because it is the part of the message the pusher needs.
type want struct {
	errContains  string
	mediaType    string
	artifactType string
	blobs        []string // in order: config first
	children     []string
	subject      string
}

type parseCase struct {
	name        string
	contentType string
	body        string // inline body, when file is empty
	file        string // golden body under goldenDir
	want        want
}

func TestParseGolden(t *testing.T) {
	t.Parallel()
	tests := []parseCase{
		{
			name:        "docker schema 2 manifest",
			file:        "docker-schema2.json",
			contentType: ctDocker,
			want: want{
				mediaType:    ctDocker,
				artifactType: "application/vnd.docker.container.image.v1+json",
				blobs: []string{
					"sha256:991e5b930fd9f8bfd9904b057b8860e4a9c3ba6d63c93f5fb3770bf0ab592f77",
					"sha256:2804bad6fe94a55f18b2b37e300919a5fd517b95aa81e95db574c0ba069a3740",
					"sha256:8a1cee436cbac1489a1883c9d886fcfc46f302c55ed4106ae31729e4f4eb9041",
					"sha256:10dacdccfe877dc064d57442e6fa7a4e3085dc94e11a29819c2290fc3d788724",
				},
			},
		},
		{
			name:        "docker manifest list with two platforms",
			file:        "docker-manifest-list.json",
			contentType: ctDockerList,
			want: want{
				mediaType: ctDockerList,
				children: []string{
					"sha256:ca0df2c95aa144c1d0ff2ff3c8f967fdc1de9ef0c4120b3726416701b519d619",
					"sha256:29c1b289e7522195b362e44f54e05470b69ad20540ab60a18a05e5bf6951f13d",
				},
			},
		},
		{
			name:        "OCI image manifest",
			file:        "oci-image-manifest.json",
			contentType: ctOCIManifest,
			want: want{
				mediaType:    ctOCIManifest,
				artifactType: "application/vnd.oci.image.config.v1+json",
				blobs: []string{
					"sha256:c5c345d44fa1d442c4be8c3549ea421d896d78359060504174b795611ee72d15",
					"sha256:dad498a994fffe62e4e44f8bb1bb0013f8ec0422a470e9a364d96cab1ea90fef",
					"sha256:0ad3e4564be1fda7f1f91eeb48c26acdf5f8f98bba07844617487924b6312b96",
				},
			},
		},
		{
			name:        "Content-Type with parameters",
			file:        "oci-image-manifest.json",
			contentType: ctOCIManifest + "; charset=utf-8",
			want: want{
				mediaType:    ctOCIManifest,
				artifactType: "application/vnd.oci.image.config.v1+json",
				blobs: []string{
					"sha256:c5c345d44fa1d442c4be8c3549ea421d896d78359060504174b795611ee72d15",
					"sha256:dad498a994fffe62e4e44f8bb1bb0013f8ec0422a470e9a364d96cab1ea90fef",
					"sha256:0ad3e4564be1fda7f1f91eeb48c26acdf5f8f98bba07844617487924b6312b96",
				},
			},
		},
		{
			name:        "OCI index with attestation",
			file:        "oci-index.json",
			contentType: ctOCIIndex,
			want: want{
				mediaType: ctOCIIndex,
				children: []string{
					"sha256:153812ae5fea0b73a011bf28bd7cea93644437c3fe3260b7b2d7e1e2f9f46bde",
					"sha256:2396a1256ac4b1c6849c931ddb8018bdd984bb2383be21bb819a33b95d8d603f",
					"sha256:ca0df2c95aa144c1d0ff2ff3c8f967fdc1de9ef0c4120b3726416701b519d619",
				},
			},
		},
		{
			// oras/cosign style: the type is in artifactType, the config is
			// the empty descriptor (with its bytes embedded), and the
			// subject makes it a referrer.
			name:        "OCI artifact manifest with empty config and subject",
			file:        "oci-artifact-manifest.json",
			contentType: ctOCIManifest,
			want: want{
				mediaType:    ctOCIManifest,
				artifactType: "application/spdx+json",
				blobs: []string{
					digestEmptyObj,
					"sha256:2fdceec5cd7cf785f9caedb75f09d901ed20eabb93dab14eac23ac579214372c",
				},
				subject: "sha256:9a110419482f794c50f20ff91b073133320cd38bbd5240ab864c6480844c9a4b",
			},
		},
		{
			name:        "OCI index with artifactType and subject",
			file:        "oci-index-artifact.json",
			contentType: ctOCIIndex,
			want: want{
				mediaType:    ctOCIIndex,
				artifactType: "application/vnd.example.signature.bundle.v1",
				children: []string{
					"sha256:2fdceec5cd7cf785f9caedb75f09d901ed20eabb93dab14eac23ac579214372c",
					"sha256:557ae2017297d4d9ef0270931c61ff658c418365aa8ef844b7d07ad3dcc93ac9",
				},
				subject: "sha256:94b671c9b59229df098199643f483e6ea86cfd9be0add96dd1fb0530ca6ef5cc",
			},
		},
		{
			// A Windows image: the base layers live on mcr.microsoft.com and
			// are never pushed, so only the config and the last layer are
			// required.
			name:        "foreign layers are not required blobs",
			file:        "docker-foreign-layer.json",
			contentType: ctDocker,
			want: want{
				mediaType:    ctDocker,
				artifactType: "application/vnd.docker.container.image.v1+json",
				blobs: []string{
					"sha256:9fe911f0e55c3ba088bee2eaa3246a4835226fbe11bd2340fdc49f7787edd8c4",
					"sha256:12c243f2ea0b6bc32902e349799d84f41c84822a39f2ce447bb1831eb4102ab7",
				},
			},
		},
		{
			name:        "schema 1 signed, by Content-Type",
			file:        "docker-schema1-signed.json",
			contentType: ctSchema1JWS,
			want:        want{errContains: "schema 1"},
		},
		{
			name:        "schema 1 signed, by body under a schema 2 Content-Type",
			file:        "docker-schema1-signed.json",
			contentType: ctDocker,
			want:        want{errContains: "schema 1"},
		},
		{
			name:        "schema 1 signed, by body under a generic Content-Type",
			file:        "docker-schema1-signed.json",
			contentType: "application/json",
			want:        want{errContains: "schema 1"},
		},
		{
			name:        "no mediaType field, type from Content-Type",
			file:        "oci-manifest-no-mediatype.json",
			contentType: ctOCIManifest,
			want: want{
				mediaType:    ctOCIManifest,
				artifactType: "application/vnd.oci.image.config.v1+json",
				blobs: []string{
					"sha256:4887b4e7f148f95897c2c5b2b0d1006996583ff0346f3a78c725dbdeb04a6187",
					"sha256:fc559f1402a1e41c29afe084b9684c8f125938328809a56553fee0ad2d9d41ea",
				},
			},
		},
		{
			name:        "no mediaType field, type from the shape of the body",
			file:        "oci-manifest-no-mediatype.json",
			contentType: "",
			want: want{
				mediaType:    ctOCIManifest,
				artifactType: "application/vnd.oci.image.config.v1+json",
				blobs: []string{
					"sha256:4887b4e7f148f95897c2c5b2b0d1006996583ff0346f3a78c725dbdeb04a6187",
					"sha256:fc559f1402a1e41c29afe084b9684c8f125938328809a56553fee0ad2d9d41ea",
				},
			},
		},
		{
			name:        "no mediaType field, pushed as an index",
			file:        "oci-manifest-no-mediatype.json",
			contentType: ctOCIIndex,
			want:        want{errContains: "an index has no config or layers"},
		},
		{
			name:        "image manifest with empty layers",
			file:        "oci-manifest-empty-layers.json",
			contentType: ctOCIManifest,
			want: want{
				mediaType:    ctOCIManifest,
				artifactType: "application/vnd.oci.image.config.v1+json",
				blobs:        []string{"sha256:f71854425943c68be20e578c8ec43d55eb99a421ee5aa16628ef32d8a2433db0"},
			},
		},
		{
			name:        "docker manifest pushed as OCI",
			file:        "docker-schema2.json",
			contentType: ctOCIManifest,
			want:        want{errContains: "does not match the manifest's mediaType"},
		},
		{
			name:        "docker manifest list pushed as a docker manifest",
			file:        "docker-manifest-list.json",
			contentType: ctDocker,
			want:        want{errContains: "does not match the manifest's mediaType"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkParse(t, tt)
		})
	}
}

// Descriptor digests used by the inline bodies.
const (
	dConfig = "sha256:c5c345d44fa1d442c4be8c3549ea421d896d78359060504174b795611ee72d15"
	dLayer  = "sha256:dad498a994fffe62e4e44f8bb1bb0013f8ec0422a470e9a364d96cab1ea90fef"
	dChild  = "sha256:153812ae5fea0b73a011bf28bd7cea93644437c3fe3260b7b2d7e1e2f9f46bde"
	dSubj   = "sha256:9a110419482f794c50f20ff91b073133320cd38bbd5240ab864c6480844c9a4b"
	dSha512 = "sha512:27c74670adb75075fad058d5ceaf7b20c4e7786c83bae8a32f626f9782af34c9a33c2046ef60fd2a7878d378e29fec851806bbd9a67878f3a9f1cda4830763fd" // of "{}"
)

// ociManifest is a valid OCI image manifest whose config and layers are
// given as JSON, for cases about a single descriptor or field.
func ociManifest(extra, config, layers string) string {
	return `{"schemaVersion":2,"mediaType":"` + ctOCIManifest + `",` + extra +
		`"config":` + config + `,"layers":[` + layers + `]}`
}

func desc(mediaType, dgst string, size int) string {
	return `{"mediaType":"` + mediaType + `","digest":"` + dgst + `","size":` + strconv.Itoa(size) + `}`
}

var (
	cfg   = desc("application/vnd.oci.image.config.v1+json", dConfig, 1472)
	layer = desc("application/vnd.oci.image.layer.v1.tar+gzip", dLayer, 3623807)
	child = desc(ctOCIManifest, dChild, 1013)
	subj  = desc(ctOCIManifest, dSubj, 1013)
)

func TestParseInline(t *testing.T) {
	t.Parallel()
	imageOK := want{mediaType: ctOCIManifest, artifactType: "application/vnd.oci.image.config.v1+json", blobs: []string{dConfig, dLayer}}
	tests := []parseCase{
		// What must be accepted.
		{
			name:        "generic Content-Type, body with manifests is an OCI index",
			contentType: "application/json",
			body:        `{"schemaVersion":2,"manifests":[` + child + `]}`,
			want:        want{mediaType: ctOCIIndex, children: []string{dChild}},
		},
		{
			name:        "empty Content-Type, body with manifests is an OCI index",
			contentType: "",
			body:        `{"schemaVersion":2,"manifests":[]}`,
			want:        want{mediaType: ctOCIIndex, children: []string{}},
		},
		{
			name:        "generic Content-Type, body with config is an OCI manifest",
			contentType: "application/json",
			body:        `{"schemaVersion":2,"config":` + cfg + `,"layers":[` + layer + `]}`,
			want:        imageOK,
		},
		{
			name:        "empty Content-Type, body with config is an OCI manifest",
			contentType: "",
			body:        `{"schemaVersion":2,"config":` + cfg + `,"layers":[` + layer + `]}`,
			want:        imageOK,
		},
		{
			name:        "generic Content-Type, body mediaType decides",
			contentType: "application/octet-stream",
			body:        ociManifest("", cfg, layer),
			want:        imageOK,
		},
		{
			name:        "Content-Type with parameters",
			contentType: ctOCIManifest + "; charset=utf-8",
			body:        ociManifest("", cfg, layer),
			want:        imageOK,
		},
		{
			name:        "sha512 digests are accepted",
			contentType: ctOCIManifest,
			body:        ociManifest("", desc(mtEmpty, dSha512, 2), ""),
			want:        want{mediaType: ctOCIManifest, artifactType: mtEmpty, blobs: []string{dSha512}},
		},
		{
			name:        "embedded data that matches, sha512",
			contentType: ctOCIManifest,
			body:        ociManifest(`"artifactType":"application/vnd.example+type",`, `{"mediaType":"`+mtEmpty+`","digest":"`+dSha512+`","size":2,"data":"e30="}`, ""),
			want:        want{mediaType: ctOCIManifest, artifactType: "application/vnd.example+type", blobs: []string{dSha512}},
		},
		{
			name:        "artifactType wins over config mediaType",
			contentType: ctOCIManifest,
			body:        ociManifest(`"artifactType":"application/vnd.example+type",`, cfg, layer),
			want:        want{mediaType: ctOCIManifest, artifactType: "application/vnd.example+type", blobs: []string{dConfig, dLayer}},
		},
		{
			// Only a schema 1 body has fsLayers; a null one is no field.
			name:        "fsLayers null is not schema 1",
			contentType: ctOCIManifest,
			body:        `{"schemaVersion":2,"fsLayers":null,"config":` + cfg + `,"layers":[` + layer + `]}`,
			want:        imageOK,
		},

		// What must be refused.
		{
			name:        "not JSON",
			contentType: ctOCIManifest,
			body:        `schemaVersion: 2`,
			want:        want{errContains: "not valid JSON"},
		},
		{
			name:        "truncated JSON",
			contentType: ctOCIManifest,
			body:        ociManifest("", cfg, layer)[:40],
			want:        want{errContains: "not valid JSON"},
		},
		{
			name:        "schemaVersion missing",
			contentType: ctOCIManifest,
			body:        `{"mediaType":"` + ctOCIManifest + `","config":` + cfg + `,"layers":[]}`,
			want:        want{errContains: "schemaVersion must be 2"},
		},
		{
			name:        "schemaVersion 3",
			contentType: ctOCIManifest,
			body:        `{"schemaVersion":3,"mediaType":"` + ctOCIManifest + `","config":` + cfg + `,"layers":[]}`,
			want:        want{errContains: "schemaVersion must be 2"},
		},
		{
			name:        "schema 1 by unsigned Content-Type",
			contentType: ctSchema1,
			body:        `{"schemaVersion":1,"name":"library/hello-world","tag":"latest","fsLayers":[]}`,
			want:        want{errContains: "schema 1"},
		},
		{
			name:        "schema 1 by body mediaType",
			contentType: "",
			body:        `{"schemaVersion":2,"mediaType":"` + ctSchema1 + `"}`,
			want:        want{errContains: "schema 1"},
		},
		{
			name:        "schema 1 by fsLayers",
			contentType: "application/json",
			body:        `{"name":"library/hello-world","fsLayers":[{"blobSum":"` + dLayer + `"}]}`,
			want:        want{errContains: "schema 1"},
		},
		{
			name:        "Content-Type and body mediaType disagree",
			contentType: ctOCIIndex,
			body:        ociManifest("", cfg, layer),
			want:        want{errContains: "does not match"},
		},
		{
			name:        "Docker Content-Type without mediaType in body",
			contentType: ctDocker,
			body:        `{"schemaVersion":2,"config":` + cfg + `,"layers":[` + layer + `]}`,
			want:        want{errContains: "must carry its mediaType"},
		},
		{
			name:        "Docker list Content-Type without mediaType in body",
			contentType: ctDockerList,
			body:        `{"schemaVersion":2,"manifests":[` + child + `]}`,
			want:        want{errContains: "must carry its mediaType"},
		},
		{
			name:        "generic Content-Type and nothing to tell the type by",
			contentType: "application/json",
			body:        `{"schemaVersion":2}`,
			want:        want{errContains: "cannot tell the manifest type"},
		},
		{
			name:        "unknown media type",
			contentType: "application/vnd.example.manifest+json",
			body:        `{"schemaVersion":2,"config":` + cfg + `}`,
			want:        want{errContains: "not a manifest type Berth accepts"},
		},
		{
			name:        "index with layers",
			contentType: ctOCIIndex,
			body:        `{"schemaVersion":2,"mediaType":"` + ctOCIIndex + `","manifests":[` + child + `],"layers":[` + layer + `]}`,
			want:        want{errContains: "an index has no config or layers"},
		},
		{
			name:        "index without manifests",
			contentType: ctOCIIndex,
			body:        `{"schemaVersion":2,"mediaType":"` + ctOCIIndex + `"}`,
			want:        want{errContains: "needs a manifests list"},
		},
		{
			name:        "image manifest with manifests",
			contentType: ctOCIManifest,
			body:        `{"schemaVersion":2,"mediaType":"` + ctOCIManifest + `","config":` + cfg + `,"manifests":[` + child + `]}`,
			want:        want{errContains: "no manifests field"},
		},
		{
			name:        "image manifest without config",
			contentType: ctOCIManifest,
			body:        `{"schemaVersion":2,"mediaType":"` + ctOCIManifest + `","layers":[` + layer + `]}`,
			want:        want{errContains: "needs a config descriptor"},
		},
		{
			name:        "descriptor without mediaType",
			contentType: ctOCIManifest,
			body:        ociManifest("", cfg, `{"digest":"`+dLayer+`","size":3623807}`),
			want:        want{errContains: "layers[0]: mediaType is required"},
		},
		{
			name:        "descriptor with malformed digest",
			contentType: ctOCIManifest,
			body:        ociManifest("", desc("application/vnd.oci.image.config.v1+json", "sha256:c5c345d44fa1", 1472), layer),
			want:        want{errContains: "config: malformed digest"},
		},
		{
			name:        "descriptor with upper-case digest",
			contentType: ctOCIManifest,
			body:        ociManifest("", cfg, desc("application/vnd.oci.image.layer.v1.tar+gzip", strings.ToUpper(dLayer), 1)),
			want:        want{errContains: "layers[0]:"},
		},
		{
			name:        "descriptor with sha384 digest",
			contentType: ctOCIManifest,
			body:        ociManifest("", cfg, desc("application/vnd.oci.image.layer.v1.tar+gzip", "sha384:"+strings.Repeat("ab", 48), 10)),
			want:        want{errContains: "layers[0]: unsupported digest algorithm"},
		},
		{
			name:        "negative size",
			contentType: ctOCIManifest,
			body:        ociManifest("", cfg, layer+","+desc("application/vnd.oci.image.layer.v1.tar+gzip", dLayer, -1)),
			want:        want{errContains: "layers[1]: size must not be negative"},
		},
		{
			name:        "embedded data whose digest does not match",
			contentType: ctOCIManifest,
			body:        ociManifest("", `{"mediaType":"`+mtEmpty+`","digest":"`+dConfig+`","size":2,"data":"e30="}`, ""),
			want:        want{errContains: "config: embedded data has digest " + digestEmptyObj},
		},
		{
			name:        "embedded data whose size does not match",
			contentType: ctOCIManifest,
			body:        ociManifest("", `{"mediaType":"`+mtEmpty+`","digest":"`+digestEmptyObj+`","size":3,"data":"e30="}`, ""),
			want:        want{errContains: "config: embedded data holds 2 bytes but size says 3"},
		},
		{
			name:        "embedded data in a child descriptor",
			contentType: ctOCIIndex,
			body:        `{"schemaVersion":2,"mediaType":"` + ctOCIIndex + `","manifests":[{"mediaType":"` + ctOCIManifest + `","digest":"` + dChild + `","size":2,"data":"e30="}]}`,
			want:        want{errContains: "manifests[0]: embedded data has digest"},
		},
		{
			name:        "artifactType on a Docker manifest",
			contentType: ctDocker,
			body:        `{"schemaVersion":2,"mediaType":"` + ctDocker + `","artifactType":"application/spdx+json","config":` + cfg + `,"layers":[]}`,
			want:        want{errContains: "artifactType is only defined for OCI"},
		},
		{
			name:        "artifactType on a Docker manifest list",
			contentType: ctDockerList,
			body:        `{"schemaVersion":2,"mediaType":"` + ctDockerList + `","artifactType":"application/spdx+json","manifests":[]}`,
			want:        want{errContains: "artifactType is only defined for OCI"},
		},
		{
			name:        "subject on a Docker manifest",
			contentType: ctDocker,
			body:        `{"schemaVersion":2,"mediaType":"` + ctDocker + `","config":` + cfg + `,"layers":[],"subject":` + subj + `}`,
			want:        want{errContains: "subject is only defined for OCI"},
		},
		{
			name:        "subject with malformed digest",
			contentType: ctOCIManifest,
			body:        ociManifest(`"subject":`+desc(ctOCIManifest, "sha256:nothex", 1013)+`,`, cfg, layer),
			want:        want{errContains: "subject: malformed digest"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkParse(t, tt)
		})
	}
}

func checkParse(t *testing.T, tt parseCase) {
	t.Helper()
	body := []byte(tt.body)
	if tt.file != "" {
		var err error
		if body, err = os.ReadFile(filepath.Join(goldenDir, tt.file)); err != nil {
			t.Fatal(err)
		}
	}
	m, err := manifest.Parse(tt.contentType, body)
	w := tt.want
	if w.errContains != "" {
		if !errors.Is(err, manifest.ErrInvalid) || !strings.Contains(err.Error(), w.errContains) {
			t.Fatalf("Parse(%q) error = %v, want ErrInvalid saying %q", tt.contentType, err, w.errContains)
		}
		if m != nil {
			t.Errorf("Parse returned %+v with its error", m)
		}
		return
	}
	if err != nil {
		t.Fatalf("Parse(%q) error = %v", tt.contentType, err)
	}
	if m.MediaType != w.mediaType {
		t.Errorf("MediaType = %q, want %q", m.MediaType, w.mediaType)
	}
	if m.ArtifactType != w.artifactType {
		t.Errorf("ArtifactType = %q, want %q", m.ArtifactType, w.artifactType)
	}
	if got := digestsOf(m.Blobs); !slices.Equal(got, w.blobs) {
		t.Errorf("Blobs = %q, want %q", got, w.blobs)
	}
	if len(w.blobs) > 0 && (m.Config == nil || string(m.Config.Digest) != w.blobs[0]) {
		t.Errorf("Config = %+v, want digest %s", m.Config, w.blobs[0])
	}
	if got := digestsOf(m.Children); !slices.Equal(got, w.children) {
		t.Errorf("Children = %q, want %q", got, w.children)
	}
	var subject string
	if m.Subject != nil {
		subject = string(m.Subject.Digest)
	}
	if subject != w.subject {
		t.Errorf("Subject = %q, want %q", subject, w.subject)
	}
}

// digestsOf returns nil for no descriptors, so that a want of nil matches a
// missing list and a want of []string{} matches an empty one.
func digestsOf(ds []ocispec.Descriptor) []string {
	if ds == nil {
		return nil
	}
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, string(d.Digest))
	}
	return out
}

func TestDigest(t *testing.T) {
	t.Parallel()
	golden, err := os.ReadFile(filepath.Join(goldenDir, "docker-schema2.json"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		payload []byte
		alg     digest.Algorithm
		want    digest.Digest
	}{
		{[]byte("{}"), digest.SHA256, digestEmptyObj},
		{[]byte("{}"), digest.SHA512, dSha512},
		{nil, digest.SHA256, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		// The golden file hashed as pushed, byte for byte.
		{golden, digest.SHA256, digest.SHA256.FromBytes(golden)},
		{golden, digest.SHA512, digest.SHA512.FromBytes(golden)},
	}
	for _, tt := range tests {
		if got := manifest.Digest(tt.payload, tt.alg); got != tt.want {
			t.Errorf("Digest(%.20q, %s) = %s, want %s", tt.payload, tt.alg, got, tt.want)
		}
	}
}

// A Content-Type with a malformed parameter still names the media type.
func TestParseContentTypeWithBadParameter(t *testing.T) {
	body := []byte(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` +
		strings.Repeat("a", 64) + `","size":2},"layers":[]}`)
	m, err := manifest.Parse("application/vnd.oci.image.manifest.v1+json; charset", body)
	if err != nil || m.MediaType != manifest.MediaTypeOCIManifest {
		t.Fatalf("Parse = %+v, %v", m, err)
	}
}

func TestParseViewKeepsPlatforms(t *testing.T) {
	payload := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":10,` +
		`"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}],"annotations":{"k":"v"}}`)
	v, err := manifest.ParseView(payload)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Manifests) != 1 || v.Manifests[0].Platform == nil || v.Manifests[0].Platform.Architecture != "arm64" ||
		v.Manifests[0].Platform.Variant != "v8" || v.Annotations["k"] != "v" {
		t.Errorf("view %+v", v)
	}
	img, err := manifest.ParseConfig([]byte(`{"architecture":"amd64","os":"linux","created":"2024-01-02T03:04:05Z","config":{"Labels":{"a":"b"}}}`))
	if err != nil || img.OS != "linux" || img.Created == nil || img.Config.Labels["a"] != "b" {
		t.Errorf("config %+v %v", img, err)
	}
}
