package handlers_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db/dbtest"
	"github.com/berth-registry/berth/handlers"
)

// The web interface, driven over HTTP as a browser without script would:
// GET a page, read its form, POST it with the page's CSRF token.

type browser struct {
	t    *testing.T
	base string
	c    *http.Client
}

func (r *registry) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: r.t, base: r.srv.URL, c: &http.Client{Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type page struct {
	status int
	header http.Header
	body   string
}

func (b *browser) send(req *http.Request) page {
	b.t.Helper()
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, resp.Header, string(body)}
}

func (b *browser) get(path string) page {
	b.t.Helper()
	req, _ := http.NewRequest("GET", b.base+path, nil)
	return b.send(req)
}

func (b *browser) post(path string, form url.Values, header ...string) page {
	b.t.Helper()
	req, _ := http.NewRequest("POST", b.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	return b.send(req)
}

var (
	csrfRe   = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	hiddenRe = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)
	h1Re     = regexp.MustCompile(`(?s)<h1>(.*?)</h1>`)
	alertRe  = regexp.MustCompile(`(?s)role="alert">(.*?)</p>`)
)

// confirm opens the confirmation page at path and posts its form, as the
// button would.
func (b *browser) confirm(path string, extra url.Values) page {
	b.t.Helper()
	p := b.get(path)
	if p.status != http.StatusOK {
		b.t.Fatalf("GET %s: %d %s", path, p.status, p.body)
	}
	form := url.Values{}
	for _, m := range hiddenRe.FindAllStringSubmatch(p.body, -1) {
		form.Set(m[1], unescape(m[2]))
	}
	for k, v := range extra {
		form[k] = v
	}
	action := regexp.MustCompile(`<form method="post" action="([^"]+)" class="confirm">`).FindStringSubmatch(p.body)
	if action == nil {
		b.t.Fatalf("no confirmation form on %s: %s", path, p.body)
	}
	return b.post(unescape(action[1]), form)
}

func unescape(s string) string {
	return strings.NewReplacer("&#43;", "+", "&amp;", "&", "&#34;", `"`, "&#39;", "'").Replace(s)
}

func (p page) csrf(t *testing.T) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("no CSRF token in page: %s", p.body)
	}
	return m[1]
}

func (p page) h1() string {
	m := h1Re.FindStringSubmatch(p.body)
	if m == nil {
		return ""
	}
	return unescape(m[1])
}

func (p page) alert() string {
	m := alertRe.FindStringSubmatch(p.body)
	if m == nil {
		return ""
	}
	return unescape(m[1])
}

func (p page) expect(t *testing.T, status int, h1 string) {
	t.Helper()
	if p.status != status || p.h1() != h1 {
		t.Fatalf("got %d with h1 %q, want %d %q; alert %q", p.status, p.h1(), status, h1, p.alert())
	}
}

func TestUIPages(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	img := r.image("demo/app", "one")
	m1 := r.pushManifest("demo/app", "v1", mtManifest, img)
	img2 := r.image("demo/app", "two")
	r.pushManifest("demo/app", "v2", mtManifest, img2)
	idx := []byte(strings.Replace(string(ociIndex(img, img2)), `"size":`+fmt.Sprint(len(img))+`}`,
		`"size":`+fmt.Sprint(len(img))+`,"platform":{"architecture":"arm64","os":"linux"}}`, 1))
	mi := r.pushManifest("demo/app", "multi", mtIndex, idx)
	b := r.browser()

	home := b.get("/")
	if home.status != http.StatusFound || home.header.Get("Location") != "/ui/" {
		t.Errorf("GET /: %d %s", home.status, home.header.Get("Location"))
	}
	list := b.get("/ui/")
	list.expect(t, 200, "Repositories")
	if !strings.Contains(list.body, `href="/ui/r/demo/app/"`) {
		t.Errorf("repository not listed: %s", list.body)
	}
	if csp := list.header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	repo := b.get("/ui/r/demo/app/")
	repo.expect(t, 200, "demo/app")
	for _, want := range []string{">Untag v1</a>", ">History of multi</a>", m1.String(), "linux/arm64"} {
		if !strings.Contains(repo.body, want) {
			t.Errorf("repository page lacks %s", want)
		}
	}
	b.get("/ui/r/demo/app/?q=mul").expect(t, 200, "demo/app")
	if p := b.get("/ui/r/demo/app/?q=mul"); strings.Contains(p.body, ">History of v1</a>") || !strings.Contains(p.body, ">History of multi</a>") {
		t.Errorf("search mul: %s", p.body)
	}
	man := b.get("/ui/r/demo/app/-/manifests/" + m1.String())
	man.expect(t, 200, "demo/app@"+m1.String())
	if !strings.Contains(man.body, "linux/amd64") || !strings.Contains(man.body, ">Delete manifest "+m1.String()+"</a>") || !strings.Contains(man.body, "docker pull "+strings.TrimPrefix(r.srv.URL, "http://")+"/demo/app:v1") {
		t.Errorf("manifest page lacks the config's platform or the delete link: %s", man.body)
	}
	index := b.get("/ui/r/demo/app/-/manifests/" + mi.String())
	index.expect(t, 200, "demo/app@"+mi.String())
	if !strings.Contains(index.body, "linux/arm64") {
		t.Errorf("index page lacks the platform: %s", index.body)
	}
	b.get("/ui/r/demo/app/-/history/v1").expect(t, 200, "demo/app:v1")
	b.get("/ui/r/demo/app/-/untagged").expect(t, 200, "Untagged manifests of demo/app")
	audit := b.get("/ui/r/demo/app/-/audit?action=tag.create")
	audit.expect(t, 200, "Audit trail of demo/app")
	if strings.Contains(audit.body, "<td>blob.upload</td>") || !strings.Contains(audit.body, "<td>tag.create</td>") {
		t.Errorf("audit filter: %s", audit.body)
	}
	b.get("/ui/r/demo/app/-/audit?action=nonsense").expect(t, 400, "Bad request")
	b.get("/ui/gc").expect(t, 200, "Garbage collection")
	b.get("/ui/r/demo/none/").expect(t, 404, "Not Found")
	b.get("/ui/r/demo/app/-/manifests/sha256:"+strings.Repeat("0", 64)).expect(t, 404, "Not Found")
	b.get("/ui/nowhere").expect(t, 404, "Not Found")
	if css := b.get("/ui/static/style.css"); css.status != 200 || !strings.HasPrefix(css.header.Get("Content-Type"), "text/css") {
		t.Errorf("style.css: %d %s", css.status, css.header.Get("Content-Type"))
	}
	if js := b.get("/ui/static/app.js"); js.status != 200 {
		t.Errorf("app.js: %d", js.status)
	}
}

func TestUIActions(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	img := r.image("demo/app", "one")
	m1 := r.pushManifest("demo/app", "v1", mtManifest, img)
	r.pushManifest("demo/app", "latest", mtManifest, img)
	img2 := r.image("demo/app", "two")
	m2 := r.pushManifest("demo/app", "v2", mtManifest, img2)
	r.pushManifest("demo/app", "all", mtIndex, ociIndex(img2))
	b := r.browser()

	t.Run("untag", func(t *testing.T) {
		c := b.get("/ui/r/demo/app/-/untag/v1")
		c.expect(t, 200, "Untag v1 of demo/app?")
		if !strings.Contains(c.body, ">Untag v1</button>") || !strings.Contains(c.body, "only this tag is removed; manifest "+m1.String()+" stays, pullable by digest, with its other tags latest.") {
			t.Errorf("confirmation: %s", c.body)
		}
		done := b.confirm("/ui/r/demo/app/-/untag/v1", nil)
		if done.status != http.StatusSeeOther || !strings.HasPrefix(done.header.Get("Location"), "/ui/r/demo/app/?done=untag") {
			t.Fatalf("untag: %d %s %s", done.status, done.header.Get("Location"), done.body)
		}
		r.do("GET", "/v2/demo/app/manifests/v1", nil).expect(t, 404, "MANIFEST_UNKNOWN")
		r.do("GET", "/v2/demo/app/manifests/"+m1.String(), nil).expect(t, 200, "")
		after := b.get(done.header.Get("Location"))
		if !strings.Contains(after.body, `role="status">Untagged v1</p>`) {
			t.Errorf("no flash after the untag: %s", after.body)
		}
		rows := dbRows(t, r, `SELECT count(*) FROM audit_log WHERE action = 'tag.untag' AND tag = 'v1' AND actor LIKE 'anonymous@%'`)
		if rows != 1 {
			t.Errorf("%d audit rows of the untag with the actor", rows)
		}
	})

	t.Run("restore", func(t *testing.T) {
		hist := b.get("/ui/r/demo/app/-/history/v1")
		if !strings.Contains(hist.body, ">Restore v1 to "+m1.String()[:len("sha256:")+12]+"</a>") {
			t.Fatalf("no restore link: %s", hist.body)
		}
		b.get("/ui/r/demo/app/-/restore/v1?digest="+m1.String()).expect(t, 200, "Restore v1 of demo/app?")
		done := b.confirm("/ui/r/demo/app/-/restore/v1?digest="+m1.String(), nil)
		if done.status != http.StatusSeeOther {
			t.Fatalf("restore: %d %s", done.status, done.body)
		}
		if got := r.do("GET", "/v2/demo/app/manifests/v1", nil); got.StatusCode != 200 || got.Header.Get("Docker-Content-Digest") != m1.String() {
			t.Errorf("v1 after the restore: %d %s", got.StatusCode, got.Header.Get("Docker-Content-Digest"))
		}
	})

	t.Run("refused delete", func(t *testing.T) {
		// m2 is listed by the index "all": the API answers 409.
		refused := b.confirm("/ui/r/demo/app/-/delete/"+m2.String(), nil)
		want := r.do("DELETE", "/v2/demo/app/manifests/"+m2.String(), nil)
		if refused.status != http.StatusConflict || want.StatusCode != http.StatusConflict {
			t.Fatalf("delete of a listed manifest: ui %d, API %d", refused.status, want.StatusCode)
		}
		if msg := refused.alert(); msg == "" || !strings.Contains(string(want.body), strings.ReplaceAll(msg, `"`, `\"`)) {
			t.Errorf("alert %q is not the API's message %s", msg, want.body)
		}
	})

	t.Run("delete, then restore the deleted", func(t *testing.T) {
		done := b.confirm("/ui/r/demo/app/-/delete/"+m1.String(), nil)
		if done.status != http.StatusSeeOther {
			t.Fatalf("delete: %d %s", done.status, done.body)
		}
		r.do("GET", "/v2/demo/app/manifests/"+m1.String(), nil).expect(t, 404, "MANIFEST_UNKNOWN")
		r.do("GET", "/v2/demo/app/manifests/latest", nil).expect(t, 404, "MANIFEST_UNKNOWN")
		done = b.confirm("/ui/r/demo/app/-/restore/latest?digest="+m1.String(), nil)
		if done.status != http.StatusSeeOther {
			t.Fatalf("restore of a deleted manifest: %d %s", done.status, done.alert())
		}
		r.do("GET", "/v2/demo/app/manifests/latest", nil).expect(t, 200, "")
	})

	t.Run("refused untag of a missing tag", func(t *testing.T) {
		p := b.confirm("/ui/r/demo/app/-/untag/nope", nil)
		if p.status != http.StatusNotFound || p.alert() == "" {
			t.Errorf("untag nope: %d %q", p.status, p.alert())
		}
	})
}

func dbRows(t *testing.T, r *registry, sql string) int64 {
	t.Helper()
	return dbtest.QueryInt(t, r.dbURL, sql)
}

func TestUICSRF(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	r.pushManifest("demo/app", "v1", mtManifest, r.image("demo/app", "one"))
	b := r.browser()
	token := b.get("/ui/r/demo/app/-/untag/v1").csrf(t)
	for _, tc := range []struct {
		name   string
		form   url.Values
		header []string
	}{
		{"no token", url.Values{}, nil},
		{"wrong token", url.Values{"csrf": {"x" + token[1:]}}, nil},
		{"cross-site", url.Values{"csrf": {token}}, []string{"Sec-Fetch-Site: cross-site"}},
		{"other origin", url.Values{"csrf": {token}}, []string{"Origin: https://evil.example"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := b.post("/ui/r/demo/app/-/untag/v1", tc.form, tc.header...)
			if p.status != http.StatusForbidden || p.alert() == "" {
				t.Errorf("%d %q", p.status, p.alert())
			}
			r.do("GET", "/v2/demo/app/manifests/v1", nil).expect(t, 200, "")
		})
	}
	// Another browser, without the first one's cookie, cannot use its token.
	other := r.browser()
	if p := other.post("/ui/r/demo/app/-/untag/v1", url.Values{"csrf": {token}}); p.status != http.StatusForbidden {
		t.Errorf("a token without its cookie: %d", p.status)
	}
	if p := b.post("/ui/r/demo/app/-/untag/v1", url.Values{"csrf": {token}}); p.status != http.StatusSeeOther {
		t.Errorf("the right token: %d %s", p.status, p.alert())
	}
}

func TestUIBasicAuth(t *testing.T) {
	t.Parallel()
	r := newRegistryWith(t, func(o *handlers.Options) { o.Auth = handlers.AuthConfig{Mode: handlers.AuthBasic} })
	authWorld(t, r.db)
	root := basicHeader("root", "root-secret")
	for _, repo := range []string{"team-a/app", "team-b/x", "public/y"} {
		config, layer := []byte(`{"architecture":"amd64","os":"linux"}`), []byte("layer of "+repo)
		for _, blob := range [][]byte{config, layer} {
			r.do("POST", "/v2/"+repo+"/blobs/uploads/?digest="+digest.FromBytes(blob).String(), blob, root).expect(t, 201, "")
		}
		img := ociManifest(digest.FromBytes(config), int64(len(config)), digest.FromBytes(layer), int64(len(layer)))
		r.do("PUT", "/v2/"+repo+"/manifests/v1", img, "Content-Type: "+mtManifest, root).expect(t, 201, "")
	}

	login := func(t *testing.T, user, pass string) (*browser, page) {
		b := r.browser()
		lp := b.get("/ui/login")
		lp.expect(t, 200, "Log in")
		return b, b.post("/ui/login", url.Values{"csrf": {lp.csrf(t)}, "username": {user}, "password": {pass}, "next": {"/ui/"}})
	}

	t.Run("anonymous", func(t *testing.T) {
		b := r.browser()
		p := b.get("/ui/")
		p.expect(t, 200, "Repositories")
		if !strings.Contains(p.body, "public/y") || strings.Contains(p.body, "team-a/app") || !strings.Contains(p.body, `href="/ui/login?next=`) {
			t.Errorf("anonymous sees: %s", p.body)
		}
		b.get("/ui/r/team-a/app/").expect(t, 403, "Forbidden")
		b.get("/ui/gc").expect(t, 403, "Forbidden")
	})

	t.Run("wrong password", func(t *testing.T) {
		_, p := login(t, "alice", "nope")
		if p.status != http.StatusUnauthorized || p.alert() != "invalid username or password" || p.header.Get("WWW-Authenticate") != "" {
			t.Errorf("%d %q %q", p.status, p.alert(), p.header.Get("WWW-Authenticate"))
		}
	})

	t.Run("alice", func(t *testing.T) {
		b, p := login(t, "alice", "alice-secret")
		if p.status != http.StatusSeeOther || p.header.Get("Location") != "/ui/" {
			t.Fatalf("login: %d %s %s", p.status, p.header.Get("Location"), p.alert())
		}
		var session *http.Cookie
		for _, c := range (&http.Response{Header: p.header}).Cookies() {
			if c.Name == "berth_session" {
				session = c
			}
		}
		if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || session.Path != "/ui/" || session.MaxAge <= 0 {
			t.Fatalf("session cookie %+v", session)
		}
		list := b.get("/ui/")
		if !strings.Contains(list.body, "team-a/app") || !strings.Contains(list.body, "public/y") || strings.Contains(list.body, "team-b/x") {
			t.Errorf("alice sees: %s", list.body)
		}
		if !strings.Contains(list.body, "Logged in as <strong>alice</strong>") {
			t.Errorf("no login shown")
		}
		b.get("/ui/r/team-b/x/").expect(t, 403, "Forbidden")
		b.get("/ui/gc").expect(t, 403, "Forbidden")
		if p := b.get("/ui/r/team-a/app/"); !strings.Contains(p.body, ">Untag v1</a>") {
			t.Errorf("alice may delete but has no untag control")
		}
		done := b.confirm("/ui/r/team-a/app/-/untag/v1", nil)
		if done.status != http.StatusSeeOther {
			t.Fatalf("untag: %d %s", done.status, done.alert())
		}
		r.do("GET", "/v2/team-a/app/manifests/v1", nil, root).expect(t, 404, "MANIFEST_UNKNOWN")
		if n := dbRows(t, r, `SELECT count(*) FROM audit_log WHERE action = 'tag.untag' AND actor = 'alice'`); n != 1 {
			t.Errorf("%d audit rows of alice's untag", n)
		}
		// The API does not take the session as a credential.
		req, _ := http.NewRequest("GET", r.srv.URL+"/v2/team-a/app/tags/list", nil)
		req.Header.Set("Authorization", "Bearer "+session.Value)
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("session as a bearer token: %v %v", resp.StatusCode, err)
		}

		out := b.post("/ui/logout", url.Values{"csrf": {list.csrf(t)}})
		if out.status != http.StatusSeeOther || !strings.Contains(out.header.Get("Set-Cookie"), "berth_session=;") {
			t.Errorf("logout: %d %v", out.status, out.header["Set-Cookie"])
		}
		b.get("/ui/r/team-a/app/").expect(t, 403, "Forbidden")
	})

	t.Run("bob pulls only", func(t *testing.T) {
		b, p := login(t, "bob", "bob-secret")
		if p.status != http.StatusSeeOther {
			t.Fatalf("login: %d", p.status)
		}
		repo := b.get("/ui/r/team-a/app/")
		repo.expect(t, 200, "team-a/app")
		if strings.Contains(repo.body, ">Untag ") || strings.Contains(b.get("/ui/r/team-a/app/-/history/v1").body, ">Restore ") ||
			strings.Contains(b.get("/ui/r/team-a/app/-/untagged").body, ">Delete manifest ") {
			t.Errorf("bob sees action controls")
		}
		c := b.get("/ui/r/team-a/app/-/untag/v1")
		if c.status != http.StatusForbidden || strings.Contains(c.body, `class="confirm"`) || c.alert() != "requested access to the resource is denied" {
			t.Errorf("bob's confirmation page: %d %q", c.status, c.alert())
		}
		post := b.post("/ui/r/team-a/app/-/untag/v1", url.Values{"csrf": {repo.csrf(t)}})
		if post.status != http.StatusForbidden {
			t.Errorf("bob's untag: %d", post.status)
		}
	})

	t.Run("tampered session", func(t *testing.T) {
		b, _ := login(t, "alice", "alice-secret")
		u, _ := url.Parse(r.srv.URL + "/ui/")
		var v string
		for _, c := range b.c.Jar.Cookies(u) {
			if c.Name == "berth_session" {
				v = c.Value
			}
		}
		parts := strings.Split(v, ".")
		if len(parts) != 3 {
			t.Fatalf("session %q", v)
		}
		// Claim to be root, keeping alice's signature.
		parts[1] = strings.Replace(parts[1], parts[1][:4], "eyJz", 1)
		b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "berth_session", Value: strings.Join(parts, ".") + "x", Path: "/ui/"}})
		p := b.get("/ui/r/team-a/app/")
		if p.status != http.StatusUnauthorized || p.h1() != "Log in" || !strings.Contains(p.header.Get("Set-Cookie"), "berth_session=;") {
			t.Errorf("tampered session: %d %q %v", p.status, p.h1(), p.header["Set-Cookie"])
		}
	})
}

// The web interface's untag, restore and delete make the events the API's
// would, by the logged-in user: an untag event, a restore event, and a
// delete event naming the tags it removed.
func TestUIActionEvents(t *testing.T) {
	t.Parallel()
	r := quickBasicRegistry(t)
	root := basicHeader("root", "root-secret")
	var ms []digest.Digest
	for _, tag := range []string{"v1", "v2"} {
		config, layer := []byte(`{"architecture":"amd64","os":"linux"}`), []byte("layer of "+tag)
		for _, blob := range [][]byte{config, layer} {
			r.do("POST", "/v2/team-a/app/blobs/uploads/?digest="+digest.FromBytes(blob).String(), blob, root).expect(t, 201, "")
		}
		img := ociManifest(digest.FromBytes(config), int64(len(config)), digest.FromBytes(layer), int64(len(layer)))
		r.do("PUT", "/v2/team-a/app/manifests/"+tag, img, "Content-Type: "+mtManifest, root).expect(t, 201, "")
		ms = append(ms, digest.FromBytes(img))
	}
	_, before := r.events("repository=team-a/app", root)

	b := r.browser()
	lp := b.get("/ui/login")
	if p := b.post("/ui/login", url.Values{"csrf": {lp.csrf(t)}, "username": {"alice"}, "password": {"alice-secret"}, "next": {"/ui/"}}); p.status != http.StatusSeeOther {
		t.Fatalf("login: %d %s", p.status, p.alert())
	}
	for _, path := range []string{
		"/ui/r/team-a/app/-/untag/v1",
		"/ui/r/team-a/app/-/restore/v1?digest=" + ms[0].String(),
		"/ui/r/team-a/app/-/delete/" + ms[1].String(),
	} {
		if done := b.confirm(path, nil); done.status != http.StatusSeeOther {
			t.Fatalf("%s: %d %s", path, done.status, done.alert())
		}
	}

	_, evs := r.events(fmt.Sprintf("repository=team-a/app&after=%d", len(before)), root)
	var got []string
	for _, ev := range evs {
		got = append(got, fmt.Sprintf("%s %s %s:%s tags=%v by %s", ev.Action, ev.Target.Digest, ev.Target.Tag, ev.PreviousDigest, ev.Target.Tags, ev.Actor.Name))
	}
	want := []string{
		fmt.Sprintf("untag %s v1: tags=[] by alice", ms[0]),
		fmt.Sprintf("restore %s v1: tags=[] by alice", ms[0]),
		fmt.Sprintf("delete %s : tags=[v2] by alice", ms[1]),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("events of the web interface's actions:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Without authentication, the web interface's changes are events by the
// anonymous actor of the browser's address, as the API's are.
func TestUIActionEventsAnonymous(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	m := r.pushManifest("demo/app", "v1", mtManifest, r.image("demo/app", "one"))
	_, before := r.events("repository=demo/app")
	if done := r.browser().confirm("/ui/r/demo/app/-/untag/v1", nil); done.status != http.StatusSeeOther {
		t.Fatalf("untag: %d %s", done.status, done.alert())
	}
	_, evs := r.events(fmt.Sprintf("repository=demo/app&after=%d", len(before)))
	if len(evs) != 1 || evs[0].Action != "untag" || evs[0].Target.Tag != "v1" || evs[0].Target.Digest != m.String() ||
		evs[0].Actor.Name != "anonymous@127.0.0.1" {
		t.Errorf("events of the untag: %+v", evs)
	}
}

// pushAs pushes a small image to repo:tag with the credentials of header,
// seed making it unique, and returns its digest.
func pushAs(t *testing.T, r *registry, repo, tag, seed, header string) digest.Digest {
	t.Helper()
	config, layer := []byte(`{"architecture":"amd64","os":"linux","seed":"`+seed+`"}`), []byte("layer of "+seed)
	for _, blob := range [][]byte{config, layer} {
		r.do("POST", "/v2/"+repo+"/blobs/uploads/?digest="+digest.FromBytes(blob).String(), blob, header).expect(t, 201, "")
	}
	img := ociManifest(digest.FromBytes(config), int64(len(config)), digest.FromBytes(layer), int64(len(layer)))
	r.do("PUT", "/v2/"+repo+"/manifests/"+tag, img, "Content-Type: "+mtManifest, header).expect(t, 201, "")
	return digest.FromBytes(img)
}

// uiLogin logs a new browser in through the login form.
func uiLogin(t *testing.T, r *registry, user, pass string) (*browser, page) {
	t.Helper()
	b := r.browser()
	lp := b.get("/ui/login")
	lp.expect(t, 200, "Log in")
	return b, b.post("/ui/login", url.Values{"csrf": {lp.csrf(t)}, "username": {user}, "password": {pass}, "next": {"/ui/"}})
}

// The history of a tag names who made each change and, when it was made
// with an API token, the token's id (issue 13).
func TestUITagHistoryTokenID(t *testing.T) {
	t.Parallel()
	r := newBasicRegistry(t)
	id, secret := apiToken(t, r.db, "alice")
	pushAs(t, r, "team-a/app", "v1", "with the token", basicHeader("alice", secret))
	pushAs(t, r, "team-a/app", "v1", "with the password", basicHeader("alice", "alice-secret"))

	b, p := uiLogin(t, r, "alice", "alice-secret")
	if p.status != http.StatusSeeOther {
		t.Fatalf("login: %d %s", p.status, p.alert())
	}
	hist := b.get("/ui/r/team-a/app/-/history/v1")
	hist.expect(t, 200, "team-a/app:v1")
	withToken := "<td>alice <small>(token " + id + ")</small></td>"
	if n := strings.Count(hist.body, withToken); n != 1 {
		t.Errorf("%d rows say %s, want the push made with the token: %s", n, withToken, hist.body)
	}
	if n := strings.Count(hist.body, "<td>alice</td>"); n != 1 {
		t.Errorf("%d rows name alice without a token, want the move made with her password: %s", n, hist.body)
	}
}

// The storage page (/ui/gc) and the list of repositories follow the
// catalog's rule: an admin sees everything, unless logged in with an API
// token whose scopes leave out registry:catalog:*. What each credential
// gets from /v2/_catalog is the reference.
func TestUIStorageScopedToken(t *testing.T) {
	t.Parallel()
	r := newBasicRegistry(t)
	root := basicHeader("root", "root-secret")
	pushAs(t, r, "team-a/app", "v1", "a", root)
	pushAs(t, r, "team-b/x", "v1", "b", root)
	_, unscoped := apiToken(t, r.db, "root")
	_, scoped := apiToken(t, r.db, "root", "repository:team-a/**:pull")
	_, catalog := apiToken(t, r.db, "root", "repository:team-a/**:pull", "registry:catalog:*")
	_, alices := apiToken(t, r.db, "alice")

	for _, tc := range []struct {
		name, user, pass string
		whole            bool
	}{
		{"admin, password", "root", "root-secret", true},
		{"admin, unscoped token", "root", unscoped, true},
		{"admin, token scoped to team-a", "root", scoped, false},
		{"admin, token with the catalog scope", "root", catalog, true},
		{"user, unscoped token", "alice", alices, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cat := r.do("GET", "/v2/_catalog", nil, basicHeader(tc.user, tc.pass))
			cat.expect(t, 200, "")
			if got := strings.Contains(string(cat.body), `"team-b/x"`); got != tc.whole {
				t.Fatalf("the catalog lists team-b/x: %v, want %v: %s", got, tc.whole, cat.body)
			}
			b, p := uiLogin(t, r, tc.user, tc.pass)
			if p.status != http.StatusSeeOther {
				t.Fatalf("login: %d %s", p.status, p.alert())
			}
			list := b.get("/ui/")
			if got := strings.Contains(list.body, `href="/ui/r/team-b/x/"`); got != tc.whole {
				t.Errorf("the repositories page lists team-b/x: %v, want %v (as the catalog)", got, tc.whole)
			}
			if got := strings.Contains(list.body, `href="/ui/gc"`); got != tc.whole {
				t.Errorf("the storage page's link shown: %v, want %v", got, tc.whole)
			}
			if tc.whole {
				b.get("/ui/gc").expect(t, 200, "Garbage collection")
			} else {
				b.get("/ui/gc").expect(t, 403, "Forbidden")
			}
		})
	}
}

// Logging in to the interface with an API token as the password works
// with --auth basic and --auth token; the session may do what the token
// may (its scopes narrow the user's grants), changes name the token in
// the audit trail, and revoking the token ends the session.
func TestUILoginAPIToken(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"basic", "token"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			var r *registry
			var push string
			if mode == "basic" {
				r = newBasicRegistry(t)
				push = basicHeader("root", "root-secret")
			} else {
				r, _ = tokenRegistry(t, time.Hour)
				push = bearerHeader(r.getToken(basicHeader("root", "root-secret"), "repository:team-a/app:pull,push"))
			}
			pushAs(t, r, "team-a/app", "v1", "one", push)
			pushAs(t, r, "team-a/app", "v2", "two", push)
			id, full := apiToken(t, r.db, "alice")
			_, pullOnly := apiToken(t, r.db, "alice", "repository:team-a/**:pull")

			if _, p := uiLogin(t, r, "alice", full+"x"); p.status != http.StatusUnauthorized || p.alert() != "invalid username or password" {
				t.Errorf("a wrong token: %d %q", p.status, p.alert())
			}
			if _, p := uiLogin(t, r, "bob", full); p.status != http.StatusUnauthorized {
				t.Errorf("alice's token as bob: %d %q", p.status, p.alert())
			}

			// A pull-only token: alice may delete in team-a, her session
			// with it may not.
			b, p := uiLogin(t, r, "alice", pullOnly)
			if p.status != http.StatusSeeOther || p.header.Get("Location") != "/ui/" {
				t.Fatalf("login with a pull-only token: %d %q", p.status, p.alert())
			}
			if list := b.get("/ui/"); !strings.Contains(list.body, "Logged in as <strong>alice</strong>") || !strings.Contains(list.body, `href="/ui/r/team-a/app/"`) {
				t.Errorf("the pull-only session's repositories: %s", list.body)
			}
			repo := b.get("/ui/r/team-a/app/")
			repo.expect(t, 200, "team-a/app")
			if strings.Contains(repo.body, ">Untag v1</a>") {
				t.Error("a pull-only token's session has an untag control")
			}
			if post := b.post("/ui/r/team-a/app/-/untag/v1", url.Values{"csrf": {repo.csrf(t)}}); post.status != http.StatusForbidden {
				t.Errorf("untag with a pull-only token's session: %d", post.status)
			}

			// An unscoped token: alice's rights; the untag names the token.
			b, p = uiLogin(t, r, "alice", full)
			if p.status != http.StatusSeeOther {
				t.Fatalf("login with a token: %d %q", p.status, p.alert())
			}
			if done := b.confirm("/ui/r/team-a/app/-/untag/v1", nil); done.status != http.StatusSeeOther {
				t.Fatalf("untag: %d %s", done.status, done.alert())
			}
			if n := dbRows(t, r, `SELECT count(*) FROM audit_log WHERE action = 'tag.untag' AND actor = 'alice' AND token_id = '`+id+`'`); n != 1 {
				t.Errorf("%d audit rows of the untag name alice's token", n)
			}
			if hist := b.get("/ui/r/team-a/app/-/history/v1"); !strings.Contains(hist.body, "<td>alice <small>(token "+id+")</small></td>") {
				t.Errorf("the history does not name the token of the untag: %s", hist.body)
			}

			if err := r.db.TokenRevoke(t.Context(), id); err != nil {
				t.Fatal(err)
			}
			if p := b.get("/ui/r/team-a/app/"); p.status != http.StatusUnauthorized || p.h1() != "Log in" {
				t.Errorf("the session of a revoked token: %d %q", p.status, p.h1())
			}
		})
	}
}
