package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// loopUpgrade sends a handshake in one write, then a frame once the 101
// is read, and checks the echo.
func loopUpgradeEcho(t *testing.T, p *testProxy) {
	t.Helper()
	conn, err := net.Dial("tcp", p.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(rawHandshake(p.ln.Addr().String(), "/"))); err != nil {
		t.Fatal(err)
	}
	rc := &rawClient{t: t, conn: conn, br: bufio.NewReader(conn)}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("answer %v %v", resp, err)
	}
	rc.send(clientFrame(true, wsframe.OpText, []byte("hi")))
	f, err := rc.next()
	if err != nil || string(f.payload) != "hi" {
		t.Fatalf("echo %q %v", f.payload, err)
	}
}

// An upgrade with nothing behind its head completes on the loop: the
// session relays, and the loop, not fasthttp, answered it.
func TestLoopUpgradePlain(t *testing.T) {
	b := startBackend(t, "b0")
	p := startEngine(t, "loops", b.addr())
	for i := 0; i < 3; i++ {
		loopUpgradeEcho(t, p)
	}
	if n := p.srv.stats.LoopUpgrades.Load(); n != 3 {
		t.Fatalf("%d upgrades on the loops, want 3", n)
	}
	if n := p.srv.stats.HandshakeOK.Load(); n != 3 {
		t.Fatalf("HandshakeOK %d, want 3", n)
	}
	p.waitSessions(t, 0)
	waitFor(t, "no connections", func() bool { return p.srv.conns.connections() == 0 })
	waitFor(t, "no tickets", func() bool { return p.srv.admission.total.Load() == 0 })
}

// loopUpConfig is a proxy whose pool's backends are %s, holding one
// session, with a short handshake_timeout.
const loopUpConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
admission: {max_header_bytes: 2KiB, max_sessions: 1}
defaults: {handshake_timeout: 300ms}
routes:
  - {path: /, pool: p, hash_key: "query:k"}
pools:
  p: {backends: [%s]}
`

// startEngineWith starts a proxy on yaml (loopUpConfig's backends
// filled in) with engine, its listener served the way engine says.
func startEngineWith(t *testing.T, engine string, backends ...string) *testProxy {
	t.Helper()
	if engineOverride != "" && engineOverride != engine {
		t.Skipf("WSPROXY_ENGINE=%s", engineOverride)
	}
	var list []string
	for _, b := range backends {
		list = append(list, fmt.Sprintf("{address: %q}", b))
	}
	p := startProxy(t, "engine: "+engine+"\n"+fmt.Sprintf(loopUpConfig, strings.Join(list, ", ")))
	waitFor(t, "the listener served", func() bool {
		p.srv.mu.Lock()
		defer p.srv.mu.Unlock()
		for ln := range p.srv.listeners {
			_, loops := ln.(*loopListener)
			return loops == (engine == "loops")
		}
		return false
	})
	return p
}

// upgradeAnswer sends an upgrade for path in one write and returns the
// answer (Date left out) once it is whole, and the connection.
func upgradeAnswer(t *testing.T, p *testProxy, path string) (string, *rawClient) {
	t.Helper()
	conn, err := net.Dial("tcp", p.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(rawHandshake("proxy", path))); err != nil {
		t.Fatal(err)
	}
	rc := &rawClient{t: t, conn: conn, br: bufio.NewReader(conn)}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", resp.Status)
	var names []string
	for k := range resp.Header {
		if k != "Date" && k != "Sec-Websocket-Accept" {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(&b, "%s: %s\n", k, strings.Join(resp.Header[k], ","))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		b.Write(body)
	}
	return b.String(), rc
}

// sameOnBoth fails if the engines' answers differ.
func sameOnBoth[T comparable](t *testing.T, answers map[string]T) {
	t.Helper()
	if len(answers) == 2 && answers["loops"] != answers["goroutines"] {
		t.Fatalf("the engines answer differently:\n%q\n%q", any(answers["goroutines"]), any(answers["loops"]))
	}
}

// An upgrade over admission.max_sessions is refused by the loop with the
// goroutine engine's status, Retry-After and body, counted once.
func TestLoopUpgradeRefusedByAdmission(t *testing.T) {
	answers := map[string]string{}
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			b := startBackend(t, "b0")
			p := startEngineWith(t, engine, b.addr())
			if a, _ := upgradeAnswer(t, p, "/"); !strings.HasPrefix(a, "101") {
				t.Fatalf("first upgrade: %q", a)
			}
			p.waitSessions(t, 1)
			a, _ := upgradeAnswer(t, p, "/")
			if !strings.HasPrefix(a, "503") || !strings.Contains(a, "Retry-After:") {
				t.Fatalf("second upgrade: %q", a)
			}
			if n := p.srv.stats.Limited[limitSessions].Load(); n != 1 {
				t.Fatalf("Limited[sessions] = %d, want 1", n)
			}
			if engine == "loops" {
				if n := p.srv.stats.LoopUpgrades.Load(); n != 1 {
					t.Fatalf("LoopUpgrades = %d, want 1", n)
				}
			}
			// The session limit's Retry-After is spread at random.
			answers[engine] = regexp.MustCompile(`Retry-After: [0-9]+`).ReplaceAllString(a, "Retry-After: n")
		})
	}
	sameOnBoth(t, answers)
}

// A first backend that refuses the connection is followed by the next
// one, on the loop.
func TestLoopUpgradeDeadFirstBackend(t *testing.T) {
	b := startBackend(t, "b0")
	dead := deadAddr(t)
	p := startEngineWith(t, "loops", dead, b.addr())
	// A key whose first pick is the dead backend.
	rt := p.srv.table.Load().match([]byte("/"))
	path := ""
	for i := 0; i < 1000 && path == ""; i++ {
		req := fasthttp.AcquireRequest()
		req.SetRequestURI(fmt.Sprintf("/?k=%d", i))
		if rt.pool.lb.PickExcluding(rt.key.Hash(req, netip.MustParseAddr("127.0.0.1")), nil).Addr == dead {
			path = fmt.Sprintf("/?k=%d", i)
		}
		fasthttp.ReleaseRequest(req)
	}
	if path == "" {
		t.Fatal("no key picks the dead backend first")
	}
	a, rc := upgradeAnswer(t, p, path)
	if !strings.HasPrefix(a, "101") {
		t.Fatalf("answer %q", a)
	}
	rc.send(clientFrame(true, wsframe.OpText, []byte("hi")))
	if f, err := rc.next(); err != nil || string(f.payload) != "hi" {
		t.Fatalf("echo %q %v", f.payload, err)
	}
	if n := p.srv.stats.LoopUpgrades.Load(); n != 1 {
		t.Fatalf("LoopUpgrades = %d, want 1", n)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conns != 1 {
		t.Fatalf("live backend saw %d upgrades", b.conns)
	}
}

// A backend's 403 reaches the client as the goroutine engine relays it.
func TestLoopUpgradeBackendRefuses(t *testing.T) {
	answers := map[string]string{}
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			b := startBackend(t, "b0", func(b *testBackend) {
				b.reject = true
				b.onHTTP = func(ctx *fasthttp.RequestCtx) {
					ctx.Response.Header.Set("X-Why", "nope")
					ctx.Error("forbidden here", fasthttp.StatusForbidden)
				}
			})
			p := startEngineWith(t, engine, b.addr())
			a, _ := upgradeAnswer(t, p, "/")
			if !strings.HasPrefix(a, "403") || !strings.Contains(a, "forbidden here") {
				t.Fatalf("answer %q", a)
			}
			if n := p.srv.stats.HandshakeBackendNon101.Load(); n != 1 {
				t.Fatalf("HandshakeBackendNon101 = %d, want 1", n)
			}
			if n := p.srv.stats.LoopUpgrades.Load(); n != 0 {
				t.Fatalf("LoopUpgrades = %d, want 0", n)
			}
			waitFor(t, "no tickets", func() bool { return p.srv.admission.total.Load() == 0 })
			answers[engine] = a
		})
	}
	sameOnBoth(t, answers)
}

// silentBackend accepts connections and never answers; accepted says
// when it took one.
func silentBackend(t *testing.T) (string, chan struct{}) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 16)
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
			accepted <- struct{}{}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String(), accepted
}

// A backend that never answers gets the 504 of handshake_timeout, on
// both engines alike.
func TestLoopUpgradeHandshakeTimeout(t *testing.T) {
	answers := map[string]string{}
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			addr, _ := silentBackend(t)
			p := startEngineWith(t, engine, addr)
			start := time.Now()
			a, _ := upgradeAnswer(t, p, "/")
			if took := time.Since(start); took < 250*time.Millisecond || took > 3*time.Second {
				t.Fatalf("answered after %v, want about 300ms", took)
			}
			if !strings.HasPrefix(a, "504") {
				t.Fatalf("answer %q", a)
			}
			if n := p.srv.stats.HandshakeBackendTimeout.Load(); n != 1 {
				t.Fatalf("HandshakeBackendTimeout = %d, want 1", n)
			}
			waitFor(t, "no tickets", func() bool { return p.srv.admission.total.Load() == 0 })
			waitFor(t, "no upgrades", func() bool { return p.srv.upgrading.Load() == 0 })
			answers[engine] = a
		})
	}
	sameOnBoth(t, answers)
}

// A shutdown while the loop waits for the backend's answer ends the
// handshake as the goroutine engine ends it, and Shutdown returns.
func TestLoopUpgradeShutdownMidHandshake(t *testing.T) {
	answers := map[string]string{}
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			addr, accepted := silentBackend(t)
			p := startProxy(t, "engine: "+engine+"\n"+strings.Replace(fmt.Sprintf(loopUpConfig, fmt.Sprintf("{address: %q}", addr)), "300ms", "20s", 1))
			got := upgradeStatus(p.ln.Addr().String())
			select {
			case <-accepted:
			case <-time.After(10 * time.Second):
				t.Fatal("the backend saw no connection")
			}
			ctx, cancel := contextWithTimeout(200 * time.Millisecond)
			defer cancel()
			start := time.Now()
			_ = p.srv.Shutdown(ctx)
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("Shutdown took %v", took)
			}
			a := <-got
			if engine == "loops" && p.srv.stats.LoopUpgrades.Load() != 0 {
				t.Fatal("a loop upgrade completed")
			}
			if p.srv.upgrading.Load() != 0 || p.srv.admission.total.Load() != 0 {
				t.Fatalf("%d upgrading, %d tickets", p.srv.upgrading.Load(), p.srv.admission.total.Load())
			}
			answers[engine] = a
		})
	}
	sameOnBoth(t, answers)
}

// A handshake that Shutdown cuts short is the proxy's doing: it is
// answered as before (TestLoopUpgradeShutdownMidHandshake) but does not
// count against the backend, on either engine, even at passive_failures 1.
func TestShutdownMidHandshakeBlamesNoBackend(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			if engineOverride != "" && engineOverride != engine {
				t.Skip("engine set by WSPROXY_ENGINE")
			}
			addr, accepted := silentBackend(t)
			yaml := "engine: " + engine + "\n" + strings.Replace(
				strings.Replace(passiveConfig, "passive_failures: 2", "passive_failures: 1", 1),
				"handshake_timeout: 2s", "handshake_timeout: 20s", 1)
			hp := startHealthProxy(t, fmt.Sprintf(yaml, "2s", "0s"), addr)
			waitEngineServed(t, hp.srv, engine)
			got := upgradeStatus(hp.ln.Addr().String())
			select {
			case <-accepted:
			case <-time.After(10 * time.Second):
				t.Fatal("the backend saw no connection")
			}
			ctx, cancel := contextWithTimeout(200 * time.Millisecond)
			defer cancel()
			_ = hp.srv.Shutdown(ctx)
			if a := <-got; !strings.HasPrefix(a, "504") {
				t.Fatalf("answer %q, want 504", a)
			}
			if !hp.up(t, addr) {
				t.Fatal("passive health took the backend out for a handshake the proxy's shutdown ended")
			}
			for _, e := range hp.logs.FilterField(zap.Bool("counted_against_backend", true)).All() {
				t.Errorf("logged as the backend's failure: %s %v", e.Message, e.ContextMap())
			}
			if n := hp.srv.stats.HandshakeShuttingDown.Load(); n != 1 {
				t.Errorf("%d handshakes counted as shutting_down, want 1", n)
			}
			if n := hp.srv.stats.HandshakeBackendTimeout.Load(); n != 0 {
				t.Errorf("%d handshakes counted as backend_timeout, want 0", n)
			}
		})
	}
}

// upgradeStatus sends a handshake to addr and delivers the status line of
// the answer, or the error that ended the wait for it.
func upgradeStatus(addr string) <-chan string {
	got := make(chan string, 1)
	go func() {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			got <- err.Error()
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = conn.Write([]byte(rawHandshake("proxy", "/")))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- resp.Status
	}()
	return got
}
