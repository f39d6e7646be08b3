package main

// The web interface in a real browser: Debian's headless Chromium, driven
// over the DevTools protocol by chromedp, against a real `berth serve`
// seeded through the /v2 API. Controls are found by role and accessible
// name in the browser's accessibility tree, as a screen reader finds them;
// what an action did is checked through /v2, not through the page.
//
// With BERTH_UI_SCREENSHOTS=1 the test also saves each page, light and
// dark, as testdata/ui/<page>-<light|dark>.png (the pictures in README.md).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/accessibility"
	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/dom"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db/dbtest"
)

// chromiumPath is the browser the test drives: $BERTH_CHROMIUM, else
// Debian's chromium (scripts/test.sh installs it) or another Chrome on PATH.
func chromiumPath() string {
	if p := os.Getenv("BERTH_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

func TestUIBrowser(t *testing.T) {
	chromium := chromiumPath()
	if chromium == "" {
		t.Skip("no Chromium on this machine (apt-get install chromium, or set BERTH_CHROMIUM); scripts/test.sh installs it")
	}
	t.Parallel()

	m := startMain(t, dbtest.NewURL(t))
	reg := &registry{t: t, base: "http://" + m.Addr().String()}
	s := seed(reg)
	b := newBrowser(t, chromium)

	t.Run("browse", func(t *testing.T) {
		b.open(t, reg.base+"/")
		if loc := b.location(t); loc != reg.base+"/ui/" {
			t.Errorf("GET / landed on %s, want /ui/", loc)
		}
		b.heading(t, "Repositories")
		b.shot(t, "repositories")
		for _, repo := range []string{"shop/web", "shop/multi", "shop/many", "base/alpine", "tools/ci"} {
			b.find(t, "link", repo)
		}
		b.follow(t, "link", "shop/web")
		b.heading(t, "shop/web")
		for _, name := range []string{"Tags", "Untagged manifests", "Audit", "History of v1", "Untag v1"} {
			b.find(t, "link", name)
		}
		b.find(t, "searchbox", "Search tags")
		b.shot(t, "repository")

		// The digest of v1 in the table links to its manifest.
		if n := b.count(t, fmt.Sprintf(`main table a[href$="/-/manifests/%s"]`, s.webV1)); n < 2 {
			t.Errorf("%d links to the manifest of v1 in the tag table, want its name and its digest", n)
		}

		// A tag's own page: where it points, its history; "Points at"
		// leads to the manifest.
		b.follow(t, "link", "History of v1")
		b.heading(t, "shop/web:v1")
		b.contains(t, "Points at "+s.webV1.String(), "tag.create")
		b.find(t, "link", "Untag v1")
		b.follow(t, "link", s.webV1.String())
		b.heading(t, "shop/web@"+s.webV1.String())
		b.contains(t, "application/vnd.oci.image.manifest.v1+json", "linux/amd64",
			"org.opencontainers.image.title", "berth browser test", // a config label
			s.webLayers[0].Encoded()[:12], s.webLayers[1].Encoded()[:12], // the layers
			"v1", "latest", // its tags
			"shop/web:v1", "shop/web@"+s.webV1.String()) // pull commands
		if n := b.count(t, `main code`); n < 2 {
			t.Errorf("%d <code> elements, want the pull commands in them", n)
		}
		b.find(t, "button", "Copy pull command") // the contract's "Copy", named for a screen reader
		b.shot(t, "manifest")
		// Copy works (a failed clipboard write would show as an unhandled
		// rejection in the console).
		b.copyButtonSays(t, "Copied")
		b.noConsoleErrors(t)
		// Where the browser refuses the clipboard, the button says so,
		// and the page logs no error.
		b.clipboard(t, cdpbrowser.PermissionSettingDenied)
		b.copyButtonSays(t, "Copy failed")
		b.clipboard(t, cdpbrowser.PermissionSettingGranted)
		b.noConsoleErrors(t)

		// An index shows its children's platforms, a child its referrers.
		b.open(t, reg.base+"/ui/r/shop/multi/")
		b.followSel(t, fmt.Sprintf(`//a[contains(@href, '/-/manifests/%s')]`, s.index))
		b.contains(t, "application/vnd.oci.image.index.v1+json", "linux/amd64", "linux/arm64", s.children[0].Encoded()[:12])
		b.shot(t, "manifest-index")
		b.followSel(t, fmt.Sprintf(`//a[contains(@href, '/-/manifests/%s')]`, s.children[0]))
		b.contains(t, "linux/amd64", "application/vnd.example.sbom.v1+json", s.referrer.Encoded()[:12])
		b.noConsoleErrors(t)
	})

	t.Run("tag pages", func(t *testing.T) {
		b.open(t, reg.base+"/ui/r/shop/many/")
		first := b.tableTags(t)
		if len(first) != 100 {
			t.Fatalf("first page has %d tags, want 100: %v", len(first), first)
		}
		b.follow(t, "link", "Next page")
		second := b.tableTags(t)
		if len(second) != len(s.many)-100 {
			t.Fatalf("second page has %d tags, want %d: %v", len(second), len(s.many)-100, second)
		}
		got := append(first, second...)
		slices.Sort(got)
		if !slices.Equal(got, s.many) {
			t.Errorf("the two pages show %v, want %v", got, s.many)
		}
		if b.has(t, "link", "Next page") {
			t.Error(`the last page has a "Next page" link`)
		}
		b.noConsoleErrors(t)
	})

	t.Run("search", func(t *testing.T) {
		b.open(t, reg.base+"/ui/")
		b.typeInto(t, "searchbox", "Search repositories", "shop\r")
		b.waitFor(t, "link", "shop/web")
		if b.has(t, "link", "base/alpine") {
			t.Error("searching for shop still lists base/alpine")
		}
		b.open(t, reg.base+"/ui/r/shop/many/")
		b.typeInto(t, "searchbox", "Search tags", "t11\r")
		b.waitFor(t, "link", "History of t110")
		tags := b.tableTags(t)
		for _, tag := range tags {
			if !strings.Contains(tag, "t11") {
				t.Errorf("searching for t11 shows %s", tag)
			}
		}
		if len(tags) != 10 {
			t.Errorf("searching for t11 shows %v, want t110 to t119", tags)
		}
		b.shot(t, "search")
		b.noConsoleErrors(t)
	})

	t.Run("keyboard", func(t *testing.T) {
		b.open(t, reg.base+"/ui/")
		b.tabTo(t, `input[type=search][name=q]`)
		b.tabTo(t, `main table a`)
		b.press(t, "\r")
		b.heading(t, "base/alpine") // the first repository, by name
		b.noConsoleErrors(t)
	})

	t.Run("zoom 200%", func(t *testing.T) {
		// A 1280 px window at 200% zoom lays pages out 640 CSS pixels
		// wide, at 2 device pixels each: what WCAG 1.4.4 and 1.4.10 ask
		// to stay readable, without scrolling the page sideways. A wide
		// table may scroll inside its own container.
		b.viewport(t, 640, 800, 2)
		defer b.viewport(t, 1280, 800, 1)
		for _, pg := range []struct {
			path, heading string
			controls      []string // reached by Tab, in this order
		}{
			{"/ui/", "Repositories", []string{`input[type=search][name=q]`, `main table a[href="/ui/r/shop/web/"]`}},
			{"/ui/r/shop/web/", "shop/web", []string{`input[type=search][name=q]`, `main table a[href$="/-/untag/v1"]`}},
			{"/ui/r/shop/web/-/manifests/" + s.webV1.String(), "shop/web@" + s.webV1.String(),
				[]string{`main a[href$="/-/delete/` + s.webV1.String() + `"]`, `main button.copy-button`}},
		} {
			b.open(t, reg.base+pg.path)
			b.heading(t, pg.heading)
			b.noSidewaysScroll(t)
			for _, css := range pg.controls {
				b.tabTo(t, css)
				b.focusInView(t)
			}
			b.noSidewaysScroll(t) // focusing scrolled a table's container, not the page
		}
		b.open(t, reg.base+"/ui/r/shop/web/")
		b.shot(t, "repository-zoom")
		b.noConsoleErrors(t)
	})

	t.Run("untag", func(t *testing.T) {
		before := reg.tags("shop/web")
		b.open(t, reg.base+"/ui/r/shop/web/")
		b.follow(t, "link", "Untag v1")
		b.contains(t, "v1", s.webV1.String())
		b.shot(t, "untag")
		if st := b.follow(t, "button", "Untag v1"); st != http.StatusOK {
			t.Errorf("after the POST: status %d", st)
		}
		b.heading(t, "shop/web")
		b.role(t, "status", "Untagged v1")
		want := slices.DeleteFunc(slices.Clone(before), func(s string) bool { return s == "v1" })
		if got := reg.tags("shop/web"); !slices.Equal(got, want) {
			t.Errorf("tags after untagging v1: %v, want %v", got, want)
		}
		reg.expect("GET", "/v2/shop/web/manifests/"+s.webV1.String(), http.StatusOK) // still there by digest

		// A POST without the form's CSRF token is refused and changes nothing.
		resp := reg.do("POST", "/ui/r/shop/web/-/untag/v2", []byte("csrf=forged"), 0,
			"Content-Type: application/x-www-form-urlencoded")
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("untag with a forged CSRF token: %d, want 403", resp.StatusCode)
		}
		reg.expect("GET", "/v2/shop/web/manifests/v2", http.StatusOK)
		b.noConsoleErrors(t)
	})

	t.Run("delete", func(t *testing.T) {
		b.open(t, reg.base+"/ui/r/shop/old/-/manifests/"+s.old.String())
		b.followSel(t, `//a[starts-with(normalize-space(.), 'Delete manifest') or starts-with(@aria-label, 'Delete manifest')]`)
		b.contains(t, s.old.String(), "gone-a", "gone-b") // the tags that go with it
		b.shot(t, "delete")
		b.followSel(t, `//button[starts-with(normalize-space(.), 'Delete manifest') or starts-with(@aria-label, 'Delete manifest')]`)
		b.heading(t, "shop/old")
		b.role(t, "status", "Deleted manifest")
		reg.expect("GET", "/v2/shop/old/manifests/"+s.old.String(), http.StatusNotFound)
		reg.expect("GET", "/v2/shop/old/manifests/gone-a", http.StatusNotFound)
		reg.expect("GET", "/v2/shop/old/manifests/keep", http.StatusOK)
		b.noConsoleErrors(t)
	})

	t.Run("refused", func(t *testing.T) {
		// A manifest that an index lists cannot be deleted: the page says so.
		u := reg.base + "/ui/r/shop/multi/-/delete/" + s.children[0].String()
		b.open(t, u)
		b.contains(t, s.index.Encoded()[:12]) // the blocking index
		b.expectHTTPError(u)
		st := b.followSel(t, `//button[starts-with(normalize-space(.), 'Delete manifest') or starts-with(@aria-label, 'Delete manifest')]`)
		if st < 400 || st > 499 {
			t.Errorf("refused delete: status %d, want 4xx", st)
		}
		b.role(t, "alert", "referenced by index")
		b.shot(t, "refused")
		reg.expect("GET", "/v2/shop/multi/manifests/"+s.children[0].String(), http.StatusOK)
		b.noConsoleErrors(t)
	})

	t.Run("restore", func(t *testing.T) {
		if got := reg.digestOf("shop/web", "release"); got != s.webV2 {
			t.Fatalf("release is %s before the restore, want %s", got, s.webV2)
		}
		b.open(t, reg.base+"/ui/r/shop/web/")
		b.follow(t, "link", "History of release")
		b.shot(t, "history")
		b.follow(t, "link", "Restore release to sha256:"+s.webV1.Encoded()[:12])
		b.contains(t, s.webV1.String(), s.webV2.String())
		b.follow(t, "button", "Restore release")
		b.role(t, "status", "release")
		if got := reg.digestOf("shop/web", "release"); got != s.webV1 {
			t.Errorf("release is %s after the restore, want %s", got, s.webV1)
		}
		b.noConsoleErrors(t)
	})

	t.Run("other pages", func(t *testing.T) {
		b.open(t, reg.base+"/ui/r/shop/web/")
		b.follow(t, "link", "Untagged manifests")
		b.shot(t, "untagged")
		b.follow(t, "link", "Audit")
		b.find(t, "combobox", "Action")
		b.contains(t, "v1") // the untag of v1
		b.shot(t, "audit")
		b.open(t, reg.base+"/ui/gc")
		b.shot(t, "gc")
		light, dark := b.colors(t, "light"), b.colors(t, "dark")
		if light == dark {
			t.Errorf("prefers-color-scheme: dark changes no color (%s)", light)
		}
		b.noConsoleErrors(t)
	})

	t.Run("login", func(t *testing.T) {
		url := dbtest.NewURL(t)
		berthCLI(t, url, "admin-pw\n", "user", "add", "root", "--admin", "--password-stdin").ok(t)
		berthCLI(t, url, "viewer-pw\n", "user", "add", "viewer", "--password-stdin").ok(t)
		berthCLI(t, url, "", "grant", "viewer", "shop/**", "pull").ok(t)
		m := startMain(t, url, "--auth", "basic")
		reg := &registry{t: t, base: "http://" + m.Addr().String(), user: "root", password: "admin-pw"}
		reg.pushImage("shop/web", "v1", "amd64", nil)
		reg.pushImage("secret/app", "v1", "amd64", nil)

		b.open(t, reg.base+"/ui/login")
		b.shot(t, "login")
		b.login(t, "viewer", "viewer-pw")
		b.heading(t, "Repositories")
		b.find(t, "link", "shop/web")
		if b.has(t, "link", "secret/app") {
			t.Error("viewer sees secret/app, which they may not pull")
		}
		secret := reg.base + "/ui/r/secret/app/"
		b.expectHTTPError(secret)
		if st := b.status(t, secret); st != http.StatusForbidden && st != http.StatusNotFound {
			t.Errorf("viewer opening secret/app: %d, want 403 or 404", st)
		}
		if strings.Contains(eval[string](t, b, `document.body.innerText`), "v1") {
			t.Error("viewer sees the tags of secret/app")
		}
		b.open(t, reg.base+"/ui/")
		b.follow(t, "link", "shop/web")
		b.find(t, "link", "History of v1")
		if b.has(t, "link", "Untag v1") || b.has(t, "button", "Untag v1") {
			t.Error(`a pull-only user sees "Untag v1"`)
		}
		b.follow(t, "button", "Log out")
		b.role(t, "status", "Logged out")
		if b.has(t, "link", "shop/web") {
			t.Error("after logging out, anonymous (who has no grant) still sees shop/web")
		}
		b.follow(t, "link", "Log in")
		b.login(t, "root", "admin-pw")
		b.find(t, "link", "secret/app")
		b.follow(t, "link", "shop/web")
		b.find(t, "link", "Untag v1")
		b.noConsoleErrors(t)
	})
}

// ---- the registry, through /v2 ------------------------------------------

type registry struct {
	t              *testing.T
	base           string
	user, password string
}

func (r *registry) do(method, path string, body []byte, want int, header ...string) *http.Response {
	r.t.Helper()
	req, err := http.NewRequest(method, r.base+path, bytes.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	if r.user != "" {
		req.SetBasicAuth(r.user, r.password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	var out bytes.Buffer
	out.ReadFrom(resp.Body)
	resp.Body.Close()
	if want != 0 && resp.StatusCode != want {
		r.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, out.Bytes(), want)
	}
	resp.Body = nil
	resp.Header.Set("X-Test-Body", out.String())
	return resp
}

func (r *registry) expect(method, path string, want int) { r.t.Helper(); r.do(method, path, nil, want) }

func (r *registry) blob(repo string, content []byte) digest.Digest {
	r.t.Helper()
	d := digest.FromBytes(content)
	r.do("POST", "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), content, http.StatusCreated)
	return d
}

func (r *registry) manifest(repo, ref, mediaType string, body []byte) digest.Digest {
	r.t.Helper()
	r.do("PUT", "/v2/"+repo+"/manifests/"+ref, body, http.StatusCreated, "Content-Type: "+mediaType)
	return digest.FromBytes(body)
}

const (
	ociManifestType = "application/vnd.oci.image.manifest.v1+json"
	ociIndexType    = "application/vnd.oci.image.index.v1+json"
)

type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       digest.Digest     `json:"digest"`
	Size         int               `json:"size"`
	Platform     map[string]string `json:"platform,omitempty"`
	ArtifactType string            `json:"artifactType,omitempty"`
}

// image pushes a config and layers, and returns the manifest's body and
// its layers' digests. seed makes the content unique.
func (r *registry) image(repo, arch, seed string, labels map[string]string) ([]byte, []digest.Digest) {
	r.t.Helper()
	config, _ := json.Marshal(map[string]any{
		"architecture": arch, "os": "linux", "created": "2026-01-02T03:04:05Z",
		"config": map[string]any{"Labels": labels},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{}},
	})
	m := map[string]any{"schemaVersion": 2, "mediaType": ociManifestType,
		"config": descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: r.blob(repo, config), Size: len(config)}}
	var layers []descriptor
	var digests []digest.Digest
	for i := range 2 {
		content := bytes.Repeat([]byte(fmt.Sprintf("%s %s %s layer %d\n", repo, arch, seed, i)), 100*(i+1))
		d := r.blob(repo, content)
		digests = append(digests, d)
		layers = append(layers, descriptor{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: d, Size: len(content)})
	}
	m["layers"] = layers
	body, _ := json.Marshal(m)
	return body, digests
}

func (r *registry) pushImage(repo, tag, arch string, labels map[string]string) digest.Digest {
	r.t.Helper()
	body, _ := r.image(repo, arch, tag, labels)
	return r.manifest(repo, tag, ociManifestType, body)
}

func (r *registry) tags(repo string) []string {
	r.t.Helper()
	resp := r.do("GET", "/v2/"+repo+"/tags/list?n=1000", nil, http.StatusOK)
	var list struct{ Tags []string }
	if err := json.Unmarshal([]byte(resp.Header.Get("X-Test-Body")), &list); err != nil {
		r.t.Fatal(err)
	}
	slices.Sort(list.Tags)
	return list.Tags
}

func (r *registry) digestOf(repo, ref string) digest.Digest {
	r.t.Helper()
	resp := r.do("HEAD", "/v2/"+repo+"/manifests/"+ref, nil, http.StatusOK, "Accept: "+ociManifestType+", "+ociIndexType)
	return digest.Digest(resp.Header.Get("Docker-Content-Digest"))
}

// seeded is what seed pushed.
type seeded struct {
	webV1, webV2 digest.Digest   // shop/web: v1 and latest, then v2; release was v1, is v2
	webLayers    []digest.Digest // v1's layers
	index        digest.Digest   // shop/multi:1.0, of two platforms
	children     []digest.Digest // its amd64 and arm64 images
	referrer     digest.Digest   // an SBOM whose subject is the amd64 image
	old          digest.Digest   // shop/old: gone-a and gone-b, deleted by digest
	many         []string        // shop/many's tags, sorted
}

func seed(r *registry) seeded {
	r.t.Helper()
	var s seeded
	body, layers := r.image("shop/web", "amd64", "v1", map[string]string{"org.opencontainers.image.title": "berth browser test"})
	s.webV1, s.webLayers = r.manifest("shop/web", "v1", ociManifestType, body), layers
	r.manifest("shop/web", "latest", ociManifestType, body)
	r.manifest("shop/web", "release", ociManifestType, body)
	s.webV2 = r.pushImage("shop/web", "v2", "amd64", nil)
	r.do("PUT", "/v2/shop/web/manifests/release", mustManifest(r, "shop/web", s.webV2), http.StatusCreated, "Content-Type: "+ociManifestType)

	var children []descriptor
	for _, arch := range []string{"amd64", "arm64"} {
		body, _ := r.image("shop/multi", arch, "1.0", nil)
		d := r.manifest("shop/multi", digest.FromBytes(body).String(), ociManifestType, body)
		s.children = append(s.children, d)
		children = append(children, descriptor{MediaType: ociManifestType, Digest: d, Size: len(body),
			Platform: map[string]string{"os": "linux", "architecture": arch}})
	}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": ociIndexType, "manifests": children})
	s.index = r.manifest("shop/multi", "1.0", ociIndexType, index)
	sbom := []byte(`{"spdxVersion":"SPDX-2.3"}`)
	empty := []byte("{}")
	referrer, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": ociManifestType,
		"artifactType": "application/vnd.example.sbom.v1+json",
		"config":       descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: r.blob("shop/multi", empty), Size: len(empty)},
		"layers":       []descriptor{{MediaType: "application/spdx+json", Digest: r.blob("shop/multi", sbom), Size: len(sbom)}},
		"subject":      children[0]})
	s.referrer = r.manifest("shop/multi", digest.FromBytes(referrer).String(), ociManifestType, referrer)

	body, _ = r.image("shop/old", "amd64", "old", nil)
	s.old = r.manifest("shop/old", "gone-a", ociManifestType, body)
	r.manifest("shop/old", "gone-b", ociManifestType, body)
	r.pushImage("shop/old", "keep", "amd64", nil)

	body, _ = r.image("shop/many", "amd64", "many", nil)
	for i := range 120 {
		tag := fmt.Sprintf("t%03d", i)
		r.manifest("shop/many", tag, ociManifestType, body)
		s.many = append(s.many, tag)
	}
	r.pushImage("base/alpine", "3.20", "amd64", nil)
	r.pushImage("tools/ci", "stable", "arm64", nil)
	return s
}

func mustManifest(r *registry, repo string, d digest.Digest) []byte {
	r.t.Helper()
	resp := r.do("GET", "/v2/"+repo+"/manifests/"+d.String(), nil, http.StatusOK, "Accept: "+ociManifestType)
	return []byte(resp.Header.Get("X-Test-Body"))
}

// ---- the browser -----------------------------------------------------------

type browser struct {
	ctx context.Context

	mu       sync.Mutex
	messages []chromedp.ConsoleMessage // errors and exceptions not yet checked
	httpErrs map[string]bool           // pages whose 4xx the test expects
}

func newBrowser(t *testing.T, path string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.WindowSize(1280, 800),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("font-render-hinting", "none"),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browser{ctx: ctx, httpErrs: map[string]bool{}}
	messages := chromedp.Console(ctx)
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	go func() {
		for msg, err := range messages {
			if err != nil {
				return
			}
			if msg.Type == chromedp.ConsoleError || msg.IsException() {
				b.mu.Lock()
				b.messages = append(b.messages, msg)
				b.mu.Unlock()
			}
		}
	}()
	return b
}

// actionTimeout only catches a hang (an element that never shows): with
// the rest of the suite running beside it on two cores, a page can take a
// while. The test asserts no duration.
const actionTimeout = 30 * time.Second

// run runs actions with a deadline, so that a missing element fails the
// test instead of hanging it.
func (b *browser) run(t *testing.T, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s (at %s): %v", what, b.location(t), err)
	}
}

func eval[T any](t *testing.T, b *browser, js string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("evaluating %s: %v", js, err)
	}
	return v
}

func (b *browser) location(t *testing.T) string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	return loc
}

// open loads a page, which must answer 200 and have a title.
func (b *browser) open(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(url))
	if err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	if resp.Status != http.StatusOK {
		t.Fatalf("open %s: status %d", url, resp.Status)
	}
	b.checkTitle(t)
}

// status loads a page whatever it answers, and returns its status.
func (b *browser) status(t *testing.T, url string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(url))
	if err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	b.checkTitle(t)
	return resp.Status
}

// copyButtonSays clicks the first Copy button and waits until its text
// has said what (it says it for a moment only, so every text it shows is
// recorded).
func (b *browser) copyButtonSays(t *testing.T, what string) {
	t.Helper()
	b.run(t, "watch the Copy button", chromedp.Evaluate[chromedp.Void](`(() => {
		window.copyTexts = [];
		const b = document.querySelector('button[aria-label="Copy pull command"]');
		new MutationObserver(() => copyTexts.push(b.textContent)).observe(b, {childList: true, subtree: true, characterData: true});
	})()`))
	b.run(t, "click Copy", chromedp.Click("Copy", byName("button", "Copy pull command"), chromedp.NodeVisible))
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(`copyTexts.some(s => s.startsWith(%q))`, what))); err != nil {
		t.Fatalf("the Copy button never said %q: %v; it said %v", what, err, eval[[]string](t, b, `copyTexts`))
	}
}

// clipboard sets whether pages may write the clipboard.
func (b *browser) clipboard(t *testing.T, setting cdpbrowser.PermissionSetting) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	for _, name := range []string{"clipboard-write"} {
		if _, err := chromedp.CallBrowser(ctx, cdpbrowser.SetPermission, cdpbrowser.SetPermissionParams{
			Permission: &cdpbrowser.PermissionDescriptor{Name: name}, Setting: setting}); err != nil {
			t.Fatalf("clipboard permission %s: %v", setting, err)
		}
	}
}

// colors are the page's text and background colors in a color scheme.
func (b *browser) colors(t *testing.T, scheme string) string {
	t.Helper()
	b.scheme(t, scheme)
	defer b.scheme(t, "light")
	return eval[string](t, b, `(() => { const s = getComputedStyle(document.body); return s.color + " on " + s.backgroundColor; })()`)
}

func (b *browser) scheme(t *testing.T, scheme string) {
	t.Helper()
	b.run(t, "prefers-color-scheme: "+scheme, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}}})
		return err
	}))
}

func (b *browser) checkTitle(t *testing.T) {
	t.Helper()
	if title := eval[string](t, b, `document.title`); strings.TrimSpace(title) == "" {
		t.Errorf("%s has no <title>", b.location(t))
	}
}

// byName finds elements by their role and accessible name, in the
// browser's accessibility tree.
func byName(role, name string) chromedp.QueryOption {
	return chromedp.ByFunc(func(ctx context.Context, t *chromedp.Target, n *chromedp.Node) ([]cdp.NodeID, error) {
		res, err := cdp.Call(ctx, t, accessibility.QueryAXTree, accessibility.QueryAXTreeParams{
			NodeID: n.NodeID, AccessibleName: name, Role: role})
		if err != nil {
			return nil, err
		}
		var ids []cdp.BackendNodeID
		for _, ax := range res.Nodes {
			if !ax.Ignored && ax.BackendDOMNodeID != 0 {
				ids = append(ids, ax.BackendDOMNodeID)
			}
		}
		if len(ids) == 0 {
			return nil, nil
		}
		pushed, err := cdp.Call(ctx, t, dom.PushNodesByBackendIDsToFrontend, dom.PushNodesByBackendIDsToFrontendParams{BackendNodeIDs: ids})
		return pushed.NodeIDs, err
	})
}

// find waits until an element of that role and name is visible.
func (b *browser) find(t *testing.T, role, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(role+" "+name, byName(role, name))); err != nil {
		t.Fatalf("no %s named %q at %s (%v); the page has %s", role, name, b.location(t), err, b.controls(t))
	}
}

// controls lists the page's links, buttons and fields by role and name,
// for the message of a test that did not find one.
func (b *browser) controls(t *testing.T) string {
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	list, err := chromedp.Run(ctx, func(ctx context.Context, tg *chromedp.Target) ([]string, error) {
		doc, err := cdp.Call(ctx, tg, runtime.Evaluate, runtime.EvaluateParams{Expression: "document"})
		if err != nil {
			return nil, err
		}
		res, err := cdp.Call(ctx, tg, accessibility.QueryAXTree, accessibility.QueryAXTreeParams{ObjectID: doc.Result.ObjectID})
		var list []string
		for _, ax := range res.Nodes {
			if ax.Ignored || ax.Role == nil || ax.Name == nil {
				continue
			}
			var role, name string
			json.Unmarshal(ax.Role.Value, &role)
			json.Unmarshal(ax.Name.Value, &name)
			switch role {
			case "link", "button", "textbox", "searchbox", "combobox", "heading", "status", "alert", "tab":
				list = append(list, fmt.Sprintf("%s %q", role, name))
			}
		}
		return list, err
	})
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(list) > 60 {
		list = append(list[:60], "…")
	}
	return strings.Join(list, ", ")
}

func (b *browser) waitFor(t *testing.T, role, name string) { t.Helper(); b.find(t, role, name) }

// has tells, without waiting, whether the page has an element of that role
// and name.
func (b *browser) has(t *testing.T, role, name string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	n, err := chromedp.Run(ctx, func(ctx context.Context, tg *chromedp.Target) (int, error) {
		// The document as a JavaScript object: DOM.getDocument would reset
		// the node ids chromedp keeps.
		doc, err := cdp.Call(ctx, tg, runtime.Evaluate, runtime.EvaluateParams{Expression: "document"})
		if err != nil {
			return 0, err
		}
		res, err := cdp.Call(ctx, tg, accessibility.QueryAXTree, accessibility.QueryAXTreeParams{
			ObjectID: doc.Result.ObjectID, AccessibleName: name, Role: role})
		count := 0
		for _, ax := range res.Nodes {
			if !ax.Ignored {
				count++
			}
		}
		return count, err
	})
	if err != nil {
		t.Fatalf("looking for %s %q: %v", role, name, err)
	}
	return n > 0
}

// follow clicks the control of that role and name, waits for the page it
// leads to, and returns its HTTP status (after redirects).
func (b *browser) follow(t *testing.T, role, name string) int64 {
	t.Helper()
	b.find(t, role, name)
	return b.click(t, fmt.Sprintf("%s %q", role, name), chromedp.Click(role+" "+name, byName(role, name), chromedp.NodeVisible))
}

// followSel is follow for an element an XPath finds.
func (b *browser) followSel(t *testing.T, xpath string) int64 {
	t.Helper()
	return b.click(t, xpath, chromedp.Click(chromedp.Search(xpath), chromedp.NodeVisible))
}

func (b *browser) click(t *testing.T, what string, click chromedp.Action[chromedp.Void]) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	from := b.location(t)
	resp, err := chromedp.RunResponse(ctx, click)
	if err != nil {
		t.Fatalf("click %s (at %s): %v", what, from, err)
	}
	if resp == nil {
		t.Fatalf("click %s (at %s): no page loaded", what, from)
	}
	if resp.Status >= 400 && !b.httpErrs[resp.URL] {
		t.Fatalf("click %s (at %s): %s answered %d", what, from, resp.URL, resp.Status)
	}
	b.checkTitle(t)
	return resp.Status
}

// expectHTTPError tells that a 4xx answer of url is what the test wants,
// and the browser's console line about it no error of the page.
func (b *browser) expectHTTPError(url string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.httpErrs[url] = true
}

func (b *browser) heading(t *testing.T, text string) {
	t.Helper()
	b.run(t, fmt.Sprintf("no <h1> %q", text), chromedp.WaitVisible(chromedp.Search(fmt.Sprintf(`//h1[normalize-space(.)=%q]`, text))))
}

// role waits for an element of that role (status, alert) whose text
// contains text.
func (b *browser) role(t *testing.T, role, text string) {
	t.Helper()
	b.run(t, fmt.Sprintf("no role=%s saying %q", role, text),
		chromedp.WaitVisible(chromedp.Search(fmt.Sprintf(`//*[@role=%q][contains(normalize-space(.), %q)]`, role, text))))
}

// contains checks that the page's text shows each of texts.
func (b *browser) contains(t *testing.T, texts ...string) {
	t.Helper()
	body := eval[string](t, b, `document.body.innerText`)
	for _, s := range texts {
		if !strings.Contains(body, s) {
			t.Errorf("%s does not show %q", b.location(t), s)
		}
	}
}

func (b *browser) count(t *testing.T, css string) int {
	t.Helper()
	return eval[int](t, b, fmt.Sprintf(`document.querySelectorAll(%q).length`, css))
}

// tableTags are the tags in the first column of the page's table.
func (b *browser) tableTags(t *testing.T) []string {
	t.Helper()
	return eval[[]string](t, b, `[...document.querySelectorAll('main table tbody tr')].map(tr => tr.cells[0].innerText.trim())`)
}

func (b *browser) typeInto(t *testing.T, role, name, text string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	sel := role + " " + name
	_, err := chromedp.Run(ctx, chromedp.WaitEvent(pageLoaded /* the form's submission loads a page */, nil,
		chromedp.SendKeys(sel, text, byName(role, name), chromedp.NodeVisible)))
	if err != nil {
		t.Fatalf("typing into %s %q: %v", role, name, err)
	}
	b.checkTitle(t)
}

func (b *browser) press(t *testing.T, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, actionTimeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.WaitEvent(pageLoaded, nil, chromedp.KeyEvent(key))); err != nil {
		t.Fatalf("pressing %q: %v", key, err)
	}
}

// tabTo presses Tab until the element css finds has the focus, and checks
// that the focus shows.
func (b *browser) tabTo(t *testing.T, css string) {
	t.Helper()
	for range 20 {
		b.run(t, "Tab", chromedp.KeyEvent("\t"))
		if eval[bool](t, b, fmt.Sprintf(`document.activeElement === document.querySelector(%q)`, css)) {
			visible := eval[bool](t, b, `(() => {
				const e = document.activeElement, s = getComputedStyle(e);
				return e.matches(':focus-visible') && ((s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) || s.boxShadow !== 'none');
			})()`)
			if !visible {
				t.Errorf("%s has the focus but shows no focus ring", css)
			}
			return
		}
	}
	t.Fatalf("20 Tabs never reached %s (focus on %s)", css, eval[string](t, b, `document.activeElement.outerHTML.slice(0, 200)`))
}

// viewport sets the page's width and height in CSS pixels and the device
// pixels per CSS pixel (2: a 200% zoom).
func (b *browser) viewport(t *testing.T, width, height int64, scale float64) {
	t.Helper()
	b.run(t, fmt.Sprintf("viewport %dx%d at %gx", width, height, scale), chromedp.EmulateViewport(width, height, chromedp.EmulateScale(scale)))
}

// noSidewaysScroll checks that the page is no wider than its window: no
// line needs scrolling sideways to read.
func (b *browser) noSidewaysScroll(t *testing.T) {
	t.Helper()
	got := eval[[]int](t, b, `[document.documentElement.scrollWidth, document.documentElement.clientWidth]`)
	if got[0] > got[1] {
		wide := eval[string](t, b, `[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1 && !e.closest('.scroll')).slice(0, 5).map(e => e.outerHTML.slice(0, 120)).join("\n")`)
		t.Errorf("%s is %d px wide in a %d px window; too wide:\n%s", b.location(t), got[0], got[1], wide)
	}
}

// focusInView checks that the focused element is on screen, within the
// window's width (a table that scrolls in its container scrolled to it).
func (b *browser) focusInView(t *testing.T) {
	t.Helper()
	if !eval[bool](t, b, `(() => {
		const r = document.activeElement.getBoundingClientRect();
		return r.width > 0 && r.left >= -1 && r.right <= document.documentElement.clientWidth + 1; // layout at scale 2 may land on half pixels
	})()`) {
		t.Errorf("the focused %s is outside the window", eval[string](t, b, `document.activeElement.outerHTML.slice(0, 200)`))
	}
}

func (b *browser) login(t *testing.T, user, password string) {
	t.Helper()
	b.find(t, "textbox", "User name")
	b.find(t, "textbox", "Password")
	b.run(t, "the login form",
		chromedp.SendKeys("User name", user, byName("textbox", "User name"), chromedp.NodeVisible),
		chromedp.SendKeys("Password", password, byName("textbox", "Password"), chromedp.NodeVisible))
	b.follow(t, "button", "Log in")
}

// noConsoleErrors fails the test for each console error or uncaught
// exception since the last call, but the browser's line about an HTTP
// error the test asked for.
func (b *browser) noConsoleErrors(t *testing.T) {
	t.Helper()
	b.run(t, "settle", chromedp.Evaluate[chromedp.Void](`0`)) // the events of the last page are in
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.messages {
		if m.Source == "network" && b.httpErrs[m.URL] {
			continue
		}
		t.Errorf("console %s at %s:%d: %s", m.Type, m.URL, m.Line+1, m.Text)
	}
	b.messages = nil
}

// shot saves the page, light and dark, full length, as
// testdata/ui/<name>-<scheme>.png when BERTH_UI_SCREENSHOTS=1.
func (b *browser) shot(t *testing.T, name string) {
	t.Helper()
	if os.Getenv("BERTH_UI_SCREENSHOTS") != "1" {
		return
	}
	dir := filepath.Join("..", "..", "testdata", "ui")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b.run(t, "blur", chromedp.Evaluate[chromedp.Void](`document.activeElement?.blur()`)) // no focus ring in the picture
	for _, scheme := range []string{"light", "dark"} {
		ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
		b.scheme(t, scheme)
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		cancel()
		if err != nil {
			t.Fatalf("screenshot of %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+"-"+scheme+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b.scheme(t, "light")
}

// pageLoaded is the event of a page that finished loading.
var pageLoaded = page.LoadEventFired
