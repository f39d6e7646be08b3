package gc

import "sync"

// Stats accumulates what the collector freed since it started, for
// metrics.
type Stats struct {
	mu    sync.Mutex
	total Report
}

func (s *Stats) record(r Report) {
	if r.DryRun {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r.Items = nil
	s.total.Add(r)
}

// Totals returns the running totals.
func (c *Collector) Totals() Report {
	c.stats.mu.Lock()
	defer c.stats.mu.Unlock()
	return c.stats.total
}
