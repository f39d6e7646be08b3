package main

import (
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db/dbtest"
)

// pushSized pushes to repo an image with a config and one layer of
// layerSize bytes made of seed, tagged tag, and returns the bytes the push
// adds to a namespace that holds none of it: config, layer and manifest.
func pushSized(t *testing.T, base, repo, tag, seed string, layerSize int, want int) int64 {
	t.Helper()
	config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","seed":%q}`, seed))
	layer := []byte(strings.Repeat(seed, layerSize/len(seed)+1)[:layerSize])
	for _, b := range [][]byte{config, layer} {
		mustDo(t, "POST", base+"/v2/"+repo+"/blobs/uploads/?digest="+digest.FromBytes(b).String(), b, http.StatusCreated)
	}
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
		digest.FromBytes(config), len(config), digest.FromBytes(layer), len(layer)))
	ex := mustDo(t, "PUT", base+"/v2/"+repo+"/manifests/"+tag, manifest, want, "Content-Type: application/vnd.oci.image.manifest.v1+json")
	if want != http.StatusCreated {
		t.Logf("refused push: %d %s", ex.StatusCode, ex.body)
	}
	return int64(len(config) + len(layer) + len(manifest))
}

// berth usage and berth quota end to end: a running Berth, pushes over
// HTTP, the commands run in-process, and berth usage check as the real
// binary for its exit status.
func TestUsageAndQuotaCLI(t *testing.T) {
	t.Parallel()
	url := dbtest.NewURL(t)
	m, logs := startLogged(t, url)
	base := "http://" + m.Addr().String()

	a := pushSized(t, base, "team/app", "v1", "a", 4000, http.StatusCreated)
	pushSized(t, base, "teamx/app", "v1", "x", 9000, http.StatusCreated) // not in team

	for _, tc := range []struct {
		args    []string
		mention string
	}{
		{[]string{"quota", "set", "team"}, "--limit is required"},
		{[]string{"quota", "set", "team", "--limit", "10GB"}, "not a size"},
		{[]string{"quota", "set", "team", "--limit", "1GiB", "--warn", "120%"}, "from 1% to 100%"},
		{[]string{"quota", "set", "Team/", "--limit", "1GiB"}, "is not a namespace"},
		{[]string{"quota", "delete", "nope"}, "no quota covers nope"},
		{[]string{"quota", "grow"}, "unknown command: quota grow"},
	} {
		berthCLI(t, url, "", tc.args...).fails(t, tc.mention)
	}

	limit := a + 6000
	set := berthCLI(t, url, "", "quota", "set", "team", "--limit", fmt.Sprint(limit), "--warn", "80%").ok(t)
	t.Logf("quota set:\n%s", set.stdout)
	if !strings.Contains(set.stdout, fmt.Sprintf("set the quota of team: %s, warning at 80%%", fmtBytes(limit))) ||
		!strings.Contains(set.stdout, fmtBytes(a)) {
		t.Errorf("quota set printed:\n%s", set.stdout)
	}

	// 4000 + 4500 of 10000+: over the warning, under the limit.
	b := pushSized(t, base, "team/x/y", "v1", "b", 4500, http.StatusCreated)
	if logs.count("quota warning threshold crossed") != 1 {
		t.Errorf("the crossing was not logged once:\n%s", logs)
	}
	// Over the limit.
	pushSized(t, base, "team/app", "v2", "c", 2000, http.StatusForbidden)
	// A new tag on a live manifest adds nothing.
	pushSized(t, base, "team/app", "again", "a", 4000, http.StatusCreated)

	list := berthCLI(t, url, "", "quota", "list").ok(t)
	t.Logf("quota list:\n%s", list.stdout)
	if !strings.Contains(list.stdout, fmtBytes(limit)+"  80%   "+fmtBytes(a+b)) || !strings.Contains(list.stdout, "warning since") {
		t.Errorf("quota list printed:\n%s", list.stdout)
	}

	for name, want := range map[string]int64{
		`berth_quota_limit_bytes{prefix="team"}`:        limit,
		`berth_quota_usage_bytes{prefix="team"}`:        a + b,
		`berth_quota_warning{prefix="team"}`:            1,
		`berth_namespace_usage_bytes{namespace="team"}`: a + b,
	} {
		if got, err := tryMetric(base, name); err != nil || got != fmt.Sprint(want) {
			t.Errorf("%s = %q (%v), want %d", name, got, err, want)
		}
	}
	if got, _ := tryMetric(base, `berth_namespace_usage_bytes{namespace="teamx"}`); got == "" || got == "0" {
		t.Errorf("no usage of namespace teamx: %q", got)
	}

	usage := berthCLI(t, url, "", "usage", "team").ok(t)
	t.Logf("usage team:\n%s", usage.stdout)
	if !strings.Contains(usage.stdout, fmt.Sprintf("namespace team: 2 repositories, 2 manifests, %s", fmtBytes(a+b))) ||
		!strings.Contains(usage.stdout, "team/app") || strings.Contains(usage.stdout, "teamx") {
		t.Errorf("usage team printed:\n%s", usage.stdout)
	}
	all := berthCLI(t, url, "", "usage").ok(t)
	if !strings.Contains(all.stdout, "all repositories: 3 repositories, 3 manifests") || !strings.Contains(all.stdout, "teamx/app") {
		t.Errorf("usage printed:\n%s", all.stdout)
	}

	// The check, as the real binary: exit 0, then 1 after a corruption.
	out, _, err := runBerth(t, "usage", "check", "--database-url", url)
	if err != nil || !strings.Contains(out, "checked 3 repositories and 1 quotas") || !strings.Contains(out, ": 0 differences") {
		t.Fatalf("usage check: %v\n%s", err, out)
	}
	dbtest.Exec(t, url, `UPDATE quotas SET blob_bytes = blob_bytes - 1`)
	out, stderr, err := runBerth(t, "usage", "check", "--database-url", url)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(out, "drift: quota team usage: recorded") ||
		!strings.Contains(stderr, "usage drift found: 1 differences") {
		t.Errorf("usage check after a corruption: %v\n%s\n%s", err, out, stderr)
	}

	berthCLI(t, url, "", "quota", "delete", "team").ok(t)
	pushSized(t, base, "team/app", "v2", "c", 2000, http.StatusCreated)
	if out := berthCLI(t, url, "", "quota", "list").ok(t).stdout; strings.Contains(out, "team ") {
		t.Errorf("quota list after the delete:\n%s", out)
	}
}

func fmtBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B (%d bytes)", n, n)
	}
	return fmt.Sprintf("%.1f KiB (%d bytes)", float64(n)/1024, n)
}
