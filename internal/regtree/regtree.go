// Package regtree writes a reference registry's (CNCF Distribution's)
// filesystem storage tree directly, without the registry: the fixtures of
// the importer's tests, including what a live registry would never write
// (dangling links, schema 1 manifests, digests that lie), and the large
// generated trees that tools/gentree writes for timing an import.
package regtree

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
)

// Media types the written manifests use.
const (
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// Tree is a storage tree under Root (the registry's rootdirectory).
type Tree struct {
	Root string
}

func (t *Tree) v2(parts ...string) string {
	return filepath.Join(append([]string{t.Root, "docker", "registry", "v2"}, parts...)...)
}

func write(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Blob writes b as blob data (not linked anywhere) and returns its digest.
func (t *Tree) Blob(b []byte) (digest.Digest, error) {
	d := digest.FromBytes(b)
	return d, t.BlobAs(d, b)
}

// BlobAs writes b as the data of blob d, whatever b hashes to.
func (t *Tree) BlobAs(d digest.Digest, b []byte) error {
	p := t.v2("blobs", string(d.Algorithm()), d.Encoded()[:2], d.Encoded(), "data")
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	return write(p, b)
}

func (t *Tree) repo(name string, parts ...string) string {
	return t.v2(append([]string{"repositories", name}, parts...)...)
}

func link(d digest.Digest) []byte { return []byte(d.String()) }

// LinkLayer links blob d into repository repo.
func (t *Tree) LinkLayer(repo string, d digest.Digest) error {
	return write(t.repo(repo, "_layers", string(d.Algorithm()), d.Encoded(), "link"), link(d))
}

// LinkRevision links manifest d into repository repo.
func (t *Tree) LinkRevision(repo string, d digest.Digest) error {
	return write(t.repo(repo, "_manifests", "revisions", string(d.Algorithm()), d.Encoded(), "link"), link(d))
}

// Tag points tag at d, adding d to the tag's index with modification time
// at (zero: now).
func (t *Tree) Tag(repo, tag string, d digest.Digest, at time.Time) error {
	if err := write(t.repo(repo, "_manifests", "tags", tag, "current", "link"), link(d)); err != nil {
		return err
	}
	idx := t.repo(repo, "_manifests", "tags", tag, "index", string(d.Algorithm()), d.Encoded(), "link")
	if err := write(idx, link(d)); err != nil {
		return err
	}
	if !at.IsZero() {
		return os.Chtimes(idx, at, at)
	}
	return nil
}

// DeleteTag removes a tag as the registry does: its whole directory.
func (t *Tree) DeleteTag(repo, tag string) error {
	return os.RemoveAll(t.repo(repo, "_manifests", "tags", tag))
}

// DeleteRevision removes a manifest's revision link as the registry does
// (the directory stays).
func (t *Tree) DeleteRevision(repo string, d digest.Digest) error {
	return os.Remove(t.repo(repo, "_manifests", "revisions", string(d.Algorithm()), d.Encoded(), "link"))
}

// Descriptor describes a blob or manifest in a manifest.
type Descriptor struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
	Platform  *Platform     `json:"platform,omitempty"`
}

// Platform of an index's child.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// Manifest writes payload as a manifest of repo (data and revision link)
// and returns its descriptor.
func (t *Tree) Manifest(repo, mediaType string, payload []byte) (Descriptor, error) {
	d, err := t.Blob(payload)
	if err != nil {
		return Descriptor{}, err
	}
	if err := t.LinkRevision(repo, d); err != nil {
		return Descriptor{}, err
	}
	return Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(payload))}, nil
}

// Image writes an image of repo: a config, the layers given (written and
// linked), and the manifest, and returns the manifest's descriptor.
func (t *Tree) Image(repo string, config []byte, layers ...[]byte) (Descriptor, error) {
	cfg, err := t.linkedBlob(repo, MediaTypeConfig, config)
	if err != nil {
		return Descriptor{}, err
	}
	m := struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Config        Descriptor   `json:"config"`
		Layers        []Descriptor `json:"layers"`
	}{2, MediaTypeManifest, cfg, []Descriptor{}}
	for _, l := range layers {
		ld, err := t.linkedBlob(repo, MediaTypeLayer, l)
		if err != nil {
			return Descriptor{}, err
		}
		m.Layers = append(m.Layers, ld)
	}
	payload, err := json.Marshal(m)
	if err != nil {
		return Descriptor{}, err
	}
	return t.Manifest(repo, MediaTypeManifest, payload)
}

// Index writes an index of repo listing children.
func (t *Tree) Index(repo string, children ...Descriptor) (Descriptor, error) {
	m := struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []Descriptor `json:"manifests"`
	}{2, MediaTypeIndex, children}
	payload, err := json.Marshal(m)
	if err != nil {
		return Descriptor{}, err
	}
	return t.Manifest(repo, MediaTypeIndex, payload)
}

func (t *Tree) linkedBlob(repo, mediaType string, b []byte) (Descriptor, error) {
	d, err := t.Blob(b)
	if err != nil {
		return Descriptor{}, err
	}
	if err := t.LinkLayer(repo, d); err != nil {
		return Descriptor{}, err
	}
	return Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}, nil
}

// Schema1 writes a Docker schema 1 manifest of repo (a registry that ran
// before 2017 holds these).
func (t *Tree) Schema1(repo, tag string) (digest.Digest, error) {
	payload := []byte(fmt.Sprintf(`{"schemaVersion":1,"name":%q,"tag":%q,"architecture":"amd64","fsLayers":[],"history":[]}`, repo, tag))
	d, err := t.Blob(payload)
	if err != nil {
		return "", err
	}
	return d, t.LinkRevision(repo, d)
}

// FakeDigest is a digest of data nobody wrote, for dangling links.
func FakeDigest(seed string) digest.Digest {
	s := sha256.Sum256([]byte("regtree fake " + seed))
	return digest.Digest("sha256:" + hex.EncodeToString(s[:]))
}

// Generate writes a tree of repos repositories with tagsPerRepo tags each,
// as a registry in use holds them: every repository shares a base layer of
// baseSize bytes (pushed once, linked everywhere), every tag is an image
// of its own with a small unique layer of layerSize bytes, and every tenth
// tag moved once (its index has two digests, a day apart, the older one
// left as an untagged revision).
func Generate(root string, repos, tagsPerRepo, baseSize, layerSize int) error {
	t := &Tree{Root: root}
	base := make([]byte, baseSize)
	for i := range base {
		base[i] = byte(i * 7)
	}
	day := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
	for r := range repos {
		repo := fmt.Sprintf("team-%02d/service-%04d", r%50, r)
		for k := range tagsPerRepo {
			layer := make([]byte, layerSize)
			copy(layer, fmt.Sprintf("%s:%d", repo, k))
			cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"},"comment":%q}`, repo+fmt.Sprint(k)))
			img, err := t.Image(repo, cfg, base, layer)
			if err != nil {
				return err
			}
			tag := fmt.Sprintf("v1.%d", k)
			if k%10 == 0 {
				old := append([]byte(nil), cfg...)
				old = append(old[:len(old)-1], []byte(`,"old":true}`)...)
				prev, err := t.Image(repo, old, base, layer)
				if err != nil {
					return err
				}
				if err := t.Tag(repo, tag, prev.Digest, day); err != nil {
					return err
				}
			}
			if err := t.Tag(repo, tag, img.Digest, day.Add(24*time.Hour)); err != nil {
				return err
			}
		}
	}
	return nil
}
