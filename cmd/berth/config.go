package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/handlers"
)

// Config is every setting of berth. Each one can come from a flag, an
// environment variable or the YAML file, in that order of precedence; see
// settings for names and defaults.
type Config struct {
	ConfigFile      string
	Listen          string
	DataDir         string
	DatabaseURL     string
	DBMaxConns      int
	DBTimeout       time.Duration
	PostgresBinDir  string
	AutoMigrate     bool
	UI              bool
	Storage         string
	StorageDir      string
	S3              blobstore.S3Config
	S3Redirect      bool
	LogLevel        slog.Level
	LogFormat       string
	ShutdownTimeout time.Duration
	DebugListen     string
	AdminListen     string

	Auth                    string
	AuthRealm               string
	AuthService             string
	AuthIssuer              string
	AuthTokenTTL            time.Duration
	ExternalURL             string
	AuthTokenJWKS           string
	AuthTokenRootCertBundle string

	MaxConnections    int   // 0: automatic, see connectionLimit
	MaxUploadSessions int   // per repository; 0: no limit
	MinBodyRate       int64 // bytes per second; 0: no minimum
	BodyRateWindow    time.Duration
	ManifestBudget    int64 // bytes of manifest bodies in flight

	GCDisabled           bool
	GCReviewDelay        time.Duration
	GCTombstoneRetention time.Duration
	GCUploadTimeout      time.Duration
	GCUntaggedAfter      *time.Duration // nil: keep untagged manifests
	GCInterval           time.Duration
	GCSweepInterval      time.Duration
	GCBatch              int

	WebhookWorkers     int
	WebhookMaxAttempts int
	WebhookBackoff     time.Duration
	WebhookLease       time.Duration
	WebhookPoll        time.Duration
	EventsRetention    time.Duration
	PullEventsFlush    time.Duration
	PullStatsFlush     time.Duration // 0: no pull statistics

	RetentionPoll time.Duration

	ProxyUpstreamTimeout time.Duration
	ProxyFetchLease      time.Duration
	ProxySecretKey       string
}

// setting describes one configuration value. The flag is --<name>, the
// environment variable BERTH_<NAME> (upper case, '-' → '_'), the YAML key
// <name> with '-' → '_'.
type setting struct {
	name  string
	def   string // default, as text; may refer to other settings (see resolve)
	usage string
	set   func(c *Config, v string) error
}

func (s setting) env() string {
	return "BERTH_" + strings.ToUpper(strings.ReplaceAll(s.name, "-", "_"))
}

func (s setting) yamlKey() string { return strings.ReplaceAll(s.name, "-", "_") }

func str(p func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *p(c) = v; return nil }
}

// duration parses a Go duration ("90s", "24h", "0s"); negative ones are
// refused.
func duration(p func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		if d < 0 {
			return fmt.Errorf("must not be negative: %s", v)
		}
		*p(c) = d
		return nil
	}
}

// nonNegativeInt parses an integer of at least 0.
func nonNegativeInt(p func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		if n < 0 {
			return fmt.Errorf("must not be negative: %s", v)
		}
		*p(c) = n
		return nil
	}
}

// byteSize parses a number of bytes with an optional binary unit: "512",
// "64KiB", "4MiB", "1GiB".
func byteSize(p func(*Config) *int64) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := parseSize(v)
		if err != nil {
			return err
		}
		*p(c) = n
		return nil
	}
}

func positiveInt(p func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		if n <= 0 {
			return fmt.Errorf("must be positive: %s", v)
		}
		*p(c) = n
		return nil
	}
}

// settings lists every setting of `berth serve`. Deployment scripts depend
// on the environment names; never rename one.
var settings = []setting{
	{"config", "", "YAML file with settings (keys as the flag names, '-' written '_')",
		str(func(c *Config) *string { return &c.ConfigFile })},
	{"listen", ":5000", "address to serve the registry API on",
		str(func(c *Config) *string { return &c.Listen })},
	{"data-dir", "./data", "directory for local state: the embedded PostgreSQL and, by default, blobs",
		str(func(c *Config) *string { return &c.DataDir })},
	{"database-url", "", "PostgreSQL URL (postgres://user:pass@host:port/db); empty starts an embedded PostgreSQL in <data-dir>/postgres from the local PostgreSQL binaries",
		str(func(c *Config) *string { return &c.DatabaseURL })},
	{"postgres-bin-dir", "", "directory with initdb and postgres for the embedded database (default: found on PATH or under /usr/lib/postgresql/*/bin)",
		str(func(c *Config) *string { return &c.PostgresBinDir })},
	{"db-max-conns", "0", "maximum database connections of this process (0: pgx default, max(4, CPUs))",
		func(c *Config, v string) (err error) { c.DBMaxConns, err = strconv.Atoi(v); return err }},
	{"db-timeout", "5s", "deadline of every database statement, including waiting for a connection: past it the request gets 503 (the database is unreachable or stuck)",
		func(c *Config, v string) error {
			if err := duration(func(c *Config) *time.Duration { return &c.DBTimeout })(c, v); err != nil {
				return err
			}
			if c.DBTimeout == 0 {
				return errors.New("must be positive")
			}
			return nil
		}},
	{"auto-migrate", "true", "apply pending database migrations at start (false: run `berth migrate up` yourself)",
		func(c *Config, v string) (err error) { c.AutoMigrate, err = strconv.ParseBool(v); return err }},
	{"storage", "filesystem", "blob storage driver: filesystem or s3",
		func(c *Config, v string) error {
			if v != "filesystem" && v != "s3" {
				return fmt.Errorf("unknown storage %q (supported: filesystem, s3)", v)
			}
			c.Storage = v
			return nil
		}},
	{"storage-dir", "", "directory of the filesystem blob store (default <data-dir>/blobs)",
		str(func(c *Config) *string { return &c.StorageDir })},
	{"s3-bucket", "", "S3 bucket of the blob store (storage s3)",
		str(func(c *Config) *string { return &c.S3.Bucket })},
	{"s3-prefix", "", "key prefix inside the bucket, e.g. registry/ (default: the bucket root)",
		str(func(c *Config) *string { return &c.S3.Prefix })},
	{"s3-region", "us-east-1", "S3 region",
		str(func(c *Config) *string { return &c.S3.Region })},
	{"s3-endpoint", "", "S3 endpoint URL for S3-compatible stores (MinIO, versitygw, Ceph...); empty for AWS",
		str(func(c *Config) *string { return &c.S3.Endpoint })},
	{"s3-force-path-style", "false", "address buckets as <endpoint>/<bucket> rather than <bucket>.<endpoint> (most S3-compatible stores need it)",
		func(c *Config, v string) (err error) { c.S3.ForcePathStyle, err = strconv.ParseBool(v); return err }},
	{"s3-redirect", "false", "answer blob downloads with a redirect to a presigned S3 URL instead of streaming them through berth",
		func(c *Config, v string) (err error) { c.S3Redirect, err = strconv.ParseBool(v); return err }},
	{"log-level", "info", "log level: debug, info, warn or error (debug logs every request)",
		func(c *Config, v string) error { return c.LogLevel.UnmarshalText([]byte(v)) }},
	{"log-format", "text", "log format: text or json",
		func(c *Config, v string) error {
			if v != "text" && v != "json" {
				return fmt.Errorf("log format must be text or json, not %q", v)
			}
			c.LogFormat = v
			return nil
		}},
	{"admin-listen", "", "address of the admin endpoints: /metrics, /readyz with the reasons, /debug/pprof/ (empty: off, and /metrics stays on the API port; keep it private, e.g. 127.0.0.1:5001)",
		str(func(c *Config) *string { return &c.AdminListen })},
	{"debug-listen", "", "deprecated: use --admin-listen; address for Go's profiling endpoints /debug/pprof/ alone",
		str(func(c *Config) *string { return &c.DebugListen })},
	{"auth", "none", "authentication: none (everyone may do everything), basic (Basic credentials: passwords or API tokens) or token (the Docker token protocol, with the token service at /auth/token)",
		func(c *Config, v string) error {
			if v != "none" && v != "basic" && v != "token" {
				return fmt.Errorf("unknown auth mode %q (supported: none, basic, token)", v)
			}
			c.Auth = v
			return nil
		}},
	{"auth-realm", "", "Basic realm (default berth), or the token service's URL in token mode (default <external URL>/auth/token)",
		str(func(c *Config) *string { return &c.AuthRealm })},
	{"auth-service", "berth", "service name of the token protocol: the audience of tokens",
		str(func(c *Config) *string { return &c.AuthService })},
	{"auth-issuer", "berth", "issuer of Berth's tokens, and the issuer accepted from an external token server",
		str(func(c *Config) *string { return &c.AuthIssuer })},
	{"auth-token-ttl", "15m", "life of the tokens Berth's token service issues",
		func(c *Config, v string) error {
			if err := duration(func(c *Config) *time.Duration { return &c.AuthTokenTTL })(c, v); err != nil {
				return err
			}
			if c.AuthTokenTTL == 0 {
				return errors.New("must be positive")
			}
			return nil
		}},
	{"external-url", "", "URL clients reach Berth at, e.g. https://registry.example.com (default: from each request's Host)",
		str(func(c *Config) *string { return &c.ExternalURL })},
	{"auth-token-jwks", "", "JWKS file of an external token server whose tokens Berth accepts (token mode)",
		str(func(c *Config) *string { return &c.AuthTokenJWKS })},
	{"auth-token-rootcertbundle", "", "PEM bundle of the certificates an external token server signs with (token mode)",
		str(func(c *Config) *string { return &c.AuthTokenRootCertBundle })},
	{"max-connections", "0", "most client connections served at once; more are answered 503 at once (0: a quarter of the open-file limit, at most 10000)",
		nonNegativeInt(func(c *Config) *int { return &c.MaxConnections })},
	{"max-upload-sessions", "1000", "most open upload sessions per repository; more are refused with 429 until some finish, are cancelled or expire (0: no limit)",
		nonNegativeInt(func(c *Config) *int { return &c.MaxUploadSessions })},
	{"min-body-rate", "1KiB", "least average rate of a request body, per second, over --body-rate-window; a slower body is cut off with 408 (0: no minimum)",
		byteSize(func(c *Config) *int64 { return &c.MinBodyRate })},
	{"body-rate-window", "60s", "window over which --min-body-rate is averaged",
		func(c *Config, v string) error {
			if err := duration(func(c *Config) *time.Duration { return &c.BodyRateWindow })(c, v); err != nil {
				return err
			}
			if c.BodyRateWindow == 0 {
				return errors.New("must be positive")
			}
			return nil
		}},
	{"shutdown-timeout", "30s", "on SIGTERM or SIGINT, how long in-flight requests may take to finish",
		duration(func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
	{"manifest-budget", formatSize(handlers.DefaultManifestBudget), "manifest bytes this process takes in at once (bytes, or with a KiB, MiB or GiB suffix); further manifest PUTs wait up to 2s, then get 429",
		func(c *Config, v string) error {
			n, err := parseSize(v)
			if err != nil {
				return err
			}
			if n < handlers.MinManifestBudget {
				return fmt.Errorf("%s is less than %s, a manifest of the largest size and the room kept for small ones", v, formatSize(handlers.MinManifestBudget))
			}
			c.ManifestBudget = n
			return nil
		}},

	{"ui", "true", "serve the web interface at /ui/ on the API's address (false: the API only)",
		func(c *Config, v string) (err error) { c.UI, err = strconv.ParseBool(v); return err }},

	{"gc-disabled", "false", "do not run online garbage collection in this process (run `berth gc` elsewhere)",
		func(c *Config, v string) (err error) { c.GCDisabled, err = strconv.ParseBool(v); return err }},
	{"gc-review-delay", "24h", "an unreferenced blob (or blob link) is collected only once it is this old, so clients can push the manifest that uses it",
		duration(func(c *Config) *time.Duration { return &c.GCReviewDelay })},
	{"gc-tombstone-retention", "168h", "deleted manifests stay restorable (and keep their blobs) this long before they are purged",
		duration(func(c *Config) *time.Duration { return &c.GCTombstoneRetention })},
	{"gc-upload-timeout", "24h", "upload sessions idle this long are ended and their partial data deleted",
		duration(func(c *Config) *time.Duration { return &c.GCUploadTimeout })},
	{"gc-untagged-after", "", "delete manifests untagged for this long that no index or referrer needs (empty: keep untagged manifests)",
		func(c *Config, v string) error {
			c.GCUntaggedAfter = nil
			if v == "" {
				return nil
			}
			var d time.Duration
			if err := duration(func(*Config) *time.Duration { return &d })(c, v); err != nil {
				return err
			}
			c.GCUntaggedAfter = &d
			return nil
		}},
	{"gc-interval", "1m", "time between garbage collection passes",
		duration(func(c *Config) *time.Duration { return &c.GCInterval })},
	{"gc-sweep-interval", "24h", "time between sweeps of the blob store for bytes without database rows (one replica at a time)",
		duration(func(c *Config) *time.Duration { return &c.GCSweepInterval })},
	{"gc-batch", "100", "garbage candidates claimed per transaction round",
		positiveInt(func(c *Config) *int { return &c.GCBatch })},
	{"webhook-workers", "8", "webhook deliveries this replica sends at once (each to a different webhook and repository)",
		positiveInt(func(c *Config) *int { return &c.WebhookWorkers })},
	{"webhook-max-attempts", "25", "attempts at a webhook delivery before it is dead-lettered (25: about a day of retries)",
		positiveInt(func(c *Config) *int { return &c.WebhookMaxAttempts })},
	{"webhook-backoff", "1s", "wait after a failed webhook delivery; it doubles with each failure, up to 2h, with ±20% jitter",
		positiveDuration(func(c *Config) *time.Duration { return &c.WebhookBackoff })},
	{"webhook-lease", "30s", "how long a replica's claim on a delivery lasts (at least twice the webhook's timeout) before another replica takes it over",
		positiveDuration(func(c *Config) *time.Duration { return &c.WebhookLease })},
	{"webhook-poll", "1s", "how often a replica looks for deliveries written by other replicas (its own start at once)",
		positiveDuration(func(c *Config) *time.Duration { return &c.WebhookPoll })},
	{"events-retention", "168h", "how long delivered and dead-lettered deliveries, and events, are kept",
		positiveDuration(func(c *Config) *time.Duration { return &c.EventsRetention })},
	{"retention-poll", "1m", "how often a replica looks for retention policies whose --schedule is due (one replica runs each)",
		positiveDuration(func(c *Config) *time.Duration { return &c.RetentionPoll })},
	{"pull-events-flush", "1s", "how often buffered pull events are written (what a crash of the replica may lose)",
		positiveDuration(func(c *Config) *time.Duration { return &c.PullEventsFlush })},
	{"pull-stats-flush", "10s", "how often the pull counts of manifests and tags are added to the database (what a crash of the replica may lose); 0 turns pull statistics off",
		duration(func(c *Config) *time.Duration { return &c.PullStatsFlush })},
	{"proxy-upstream-timeout", "10s", "pull-through cache: how long an upstream may take to connect, to answer, and between two reads of a blob; past it the upstream counts as unreachable",
		positiveDuration(func(c *Config) *time.Duration { return &c.ProxyUpstreamTimeout })},
	{"proxy-fetch-lease", "30s", "pull-through cache: how long a replica's claim on an upstream fetch lasts without renewal (it renews every third of it): how soon a killed replica's fetch is taken over",
		positiveDuration(func(c *Config) *time.Duration { return &c.ProxyFetchLease })},
	{"proxy-secret-key", "", "pull-through cache: key (16 characters or more) that seals upstream passwords; empty: a key kept in the database (see README, Pull-through cache)",
		str(func(c *Config) *string { return &c.ProxySecretKey })},
}

// positiveDuration parses a duration above zero.
func positiveDuration(p func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		if err := duration(p)(c, v); err != nil {
			return err
		}
		if *p(c) == 0 {
			return fmt.Errorf("must be positive: %s", v)
		}
		return nil
	}
}

// gcPolicy is the part of the garbage collection settings that the
// database layer needs to queue candidates.
func (c Config) gcPolicy() db.GCPolicy {
	p := db.GCPolicy{ReviewDelay: c.GCReviewDelay, TombstoneRetention: c.GCTombstoneRetention}
	if c.GCUntaggedAfter != nil {
		p.CollectUntagged, p.UntaggedAfter = true, *c.GCUntaggedAfter
	}
	return p
}

// dbOptions are the database settings of every command.
func (c Config) dbOptions(log *slog.Logger) db.Options {
	o := db.Options{MaxConns: int32(c.DBMaxConns), GC: c.gcPolicy(), Timeout: c.DBTimeout, Logger: log}
	// Events written by this process (berth gc too) name it, and link to
	// the registry at its external URL, or at this host and port.
	o.Events = db.EventsConfig{Source: db.EventSource{Addr: sourceAddr(c.Listen)}, BaseURL: c.ExternalURL}
	if o.Events.BaseURL == "" {
		o.Events.BaseURL = "http://" + o.Events.Source.Addr
	}
	return o
}

// loadConfig resolves the settings from args (flags), env and the YAML file
// named by --config or BERTH_CONFIG. usage receives the --help text. extra
// adds flags of the command itself (not settings: no environment or file).
// Positional arguments are refused.
func loadConfig(cmd string, args []string, getenv func(string) string, usage io.Writer, extra ...func(*flag.FlagSet)) (Config, error) {
	c, rest, err := loadCommandConfig(cmd, "", args, getenv, usage, extra...)
	if err != nil {
		return Config{}, err
	}
	if len(rest) > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %s", strings.Join(rest, " "))
	}
	return c, nil
}

// loadCommandConfig is loadConfig for a command that takes positional
// arguments (berth user add NAME): it returns them. Flags may come before,
// between or after them, as --flag value or --flag=value; "--" ends the
// flags. synopsis is the usage line after "berth", e.g. "user add NAME
// --password-stdin [flags]"; empty means "<cmd> [flags]".
func loadCommandConfig(cmd, synopsis string, args []string, getenv func(string) string, usage io.Writer,
	extra ...func(*flag.FlagSet)) (Config, []string, error) {
	fs := flag.NewFlagSet("berth "+cmd, flag.ContinueOnError)
	fs.SetOutput(usage)
	for _, add := range extra {
		add(fs)
	}
	flagVals := make(map[string]*flagValue, len(settings))
	for _, s := range settings {
		help := fmt.Sprintf("%s (env %s", s.usage, s.env())
		if s.def != "" {
			help += fmt.Sprintf(", default %q", s.def)
		}
		v := &flagValue{boolean: s.def == "true" || s.def == "false"}
		flagVals[s.name] = v
		fs.Var(v, s.name, help+")")
	}
	if synopsis == "" {
		synopsis = cmd + " [flags]"
	}
	fs.Usage = func() {
		fmt.Fprintf(usage, "Usage: berth %s\n\nEvery setting comes from a flag, else the environment, else the YAML file, else its default.\n\n", synopsis)
		fs.PrintDefaults()
	}
	flagArgs, positional := splitArgs(fs, args)
	if err := fs.Parse(flagArgs); err != nil {
		return Config{}, nil, err
	}
	setFlags := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { setFlags[f.Name] = true })

	values := make(map[string]string, len(settings))
	source := make(map[string]string, len(settings))
	for _, s := range settings {
		values[s.name], source[s.name] = s.def, "default"
	}
	apply := func(name, v, from string) { values[name], source[name] = v, from }

	configFile := getenv("BERTH_CONFIG")
	if setFlags["config"] {
		configFile = flagVals["config"].s
	}
	if configFile != "" {
		fileVals, err := readConfigFile(configFile)
		if err != nil {
			return Config{}, nil, err
		}
		for _, s := range settings {
			if v, ok := fileVals[s.yamlKey()]; ok {
				apply(s.name, v, configFile)
			}
		}
	}
	for _, s := range settings {
		if v := getenv(s.env()); v != "" {
			apply(s.name, v, s.env())
		}
		if setFlags[s.name] {
			apply(s.name, flagVals[s.name].s, "--"+s.name)
		}
	}
	var c Config
	for _, s := range settings {
		if err := s.set(&c, values[s.name]); err != nil {
			return Config{}, nil, fmt.Errorf("setting %s (from %s): %w", s.name, source[s.name], err)
		}
	}
	c.ConfigFile = configFile
	if c.StorageDir == "" {
		c.StorageDir = filepath.Join(c.DataDir, "blobs")
	}
	if c.Storage == "s3" && c.S3.Bucket == "" {
		return Config{}, nil, errors.New("storage s3 needs a bucket: set --s3-bucket or BERTH_S3_BUCKET")
	}
	// Credentials come from the SDK's standard chain (AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY, shared config files, instance roles), never
	// from a berth setting, so that they stay out of config files and logs.
	return c, positional, nil
}

// splitArgs separates flags (with their values) from positional arguments,
// so that flags may follow the positional arguments, which package flag
// does not allow. A flag not defined in fs is passed on as one argument,
// for fs.Parse to report.
func splitArgs(fs *flag.FlagSet, args []string) (flags, positional []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return flags, append(positional, args[i+1:]...)
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
	}
	return flags, positional
}

// flagValue holds a setting's flag as text; boolean settings may be given
// as a bare --flag, meaning true.
type flagValue struct {
	s       string
	boolean bool
}

func (v *flagValue) String() string     { return v.s }
func (v *flagValue) Set(s string) error { v.s = s; return nil }
func (v *flagValue) IsBoolFlag() bool   { return v.boolean }

// readConfigFile reads a flat YAML mapping of setting names to scalars.
func readConfigFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config file: %w", err)
	}
	var raw map[string]yaml.Node
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	known := map[string]bool{}
	for _, s := range settings {
		known[s.yamlKey()] = true
	}
	out := make(map[string]string, len(raw))
	var unknown []string
	for k, node := range raw {
		if !known[k] {
			unknown = append(unknown, k)
			continue
		}
		if node.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("config file %s: %s must be a single value", path, k)
		}
		out[k] = node.Value
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, errors.New("config file " + path + ": unknown settings: " + strings.Join(unknown, ", "))
	}
	return out, nil
}
