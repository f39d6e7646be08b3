// Package retention runs the retention policies whose schedule is due, in
// every replica of berth serve. Policies live in the database (see
// db/retention.go, which also computes and removes what a policy removes);
// this package only decides when. Each replica polls; a policy due in
// several replicas at once is run by one of them, the one that takes the
// policy's session lock, and the others find it no longer due once they
// get the lock, or skip it while it is held.
package retention

import (
	"context"
	"log/slog"
	"time"

	"github.com/berth-registry/berth/db"
)

// Config tunes a Scheduler.
type Config struct {
	// Poll is how often the scheduler looks for due policies: a policy
	// runs at most this late.
	Poll   time.Duration
	Logger *slog.Logger
	// Ran, when set, is called after each run of a policy by this
	// scheduler (for tests).
	Ran func(policy string, removed []db.Removal)
}

// Scheduler runs due retention policies.
type Scheduler struct {
	db  *db.DB
	cfg Config
}

// New returns a scheduler; Run starts it.
func New(d *db.DB, cfg Config) *Scheduler {
	if cfg.Poll <= 0 {
		cfg.Poll = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Scheduler{db: d, cfg: cfg}
}

// Run runs due policies every Poll until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Poll)
	defer t.Stop()
	for {
		s.RunDue(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RunDue runs, one after the other, the policies due now that no other
// process is running, and returns how many it ran. Failures are logged:
// the policy is due again at the next poll.
func (s *Scheduler) RunDue(ctx context.Context) int {
	names, err := s.db.RetentionDue(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.cfg.Logger.Warn("retention: list due policies", "err", err)
		}
		return 0
	}
	ran := 0
	for _, name := range names {
		if ctx.Err() != nil {
			return ran
		}
		start := time.Now()
		removed, did, err := s.db.RetentionRunDue(ctx, name)
		if err != nil {
			s.cfg.Logger.Warn("retention: run failed", "policy", name, "err", err)
			continue
		}
		if !did {
			continue // another replica runs it, or just did
		}
		ran++
		tags := 0
		for _, r := range removed {
			if r.Tag != "" {
				tags++
			}
		}
		s.cfg.Logger.Info("retention: policy ran", "policy", name, "tags_removed", tags,
			"manifests_removed", len(removed)-tags, "took", time.Since(start).Round(time.Millisecond))
		if s.cfg.Ran != nil {
			s.cfg.Ran(name, removed)
		}
	}
	return ran
}
