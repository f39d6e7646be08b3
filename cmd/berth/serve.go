package main

import (
	"context"

	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // served only on --debug-listen
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/gc"
	"github.com/berth-registry/berth/handlers"
	"github.com/berth-registry/berth/metrics"
	"github.com/berth-registry/berth/pgembed"
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
	debug    *http.Server // --debug-listen, when set
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
	if c.AutoMigrate {
		if err := db.Migrate(dbase.url); err != nil {
			return err
		}
	}
	m.db, err = db.Open(ctx, dbase.url, db.Options{MaxConns: int32(c.DBMaxConns), GC: c.gcPolicy()})
	if err != nil {
		return err
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
	api := handlers.New(handlers.Options{
		DB: m.db, Blobs: store, Logger: m.Logger,
		Registry: metrics.Registry(m.db, collector, m.Logger),
		Ready: func(ctx context.Context) error {
			if err := m.db.Ping(ctx); err != nil {
				return fmt.Errorf("database: %w", err)
			}
			if err := m.db.SchemaCurrent(ctx); err != nil {
				return err
			}
			return store.Ping(ctx)
		},
		Redirect:       redirector(c, store),
		ManifestBudget: c.ManifestBudget,
	})
	m.listener, err = net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.Listen, err)
	}
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
	if c.DebugListen != "" {
		// A separate listener, so profiles are never exposed with the API.
		ln, err := net.Listen("tcp", c.DebugListen)
		if err != nil {
			return fmt.Errorf("listen on %s for --debug-listen: %w", c.DebugListen, err)
		}
		m.debug = &http.Server{Handler: http.DefaultServeMux, ReadHeaderTimeout: 10 * time.Second}
		go m.debug.Serve(ln)
	}
	where := c.StorageDir
	if c.Storage == "s3" {
		where = "s3://" + c.S3.Bucket + "/" + c.S3.Prefix
	}
	m.Logger.Info("berth serving", "addr", m.listener.Addr().String(),
		"storage", c.Storage, "blobs", where, "database", dbase.describe(), "gc", !c.GCDisabled)
	return nil
}

// Addr is the address the registry listens on (useful with --listen :0).
func (m *Main) Addr() net.Addr { return m.listener.Addr() }

// Close stops accepting connections, lets in-flight requests finish until
// ctx ends, then closes the database and stops the embedded PostgreSQL.
func (m *Main) Close(ctx context.Context) error {
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
	if m.debug != nil {
		m.debug.Close()
	}
	if m.stopGC != nil {
		m.stopGC()
		<-m.gcDone
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

// database is the PostgreSQL that berth uses: the configured URL, or an
// embedded server that berth started and must stop.
type database struct {
	url      string
	embedded *pgembed.Server
	lock     *os.File
}

// describe names the database for the start-up log: the embedded one by
// its URL, so that `berth gc` or psql can reach it while berth runs; an
// external one without its URL, which may hold a password.
func (d *database) describe() string {
	if d.embedded != nil {
		return "embedded " + d.url
	}
	return "external"
}

func (d *database) close(ctx context.Context) error {
	var err error
	if d.embedded != nil {
		err = d.embedded.Stop(ctx)
	}
	if d.lock != nil {
		d.lock.Close() // releases the flock
	}
	return err
}

// openDatabase returns the configured database, or starts the embedded one
// in <data dir>/postgres. A lock file keeps two berth processes from
// sharing one embedded cluster: the second would take the first one's
// server for a leftover and stop it.
func openDatabase(ctx context.Context, c Config, log *slog.Logger) (*database, error) {
	if c.DatabaseURL != "" {
		return &database{url: c.DatabaseURL}, nil
	}
	if err := os.MkdirAll(c.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	lockPath := filepath.Join(c.DataDir, "berth.lock")
	lock, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", lockPath, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("another berth process is using the embedded database in %s; give each process its own --data-dir, or share an external database with --database-url", c.DataDir)
	}
	log.Info("no database URL configured: starting embedded PostgreSQL", "dir", filepath.Join(c.DataDir, "postgres"))
	srv, err := pgembed.Start(ctx, pgembed.Options{
		Dir: filepath.Join(c.DataDir, "postgres"), BinDir: c.PostgresBinDir, Logger: log})
	if err != nil {
		lock.Close()
		return nil, err
	}
	return &database{url: srv.URL(), embedded: srv, lock: lock}, nil
}
