package proxy

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsproxy/wsproxy/config"
)

func TestDrainOffsetsSpreadEvenly(t *testing.T) {
	window := 10 * time.Second
	for _, n := range []int{10, 60, 100, 1000} {
		for run := 0; run < 200; run++ {
			d := drainPlan{window: window}
			offs := d.offsets(n)
			var tenths [10]int
			for i, o := range offs {
				if o < 0 || o > window {
					t.Fatalf("n=%d: offset %v outside the window", n, o)
				}
				if i > 0 && o < offs[i-1] {
					t.Fatalf("n=%d: offsets out of order", n)
				}
				tenths[min(int(o*10/window), 9)]++
			}
			for i, c := range tenths {
				if float64(c) > 0.2*float64(n) {
					t.Fatalf("n=%d run %d: tenth %d holds %d of %d closes", n, run, i, c, n)
				}
			}
		}
	}
}

func TestDrainOffsetsRespectRate(t *testing.T) {
	d := drainPlan{window: 10 * time.Second, rate: 5}
	offs := d.offsets(100)
	for i := 1; i < len(offs); i++ {
		// Slots of 200 ms: two closes are at least one slot apart on
		// average; at the deadline the rest go together.
		if offs[i] < d.window && offs[i]-offs[i-1] < 0 {
			t.Fatal("out of order")
		}
	}
	before := 0
	for _, o := range offs {
		if o < d.window {
			before++
		}
	}
	// 10 s at 5 per second: about 50 closes before the deadline.
	if before < 45 || before > 51 {
		t.Fatalf("%d closes before the deadline, want about 50", before)
	}
}

const drainConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {drain_timeout: %s, ping_interval: 0s}
routes:
  - {path: /, pool: p, hash_key: "header:X-Key"}
pools:
  p:
    backends:
%s`

func TestReloadDrainsOnlyRemovedBackend(t *testing.T) {
	checkGoroutines(t)
	b0, b1 := startBackend(t, "b0"), startBackend(t, "b1")
	both := fmt.Sprintf("      - {address: %q}\n      - {address: %q}\n", b0.addr(), b1.addr())
	p := startProxy(t, fmt.Sprintf(drainConfig, "600ms", both))
	type sess struct {
		c       *websocket.Conn
		backend string
	}
	var ss []sess
	for i := 0; i < 30; i++ {
		n0 := conns(b0)
		c := dial(t, p.url("/"), http.Header{"X-Key": {fmt.Sprint("k", i)}})
		name := "b1"
		if conns(b0) > n0 {
			name = "b0"
		}
		ss = append(ss, sess{c, name})
	}
	// Scale down: b1 leaves the pool.
	only0 := fmt.Sprintf("      - {address: %q}\n", b0.addr())
	cfg, err := config.Parse("reload.yaml", []byte(fmt.Sprintf(drainConfig, "600ms", only0)))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.srv.Update(cfg); err != nil {
		t.Fatal(err)
	}
	drained, kept := 0, 0
	for _, s := range ss {
		if s.backend == "b1" {
			_, _, err := s.c.ReadMessage()
			code, _ := closeCode(err)
			if code != 1001 {
				t.Fatalf("session on the removed backend got %v, want close 1001", err)
			}
			drained++
			continue
		}
		s.c.WriteMessage(websocket.TextMessage, []byte("still here"))
		if _, got, err := s.c.ReadMessage(); err != nil || string(got) != "still here" {
			t.Fatalf("session on the kept backend: %q %v", got, err)
		}
		kept++
	}
	if drained == 0 || kept == 0 {
		t.Fatalf("keys landed %d on b0, %d on b1: test needs both", kept, drained)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("drain of a 600ms window took %v", el)
	}
	// New sessions only reach b0.
	for i := 0; i < 10; i++ {
		c := dial(t, p.url("/"), http.Header{"X-Key": {fmt.Sprint("new", i)}})
		if got := exchangeBackend(t, c); got != "x" {
			t.Fatalf("echo %q", got)
		}
		c.Close()
	}
	if n := conns(b1); n != drained {
		t.Fatalf("b1 got %d upgrades after the reload", n-drained)
	}
	for _, s := range ss {
		s.c.Close()
	}
	p.waitSessions(t, 0)
}

func exchangeBackend(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	c.WriteMessage(websocket.TextMessage, []byte("x"))
	_, got, err := c.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	return string(got)
}

func TestReloadLeavesUnchangedSessionsAlone(t *testing.T) {
	b0 := startBackend(t, "b0")
	list := fmt.Sprintf("      - {address: %q}\n", b0.addr())
	p := startProxy(t, fmt.Sprintf(drainConfig, "300ms", list))
	c := dial(t, p.url("/"), nil)
	for i := 0; i < 5; i++ {
		cfg, err := config.Parse("same.yaml", []byte(fmt.Sprintf(drainConfig, "300ms", list)))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.srv.Update(cfg); err != nil {
			t.Fatal(err)
		}
	}
	c.WriteMessage(websocket.TextMessage, []byte("x"))
	if _, got, err := c.ReadMessage(); err != nil || string(got) != "x" {
		t.Fatalf("%q %v", got, err)
	}
	if p.srv.Stats().SessionsDraining.Load() != 0 {
		t.Fatal("an unchanged reload drained sessions")
	}
}

// TestAdminDrainBackend drains one backend without a config change: its
// sessions get a Close 1001, the other backend's are left alone, new
// sessions avoid it until it is undrained.
func TestAdminDrainBackend(t *testing.T) {
	b0, b1 := startBackend(t, "b0"), startBackend(t, "b1")
	both := fmt.Sprintf("      - {address: %q}\n      - {address: %q}\n", b0.addr(), b1.addr())
	p := startProxy(t, fmt.Sprintf(drainConfig, "400ms", both))
	var on0, on1 []*websocket.Conn
	for i := 0; len(on0) < 3 || len(on1) < 3; i++ {
		if i == 200 {
			t.Fatal("keys never spread over both backends")
		}
		n1 := conns(b1)
		c := dial(t, p.url("/"), http.Header{"X-Key": {fmt.Sprint("k", i)}})
		if conns(b1) > n1 {
			on1 = append(on1, c)
		} else {
			on0 = append(on0, c)
		}
	}
	// A client has its 101 a moment before its session registers.
	p.waitSessions(t, len(on0)+len(on1))
	if _, err := p.srv.DrainBackend("127.0.0.1:1"); err != ErrUnknownBackend {
		t.Fatalf("unknown backend: %v", err)
	}
	n, err := p.srv.DrainBackend(b1.addr())
	if err != nil || n != len(on1) {
		t.Fatalf("DrainBackend = %d, %v; want %d sessions", n, err, len(on1))
	}
	for _, c := range on1 {
		if code, _ := closeCode(readErr(c)); code != 1001 {
			t.Fatalf("drained session: code %d, want 1001", code)
		}
	}
	for _, c := range on0 {
		if got := exchangeBackend(t, c); got != "x" {
			t.Fatalf("session on b0: %q", got)
		}
	}
	st := p.srv.Status()
	for _, b := range st.Pools[0].Backends {
		if b.Draining != (b.Address == b1.addr()) {
			t.Fatalf("status: %+v", b)
		}
	}
	before := conns(b1)
	for i := 0; i < 20; i++ {
		dial(t, p.url("/"), http.Header{"X-Key": {fmt.Sprint("new", i)}}).Close()
	}
	if conns(b1) != before {
		t.Fatal("a drained backend got new sessions")
	}
	if err := p.srv.UndrainBackend(b1.addr()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		dial(t, p.url("/"), http.Header{"X-Key": {fmt.Sprint("new", i)}}).Close()
	}
	if conns(b1) == before {
		t.Fatal("an undrained backend got no new sessions")
	}
}

// readErr reads until an error, and returns it.
func readErr(c *websocket.Conn) error {
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			return err
		}
	}
}

// TestDrainCloseCodeAndRate drains with drain_close_code 1012 and a
// drain_rate below what the window would allow: the rate paces the closes
// and the sessions left when the window ends are closed then.
func TestDrainCloseCodeAndRate(t *testing.T) {
	const cfgText = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {drain_timeout: 2s, drain_close_code: 1012, ping_interval: 0s}
routes:
  - {path: /, pool: p}
pools:
  p:
    drain_rate: 2
    backends:
%s`
	b0, b1 := startBackend(t, "b0"), startBackend(t, "b1")
	p := startProxy(t, fmt.Sprintf(cfgText, fmt.Sprintf("      - {address: %q}\n", b0.addr())))
	var cs []*websocket.Conn
	for i := 0; i < 10; i++ {
		cs = append(cs, dial(t, p.url("/"), nil))
	}
	cfg, err := config.Parse("t.yaml", []byte(fmt.Sprintf(cfgText, fmt.Sprintf("      - {address: %q}\n", b1.addr()))))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.srv.Update(cfg); err != nil {
		t.Fatal(err)
	}
	times := make(chan time.Duration, len(cs))
	for _, c := range cs {
		go func() {
			code, _ := closeCode(readErr(c))
			if code != 1012 {
				t.Errorf("drained client got %d, want 1012", code)
			}
			times <- time.Since(start)
		}()
	}
	early := 0
	for range cs {
		if at := <-times; at < 1800*time.Millisecond {
			early++
		} else if at > 3*time.Second {
			t.Errorf("a close came %v after the reload, past the 2 s window", at)
		}
	}
	// At 2 closes per second, 3 or 4 fit before the window ends (slots of
	// 500 ms, jittered); the rest are closed at its end. Without the rate
	// all 10 would be spread across it.
	if early < 2 || early > 4 {
		t.Fatalf("%d closes before the window ended, want 3 or 4", early)
	}
}
