package main

import (
	"crypto/sha256"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"sync"

	"github.com/opencontainers/go-digest"
)

// Blob contents come from a deterministic generator, so neither the client
// nor the test data directory holds a 256 MiB blob: a blob is (seed, size),
// its bytes are a fixed 1 MiB block of random bytes repeated, with the first
// 16 bytes of every MiB replaced by the seed and the block number. Blobs of
// different seeds differ in every MiB, so no registry can deduplicate them,
// and generating costs little more than a memcpy.

const genBlock = 1 << 20

var genBase = func() []byte {
	b := make([]byte, genBlock)
	r := rand.NewChaCha8([32]byte{'b', 'e', 'r', 't', 'h', '-', 'b', 'e', 'n', 'c', 'h'})
	r.Read(b)
	return b
}()

// genReader streams the blob (seed, size).
type genReader struct {
	seed      uint64
	size, off int64
}

func newGen(seed uint64, size int64) *genReader { return &genReader{seed: seed, size: size} }

func (g *genReader) Read(p []byte) (int, error) {
	if g.off >= g.size {
		return 0, io.EOF
	}
	in := g.off % genBlock
	n := int64(len(p))
	n = min(n, genBlock-in, g.size-g.off)
	copy(p[:n], genBase[in:in+n])
	if in < 16 {
		var hdr [16]byte
		binary.LittleEndian.PutUint64(hdr[:8], g.seed)
		binary.LittleEndian.PutUint64(hdr[8:], uint64(g.off/genBlock))
		copy(p[:n], hdr[in:])
	}
	g.off += n
	return int(n), nil
}

type genKey struct {
	seed uint64
	size int64
}

var genDigests sync.Map // genKey → digest.Digest

// genDigest is the sha256 digest of the blob (seed, size), computed once in
// a pass over the generator (before any timed upload).
func genDigest(seed uint64, size int64) digest.Digest {
	k := genKey{seed, size}
	if d, ok := genDigests.Load(k); ok {
		return d.(digest.Digest)
	}
	h := sha256.New()
	buf := make([]byte, genBlock)
	io.CopyBuffer(h, newGen(seed, size), buf)
	d := digest.NewDigest(digest.SHA256, h)
	genDigests.Store(k, d)
	return d
}
