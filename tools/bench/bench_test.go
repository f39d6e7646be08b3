package main

import (
	"bytes"
	"crypto/sha256"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// The generator must give the same bytes however it is read, differ
// between seeds in every MiB, and genDigest must be their digest.
func TestGenDeterministic(t *testing.T) {
	const size = 3*genBlock + 12345
	whole, err := io.ReadAll(newGen(42, size))
	if err != nil || len(whole) != size {
		t.Fatalf("read %d bytes, err %v", len(whole), err)
	}
	var odd bytes.Buffer
	g := newGen(42, size)
	buf := make([]byte, 7)
	for {
		n, err := g.Read(buf[:1+odd.Len()%7])
		odd.Write(buf[:n])
		if err == io.EOF {
			break
		}
	}
	if !bytes.Equal(whole, odd.Bytes()) {
		t.Fatal("small reads give other bytes than one large read")
	}
	if got, want := genDigest(42, size), digest.Digest("sha256:"+hexSum(whole)); got != want {
		t.Fatalf("genDigest = %s, want %s", got, want)
	}
	other, _ := io.ReadAll(newGen(43, size))
	for off := 0; off < size; off += genBlock {
		end := min(off+genBlock, size)
		if bytes.Equal(whole[off:end], other[off:end]) {
			t.Fatalf("seeds 42 and 43 share the MiB at %d", off)
		}
	}
}

func hexSum(b []byte) string {
	h := sha256.Sum256(b)
	const hexdig = "0123456789abcdef"
	var s strings.Builder
	for _, c := range h {
		s.WriteByte(hexdig[c>>4])
		s.WriteByte(hexdig[c&15])
	}
	return s.String()
}

func TestPercentiles(t *testing.T) {
	r := &loadResult{}
	for i := 1; i <= 100; i++ {
		r.lat = append(r.lat, time.Duration(i)*time.Millisecond)
	}
	if r.pct(50) != 50*time.Millisecond || r.pct(99) != 99*time.Millisecond || r.pct(100) != 100*time.Millisecond || r.max() != 100*time.Millisecond {
		t.Fatalf("p50 %v p99 %v p100 %v", r.pct(50), r.pct(99), r.pct(100))
	}
	one := &loadResult{lat: []time.Duration{time.Second}}
	if one.pct(1) != time.Second || one.pct(99) != time.Second {
		t.Fatal("a single sample is every percentile")
	}
}

// Berth vs Dist. reads >1 as "Berth better" in both directions.
func TestAdvantage(t *testing.T) {
	if a := advantage(metric{Higher: true}, 200, 100); a != 2 {
		t.Fatalf("throughput 200 vs 100: %v", a)
	}
	if a := advantage(metric{Higher: false}, 1, 4); a != 4 {
		t.Fatalf("latency 1 vs 4: %v", a)
	}
	if s := fmtAdv(0.5); s != "WORSE 2.00×" {
		t.Fatalf("fmtAdv(0.5) = %q", s)
	}
}

func TestScenarioNamesUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range []params{fullParams(), quickParams()} {
		clear(seen)
		for _, s := range scenarios(p) {
			if seen[s.Name] {
				t.Fatalf("scenario %s twice", s.Name)
			}
			seen[s.Name] = true
		}
	}
}
