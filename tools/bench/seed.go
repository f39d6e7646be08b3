package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
)

// The data every registry gets, through its own API (seeding is not
// measured):
//
//	bench/base               the config and layer blobs every manifest uses
//	bench/app                one image, tag latest: manifest GET
//	bench/tags               p.Tags tags, each on its own manifest: tag list, untag
//	bench/delete             p.DeleteTags tags on one manifest: delete by digest
//	bench/catalog/rNNNNN     p.Repos repositories of one image each: catalog
//	bench/pull               blobs for the pull scenarios
//	bench/push               where the push scenarios upload
//	bench/bigmanifest        the ~27,000 layers of the 4 MiB manifests

const (
	mtManifest = "application/vnd.oci.image.manifest.v1+json"
	mtConfig   = "application/vnd.oci.image.config.v1+json"
	mtLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

var acceptManifests = []string{
	mtManifest,
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}

// image is the config and layer that every seeded manifest references.
type image struct {
	config, layer             []byte
	configDigest, layerDigest digest.Digest
}

func newImage() image {
	layer := make([]byte, 4096)
	newGen(7, int64(len(layer))).Read(layer)
	img := image{layer: layer, layerDigest: digest.FromBytes(layer)}
	img.config = fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%q]}}`, img.layerDigest)
	img.configDigest = digest.FromBytes(img.config)
	return img
}

// manifest returns an OCI image manifest of img; distinct annotations
// make distinct manifests.
func (img image) manifest(annotation string) []byte {
	type desc struct {
		MediaType string        `json:"mediaType"`
		Digest    digest.Digest `json:"digest"`
		Size      int           `json:"size"`
	}
	m := struct {
		SchemaVersion int               `json:"schemaVersion"`
		MediaType     string            `json:"mediaType"`
		Config        desc              `json:"config"`
		Layers        []desc            `json:"layers"`
		Annotations   map[string]string `json:"annotations,omitempty"`
	}{2, mtManifest,
		desc{mtConfig, img.configDigest, len(img.config)},
		[]desc{{mtLayer, img.layerDigest, len(img.layer)}},
		map[string]string{"org.example.bench": annotation}}
	b, _ := json.Marshal(m)
	return b
}

func tagName(i int) string    { return fmt.Sprintf("t%07d", i) }
func deleteTag(i int) string  { return fmt.Sprintf("d%06d", i) }
func repoName(i int) string   { return fmt.Sprintf("bench/catalog/r%05d", i) }
func smallSeed(i int) uint64  { return 1_000_000 + uint64(i) }
func bigPullSeed() uint64     { return 2_000_000 }
func (e *env) pullSmall() int { return 32 }

// parallel runs fn(0..n-1) on conc workers; it stops at the first error.
func parallel(ctx context.Context, n, conc int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = fmt.Errorf("item %d: %w", i, err); cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

// mountImage links the image's blobs into repo.
func (e *env) mountImage(ctx context.Context, repo string) error {
	if err := e.seedClient.mount(ctx, repo, "bench/base", e.img.configDigest, e.img.config); err != nil {
		return err
	}
	return e.seedClient.mount(ctx, repo, "bench/base", e.img.layerDigest, e.img.layer)
}

// seed runs one seeding step.
func (e *env) seed(ctx context.Context, step string) error {
	c := e.seedClient
	switch step {
	case "base":
		if _, err := c.pushBytes(ctx, "bench/base", e.img.config); err != nil {
			return err
		}
		_, err := c.pushBytes(ctx, "bench/base", e.img.layer)
		return err
	case "app":
		if err := e.mountImage(ctx, "bench/app"); err != nil {
			return err
		}
		m := e.img.manifest("app")
		e.appDigest = digest.FromBytes(m)
		return c.putManifest(ctx, "bench/app", "latest", mtManifest, m)
	case "tags":
		if err := e.mountImage(ctx, "bench/tags"); err != nil {
			return err
		}
		return parallel(ctx, e.p.Tags, e.p.SeedConns, func(ctx context.Context, i int) error {
			return c.putManifest(ctx, "bench/tags", tagName(i), mtManifest, e.img.manifest(tagName(i)))
		})
	case "delete":
		if err := e.mountImage(ctx, "bench/delete"); err != nil {
			return err
		}
		m := e.img.manifest("delete")
		e.deleteDigest = digest.FromBytes(m)
		return parallel(ctx, e.p.DeleteTags, e.p.SeedConns, func(ctx context.Context, i int) error {
			return c.putManifest(ctx, "bench/delete", deleteTag(i), mtManifest, m)
		})
	case "catalog":
		m := e.img.manifest("catalog")
		return parallel(ctx, e.p.Repos, e.p.SeedConns, func(ctx context.Context, i int) error {
			if err := e.mountImage(ctx, repoName(i)); err != nil {
				return err
			}
			return c.putManifest(ctx, repoName(i), "latest", mtManifest, m)
		})
	case "bigmanifest":
		return e.seedBigManifests(ctx)
	case "pull":
		err := parallel(ctx, e.pullSmall(), 4, func(ctx context.Context, i int) error {
			d := genDigest(smallSeed(i), e.p.SmallSize)
			return c.pushMonolithic(ctx, "bench/pull", d, e.p.SmallSize, newGen(smallSeed(i), e.p.SmallSize))
		})
		if err != nil {
			return err
		}
		d := genDigest(bigPullSeed(), e.p.BigSize)
		if err := c.pushMonolithic(ctx, "bench/pull", d, e.p.BigSize, newGen(bigPullSeed(), e.p.BigSize)); err != nil {
			return err
		}
		// One checked download of each size before the timed ones.
		for _, b := range []struct {
			seed uint64
			size int64
		}{{smallSeed(0), e.p.SmallSize}, {bigPullSeed(), e.p.BigSize}} {
			d := genDigest(b.seed, b.size)
			resp, err := c.do(ctx, "GET", "/v2/bench/pull/blobs/"+d.String(), nil, nil, 0, 200)
			if err != nil {
				return err
			}
			v := d.Verifier()
			n, err := copyClose(v, resp.Body)
			if err != nil {
				return err
			}
			if n != b.size || !v.Verified() {
				return fmt.Errorf("GET /v2/bench/pull/blobs/%s: %d bytes that do not match the digest", d, n)
			}
		}
		return nil
	}
	return fmt.Errorf("unknown seed step %q", step)
}

// seedDeps lists the steps a step needs first.
var seedDeps = map[string][]string{
	"app": {"base"}, "tags": {"base"}, "delete": {"base"}, "catalog": {"base"},
}
