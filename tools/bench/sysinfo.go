package main

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func numCPU() int { return runtime.NumCPU() }

// machineInfo describes the machine: CPU, cores, RAM, kernel, and the file
// system the blob stores are on.
func machineInfo(work string) []kv {
	var out []kv
	cpu, cores := "", 0
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			switch strings.TrimSpace(k) {
			case "model name":
				if cpu == "" {
					cpu = strings.TrimSpace(v)
				}
			case "processor":
				cores++
			}
		}
		f.Close()
	}
	out = append(out, kv{"CPU", cpu}, kv{"cores", fmt.Sprintf("%d (GOMAXPROCS %d)", cores, runtime.GOMAXPROCS(0))})
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				out = append(out, kv{"RAM", fmt.Sprintf("%.1f GiB", kb/(1<<20))})
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	out = append(out, kv{"kernel", strings.TrimSpace(string(kernel))})
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				out = append(out, kv{"OS", strings.Trim(v, `"`)})
			}
		}
	}
	out = append(out, kv{"disk (blob stores, test files)", fsOf(work)})
	return out
}

// fsOf names the file system holding path: type, device and mount point.
func fsOf(path string) string {
	abs, _ := filepath.Abs(path)
	abs, _ = filepath.EvalSymlinks(abs)
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "unknown"
	}
	best, desc := "", "unknown"
	for _, l := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 2 {
			continue
		}
		mp := f[4]
		if (abs == mp || strings.HasPrefix(abs, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, desc = mp, fmt.Sprintf("%s on %s (mounted at %s)", g[0], g[1], mp)
		}
	}
	return desc + " — " + abs
}

// versions of everything measured.
func versions(ctx context.Context, o *options) []kv {
	out := []kv{{"Go (bench tool)", runtime.Version()}}
	commit := "unknown"
	if b, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
		commit = strings.TrimSpace(string(b))
		if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
			n := strings.Count(strings.TrimSpace(string(st)), "\n") + 1
			commit += fmt.Sprintf(" + uncommitted changes in %d tracked files (the work tree was built as is)", n)
		}
	}
	berth := "Berth git commit"
	if bi, err := buildinfo.ReadFile(o.berthBin); err == nil {
		out = append(out, kv{berth, commit}, kv{"Berth binary", fmt.Sprintf("%s, built with %s", o.berthBin, bi.GoVersion)})
	} else {
		out = append(out, kv{berth, commit}, kv{"Berth binary", fmt.Sprintf("%s: %v", o.berthBin, err)})
	}
	if bi, err := buildinfo.ReadFile(o.registryBin); err == nil {
		out = append(out, kv{"Distribution", fmt.Sprintf("%s %s (%s), built with %s", bi.Main.Path, bi.Main.Version, o.registryBin, bi.GoVersion)})
	} else {
		out = append(out, kv{"Distribution", fmt.Sprintf("%s: %v", o.registryBin, err)})
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if v, err := pgVersion(cctx, o.dbURL); err == nil {
		out = append(out, kv{"PostgreSQL", v + " — same machine, " + redact(o.dbURL)})
	} else {
		out = append(out, kv{"PostgreSQL", "unknown: " + err.Error()})
	}
	return out
}

// redact hides a password in a database URL.
func redact(url string) string {
	if i := strings.Index(url, "://"); i >= 0 {
		rest := url[i+3:]
		if at := strings.Index(rest, "@"); at >= 0 {
			if c := strings.Index(rest[:at], ":"); c >= 0 {
				return url[:i+3] + rest[:c] + ":xxx" + rest[at:]
			}
		}
	}
	return url
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// exchangeOf renders the HTTP exchange inside err, if any.
func exchangeOf(err error) string {
	var ex *exchangeError
	if errors.As(err, &ex) {
		return ex.Exchange()
	}
	return ""
}
