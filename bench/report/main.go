// Command report turns wsbench's JSON lines (as bench/run.sh writes them,
// each with "transport", "workload" and "round" added) into Markdown
// tables, one per transport (plain, then TLS): per workload and target,
// the median and range over rounds of the main figure, the median p99
// latency, proxy CPU per operation and proxy RSS, and wsproxy's ratio to
// each target as the median (and range) of same-round ratios. Under each
// table, wsproxy's same-round ratios to the best anchor (nginx, HAProxy or
// Caddy) for each metric.
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
	Transport   string   `json:"transport"` // plain or tls; lines without it are plain
	TLS         string   `json:"tls"`       // version, suite and group negotiated
	Workload    string   `json:"workload"`
	Round       int      `json:"round"`
	Mode        string   `json:"mode"`
	Target      string   `json:"target"`
	Conns       int      `json:"conns"`
	ConnsOpen   int      `json:"conns_open"`
	Size        int      `json:"size"`
	OpsPerSec   float64  `json:"ops_per_sec"`
	MiBPerSec   float64  `json:"mib_per_sec"`
	P99us       float64  `json:"p99_us"`
	CPUmsPerOp  float64  `json:"cpu_ms_per_op"`
	ProxyCPUms  float64  `json:"proxy_cpu_ms"`
	WindowS     float64  `json:"window_s"`
	RSSKiB      float64  `json:"rss_kib"`
	RSSBaseKiB  float64  `json:"rss_base_kib"`
	RSSPerSessB float64  `json:"rss_per_session_bytes"`    // at the end of the hold
	RSSPerSess2 *float64 `json:"rss_per_session_2s_bytes"` // 2 s after the sessions opened
	Pings       int64    `json:"pings"`
	Errors      int64    `json:"errors"`
	FirstError  string   `json:"first_error"`
}

// figure is a workload's main figure; lower reports whether lower is
// better.
func figure(r row) (v float64, lower bool) {
	switch r.Mode {
	case "throughput":
		return r.MiBPerSec, false
	case "idle":
		if r.RSSPerSess2 != nil { // older lines have only the end of the hold
			return *r.RSSPerSess2 / 1024, true
		}
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
		return "KiB/session at 2 s"
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
	tables := read(f)
	for i, tr := range transports {
		t := tables[tr.name]
		if t == nil {
			continue
		}
		if i > 0 {
			fmt.Fprintln(os.Stdout)
		}
		fmt.Fprintf(os.Stdout, "### %s\n\n", tr.title)
		write(os.Stdout, t)
	}
}

// transports are the tables, in the order they are printed.
var transports = []struct{ name, title string }{
	{"plain", "Plain (ws://)"},
	{"tls", "TLS (wss://: TLS 1.3, P-256 certificate, full handshakes)"},
}

type table struct {
	workloads []string
	targets   []string
	by        map[string]map[string][]row // workload -> target -> rows
}

// read sorts the lines into a table per transport.
func read(in io.Reader) map[string]*table {
	tables := map[string]*table{}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r row
		if json.Unmarshal(sc.Bytes(), &r) != nil || r.Workload == "" {
			continue
		}
		if r.Transport == "" {
			r.Transport = "plain"
		}
		t := tables[r.Transport]
		if t == nil {
			t = &table{by: map[string]map[string][]row{}}
			tables[r.Transport] = t
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
	for _, t := range tables {
		// wsproxy first, the direct path (the limit) last, the rest as met
		sort.SliceStable(t.targets, func(i, j int) bool { return rank(t.targets[i]) < rank(t.targets[j]) })
	}
	return tables
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

// ratios are wsproxy's value ÷ the target's, one per round both ran.
func ratios(ws, other []row, val func(row) float64) []float64 {
	var rs []float64
	for _, o := range other {
		for _, w := range ws {
			if w.Round == o.Round && val(o) > 0 && val(w) > 0 {
				rs = append(rs, val(w)/val(o))
			}
		}
	}
	return rs
}

// ratio is the median over rounds of the same-round ratios, with their
// range when there is more than one round.
func ratio(ws, other []row, val func(row) float64) string {
	rs := ratios(ws, other, val)
	switch len(rs) {
	case 0:
		return "–"
	case 1:
		return fmt.Sprintf("%.2f", rs[0])
	}
	return fmt.Sprintf("%.2f (%.2f–%.2f)", median(rs), slices.Min(rs), slices.Max(rs))
}

func p99(r row) float64 { return r.P99us / 1000 }

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
	writeAnchors(out, t)
	notes = append(notes, tlsNotes(t)...)
	if len(notes) > 0 {
		fmt.Fprintln(out)
		for _, n := range notes {
			fmt.Fprintln(out, "-", strings.ReplaceAll(n, "|", "/"))
		}
	}
}

// isAnchor reports whether target is one wsproxy is held against: not
// itself, not the backend reached directly.
func isAnchor(target string) bool { return rank(target) == 1 }

// best is the anchor with the best median of val over rounds (the lowest
// if lower, else the highest), or "" if none has a value.
func best(t *table, w string, val func(row) float64, lower bool) string {
	var name string
	var bv float64
	for _, target := range t.targets {
		rows := t.by[w][target]
		if !isAnchor(target) || len(rows) == 0 {
			continue
		}
		var vs []float64
		for _, r := range rows {
			if v := val(r); v > 0 {
				vs = append(vs, v)
			}
		}
		if len(vs) == 0 {
			continue
		}
		m := median(vs)
		if name == "" || (lower && m < bv) || (!lower && m > bv) {
			name, bv = target, m
		}
	}
	return name
}

// writeAnchors prints, per workload, wsproxy's same-round ratio to the best
// anchor for each metric: the main figure, CPU per operation and p99.
func writeAnchors(out io.Writer, t *table) {
	ws := func(w string) []row { return t.by[w]["wsproxy"] }
	cell := func(w string, val func(row) float64, lower bool) string {
		a := best(t, w, val, lower)
		if a == "" || len(ws(w)) == 0 {
			return "–"
		}
		r := ratio(ws(w), t.by[w][a], val)
		if r == "–" {
			return r
		}
		return r + " × " + a
	}
	header := false
	for _, w := range t.workloads {
		rows := ws(w)
		if len(rows) == 0 {
			continue
		}
		if !header {
			fmt.Fprintln(out)
			fmt.Fprintln(out, "| workload | wsproxy ÷ best anchor | CPU/op ÷ lowest anchor | p99 ÷ lowest anchor |")
			fmt.Fprintln(out, "|---|---|---|---|")
			header = true
		}
		fig := func(r row) float64 { v, _ := figure(r); return v }
		_, lower := figure(rows[0])
		c, p := "–", "–"
		// Idle sessions have no latency, and only wsproxy pings them: its
		// CPU there is not the anchors' (often below the 10 ms a process's
		// CPU time is counted in).
		if rows[0].Mode != "idle" {
			c, p = cell(w, cpu, true), cell(w, p99, true)
		}
		fmt.Fprintf(out, "| %s (%s) | %s | %s | %s |\n", w, unit(rows[0].Mode), cell(w, fig, lower), c, p)
	}
}

// tlsNotes says what each target negotiated over TLS (the first run's
// connection), once per distinct answer, and the idle memory per session
// at the end of the hold beside the 2 s figure of the table.
func tlsNotes(t *table) []string {
	var notes []string
	seen := map[string][]string{}
	var order []string
	for _, target := range t.targets {
		for _, w := range t.workloads {
			for _, r := range t.by[w][target] {
				if r.TLS == "" || slices.Contains(seen[r.TLS], target) {
					continue
				}
				if seen[r.TLS] == nil {
					order = append(order, r.TLS)
				}
				seen[r.TLS] = append(seen[r.TLS], target)
			}
		}
	}
	for _, k := range order {
		notes = append(notes, fmt.Sprintf("negotiated %s: %s", k, strings.Join(seen[k], ", ")))
	}
	var end []string
	for _, w := range t.workloads {
		for _, target := range t.targets {
			rows := t.by[w][target]
			if len(rows) == 0 || rows[0].Mode != "idle" || rows[0].RSSPerSess2 == nil {
				continue
			}
			var vs []float64
			for _, r := range rows {
				vs = append(vs, r.RSSPerSessB/1024)
			}
			end = append(end, fmt.Sprintf("%s %s", target, num(median(vs))))
		}
	}
	if len(end) > 0 {
		notes = append(notes, "idle KiB/session at the end of the hold (median): "+strings.Join(end, ", "))
	}
	return notes
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
