package handlers_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/handlers"
	"github.com/berth-registry/berth/proxy"
)

// A repository under a proxy's prefix cannot be changed through the web
// interface either: untag, delete and restore get the API's DENIED. (The
// pull-through cache itself is tested end to end in cmd/berth.)
func TestUIRefusesProxiedChanges(t *testing.T) {
	t.Parallel()
	r := newRegistryWith(t, func(o *handlers.Options) {
		o.Proxy = proxy.New(proxy.Config{DB: o.DB, Blobs: o.Blobs, Logger: o.Logger})
	})
	img := r.image("hub/app", "one")
	m := r.pushManifest("hub/app", "v1", mtManifest, img)
	if err := r.db.ProxyAdd(t.Context(), db.Proxy{Prefix: "hub", Upstream: "http://127.0.0.1:9"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the replica reads the proxies again every second
	b := r.browser()
	for _, path := range []string{"/ui/r/hub/app/-/untag/v1", "/ui/r/hub/app/-/delete/" + m.String()} {
		p := b.confirm(path, nil)
		if p.status != http.StatusForbidden || !strings.Contains(p.alert(), "pull-through cache of http://127.0.0.1:9") {
			t.Errorf("%s: %d %q", path, p.status, p.alert())
		}
	}
	if got := r.do("GET", "/v2/hub/app/manifests/v1", nil); got.StatusCode != http.StatusOK {
		t.Errorf("the tag after the refused changes: %d", got.StatusCode)
	}
}
