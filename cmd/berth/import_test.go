package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// The tests of `berth import` run the reference registry v3.1.2 (the
// binary scripts/registry.sh installs), push into it over HTTP, import its
// storage tree with the built berth binary while pushes go on, and compare
// what a Berth serving the result answers with what the registry answers.

// registryBinary finds the reference registry: BERTH_TEST_REGISTRY, which
// scripts/test.sh sets, else the one scripts/registry.sh installs into the
// module's .cache/bin.
func registryBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("BERTH_TEST_REGISTRY"); p != "" {
		return p
	}
	if p, err := filepath.Abs("../../.cache/bin/registry"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("no reference registry: set BERTH_TEST_REGISTRY, or run scripts/registry.sh (scripts/test.sh does both)")
	return ""
}

// startRegistry runs the reference registry on a free port with the
// filesystem driver at root (deletes enabled) and returns its URL.
func startRegistry(t *testing.T, root string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := filepath.Join(t.TempDir(), "config.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, root, addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(registryBinary(t), "serve", cfg)
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("registry log:\n%s", out.String())
		}
	})
	base := "http://" + addr
	waitUntil(t, "the reference registry answers", func() bool {
		resp, err := http.Get(base + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return base
}

const manifestAccept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, " +
	"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

// regClient pushes into a registry over plain HTTP, as a client would.
type regClient struct {
	t    *testing.T
	base string
}

func (c regClient) do(method, u string, body []byte, header ...string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// blob uploads data to repo (POST, then PUT with the digest).
func (c regClient) blob(repo string, data []byte) (digest.Digest, error) {
	d := digest.FromBytes(data)
	resp, _, err := c.do("POST", c.base+"/v2/"+repo+"/blobs/uploads/", nil)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("POST upload: %d", resp.StatusCode)
	}
	loc := resp.Header.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = c.base + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	resp, b, err := c.do("PUT", loc+sep+"digest="+d.String(), data, "Content-Type: application/octet-stream")
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("PUT upload: %d %s", resp.StatusCode, b)
	}
	return d, nil
}

// manifest pushes payload to repo as ref (a tag or its digest).
func (c regClient) manifest(repo, ref, mediaType string, payload []byte) (digest.Digest, error) {
	resp, b, err := c.do("PUT", c.base+"/v2/"+repo+"/manifests/"+ref, payload, "Content-Type: "+mediaType)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("PUT manifest %s:%s: %d %s", repo, ref, resp.StatusCode, b)
	}
	return digest.FromBytes(payload), nil
}

type desc struct {
	MediaType    string            `json:"mediaType"`
	Digest       digest.Digest     `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Platform     map[string]string `json:"platform,omitempty"`
}

const ociIndex = "application/vnd.oci.image.index.v1+json"

// image pushes an image of a config and a layer made from seed, and a
// layer every image shares, tagged ref (or by digest when ref is empty).
func (c regClient) image(repo, ref, seed string) (desc, error) {
	shared := bytes.Repeat([]byte("shared base layer "), 1000)
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","seed":%q}`, seed))
	layer := []byte("layer of " + seed)
	m := map[string]any{"schemaVersion": 2, "mediaType": ociManifest}
	var layers []desc
	for i, b := range [][]byte{cfg, shared, layer} {
		d, err := c.blob(repo, b)
		if err != nil {
			return desc{}, err
		}
		if i == 0 {
			m["config"] = desc{MediaType: "application/vnd.oci.image.config.v1+json", Digest: d, Size: int64(len(b))}
			continue
		}
		layers = append(layers, desc{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: d, Size: int64(len(b))})
	}
	m["layers"] = layers
	payload, _ := json.Marshal(m)
	d := digest.FromBytes(payload)
	if ref == "" {
		ref = d.String()
	}
	if _, err := c.manifest(repo, ref, ociManifest, payload); err != nil {
		return desc{}, err
	}
	return desc{MediaType: ociManifest, Digest: d, Size: int64(len(payload))}, nil
}

func (c regClient) must(d desc, err error) desc {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
	return d
}

// seed pushes what a registry in use holds: tags, a tag moved (history),
// an untagged manifest, a multi-platform index, an artifact with a subject
// and the referrers fallback tag a client writes for it, a deleted tag, a
// deleted manifest; and fill repositories of three tags each.
func (c regClient) seed(fill int) (gone desc) {
	t := c.t
	img1 := c.must(c.image("team/app", "v1", "one"))
	c.must(c.image("team/app", "v2", "two"))
	c.must(c.image("team/app", "v2", "three")) // v2 moved
	c.must(c.image("team/app", "", "untagged"))
	amd := c.must(c.image("team/app", "", "amd64"))
	arm := c.must(c.image("team/app", "", "arm64"))
	amd.Platform, arm.Platform = map[string]string{"architecture": "amd64", "os": "linux"}, map[string]string{"architecture": "arm64", "os": "linux"}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": ociIndex, "manifests": []desc{amd, arm}})
	if _, err := c.manifest("team/app", "multi", ociIndex, index); err != nil {
		t.Fatal(err)
	}
	// An artifact (a signature) whose subject is img1, and the fallback
	// tag sha256-<hex> listing it, as clients write without a referrers API.
	empty, err := c.blob("team/app", []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := c.blob("team/app", []byte("a signature"))
	if err != nil {
		t.Fatal(err)
	}
	art, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": ociManifest, "artifactType": "application/vnd.example.sig",
		"config": desc{MediaType: "application/vnd.oci.empty.v1+json", Digest: empty, Size: 2},
		"layers": []desc{{MediaType: "application/vnd.example.sig", Digest: sig, Size: 11}}, "subject": img1})
	artD, err := c.manifest("team/app", digest.FromBytes(art).String(), ociManifest, art)
	if err != nil {
		t.Fatal(err)
	}
	fallback, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": ociIndex,
		"manifests": []desc{{MediaType: ociManifest, Digest: artD, Size: int64(len(art)), ArtifactType: "application/vnd.example.sig"}}})
	if _, err := c.manifest("team/app", "sha256-"+img1.Digest.Encoded(), ociIndex, fallback); err != nil {
		t.Fatal(err)
	}
	// A tag deleted, and a manifest deleted (with its tag).
	c.must(c.image("team/app", "gone", "one"))
	if resp, _, err := c.do("DELETE", c.base+"/v2/team/app/manifests/gone", nil); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete tag: %v %v", resp, err)
	}
	gone = c.must(c.image("team/app", "deleted", "deleted manifest"))
	if resp, _, err := c.do("DELETE", c.base+"/v2/team/app/manifests/"+gone.Digest.String(), nil); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete manifest: %v %v", resp, err)
	}
	c.must(c.image("team/lib", "latest", "lib"))
	for i := range fill {
		for k := range 3 {
			c.must(c.image(fmt.Sprintf("fill/r%03d", i), fmt.Sprintf("t%d", k), fmt.Sprintf("fill %d %d", i, k)))
		}
	}
	return gone
}

// livePusher pushes new tags into repository live/during until stopped,
// while an import runs.
type livePusher struct {
	stop chan struct{}
	done chan struct{}
	n    atomic.Int64
	err  error
}

func startPusher(c regClient) *livePusher {
	p := &livePusher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			default:
			}
			if _, err := c.image("live/during", fmt.Sprintf("p%d", i), fmt.Sprintf("pushed during the import %d", i)); err != nil {
				p.err = err
				return
			}
			p.n.Add(1)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return p
}

func (p *livePusher) finish(t *testing.T) int64 {
	close(p.stop)
	<-p.done
	if p.err != nil {
		t.Fatal(p.err)
	}
	return p.n.Load()
}

// runImport runs berth import with args, and the environment env, to the
// end, and returns its standard output.
func runImport(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(berthBinary(t), append([]string{"import"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("berth import: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// killImportHalfway starts berth import and kills it (SIGKILL) once it has
// stored some of the repositories, not all.
func killImportHalfway(t *testing.T, dbURL string, total int, env []string, args ...string) {
	t.Helper()
	d, err := db.Open(context.Background(), dbURL, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cmd := exec.Command(berthBinary(t), append([]string{"import", "--workers", "1"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		select {
		case err := <-exited:
			t.Fatalf("the import ended before it could be killed halfway (%v):\n%s", err, out.String())
		case <-time.After(5 * time.Millisecond):
		}
		repos, _, err := d.RepositoryList(context.Background(), "", 10000)
		if err != nil {
			t.Fatal(err)
		}
		if len(repos) >= total/3 {
			cmd.Process.Signal(syscall.SIGKILL)
			<-exited
			t.Logf("killed the import after %d of %d repositories", len(repos), total)
			return
		}
	}
}

// revisions lists every manifest revision link of the tree at root, by
// repository.
func revisions(t *testing.T, root string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	base := filepath.Join(root, "docker/registry/v2/repositories")
	err := filepath.WalkDir(base, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || e.Name() != "link" {
			return err
		}
		rel, _ := filepath.Rel(base, p)
		repo, rest, ok := strings.Cut(rel, "/_manifests/revisions/")
		if !ok {
			return nil
		}
		alg, hex, _ := strings.Cut(strings.TrimSuffix(rest, "/link"), "/")
		out[repo] = append(out[repo], alg+":"+hex)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// getManifest returns a manifest's bytes and digest header, or the status.
func getManifest(t *testing.T, base, repo, ref string) ([]byte, string, int) {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/v2/"+repo+"/manifests/"+ref, nil)
	req.Header.Set("Accept", manifestAccept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b, resp.Header.Get("Docker-Content-Digest"), resp.StatusCode
}

// compare checks that Berth (at berth) serves what the registry (at reg,
// tree at root) serves: the catalog, every tag list, every tag and every
// revision byte for byte, every blob they reference; it returns the
// number of manifests compared.
func compare(t *testing.T, reg, berth, root string) int {
	t.Helper()
	var regCat, berthCat struct{ Repositories []string }
	getJSON(t, reg+"/v2/_catalog?n=1000", &regCat)
	getJSON(t, berth+"/v2/_catalog?n=1000", &berthCat)
	if !slices.Equal(regCat.Repositories, berthCat.Repositories) {
		t.Fatalf("catalogs differ:\nregistry %v\nberth    %v", regCat.Repositories, berthCat.Repositories)
	}
	revs := revisions(t, root)
	blobsSeen := map[string]bool{}
	n := 0
	for _, repo := range regCat.Repositories {
		var regTags, berthTags struct{ Tags []string }
		getJSON(t, reg+"/v2/"+repo+"/tags/list?n=1000", &regTags)
		getJSON(t, berth+"/v2/"+repo+"/tags/list?n=1000", &berthTags)
		slices.Sort(regTags.Tags)
		if !slices.Equal(regTags.Tags, berthTags.Tags) {
			t.Errorf("%s: tags differ:\nregistry %v\nberth    %v", repo, regTags.Tags, berthTags.Tags)
		}
		refs := append(slices.Clone(regTags.Tags), revs[repo]...)
		for _, ref := range refs {
			want, wantD, status := getManifest(t, reg, repo, ref)
			if status != http.StatusOK {
				t.Fatalf("registry: %s:%s: %d", repo, ref, status)
			}
			got, gotD, status := getManifest(t, berth, repo, ref)
			if status != http.StatusOK || !bytes.Equal(got, want) || gotD != wantD {
				t.Errorf("%s:%s: berth answers %d %s, the registry %s", repo, ref, status, gotD, wantD)
				continue
			}
			n++
			var m struct {
				Config *desc
				Layers []desc
			}
			json.Unmarshal(got, &m)
			if m.Config != nil {
				m.Layers = append(m.Layers, *m.Config)
			}
			for _, l := range m.Layers {
				if blobsSeen[repo+"@"+l.Digest.String()] {
					continue
				}
				blobsSeen[repo+"@"+l.Digest.String()] = true
				resp, err := http.Get(berth + "/v2/" + repo + "/blobs/" + l.Digest.String())
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || digest.FromBytes(b) != l.Digest {
					t.Errorf("%s blob %s: %d, %d bytes hashing to %s", repo, l.Digest, resp.StatusCode, len(b), digest.FromBytes(b))
				}
			}
		}
	}
	return n
}

// The whole move: a reference registry in use is imported while it takes
// pushes; one import is killed halfway; the next ones finish; then a Berth
// on the result serves exactly what the registry serves, the pushes made
// during the import included, with the tag history the registry kept.
func TestImportFromReferenceRegistry(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	reg := regClient{t, startRegistry(t, root)}
	const fill = 40
	gone := reg.seed(fill)
	dbURL := dbtest.NewURL(t)
	storeDir := t.TempDir()
	env := []string{"BERTH_DATABASE_URL=" + dbURL, "BERTH_STORAGE_DIR=" + storeDir, "BERTH_LOG_LEVEL=warn"}

	pusher := startPusher(reg)
	killImportHalfway(t, dbURL, fill+2, env, "--from-dir", root, "--progress", "lines")
	out := runImport(t, env, "--from-dir", root, "--passes", "3")
	t.Logf("import while pushing:\n%s", out)
	if !regexp.MustCompile(`pass 1 .*\([1-9][0-9]* hard-linked, 0 copied on the S3 server, 0 streamed\)`).MatchString(out) {
		t.Errorf("blobs were not hard-linked:\n%s", out)
	}
	pushed := pusher.finish(t)
	out = runImport(t, env, "--from-dir", root)
	t.Logf("final import, after %d pushes during the import:\n%s", pushed, out)
	if !strings.Contains(out, "done: the last pass found nothing more to import") {
		t.Errorf("the final import did not settle:\n%s", out)
	}
	if !strings.Contains(out, "skipped: nothing") {
		t.Errorf("a clean registry's import skipped something:\n%s", out)
	}

	// What the import stored went through the push path, so the usage
	// kept by it is exact: the check, recomputing from scratch, agrees.
	if out, _, err := runBerth(t, "usage", "check", "--database-url", dbURL); err != nil || !strings.Contains(out, ": 0 differences") {
		t.Errorf("usage check after the import: %v\n%s", err, out)
	}

	berth := startReplica(t, dbURL, []string{"--storage-dir", storeDir}).url()
	n := compare(t, reg.base, berth, root)
	t.Logf("%d manifests byte-identical, %d pushed during the import", n, pushed)
	if _, _, status := getManifest(t, berth, "live/during", fmt.Sprintf("p%d", pushed-1)); status != http.StatusOK {
		t.Errorf("the last push made during the import: %d", status)
	}
	if _, _, status := getManifest(t, berth, "team/app", "gone"); status != http.StatusNotFound {
		t.Errorf("the deleted tag: %d", status)
	}
	if _, _, status := getManifest(t, berth, "team/app", gone.Digest.String()); status != http.StatusNotFound {
		t.Errorf("the deleted manifest: %d", status)
	}
	// v2's history: the two digests the registry's index kept, then the
	// import's creation of the tag.
	var hist struct {
		History []struct{ Action, Digest string }
	}
	getJSON(t, berth+"/v2/team/app/tags/v2/history", &hist)
	if len(hist.History) != 3 {
		t.Errorf("history of v2: %+v", hist)
	}
	// The artifact is found through the referrers API.
	v1, _, _ := getManifest(t, berth, "team/app", "v1")
	var refs struct{ Manifests []desc }
	getJSON(t, berth+"/v2/team/app/referrers/"+digest.FromBytes(v1).String(), &refs)
	if len(refs.Manifests) != 1 || refs.Manifests[0].ArtifactType != "application/vnd.example.sig" {
		t.Errorf("referrers of v1: %+v", refs)
	}
}

// The same tree in S3, imported into an S3-backed Berth in the same
// bucket: blobs are copied on the server, not streamed through berth.
func TestImportFromS3(t *testing.T) {
	t.Parallel()
	endpoint := os.Getenv("BERTH_TEST_S3_ENDPOINT")
	if endpoint == "" {
		t.Skip("BERTH_TEST_S3_ENDPOINT is not set; scripts/test.sh sets it when it starts versitygw")
	}
	root := t.TempDir()
	reg := regClient{t, startRegistry(t, root)}
	reg.seed(3)
	bucket := os.Getenv("BERTH_TEST_S3_BUCKET")
	run := fmt.Sprintf("import-%d", time.Now().UnixNano())
	client := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(os.Getenv("BERTH_TEST_S3_ACCESS_KEY"), os.Getenv("BERTH_TEST_S3_SECRET_KEY"), "")})
	// Upload the tree as the registry's S3 driver lays it out, under the
	// prefix its rootdirectory names.
	var files []string
	filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			files = append(files, p)
		}
		return err
	})
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, p := range files {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			rel, _ := filepath.Rel(root, p)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Error(err)
				return
			}
			key := run + "/src/" + filepath.ToSlash(rel)
			if _, err := client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(b)}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	dbURL := dbtest.NewURL(t)
	// Berth's own store from its settings (environment); the source from
	// the import's --s3-* flags.
	env := []string{"BERTH_DATABASE_URL=" + dbURL, "BERTH_STORAGE=s3", "BERTH_S3_BUCKET=" + bucket, "BERTH_S3_PREFIX=" + run + "/berth/",
		"BERTH_S3_ENDPOINT=" + endpoint, "BERTH_S3_FORCE_PATH_STYLE=true", "BERTH_LOG_LEVEL=warn",
		"AWS_ACCESS_KEY_ID=" + os.Getenv("BERTH_TEST_S3_ACCESS_KEY"), "AWS_SECRET_ACCESS_KEY=" + os.Getenv("BERTH_TEST_S3_SECRET_KEY")}
	out := runImport(t, env, "--from-s3", "--s3-bucket", bucket, "--s3-prefix", run+"/src")
	t.Logf("import from S3:\n%s", out)
	if !regexp.MustCompile(`pass 1 .*\(0 hard-linked, [1-9][0-9]* copied on the S3 server, 0 streamed\)`).MatchString(out) {
		t.Errorf("blobs were not copied on the server:\n%s", out)
	}
	if !strings.Contains(out, "done: the last pass found nothing more to import") || !strings.Contains(out, "skipped: nothing") {
		t.Errorf("the import did not finish cleanly:\n%s", out)
	}
	berth := startReplica(t, dbURL, []string{"--storage", "s3", "--s3-endpoint", endpoint, "--s3-bucket", bucket,
		"--s3-prefix", run + "/berth/", "--s3-force-path-style"}).url()
	n := compare(t, reg.base, berth, root)
	t.Logf("%d manifests byte-identical", n)
	berthS3 := berth

	// From S3 into a filesystem Berth: the blobs are streamed, and hashed
	// on the way.
	dbURL = dbtest.NewURL(t)
	storeDir := t.TempDir()
	out = runImport(t, []string{"BERTH_DATABASE_URL=" + dbURL, "BERTH_STORAGE_DIR=" + storeDir, "BERTH_LOG_LEVEL=warn",
		"AWS_ACCESS_KEY_ID=" + os.Getenv("BERTH_TEST_S3_ACCESS_KEY"), "AWS_SECRET_ACCESS_KEY=" + os.Getenv("BERTH_TEST_S3_SECRET_KEY")},
		"--from-s3", "--s3-bucket", bucket, "--s3-prefix", run+"/src", "--s3-endpoint", endpoint, "--s3-force-path-style", "--trust-digests")
	t.Logf("import from S3 into a filesystem store:\n%s", out)
	if !regexp.MustCompile(`pass 1 .*\(0 hard-linked, 0 copied on the S3 server, [1-9][0-9]* streamed\)`).MatchString(out) {
		t.Errorf("blobs were not streamed:\n%s", out)
	}
	berth = startReplica(t, dbURL, []string{"--storage-dir", storeDir}).url()
	compare(t, reg.base, berth, root)

	// A tag moved in the source (its current link rewritten, so its ETag
	// changes) is moved by the next import.
	_, v2, _ := getManifest(t, reg.base, "team/app", "v2")
	tagKey := run + "/src/docker/registry/v2/repositories/team/app/_manifests/tags/v1/current/link"
	if _, err := client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &bucket, Key: &tagKey,
		Body: strings.NewReader(v2)}); err != nil {
		t.Fatal(err)
	}
	out = runImport(t, env, "--from-s3", "--s3-bucket", bucket, "--s3-prefix", run+"/src")
	if _, got, _ := getManifest(t, berthS3, "team/app", "v1"); got != v2 {
		t.Errorf("after the source moved v1 to %s, Berth's v1 is %s:\n%s", v2, got, out)
	}
}

// An import's changes are events by actor import, like pushes: a manifest
// by tag is a push per tag, one by digest a push without a tag; a
// catch-up pass that follows a tag moved and a tag deleted in the source
// makes a tag event (with previousDigest) and an untag event. Blob links
// are audit rows only, not events (README, Import).
func TestImportEvents(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	reg := regClient{t, startRegistry(t, root)}
	a := reg.must(reg.image("team/lib", "latest", "a"))
	if _, err := reg.manifest("team/lib", "old", ociManifest, registryManifest(t, reg, "latest")); err != nil {
		t.Fatal(err)
	}
	b := reg.must(reg.image("team/lib", "", "b"))
	dbURL := dbtest.NewURL(t)
	env := []string{"BERTH_DATABASE_URL=" + dbURL, "BERTH_STORAGE_DIR=" + t.TempDir(), "BERTH_LOG_LEVEL=warn"}
	runImport(t, env, "--from-dir", root)

	reg.must(reg.image("team/lib", "latest", "b")) // latest moves to b
	if resp, _, err := reg.do("DELETE", reg.base+"/v2/team/lib/manifests/old", nil); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete tag: %v %v", resp, err)
	}
	runImport(t, env, "--from-dir", root)

	d, err := db.Open(context.Background(), dbURL, db.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	evs, _, err := d.EventList(context.Background(), "team/lib", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	name := map[string]string{a.Digest.String(): "a", b.Digest.String(): "b"}
	var got []string
	for _, ev := range evs {
		if ev.Actor.Name != "import" {
			t.Errorf("%s event of %s by %q, want import", ev.Action, ev.Target.Digest, ev.Actor.Name)
		}
		dg := name[ev.Target.Digest]
		if dg == "" {
			dg = ev.Target.Digest // a blob: not expected
		}
		got = append(got, fmt.Sprintf("%s %s:%s prev=%s", ev.Action, dg, ev.Target.Tag, name[ev.PreviousDigest]))
	}
	// The first pass's pushes in any order; the catch-up's after them.
	first := min(len(got), 3)
	slices.Sort(got[:first])
	want := []string{"push a:latest prev=", "push a:old prev=", "push b: prev="}
	if len(got) != 5 || !slices.Equal(got[:3], want) ||
		!slices.Equal(sorted(got[3:]), []string{"tag b:latest prev=a", "untag a:old prev="}) {
		t.Errorf("events of team/lib:\n%s\nwant %v, then the tag move and the untag", strings.Join(got, "\n"), want)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// registryManifest is the manifest ref of team/lib in the registry.
func registryManifest(t *testing.T, reg regClient, ref string) []byte {
	t.Helper()
	resp, body, err := reg.do("GET", reg.base+"/v2/team/lib/manifests/"+ref, nil, "Accept: "+manifestAccept)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest %s: %v %v", ref, resp, err)
	}
	return body
}
