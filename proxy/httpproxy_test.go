package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/internal/testpki"
	"github.com/wsproxy/wsproxy/tlsconf"
)

const twoBackends = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
routes:
  - {path: /, pool: p, hash_key: "query:user"}
pools:
  p: {backends: [{address: "{{B0}}"}, {address: "{{B1}}"}]}
`

func TestPlainHTTPFollowsTheSameHash(t *testing.T) {
	b0 := startBackend(t, "b0")
	b1 := startBackend(t, "b1")
	p := startProxy(t, twoBackends, b0.addr(), b1.addr())
	base := "http://" + p.ln.Addr().String()
	seen := map[string]bool{}
	for i := 0; i < 30; i++ {
		user := fmt.Sprintf("user%d", i)
		resp, err := http.Get(base + "/poll?user=" + user)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		seen[string(body)] = true
		// The WebSocket of the same user lands on the same backend.
		before := [2]int{conns(b0), conns(b1)}
		c := dial(t, p.url("/ws?user="+user), nil)
		c.Close()
		last := ""
		if conns(b0) > before[0] {
			last = "b0"
		} else if conns(b1) > before[1] {
			last = "b1"
		}
		if last != string(body) {
			t.Fatalf("%s: plain HTTP went to %s, WebSocket to %s", user, body, last)
		}
	}
	if len(seen) != 2 {
		t.Fatalf("30 users all went to %v", seen)
	}
}

func conns(b *testBackend) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conns
}

func TestServerSentEventsStream(t *testing.T) {
	next := make(chan struct{})
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onHTTP = func(ctx *fasthttp.RequestCtx) {
			ctx.SetContentType("text/event-stream")
			ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
				for i := 0; i < 3; i++ {
					fmt.Fprintf(w, "data: event %d\n\n", i)
					w.Flush()
					<-next // the client must see this event before the next is sent
				}
			})
		}
	})
	p := startProxy(t, basicConfig, b.addr())
	resp, err := http.Get("http://" + p.ln.Addr().String() + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("content type %q", resp.Header.Get("Content-Type"))
	}
	br := bufio.NewReader(resp.Body)
	for i := 0; i < 3; i++ {
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("data: event %d\n", i) {
			t.Fatalf("event %d: %q %v", i, line, err)
		}
		br.ReadString('\n')
		next <- struct{}{}
	}
}

func TestPlainHTTPForwardedHeadersAndBody(t *testing.T) {
	got := make(chan http.Header, 1)
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onHTTP = func(ctx *fasthttp.RequestCtx) {
			h := http.Header{}
			ctx.Request.Header.VisitAll(func(k, v []byte) { h.Add(string(k), string(v)) })
			got <- h
			ctx.Response.Header.Set("X-From", "backend")
			ctx.SetStatusCode(201)
			ctx.SetBody(append([]byte("posted:"), ctx.PostBody()...))
		}
	})
	p := startProxy(t, basicConfig, b.addr())
	req, _ := http.NewRequest("POST", "http://"+p.ln.Addr().String()+"/api/a//b?x=1", strings.NewReader("payload"))
	req.Header.Set("X-Custom", "yes")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 || string(body) != "posted:payload" || resp.Header.Get("X-From") != "backend" {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	h := <-got
	if h.Get("X-Custom") != "yes" || h.Get("X-Forwarded-For") != "127.0.0.1" || h.Get("X-Forwarded-Proto") != "http" {
		t.Fatalf("headers at backend: %v", h)
	}
}

var _ = websocket.DefaultDialer

// TestPlainHTTPThroughTLSListener proxies plain HTTP from a TLS listener
// to a plain backend: the scheme toward the backend is the pool's, not
// the listener's. Page loads must not take the pool down, and upgrades
// keep working afterwards.
func TestPlainHTTPThroughTLSListener(t *testing.T) {
	ca := testpki.NewCA(t)
	front := ca.Issue(t, "front", testpki.Options{Names: []string{"localhost"}})
	ts, err := tlsconf.NewServer(tlsconf.ServerOptions{Certificates: []tlsconf.CertFiles{{CertFile: front.CertFile, KeyFile: front.KeyFile}}})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 20)
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onHTTP = func(ctx *fasthttp.RequestCtx) {
			got <- string(ctx.Request.Header.Peek("X-Forwarded-Proto"))
			ctx.SetBodyString("page")
		}
	})
	hp := startHealthProxy(t, fmt.Sprintf(passiveConfig, "2s", "4s"), b.addr())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hp.srv.Serve(WrapListener(ln, ts.Config())) //nolint:errcheck
	t.Cleanup(func() { ln.Close() })

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for i := 0; i < 5; i++ {
		resp, err := client.Get("https://" + ln.Addr().String() + "/index.html")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "page" {
			t.Fatalf("page %d over TLS: %d %q", i, resp.StatusCode, body)
		}
		if proto := <-got; proto != "https" {
			t.Fatalf("X-Forwarded-Proto %q, want https", proto)
		}
	}
	if !hp.up(t, b.addr()) {
		t.Fatal("page loads over TLS took the backend down")
	}
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}}
	c, _, err := d.Dial("wss://"+ln.Addr().String()+"/ws", nil)
	if err != nil {
		t.Fatalf("upgrade after the page loads: %v", err)
	}
	c.Close()
}

// eioBackend answers like an engine.io server, as far as the proxy can
// tell: a request without sid opens a session (a poll answers its id); a poll or
// an upgrade carrying an id this backend did not hand out gets 400
// "Session ID unknown".
type eioBackend struct {
	name     string
	ln       net.Listener
	upgrader websocket.FastHTTPUpgrader
	mu       sync.Mutex
	sids     map[string]bool
	next     int
}

func startEIOBackend(t *testing.T, name string) *eioBackend {
	t.Helper()
	e := &eioBackend{name: name, sids: map[string]bool{}}
	e.upgrader.CheckOrigin = func(*fasthttp.RequestCtx) bool { return true }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.ln = ln
	srv := &fasthttp.Server{Handler: e.handle}
	go srv.Serve(ln) //nolint:errcheck
	t.Cleanup(func() { srv.Shutdown() })
	return e
}

func (e *eioBackend) handle(ctx *fasthttp.RequestCtx) {
	sid := string(ctx.QueryArgs().Peek("sid"))
	e.mu.Lock()
	known := e.sids[sid]
	if sid == "" { // a new session, polling or WebSocket only
		e.next++
		sid = fmt.Sprintf("%s-%d", e.name, e.next)
		e.sids[sid], known = true, true
	}
	e.mu.Unlock()
	if !known {
		ctx.Error(`{"code":1,"message":"Session ID unknown"}`, fasthttp.StatusBadRequest)
		return
	}
	if websocket.FastHTTPIsWebSocketUpgrade(ctx) {
		_ = e.upgrader.Upgrade(ctx, func(c *websocket.Conn) { echo(c) })
		return
	}
	ctx.SetBodyString(sid)
}

// TestPollingThenUpgradeWithBoundedLoads runs engine.io's transport
// upgrade through a pool with bounded loads at their tightest: clients
// open a session by long-polling, poll again while other clients' sessions
// move the loads, then upgrade with their sid. Every poll and every
// upgrade must reach the backend holding the client's session, while the
// bound does send new sessions elsewhere.
func TestPollingThenUpgradeWithBoundedLoads(t *testing.T) {
	var addrs []string
	for i := 0; i < 3; i++ {
		addrs = append(addrs, startEIOBackend(t, fmt.Sprintf("b%d", i)).ln.Addr().String())
	}
	p := startProxy(t, `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
routes:
  - {path: /socket.io, pool: p, hash_key: "header:X-Client"}
pools:
  p:
    bounded_load: 1
    backends: [{address: "{{B0}}"}, {address: "{{B1}}"}, {address: "{{B2}}"}]
`, addrs...)
	base := "http://" + p.ln.Addr().String() + "/socket.io/?EIO=4&transport="
	const clients = 40
	sids := make([]string, clients)
	poll := func(i int) {
		t.Helper()
		req, _ := http.NewRequest("GET", base+"polling&sid="+sids[i], nil)
		if sids[i] == "" {
			req, _ = http.NewRequest("GET", base+"polling", nil)
		}
		req.Header.Set("X-Client", fmt.Sprintf("client-%d", i))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || (sids[i] != "" && string(body) != sids[i]) {
			t.Fatalf("client %d, session %q: poll answered %d %q", i, sids[i], resp.StatusCode, body)
		}
		sids[i] = string(body)
	}
	upgrade := func(i int) {
		t.Helper()
		h := http.Header{"X-Client": {fmt.Sprintf("client-%d", i)}}
		c, resp, err := websocket.DefaultDialer.Dial(p.url("/socket.io/?EIO=4&transport=websocket&sid="+sids[i]), h)
		if err != nil {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			t.Fatalf("client %d, session %s: upgrade: %v (status %d)", i, sids[i], err, status)
		}
		t.Cleanup(func() { c.Close() })
	}
	rt := p.srv.table.Load().routes[0]
	bounded := 0 // polls a bounded pick would have sent elsewhere
	countBounded := func(i int) {
		var req fasthttp.Request
		req.Header.Set("X-Client", fmt.Sprintf("client-%d", i))
		key := rt.key.Hash(&req, netip.MustParseAddr("127.0.0.1"))
		if rt.pool.lb.Pick(key) != rt.pool.lb.PickUnbounded(key) {
			bounded++
		}
	}

	for i := 0; i < clients; i++ {
		poll(i) // opens the session
	}
	for i := 0; i < clients; i += 2 {
		poll(i)
		countBounded(i)
		poll(i)
		upgrade(i)
	}
	p.waitSessions(t, clients/2)
	for i := 1; i < clients; i += 2 {
		countBounded(i)
		poll(i)
		poll(i)
		upgrade(i)
	}
	p.waitSessions(t, clients)
	// New WebSocket sessions, with no session to follow, are bounded.
	for i := 0; i < 10; i++ {
		dial(t, p.url("/socket.io/?EIO=4&transport=websocket"), http.Header{"X-Client": {fmt.Sprintf("new-%d", i)}})
	}
	if bounded == 0 {
		t.Fatal("no poll met a full backend: the loads never reached the bound and the test shows nothing")
	}
	t.Logf("%d of %d polls went to a backend over its bound", bounded, clients)
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestPlainHTTPToTLSBackend proxies plain HTTP to a pool that speaks TLS,
// from a plain listener: the keep-alive connection over TLS is reused.
func TestPlainHTTPToTLSBackend(t *testing.T) {
	ca := testpki.NewCA(t)
	back := ca.Issue(t, "back", testpki.Options{Names: []string{"127.0.0.1"}})
	cert, err := tls.LoadX509KeyPair(back.CertFile, back.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("tls") }}
	go srv.Serve(tls.NewListener(cl, &tls.Config{Certificates: []tls.Certificate{cert}})) //nolint:errcheck
	t.Cleanup(func() { srv.Shutdown() })
	p := startProxy(t, basicConfig, ln.Addr().String())
	setPoolTLS(t, p, config.PoolTLS{Enabled: true, CAFile: ca.File})
	for i := 0; i < 10; i++ {
		if code, body := get(t, "http://"+p.ln.Addr().String()+"/page"); code != 200 || body != "tls" {
			t.Fatalf("request %d to a TLS backend: %d %q", i, code, body)
		}
	}
	if n := cl.n.Load(); n != 1 {
		t.Fatalf("%d TLS connections for 10 requests in a row, want 1 kept alive", n)
	}
}

// BenchmarkPlainHTTP measures small keep-alive GETs through the proxy, with
// the allocations per request of the whole process (client and backend
// included).
func BenchmarkPlainHTTP(b *testing.B) {
	be := startBackend(b, "b0")
	p := startProxy(b, basicConfig, be.addr())
	c := &fasthttp.HostClient{Addr: p.ln.Addr().String(), MaxConns: 64}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://" + p.ln.Addr().String() + "/page")
		for pb.Next() {
			if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 {
				b.Fatalf("%v %d", err, resp.StatusCode())
			}
		}
	})
}

// TestPlainHTTPSkipsARefusingBackend sends plain requests whose keys hash
// to a backend that refuses connections: each is served by the next
// backend the hash offers, as an upgrade would be, instead of a 502.
func TestPlainHTTPSkipsARefusingBackend(t *testing.T) {
	b0 := startBackend(t, "b0")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // connects to it are refused
	p := startProxy(t, strings.Replace(twoBackends, "backends:", "health: {passive_failures: 0}, backends:", 1), b0.addr(), dead)
	base := "http://" + p.ln.Addr().String()
	for i := 0; i < 20; i++ {
		resp, err := http.Get(fmt.Sprintf("%s/page?user=user%d", base, i))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "b0" {
			t.Fatalf("user%d: %d %q, want 200 from b0", i, resp.StatusCode, body)
		}
	}
}
