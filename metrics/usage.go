package metrics

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-registry/berth/db"
)

var (
	quotaLimit = prometheus.NewDesc("berth_quota_limit_bytes",
		"The limit of a quota (berth quota set), by its namespace prefix.", []string{"prefix"}, nil)
	quotaUsage = prometheus.NewDesc("berth_quota_usage_bytes",
		"What the quota's namespace uses: its live manifests and the distinct blobs they reference, each counted once.", []string{"prefix"}, nil)
	quotaWarning = prometheus.NewDesc("berth_quota_warning",
		"1 while the quota's usage is at or above its warn threshold (--warn), else 0.", []string{"prefix"}, nil)
	namespaceUsage = prometheus.NewDesc("berth_namespace_usage_bytes",
		"What each top-level namespace (the first path component of repository names) uses, blobs counted once in it; "+
			"beyond the 100 largest, the rest add up under namespace=\"(other)\". Read at most once a minute.", []string{"namespace"}, nil)
	registryUsage = prometheus.NewDesc("berth_usage_bytes",
		"What the whole registry uses: live manifests and the distinct blobs they reference, each counted once. Read at most once a minute.", nil, nil)
)

// maxNamespaceSeries bounds the namespace label: a registry with a
// namespace per user could otherwise export thousands of series.
const maxNamespaceSeries = 100

// namespaceUsageEvery is how often a scrape may recompute the namespace
// figures: they aggregate every blob reference of the registry, while the
// quota figures are a row each, read at every scrape.
const namespaceUsageEvery = time.Minute

// Usage exports the quotas and the usage of top-level namespaces.
func Usage(d *db.DB, log *slog.Logger) prometheus.Collector { return &usageCollector{db: d, log: log} }

type usageCollector struct {
	db  *db.DB
	log *slog.Logger

	mu     sync.Mutex
	at     time.Time
	spaces []db.Usage
	total  int64
}

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{quotaLimit, quotaUsage, quotaWarning, namespaceUsage, registryUsage} {
		ch <- d
	}
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	b := &berth{log: c.log}
	if qs, err := c.db.QuotaList(ctx); err == nil {
		for _, q := range qs {
			ch <- prometheus.MustNewConstMetric(quotaLimit, prometheus.GaugeValue, float64(q.Limit), q.Prefix)
			ch <- prometheus.MustNewConstMetric(quotaUsage, prometheus.GaugeValue, float64(q.Total()), q.Prefix)
			warned := 0.0
			if q.Warned() {
				warned = 1
			}
			ch <- prometheus.MustNewConstMetric(quotaWarning, prometheus.GaugeValue, warned, q.Prefix)
		}
	} else {
		b.warn("metrics: read quotas", err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) >= namespaceUsageEvery {
		spaces, err := c.db.UsageTopLevel(ctx)
		var all db.UsageReport
		if err == nil {
			all, err = c.db.UsageOf(ctx, "")
		}
		if err != nil {
			b.warn("metrics: read namespace usage", err)
		} else {
			c.at, c.spaces, c.total = time.Now(), spaces, all.Namespace.Total()
			sort.SliceStable(c.spaces, func(i, j int) bool { return c.spaces[i].Total() > c.spaces[j].Total() })
		}
	}
	if c.at.IsZero() {
		return
	}
	var other int64
	for i, u := range c.spaces {
		if i >= maxNamespaceSeries {
			other += u.Total()
			continue
		}
		ch <- prometheus.MustNewConstMetric(namespaceUsage, prometheus.GaugeValue, float64(u.Total()), u.Name)
	}
	if len(c.spaces) > maxNamespaceSeries {
		ch <- prometheus.MustNewConstMetric(namespaceUsage, prometheus.GaugeValue, float64(other), "(other)")
	}
	ch <- prometheus.MustNewConstMetric(registryUsage, prometheus.GaugeValue, float64(c.total))
}
