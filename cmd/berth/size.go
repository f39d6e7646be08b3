package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits are the suffixes a size setting may carry. Binary units only,
// written as such, so that "32MiB" cannot be read as 32,000,000 bytes.
var sizeUnits = []struct {
	suffix string
	shift  uint
}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}}

// parseSize reads a number of bytes: digits, optionally followed by KiB,
// MiB or GiB ("33554432", "32MiB", "512KiB").
func parseSize(s string) (int64, error) {
	digits, shift := s, uint(0)
	for _, u := range sizeUnits {
		if d, ok := strings.CutSuffix(s, u.suffix); ok {
			digits, shift = d, u.shift
			break
		}
	}
	n, err := strconv.ParseUint(digits, 10, 63)
	if err != nil || digits == "" || digits[0] == '+' {
		return 0, fmt.Errorf("%q is not a size: write bytes, optionally with a KiB, MiB or GiB suffix (e.g. 32MiB)", s)
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int64(n) << shift, nil
}

// formatSize writes n bytes the way parseSize reads them, in the largest
// unit that divides n.
func formatSize(n int64) string {
	for _, u := range sizeUnits {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
