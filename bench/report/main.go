// Command report turns wsbench's JSON lines (as bench/run.sh writes them,
// each with "workload" and "round" added) into a Markdown table: per
// workload and target, the median and range over rounds of the main
// figure, the median p99 latency, proxy CPU per operation and proxy RSS,
// and wsproxy's ratio to each target as the median of same-round ratios.
//
//	report results.jsonl
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
)

type row struct {
	Workload    string  `json:"workload"`
	Round       int     `json:"round"`
	Mode        string  `json:"mode"`
	Target      string  `json:"target"`
	Conns       int     `json:"conns"`
	ConnsOpen   int     `json:"conns_open"`
	Size        int     `json:"size"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	MiBPerSec   float64 `json:"mib_per_sec"`
	P99us       float64 `json:"p99_us"`
	CPUmsPerOp  float64 `json:"cpu_ms_per_op"`
	ProxyCPUms  float64 `json:"proxy_cpu_ms"`
	WindowS     float64 `json:"window_s"`
	RSSKiB      float64 `json:"rss_kib"`
	RSSBaseKiB  float64 `json:"rss_base_kib"`
	RSSPerSessB float64 `json:"rss_per_session_bytes"`
	Pings       int64   `json:"pings"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"first_error"`
}

// figure is a workload's main figure; lower reports whether lower is
// better.
func figure(r row) (v float64, lower bool) {
	switch r.Mode {
	case "throughput":
		return r.MiBPerSec, false
	case "idle":
		return r.RSSPerSessB / 1024, true
	}
	return r.OpsPerSec, false
}

func unit(mode string) string {
	switch mode {
	case "rtt":
		return "round trips/s"
	case "throughput":
		return "MiB/s"
	case "sessions":
		return "sessions/s"
	case "idle":
		return "KiB/session"
	}
	return mode
}

// cpu is the proxy's CPU per operation, in the unit cpuUnit names.
func cpu(r row) float64 {
	switch r.Mode {
	case "throughput":
		return r.CPUmsPerOp // ms per MiB
	case "idle":
		if r.WindowS > 0 {
			return r.CPUmsPerOp * 1000 / r.WindowS // µs per session per second held
		}
		return 0
	}
	return r.CPUmsPerOp * 1000 // µs per round trip or session
}

func cpuUnit(mode string) string {
	switch mode {
	case "throughput":
		return "ms/MiB"
	case "idle":
		return "µs/s"
	}
	return "µs"
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: report results.jsonl")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	write(os.Stdout, read(f))
}

type table struct {
	workloads []string
	targets   []string
	by        map[string]map[string][]row // workload -> target -> rows
}

func read(in io.Reader) *table {
	t := &table{by: map[string]map[string][]row{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r row
		if json.Unmarshal(sc.Bytes(), &r) != nil || r.Workload == "" {
			continue
		}
		if t.by[r.Workload] == nil {
			t.by[r.Workload] = map[string][]row{}
			t.workloads = append(t.workloads, r.Workload)
		}
		if !slices.Contains(t.targets, r.Target) {
			t.targets = append(t.targets, r.Target)
		}
		t.by[r.Workload][r.Target] = append(t.by[r.Workload][r.Target], r)
	}
	// wsproxy first, the direct path (the limit) last, the rest as met
	sort.SliceStable(t.targets, func(i, j int) bool { return rank(t.targets[i]) < rank(t.targets[j]) })
	return t
}

func rank(target string) int {
	switch target {
	case "wsproxy":
		return 0
	case "direct":
		return 2
	}
	return 1
}

// ratio is the median over rounds of wsproxy's value ÷ the target's, in
// the same round.
func ratio(ws, other []row, val func(row) float64) string {
	var rs []float64
	for _, o := range other {
		for _, w := range ws {
			if w.Round == o.Round && val(o) > 0 && val(w) > 0 {
				rs = append(rs, val(w)/val(o))
			}
		}
	}
	if len(rs) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", median(rs))
}

func write(out io.Writer, t *table) {
	fmt.Fprintln(out, "| workload | target | median (min–max) | p99 ms | proxy CPU/op | proxy RSS MiB | wsproxy ÷ target | CPU/op wsproxy ÷ target | errors |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|---|")
	var notes []string
	for _, w := range t.workloads {
		ws := t.by[w]["wsproxy"]
		for _, target := range t.targets {
			rows := t.by[w][target]
			if len(rows) == 0 {
				continue
			}
			mode := rows[0].Mode
			var figs, p99s, cpus, rss []float64
			var errs, pings int64
			for _, r := range rows {
				v, _ := figure(r)
				figs = append(figs, v)
				p99s = append(p99s, r.P99us/1000)
				cpus = append(cpus, cpu(r))
				rss = append(rss, r.RSSKiB/1024)
				errs += r.Errors
				pings += r.Pings
				if r.Errors > 0 && r.FirstError != "" {
					notes = append(notes, fmt.Sprintf("%s through %s, round %d: %d errors, first: %s", w, target, r.Round+1, r.Errors, r.FirstError))
				}
				if r.ConnsOpen > 0 && r.ConnsOpen < r.Conns {
					notes = append(notes, fmt.Sprintf("%s through %s, round %d: %d of %d connections opened", w, target, r.Round+1, r.ConnsOpen, r.Conns))
				}
			}
			fig := fmt.Sprintf("%s (%s–%s) %s", num(median(figs)), num(slices.Min(figs)), num(slices.Max(figs)), unit(mode))
			p99 := "–"
			if m := median(p99s); m > 0 {
				p99 = num(m)
			}
			c := "–"
			if m := median(cpus); m > 0 {
				c = num(m) + " " + cpuUnit(mode)
			}
			mem := "–"
			if m := median(rss); m > 0 {
				mem = num(m)
			}
			r1, r2 := "–", "–"
			if target != "wsproxy" {
				r1 = ratio(ws, rows, func(r row) float64 { v, _ := figure(r); return v })
				r2 = ratio(ws, rows, cpu)
			}
			e := fmt.Sprint(errs)
			if mode == "idle" && pings > 0 {
				e += fmt.Sprintf(" (%d pings answered)", pings)
			}
			fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", w, target, fig, p99, c, mem, r1, r2, e)
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(out)
		for _, n := range notes {
			fmt.Fprintln(out, "-", strings.ReplaceAll(n, "|", "/"))
		}
	}
}

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}
