package auth

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestThrottle(t *testing.T) {
	t.Parallel()
	t0 := testNow
	type step struct {
		op         string // "fail", "ok" or "delay"
		user, addr string
		at         time.Duration // after t0
		want       time.Duration // for "delay"
	}
	ms := time.Millisecond
	tests := []struct {
		name  string
		steps []step
	}{
		{"nothing failed", []step{
			{"delay", "alice", "10.0.0.1", 0, 0},
		}},
		{"doubling to the cap", []step{
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"delay", "alice", "10.0.0.1", 0, 100 * ms},
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"delay", "alice", "10.0.0.1", 0, 200 * ms},
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"delay", "alice", "10.0.0.1", 0, 3200 * ms},
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"delay", "alice", "10.0.0.1", 0, 5 * time.Second},
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"delay", "alice", "10.0.0.1", 0, 5 * time.Second},
		}},
		{"per user, from any address", []step{
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"fail", "alice", "10.0.0.2", 0, 0},
			{"fail", "alice", "10.0.0.3", 0, 0},
			{"delay", "alice", "10.0.0.4", 0, 400 * ms},
			{"delay", "bob", "10.0.0.4", 0, 0},
		}},
		{"per address, for any user (unknown users count too)", []step{
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"fail", "no-such-user", "10.0.0.1", 0, 0},
			{"fail", "nobody", "10.0.0.1", 0, 0},
			{"delay", "carol", "10.0.0.1", 0, 400 * ms},
			{"delay", "carol", "10.0.0.2", 0, 0},
		}},
		{"the larger of the two", []step{
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"fail", "bob", "10.0.0.1", 0, 0},
			{"fail", "bob", "10.0.0.2", 0, 0},
			{"delay", "alice", "10.0.0.1", 0, 200 * ms}, // address: 2, alice: 1
			{"delay", "bob", "10.0.0.3", 0, 200 * ms},   // bob: 2
		}},
		{"forgotten after the window", []step{
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"fail", "alice", "10.0.0.1", 10 * time.Minute, 0},
			{"delay", "alice", "10.0.0.1", 24 * time.Minute, 200 * ms}, // 14 min after the last failure
			{"delay", "alice", "10.0.0.1", 25 * time.Minute, 0},
			{"fail", "alice", "10.0.0.1", 26 * time.Minute, 0},
			{"delay", "alice", "10.0.0.1", 26 * time.Minute, 100 * ms}, // counting from one again
		}},
		{"success resets the user, not the address", []step{
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"fail", "alice", "10.0.0.1", 0, 0},
			{"ok", "alice", "10.0.0.1", 0, 0},
			{"delay", "alice", "10.0.0.9", 0, 0},
			{"delay", "bob", "10.0.0.1", 0, 400 * ms},
			{"delay", "alice", "10.0.0.1", 0, 400 * ms},
		}},
		{"ports do not matter", []step{
			{"fail", "a", "10.0.0.1:40000", 0, 0},
			{"fail", "b", "10.0.0.1:40001", 0, 0},
			{"delay", "c", "10.0.0.1", 0, 200 * ms},
		}},
		{"IPv6 by /64, IPv4-mapped as IPv4", []step{
			{"fail", "a", "[2001:db8:1:2::1]:443", 0, 0},
			{"fail", "b", "2001:db8:1:2:ffff::9", 0, 0},
			{"fail", "c", "::ffff:10.0.0.1", 0, 0},
			{"delay", "d", "[2001:db8:1:2:abcd::1]:1", 0, 200 * ms},
			{"delay", "d", "2001:db8:1:3::1", 0, 0},
			{"delay", "d", "10.0.0.1", 0, 100 * ms},
		}},
		{"long names hashed, still counted", []step{
			{"fail", strings.Repeat("x", 5000), "10.0.0.1", 0, 0},
			{"fail", strings.Repeat("x", 5000), "10.0.0.2", 0, 0},
			{"delay", strings.Repeat("x", 5000), "10.0.0.3", 0, 200 * ms},
			{"delay", strings.Repeat("x", 4999) + "y", "10.0.0.3", 0, 0},
		}},
		{"no address", []step{
			{"fail", "a", "", 0, 0},
			{"fail", "b", "", 0, 0},
			{"delay", "c", "", 0, 0},
			{"delay", "a", "", 0, 100 * ms},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			th := NewThrottle(100*time.Millisecond, 5*time.Second)
			for i, s := range tt.steps {
				at := t0.Add(s.at)
				switch s.op {
				case "fail":
					th.Failed(s.user, s.addr, at)
				case "ok":
					th.Succeeded(s.user, s.addr, at)
				case "delay":
					if got := th.Delay(s.user, s.addr, at); got != s.want {
						t.Fatalf("step %d: Delay(%s, %s) = %v, want %v", i, s.user, s.addr, got, s.want)
					}
				}
			}
		})
	}
}

func TestThrottleDefaults(t *testing.T) {
	t.Parallel()
	th := NewThrottle(0, 0)
	if th.base != 100*time.Millisecond || th.max != 5*time.Second {
		t.Fatalf("%v %v", th.base, th.max)
	}
	if th := NewThrottle(time.Second, time.Millisecond); th.max != time.Second {
		t.Fatalf("max below base: %v", th.max)
	}
}

// TestThrottleBounded: past the cap the entry that failed longest ago is
// forgotten, in either map.
func TestThrottleBounded(t *testing.T) {
	t.Parallel()
	th := NewThrottle(0, 0)
	th.maxKeys = 3
	for i := range 5 {
		th.Failed(fmt.Sprintf("user%d", i), fmt.Sprintf("10.0.0.%d", i), testNow.Add(time.Duration(i)*time.Second))
	}
	// user0 and user1 were forgotten. user2 fails again, so user3 is the
	// oldest when user5 comes and is forgotten in its turn.
	th.Failed("user2", "10.0.0.2", testNow.Add(10*time.Second))
	th.Failed("user5", "10.0.0.5", testNow.Add(11*time.Second))
	if n := th.users.order.Len(); n != 3 || len(th.users.byKey) != 3 {
		t.Fatalf("%d users tracked", n)
	}
	long := NewThrottle(0, 0)
	long.Failed(strings.Repeat("u", 10_000), strings.Repeat("a", 10_000), testNow)
	for _, c := range []failureCounts{long.users, long.addrs} {
		for k := range c.byKey {
			if len(k) > MaxNameLength {
				t.Fatalf("a key of %d bytes", len(k))
			}
		}
	}
	for i, want := range []time.Duration{0, 0, 200 * time.Millisecond, 0, 100 * time.Millisecond, 100 * time.Millisecond} {
		now := testNow.Add(time.Minute)
		if got := th.Delay(fmt.Sprintf("user%d", i), "192.0.2.1", now); got != want {
			t.Errorf("user%d: %v, want %v", i, got, want)
		}
		if got := th.Delay("nobody", fmt.Sprintf("10.0.0.%d", i), now); got != want {
			t.Errorf("10.0.0.%d: %v, want %v", i, got, want)
		}
	}
}

func TestThrottleConcurrent(t *testing.T) {
	t.Parallel()
	th := NewThrottle(0, 0)
	th.maxKeys = 50
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				user, addr := fmt.Sprintf("u%d", (g*7+i)%97), fmt.Sprintf("10.0.%d.%d", g, i%13)
				now := testNow.Add(time.Duration(i) * time.Millisecond)
				th.Delay(user, addr, now)
				if i%5 == 0 {
					th.Succeeded(user, addr, now)
				} else {
					th.Failed(user, addr, now)
				}
			}
		})
	}
	wg.Wait()
	if th.users.order.Len() > 50 || th.addrs.order.Len() > 50 {
		t.Fatalf("%d users, %d addresses tracked", th.users.order.Len(), th.addrs.order.Len())
	}
}
