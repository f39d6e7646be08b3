package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-registry/berth/pullstats"
)

var (
	pullStatsFlushed = prometheus.NewDesc("berth_pull_stats_flushed_total",
		"Pulls this replica added to the pull statistics: of manifests (kind=manifest), and of those by tag (kind=tag).", []string{"kind"}, nil)
	pullStatsDropped = prometheus.NewDesc("berth_pull_stats_dropped_total",
		"Manifest pulls this replica did not add to the pull statistics: the manifest was deleted before the flush (reason=gone), or too many distinct manifests and tags waited for a flush (reason=full).", []string{"reason"}, nil)
	pullStatsBusy = prometheus.NewDesc("berth_pull_stats_busy_flushes_total",
		"Flushes of pull statistics that gave up waiting for a lock; their counts went to the next flush.", nil, nil)
	pullStatsBuffered = prometheus.NewDesc("berth_pull_stats_buffered_keys",
		"Manifests and tags whose pull counts wait in this replica's memory for a flush (what a crash would lose).", nil, nil)
)

// PullStats exports a replica's pull statistics counter.
func PullStats(s *pullstats.Stats) prometheus.Collector { return pullStatsCollector{s} }

type pullStatsCollector struct{ s *pullstats.Stats }

func (c pullStatsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- pullStatsFlushed
	ch <- pullStatsDropped
	ch <- pullStatsBusy
	ch <- pullStatsBuffered
}

func (c pullStatsCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(pullStatsFlushed, prometheus.CounterValue, float64(c.s.Flushed()), "manifest")
	ch <- prometheus.MustNewConstMetric(pullStatsFlushed, prometheus.CounterValue, float64(c.s.TagsFlushed()), "tag")
	gone, full := c.s.Dropped()
	ch <- prometheus.MustNewConstMetric(pullStatsDropped, prometheus.CounterValue, float64(gone), "gone")
	ch <- prometheus.MustNewConstMetric(pullStatsDropped, prometheus.CounterValue, float64(full), "full")
	ch <- prometheus.MustNewConstMetric(pullStatsBusy, prometheus.CounterValue, float64(c.s.Busy()))
	ch <- prometheus.MustNewConstMetric(pullStatsBuffered, prometheus.GaugeValue, float64(c.s.Buffered()))
}
