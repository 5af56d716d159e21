package proxy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/config"
)

// watchedClient is a client session whose reads run on their own
// goroutine, so a test can see when the proxy closes it.
type watchedClient struct {
	c      *websocket.Conn
	echoes chan string
	closed chan int // the Close code, once
}

func watch(c *websocket.Conn, closes chan<- struct{}) *watchedClient {
	w := &watchedClient{c: c, echoes: make(chan string, 1), closed: make(chan int, 1)}
	go func() {
		for {
			_, msg, err := c.ReadMessage()
			if err != nil {
				code, _ := closeCode(err)
				w.closed <- code
				closes <- struct{}{}
				return
			}
			w.echoes <- string(msg)
		}
	}()
	return w
}

// alive reports whether the session still relays: an echo comes back, or
// the Close the proxy sent comes instead.
func (w *watchedClient) alive(t *testing.T, msg string) bool {
	t.Helper()
	select {
	case <-w.closed:
		return false
	default:
	}
	if err := w.c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		<-w.closed
		return false
	}
	select {
	case got := <-w.echoes:
		if got != msg {
			t.Fatalf("echo %q, want %q", got, msg)
		}
		return true
	case <-w.closed:
		return false
	case <-time.After(5 * time.Second):
		t.Fatal("no echo and no close in 5 s")
	}
	return false
}

// waitDrains waits for every drain plan of srv to end.
func waitDrains(t *testing.T, srv *Server) {
	t.Helper()
	done := make(chan struct{})
	go func() { srv.drains.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("drains still running after 10 s")
	}
}

// backendStatus returns what Status says of the backend at addr in pool.
func backendStatus(t *testing.T, srv *Server, pool, addr string) BackendStatus {
	t.Helper()
	for _, p := range srv.Status().Pools {
		if p.Name != pool {
			continue
		}
		for _, b := range p.Backends {
			if b.Address == addr {
				return b
			}
		}
	}
	t.Fatalf("status lists no backend %s in pool %s", addr, pool)
	return BackendStatus{}
}

const readdConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {drain_timeout: 5s, ping_interval: 0s}
routes:
  - {path: /, pool: p, hash_key: "header:X-Key"}
pools:
  p:
    bounded_load: 1.25
    backends:
%s`

// backendList is the backends: lines of a pool holding bs.
func backendList(bs ...*testBackend) string {
	s := ""
	for _, b := range bs {
		s += fmt.Sprintf("      - {address: %q}\n", b.addr())
	}
	return s
}

// reloadProxy applies the config text to p as a reload does.
func reloadProxy(t *testing.T, p *testProxy, text string) {
	t.Helper()
	cfg, err := config.Parse("reload.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.srv.Update(cfg); err != nil {
		t.Fatal(err)
	}
}

// TestReaddedBackendKeepsSessions removes a backend by a reload and adds
// it back by the next while its sessions are being drained: the drain
// stops, the sessions still open stay open, and the backend's live count
// (in Status and for bounded loads) still holds them.
func TestReaddedBackendKeepsSessions(t *testing.T) {
	b0, b1 := startBackend(t, "b0"), startBackend(t, "b1")
	p := startProxy(t, fmt.Sprintf(readdConfig, backendList(b0)))
	reload := func(bs ...*testBackend) { t.Helper(); reloadProxy(t, p, fmt.Sprintf(readdConfig, backendList(bs...))) }
	const n = 50
	closes := make(chan struct{}, n)
	var cs []*watchedClient
	for i := 0; i < n; i++ {
		cs = append(cs, watch(dial(t, p.url("/"), http.Header{"X-Key": {fmt.Sprint("k", i)}}), closes))
	}
	p.waitSessions(t, n) // a session registers just after its 101
	if got := backendStatus(t, p.srv, "p", b0.addr()).Sessions; got != n {
		t.Fatalf("b0 has %d sessions, want %d", got, n)
	}

	start := time.Now()
	reload(b1) // b0 leaves: its sessions drain over 5 s, one per 100 ms
	<-closes   // the drain is under way
	reload(b0, b1)
	early := time.Since(start)
	waitDrains(t, p.srv)

	kept := 0
	for i, c := range cs {
		if c.alive(t, fmt.Sprint("still-", i)) {
			kept++
		}
	}
	// Closes come one per 100 ms slot; those before the second reload
	// were due, none after it is.
	if most := int(early/(100*time.Millisecond)) + 2; n-kept > most {
		t.Fatalf("%d of %d sessions closed, %v after the drain began; at most %d were due before the backend came back", n-kept, n, early, most)
	}
	p.waitSessions(t, kept)
	if st := backendStatus(t, p.srv, "p", b0.addr()); st.Sessions != int64(kept) || st.Draining {
		t.Fatalf("status of b0: %+v, want %d sessions, not draining", st, kept)
	}
	if d := p.srv.Status().Draining; d != 0 {
		t.Fatalf("status: %d sessions draining, want 0", d)
	}
	// b0 holds about 50, b1 none: bounded loads (1.25) send every new
	// session to b1.
	before := conns(b1)
	for i := 0; i < 10; i++ {
		if got := exchangeBackend(t, dial(t, p.url("/"), http.Header{"X-Key": {fmt.Sprint("new", i)}})); got != "x" {
			t.Fatalf("echo %q", got)
		}
	}
	if got := conns(b1) - before; got != 10 {
		t.Fatalf("%d of 10 new sessions went to b1; b0, which holds %d, got the rest", got, kept)
	}
}

// TestUndrainKeepsSessions drains a backend through the admin call and
// undrains it while its sessions are being closed: the closes stop.
func TestUndrainKeepsSessions(t *testing.T) {
	b0 := startBackend(t, "b0")
	p := startProxy(t, fmt.Sprintf(readdConfig, fmt.Sprintf("      - {address: %q}\n", b0.addr())))
	const n = 20
	closes := make(chan struct{}, n)
	var cs []*watchedClient
	for i := 0; i < n; i++ {
		cs = append(cs, watch(dial(t, p.url("/"), nil), closes))
	}
	p.waitSessions(t, n)
	start := time.Now()
	if got, err := p.srv.DrainBackend(b0.addr()); err != nil || got != n {
		t.Fatalf("DrainBackend = %d, %v; want %d", got, err, n)
	}
	<-closes // the drain is under way, one close per 250 ms
	if err := p.srv.UndrainBackend(b0.addr()); err != nil {
		t.Fatal(err)
	}
	early := time.Since(start)
	waitDrains(t, p.srv)
	kept := 0
	for i, c := range cs {
		if c.alive(t, fmt.Sprint("still-", i)) {
			kept++
		}
	}
	if most := int(early/(250*time.Millisecond)) + 2; n-kept > most {
		t.Fatalf("%d of %d sessions closed, %v after the drain began; at most %d were due before the undrain", n-kept, n, early, most)
	}
	p.waitSessions(t, kept)
	if st := backendStatus(t, p.srv, "p", b0.addr()); st.Sessions != int64(kept) || st.Draining {
		t.Fatalf("status of b0: %+v, want %d sessions, not draining", st, kept)
	}
	if d := p.srv.Status().Draining; d != 0 {
		t.Fatalf("status: %d sessions draining, want 0", d)
	}
}

// TestRedrainAfterReprieve removes a backend, adds it back and removes it
// again at once: the first drain passes its sessions by (they are the
// second's now) and the second closes every one of them, each once.
func TestRedrainAfterReprieve(t *testing.T) {
	const cfgText = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {drain_timeout: 1s, ping_interval: 0s}
routes:
  - {path: /, pool: p}
pools:
  p:
    backends:
%s`
	b0, b1 := startBackend(t, "b0"), startBackend(t, "b1")
	p := startProxy(t, fmt.Sprintf(cfgText, backendList(b0)))
	reload := func(bs ...*testBackend) { t.Helper(); reloadProxy(t, p, fmt.Sprintf(cfgText, backendList(bs...))) }
	const n = 20
	closes := make(chan struct{}, n)
	var cs []*watchedClient
	for i := 0; i < n; i++ {
		cs = append(cs, watch(dial(t, p.url("/"), nil), closes))
	}
	p.waitSessions(t, n)
	reload(b1)
	<-closes
	reload(b0, b1)
	reload(b1)
	if d := p.srv.Stats().SessionsDraining.Load(); d > n-1 {
		t.Fatalf("%d sessions draining, want at most %d", d, n-1)
	}
	waitDrains(t, p.srv)
	for _, c := range cs {
		select {
		case code := <-c.closed:
			if code != 1001 {
				t.Fatalf("drained session got close %d, want 1001", code)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a session of the removed backend is still open after the drains ended")
		}
	}
	p.waitSessions(t, 0)
	if d := p.srv.Stats().SessionsDraining.Load(); d != 0 {
		t.Fatalf("%d sessions draining after the drains ended, want 0", d)
	}
}

// TestSessionRegisteredDuringReloadDrains removes a backend by a reload
// while a handshake with it is in flight: the session that registers after
// the reload looked at the live sessions is drained all the same, instead
// of living on a backend no pool lists.
func TestSessionRegisteredDuringReloadDrains(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	b0 := startBackend(t, "b0", func(b *testBackend) {
		b.reject = true // every request reaches onHTTP, upgrades included
		b.onHTTP = func(ctx *fasthttp.RequestCtx) {
			arrived <- struct{}{}
			<-release
			_ = b.upgrader.Upgrade(ctx, func(c *websocket.Conn) {
				defer c.Close()
				echo(c)
			})
		}
	})
	b1 := startBackend(t, "b1")
	cfg := func(b *testBackend) string {
		return strings.Replace(fmt.Sprintf(readdConfig, backendList(b)), "drain_timeout: 5s", "drain_timeout: 300ms", 1)
	}
	p := startProxy(t, cfg(b0))
	dialed := make(chan *websocket.Conn, 1)
	go func() {
		c, _, err := websocket.DefaultDialer.Dial(p.url("/"), nil)
		if err != nil {
			t.Error(err)
		}
		dialed <- c
	}()
	<-arrived // the proxy waits for b0's 101
	reloadProxy(t, p, cfg(b1))
	close(release) // the session registers after the reload
	c := <-dialed
	if c == nil {
		return
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ReadMessage()
	if code, _ := closeCode(err); code != 1001 {
		t.Fatalf("the late session ended with %v, want a drain close 1001", err)
	}
}
