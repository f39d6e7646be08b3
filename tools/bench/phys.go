package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// physResult is one physical limit of the machine, for context: how fast
// the bytes of a blob can be hashed, copied and sent over loopback at all.
type physResult struct {
	Name  string // matched by -only
	ID    string
	Title string
	Unit  string
	Value float64
	Note  string
	Err   error
}

const physReps = 3

// physNames are the names of the physical measurements, for -only.
var physNames = []string{"phys/go-sha256", "phys/sha256sum", "phys/cp", "phys/cp-fsync", "phys/http-get", "phys/http-put",
	"phys/http-tiny/c1", "phys/http-tiny/c32", "phys/http-small/c1", "phys/http-small/c8"}

// physical measures the limits on one file of p.BigSize bytes in dir.
func physical(ctx context.Context, p params, dir string, only *regexp.Regexp) []physResult {
	size := p.BigSize
	seed := uint64(3_000_000)
	src := filepath.Join(dir, "blob")
	dst := filepath.Join(dir, "blob.copy")
	want := genDigest(seed, size)
	var out []physResult
	add := func(name, id, title, note string, once func() error) {
		if !only.MatchString(name) {
			return
		}
		var rates []float64
		for range physReps {
			os.Remove(dst)
			t0 := time.Now()
			if err := once(); err != nil {
				out = append(out, physResult{Name: name, ID: id, Title: title, Err: err})
				return
			}
			rates = append(rates, float64(size)/(1<<20)/time.Since(t0).Seconds())
		}
		os.Remove(dst)
		slices.Sort(rates)
		out = append(out, physResult{Name: name, ID: id, Title: title, Unit: "MiB/s", Value: rates[len(rates)/2],
			Note: note + fmt.Sprintf(" (median of %d)", physReps)})
	}
	if err := writeGen(src, seed, size); err != nil {
		return []physResult{{Name: "phys", Title: "write the test file", Err: err}}
	}
	defer os.Remove(src)
	sz := mib(size)

	add("phys/go-sha256", "phys.gosha256", "Go crypto/sha256, in process", sz+" from memory, one goroutine", func() error {
		h := sha256.New()
		for range size / genBlock {
			h.Write(genBase)
		}
		h.Sum(nil)
		return nil
	})
	add("phys/sha256sum", "phys.sha256sum", "sha256sum of the file", sz+", file in the page cache", func() error {
		b, err := exec.CommandContext(ctx, "sha256sum", src).Output()
		if err != nil {
			return err
		}
		if !strings.HasPrefix(string(b), want.Encoded()) {
			return fmt.Errorf("sha256sum printed %q, want %s", b, want)
		}
		return nil
	})
	add("phys/cp", "phys.cp", "cp of the file", sz+", same file system, no fsync (into the page cache)", func() error {
		return exec.CommandContext(ctx, "cp", src, dst).Run()
	})
	add("phys/cp-fsync", "phys.cpsync", "cp of the file, then sync of the copy", sz+", same file system, durable", func() error {
		if err := exec.CommandContext(ctx, "cp", src, dst).Run(); err != nil {
			return err
		}
		return exec.CommandContext(ctx, "sync", dst).Run()
	})

	// A minimal Go HTTP server: what a registry could do at best on
	// loopback with net/http. It runs in a process of its own, as the
	// registries do; in the load generator's process its socket wake-ups
	// would stay within one process and the ceiling would be too high.
	small := filepath.Join(dir, "small")
	if err := writeGen(small, seed+1, p.SmallSize); err != nil {
		return append(out, physResult{Name: "phys/http", Title: "write the small test file", Err: err})
	}
	base, stop, err := startPhysServer(ctx, physFiles{Src: src, Dst: dst, Small: small, Want: want})
	if err != nil {
		return append(out, physResult{Name: "phys/http", Title: "loopback HTTP server", Err: err})
	}
	defer stop()
	cl := newClient(base, 1)
	defer cl.close()
	add("phys/http-get", "phys.httpget", "HTTP GET over loopback, Go net/http (sendfile)", sz+", 1 conn, file in the page cache", func() error {
		n, err := cl.get(ctx, "/blob", nil)
		if err == nil && n != size {
			err = fmt.Errorf("got %d bytes", n)
		}
		return err
	})
	add("phys/http-put", "phys.httpput", "HTTP PUT over loopback, Go net/http, server hashes + writes + fsyncs", sz+", 1 conn, streamed from the generator", func() error {
		resp, err := cl.do(ctx, http.MethodPut, "/blob", octetStream, newGen(seed, size), size, http.StatusCreated)
		if err != nil {
			return err
		}
		drain(resp.Body)
		return nil
	})

	// Request rates, with the load generator of the GET scenarios.
	rate := func(name, id, title, path string, conns int, rps bool) {
		if !only.MatchString(name) {
			return
		}
		g := newRawGetter(base, conns)
		defer g.close()
		req := g.request(path, nil)
		r := runFor(ctx, conns, p.Warmup, p.Duration, func(ctx context.Context, w, _ int) (int64, error) {
			return g.get(ctx, w, req)
		})
		if err := check(r); err != nil {
			out = append(out, physResult{Name: name, ID: id, Title: title, Err: err})
			return
		}
		res := physResult{Name: name, ID: id, Title: title, Unit: "MiB/s", Value: r.mibps(),
			Note: fmt.Sprintf("%d conn, p50 %s ms, p99 %s ms", conns, fmtVal("ms", ms(r.pct(50))), fmtVal("ms", ms(r.pct(99))))}
		if rps {
			res.Unit, res.Value = "req/s", r.rps()
		}
		out = append(out, res)
	}
	for _, c := range []int{1, 32} {
		rate(fmt.Sprintf("phys/http-tiny/c%d", c), fmt.Sprintf("phys.tiny.c%d", c),
			fmt.Sprintf("HTTP GET of %d bytes from memory over loopback, Go net/http, %d conn", len(tinyBody), c), "/tiny", c, true)
	}
	for _, c := range []int{1, 8} {
		rate(fmt.Sprintf("phys/http-small/c%d", c), fmt.Sprintf("phys.small.c%d", c),
			fmt.Sprintf("HTTP GET of a %s file over loopback, Go net/http (sendfile), %d conn", mib(p.SmallSize), c), "/small", c, false)
	}
	return out
}

// tinyBody stands for a manifest: about the size of the seeded ones.
var tinyBody = newImage().manifest("app")

func writeGen(path string, seed uint64, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(onlyWriter{f}, newGen(seed, size), make([]byte, genBlock)); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type onlyWriter struct{ io.Writer }

// physFiles are the files of the minimal server.
type physFiles struct {
	Src   string        // served by GET /blob
	Dst   string        // written by PUT /blob
	Small string        // served by GET /small
	Want  digest.Digest // what PUT /blob must receive
}

// physServerEnv, when set (to the JSON of a physFiles), makes the bench
// binary the minimal server instead: it prints its address on stdout and
// serves until killed.
const physServerEnv = "BERTH_BENCH_PHYS_SERVER"

// startPhysServer runs the minimal server as a child process (this binary,
// with physServerEnv set) and returns its base URL.
func startPhysServer(ctx context.Context, files physFiles) (base string, stop func(), err error) {
	exe, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	cfg, err := json.Marshal(files)
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), physServerEnv+"="+string(cfg))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop = func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("minimal server did not start: %w", err)
	}
	return "http://" + strings.TrimSpace(line), stop, nil
}

// runPhysServer is the child process of startPhysServer.
func runPhysServer(cfg string) error {
	var files physFiles
	if err := json.Unmarshal([]byte(cfg), &files); err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(l.Addr().String())
	return http.Serve(l, physHandler(files))
}

// physHandler serves GET /tiny (a manifest-sized body from memory), GET
// /blob and /small (the files, with sendfile) and PUT /blob (to Dst: sha256
// while writing, fsync, digest check).
func physHandler(files physFiles) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/tiny":
			w.Header().Set("Content-Type", mtManifest)
			w.Header().Set("Content-Length", fmt.Sprint(len(tinyBody)))
			w.Write(tinyBody)
		case r.Method == http.MethodGet:
			path := files.Src
			if r.URL.Path == "/small" {
				path = files.Small
			}
			f, err := os.Open(path)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			defer f.Close()
			w.Header().Set("Content-Type", "application/octet-stream")
			http.ServeContent(w, r, "", time.Time{}, f)
		case r.Method == http.MethodPut:
			f, err := os.Create(files.Dst)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			defer f.Close()
			hsh := sha256.New()
			_, err = io.CopyBuffer(io.MultiWriter(f, hsh), r.Body, make([]byte, 1<<20))
			if err == nil {
				err = f.Sync()
			}
			if err == nil && digest.NewDigest(digest.SHA256, hsh) != files.Want {
				err = fmt.Errorf("digest mismatch")
			}
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			w.WriteHeader(http.StatusCreated)
		}
	})
}
