package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// With -profile, the scenarios it matches run under `perf record -a -g`
// (the whole machine: registry, PostgreSQL, load generator, kernel), and a
// text summary of the samples goes to <dir of -out>/profiles/. The numbers
// of a profiled scenario are perturbed a little (sampling at 499 Hz).

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// startPerf starts recording; stop ends it and writes the summary.
func startPerf(dir, registry, scenario string) (stop func() (string, error), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	base := filepath.Join(dir, strings.ToLower(registry)+"-"+unsafeChars.ReplaceAllString(scenario, "_"))
	data := base + ".perf.data"
	cmd := exec.Command("perf", "record", "-F", "499", "-a", "-g", "-o", data)
	logPath := base + ".perf.log"
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("perf record: %w", err)
	}
	time.Sleep(300 * time.Millisecond) // let it attach before the load starts
	return func() (string, error) {
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		logf.Close()
		defer os.Remove(data)
		defer os.Remove(logPath)
		var out strings.Builder
		fmt.Fprintf(&out, "# %s, scenario %s: system-wide CPU samples (perf record -F 499 -a -g)\n\n", registry, scenario)
		sections := []struct {
			title string
			args  []string
		}{
			{"by process (self time, % of all samples)", []string{"--no-children", "--sort", "comm", "-F", "overhead,comm", "--percent-limit", "0.5"}},
			{"by process and function (self time, % of all samples)", []string{"--no-children", "--sort", "comm,dso,sym", "-F", "overhead,comm,dso,sym", "--percent-limit", "0.4"}},
			{registry + " process by function, inclusive (children) and self time, % of all samples", []string{"--children", "--comm", commOf(registry), "--sort", "sym", "-F", "overhead_children,overhead,sym", "--percent-limit", "1.5"}},
		}
		for _, sec := range sections {
			args := append([]string{"report", "-i", data, "--stdio", "-g", "none"}, sec.args...)
			b, err := exec.Command("perf", args...).Output()
			if err != nil {
				return "", fmt.Errorf("perf report: %w", err)
			}
			fmt.Fprintf(&out, "## %s\n\n", sec.title)
			var lines []string
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "#") || strings.TrimSpace(l) == "" {
					continue
				}
				lines = append(lines, strings.TrimRight(l, " "))
			}
			// Largest first (perf sorts the inclusive view by name).
			sort.SliceStable(lines, func(i, j int) bool { return leadingPercent(lines[i]) > leadingPercent(lines[j]) })
			out.WriteString(strings.Join(lines, "\n") + "\n\n")
		}
		txt := base + ".txt"
		return txt, os.WriteFile(txt, []byte(out.String()), 0o644)
	}, nil
}

// commOf is the process name perf records for a registry.
func commOf(registry string) string {
	if registry == berthName {
		return "berth"
	}
	return "registry"
}

func leadingPercent(l string) float64 {
	f := strings.Fields(l)
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
	return v
}
