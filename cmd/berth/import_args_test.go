package main

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

// In berth import the --s3-* flags name the source: they are taken out
// before Berth's own settings are parsed, in every form a flag can take.
func TestImportSourceS3Flags(t *testing.T) {
	t.Parallel()
	rest, src, err := takeSourceS3Flags([]string{"--from-s3", "--s3-bucket", "old", "-s3-prefix=registry/",
		"--s3-force-path-style", "--storage", "s3", "--s3-endpoint=http://s3.internal", "--workers", "2"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"--from-s3", "--storage", "s3", "--workers", "2"}; !slices.Equal(rest, want) {
		t.Errorf("rest %v, want %v", rest, want)
	}
	want := map[string]string{"s3-bucket": "old", "s3-prefix": "registry/", "s3-force-path-style": "true", "s3-endpoint": "http://s3.internal"}
	if !maps.Equal(src, want) {
		t.Errorf("source %v, want %v", src, want)
	}
	if _, _, err := takeSourceS3Flags([]string{"--from-s3", "--s3-bucket"}); err == nil {
		t.Error("a flag without its value was accepted")
	}
	var out strings.Builder
	err = run(t.Context(), []string{"import", "--from-dir", t.TempDir(), "--s3-bucket", "x"}, func(string) string { return "" }, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "describe the source of --from-s3") {
		t.Errorf("--s3-bucket without --from-s3: %v", err)
	}
	err = run(t.Context(), []string{"import"}, func(string) string { return "" }, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "exactly one of") {
		t.Errorf("no source: %v", err)
	}
}
