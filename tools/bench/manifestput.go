package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/internal/manifestgen"
	"github.com/berth-registry/berth/manifest"
)

// The manifest PUT scenarios: the worst cases of the manifest size limit,
// many at once. Rounds of putConns concurrent PUTs of 4 MiB OCI image
// manifests, each round started together, all distinct (a sequence
// annotation differs): manifests of about 27,000 layers, distinct blobs
// pushed first so that every manifest is valid and stored (in quick mode
// 2,000 blobs, each several times, to seed faster), or manifests of about
// 40,000 annotations. They report the server's peak RSS (VmHWM, reset
// before the scenario) and how the PUTs were answered: 201, 429 (Berth's
// manifest budget refusing for a while), another 4xx, 5xx, or not at all.

const (
	bigManifestRepo = "bench/bigmanifest"
	putConns        = 64
)

// bigManifests are the bodies the PUTs of the scenarios start from, and
// the blobs they reference.
type bigManifests struct {
	layers, annotated []byte
	config            []byte
	layerBlobs        []manifestgen.Blob
}

// newBigManifests returns the two 4 MiB manifests: the layers of the first
// go round distinct small blobs (layerContent(i) for i < distinct; with
// more than fit, every layer is a blob of its own); the second has the
// config and one layer, layerContent(0).
func newBigManifests(distinct int) *bigManifests {
	cand := make([]manifestgen.Blob, distinct)
	for i := range cand {
		c := layerContent(i)
		cand[i] = manifestgen.Blob{Digest: digest.FromBytes(c), Size: int64(len(c))}
	}
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cfg := manifestgen.Blob{Digest: digest.FromBytes(config), Size: int64(len(config))}
	body := manifestgen.Image(cfg, cand, manifest.MaxSize)
	n := min(bytes.Count(body, []byte(manifestgen.MediaTypeLayer)), distinct)
	return &bigManifests{layers: body, annotated: manifestgen.Annotated(cfg, cand[0], manifest.MaxSize),
		config: config, layerBlobs: cand[:n]}
}

func layerContent(i int) []byte { return fmt.Appendf(nil, "berth bench layer %d", i) }

// seedBigManifests pushes the config and every layer of the big manifests.
func (e *env) seedBigManifests(ctx context.Context) error {
	bm := newBigManifests(e.p.PutLayers)
	if _, err := e.seedClient.pushBytes(ctx, bigManifestRepo, bm.config); err != nil {
		return err
	}
	err := parallel(ctx, len(bm.layerBlobs), e.p.SeedConns, func(ctx context.Context, i int) error {
		_, err := e.seedClient.pushBytes(ctx, bigManifestRepo, layerContent(i))
		return err
	})
	if err != nil {
		return err
	}
	e.bigManifests = bm
	return nil
}

// putOutcome counts how the PUTs of the scenario were answered.
type putOutcome struct {
	mu                         sync.Mutex
	created, refused, other4xx int
	serverErr, noAnswer        int
	firstOther, firstServerErr string
	firstNoAnswer              string
	retryAfterMissing          int
	lat                        []time.Duration // of the 201s
}

func (o *putOutcome) record(status int, hdr http.Header, body string, err error, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	first := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	switch {
	case err != nil:
		o.noAnswer++
		first(&o.firstNoAnswer, err.Error())
	case status == http.StatusCreated:
		o.created++
		o.lat = append(o.lat, took)
	case status == http.StatusTooManyRequests:
		o.refused++
		if hdr.Get("Retry-After") == "" {
			o.retryAfterMissing++
		}
	case status >= 500:
		o.serverErr++
		first(&o.firstServerErr, fmt.Sprintf("%d %s", status, strings.TrimSpace(body)))
	default:
		o.other4xx++
		first(&o.firstOther, fmt.Sprintf("%d %s", status, strings.TrimSpace(body)))
	}
}

// manifestPutScenario is the scenario of the manifests of layers, or with
// annotated, of annotations.
func manifestPutScenario(p params, annotated bool) scenario {
	rounds := 3
	if p.Quick {
		rounds = 2
	}
	name, what, id := "put-4MiB", "27k layers each", "manifestput.c64"
	if p.PutLayers < 27_000 {
		what = fmt.Sprintf("27k layers each, of %d distinct blobs", p.PutLayers)
	}
	if annotated {
		name, what, id = "put-4MiB-annotations", "40k annotations each", "manifestput.annotations.c64"
	}
	return scenario{
		Name:  fmt.Sprintf("manifest/%s/c%d", name, putConns),
		Title: fmt.Sprintf("%d concurrent PUTs of 4 MiB manifests (%s), %d rounds", putConns, what, rounds),
		Needs: []string{"bigmanifest"},
		Run: func(ctx context.Context, e *env) ([]metric, error) {
			cl := newClient(e.srv.Base, putConns)
			defer cl.close()
			template := e.bigManifests.layers
			if annotated {
				template = e.bigManifests.annotated
			}
			bufs := make([][]byte, putConns)
			for i := range bufs {
				bufs[i] = bytes.Clone(template)
			}
			var out putOutcome
			t0 := time.Now()
			for round := range rounds {
				start := make(chan struct{})
				var wg sync.WaitGroup
				for w := range putConns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						body := bufs[w]
						manifestgen.SetSeq(body, uint64(round*putConns+w+1))
						req, err := http.NewRequestWithContext(ctx, http.MethodPut,
							cl.url(fmt.Sprintf("/v2/%s/manifests/%s-r%d-w%d", bigManifestRepo, name, round, w)), bytes.NewReader(body))
						if err != nil {
							out.record(0, nil, "", err, 0)
							return
						}
						req.Header.Set("Content-Type", manifestgen.MediaTypeManifest)
						<-start
						t := time.Now()
						resp, err := cl.hc.Do(req)
						if err != nil {
							out.record(0, nil, "", err, 0)
							return
						}
						b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
						resp.Body.Close()
						out.record(resp.StatusCode, resp.Header, string(b), nil, time.Since(t))
					}()
				}
				close(start)
				wg.Wait()
			}
			wall := time.Since(t0)
			peak, _, err := e.srv.memory()
			if err != nil {
				return nil, err
			}
			r := &loadResult{lat: out.lat, Requests: len(out.lat)}
			slices.Sort(r.lat)
			total := rounds * putConns
			section := fmt.Sprintf("Manifest PUT, %d at once, 4 MiB each (%s; %d rounds, %d PUTs)", putConns, what, rounds, total)
			var notes []string
			if out.firstServerErr != "" {
				notes = append(notes, "first 5xx: "+out.firstServerErr)
			}
			if out.firstOther != "" {
				notes = append(notes, "first other 4xx: "+out.firstOther)
			}
			if out.firstNoAnswer != "" {
				notes = append(notes, "first PUT without an answer: "+out.firstNoAnswer)
			}
			if out.retryAfterMissing > 0 {
				notes = append(notes, fmt.Sprintf("%d answers 429 without Retry-After", out.retryAfterMissing))
			}
			for _, n := range notes {
				e.notef("%s: %s", section, n)
			}
			results := []metric{
				{ID: id + ".peakrss", Section: section, Name: "server peak RSS", Unit: "MiB", Value: float64(peak) / (1 << 20)},
				{ID: id + ".created", Section: section, Name: "answered 201 Created", Unit: "PUTs", Higher: true, Value: float64(out.created)},
				{ID: id + ".refused", Section: section, Name: "answered 429 Too Many Requests", Unit: "PUTs", Value: float64(out.refused)},
				{ID: id + ".5xx", Section: section, Name: "answered 5xx", Unit: "PUTs", Value: float64(out.serverErr)},
				{ID: id + ".other", Section: section, Name: "answered another 4xx, or not at all", Unit: "PUTs", Value: float64(out.other4xx + out.noAnswer)},
				{ID: id + ".p50", Section: section, Name: "p50 of the 201s", Unit: "ms", Value: ms(r.pct(50))},
				{ID: id + ".rate", Section: section, Name: "manifests stored per second", Unit: "PUT/s", Higher: true, Value: float64(out.created) / wall.Seconds()},
			}
			if out.created == 0 {
				return results, fmt.Errorf("no PUT of the %d was stored", total)
			}
			return results, nil
		},
	}
}
