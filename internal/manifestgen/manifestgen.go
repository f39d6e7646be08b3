// Package manifestgen writes the largest manifests Berth must accept, of the
// shapes that cost the most to parse and store: an image manifest of tens
// of thousands of layers, an index of tens of thousands of platform
// manifests, a manifest that is mostly annotations. The manifest
// benchmarks, the handler measurement of a whole PUT and tools/bench use
// the same bodies, so their figures describe the same thing.
package manifestgen

import (
	"crypto/sha256"
	"encoding/binary"
	"strconv"

	"github.com/opencontainers/go-digest"
)

// Media types the generated bodies use.
const (
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Blob is what a descriptor says of a blob or child manifest.
type Blob struct {
	Digest digest.Digest
	Size   int64
}

// FakeBlobs returns n distinct descriptors of blobs nobody pushed, for
// measuring the parser alone.
func FakeBlobs(n int) []Blob {
	out := make([]Blob, n)
	var b [8]byte
	for i := range out {
		binary.LittleEndian.PutUint64(b[:], uint64(i))
		out[i] = Blob{Digest: digest.NewDigestFromBytes(digest.SHA256, sha256Sum(b[:])), Size: int64(1000 + i)}
	}
	return out
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// seqWidth is the width of the sequence annotation every body starts with,
// which callers may rewrite in place (see SetSeq) to make distinct
// manifests of the same size without building them again.
const seqWidth = 12

var seqKey = []byte(`"org.example.seq":"`)

func start(mediaType string) []byte {
	b := make([]byte, 0, 4<<20)
	b = append(b, `{"schemaVersion":2,"mediaType":"`...)
	b = append(b, mediaType...)
	b = append(b, `","annotations":{`...)
	b = append(b, seqKey...)
	b = append(b, "000000000000"...)
	return append(b, '"')
}

// SetSeq writes seq into the sequence annotation of a generated body.
func SetSeq(body []byte, seq uint64) {
	i := indexOf(body, seqKey) + len(seqKey)
	s := strconv.FormatUint(seq, 10)
	for j := range seqWidth {
		body[i+j] = '0'
	}
	copy(body[i+seqWidth-len(s):], s)
}

func indexOf(b, sub []byte) int {
	for i := 0; i+len(sub) <= len(b); i++ {
		if string(b[i:i+len(sub)]) == string(sub) {
			return i
		}
	}
	panic("manifestgen: no sequence annotation")
}

func appendDesc(b []byte, mediaType string, d Blob) []byte {
	b = append(b, `{"mediaType":"`...)
	b = append(b, mediaType...)
	b = append(b, `","digest":"`...)
	b = append(b, d.Digest...)
	b = append(b, `","size":`...)
	b = strconv.AppendInt(b, d.Size, 10)
	return b
}

// Image returns an OCI image manifest of at most size bytes whose layers
// go round blobs until the body is full: with size 4 MiB, about 27,000
// layers.
func Image(config Blob, blobs []Blob, size int) []byte {
	b := start(MediaTypeManifest)
	b = append(b, `},"config":`...)
	b = appendDesc(b, MediaTypeConfig, config)
	b = append(b, `},"layers":[`...)
	const tail = len("}]}")
	for i := 0; ; i++ {
		n := len(b)
		if i > 0 {
			b = append(b, ',')
		}
		b = appendDesc(b, MediaTypeLayer, blobs[i%len(blobs)])
		if len(b)+tail+1 > size {
			b = b[:n]
			break
		}
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// Index returns an OCI index of at most size bytes listing children round
// and round, each with a platform, and every other one with the
// annotations buildx gives attestation manifests: with size 4 MiB, about
// 16,000 entries.
func Index(children []Blob, size int) []byte {
	b := start(MediaTypeIndex)
	b = append(b, `},"manifests":[`...)
	const tail = len("]}")
	for i := 0; ; i++ {
		n := len(b)
		if i > 0 {
			b = append(b, ',')
		}
		c := children[i%len(children)]
		b = appendDesc(b, MediaTypeManifest, c)
		if i%2 == 0 {
			b = append(b, `,"platform":{"architecture":"amd64","os":"linux","variant":"v`...)
			b = strconv.AppendInt(b, int64(i%4+1), 10)
			b = append(b, `"}}`...)
		} else {
			b = append(b, `,"platform":{"architecture":"unknown","os":"unknown"},"annotations":{"vnd.docker.reference.digest":"`...)
			b = append(b, children[(i-1)%len(children)].Digest...)
			b = append(b, `","vnd.docker.reference.type":"attestation-manifest"}}`...)
		}
		if len(b)+tail > size {
			b = b[:n]
			break
		}
	}
	return append(b, "]}"...)
}

// Annotated returns an OCI image manifest of at most size bytes that is
// nearly all top-level annotations (which Berth stores as jsonb), of about
// 100 bytes each: with size 4 MiB, about 40,000.
func Annotated(config, layer Blob, size int) []byte {
	b := start(MediaTypeManifest)
	const tail = len(`},"config":`) + 300 + len(`},"layers":[`) + 300 + len("]}")
	for i := 0; ; i++ {
		n := len(b)
		b = append(b, `,"org.example.annotation.`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, `":"a value of some length, as a build system might record: commit `...)
		b = append(b, strconv.FormatInt(int64(i)*7919, 16)...)
		b = append(b, '"')
		if len(b)+tail > size {
			b = b[:n]
			break
		}
	}
	b = append(b, `},"config":`...)
	b = appendDesc(b, MediaTypeConfig, config)
	b = append(b, `},"layers":[`...)
	b = appendDesc(b, MediaTypeLayer, layer)
	return append(b, "}]}"...)
}
