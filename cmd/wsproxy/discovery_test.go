package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/discovery"
	"github.com/wsproxy/wsproxy/health"
	"github.com/wsproxy/wsproxy/proxy"
)

// testDNS is an in-process DNS server on loopback that answers the SRV
// records of one name, with the targets' A records in the additional
// section, or stops answering.
type testDNS struct {
	addr string
	mu   sync.Mutex
	srv  []*dns.SRV
	drop bool
}

func newTestDNS(t *testing.T) *testDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &testDNS{addr: pc.LocalAddr().String()}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: d, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe() //nolint:errcheck
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return d
}

// setBackends makes the SRV answer list these backends (127.0.0.1:port),
// with weights.
func (d *testDNS) setBackends(name string, backends map[string]uint16) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.srv = nil
	for addr, w := range backends {
		_, port, _ := net.SplitHostPort(addr)
		var p uint16
		fmt.Sscan(port, &p)
		d.srv = append(d.srv, &dns.SRV{
			Hdr:    dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 1},
			Weight: w, Port: p, Target: fmt.Sprintf("b%d.test.", p),
		})
	}
}

func (d *testDNS) setDrop(drop bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.drop = drop
}

func (d *testDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.drop {
		return
	}
	m := new(dns.Msg)
	m.SetReply(r)
	if q := r.Question[0]; q.Qtype == dns.TypeSRV {
		for _, s := range d.srv {
			m.Answer = append(m.Answer, s)
			m.Extra = append(m.Extra, &dns.A{Hdr: dns.RR_Header{Name: s.Target, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(127, 0, 0, 1)})
		}
	}
	_ = w.WriteMsg(m)
}

// dnsSession is a client that sends numbered messages every 50ms until
// told to stop, and checks that each comes back once, in order, from the
// backend that answered first.
type dnsSession struct {
	user      string
	backend   string
	sent      atomic.Int64
	answered  atomic.Int64
	stop      chan struct{}
	done      chan struct{}
	closeCode int
	closedAt  time.Time
	err       error
}

func openDNSSession(t *testing.T, listen, user string) *dnsSession {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/?user="+user, nil)
	if err != nil {
		t.Fatalf("session %s: %v", user, err)
	}
	s := &dnsSession{user: user, stop: make(chan struct{}), done: make(chan struct{})}
	go s.writeLoop(c)
	go s.readLoop(c)
	return s
}

func (s *dnsSession) writeLoop(c *websocket.Conn) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-s.stop:
			return
		case <-s.done:
			return
		default:
		}
		s.sent.Add(1)
		if c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf("%s#%d", s.user, seq))) != nil {
			return
		}
		select {
		case <-tick.C:
		case <-s.stop:
			return
		case <-s.done:
			return
		}
	}
}

func (s *dnsSession) readLoop(c *websocket.Conn) {
	defer close(s.done)
	defer c.Close()
	for seq := 0; ; seq++ {
		_, msg, err := c.ReadMessage()
		if err != nil {
			s.closedAt = time.Now()
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				s.closeCode = ce.Code
			} else {
				s.err = err
			}
			return
		}
		name, echoed, _ := strings.Cut(string(msg), ":")
		if want := fmt.Sprintf("%s#%d", s.user, seq); echoed != want {
			s.err = fmt.Errorf("want %q back, got %q", want, msg)
			return
		}
		if seq == 0 {
			s.backend = name
		} else if name != s.backend {
			s.err = fmt.Errorf("moved from %s to %s", s.backend, name)
			return
		}
		s.answered.Add(1)
	}
}

const discoveryConfig = `
listeners: [{address: %q}]
admin: {address: %q}
log: {level: %s, access_log: false}
defaults: {drain_timeout: 2s, drain_close_code: 1012}
routes:
  - {path: /, pool: p, hash_key: "query:user"}
  - {path: /none, pool: z}
pools:
  p:
    discovery: {dns: _ws._tcp.chat.test, resolver: %[4]q, interval: 500ms, hold: 1s}
    health: {type: tcp, interval: 200ms, timeout: 200ms, unhealthy_threshold: 1}
  z:
    discovery: {dns: nothing.test, type: a, port: 80, resolver: %[4]q}
`

// TestDiscoveredBackends runs the binary with a pool found by SRV records
// from a DNS server in the test: the backends and weights of the answer
// are the pool's and their health is checked; a backend added gets new
// sessions only and takes keys from no other backend; a reload that
// keeps the discovery settings keeps the set; a server that stops
// answering changes nothing; a backend that leaves the answers is drained
// after hold (1012, paced over drain_timeout) while the others' sessions
// go on, and no message is lost.
func TestDiscoveredBackends(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	names := map[string]string{}
	for _, n := range []string{"a", "b", "c"} {
		names[echoBackend(t, n)] = n
	}
	addrOf := map[string]string{}
	for a, n := range names {
		addrOf[n] = a
	}
	dead := freePort(t) // nothing listens there
	d := newTestDNS(t)
	const srvName = "_ws._tcp.chat.test"
	d.setBackends(srvName, map[string]uint16{addrOf["a"]: 10, addrOf["b"]: 30})
	listen, admin := freePort(t), freePort(t)
	cfgPath := writeConfig(t, fmt.Sprintf(discoveryConfig, listen, admin, "info", d.addr))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)

	pool := func() map[string]int { // backend name or address -> weight; unhealthy ones as -1
		st := statusOf(t, admin)
		out := map[string]int{}
		for _, ps := range st.Pools {
			for _, b := range ps.Backends {
				key := names[b.Address]
				if key == "" {
					key = b.Address
				}
				out[key] = b.Weight
				if !b.Healthy {
					out[key] = -1
				}
			}
		}
		return out
	}
	// Ready with the first answer applied, weights as in the records.
	if got := pool(); len(got) != 2 || got["a"] != 10 || got["b"] != 30 {
		t.Fatalf("pool at start: %v", got)
	}
	// A pool whose name has no records has no backend: 503.
	if code, body := get(t, "http://"+listen+"/none"); code != 503 {
		t.Errorf("GET /none, a pool DNS found no backend for: %d %s", code, body)
	}
	st := statusOf(t, admin)
	if len(st.Discovery) != 2 || st.Discovery[1].Pool != "z" || st.Discovery[1].Backends != 0 || st.Discovery[1].LastSuccess.IsZero() {
		t.Fatalf("/status discovery of z: %+v", st.Discovery)
	}
	if len(st.Discovery) != 2 || st.Discovery[0].Name != srvName || st.Discovery[0].Backends != 2 || st.Discovery[0].LastSuccess.IsZero() {
		t.Fatalf("/status discovery: %+v", st.Discovery)
	}
	_, page := get(t, "http://"+admin+"/")
	if !strings.Contains(page, "Backends from DNS: SRV <code>"+srvName+"</code> via <code>"+d.addr+"</code>") {
		t.Errorf("the status page does not say where the backends come from")
	}

	// Plain HTTP names the backend of a key: where 200 keys go.
	keyOwner := func() map[string]string {
		out := map[string]string{}
		for i := 0; i < 200; i++ {
			user := fmt.Sprintf("k%d", i)
			code, body := get(t, "http://"+listen+"/?user="+user)
			if code != 200 {
				t.Fatalf("GET as %s: %d %s", user, code, body)
			}
			out[user] = body
		}
		return out
	}
	before := keyOwner()

	var sessions []*dnsSession
	for i := 0; i < 40; i++ {
		sessions = append(sessions, openDNSSession(t, listen, fmt.Sprintf("u%d", i)))
	}
	waitFor(t, "every session answered", func() bool {
		for _, s := range sessions {
			if s.answered.Load() < 1 {
				return false
			}
		}
		return true
	})
	perBackend := func(ss []*dnsSession) map[string]int {
		out := map[string]int{}
		for _, s := range ss {
			out[s.backend]++
		}
		return out
	}
	if n := perBackend(sessions); n["a"] == 0 || n["b"] == 0 {
		t.Fatalf("sessions per backend: %v", n)
	}

	// c joins, and a backend nobody serves: health checks follow them.
	d.setBackends(srvName, map[string]uint16{addrOf["a"]: 10, addrOf["b"]: 30, addrOf["c"]: 20, dead: 5})
	waitFor(t, "c and the dead backend in the pool, the dead one unhealthy", func() bool {
		got := pool()
		return got["c"] == 20 && got[dead] == -1 && got["a"] == 10
	})
	after := keyOwner()
	moved := 0
	for user, was := range before {
		if now := after[user]; now != was {
			if now != "c" {
				t.Errorf("key %s moved from %s to %s, not to the added backend", user, was, now)
			}
			moved++
		}
	}
	if moved == 0 {
		t.Error("no key moved to the added backend")
	}
	var fresh []*dnsSession
	for i := 0; i < 30; i++ {
		fresh = append(fresh, openDNSSession(t, listen, fmt.Sprintf("n%d", i)))
	}
	waitFor(t, "every new session answered", func() bool {
		for _, s := range fresh {
			if s.answered.Load() < 1 {
				return false
			}
		}
		return true
	})
	if n := perBackend(fresh); n["c"] == 0 {
		t.Errorf("no new session went to the added backend: %v", n)
	}
	sessions = append(sessions, fresh...)

	// A reload that keeps the discovery settings keeps the set, and
	// drains nobody.
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(discoveryConfig, listen, admin, "debug", d.addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	lookups := statusOf(t, admin).Discovery[0].Lookups
	p.cmd.Process.Signal(syscall.SIGHUP)
	st = waitReloads(t, p, admin, 1)
	if got := pool(); len(got) != 4 || got["c"] != 20 || st.Draining != 0 {
		t.Fatalf("pool after the reload: %v, %d draining", got, st.Draining)
	}
	if st.Discovery[0].Lookups < lookups {
		t.Errorf("lookups went from %d to %d: the reload restarted discovery", lookups, st.Discovery[0].Lookups)
	}

	// The DNS server stops answering, and b leaves the records meanwhile:
	// nothing changes, however long (well past hold).
	d.setDrop(true)
	d.setBackends(srvName, map[string]uint16{addrOf["a"]: 10, addrOf["c"]: 20})
	// One lookup times out after 2s, twice the hold.
	waitFor(t, "a failed lookup", func() bool { return statusOf(t, admin).Discovery[0].Failures >= 1 })
	if got, ds := pool(), statusOf(t, admin).Discovery[0]; len(got) != 4 || got["b"] != 30 || time.Since(ds.LastSuccess) < 2*time.Second || ds.LastError == "" {
		t.Fatalf("pool while DNS fails: %v, discovery %+v", got, ds)
	}
	if v := scrapeMetrics(t, admin).value("wsproxy_discovery_lookups_total", "pool", "p", "result", "failed"); v < 1 {
		t.Errorf("wsproxy_discovery_lookups_total{result=failed} = %v", v)
	}
	for _, s := range sessions {
		select {
		case <-s.done:
			t.Fatalf("session %s on %s ended while DNS failed: %d %v", s.user, s.backend, s.closeCode, s.err)
		default:
		}
	}

	// b's clients stop sending, and every message so far is answered,
	// before DNS answers again: b is drained after hold, paced, with
	// 1012; everyone else goes on sending.
	var onB []*dnsSession
	for _, s := range sessions {
		if s.backend == "b" {
			close(s.stop)
			onB = append(onB, s)
		}
	}
	waitFor(t, "b's sessions answered", func() bool {
		for _, s := range onB {
			if s.answered.Load() != s.sent.Load() {
				return false
			}
		}
		return true
	})
	answeredAgain := time.Now()
	d.setDrop(false)
	drained := drainStart(t, p, len(onB))
	if d := drained.Sub(answeredAgain); d < time.Second-10*time.Millisecond {
		t.Errorf("the drain began %v after DNS answered without b, before hold (1s)", d)
	}
	for _, s := range onB {
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("session %s on b still open", s.user)
		}
		if s.err != nil || s.closeCode != 1012 {
			t.Errorf("session %s on b: code %d, err %v", s.user, s.closeCode, s.err)
		}
		if s.answered.Load() != s.sent.Load() {
			t.Errorf("session %s on b: %d sent, %d answered", s.user, s.sent.Load(), s.answered.Load())
		}
	}
	// Paced: each tenth of the 2s window closes about a tenth of them.
	var tenths [10]int
	for _, s := range onB {
		tenths[min(max(int(s.closedAt.Sub(drained)*10/(2*time.Second)), 0), 9)]++
	}
	for i, n := range tenths {
		if n > max(len(onB)/5, 3) {
			t.Errorf("%d of b's %d sessions closed in tenth %d of the drain window: %v", n, len(onB), i, tenths)
		}
	}
	t.Logf("%d sessions drained from b; closes per tenth of the window: %v", len(onB), tenths)
	if got := pool(); len(got) != 2 || got["a"] != 10 || got["c"] != 20 {
		t.Errorf("pool after b left: %v", got)
	}
	// The others: open, every message answered once they stop.
	var others []*dnsSession
	for _, s := range sessions {
		if s.backend != "b" {
			close(s.stop)
			others = append(others, s)
		}
	}
	waitFor(t, "the other sessions answered", func() bool {
		for _, s := range others {
			if s.answered.Load() != s.sent.Load() {
				return false
			}
		}
		return true
	})
	for _, s := range others {
		select {
		case <-s.done:
			t.Errorf("session %s on %s ended: %d %v", s.user, s.backend, s.closeCode, s.err)
		default:
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("exit: %v\n%s", p.err, p.stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still running after SIGTERM")
	}
}

// TestDiscoveredSetsAcrossReloads drives the instance's publisher with a
// real proxy and health manager: a reload that changes a pool's discovery
// settings keeps its discovered backends until the new settings publish;
// a set published late under the old settings is ignored; a reload that
// drops discovery drops the set.
func TestDiscoveredSetsAcrossReloads(t *testing.T) {
	parse := func(name string) *config.Config {
		t.Helper()
		c, err := config.Parse("t.yaml", []byte(fmt.Sprintf(`
listeners: [{address: "127.0.0.1:0"}]
admin: {address: ""}
routes: [{path: /, pool: p}]
pools:
  p:
    backends: [{address: "127.0.0.1:1"}]
    discovery: {dns: %s, type: a, port: 80, resolver: "127.0.0.1:1"}
`, name)))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := &instance{log: zap.NewNop()}
	in.backends = balancer.NewRegistry()
	in.health = health.NewManager(ctx, health.Config{Setter: in.backends})
	defer in.health.Close()
	oldCfg := parse("old.test")
	srv, err := proxy.New(proxy.Config{Config: oldCfg, Backends: in.backends, Health: in.health})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(ctx) //nolint:errcheck
	in.srv = srv
	d := &discovered{in: in, cancel: cancel, file: oldCfg, sets: map[string][]discovery.Backend{}}
	d.mgr = discovery.NewManager(ctx, discovery.Config{Publisher: d})
	defer d.stop()
	backends := func() string {
		var out []string
		for _, ps := range srv.Status().Pools {
			for _, b := range ps.Backends {
				out = append(out, b.Address)
			}
		}
		return strings.Join(out, " ")
	}
	oldSpec := discovery.Specs(oldCfg)["p"]
	d.Publish(discovery.Set{Pool: "p", Spec: oldSpec, Backends: []discovery.Backend{{Address: "10.0.0.1:80", Weight: 1}}})
	if got := backends(); got != "10.0.0.1:80 127.0.0.1:1" {
		t.Fatalf("after the first set: %s", got)
	}
	newCfg := parse("new.test")
	if err := d.apply(newCfg); err != nil {
		t.Fatal(err)
	}
	if got := backends(); got != "10.0.0.1:80 127.0.0.1:1" {
		t.Fatalf("after a reload that changed the name: %s, want the set kept", got)
	}
	d.Publish(discovery.Set{Pool: "p", Spec: oldSpec, Backends: []discovery.Backend{{Address: "10.0.0.9:80", Weight: 1}}})
	if got := backends(); got != "10.0.0.1:80 127.0.0.1:1" {
		t.Fatalf("after a late set of the old name: %s, want it ignored", got)
	}
	d.Publish(discovery.Set{Pool: "p", Spec: discovery.Specs(newCfg)["p"], Backends: []discovery.Backend{{Address: "10.0.0.2:80", Weight: 3}}})
	if got := backends(); got != "10.0.0.2:80 127.0.0.1:1" {
		t.Fatalf("after the new name's set: %s", got)
	}
	plain := parse("new.test")
	plain.Pools["p"].Discovery = nil
	if err := d.apply(plain); err != nil {
		t.Fatal(err)
	}
	if got := backends(); got != "127.0.0.1:1" {
		t.Fatalf("after a reload without discovery: %s", got)
	}
}
