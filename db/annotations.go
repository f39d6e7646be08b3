package db

import (
	"strconv"
	"unicode/utf8"
)

// encodeAnnotations writes a manifest's annotations as a JSON object, for
// the jsonb column; nil for none. json.Marshal did it before, which for
// the largest manifests (4 MiB of annotations) sorted the keys into a
// slice of their own, grew its buffer step by step and kept it in a pool
// once done, and copied the result: about three times the annotations,
// for a value PostgreSQL parses anyway, whatever the order of its keys.
// This writes the object in one buffer of its exact size. Strings decode
// to what json.Marshal's encode to: ", \ and control characters are
// escaped, invalid UTF-8 becomes U+FFFD.
func encodeAnnotations(m map[string]string) []byte {
	if m == nil {
		return nil
	}
	n := len("{}") + max(len(m)-1, 0) // braces and commas
	for k, v := range m {
		n += jsonStringLen(k) + len(":") + jsonStringLen(v)
	}
	b := make([]byte, 0, n)
	b = append(b, '{')
	first := true
	for k, v := range m {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, v)
	}
	return append(b, '}')
}

// jsonStringLen is the length of appendJSONString's encoding of s.
func jsonStringLen(s string) int {
	n := len(`""`)
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			n, i = n+2, i+1
		case c < 0x20:
			n, i = n+len(`\u0000`), i+1
		case c < utf8.RuneSelf:
			n, i = n+1, i+1
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				n += len(`\ufffd`)
			} else {
				n += size
			}
			i += size
		}
	}
	return n
}

func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
			i++
		case c < 0x20:
			b = append(b, `\u00`...)
			if c < 0x10 {
				b = append(b, '0')
			}
			b = strconv.AppendUint(b, uint64(c), 16)
			i++
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
		}
	}
	return append(b, '"')
}
