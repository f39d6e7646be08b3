package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // registers on http.DefaultServeMux, served only on --debug-listen
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/events"
	"github.com/berth-registry/berth/gc"
	"github.com/berth-registry/berth/handlers"
	"github.com/berth-registry/berth/metrics"
	"github.com/berth-registry/berth/pgembed"
	"github.com/berth-registry/berth/proxy"
	"github.com/berth-registry/berth/pullstats"
	"github.com/berth-registry/berth/retention"
)

// Main is one running registry: what `berth serve` starts. Tests start it
// directly, without os.Args.
type Main struct {
	Config Config
	Logger *slog.Logger

	database *database
	db       *db.DB
	server   *http.Server
	listener net.Listener
	served   chan error
	stopGC   context.CancelFunc
	gcDone   chan struct{}
	// The webhook deliveries and the pull events buffer.
	stopEvents context.CancelFunc
	eventsDone sync.WaitGroup
	api        *handlers.Handler
	admin      *asideServer // --admin-listen, when set

	closeOnce sync.Once
	closeErr  error
	debug     *asideServer // --debug-listen (deprecated), when set
}

// NewMain returns a Main with default logging, before configuration.
func NewMain() *Main {
	return &Main{Logger: slog.Default()}
}

// ParseFlags loads the configuration from args, the environment and the
// config file, and sets up logging.
func (m *Main) ParseFlags(args []string, getenv func(string) string, usage io.Writer) error {
	c, err := loadConfig("serve", args, getenv, usage)
	if err != nil {
		return err
	}
	m.Config = c
	m.Logger = newLogger(c, os.Stderr)
	return nil
}

func newLogger(c Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if c.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(handlers.LogHandler(h))
}

// Run opens the database (starting the embedded one if no URL is
// configured), migrates it, opens the blob store and starts serving. It
// returns once the listener is open; Close stops everything.
func (m *Main) Run(ctx context.Context) error {
	c := m.Config
	dbase, err := openDatabase(ctx, c, m.Logger)
	if err != nil {
		return err
	}
	m.database = dbase
	// Connect first: the connection has a deadline (--db-timeout), so a
	// database that does not answer stops the start with an error rather
	// than a hang in the migrations.
	waker := events.NewWaker()
	instance := newInstanceID()
	opts := c.dbOptions(m.Logger)
	opts.Events.Source.InstanceID, opts.Events.Written = instance, waker.Wake
	m.db, err = db.Open(ctx, dbase.url, opts)
	if err != nil {
		return err
	}
	if c.AutoMigrate {
		if err := db.Migrate(dbase.url); err != nil {
			return err
		}
	}
	store, err := openStore(ctx, c)
	if err != nil {
		return err
	}
	var collector *gc.Collector
	if !c.GCDisabled {
		gcCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		m.stopGC, m.gcDone = cancel, make(chan struct{})
		collector = newCollector(c, m.db, store, m.Logger)
		go func() {
			defer close(m.gcDone)
			collector.Run(gcCtx)
		}()
	}
	authConfig, err := authConfig(ctx, c, m.db)
	if err != nil {
		return err
	}
	evCtx, stopEvents := context.WithCancel(context.WithoutCancel(ctx))
	m.stopEvents = stopEvents
	worker := events.NewWorker(m.db, events.Config{
		Owner: instance, Workers: c.WebhookWorkers, MaxAttempts: c.WebhookMaxAttempts, Backoff: c.WebhookBackoff,
		Lease: c.WebhookLease, Retention: c.EventsRetention, Poll: c.WebhookPoll, Waker: waker, Logger: m.Logger,
	})
	pulls := events.NewPulls(m.db, c.PullEventsFlush, m.Logger)
	scheduler := retention.New(m.db, retention.Config{Poll: c.RetentionPoll, Logger: m.Logger})
	m.eventsDone.Add(3)
	go func() { defer m.eventsDone.Done(); worker.Run(evCtx) }()
	go func() { defer m.eventsDone.Done(); pulls.Run(evCtx) }()
	// Stopped with the events: a run in progress ends its transaction
	// (rolled back) and the policy is due again at the next start.
	go func() { defer m.eventsDone.Done(); scheduler.Run(evCtx) }()
	registry := metrics.Registry(m.db, collector, worker, pulls, m.Logger)
	var pullCounter handlers.PullCounter // nil, not a nil *pullstats.Stats
	if c.PullStatsFlush > 0 {
		stats := pullstats.New(m.db, c.PullStatsFlush, m.Logger)
		m.eventsDone.Add(1)
		go func() { defer m.eventsDone.Done(); stats.Run(evCtx) }()
		registry.MustRegister(metrics.PullStats(stats))
		pullCounter = stats
	}
	cache := proxy.New(proxy.Config{DB: m.db, Blobs: store, Timeout: c.ProxyUpstreamTimeout, Lease: c.ProxyFetchLease,
		SecretKey: c.ProxySecretKey, Instance: instance, Logger: m.Logger, Registry: registry})
	api := handlers.New(handlers.Options{
		DB: m.db, Blobs: store, Logger: m.Logger,
		Registry: registry,
		Ready: func(ctx context.Context) error {
			if err := m.db.Ping(ctx); err != nil {
				return &handlers.NotReadyError{Part: "database", Err: err}
			}
			if err := m.db.SchemaCurrent(ctx); err != nil {
				return &handlers.NotReadyError{Part: "database schema", Err: err}
			}
			if err := store.Ping(ctx); err != nil {
				return &handlers.NotReadyError{Part: "blob store", Err: err}
			}
			return nil
		},
		Redirect:      redirector(c, store),
		AdminSeparate: c.AdminListen != "",
		Limits: handlers.Limits{
			UploadSessions: c.MaxUploadSessions,
			MinBodyRate:    c.MinBodyRate,
			BodyRateWindow: c.BodyRateWindow,
		},
		ManifestBudget: c.ManifestBudget,
		Auth:           authConfig,
		Pulls:          pulls,
		PullStats:      pullCounter,
		NoUI:           !c.UI,
		Proxy:          cache,
	})
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.Listen, err)
	}
	m.listener = handlers.LimitConnections(ln, connectionLimit(c.MaxConnections), m.Logger, registry)
	m.api = api
	m.server = &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 30 * time.Second,
		// Idle keep-alive connections are closed after this; there is no
		// overall read timeout, since a layer upload may take an hour.
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(m.Logger.Handler(), slog.LevelWarn),
	}
	m.served = make(chan error, 1)
	go func() { m.served <- m.server.Serve(m.listener) }()
	if c.AdminListen != "" {
		// A listener of its own, so that metrics, the reasons a replica is
		// not ready and profiles are never exposed with the API.
		if m.admin, err = serveAside(c.AdminListen, "--admin-listen", api.Admin()); err != nil {
			return err
		}
	}
	if c.DebugListen != "" {
		m.Logger.Warn("--debug-listen is deprecated: --admin-listen serves the profiler, metrics and readiness details")
		if m.debug, err = serveAside(c.DebugListen, "--debug-listen", http.DefaultServeMux); err != nil {
			return err
		}
	}
	where := c.StorageDir
	if c.Storage == "s3" {
		where = "s3://" + c.S3.Bucket + "/" + c.S3.Prefix
	}
	m.Logger.Info("berth serving", "addr", m.listener.Addr().String(),
		"storage", c.Storage, "blobs", where, "database", dbase.describe(), "gc", !c.GCDisabled,
		"max_connections", connectionLimit(c.MaxConnections), "auth", c.Auth)
	if c.Auth == handlers.AuthNone && !loopback(m.listener.Addr()) {
		m.Logger.Warn("authentication is off (--auth none) and the API listens beyond this host: anyone who reaches it may push, untag and delete; see README, Authentication",
			"addr", m.listener.Addr().String())
	}
	return nil
}

// newInstanceID names this process in events (source.instanceID) and in
// its claims on webhook deliveries: random, new at every start.
func newInstanceID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sourceAddr is this process in events (source.addr): the host name and
// the port it listens on, as the reference registry reports it.
func sourceAddr(listen string) string {
	host, _ := os.Hostname()
	_, port, err := net.SplitHostPort(listen)
	if err != nil || host == "" {
		return listen
	}
	return net.JoinHostPort(host, port)
}

// connectionLimit is the --max-connections to enforce: as configured, or
// by default a quarter of the open-file limit (every connection holds a
// file, an upload one more, and blobs being served one each), at most
// 10,000.
func connectionLimit(configured int) int {
	if configured > 0 {
		return configured
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return 10000
	}
	return int(min(rl.Cur/4, 10000))
}

// serveAside serves h on its own listener at addr (the admin or debug
// endpoints), closed by Close.
func serveAside(addr, flag string, h http.Handler) (*asideServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s for %s: %w", addr, flag, err)
	}
	s := &asideServer{Server: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, ln: ln}
	go s.Serve(ln)
	return s, nil
}

type asideServer struct {
	*http.Server
	ln net.Listener
}

// Addr is the address the registry listens on (useful with --listen :0).
func (m *Main) Addr() net.Addr { return m.listener.Addr() }

// AdminAddr is the address of the admin listener, nil without one.
func (m *Main) AdminAddr() net.Addr {
	if m.admin == nil {
		return nil
	}
	return m.admin.ln.Addr()
}

// Close stops accepting connections, lets in-flight requests finish until
// ctx ends, then closes the database and stops the embedded PostgreSQL.
// Later calls return what the first one did.
func (m *Main) Close(ctx context.Context) error {
	m.closeOnce.Do(func() { m.closeErr = m.close(ctx) })
	return m.closeErr
}

func (m *Main) close(ctx context.Context) error {
	var errs []error
	if m.server != nil {
		if err := m.server.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down HTTP server: %w", err))
			m.server.Close()
		}
		if err := <-m.served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, err)
		}
	}
	for _, s := range []*asideServer{m.admin, m.debug} {
		if s != nil {
			s.Close()
		}
	}
	if m.api != nil {
		if err := m.api.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("close the API: %w", err))
		}
	}
	if m.stopGC != nil {
		m.stopGC()
		<-m.gcDone
	}
	if m.stopEvents != nil {
		// After the server: the last pulls are written, the deliveries in
		// flight recorded.
		m.stopEvents()
		m.eventsDone.Wait()
	}
	if m.db != nil {
		m.db.Close()
	}
	if m.database != nil {
		errs = append(errs, m.database.close(context.WithoutCancel(ctx)))
	}
	return errors.Join(errs...)
}

// store is what serve needs of a blob store: everything, and a probe.
type store interface {
	blobstore.Store
	Ping(context.Context) error
}

// openStore opens the configured blob store.
func openStore(ctx context.Context, c Config) (store, error) {
	if c.Storage == "s3" {
		return blobstore.NewS3(ctx, c.S3)
	}
	return blobstore.NewFS(c.StorageDir)
}

// redirector returns the store as a Presigner when blob downloads should
// be redirected to it.
func redirector(c Config, s store) handlers.Presigner {
	if p, ok := s.(handlers.Presigner); ok && c.S3Redirect {
		return p
	}
	return nil
}

func newCollector(c Config, d *db.DB, store gc.Store, log *slog.Logger) *gc.Collector {
	return gc.New(d, store, gc.Config{
		Policy:        c.gcPolicy(),
		UploadTimeout: c.GCUploadTimeout,
		Interval:      c.GCInterval,
		SweepInterval: c.GCSweepInterval,
		Batch:         c.GCBatch,
		Logger:        log,
	})
}

// database is the PostgreSQL that berth uses: the configured URL, an
// embedded server that berth started and must stop, or the embedded server
// that another berth process runs on the same data directory.
type database struct {
	url      string
	embedded *pgembed.Server
	lock     *os.File // <data dir>/berth.lock, flocked while embedded runs
	owner    int      // pid of the berth process running the server, when not ours
}

// describe names the database for the start-up log: the embedded one by
// its URL, so that `berth gc` or psql can reach it while berth runs; an
// external one without its URL, which may hold a password.
func (d *database) describe() string {
	switch {
	case d.embedded != nil:
		return "embedded " + d.url
	case d.owner != 0:
		return fmt.Sprintf("embedded, run by berth process %d, %s", d.owner, d.url)
	}
	return "external"
}

func (d *database) close(ctx context.Context) error {
	var err error
	if d.embedded != nil {
		// Withdraw the URL first: a command starting now waits for the
		// lock instead of connecting to a server that is stopping.
		d.lock.Truncate(0)
		err = d.embedded.Stop(ctx)
	}
	if d.lock != nil {
		d.lock.Close() // releases the flock
	}
	return err
}

// lockFileName is the file in the data directory that the process running
// the embedded PostgreSQL holds an exclusive flock on, and in which it
// publishes the server's URL once the server accepts connections:
//
//	# berth: the process holding a lock on this file runs the embedded PostgreSQL of this data directory
//	pid 1234
//	url postgres://berth@/berth?host=/srv/berth/data/postgres&port=5432&sslmode=disable
//
// The kernel releases the flock when that process dies, however it dies, so
// a record left behind is recognised as stale by the lock being free.
const lockFileName = "berth.lock"

// joinTimeout bounds how long a maintenance command waits for another
// berth process to finish starting its embedded server (initdb included).
const joinTimeout = 2 * time.Minute

// openDatabase returns the configured database, or starts the embedded one
// in <data dir>/postgres, for `berth serve`. A second serve on the same
// data directory is refused: it would take the first one's server for a
// leftover and stop it.
func openDatabase(ctx context.Context, c Config, log *slog.Logger) (*database, error) {
	return embeddedDatabase(ctx, c, log, false)
}

// joinDatabase is openDatabase for the maintenance commands (berth migrate,
// gc, check): when a berth process already runs the embedded database of
// the data directory, they connect to that server instead of failing. It
// stays that process's server: if the process stops, so does the server,
// and the command's connections fail.
func joinDatabase(ctx context.Context, c Config, log *slog.Logger) (*database, error) {
	return embeddedDatabase(ctx, c, log, true)
}

func embeddedDatabase(ctx context.Context, c Config, log *slog.Logger, join bool) (*database, error) {
	if c.DatabaseURL != "" {
		return &database{url: c.DatabaseURL}, nil
	}
	if err := os.MkdirAll(c.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	lockPath := filepath.Join(c.DataDir, lockFileName)
	var deadline time.Time
	for {
		lock, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", lockPath, err)
		}
		err = syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return startEmbedded(ctx, c, log, lock)
		}
		o := readOwner(lock)
		lock.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", lockPath, err)
		}
		if !join {
			who := "another berth process"
			if o.pid != 0 {
				who += fmt.Sprintf(" (pid %d)", o.pid)
			}
			return nil, fmt.Errorf("%s is using the embedded database in %s; give each process its own --data-dir, or share an external database with --database-url", who, c.DataDir)
		}
		if o.url != "" {
			d := &database{url: o.url, owner: o.pid}
			log.Info("using the embedded PostgreSQL of the berth process running on this data directory", "database", d.describe())
			return d, nil
		}
		// The lock is held but no URL published: the other process is
		// starting its server, or stopping it and about to free the lock.
		if deadline.IsZero() {
			deadline = time.Now().Add(joinTimeout)
			log.Info("waiting for the berth process holding the lock to start its embedded PostgreSQL", "lock", lockPath)
		} else if time.Now().After(deadline) {
			return nil, fmt.Errorf("another berth process holds %s but has not started the embedded database in %s after %s; see %s.log",
				lockPath, c.DataDir, joinTimeout, filepath.Join(c.DataDir, "postgres"))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the embedded database in %s: %w", c.DataDir, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startEmbedded starts the embedded server under lock, which this process
// has just flocked, and publishes its URL there.
func startEmbedded(ctx context.Context, c Config, log *slog.Logger, lock *os.File) (*database, error) {
	// Whatever the file holds was written by a process that is gone.
	if err := lock.Truncate(0); err != nil {
		lock.Close()
		return nil, fmt.Errorf("clear %s: %w", lock.Name(), err)
	}
	log.Info("no database URL configured: starting embedded PostgreSQL", "dir", filepath.Join(c.DataDir, "postgres"))
	srv, err := pgembed.Start(ctx, pgembed.Options{
		Dir: filepath.Join(c.DataDir, "postgres"), BinDir: c.PostgresBinDir, Logger: log})
	if err != nil {
		lock.Close()
		return nil, err
	}
	d := &database{url: srv.URL(), embedded: srv, lock: lock}
	// One write, the URL last: a reader takes the URL only from a complete
	// line, so it never sees half of it.
	record := fmt.Sprintf("# berth: the process holding a lock on this file runs the embedded PostgreSQL of this data directory\npid %d\nurl %s\n",
		os.Getpid(), d.url)
	if _, err := lock.WriteAt([]byte(record), 0); err != nil {
		d.close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("write %s: %w", lock.Name(), err)
	}
	return d, nil
}

// owner is what the lock file says about the process running the embedded
// server; url is empty until the server accepts connections.
type owner struct {
	pid int
	url string
}

func readOwner(f *os.File) owner {
	b, _ := io.ReadAll(io.NewSectionReader(f, 0, 64<<10))
	var o owner
	for line := range strings.Lines(string(b)) {
		line, complete := strings.CutSuffix(line, "\n")
		if !complete {
			break // still being written
		}
		key, val, _ := strings.Cut(line, " ")
		switch key {
		case "pid":
			o.pid, _ = strconv.Atoi(val)
		case "url":
			o.url = val
		}
	}
	return o
}
