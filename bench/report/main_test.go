package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// lines makes JSON lines for three rounds: wsproxy, nginx and haproxy over
// both transports, with figures chosen so that the best anchor differs by
// metric and transport.
func lines() string {
	var b strings.Builder
	for round := range 3 {
		k := float64(round) // rounds differ, so ranges are not empty
		add := func(tr, target string, ops, cpuMs, p99us, rss2 float64) {
			fmt.Fprintf(&b, `{"transport":%q,"workload":"rtt-100","round":%d,"mode":"rtt","target":%q,"conns":100,"conns_open":100,"ops_per_sec":%g,"p99_us":%g,"cpu_ms_per_op":%g}`+"\n",
				tr, round, target, ops+k, p99us, cpuMs)
			fmt.Fprintf(&b, `{"transport":%q,"workload":"idle","round":%d,"mode":"idle","target":%q,"conns":10,"conns_open":10,"rss_per_session_bytes":%g,"rss_per_session_2s_bytes":%g,"window_s":20}`+"\n",
				tr, round, target, 2*rss2, rss2)
		}
		add("plain", "wsproxy", 900, 0.020, 1000, 4096)
		add("plain", "nginx", 1000, 0.010, 500, 8192)
		add("plain", "haproxy", 800, 0.016, 2000, 2048)
		add("tls", "wsproxy", 600, 0.030, 3000, 8192)
		add("tls", "nginx", 500, 0.040, 6000, 16384)
		add("tls", "haproxy", 300, 0.020, 1500, 4096)
	}
	fmt.Fprintln(&b, `{"transport":"tls","workload":"rtt-100","round":0,"mode":"rtt","target":"nginx","tls":"TLS 1.3 X Y"}`)
	fmt.Fprintln(&b, `not json`)
	return b.String()
}

func TestTablesPerTransport(t *testing.T) {
	tables := read(strings.NewReader(lines()))
	if len(tables) != 2 || tables["plain"] == nil || tables["tls"] == nil {
		t.Fatalf("tables %v, want plain and tls", tables)
	}
	cases := []struct {
		name, transport string
		want            []string
	}{
		{"plain ratios and ranges", "plain", []string{
			// 900/1000, 901/1001, 902/1002
			"| rtt-100 | nginx | 1001 (1000–1002) round trips/s | 0.500 | 10.0 µs | – | 0.90 (0.90–0.90) | 2.00 (2.00–2.00) | 0 |",
			// best throughput nginx; lowest CPU nginx; lowest p99 nginx
			"| rtt-100 (round trips/s) | 0.90 (0.90–0.90) × nginx | 2.00 (2.00–2.00) × nginx | 2.00 (2.00–2.00) × nginx |",
			// idle: the 2 s figure, lowest is haproxy's 2 KiB
			"| idle (KiB/session at 2 s) | 2.00 (2.00–2.00) × haproxy | – | – |",
			"idle KiB/session at the end of the hold (median): wsproxy 8.00, nginx 16.0, haproxy 4.00",
		}},
		{"tls anchors by metric", "tls", []string{
			// best throughput nginx (500), lowest CPU and p99 haproxy
			"| rtt-100 (round trips/s) | 1.20 (1.20–1.20) × nginx | 1.50 (1.50–1.50) × haproxy | 2.00 (2.00–2.00) × haproxy |",
			"negotiated TLS 1.3 X Y: nginx",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			write(&out, tables[tc.transport])
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("missing %q in\n%s", w, out.String())
				}
			}
		})
	}
}

func TestOldLinesArePlain(t *testing.T) {
	// lines written before the transport field, and an idle line without
	// the 2 s figure
	in := `{"workload":"idle","round":0,"mode":"idle","target":"wsproxy","rss_per_session_bytes":3072}` + "\n"
	tables := read(strings.NewReader(in))
	tb := tables["plain"]
	if tb == nil {
		t.Fatalf("no plain table in %v", tables)
	}
	if v, _ := figure(tb.by["idle"]["wsproxy"][0]); v != 3 {
		t.Errorf("idle figure %v KiB, want the end-of-hold 3", v)
	}
}
