package main

import (
	"strings"
	"testing"

	"github.com/berth-registry/berth/db/dbtest"
)

// TestAuthNoneWarnsBeyondLoopback: berth serve with --auth none (the
// default) warns at start when the API listens beyond loopback, where
// anyone who reaches it may push and delete; not on loopback, and not
// with authentication on.
func TestAuthNoneWarnsBeyondLoopback(t *testing.T) {
	t.Parallel()
	const warning = "authentication is off (--auth none) and the API listens beyond this host"
	for _, c := range []struct {
		name string
		args []string
		warn bool
	}{
		{"loopback", []string{"--listen", "127.0.0.1:0"}, false},
		{"every address", []string{"--listen", ":0"}, true},
		{"every IPv4 address", []string{"--listen", "0.0.0.0:0"}, true},
		{"every address with basic auth", []string{"--listen", ":0", "--auth", "basic"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, logs := startLogged(t, dbtest.NewURL(t), c.args...)
			if got := logs.count(warning) == 1; got != c.warn {
				t.Errorf("warned: %v, want %v; log:\n%s", got, c.warn, logs)
			}
			if c.warn && !strings.Contains(logs.String(), "level=WARN") {
				t.Errorf("the warning is not at level WARN:\n%s", logs)
			}
		})
	}
}
