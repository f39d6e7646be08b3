package handlers

import "strconv"

// Integers a client sends — the offsets of Content-Range and Range, the n
// of a listing, the id a history page starts after — are read strictly:
// ASCII decimal digits and nothing else. strconv.ParseInt (and net/http's
// Range parser, which uses it) also takes a sign ("+5", "-0"), which no
// grammar of these values allows, and a value that does not fit in an
// int64 must be refused rather than wrap around in later arithmetic.
// (Content-Length never gets here: net/http parses it, strictly, before
// any handler runs.)

// parseDecimal parses s as a non-negative decimal integer: one or more
// ASCII digits (leading zeros are digits, so "007" is 7), at most
// 9223372036854775807. ok is false for anything else.
func parseDecimal(s string) (v int64, ok bool) {
	if s == "" {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil { // only a value out of range fails here
		return 0, false
	}
	return v, true
}
