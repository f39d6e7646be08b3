package importer

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Report is what one pass did.
type Report struct {
	Pass         int
	Repositories atomic.Int64 // repositories looked at
	Manifests    atomic.Int64 // manifests stored
	TagsSet      atomic.Int64 // tags created or moved
	TagsRemoved  atomic.Int64 // tags removed because the source removed them
	BlobsLinked  atomic.Int64 // blob links created in Berth
	// Blob bytes placed in Berth's store, by how.
	BlobsHardLinked   atomic.Int64
	BlobsServerCopied atomic.Int64
	BlobsStreamed     atomic.Int64
	Bytes             atomic.Int64 // bytes placed (any way)
	BytesVerified     atomic.Int64 // bytes read to check digests
	cannotLink        atomic.Value // string: why a hard link failed (the blob was copied instead)

	ScanTime, Duration time.Duration

	mu      sync.Mutex
	Skipped []Skip
}

// Skip is something not imported, and why.
type Skip struct {
	Repository, What, Reason string
}

func newReport(pass int) *Report { return &Report{Pass: pass} }

func (r *Report) skip(repo, what, reason string) {
	r.mu.Lock()
	r.Skipped = append(r.Skipped, Skip{repo, what, reason})
	r.mu.Unlock()
}

// Changes counts what the pass changed in Berth.
func (r *Report) Changes() int64 {
	return r.Manifests.Load() + r.TagsSet.Load() + r.TagsRemoved.Load() + r.BlobsLinked.Load()
}

// CannotLink says why some blob could not be hard-linked (and was copied
// instead); empty when every link worked.
func (r *Report) CannotLink() string {
	s, _ := r.cannotLink.Load().(string)
	return s
}

// Print writes the report of a pass.
func (r *Report) Print(w io.Writer) {
	kind := "catch-up"
	if r.Pass == 1 {
		kind = "bulk"
	}
	fmt.Fprintf(w, "pass %d (%s): %d repositories in %s (scan %s): %d manifests, %d tags set, %d tags removed, "+
		"%d blob links, %d blobs placed (%d hard-linked, %d copied on the S3 server, %d streamed), %s placed, %s verified\n",
		r.Pass, kind, r.Repositories.Load(), r.Duration.Round(time.Millisecond), r.ScanTime.Round(time.Millisecond),
		r.Manifests.Load(), r.TagsSet.Load(), r.TagsRemoved.Load(), r.BlobsLinked.Load(),
		r.BlobsHardLinked.Load()+r.BlobsServerCopied.Load()+r.BlobsStreamed.Load(),
		r.BlobsHardLinked.Load(), r.BlobsServerCopied.Load(), r.BlobsStreamed.Load(),
		humanBytes(r.Bytes.Load()), humanBytes(r.BytesVerified.Load()))
	if why := r.CannotLink(); why != "" {
		fmt.Fprintf(w, "  note: blobs were copied, not hard-linked: %s (another filesystem than Berth's store, or fs.protected_hardlinks "+
			"and files this user does not own)\n", why)
	}
}

// PrintTotal writes what all the passes of a run imported together.
func PrintTotal(w io.Writer, reports []*Report) {
	var manifests, tags, removed, links, hard, server, streamed, bytes, verified int64
	var took time.Duration
	for _, r := range reports {
		manifests += r.Manifests.Load()
		tags += r.TagsSet.Load()
		removed += r.TagsRemoved.Load()
		links += r.BlobsLinked.Load()
		hard += r.BlobsHardLinked.Load()
		server += r.BlobsServerCopied.Load()
		streamed += r.BlobsStreamed.Load()
		bytes += r.Bytes.Load()
		verified += r.BytesVerified.Load()
		took += r.Duration
	}
	repos := int64(0)
	if len(reports) > 0 {
		repos = reports[len(reports)-1].Repositories.Load()
	}
	fmt.Fprintf(w, "imported in %d pass(es), %s: %d repositories, %d manifests, %d tags set, %d tags removed, %d blob links; "+
		"blobs placed: %d hard-linked, %d copied on the S3 server, %d streamed (%s); %s verified\n",
		len(reports), took.Round(time.Millisecond), repos, manifests, tags, removed, links, hard, server, streamed,
		humanBytes(bytes), humanBytes(verified))
}

// PrintSkipped writes the skips of the last pass, grouped by reason (what
// an earlier pass skipped, a later one skips again, so the last pass has
// them all).
func (r *Report) PrintSkipped(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.Skipped) == 0 {
		fmt.Fprintln(w, "skipped: nothing")
		return
	}
	byReason := map[string][]Skip{}
	for _, s := range r.Skipped {
		key := s.Reason
		// Group "missing blob sha256:…: …" and the like by their kind.
		if i := strings.Index(key, "sha256:"); i > 0 {
			key = strings.TrimSpace(key[:i]) + " …"
		}
		byReason[key] = append(byReason[key], s)
	}
	reasons := make([]string, 0, len(byReason))
	for k := range byReason {
		reasons = append(reasons, k)
	}
	sort.Strings(reasons)
	fmt.Fprintf(w, "skipped: %d\n", len(r.Skipped))
	for _, k := range reasons {
		list := byReason[k]
		fmt.Fprintf(w, "  %d × %s\n", len(list), k)
		for i, s := range list {
			if i == maxSkipLines {
				fmt.Fprintf(w, "    … and %d more\n", len(list)-i)
				break
			}
			fmt.Fprintf(w, "    %s %s: %s\n", s.Repository, s.What, s.Reason)
		}
	}
}

// maxSkipLines bounds the lines printed per reason: the count says the rest.
const maxSkipLines = 20

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// Progress shows how a pass goes: a bar redrawn in place on a terminal,
// else a plain line every Interval.
type Progress struct {
	W        io.Writer
	Terminal bool
	Interval time.Duration // plain lines; 0: 10s

	mu    sync.Mutex
	done  chan struct{}
	wg    sync.WaitGroup
	total int
	rep   *Report
	t0    time.Time
}

// IsTerminal reports whether f is a terminal (a character device), the
// test golang.org/x/term would make, without the dependency.
func IsTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (p *Progress) start(pass, total int, rep *Report) {
	p.mu.Lock()
	p.total, p.rep, p.t0, p.done = total, rep, time.Now(), make(chan struct{})
	p.mu.Unlock()
	every := p.Interval
	if every <= 0 {
		every = 10 * time.Second
	}
	if p.Terminal {
		every = 200 * time.Millisecond
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-p.done:
				p.draw(true)
				return
			case <-tick.C:
				p.draw(false)
			}
		}
	}()
}

func (p *Progress) stop() {
	close(p.done)
	p.wg.Wait()
}

func (p *Progress) draw(final bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.rep
	done := r.Repositories.Load()
	elapsed := time.Since(p.t0)
	bytes := r.Bytes.Load() + r.BytesVerified.Load()
	rate := float64(bytes) / max(elapsed.Seconds(), 0.001)
	eta := "?"
	if done > 0 && int(done) < p.total {
		eta = (time.Duration(float64(elapsed) * float64(p.total-int(done)) / float64(done))).Round(time.Second).String()
	} else if int(done) >= p.total {
		eta = "0s"
	}
	line := fmt.Sprintf("pass %d: repositories %d/%d, manifests %d, tags %d, blobs %d, %s (%s/s), ETA %s",
		r.Pass, done, p.total, r.Manifests.Load(), r.TagsSet.Load(), r.BlobsLinked.Load(),
		humanBytes(r.Bytes.Load()), humanBytes(int64(rate)), eta)
	if !p.Terminal {
		fmt.Fprintln(p.W, line)
		return
	}
	const width = 24
	filled := width
	if p.total > 0 {
		filled = int(done) * width / p.total
	}
	bar := "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "] "
	fmt.Fprintf(p.W, "\r\033[K%s%s", bar, line)
	if final {
		fmt.Fprintln(p.W)
	}
}
