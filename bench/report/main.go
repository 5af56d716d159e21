// Command report turns wsbench's JSON lines into the README's table:
// per workload and target, the median and range of the main figure, the
// median p99 and proxy CPU per operation, and wsproxy's ratio to each
// target as the median of same-round ratios.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
)

type row struct {
	Workload    string  `json:"workload"`
	Round       int     `json:"round"`
	Target      string  `json:"target"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	MiBPerSec   float64 `json:"mib_per_sec"`
	P99us       float64 `json:"p99_us"`
	CPUmsPerKop float64 `json:"cpu_ms_per_kop"`
	CPUmsPerMiB float64 `json:"cpu_ms_per_mib"`
	RSSPerSess  float64 `json:"rss_per_session_bytes"`
	Errors      int64   `json:"errors"`
}

// main figure of a workload, and whether higher is better.
func figure(r row) (float64, bool) {
	switch r.Workload {
	case "tput-1MiB":
		return r.MiBPerSec, true
	case "idle":
		return r.RSSPerSess / 1024, false
	}
	return r.OpsPerSec, true
}

func cpu(r row) float64 {
	switch r.Workload {
	case "tput-1MiB":
		return r.CPUmsPerMiB
	case "rtt-100", "rtt-1000":
		return r.CPUmsPerKop // µs per round trip
	case "sessions":
		return r.CPUmsPerKop // µs per session
	}
	return 0
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func main() {
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	by := map[string]map[string][]row{} // workload -> target -> rows
	var workloads []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r row
		if json.Unmarshal(sc.Bytes(), &r) != nil {
			continue
		}
		if by[r.Workload] == nil {
			by[r.Workload] = map[string][]row{}
			workloads = append(workloads, r.Workload)
		}
		by[r.Workload][r.Target] = append(by[r.Workload][r.Target], r)
	}
	units := map[string]string{"rtt-100": "round trips/s", "rtt-1000": "round trips/s", "tput-1MiB": "MiB/s", "sessions": "sessions/s", "idle": "KiB per idle session"}
	cpuUnits := map[string]string{"rtt-100": "µs CPU/rt", "rtt-1000": "µs CPU/rt", "tput-1MiB": "ms CPU/MiB", "sessions": "µs CPU/session", "idle": ""}
	targets := []string{"wsproxy", "nginx", "haproxy", "caddy", "direct"}
	for _, w := range workloads {
		fmt.Printf("\n**%s** (%s)\n\n", w, units[w])
		fmt.Printf("| target | median | min–max | p99 ms | %s | wsproxy ÷ target |\n|---|---|---|---|---|---|\n", cpuUnits[w])
		for _, t := range targets {
			rows := by[w][t]
			if len(rows) == 0 {
				continue
			}
			var figs, p99s, cpus, ratios []float64
			for _, r := range rows {
				v, _ := figure(r)
				figs = append(figs, v)
				p99s = append(p99s, r.P99us/1000)
				cpus = append(cpus, cpu(r))
				for _, ws := range by[w]["wsproxy"] {
					if ws.Round == r.Round {
						if wv, _ := figure(ws); v > 0 {
							ratios = append(ratios, wv/v)
						}
					}
				}
			}
			mn, mx := figs[0], figs[0]
			for _, v := range figs {
				mn, mx = min(mn, v), max(mx, v)
			}
			p99 := "–"
			if m := median(p99s); m > 0 {
				p99 = fmt.Sprintf("%.1f", m)
			}
			c := "–"
			if m := median(cpus); m > 0 {
				c = fmt.Sprintf("%.1f", m)
			}
			ratio := "–"
			if t != "wsproxy" && len(ratios) > 0 {
				ratio = fmt.Sprintf("%.2f", median(ratios))
			}
			errs := int64(0)
			for _, r := range rows {
				errs += r.Errors
			}
			name := t
			if errs > 0 {
				name += fmt.Sprintf(" (%d errors)", errs)
			}
			fmt.Printf("| %s | %s | %s–%s | %s | %s | %s |\n", name, num(median(figs)), num(mn), num(mx), p99, c, ratio)
		}
	}
	fmt.Println()
}

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
