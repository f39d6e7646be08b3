package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"33554432", 32 << 20},
		{"512KiB", 512 << 10},
		{"32MiB", 32 << 20},
		{"1GiB", 1 << 30},
		{"5000000", 5_000_000},
		{"8589934591GiB", 8589934591 << 30},
	} {
		got, err := parseSize(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
		if back, err := parseSize(formatSize(got)); err != nil || back != got {
			t.Errorf("parseSize(formatSize(%d) = %q) = %d, %v", got, formatSize(got), back, err)
		}
	}
	for _, in := range []string{"", "MiB", "32 MiB", "32mib", "32MB", "32M", "32m", "-1", "+5", "1.5MiB", "0x10",
		"8589934592GiB", "9223372036854775808", "32MiBMiB", " 32MiB"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
	if got := formatSize(32 << 20); got != "32MiB" {
		t.Errorf("formatSize(32 MiB) = %q", got)
	}
	if got := formatSize(5_000_000); got != "5000000" {
		t.Errorf("formatSize(5000000) = %q", got)
	}
}

// The manifest budget comes from its flag or environment variable, and a
// budget too small to take a manifest of the largest size is refused.
func TestManifestBudgetSetting(t *testing.T) {
	c, err := loadConfig("serve", nil, envOf(nil), &bytes.Buffer{})
	if err != nil || c.ManifestBudget != 16<<20 {
		t.Fatalf("default manifest budget %d, err %v", c.ManifestBudget, err)
	}
	c, err = loadConfig("serve", nil, envOf(map[string]string{"BERTH_MANIFEST_BUDGET": "64MiB"}), &bytes.Buffer{})
	if err != nil || c.ManifestBudget != 64<<20 {
		t.Fatalf("BERTH_MANIFEST_BUDGET=64MiB: %d, err %v", c.ManifestBudget, err)
	}
	c, err = loadConfig("serve", []string{"--manifest-budget", "1GiB"}, envOf(map[string]string{"BERTH_MANIFEST_BUDGET": "64MiB"}), &bytes.Buffer{})
	if err != nil || c.ManifestBudget != 1<<30 {
		t.Fatalf("--manifest-budget 1GiB: %d, err %v", c.ManifestBudget, err)
	}
	for _, bad := range []string{"4MiB", "lots"} {
		_, err = loadConfig("serve", []string{"--manifest-budget", bad}, envOf(nil), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "manifest-budget") {
			t.Errorf("--manifest-budget %s: err %v, want an error naming the setting", bad, err)
		}
	}
}
