package auth

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"sync"
	"time"
)

const (
	// FailureWindow is how long a failed login is remembered: a counter
	// is forgotten 15 minutes (the figure) after its last failure,
	// so a user who mistyped is soon back to full speed while a guesser
	// stays slowed as long as he keeps guessing.
	FailureWindow = 15 * time.Minute
	// MaxThrottleKeys bounds the users and, separately, the addresses a
	// Throttle tracks, so that a flood of made-up names or addresses
	// cannot exhaust memory: with keys of at most 128 bytes (longer ones
	// are hashed), 10,000 entries take a few MB at most. Past it the entry
	// that failed longest ago is forgotten.
	MaxThrottleKeys = 10_000
)

// Throttle slows repeated failed logins, per user name and per client
// address, with a delay doubling from base to max with each failure in the
// window. Slowing rather than locking out means an attacker cannot lock a
// user out by failing on purpose.
//
// The caller must treat unknown users exactly as known ones: ask Delay,
// wait, check the password (DummyPasswordCheck for an unknown user), and
// report Failed, so that neither the delay nor the time taken tells
// whether a user exists.
//
// It is safe for concurrent use. The delay does not stop parallel
// attempts from one address all waiting the same delay; the handlers
// should bound concurrent logins per address if that matters.
type Throttle struct {
	base, max time.Duration
	maxKeys   int

	mu    sync.Mutex
	users failureCounts
	addrs failureCounts
}

// NewThrottle returns a throttle whose delay starts at base after the
// first failure and doubles up to max, e.g. 100ms to 5s. Zero or negative
// values take those examples.
func NewThrottle(base, maxDelay time.Duration) *Throttle {
	if base <= 0 {
		base = 100 * time.Millisecond
	}
	if maxDelay <= 0 {
		maxDelay = 5 * time.Second
	}
	return &Throttle{
		base:    base,
		max:     max(base, maxDelay),
		maxKeys: MaxThrottleKeys,
		users:   newFailureCounts(),
		addrs:   newFailureCounts(),
	}
}

// Delay returns how long to hold this login attempt before answering it:
// the larger of the user's and the address's delays.
func (t *Throttle) Delay(user, addr string, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return max(t.delay(t.users.get(userKey(user), now)), t.delay(t.addrs.get(addrKey(addr), now)))
}

func (t *Throttle) delay(failures int) time.Duration {
	if failures == 0 {
		return 0
	}
	d := t.base
	for i := 1; i < failures && d < t.max; i++ {
		d *= 2
	}
	return min(d, t.max)
}

// Failed records a failed attempt, for the user (known or not) and for the
// address.
func (t *Throttle) Failed(user, addr string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.users.fail(userKey(user), now, t.maxKeys)
	t.addrs.fail(addrKey(addr), now, t.maxKeys)
}

// Succeeded records a successful login: the user's failures are
// forgotten, so a user who mistyped is back to full speed. The address's
// are not: several people may share one address (NAT, a proxy), and an
// attacker who has one account of his own could otherwise log in to it
// between guesses at other users' passwords to reset the address's delay.
func (t *Throttle) Succeeded(user, addr string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.users.remove(userKey(user))
}

// userKey is the key of a user name: the name, or the SHA-256 of a name
// too long to be valid, so that made-up names cannot make entries large.
// (The name is not otherwise normalised: the caller passes it as users are
// looked up.)
func userKey(user string) string {
	if len(user) <= MaxNameLength {
		return user
	}
	h := sha256.Sum256([]byte(user))
	return "sha256:" + hex.EncodeToString(h[:])
}

// addrKey is the key of a client address: the IP without port, and for
// IPv6 its /64, since one client commonly holds a whole /64. Anything that
// is not an IP is used as it is, or hashed if long.
func addrKey(addr string) string {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return userKey(addr)
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// failureCounts counts failures per key, in the order of their last
// failure (front: latest), so that the oldest is found in constant time.
type failureCounts struct {
	byKey map[string]*list.Element
	order *list.List // of *failureCount
}

type failureCount struct {
	key      string
	failures int
	last     time.Time
}

func newFailureCounts() failureCounts {
	return failureCounts{byKey: map[string]*list.Element{}, order: list.New()}
}

// get returns key's failures within the window, forgetting them if they
// are older.
func (c *failureCounts) get(key string, now time.Time) int {
	e, ok := c.byKey[key]
	if !ok {
		return 0
	}
	fc := e.Value.(*failureCount)
	if now.Sub(fc.last) >= FailureWindow {
		c.remove(key)
		return 0
	}
	return fc.failures
}

func (c *failureCounts) fail(key string, now time.Time, maxKeys int) {
	if key == "" {
		return // no user name or no address: nothing to key on
	}
	if n := c.get(key, now); n > 0 {
		e := c.byKey[key]
		fc := e.Value.(*failureCount)
		fc.failures++
		fc.last = now
		c.order.MoveToFront(e)
		return
	}
	c.byKey[key] = c.order.PushFront(&failureCount{key: key, failures: 1, last: now})
	for c.order.Len() > maxKeys {
		c.remove(c.order.Back().Value.(*failureCount).key)
	}
}

func (c *failureCounts) remove(key string) {
	if e, ok := c.byKey[key]; ok {
		c.order.Remove(e)
		delete(c.byKey, key)
	}
}
