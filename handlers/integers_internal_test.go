package handlers

import "testing"

func TestParseDecimal(t *testing.T) {
	for _, tt := range []struct {
		in string
		v  int64
		ok bool
	}{
		{"0", 0, true},
		{"007", 7, true},
		{"9223372036854775807", 1<<63 - 1, true},
		{"9223372036854775808", 0, false},
		{"99999999999999999999", 0, false},
		{"", 0, false},
		{"-1", 0, false},
		{"-0", 0, false},
		{"+5", 0, false}, // strconv.ParseInt takes it
		{" 5", 0, false},
		{"5 ", 0, false},
		{"1_000", 0, false}, // strconv.ParseInt takes it with base 0
		{"0x10", 0, false},
		{"١", 0, false}, // a digit, but not an ASCII one
	} {
		if v, ok := parseDecimal(tt.in); v != tt.v || ok != tt.ok {
			t.Errorf("parseDecimal(%q) = %d, %v; want %d, %v", tt.in, v, ok, tt.v, tt.ok)
		}
	}
}
