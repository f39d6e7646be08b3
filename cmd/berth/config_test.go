package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

// Flags beat the environment, which beats the file, which beats defaults.
func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "berth.yaml")
	os.WriteFile(file, []byte("listen: \":7000\"\ndata_dir: /from/file\nlog_level: warn\nshutdown_timeout: 5s\n"), 0o644)

	c, err := loadConfig("serve", []string{"--config", file, "--listen", ":9000"},
		envOf(map[string]string{"BERTH_LISTEN": ":8000", "BERTH_DATA_DIR": "/from/env"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":9000" {
		t.Errorf("listen %q: the flag must win", c.Listen)
	}
	if c.DataDir != "/from/env" {
		t.Errorf("data dir %q: the environment must beat the file", c.DataDir)
	}
	if c.LogLevel != slog.LevelWarn || c.ShutdownTimeout != 5*time.Second {
		t.Errorf("log level %v, shutdown timeout %v: the file must beat defaults", c.LogLevel, c.ShutdownTimeout)
	}
	if c.StorageDir != "/from/env/blobs" {
		t.Errorf("storage dir %q: defaults to <data dir>/blobs", c.StorageDir)
	}
	if c.Storage != "filesystem" || !c.AutoMigrate || c.DatabaseURL != "" {
		t.Errorf("defaults: storage %q auto-migrate %v database-url %q", c.Storage, c.AutoMigrate, c.DatabaseURL)
	}

	// BERTH_CONFIG names the file when no flag does.
	c, err = loadConfig("serve", nil, envOf(map[string]string{"BERTH_CONFIG": file}), &bytes.Buffer{})
	if err != nil || c.Listen != ":7000" {
		t.Fatalf("listen %q, err %v: BERTH_CONFIG must be read", c.Listen, err)
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := loadConfig("serve", nil, envOf(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":5000" || c.DataDir != "./data" || c.StorageDir != "data/blobs" || c.LogLevel != slog.LevelInfo {
		t.Errorf("defaults: %+v", c)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "unknown.yaml")
	os.WriteFile(unknown, []byte("listen: \":1\"\nlisten_port: 5\n"), 0o644)
	nested := filepath.Join(dir, "nested.yaml")
	os.WriteFile(nested, []byte("listen:\n  a: b\n"), 0o644)

	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"bad storage", []string{"--storage", "floppy"}, nil, "unknown storage"},
		{"bad bool from env", nil, map[string]string{"BERTH_AUTO_MIGRATE": "perhaps"}, "BERTH_AUTO_MIGRATE"},
		{"bad duration", []string{"--shutdown-timeout", "soon"}, nil, "shutdown-timeout"},
		{"bad log level", []string{"--log-level", "loud"}, nil, "log-level"},
		{"unknown flag", []string{"--nope"}, nil, "nope"},
		{"stray argument", []string{"extra"}, nil, "unexpected arguments"},
		{"unknown key in file", []string{"--config", unknown}, nil, "listen_port"},
		{"nested value in file", []string{"--config", nested}, nil, "single value"},
		{"missing file", []string{"--config", filepath.Join(dir, "absent.yaml")}, nil, "read config file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig("serve", tt.args, envOf(tt.env), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

// --help documents every setting with its environment name.
func TestHelpListsEverySetting(t *testing.T) {
	var out bytes.Buffer
	_, err := loadConfig("serve", []string{"--help"}, envOf(nil), &out)
	if err == nil {
		t.Fatal("--help did not stop")
	}
	for _, s := range settings {
		if !strings.Contains(out.String(), "-"+s.name) || !strings.Contains(out.String(), s.env()) {
			t.Errorf("--help does not document %s / %s", s.name, s.env())
		}
	}
	for _, env := range []string{"BERTH_LISTEN", "BERTH_DATA_DIR", "BERTH_DATABASE_URL", "BERTH_STORAGE", "BERTH_STORAGE_DIR", "BERTH_LOG_LEVEL"} {
		if !strings.Contains(out.String(), env) {
			t.Errorf("--help lacks %s, which deployment scripts rely on", env)
		}
	}
}

func TestBooleanAndDurationSettings(t *testing.T) {
	c, err := loadConfig("serve", []string{"--gc-disabled", "--auto-migrate=false", "--gc-review-delay", "0s",
		"--gc-untagged-after", "720h"}, envOf(map[string]string{"BERTH_GC_TOMBSTONE_RETENTION": "1h"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !c.GCDisabled || c.AutoMigrate {
		t.Errorf("gc disabled %v, auto-migrate %v: a bare boolean flag means true", c.GCDisabled, c.AutoMigrate)
	}
	p := c.gcPolicy()
	if p.ReviewDelay != 0 || p.TombstoneRetention != time.Hour || !p.CollectUntagged || p.UntaggedAfter != 720*time.Hour {
		t.Errorf("policy %+v", p)
	}
	if c, _ := loadConfig("serve", nil, envOf(nil), &bytes.Buffer{}); c.gcPolicy().CollectUntagged || c.GCReviewDelay != 24*time.Hour {
		t.Errorf("defaults must keep untagged manifests and review after 24h: %+v", c.gcPolicy())
	}
	for _, bad := range [][]string{{"--gc-review-delay", "-1s"}, {"--gc-batch", "0"}, {"--gc-untagged-after", "soon"}} {
		if _, err := loadConfig("serve", bad, envOf(nil), &bytes.Buffer{}); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestS3Settings(t *testing.T) {
	env := envOf(map[string]string{"BERTH_STORAGE": "s3", "BERTH_S3_BUCKET": "images", "BERTH_S3_PREFIX": "prod/",
		"BERTH_S3_REGION": "eu-west-1", "BERTH_S3_ENDPOINT": "http://minio:9000", "BERTH_S3_FORCE_PATH_STYLE": "true",
		"BERTH_S3_REDIRECT": "true"})
	c, err := loadConfig("serve", nil, env, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Storage != "s3" || c.S3.Bucket != "images" || c.S3.Prefix != "prod/" || c.S3.Region != "eu-west-1" ||
		c.S3.Endpoint != "http://minio:9000" || !c.S3.ForcePathStyle || !c.S3Redirect {
		t.Errorf("S3 settings %+v redirect %v", c.S3, c.S3Redirect)
	}
	if _, err := loadConfig("serve", []string{"--storage", "s3"}, envOf(nil), &bytes.Buffer{}); err == nil ||
		!strings.Contains(err.Error(), "BERTH_S3_BUCKET") {
		t.Errorf("storage s3 without a bucket: %v", err)
	}
}
