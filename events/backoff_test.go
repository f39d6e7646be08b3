package events

import (
	"testing"
	"time"
)

// Each wait is the first one doubled once per earlier failure, capped at
// MaxBackoff, and then jittered by at most 20% either way.
func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	for _, first := range []time.Duration{time.Millisecond, 5 * time.Millisecond, time.Second, 90 * time.Minute, 3 * time.Hour} {
		base := first
		for attempt := 1; attempt <= 40; attempt++ {
			if attempt > 1 {
				base = min(base*2, MaxBackoff)
			}
			want := min(base, MaxBackoff)
			lo, hi := time.Duration(float64(want)*0.8), time.Duration(float64(want)*1.2)
			least, most := time.Duration(1<<62), time.Duration(0)
			for range 200 {
				d := Backoff(first, attempt)
				if d < lo || d > hi {
					t.Fatalf("Backoff(%v, %d) = %v, want within [%v, %v]", first, attempt, d, lo, hi)
				}
				least, most = min(least, d), max(most, d)
			}
			// 200 draws that all land in the middle fifth of the range
			// would mean there is no jitter (chance: 0.8^200 each side).
			if least > time.Duration(float64(want)*0.9) || most < time.Duration(float64(want)*1.1) {
				t.Errorf("Backoff(%v, %d): 200 draws within [%v, %v] of %v: no jitter?", first, attempt, least, most, want)
			}
		}
	}
}

// The first waits double: attempt 2 waits about twice as long as attempt
// 1, and the cap holds from the attempt where doubling passes it.
func TestBackoffDoublesUpToTheCap(t *testing.T) {
	t.Parallel()
	// Without jitter the waits are 1s, 2s, 4s, ... 4096s (attempt 13),
	// then 8192s > 2h: capped from attempt 14 on.
	for attempt, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second,
		13: 4096 * time.Second, 14: MaxBackoff, 25: MaxBackoff, 1000: MaxBackoff} {
		d := Backoff(time.Second, attempt)
		if d < want*8/10 || d > want*12/10 {
			t.Errorf("Backoff(1s, %d) = %v, want %v ±20%%", attempt, d, want)
		}
	}
}

// With the defaults (1s, 25 attempts), the 24 waits between the attempts
// add up to about a day, as the documentation promises.
func TestBackoffDefaultsSpanADay(t *testing.T) {
	t.Parallel()
	for range 100 {
		var total time.Duration
		for attempt := 1; attempt < DefaultMaxAttempts; attempt++ {
			total += Backoff(DefaultBackoff, attempt)
		}
		if total < 20*time.Hour || total > 30*time.Hour {
			t.Fatalf("the %d waits add up to %v, want about a day (20h to 30h)", DefaultMaxAttempts-1, total)
		}
	}
}
