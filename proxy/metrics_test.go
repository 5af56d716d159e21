package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wsproxy/wsproxy/config"
)

// scrape is one gathering of a proxy's metrics.
type scrape map[string]*dto.MetricFamily

// scrapeProxy gathers p's metrics through a pedantic registry, which also
// checks them against their descriptions.
func scrapeProxy(t testing.TB, p *testProxy) scrape {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(p.srv.Collector())
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := scrape{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// metric returns the sample of name with exactly the given labels
// (name, value pairs), or nil.
func (s scrape) metric(name string, labels ...string) *dto.Metric {
	f := s[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel())*2 != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			found := false
			for i := 0; i < len(labels); i += 2 {
				if labels[i] == l.GetName() && labels[i+1] == l.GetValue() {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

// value returns a counter's or gauge's value, or a histogram's sample
// count; -1 when the series is absent.
func (s scrape) value(name string, labels ...string) float64 {
	m := s.metric(name, labels...)
	switch {
	case m == nil:
		return -1
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return -1
}

// expect checks a list of series against their wanted values.
func (s scrape) expect(t testing.TB, want []series) {
	t.Helper()
	for _, w := range want {
		if got := s.value(w.name, w.labels...); got != w.value {
			t.Errorf("%s%v = %v, want %v", w.name, w.labels, got, w.value)
		}
	}
}

type series struct {
	name   string
	labels []string
	value  float64
}

func sample(value float64, name string, labels ...string) series {
	return series{name: name, labels: labels, value: value}
}

const metricsConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
routes:
  - {path: /chat, pool: p}
  - {path: /web, pool: p, allowed_origins: ["https://ok.example"]}
  - {path: /reject, pool: r}
  - {path: /dead, pool: d}
pools:
  p: {backends: [{address: "{{B0}}", weight: 3}]}
  r: {backends: [{address: "{{B1}}"}]}
  d: {backends: [{address: "127.0.0.1:1"}]}
`

// TestMetricsAfterSessions runs real sessions, requests and refusals
// through a proxy and checks every figure they should move.
func TestMetricsAfterSessions(t *testing.T) {
	echoB := startBackend(t, "echo")
	rejectB := startBackend(t, "reject", func(b *testBackend) {
		b.reject = true
		b.onHTTP = func(ctx *fasthttp.RequestCtx) { ctx.Error("go away", fasthttp.StatusForbidden) }
	})
	p := startProxy(t, metricsConfig, echoB.addr(), rejectB.addr())
	b := echoB.addr()

	// Before any traffic the configured series exist at zero.
	m := scrapeProxy(t, p)
	m.expect(t, []series{
		sample(0, "wsproxy_route_sessions_live", "route", "/chat"),
		sample(0, "wsproxy_backend_sessions_live", "backend", b),
		sample(0, "wsproxy_messages_total", "route", "/chat", "direction", "client_to_backend"),
		sample(1, "wsproxy_backend_healthy", "backend", b),
		sample(3, "wsproxy_backend_weight", "pool", "p", "backend", b),
		sample(0, "wsproxy_backend_draining", "pool", "p", "backend", b),
	})

	// Three sessions on /chat, one on /web; each sends "hello" n times.
	var chat []*websocket.Conn
	for i := 0; i < 3; i++ {
		chat = append(chat, dial(t, p.url("/chat"), nil))
	}
	web := dial(t, p.url("/web"), http.Header{"Origin": {"https://ok.example"}})
	sent := map[*websocket.Conn]int{chat[0]: 1, chat[1]: 2, chat[2]: 4, web: 3}
	for c, n := range sent {
		for i := 0; i < n; i++ {
			if err := c.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
				t.Fatal(err)
			}
			if _, got, err := c.ReadMessage(); err != nil || string(got) != "hello" {
				t.Fatalf("%q %v", got, err)
			}
		}
	}
	p.waitSessions(t, 4)

	// Live sessions count with their messages and bytes so far: a client
	// frame of "hello" is 2+4+5 bytes (masked), the echo 2+5.
	m = scrapeProxy(t, p)
	m.expect(t, []series{
		sample(3, "wsproxy_route_sessions_live", "route", "/chat"),
		sample(1, "wsproxy_route_sessions_live", "route", "/web"),
		sample(3, "wsproxy_route_sessions_total", "route", "/chat"),
		sample(4, "wsproxy_backend_sessions_live", "backend", b),
		sample(4, "wsproxy_handshakes_total", "outcome", "ok"),
		sample(7, "wsproxy_messages_total", "route", "/chat", "direction", "client_to_backend"),
		sample(7, "wsproxy_messages_total", "route", "/chat", "direction", "backend_to_client"),
		sample(77, "wsproxy_bytes_total", "route", "/chat", "direction", "client_to_backend"),
		sample(49, "wsproxy_bytes_total", "route", "/chat", "direction", "backend_to_client"),
		sample(10, "wsproxy_backend_messages_total", "backend", b, "direction", "client_to_backend"),
		sample(110, "wsproxy_backend_bytes_total", "backend", b, "direction", "client_to_backend"),
		sample(70, "wsproxy_backend_bytes_total", "backend", b, "direction", "backend_to_client"),
	})

	// Two /chat sessions end with the client's 1000; a third with the
	// client vanishing (1006). Their figures move from live to folded
	// without changing, plus the Close frames: the client's 2+4+2 bytes,
	// the backend's reply 2+2.
	for _, c := range chat[:2] {
		if err := c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		readErr(c)
	}
	chat[2].UnderlyingConn().Close()
	p.waitSessions(t, 1)
	m = scrapeProxy(t, p)
	m.expect(t, []series{
		sample(0, "wsproxy_route_sessions_live", "route", "/chat"),
		sample(1, "wsproxy_backend_sessions_live", "backend", b),
		sample(7, "wsproxy_messages_total", "route", "/chat", "direction", "client_to_backend"),
		sample(7, "wsproxy_messages_total", "route", "/chat", "direction", "backend_to_client"),
		sample(77+16, "wsproxy_bytes_total", "route", "/chat", "direction", "client_to_backend"),
		sample(2, "wsproxy_session_closes_total", "route", "/chat", "code", "1000", "closed_by", "client"),
		sample(1, "wsproxy_session_closes_total", "route", "/chat", "code", "1006", "closed_by", "client"),
		sample(-1, "wsproxy_session_closes_total", "route", "/web", "code", "1000", "closed_by", "client"),
	})

	// Refusals, each by its outcome.
	if _, resp, err := websocket.DefaultDialer.Dial(p.url("/web"), http.Header{"Origin": {"https://evil.example"}}); err == nil || resp.StatusCode != 403 {
		t.Fatalf("bad origin: %v", err)
	}
	if _, resp, err := websocket.DefaultDialer.Dial(p.url("/reject"), nil); err == nil || resp.StatusCode != 403 {
		t.Fatalf("rejecting backend: %v", err)
	}
	if _, resp, err := websocket.DefaultDialer.Dial(p.url("/dead"), nil); err == nil || resp.StatusCode != 502 {
		t.Fatalf("dead backend: %v", err)
	}
	conn, err := net.Dial("tcp", p.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil || resp.StatusCode != 400 {
		t.Fatalf("no key: %v %v", resp, err)
	}

	// Plain HTTP by status class, and a path with no route.
	for _, u := range []string{"/chat", "/chat/x", "/reject", "/nowhere"} {
		resp, err := http.Get("http://" + p.ln.Addr().String() + u)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}

	m = scrapeProxy(t, p)
	m.expect(t, []series{
		sample(1, "wsproxy_handshakes_total", "outcome", "origin_refused"),
		sample(1, "wsproxy_handshakes_total", "outcome", "backend_non_101"),
		sample(1, "wsproxy_handshakes_total", "outcome", "backend_refused"),
		sample(1, "wsproxy_handshakes_total", "outcome", "bad_request"),
		sample(0, "wsproxy_handshakes_total", "outcome", "backend_timeout"),
		sample(4, "wsproxy_handshakes_total", "outcome", "ok"),
		sample(2, "wsproxy_http_requests_total", "route", "/chat", "class", "2xx"),
		sample(1, "wsproxy_http_requests_total", "route", "/reject", "class", "4xx"),
		sample(1, "wsproxy_unrouted_requests_total"),
	})
	web.Close()
}

// TestMetricsPingRoundTrip checks pings, pongs and the round-trip
// histograms: the echo backend and a reading client answer the proxy's
// pings.
func TestMetricsPingRoundTrip(t *testing.T) {
	b := startBackend(t, "b")
	p := startProxy(t, `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {ping_interval: 30ms, read_timeout: 5s}
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: "{{B0}}"}]}}
`, b.addr())
	c := dial(t, p.url("/"), nil)
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil { // answers pings
				return
			}
		}
	}()
	var m scrape
	waitFor(t, "pongs from both peers", func() bool {
		m = scrapeProxy(t, p)
		return m.value("wsproxy_pongs_received_total", "peer", "backend") >= 2 &&
			m.value("wsproxy_pongs_received_total", "peer", "client") >= 2
	})
	if n := m.value("wsproxy_backend_ping_rtt_seconds", "backend", b.addr()); n < 2 {
		t.Fatalf("backend RTT histogram holds %v samples", n)
	}
	if n := m.value("wsproxy_client_ping_rtt_seconds"); n < 2 {
		t.Fatalf("client RTT histogram holds %v samples", n)
	}
	if sent := m.value("wsproxy_pings_sent_total", "peer", "backend"); sent < m.value("wsproxy_pongs_received_total", "peer", "backend") {
		t.Fatalf("%v pings sent, fewer than pongs", sent)
	}
	h := m.metric("wsproxy_backend_ping_rtt_seconds", "backend", b.addr()).GetHistogram()
	if sum := h.GetSampleSum(); sum <= 0 || sum/float64(h.GetSampleCount()) > 1 {
		t.Fatalf("loopback round trips average %vs", sum/float64(h.GetSampleCount()))
	}
}

// TestMetricsNeverGoBackwards ends sessions while scraping: a session is
// counted live or folded, never both or neither, so totals only grow and
// end exact.
func TestMetricsNeverGoBackwards(t *testing.T) {
	b := startBackend(t, "b")
	p := startProxy(t, `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: "{{B0}}"}]}}
`, b.addr())
	const sessions, msgs = 40, 5
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var backwards string
	wg.Add(1)
	go func() {
		defer wg.Done()
		last := 0.0
		for {
			select {
			case <-stop:
				return
			default:
			}
			v := scrapeProxy(t, p).value("wsproxy_messages_total", "route", "/", "direction", "client_to_backend")
			if v < last {
				backwards = fmt.Sprintf("messages went from %v to %v", last, v)
				return
			}
			last = v
		}
	}()
	var clients sync.WaitGroup
	for i := 0; i < 4; i++ {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for j := 0; j < sessions/4; j++ {
				c, _, err := websocket.DefaultDialer.Dial(p.url("/"), nil)
				if err != nil {
					t.Error(err)
					return
				}
				for k := 0; k < msgs; k++ {
					c.WriteMessage(websocket.BinaryMessage, []byte("x"))
					c.ReadMessage()
				}
				c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
				readErr(c)
				c.Close()
			}
		}()
	}
	clients.Wait()
	p.waitSessions(t, 0)
	close(stop)
	wg.Wait()
	if backwards != "" {
		t.Fatal(backwards)
	}
	scrapeProxy(t, p).expect(t, []series{
		sample(sessions*msgs, "wsproxy_messages_total", "route", "/", "direction", "client_to_backend"),
		sample(sessions, "wsproxy_session_closes_total", "route", "/", "code", "1000", "closed_by", "client"),
		sample(0, "wsproxy_route_sessions_live", "route", "/"),
	})
}

// TestMetricsFollowReloads checks that a reload adds the series of new
// routes and backends and drops those of removed ones once their
// sessions are gone.
func TestMetricsFollowReloads(t *testing.T) {
	b0, b1 := startBackend(t, "b0"), startBackend(t, "b1")
	p := startProxy(t, fmt.Sprintf(`
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {drain_timeout: 100ms}
routes: [{path: /a, pool: p}]
pools: {p: {backends: [{address: %q}]}}
`, b0.addr()))
	c := dial(t, p.url("/a"), nil)
	p.waitSessions(t, 1)
	cfg, err := config.Parse("reload.yaml", []byte(fmt.Sprintf(`
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {drain_timeout: 100ms}
routes: [{path: /b, pool: p}]
pools: {p: {backends: [{address: %q}]}}
`, b1.addr())))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.srv.Update(cfg); err != nil {
		t.Fatal(err)
	}
	m := scrapeProxy(t, p)
	m.expect(t, []series{
		sample(0, "wsproxy_route_sessions_live", "route", "/b"),
		sample(1, "wsproxy_route_sessions_live", "route", "/a"), // still draining
		sample(1, "wsproxy_backend_sessions_live", "backend", b0.addr()),
		sample(0, "wsproxy_backend_sessions_live", "backend", b1.addr()),
	})
	readErr(c)
	p.waitSessions(t, 0)
	if err := p.srv.Update(cfg); err != nil {
		t.Fatal(err)
	}
	m = scrapeProxy(t, p)
	m.expect(t, []series{
		sample(-1, "wsproxy_route_sessions_live", "route", "/a"),
		sample(-1, "wsproxy_backend_sessions_live", "backend", b0.addr()),
		sample(0, "wsproxy_backend_sessions_live", "backend", b1.addr()),
	})
}

// TestAccessLogSampling checks the access-log lines of sessions and plain
// requests, and that access_log_sample and access_log turn them off.
func TestAccessLogSampling(t *testing.T) {
	b := startBackend(t, "b")
	for _, tc := range []struct {
		name   string
		log    string
		lines  int
		fields []string
	}{
		{"all", "{access_log: true}", 2, []string{"route", "backend", "client", "duration"}},
		{"sample 0", "{access_log: true, access_log_sample: 0}", 0, nil},
		{"off", "{access_log: false, access_log_sample: 1}", 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse("log.yaml", []byte(fmt.Sprintf(`
listeners: [{address: "127.0.0.1:0"}]
log: %s
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: %q}]}}
`, tc.log, b.addr())))
			if err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zap.InfoLevel)
			srv, err := New(Config{Config: cfg, Logger: zap.New(core), CloseTimeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			p := &testProxy{srv: srv, ln: ln, done: make(chan struct{})}
			go func() {
				defer close(p.done)
				_ = srv.Serve(ln)
			}()
			t.Cleanup(p.stop)

			c := dial(t, p.url("/room"), nil)
			c.WriteMessage(websocket.TextMessage, []byte("hi"))
			c.ReadMessage()
			c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
			readErr(c)
			p.waitSessions(t, 0)
			resp, err := http.Get("http://" + ln.Addr().String() + "/page?token=secret")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()

			got := logs.FilterFieldKey("route").All()
			if len(got) != tc.lines {
				t.Fatalf("%d access-log lines, want %d: %v", len(got), tc.lines, got)
			}
			if tc.lines == 0 {
				return
			}
			sess, req := logs.FilterMessage("session").All(), logs.FilterMessage("http").All()
			if len(sess) != 1 || len(req) != 1 {
				t.Fatalf("%d session lines, %d http lines", len(sess), len(req))
			}
			f := sess[0].ContextMap()
			if f["client_messages"] != int64(1) || f["close_code"] != int32(1000) || f["closed_by"] != "client" {
				t.Fatalf("session line: %v", f)
			}
			r := req[0].ContextMap()
			if r["status"] != int64(200) || r["path"] != "/page" || r["backend"] != b.addr() || r["method"] != "GET" {
				t.Fatalf("http line: %v", r)
			}
			for _, e := range append(sess, req...) {
				for _, k := range tc.fields {
					if _, ok := e.ContextMap()[k]; !ok {
						t.Fatalf("%s line lacks %s: %v", e.Message, k, e.ContextMap())
					}
				}
				if strings.Contains(fmt.Sprint(e.ContextMap()), "secret") {
					t.Fatalf("query string logged: %v", e.ContextMap())
				}
			}
		})
	}
}
