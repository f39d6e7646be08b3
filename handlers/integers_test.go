package handlers_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Edges of int64, as a client writes them.
const (
	maxInt64     = "9223372036854775807"
	maxInt64Plus = "9223372036854775808"
)

// framing is how raw sends a request body.
type framing int

const (
	chunked framing = iota // Transfer-Encoding: chunked, so no Content-Length reaches the handler
	asIs                   // the body after the headers, framed by whatever Content-Length the case gives
	cut                    // asIs, then the client half-closes: a body shorter than its Content-Length ends there
)

// raw sends a request exactly as given, over a connection of its own:
// neither Go's client nor anything else fixes its headers or its framing.
func (r *registry) raw(method, path string, header []string, body []byte, how framing) response {
	r.t.Helper()
	addr := r.srv.Listener.Addr().String()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		r.t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, path, addr)
	for _, h := range header {
		b.WriteString(h + "\r\n")
	}
	if how == chunked {
		b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		if len(body) > 0 {
			fmt.Fprintf(&b, "%x\r\n%s\r\n", len(body), body)
		}
		b.WriteString("0\r\n\r\n")
	} else {
		b.WriteString("\r\n")
		b.Write(body)
	}
	if _, err := conn.Write(b.Bytes()); err != nil {
		r.t.Fatal(err)
	}
	if how == cut {
		conn.(*net.TCPConn).CloseWrite()
	}
	req, _ := http.NewRequest(method, r.srv.URL+path, nil)
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return response{resp, rb}
}

// plain is the code of a case that net/http itself refuses, before Berth
// sees the request: its answer is plain text, not the OCI JSON body.
const plain = "(net/http)"

// TestClientIntegers sends every integer a client can send — the
// Content-Range of a chunk (PATCH and final PUT), Content-Length, the Range
// of a blob download, n of the four listings and the last of a tag history
// — at its edges: 0, -1, the largest int64 and one more, a sign, spaces,
// leading zeros. The rule: strict decimal digits (leading zeros are
// digits), no sign, no inner space, nothing that overflows an int64. A
// refused chunk leaves its session as it was.
func TestClientIntegers(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	chunk := bytes.Repeat([]byte("0123456789"), 100) // 1,000 bytes
	chunkDigest := digest.FromBytes(chunk)

	t.Run("upload", func(t *testing.T) {
		tests := []struct {
			name   string
			method string // PATCH, or PUT to finish the upload with this chunk
			header []string
			body   []byte // nil: the 1,000 bytes of chunk
			how    framing
			status int
			code   string // OCI code of a refusal; plain when net/http refuses
			size   int64  // bytes the session holds after an accepted PATCH
		}{
			// Content-Range of a PATCH, on an empty session.
			{name: "range", method: "PATCH", header: []string{"Content-Range: 0-999"}, status: 202, size: 1000},
			{name: "range with leading zeros", method: "PATCH", header: []string{"Content-Range: 000-0999"}, status: 202, size: 1000},
			{name: "range with total", method: "PATCH", header: []string{"Content-Range: bytes 0-999/1000"}, status: 202, size: 1000},
			{name: "range with unknown total", method: "PATCH", header: []string{"Content-Range: bytes 0-999/*"}, status: 202, size: 1000},
			{name: "range within spaces", method: "PATCH", header: []string{"Content-Range:   0-999  "}, status: 202, size: 1000}, // net/http trims them
			{name: "range 0-0 of 1,000 bytes", method: "PATCH", header: []string{"Content-Range: 0-0"}, status: 400, code: "SIZE_INVALID"},
			{name: "range longer than the body", method: "PATCH", header: []string{"Content-Range: 0-1999"}, status: 400, code: "SIZE_INVALID"},
			{name: "range to max int64", method: "PATCH", header: []string{"Content-Range: 0-" + maxInt64}, status: 416, code: "BLOB_UPLOAD_INVALID"},
			{name: "range to max int64 - 1", method: "PATCH", header: []string{"Content-Range: 0-9223372036854775806"}, status: 400, code: "SIZE_INVALID"},
			{name: "range to max int64 + 1", method: "PATCH", header: []string{"Content-Range: 0-" + maxInt64Plus}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "range from max int64", method: "PATCH", header: []string{"Content-Range: " + maxInt64 + "-" + maxInt64}, status: 416, code: "BLOB_UPLOAD_INVALID"},
			{name: "range from max int64 + 1", method: "PATCH", header: []string{"Content-Range: " + maxInt64Plus + "-" + maxInt64Plus}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "range from -1", method: "PATCH", header: []string{"Content-Range: -1-998"}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "range to -1", method: "PATCH", header: []string{"Content-Range: 0--1"}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "range from +0", method: "PATCH", header: []string{"Content-Range: +0-999"}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "range to +999", method: "PATCH", header: []string{"Content-Range: 0-+999"}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "range with inner spaces", method: "PATCH", header: []string{"Content-Range: 0 - 999"}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "range backwards", method: "PATCH", header: []string{"Content-Range: 999-0"}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "range with total within it", method: "PATCH", header: []string{"Content-Range: bytes 0-999/999"}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "range with total +1000", method: "PATCH", header: []string{"Content-Range: bytes 0-999/+1000"}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "range with total max int64 + 1", method: "PATCH", header: []string{"Content-Range: bytes 0-999/" + maxInt64Plus}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "range against length", method: "PATCH", header: []string{"Content-Range: 0-999", "Content-Length: 999"}, body: chunk[:999], how: asIs,
				status: 400, code: "SIZE_INVALID"},

			// Content-Range of the final PUT.
			{name: "final range", method: "PUT", header: []string{"Content-Range: 0-999"}, status: 201},
			{name: "final range with leading zeros", method: "PUT", header: []string{"Content-Range: 0000-999"}, status: 201},
			{name: "final range to max int64", method: "PUT", header: []string{"Content-Range: 0-" + maxInt64}, status: 416, code: "BLOB_UPLOAD_INVALID"},
			{name: "final range to max int64 + 1", method: "PUT", header: []string{"Content-Range: 0-" + maxInt64Plus}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "final range from +0", method: "PUT", header: []string{"Content-Range: +0-999"}, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "final range 0-0 of 1,000 bytes", method: "PUT", header: []string{"Content-Range: 0-0"}, status: 400, code: "SIZE_INVALID"},

			// Content-Length: net/http parses it (strconv.ParseUint, 63 bits)
			// and answers 400 in plain text to anything but digits.
			{name: "length", method: "PATCH", header: []string{"Content-Length: 1000"}, how: asIs, status: 202, size: 1000},
			{name: "length 0", method: "PATCH", header: []string{"Content-Length: 0"}, body: []byte{}, how: asIs, status: 202, size: 0},
			{name: "length with leading zeros", method: "PATCH", header: []string{"Content-Length: 0001000"}, how: asIs, status: 202, size: 1000},
			{name: "length within spaces", method: "PATCH", header: []string{"Content-Length:   1000  "}, how: asIs, status: 202, size: 1000},
			{name: "length shorter than the body", method: "PATCH", header: []string{"Content-Length: 10"}, how: asIs, status: 202, size: 10}, // the rest is the next request
			{name: "length longer than the body", method: "PATCH", header: []string{"Content-Length: 2000"}, how: cut, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "length max int64", method: "PATCH", header: []string{"Content-Length: " + maxInt64}, how: cut, status: 400, code: "BLOB_UPLOAD_INVALID"},
			{name: "length max int64 + 1", method: "PATCH", header: []string{"Content-Length: " + maxInt64Plus}, how: asIs, status: 400, code: plain},
			{name: "length -1", method: "PATCH", header: []string{"Content-Length: -1"}, how: asIs, status: 400, code: plain},
			{name: "length +1000", method: "PATCH", header: []string{"Content-Length: +1000"}, how: asIs, status: 400, code: plain},
			{name: "length with inner space", method: "PATCH", header: []string{"Content-Length: 1 000"}, how: asIs, status: 400, code: plain},
			{name: "length in hex", method: "PATCH", header: []string{"Content-Length: 0x3e8"}, how: asIs, status: 400, code: plain},
			{name: "two lengths", method: "PATCH", header: []string{"Content-Length: 1000", "Content-Length: 999"}, how: asIs, status: 400, code: plain},
			// Both: net/http lets Transfer-Encoding win (RFC 9112, 6.3) and
			// hides the Content-Length from the handler.
			{name: "length and chunked", method: "PATCH", header: []string{"Content-Length: 5"}, status: 202, size: 1000},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				start := r.do("POST", "/v2/int/up/blobs/uploads/", nil)
				start.expect(t, 202, "")
				loc, id := start.Header.Get("Location"), start.Header.Get("Docker-Upload-UUID")
				path := loc
				if tt.method == "PUT" {
					path += "?digest=" + chunkDigest.String()
				}
				body := tt.body
				if body == nil {
					body = chunk
				}
				resp := r.raw(tt.method, path, tt.header, body, tt.how)
				if tt.code == plain {
					if resp.StatusCode != tt.status || strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
						t.Fatalf("got %d (%s) %s, want net/http's own %d", resp.StatusCode, resp.Header.Get("Content-Type"), resp.body, tt.status)
					}
				} else {
					resp.expect(t, tt.status, tt.code)
				}
				if tt.status == 416 && resp.Header.Get("Range") != "0-0" {
					t.Errorf("416 without the session's Range: %q", resp.Header.Get("Range"))
				}
				if tt.status == 201 {
					r.do("GET", loc, nil).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
					if got := r.do("GET", "/v2/int/up/blobs/"+chunkDigest.String(), nil); !bytes.Equal(got.body, chunk) {
						t.Fatalf("the blob holds %d bytes, not the chunk", len(got.body))
					}
					return
				}
				// Refused or appended, the session holds what the answer says.
				want := tt.size
				status := r.do("GET", loc, nil)
				status.expect(t, 204, "")
				if got, wantRange := status.Header.Get("Range"), fmt.Sprintf("0-%d", max(want-1, 0)); got != wantRange {
					t.Errorf("session Range %q, want %q", got, wantRange)
				}
				u, err := r.db.UploadGet(t.Context(), "int/up", id)
				if err != nil || u.Size != want {
					t.Fatalf("session holds %d bytes (%v), want %d", u.Size, err, want)
				}
				if tt.status != 202 || tt.method == "PUT" {
					// After a refusal, the right chunk goes through.
					if tt.method == "PUT" {
						r.do("PUT", path, chunk, "Content-Range: 0-999").expect(t, 201, "")
					} else {
						next := r.do("PATCH", loc, chunk, "Content-Range: 0-999")
						next.expect(t, 202, "")
						if got := next.Header.Get("Range"); got != "0-999" {
							t.Errorf("Range after the right chunk: %q", got)
						}
					}
				}
			})
		}
	})

	t.Run("range", func(t *testing.T) {
		content := []byte("0123456789")
		path := "/v2/int/range/blobs/" + r.pushBlob("int/range", content).String()
		tests := []struct {
			value  string
			header []string
			status int    // 416 comes with the OCI body and Content-Range: bytes */10
			body   string // of a 206 of one part; a 200 has the whole blob
		}{
			{value: "bytes=0-0", status: 206, body: "0"},
			{value: "bytes=0-", status: 206, body: "0123456789"},
			{value: "bytes=-1", status: 206, body: "9"},
			{value: "bytes=-0", status: 416}, // a suffix of no byte selects nothing (RFC 9110, 14.1.1)
			{value: "bytes=3-4", status: 206, body: "34"},
			{value: "bytes=003-004", status: 206, body: "34"},
			{value: "bytes= 3-4 ", status: 206, body: "34"},
			{value: "bytes=,3-4,", status: 206, body: "34"},
			{value: "bytes=10-", status: 416},
			{value: "bytes=20-30,3-4", status: 206, body: "34"},
			{value: "Bytes=3-4", status: 206, body: "34"},
			{value: "bytes=0-" + maxInt64, status: 206, body: "0123456789"},
			{value: "bytes=0-" + maxInt64Plus, status: 416},
			{value: "bytes=" + maxInt64 + "-", status: 416},
			{value: "bytes=" + maxInt64 + "-" + maxInt64, status: 416},
			{value: "bytes=" + maxInt64Plus + "-", status: 416},
			{value: "bytes=-" + maxInt64, status: 206, body: "0123456789"},
			{value: "bytes=-" + maxInt64Plus, status: 416},
			{value: "bytes=-1-5", status: 416},
			{value: "bytes=+3-4", status: 416}, // net/http alone would serve it
			{value: "bytes=3-+4", status: 416},
			{value: "bytes=-+1", status: 416},
			{value: "bytes=3 -4", status: 416},
			{value: "bytes=4-3", status: 416},
			{value: "bytes=3-4,+5-6", status: 416},
			{value: "bytes=", status: 416},
			{value: "bytes 3-4", status: 416},
			{value: "items=3-4", status: 200},                                                // another unit: ignored (RFC 9110, 14.2)
			{value: "bytes=+3-4", header: []string{`If-Range: "sha256:other"`}, status: 200}, // If-Range says: ignore the Range
			{value: "bytes=+3-4", header: []string{"If-None-Match: *"}, status: 304},
		}
		for _, tt := range tests {
			t.Run(tt.value+strings.Join(tt.header, ","), func(t *testing.T) {
				resp := r.do("GET", path, nil, append(tt.header, "Range: "+tt.value)...)
				switch tt.status {
				case 416:
					resp.expect(t, 416, "SIZE_INVALID")
					if got := resp.Header.Get("Content-Range"); got != "bytes */10" {
						t.Errorf("Content-Range %q", got)
					}
				case 206:
					resp.expect(t, 206, "")
					if string(resp.body) != tt.body {
						t.Errorf("body %q, want %q", resp.body, tt.body)
					}
				case 200:
					resp.expect(t, 200, "")
					if !bytes.Equal(resp.body, content) {
						t.Errorf("body %q, want the whole blob", resp.body)
					}
				default:
					resp.expect(t, tt.status, "")
				}
			})
		}
		// Two satisfiable ranges: multipart, as net/http sends it.
		resp := r.do("GET", path, nil, "Range: bytes=0-1, 8-")
		resp.expect(t, 206, "")
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "multipart/byteranges") {
			t.Errorf("two ranges: Content-Type %q", ct)
		}
	})

	t.Run("page", func(t *testing.T) {
		one, two := r.image("int/page", "one"), r.image("int/page", "two")
		r.pushBlob("int/page2", []byte("a second repository"))
		for _, push := range []struct {
			tag  string
			body []byte
		}{{"a", one}, {"b", one}, {"c", two}, {"a", two}, {"a", one}} {
			r.pushManifest("int/page", push.tag, mtManifest, push.body)
		}
		routes := []struct{ path, list string }{ // each lists at least two entries
			{"/v2/int/page/tags/list", "tags"},
			{"/v2/_catalog", "repositories"},
			{"/v2/int/page/manifests/_list", "manifests"},
			{"/v2/int/page/tags/a/history", "history"},
		}
		tests := []struct {
			query   string // as sent, URL-encoded
			history bool   // only for the tag history (its last is an integer)
			status  int
			entries int // -1: all of them
		}{
			{query: "n=", status: 200, entries: -1},
			{query: "n=0", status: 200, entries: 0},
			{query: "n=1", status: 200, entries: 1},
			{query: "n=001", status: 200, entries: 1},
			{query: "n=" + maxInt64, status: 200, entries: -1}, // cut to the largest page
			{query: "n=" + maxInt64Plus, status: 400},
			{query: "n=99999999999999999999", status: 400},
			{query: "n=-1", status: 400},
			{query: "n=-0", status: 400},
			{query: "n=%2B1", status: 400},
			{query: "n=%201", status: 400},
			{query: "n=1%20", status: 400},
			{query: "n=1%201", status: 400},
			{query: "n=0x10", status: 400},
			{query: "n=1e3", status: 400},
			{query: "last=" + maxInt64, history: true, status: 200, entries: -1},
			{query: "last=001", history: true, status: 200, entries: 0},
			{query: "last=" + maxInt64Plus, history: true, status: 400},
			{query: "last=0", history: true, status: 400},
			{query: "last=-1", history: true, status: 400},
			{query: "last=%2B1", history: true, status: 400},
			{query: "last=%201", history: true, status: 400},
		}
		for _, tt := range tests {
			for _, rt := range routes {
				if tt.history && rt.list != "history" {
					continue
				}
				t.Run(rt.list+"?"+tt.query, func(t *testing.T) {
					resp := r.do("GET", rt.path+"?"+tt.query, nil)
					if tt.status != 200 {
						resp.expect(t, tt.status, "UNSUPPORTED")
						return
					}
					resp.expect(t, 200, "")
					var body map[string]json.RawMessage
					var list []json.RawMessage
					if err := json.Unmarshal(resp.body, &body); err != nil || json.Unmarshal(body[rt.list], &list) != nil {
						t.Fatalf("body %s", resp.body)
					}
					link := resp.Header.Get("Link")
					switch {
					case tt.entries < 0 && (len(list) < 2 || link != ""):
						t.Errorf("%d entries, Link %q; want them all, no Link", len(list), link)
					case tt.entries >= 0 && len(list) != tt.entries:
						t.Errorf("%d entries, want %d", len(list), tt.entries)
					case tt.entries > 0 && !strings.Contains(link, "n="+fmt.Sprint(tt.entries)+">"):
						t.Errorf("Link %q, want the next page of n=%d", link, tt.entries)
					case tt.entries == 0 && link != "":
						t.Errorf("Link %q after an empty page", link)
					}
				})
			}
		}
	})
}
