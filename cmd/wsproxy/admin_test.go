package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/net/html"
)

const adminConfig = `
listeners: [{address: %q}]
admin: {address: %q, pprof: %v}
log: {level: info, format: json}
defaults: {drain_timeout: 2s}
routes:
  - {path: /chat, pool: p}
pools:
  p:
    backends:
      - {address: %q, weight: 2}
      - {address: %q}
`

// get fetches url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// promScrape is one scrape of /metrics, parsed.
type promScrape map[string]*dto.MetricFamily

func scrapeMetrics(t *testing.T, admin string) promScrape {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return fams
}

// value returns the counter or gauge of name with exactly the labels
// (name, value pairs), or -1.
func (s promScrape) value(name string, labels ...string) float64 {
	f := s[name]
	if f == nil {
		return -1
	}
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		match := len(got)*2 == len(labels)
		for i := 0; match && i < len(labels); i += 2 {
			match = got[labels[i]] == labels[i+1]
		}
		if !match {
			continue
		}
		if m.Counter != nil {
			return m.Counter.GetValue()
		}
		return m.Gauge.GetValue()
	}
	return -1
}

// backendOf returns the backend that answered on c: the echo backends
// name themselves.
func backendOf(t *testing.T, c *websocket.Conn, names map[string]string) string {
	t.Helper()
	got := exchange(t, c, "hi")
	name, _, _ := strings.Cut(got, ":")
	return names[name]
}

// TestAdminEndpoints runs the binary with real sessions and checks what
// the admin listener shows: metrics, status JSON, the status page,
// readiness, pprof and reload counters.
func TestAdminEndpoints(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	b1, b2 := echoBackend(t, "b1"), echoBackend(t, "b2")
	names := map[string]string{"b1": b1, "b2": b2}
	listen, admin := freePort(t), freePort(t)
	cfgPath := writeConfig(t, fmt.Sprintf(adminConfig, listen, admin, true, b1, b2))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	if code, body := get(t, "http://"+admin+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}

	// Three sessions from one client address land on one backend.
	var conns []*websocket.Conn
	var busy string
	for i := 0; i < 3; i++ {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/chat", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
		busy = backendOf(t, c, names)
	}
	idle := b1
	if busy == b1 {
		idle = b2
	}
	// One ends with a normal close.
	conns[0].WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"), time.Now().Add(time.Second))
	for {
		if _, _, err := conns[0].ReadMessage(); err != nil {
			break
		}
	}

	var m promScrape
	deadline := time.Now().Add(10 * time.Second)
	for {
		m = scrapeMetrics(t, admin)
		if m.value("wsproxy_route_sessions_live", "route", "/chat") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("live sessions never reached 2: %v", m.value("wsproxy_route_sessions_live", "route", "/chat"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, w := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"wsproxy_backend_sessions_live", []string{"backend", busy}, 2},
		{"wsproxy_backend_sessions_live", []string{"backend", idle}, 0},
		{"wsproxy_handshakes_total", []string{"outcome", "ok"}, 3},
		{"wsproxy_messages_total", []string{"route", "/chat", "direction", "client_to_backend"}, 3},
		{"wsproxy_messages_total", []string{"route", "/chat", "direction", "backend_to_client"}, 3},
		{"wsproxy_session_closes_total", []string{"route", "/chat", "code", "1000", "closed_by", "client"}, 1},
		{"wsproxy_backend_healthy", []string{"backend", busy}, 1},
		{"wsproxy_backend_weight", []string{"pool", "p", "backend", b1}, 2},
		{"wsproxy_reloads_total", []string{"result", "ok"}, 0},
		{"wsproxy_config_last_reload_successful", nil, 1},
	} {
		if got := m.value(w.name, w.labels...); got != w.want {
			t.Errorf("%s%v = %v, want %v", w.name, w.labels, got, w.want)
		}
	}
	if m["go_goroutines"] == nil || m["wsproxy_build_info"] == nil {
		t.Error("runtime and build metrics missing")
	}
	// Nothing of the admin listener is on the public one.
	for _, path := range []string{"/metrics", "/status", "/debug/pprof/"} {
		if code, _ := get(t, "http://"+listen+path); code != 404 {
			t.Errorf("public %s: %d, want 404", path, code)
		}
	}

	// /status as JSON.
	_, body := get(t, "http://"+admin+"/status")
	var st struct {
		Ready         bool             `json:"ready"`
		Sessions      int              `json:"sessions"`
		RouteSessions map[string]int64 `json:"route_sessions"`
		Pools         []struct {
			Backends []struct {
				Address  string `json:"address"`
				Sessions int64  `json:"sessions"`
			} `json:"backends"`
		} `json:"pools"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, body)
	}
	if !st.Ready || st.Sessions != 2 || st.RouteSessions["/chat"] != 2 || len(st.Pools) != 1 {
		t.Fatalf("/status: %s", body)
	}

	// The status page shows each backend's live sessions.
	code, page := get(t, "http://"+admin+"/")
	if code != 200 {
		t.Fatalf("/: %d", code)
	}
	rows := backendRows(t, page)
	if rows[busy]["sessions"] != "2" || rows[idle]["sessions"] != "0" {
		t.Fatalf("status page rows: %v", rows)
	}
	if rows[b1]["weight"] != "2" || rows[busy]["health"] != "healthy" || rows[busy]["state"] != "serving" {
		t.Fatalf("status page rows: %v", rows)
	}

	// pprof is on; a reload turns it off, and is counted.
	if code, _ := get(t, "http://"+admin+"/debug/pprof/"); code != 200 {
		t.Fatalf("pprof on: %d", code)
	}
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(adminConfig, listen, admin, false, b1, b2)), 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, p, "configuration reloaded")
	if code, _ := get(t, "http://"+admin+"/debug/pprof/"); code != 404 {
		t.Fatalf("pprof off: %d", code)
	}
	os.WriteFile(cfgPath, []byte("bogus: 1\n"), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, p, "reload failed")
	m = scrapeMetrics(t, admin)
	if ok, failed := m.value("wsproxy_reloads_total", "result", "ok"), m.value("wsproxy_reloads_total", "result", "failed"); ok != 1 || failed != 1 {
		t.Fatalf("reloads: %v ok, %v failed", ok, failed)
	}
	if v := m.value("wsproxy_config_last_reload_successful"); v != 0 {
		t.Fatalf("last reload successful = %v after a failed one", v)
	}

	// Shutting down: readiness drops while sessions drain.
	p.cmd.Process.Signal(syscall.SIGTERM)
	deadline = time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			break // the admin listener closed after the drain
		}
		resp.Body.Close()
		if resp.StatusCode == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz never turned 503 on SIGTERM")
		}
		time.Sleep(5 * time.Millisecond)
	}
	<-p.done
}

// backendRows parses the status page and returns, for each backend row
// (tr[data-backend]), the text of its cells by class.
func backendRows(t *testing.T, page string) map[string]map[string]string {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(page))
	if err != nil {
		t.Fatalf("status page: %v", err)
	}
	rows := map[string]map[string]string{}
	var walk func(n *html.Node, row map[string]string)
	walk = func(n *html.Node, row map[string]string) {
		if n.Type == html.ElementNode && n.Data == "tr" {
			if addr := attr(n, "data-backend"); addr != "" {
				row = map[string]string{}
				rows[addr] = row
			}
		}
		if row != nil && n.Type == html.ElementNode && n.Data == "td" {
			for _, class := range strings.Fields(attr(n, "class")) {
				if class != "num" {
					row[class] = strings.TrimSpace(text(n))
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c, row)
		}
	}
	walk(doc, nil)
	if len(rows) == 0 {
		t.Fatalf("no backend rows in the status page:\n%s", page)
	}
	return rows
}

func attr(n *html.Node, name string) string {
	for _, a := range n.Attr {
		if a.Key == name {
			return a.Val
		}
	}
	return ""
}

func text(n *html.Node) string {
	if n.Type == html.TextNode {
		return n.Data
	}
	var b strings.Builder
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		b.WriteString(text(c))
	}
	return b.String()
}
