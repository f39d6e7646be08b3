// Package metrics exports what a Berth replica knows about itself and the
// registry to Prometheus: the database pool, open upload sessions and
// garbage collection. Request metrics are the handlers package's own.
//
// Values that live in the database (upload sessions, the garbage queue) are
// read when Prometheus scrapes, so every replica reports the registry-wide
// figure; the pool and the collector's totals are this replica's.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/events"
	"github.com/berth-registry/berth/gc"
)

// Registry returns a registry with the Go runtime and process metrics and
// Berth's own.
func Registry(d *db.DB, collector *gc.Collector, worker *events.Worker, pulls *events.Pulls, log *slog.Logger) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&berth{db: d, gc: collector, worker: worker, pulls: pulls, log: log}, Usage(d, log))
	return reg
}

var (
	// pool is "main", or "reads" for the batched manifest reads.
	poolConns = prometheus.NewDesc("berth_db_pool_connections",
		"Database connections of this replica's pools, by state.", []string{"pool", "state"}, nil)
	poolMax = prometheus.NewDesc("berth_db_pool_max_connections",
		"Size limit of this replica's database pools.", []string{"pool"}, nil)
	poolAcquires = prometheus.NewDesc("berth_db_pool_acquires_total",
		"Connections taken from the pool.", []string{"pool"}, nil)
	poolAcquireSeconds = prometheus.NewDesc("berth_db_pool_acquire_seconds_total",
		"Time spent waiting for a pool connection.", []string{"pool"}, nil)
	manifestReads = prometheus.NewDesc("berth_db_manifest_reads_total",
		"Manifest lookups by tag or digest this replica answered.", nil, nil)
	manifestStatements = prometheus.NewDesc("berth_db_manifest_read_statements_total",
		"Database statements that answered them: concurrent lookups share one.", nil, nil)
	dbUp = prometheus.NewDesc("berth_db_up",
		"1 while this replica's database statements get answers, 0 during an outage.", nil, nil)
	dbOutages = prometheus.NewDesc("berth_db_outages_total",
		"Times this replica found the database unreachable after it had answered.", nil, nil)
	dbUnavailable = prometheus.NewDesc("berth_db_unavailable_total",
		"Database statements of this replica that failed because the database was unreachable or did not answer in time.", nil, nil)
	uploads = prometheus.NewDesc("berth_upload_sessions",
		"Open upload sessions in the registry.", nil, nil)
	uploadBytes = prometheus.NewDesc("berth_upload_session_bytes",
		"Bytes received by the open upload sessions of the registry: partial data that garbage collection deletes when a session expires.", nil, nil)
	gcQueue = prometheus.NewDesc("berth_gc_candidates",
		"Garbage collection candidates queued in the registry, and those due now.", []string{"state"}, nil)
	gcItems = prometheus.NewDesc("berth_gc_items_total",
		"Items this replica's collector removed, by kind.", []string{"kind"}, nil)
	gcBytes = prometheus.NewDesc("berth_gc_freed_bytes_total",
		"Bytes of storage this replica's collector freed.", nil, nil)
	webhookPending = prometheus.NewDesc("berth_webhook_pending",
		"Deliveries of the registry waiting for their webhook, in flight included.", []string{"webhook"}, nil)
	webhookDead = prometheus.NewDesc("berth_webhook_dead",
		"Dead-lettered deliveries of the registry, until redriven or past the retention.", []string{"webhook"}, nil)
	webhookOldest = prometheus.NewDesc("berth_webhook_oldest_pending_seconds",
		"Age of the oldest event still waiting for the webhook (0: none).", []string{"webhook"}, nil)
	webhookAttempts = prometheus.NewDesc("berth_webhook_deliveries_total",
		"This replica's delivery attempts, by webhook and outcome: delivered, retried (failed, tried again later), dead.",
		[]string{"webhook", "result"}, nil)
	retentionTags = prometheus.NewDesc("berth_retention_tags_removed_total",
		"Tags a retention policy removed since it was created, in the registry (every replica reports the same).", []string{"policy"}, nil)
	retentionManifests = prometheus.NewDesc("berth_retention_manifests_removed_total",
		"Untagged manifests a retention policy deleted since it was created, in the registry.", []string{"policy"}, nil)
	retentionLastRun = prometheus.NewDesc("berth_retention_last_run_timestamp_seconds",
		"When a retention policy last ran, by hand or scheduled, in any replica (0: never).", []string{"policy"}, nil)
	pullEvents = prometheus.NewDesc("berth_pull_events_total",
		"Pull events this replica wrote, and those it dropped (buffer full while the database was slow or down).", []string{"result"}, nil)
)

// berth is a prometheus.Collector reading its values at scrape time.
type berth struct {
	db     *db.DB
	gc     *gc.Collector // nil when collection is disabled in this process
	worker *events.Worker
	pulls  *events.Pulls
	log    *slog.Logger
}

func (b *berth) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConns, poolMax, poolAcquires, poolAcquireSeconds,
		manifestReads, manifestStatements, dbUp, dbOutages, dbUnavailable, uploads, uploadBytes, gcQueue, gcItems, gcBytes,
		webhookPending, webhookDead, webhookOldest, webhookAttempts, pullEvents,
		retentionTags, retentionManifests, retentionLastRun} {
		ch <- d
	}
}

// warn logs a failed query of a scrape, unless the database is down: that
// is logged once by db, not at every scrape.
func (b *berth) warn(msg string, err error) {
	level := slog.LevelWarn
	if errors.Is(err, db.ErrUnavailable) {
		level = slog.LevelDebug
	}
	b.log.Log(context.Background(), level, msg, "err", err)
}

// scrapeTimeout bounds the database queries of one scrape.
const scrapeTimeout = 2 * time.Second

func (b *berth) Collect(ch chan<- prometheus.Metric) {
	main, reads := b.db.Stats()
	for pool, s := range map[string]db.PoolStats{"main": main, "reads": reads} {
		ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.Idle), pool, "idle")
		ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.InUse), pool, "in_use")
		ch <- prometheus.MustNewConstMetric(poolMax, prometheus.GaugeValue, float64(s.MaxConns), pool)
		ch <- prometheus.MustNewConstMetric(poolAcquires, prometheus.CounterValue, float64(s.AcquireCount), pool)
		ch <- prometheus.MustNewConstMetric(poolAcquireSeconds, prometheus.CounterValue, s.AcquireDuration.Seconds(), pool)
	}
	lookups, statements := b.db.ManifestReadStats()
	ch <- prometheus.MustNewConstMetric(manifestReads, prometheus.CounterValue, float64(lookups))
	ch <- prometheus.MustNewConstMetric(manifestStatements, prometheus.CounterValue, float64(statements))
	health := b.db.Health()
	up := 0.0
	if health.Up {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(dbUp, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(dbOutages, prometheus.CounterValue, float64(health.Outages))
	ch <- prometheus.MustNewConstMetric(dbUnavailable, prometheus.CounterValue, float64(health.Failures))

	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	if n, size, err := b.db.UploadStats(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(uploads, prometheus.GaugeValue, float64(n))
		ch <- prometheus.MustNewConstMetric(uploadBytes, prometheus.GaugeValue, float64(size))
	} else {
		b.warn("metrics: count upload sessions", err)
	}
	if queued, due, err := b.db.GCQueueStats(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(gcQueue, prometheus.GaugeValue, float64(queued), "queued")
		ch <- prometheus.MustNewConstMetric(gcQueue, prometheus.GaugeValue, float64(due), "due")
	} else {
		b.warn("metrics: count garbage candidates", err)
	}
	if policies, err := b.db.RetentionList(ctx); err == nil {
		for _, p := range policies {
			ch <- prometheus.MustNewConstMetric(retentionTags, prometheus.CounterValue, float64(p.TagsRemoved), p.Name)
			ch <- prometheus.MustNewConstMetric(retentionManifests, prometheus.CounterValue, float64(p.ManifestsRemoved), p.Name)
			last := 0.0
			if !p.LastRunAt.IsZero() {
				last = float64(p.LastRunAt.UnixNano()) / 1e9
			}
			ch <- prometheus.MustNewConstMetric(retentionLastRun, prometheus.GaugeValue, last, p.Name)
		}
	} else {
		b.warn("metrics: read retention policies", err)
	}
	if gauges, err := b.db.WebhookGauges(ctx); err == nil {
		for _, g := range gauges {
			ch <- prometheus.MustNewConstMetric(webhookPending, prometheus.GaugeValue, float64(g.Pending), g.Name)
			ch <- prometheus.MustNewConstMetric(webhookDead, prometheus.GaugeValue, float64(g.Dead), g.Name)
			age := 0.0
			if !g.OldestPending.IsZero() {
				age = max(0, time.Since(g.OldestPending).Seconds())
			}
			ch <- prometheus.MustNewConstMetric(webhookOldest, prometheus.GaugeValue, age, g.Name)
		}
	} else {
		b.warn("metrics: read webhook queues", err)
	}
	if b.worker != nil {
		t := b.worker.Totals()
		for result, byName := range map[string]map[string]int64{"delivered": t.Delivered, "retried": t.Retried, "dead": t.Dead} {
			for name, n := range byName {
				ch <- prometheus.MustNewConstMetric(webhookAttempts, prometheus.CounterValue, float64(n), name, result)
			}
		}
	}
	if b.pulls != nil {
		ch <- prometheus.MustNewConstMetric(pullEvents, prometheus.CounterValue, float64(b.pulls.Written()), "written")
		ch <- prometheus.MustNewConstMetric(pullEvents, prometheus.CounterValue, float64(b.pulls.Dropped()), "dropped")
	}
	if b.gc == nil {
		return
	}
	t := b.gc.Totals()
	for kind, n := range map[string]int{
		"manifest_purged": t.ManifestsPurged, "manifest_untagged": t.ManifestsUntagged, "blob_link": t.LinksRemoved,
		"blob": t.BlobsDeleted, "upload": t.UploadsExpired, "orphan_blob": t.OrphanBlobs, "orphan_upload": t.OrphanUploads,
	} {
		ch <- prometheus.MustNewConstMetric(gcItems, prometheus.CounterValue, float64(n), kind)
	}
	ch <- prometheus.MustNewConstMetric(gcBytes, prometheus.CounterValue, float64(t.FreedBytes()))
}
