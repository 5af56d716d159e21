package proxy

import (
	"bufio"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// upgrade dials url as the client address from (forwarded by the test,
// which the proxy trusts) and returns the connection, or the refusal's
// status, Retry-After and body.
func upgrade(t *testing.T, url, from string) (c *websocket.Conn, status, retryAfter int, body string) {
	t.Helper()
	h := http.Header{}
	if from != "" {
		h.Set("X-Forwarded-For", from)
	}
	c, resp, err := websocket.DefaultDialer.Dial(url, h)
	if err == nil {
		t.Cleanup(func() { c.Close() })
		return c, resp.StatusCode, 0, ""
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if v := resp.Header.Get("Retry-After"); v != "" {
		retryAfter, err = strconv.Atoi(v)
		if err != nil {
			t.Fatalf("Retry-After %q is not a number of seconds", v)
		}
	}
	return nil, resp.StatusCode, retryAfter, string(b)
}

const capsConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
trusted_proxies: [127.0.0.1]
admission:
  max_sessions: 4
  max_sessions_per_ip: 3
  retry_after: 2s
defaults: {ping_interval: 0s}
routes:
  - {path: /capped, pool: p, max_sessions: 2}
  - {path: /refused, pool: refusing}
  - {path: /, pool: p}
pools:
  p: {backends: [{address: "{{B0}}"}]}
  refusing: {backends: [{address: "{{B1}}"}]}
`

// TestSessionCaps fills the route, per-address and total caps in turn:
// each refuses with its status, reason and a jittered Retry-After, and
// frees its place when a session ends. A handshake the backend refuses
// gives its place back.
func TestSessionCaps(t *testing.T) {
	b := startBackend(t, "b0")
	refusing := startBackend(t, "b1", func(b *testBackend) { b.reject = true })
	p := startProxy(t, capsConfig, b.addr(), refusing.addr())
	st := p.srv.Stats()

	expectRefused := func(path, from string, status int, reason string) {
		t.Helper()
		c, got, ra, body := upgrade(t, p.url(path), from)
		if c != nil || got != status || !strings.Contains(body, reason) {
			t.Fatalf("%s from %s: status %d %q, want %d %q", path, from, got, body, status, reason)
		}
		if ra < 2 || ra > 4 {
			t.Fatalf("%s from %s: Retry-After %d, want 2 to 4 (retry_after 2s, jittered up to twice)", path, from, ra)
		}
	}
	expectOK := func(path, from string) *websocket.Conn {
		t.Helper()
		c, status, _, body := upgrade(t, p.url(path), from)
		if c == nil {
			t.Fatalf("%s from %s: refused %d %q", path, from, status, body)
		}
		if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, m, err := c.ReadMessage(); err != nil || string(m) != "hi" {
			t.Fatalf("echo: %q %v", m, err)
		}
		return c
	}

	// Refused handshakes at the backend hold no place.
	for i := 0; i < 6; i++ {
		if c, status, _, _ := upgrade(t, p.url("/refused"), "10.0.0.1"); c != nil || status != http.StatusOK {
			t.Fatalf("refusing backend: status %d, want its 200 passed on", status)
		}
	}
	a1 := expectOK("/capped", "10.0.0.1")
	expectOK("/capped", "10.0.0.2")
	expectRefused("/capped", "10.0.0.3", http.StatusServiceUnavailable, "route at its session limit")
	expectOK("/", "10.0.0.1")
	a3 := expectOK("/", "10.0.0.1")
	expectRefused("/", "10.0.0.1", http.StatusTooManyRequests, "too many sessions from this address")
	expectRefused("/", "10.0.0.3", http.StatusServiceUnavailable, "proxy at its session limit")
	if st.Limited[limitRoute].Load() != 1 || st.Limited[limitIPSessions].Load() != 1 || st.Limited[limitSessions].Load() != 1 || st.HandshakeLimited() != 3 {
		t.Fatalf("limited counts route %d, ip %d, total %d, all %d; want 1, 1, 1, 3",
			st.Limited[limitRoute].Load(), st.Limited[limitIPSessions].Load(), st.Limited[limitSessions].Load(), st.HandshakeLimited())
	}

	m := scrapeProxy(t, p)
	for _, w := range []struct {
		name  string
		label []string
		want  float64
	}{
		{"wsproxy_handshakes_limited_total", []string{"limit", "route_max_sessions"}, 1},
		{"wsproxy_handshakes_limited_total", []string{"limit", "max_sessions_per_ip"}, 1},
		{"wsproxy_handshakes_limited_total", []string{"limit", "max_sessions"}, 1},
		{"wsproxy_handshakes_limited_total", []string{"limit", "handshakes_per_second_per_ip"}, 0},
		{"wsproxy_handshakes_total", []string{"outcome", "limited"}, 3},
		{"wsproxy_session_limit", nil, 4},
		{"wsproxy_sessions_admitted", nil, 4},
		{"wsproxy_admission_tracked_addresses", nil, 2}, // 10.0.0.1 and .2
	} {
		if got := m.value(w.name, w.label...); got != w.want {
			t.Errorf("%s%v = %v, want %v", w.name, w.label, got, w.want)
		}
	}

	// One of 10.0.0.1's sessions on / ends: the total and that address
	// have room again, the capped route does not.
	a3.Close()
	p.waitSessions(t, 3)
	waitFor(t, "the ticket given back", func() bool { return p.srv.admission.total.Load() == 3 })
	expectRefused("/capped", "10.0.0.3", http.StatusServiceUnavailable, "route at its session limit")
	expectOK("/", "10.0.0.3")
	expectRefused("/", "10.0.0.4", http.StatusServiceUnavailable, "proxy at its session limit")

	// A session of the capped route ends: the route has room. A session
	// leaves the registry before it gives its ticket back, so wait for
	// the ticket.
	a1.Close()
	p.waitSessions(t, 3)
	var capped *route
	for _, r := range p.srv.table.Load().routes {
		if r.path == "/capped" {
			capped = r
		}
	}
	waitFor(t, "the capped route's ticket given back", func() bool { return capped.metrics.admitted.Load() == 1 })
	expectOK("/capped", "10.0.0.4")

	// Everything ends: no ticket and no address is left behind.
	p.stop()
	if n := p.srv.admission.total.Load(); n != 0 {
		t.Fatalf("%d tickets out after every session ended", n)
	}
	if n := p.srv.admission.tracked(); n != 0 {
		t.Fatalf("%d addresses tracked after every session ended", n)
	}
	for _, r := range p.srv.table.Load().routes {
		if n := r.metrics.admitted.Load(); n != 0 {
			t.Fatalf("route %s holds %d tickets after every session ended", r.path, n)
		}
	}
}

const rateCapsConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
trusted_proxies: [127.0.0.1]
admission:
  handshakes_per_second_per_ip: 4
  handshake_burst_per_ip: 3
routes:
  - {path: /, pool: p}
pools:
  p: {backends: [{address: "{{B0}}"}]}
`

// TestHandshakeRate checks the per-address token bucket: a burst passes,
// the next upgrade gets 429 with the wait for a token, other addresses
// are not affected, one IPv6 /64 is one address, and the bucket refills.
func TestHandshakeRate(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, rateCapsConfig, b.addr())
	burst := func(from string, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			c, status, _, body := upgrade(t, p.url("/"), from)
			if c == nil {
				t.Fatalf("upgrade %d from %s refused: %d %q", i, from, status, body)
			}
			c.Close()
		}
	}
	limited := func(from string) {
		t.Helper()
		c, status, ra, body := upgrade(t, p.url("/"), from)
		if c != nil || status != http.StatusTooManyRequests || ra != 1 || !strings.Contains(body, "too many handshakes") {
			t.Fatalf("from %s: status %d, Retry-After %d, %q; want 429, 1, too many handshakes", from, status, ra, body)
		}
	}
	start := time.Now()
	burst("10.1.0.1", 3)
	limited("10.1.0.1")
	burst("10.1.0.2", 3)
	burst("2001:db8::1", 2)
	burst("2001:db8::ffff", 1) // same /64
	limited("2001:db8::2")
	burst("2001:db8:0:1::1", 3) // another /64
	if time.Since(start) > 200*time.Millisecond {
		t.Skip("the machine is too slow for the bucket not to refill during the burst")
	}
	// At 4 a second a token comes back within 250 ms.
	time.Sleep(300 * time.Millisecond)
	burst("10.1.0.1", 1)
	if n := p.srv.Stats().Limited[limitIPRate].Load(); n != 2 {
		t.Fatalf("rate-limited count %d, want 2", n)
	}
}

// TestAddressTableBounded feeds the per-address table a stream of new
// addresses: entries whose bucket has refilled are swept, so the table
// follows the addresses seen within the refill time, not all of them.
func TestAddressTableBounded(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, strings.Replace(rateCapsConfig, "handshakes_per_second_per_ip: 4", "handshakes_per_second_per_ip: 1000", 1), b.addr())
	s := p.srv
	l := &s.table.Load().admission
	rt := s.table.Load().routes[0]
	for i := 0; i < 200_000; i++ {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		tk, r := s.admit(l, rt, ip)
		if r != nil {
			t.Fatalf("address %v refused on its first upgrade: %s", ip, r.reason)
		}
		s.admission.release(&tk)
		if i%1000 == 999 {
			time.Sleep(4 * time.Millisecond) // buckets of burst 3 at 1000/s refill in 3 ms
		}
	}
	// A shard is swept when it doubles: at most about twice the
	// addresses of the last few milliseconds, plus the sweep floor.
	if n := s.admission.tracked(); n > ipShards*minSweep*2 {
		t.Fatalf("%d addresses tracked after 200,000 with refilled buckets, want at most %d", n, ipShards*minSweep*2)
	}
	if n := s.admission.total.Load(); n != 0 {
		t.Fatalf("%d tickets out", n)
	}
}

const headConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
admission: {max_header_bytes: 2KiB}
defaults: {handshake_timeout: 1s}
routes:
  - {path: /, pool: p}
pools:
  p: {backends: [{address: "{{B0}}"}]}
`

// TestRequestHeadLimit checks max_header_bytes: an upgrade whose head is
// too long gets 431, a normal one passes on the same proxy.
func TestRequestHeadLimit(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, headConfig, b.addr())
	h := http.Header{}
	h.Set("Cookie", "session="+strings.Repeat("x", 3000))
	_, resp, err := websocket.DefaultDialer.Dial(p.url("/"), h)
	if err == nil || resp == nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("3 KB cookie: status %d (%v), want 431", status, err)
	}
	if n := p.srv.Stats().RequestHeadTooLarge.Load(); n != 1 {
		t.Errorf("RequestHeadTooLarge = %d, want 1", n)
	}
	h.Set("Cookie", "session="+strings.Repeat("x", 1000))
	c := dial(t, p.url("/"), h)
	if err := c.WriteMessage(websocket.TextMessage, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if _, m, err := c.ReadMessage(); err != nil || string(m) != "ok" {
		t.Fatalf("echo: %q %v", m, err)
	}
}

// TestSlowHandshake checks handshake_timeout against a client that sends
// its request a byte at a time, and one that sends nothing: both are cut
// off, while a normal client is served meanwhile.
func TestSlowHandshake(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, headConfig, b.addr())
	req := rawHandshake(p.ln.Addr().String(), "/")
	type result struct {
		name   string
		after  time.Duration
		answer string
	}
	results := make(chan result, 2)
	for _, slow := range []bool{true, false} {
		conn, err := net.Dial("tcp", p.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			start := time.Now()
			name := "silent"
			if slow {
				name = "byte at a time"
				go func() {
					for i := 0; i < len(req); i++ {
						if _, err := conn.Write([]byte{req[i]}); err != nil {
							return
						}
						time.Sleep(50 * time.Millisecond)
					}
				}()
			}
			line, _ := bufio.NewReader(conn).ReadString('\n')
			results <- result{name, time.Since(start), line}
		}()
	}
	// A normal client is served while the slow ones hang on.
	c := dial(t, p.url("/"), nil)
	if err := c.WriteMessage(websocket.TextMessage, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if _, m, err := c.ReadMessage(); err != nil || string(m) != "ok" {
		t.Fatalf("echo: %q %v", m, err)
	}
	for i := 0; i < 2; i++ {
		r := <-results
		// Cut off after the 1 s handshake_timeout, long before the slow
		// one would have finished (about 5 s).
		if r.after < 900*time.Millisecond || r.after > 3*time.Second {
			t.Errorf("%s client: connection ended after %v, want about 1s", r.name, r.after)
		}
		if !strings.HasPrefix(r.answer, "HTTP/1.1 408") {
			t.Errorf("%s client: answered %q, want 408", r.name, r.answer)
		}
		t.Logf("%s client: cut off after %v, answer %q", r.name, r.after.Round(time.Millisecond), strings.TrimSpace(r.answer))
	}
	if n := p.srv.Stats().RequestTimeouts.Load(); n != 2 {
		t.Errorf("RequestTimeouts = %d, want 2", n)
	}
}

// BenchmarkAdmit measures taking and giving back a ticket with every
// admission limit on, from 4,096 addresses, on all cores.
func BenchmarkAdmit(b *testing.B) {
	be := startBackend(b, "b0")
	p := startProxy(b, `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
admission: {max_sessions_per_ip: 1000000, handshakes_per_second_per_ip: 1e9, max_sessions: 100000000}
routes: [{path: /, pool: p, max_sessions: 100000000}]
pools: {p: {backends: [{address: "{{B0}}"}]}}
`, be.addr())
	s := p.srv
	t := s.table.Load()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := uint32(rand.Uint32())
		for pb.Next() {
			i++
			ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8 & 15), byte(i)})
			tk, r := s.admit(&t.admission, t.routes[0], ip)
			if r != nil {
				b.Fatal(r.reason)
			}
			s.admission.release(&tk)
		}
	})
}
