package handlers_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"testing"
)

// A blob larger than one mapping window (4 MiB) of the filesystem store,
// downloaded whole and in ranges that start mid-page, cross windows, are
// suffixes or multipart: every byte as pushed.
func TestBlobDownloadAcrossWindows(t *testing.T) {
	r := newRegistry(t)
	const win = 4 << 20
	content := make([]byte, 2*win+12345)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range content {
		content[i] = byte(rng.Uint32())
	}
	d := r.pushBlob("big/blob", content)
	path := "/v2/big/blob/blobs/" + d.String()
	size := int64(len(content))

	full := r.do("GET", path, nil)
	full.expect(t, 200, "")
	if !bytes.Equal(full.body, content) || full.ContentLength != size {
		t.Fatalf("full GET: %d bytes, Content-Length %d, equal %v", len(full.body), full.ContentLength, bytes.Equal(full.body, content))
	}
	for _, tc := range []struct {
		hdr        string
		start, end int64 // inclusive
	}{
		{"bytes=0-0", 0, 0},
		{"bytes=4097-8191", 4097, 8191},
		{fmt.Sprintf("bytes=%d-%d", win-10, win+9), win - 10, win + 9},
		{fmt.Sprintf("bytes=%d-", win+1), win + 1, size - 1},
		{"bytes=4097-", 4097, size - 1},
		{"bytes=-100", size - 100, size - 1},
		{fmt.Sprintf("bytes=-%d", size+5), 0, size - 1},
		{fmt.Sprintf("bytes=%d-%d", size-1, size+100), size - 1, size - 1},
	} {
		resp := r.do("GET", path, nil, "Range: "+tc.hdr)
		resp.expect(t, 206, "")
		want := content[tc.start : tc.end+1]
		if !bytes.Equal(resp.body, want) || resp.ContentLength != int64(len(want)) {
			t.Errorf("%s: got %d bytes (Content-Length %d), want %d, equal %v", tc.hdr, len(resp.body), resp.ContentLength, len(want), bytes.Equal(resp.body, want))
		}
		if cr, wcr := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/%d", tc.start, tc.end, size); cr != wcr {
			t.Errorf("%s: Content-Range %q, want %q", tc.hdr, cr, wcr)
		}
	}
	// Multipart: net/http serves it through a pipe, not CopyFile.
	resp := r.do("GET", path, nil, fmt.Sprintf("Range: bytes=5-9,%d-%d", win-3, win+3))
	resp.expect(t, 206, "")
	mt, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt != "multipart/byteranges" || resp.ContentLength != int64(len(resp.body)) {
		t.Fatalf("multi-range: %s, Content-Length %d, body %d", mt, resp.ContentLength, len(resp.body))
	}
	mr := multipart.NewReader(bytes.NewReader(resp.body), params["boundary"])
	for _, want := range [][]byte{content[5:10], content[win-3 : win+4]} {
		p, err := mr.NextPart()
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(p)
		if !bytes.Equal(got, want) {
			t.Errorf("part %s: wrong bytes", p.Header.Get("Content-Range"))
		}
	}
	// Empty blob.
	ed := r.pushBlob("big/blob", nil)
	e := r.do("GET", "/v2/big/blob/blobs/"+ed.String(), nil)
	e.expect(t, 200, "")
	if len(e.body) != 0 || e.Header.Get("Content-Length") != "0" {
		t.Errorf("empty blob: %d bytes, Content-Length %q", len(e.body), e.Header.Get("Content-Length"))
	}
}
