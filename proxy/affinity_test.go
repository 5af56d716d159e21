package proxy

import (
	"bufio"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/internal/testpki"
	"github.com/wsproxy/wsproxy/tlsconf"
)

// testTimeout bounds every exchange of these tests, so that a proxy that
// fails to answer fails the test rather than hanging it.
const testTimeout = 10 * time.Second

var timedClient = &http.Client{Timeout: testTimeout}

// affinityConfig is a route on three engine.io-like backends, hashed on
// the client address, with an affinity cookie; %s is the affinity block's
// extra keys.
const affinityConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {drain_timeout: 100ms, handshake_timeout: 2s}
routes:
  - path: /socket.io
    pool: app
    hash_key: ip
    affinity: {cookie: wsp_backend%s}
pools:
  app:
    backends: [{address: "{{B0}}"}, {address: "{{B1}}"}, {address: "{{B2}}"}]
`

// eioClient is a browser-like Socket.IO client: one cookie jar for its
// polls and its upgrade, all from 127.0.0.1.
type eioClient struct {
	t    *testing.T
	base string // http(s)://host:port
	jar  *cookiejar.Jar
	http *http.Client
	ws   websocket.Dialer
	sid  string
	// setCookies are the affinity Set-Cookie values it was sent.
	setCookies []string
}

func newEIOClient(t *testing.T, base string, tc *tls.Config) *eioClient {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: tc}
	t.Cleanup(tr.CloseIdleConnections)
	return &eioClient{t: t, base: base, jar: jar,
		http: &http.Client{Jar: jar, Transport: tr, Timeout: testTimeout},
		ws:   websocket.Dialer{Jar: jar, TLSClientConfig: tc, HandshakeTimeout: testTimeout}}
}

// poll long-polls: a new session without sid, else the client's own. It
// returns the status and body.
func (c *eioClient) poll() (int, string) {
	c.t.Helper()
	u := c.base + "/socket.io/?EIO=4&transport=polling"
	if c.sid != "" {
		u += "&sid=" + c.sid
	}
	resp, err := c.http.Get(u)
	if err != nil {
		c.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	c.noteCookies(resp.Header)
	if resp.StatusCode == 200 && c.sid == "" {
		c.sid = string(body)
	}
	return resp.StatusCode, string(body)
}

func (c *eioClient) noteCookies(h http.Header) {
	for _, v := range h.Values("Set-Cookie") {
		if strings.HasPrefix(v, "wsp_backend=") {
			c.setCookies = append(c.setCookies, v)
		}
	}
}

// upgrade opens the WebSocket of the client's session and echoes a
// message through it.
func (c *eioClient) upgrade() {
	c.t.Helper()
	u := strings.Replace(c.base, "http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket&sid=" + c.sid
	conn, resp, err := c.ws.Dial(u, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		c.t.Fatalf("session %s: upgrade: %v (status %d)", c.sid, err, status)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(testTimeout))
	c.noteCookies(resp.Header)
	if err := conn.WriteMessage(websocket.TextMessage, []byte("2probe")); err != nil {
		c.t.Fatal(err)
	}
	if _, msg, err := conn.ReadMessage(); err != nil || string(msg) != "2probe" {
		c.t.Fatalf("session %s: echo %q, %v", c.sid, msg, err)
	}
}

// backend is the name of the backend holding the client's session.
func (c *eioClient) backend() string { b, _, _ := strings.Cut(c.sid, "-"); return b }

// cookie is the affinity cookie the jar holds for the proxy.
func (c *eioClient) cookie() string {
	u, _ := url.Parse(c.base + "/socket.io/")
	for _, ck := range c.jar.Cookies(u) {
		if ck.Name == "wsp_backend" {
			return ck.Value
		}
	}
	return ""
}

func startEIOPool(t *testing.T) []string {
	var addrs []string
	for i := 0; i < 3; i++ {
		addrs = append(addrs, startEIOBackend(t, fmt.Sprintf("b%d", i)).ln.Addr().String())
	}
	return addrs
}

// TestAffinitySocketIOPattern: clients that all share one address poll,
// poll again and upgrade on their session id with a cookie jar; the
// affinity cookie keeps every client on the backend of its session
// (another one answers 400 "Session ID unknown"), and the clients are
// spread over the pool though the route hashes on the address, over plain
// and TLS listeners.
func TestAffinitySocketIOPattern(t *testing.T) {
	ca := testpki.NewCA(t)
	front := ca.Issue(t, "front", testpki.Options{Names: []string{"localhost"}})
	ts, err := tlsconf.NewServer(tlsconf.ServerOptions{Certificates: []tlsconf.CertFiles{{CertFile: front.CertFile, KeyFile: front.KeyFile}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		tls    bool
		secure string
		want   string // in every Set-Cookie
		refuse string // in none
	}{
		{name: "plain", secure: "", want: "; Path=/socket.io; HttpOnly; SameSite=Lax", refuse: "Secure"},
		{name: "tls", tls: true, secure: "", want: "; Path=/socket.io; HttpOnly; SameSite=Lax; Secure"},
		{name: "tls, ttl, strict, not Secure", tls: true, secure: ", ttl: 1h, same_site: strict, secure: false, http_only: false",
			want: "; Path=/socket.io; Max-Age=3600; SameSite=Strict", refuse: "HttpOnly"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addrs := startEIOPool(t)
			var p *testProxy
			var clientTLS *tls.Config
			base := "http://"
			if tc.tls {
				p = startTLSProxy(t, fmt.Sprintf(affinityConfig, tc.secure), ts, addrs...)
				base, clientTLS = "https://", &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
			} else {
				p = startProxy(t, fmt.Sprintf(affinityConfig, tc.secure), addrs...)
			}
			base += p.ln.Addr().String()
			const clients = 30
			spread := map[string]int{}
			for i := 0; i < clients; i++ {
				c := newEIOClient(t, base, clientTLS)
				if st, body := c.poll(); st != 200 {
					t.Fatalf("client %d: first poll %d %q", i, st, body)
				}
				if len(c.setCookies) != 1 || c.cookie() == "" {
					t.Fatalf("client %d: the first poll set %q; the jar holds %q", i, c.setCookies, c.cookie())
				}
				if v := c.setCookies[0]; !strings.Contains(v, tc.want) || (tc.refuse != "" && strings.Contains(v, tc.refuse)) {
					t.Fatalf("client %d: Set-Cookie %q: want %q, not %q", i, v, tc.want, tc.refuse)
				}
				for j := 0; j < 2; j++ {
					if st, body := c.poll(); st != 200 || body != c.sid {
						t.Fatalf("client %d, session %s: poll %d answered %d %q", i, c.sid, j, st, body)
					}
				}
				c.upgrade()
				if len(c.setCookies) != 1 {
					t.Fatalf("client %d: an honoured cookie was set again: %q", i, c.setCookies)
				}
				spread[c.backend()]++
			}
			if len(spread) != 3 {
				t.Fatalf("%d clients behind one address reached %v: want every backend of the pool", clients, spread)
			}
			st := &p.srv.stats
			if got := st.Affinity[affinityHonoured].Load(); got != 3*clients {
				t.Errorf("honoured %d, want %d (two polls and an upgrade per client)", got, 3*clients)
			}
			if got := st.AffinitySet.Load(); got != clients {
				t.Errorf("set %d, want %d", got, clients)
			}
			m := scrapeProxy(t, p)
			if v := m.value("wsproxy_affinity_cookies_total", "outcome", "honoured"); v != 3*clients {
				t.Errorf("wsproxy_affinity_cookies_total{outcome=honoured} = %v", v)
			}
			if v := m.value("wsproxy_affinity_cookies_total", "outcome", "absent"); v != clients {
				t.Errorf("wsproxy_affinity_cookies_total{outcome=absent} = %v", v)
			}
			t.Logf("%d clients from 127.0.0.1: %v", clients, spread)
		})
	}
}

// TestAffinityUpgradeSetsCookie: a client whose first request is the
// upgrade gets the cookie on the 101, which is the backend's head as it
// sent it with one header line more; its next upgrade carries the cookie
// and gets the backend's head unchanged.
func TestAffinityUpgradeSetsCookie(t *testing.T) {
	var addrs []string
	heads := map[string]string{}
	for i := 0; i < 3; i++ {
		addr, head := startRaw101Backend(t, fmt.Sprintf("b%d", i))
		addrs = append(addrs, addr)
		heads[addr] = head
	}
	p := startProxy(t, fmt.Sprintf(affinityConfig, ""), addrs...)
	upgrade := func(cookie string) (head string) {
		conn, err := net.Dial("tcp", p.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(testTimeout))
		var extra []string
		if cookie != "" {
			extra = append(extra, "Cookie: io=abc; "+cookie)
		}
		if _, err := conn.Write([]byte(rawHandshake("proxy", "/socket.io/?EIO=4&transport=websocket", extra...))); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		for !strings.HasSuffix(head, "\r\n\r\n") {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("after %q: %v", head, err)
			}
			head += line
		}
		return head
	}
	first := upgrade("")
	i := strings.Index(first, "Set-Cookie: wsp_backend=")
	if i < 0 {
		t.Fatalf("no cookie on the 101:\n%s", first)
	}
	line := first[i : i+strings.Index(first[i:], "\r\n")+2]
	sent := maskAccept(strings.Replace(first, line, "", 1))
	var from string
	for addr, h := range heads {
		if h == sent {
			from = addr
		}
	}
	if from == "" || !strings.HasSuffix(line, "; Path=/socket.io; HttpOnly; SameSite=Lax\r\n") || !strings.HasSuffix(first, line+"\r\n") {
		t.Fatalf("the 101 is not a backend's head with the cookie added:\n%s", first)
	}
	cookie := strings.TrimPrefix(line[:strings.Index(line, ";")], "Set-Cookie: ")
	for j := 0; j < 4; j++ {
		if again := maskAccept(upgrade(cookie)); again != heads[from] {
			t.Fatalf("upgrade %d with the cookie got\n%s\nwant the head of %s unchanged:\n%s", j, again, from, heads[from])
		}
	}
}

// startRaw101Backend accepts every upgrade with a 101 written by hand, its
// header names in odd case, and holds the connection until the client
// closes it. It returns its address and the head it sends, bar the
// Sec-WebSocket-Accept value.
func startRaw101Backend(t *testing.T, name string) (string, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	head := "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nCONNECTION: Upgrade\r\n" +
		"Sec-WebSocket-Accept: %s\r\nx-backend:   " + name + "  \r\n\r\n"
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				req, err := http.ReadRequest(bufio.NewReader(conn))
				if err != nil {
					return
				}
				_, _ = fmt.Fprintf(conn, head, acceptKey(req.Header.Get("Sec-WebSocket-Key")))
				_, _ = io.Copy(io.Discard, conn)
			}()
		}
	}()
	// Every handshake of rawHandshake carries a random key: the tests
	// compare heads with the accept value the proxy's client got.
	return ln.Addr().String(), head
}

// reloadConfig parses yaml with the backends' addresses and applies it.
func reloadConfig(t *testing.T, p *testProxy, yaml string, addrs ...string) {
	t.Helper()
	for i, a := range addrs {
		yaml = strings.ReplaceAll(yaml, fmt.Sprintf("{{B%d}}", i), a)
	}
	cfg, err := config.Parse("reload.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.srv.Update(cfg); err != nil {
		t.Fatal(err)
	}
}

// TestAffinityCookieOfAGoneBackend: a cookie naming a backend that a
// reload removed, or that is drained, is ignored: the request goes to a
// backend the pool still offers, which the answer's new cookie names.
func TestAffinityCookieOfAGoneBackend(t *testing.T) {
	addrs := startEIOPool(t)
	p := startProxy(t, fmt.Sprintf(affinityConfig, ""), addrs...)
	base := "http://" + p.ln.Addr().String()
	index := func(name string) int { return int(name[1] - '0') }

	// Removed by a reload.
	c := newEIOClient(t, base, nil)
	c.poll()
	gone := c.backend()
	var kept []string
	for i, a := range addrs {
		if i != index(gone) {
			kept = append(kept, a)
		}
	}
	reloadConfig(t, p, strings.Replace(fmt.Sprintf(affinityConfig, ""), `, {address: "{{B2}}"}`, "", 1), kept...)
	old := c.cookie()
	if st, body := c.poll(); st != 400 || !strings.Contains(body, "Session ID unknown") {
		t.Fatalf("a poll of a session on the removed backend %s: %d %q", gone, st, body)
	}
	if c.cookie() == old || len(c.setCookies) != 2 {
		t.Fatalf("the cookie of the removed backend was not replaced: %q", c.setCookies)
	}
	if p.srv.stats.Affinity[affinityInvalid].Load() != 1 {
		t.Fatalf("invalid cookies %d, want 1", p.srv.stats.Affinity[affinityInvalid].Load())
	}
	c.sid = "" // engine.io's client opens a new session
	c.poll()
	again := c.backend()
	if again == gone {
		t.Fatalf("new session on the removed backend %s", gone)
	}
	c.poll()
	c.upgrade()
	if len(c.setCookies) != 2 {
		t.Fatalf("the new cookie was not honoured: %q", c.setCookies)
	}
}

// TestAffinityDrainedBackend: the cookie of a drained backend is ignored
// (outcome unavailable) and replaced; undrained, a cookie naming it is
// honoured again.
func TestAffinityDrainedBackend(t *testing.T) {
	addrs := startEIOPool(t)
	p := startProxy(t, fmt.Sprintf(affinityConfig, ""), addrs...)
	c := newEIOClient(t, "http://"+p.ln.Addr().String(), nil)
	c.poll()
	first := c.backend()
	addr := addrs[int(first[1]-'0')]
	if _, err := p.srv.DrainBackend(addr); err != nil {
		t.Fatal(err)
	}
	c.sid = ""
	c.poll()
	if c.backend() == first {
		t.Fatalf("a new session went to the drained backend %s", first)
	}
	if len(c.setCookies) != 2 || p.srv.stats.Affinity[affinityUnavailable].Load() != 1 {
		t.Fatalf("cookies %q, unavailable %d", c.setCookies, p.srv.stats.Affinity[affinityUnavailable].Load())
	}
}

// TestAffinityForgedCookies: a cookie the proxy did not make for the
// route's pool reaches no backend through it: malformed, tampered,
// made with another key, or valid for another route's pool (on the same
// backends, or on one outside this pool). Each is counted invalid and
// replaced by the cookie of the backend the hash picked.
func TestAffinityForgedCookies(t *testing.T) {
	b := []*testBackend{startBackend(t, "b0"), startBackend(t, "b1"), startBackend(t, "b2")}
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte(strings.Repeat("k", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, fmt.Sprintf(`
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
routes:
  - {path: /a, pool: a, hash_key: "header:X-User", affinity: {key_file: %q}}
  - {path: /b, pool: b, hash_key: "header:X-User", affinity: {key_file: %q}}
  - {path: /c, pool: c, hash_key: "header:X-User", affinity: {key_file: %q}}
pools:
  a: {backends: [{address: "{{B0}}"}, {address: "{{B1}}"}]}
  b: {backends: [{address: "{{B0}}"}, {address: "{{B1}}"}]}
  c: {backends: [{address: "{{B2}}"}]}
`, key, key, key), b[0].addr(), b[1].addr(), b[2].addr())
	get := func(path, user, cookie string) (backend, setCookie string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+p.ln.Addr().String()+path, nil)
		req.Header.Set("X-User", user)
		if cookie != "" {
			req.Header.Set("Cookie", "wsp_backend="+cookie)
		}
		resp, err := timedClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		v := resp.Header.Get("Set-Cookie")
		v, _, _ = strings.Cut(strings.TrimPrefix(v, "wsp_backend="), ";")
		return string(body), v
	}
	// The cookies of b0 and b1 in pool a, and b2's in pool c.
	cookies := map[string]string{}
	for i := 0; len(cookies) < 2; i++ {
		if i > 100 {
			t.Fatal("100 users reached one backend of two")
		}
		name, v := get("/a", fmt.Sprintf("user-%d", i), "")
		cookies[name] = v
	}
	_, c2 := get("/c", "u", "")
	// user-x hashes to one backend of pool b: the cookies to try name
	// the other one.
	home, _ := get("/b", "user-x", "")
	other := map[string]string{"b0": "b1", "b1": "b0"}[home]
	honoured := p.srv.stats.Affinity[affinityHonoured].Load()
	if _, set := get("/a", "user-x", cookies[other]); set != "" {
		t.Fatalf("a valid cookie was set again: %q", set)
	}
	if p.srv.stats.Affinity[affinityHonoured].Load() != honoured+1 {
		t.Fatal("a valid cookie was not honoured")
	}
	tampered := []byte(cookies[other])
	tampered[3] ^= 1
	otherKey := affinityTag([]byte(strings.Repeat("x", 32)), "b", b[0].addr())
	sameKeyOutside := affinityTag([]byte(strings.Repeat("k", 32)), "b", b[2].addr())
	for _, tc := range []struct{ name, cookie string }{
		{"malformed", "not-a-cookie"},
		{"too long", cookies[other] + "A"},
		{"bad base64", strings.Repeat("*", 22)},
		{"tampered", string(tampered)},
		{"another key", encodeTag(otherKey)},
		{"another pool on the same backends", cookies[other]},
		{"another pool outside this one", c2},
		{"this pool's name on a backend outside it", encodeTag(sameKeyOutside)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			invalid := p.srv.stats.Affinity[affinityInvalid].Load()
			got, set := get("/b", "user-x", tc.cookie)
			if got != home {
				t.Fatalf("reached %s, want %s (the hash's pick)", got, home)
			}
			if set == "" || set == tc.cookie {
				t.Fatalf("Set-Cookie %q: want the cookie of %s", set, home)
			}
			if n := p.srv.stats.Affinity[affinityInvalid].Load(); n != invalid+1 {
				t.Fatalf("invalid went from %d to %d", invalid, n)
			}
		})
	}
}

// TestAffinityFleetSharesKey: proxies with one key_file honour each
// other's cookies; a proxy with a key of its own does not.
func TestAffinityFleetSharesKey(t *testing.T) {
	addrs := startEIOPool(t)
	dir := t.TempDir()
	write := func(name, key string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(key), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	shared, own := write("shared", strings.Repeat("s", 40)), write("own", strings.Repeat("o", 40))
	keyed := func(f string) string { return fmt.Sprintf(affinityConfig, fmt.Sprintf(", key_file: %q", f)) }
	p1, p2, p3 := startProxy(t, keyed(shared), addrs...), startProxy(t, keyed(shared), addrs...), startProxy(t, keyed(own), addrs...)
	c := newEIOClient(t, "http://"+p1.ln.Addr().String(), nil)
	c.poll()
	cookie := c.cookie()
	for _, tc := range []struct {
		name    string
		p       *testProxy
		honours bool
	}{{"same key", p2, true}, {"own key", p3, false}} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 5; i++ { // a pick at random would miss in 5 tries with odds 1/243
				req, _ := http.NewRequest("GET", "http://"+tc.p.ln.Addr().String()+"/socket.io/?EIO=4&transport=polling&sid="+c.sid, nil)
				req.Header.Set("Cookie", "wsp_backend="+cookie)
				resp, err := timedClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			st := &tc.p.srv.stats
			if tc.honours && (st.Affinity[affinityHonoured].Load() != 5 || st.AffinitySet.Load() != 0) {
				t.Fatalf("honoured %d, set %d: want 5, 0", st.Affinity[affinityHonoured].Load(), st.AffinitySet.Load())
			}
			if !tc.honours && (st.Affinity[affinityInvalid].Load() != 5 || st.AffinitySet.Load() != 5) {
				t.Fatalf("invalid %d, set %d: want 5, 5", st.Affinity[affinityInvalid].Load(), st.AffinitySet.Load())
			}
		})
	}
}

// TestAffinityHoldsOverBoundedLoads: with bounded loads at their
// tightest, a client's sessions stay on its cookie's backend however full
// it gets, while clients without the cookie are spread by the bound.
func TestAffinityHoldsOverBoundedLoads(t *testing.T) {
	b0, b1 := startBackend(t, "b0"), startBackend(t, "b1")
	p := startProxy(t, `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
routes: [{path: /ws, pool: p, affinity: {}}]
pools:
  p:
    bounded_load: 1
    backends: [{address: "{{B0}}"}, {address: "{{B1}}"}]
`, b0.addr(), b1.addr())
	jar, _ := cookiejar.New(nil)
	d := websocket.Dialer{Jar: jar, HandshakeTimeout: testTimeout}
	const sessions = 6
	var home *testBackend
	for i := 0; i < sessions; i++ {
		c, _, err := d.Dial(p.url("/ws"), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		p.waitSessions(t, i+1)
		if i == 0 {
			home = b0
			if conns(b1) == 1 {
				home = b1
			}
		}
	}
	if conns(home) != sessions {
		t.Fatalf("%d of %d sessions on the cookie's backend", conns(home), sessions)
	}
	// Without the cookie the bound places the next session on the other.
	c, _, err := (&websocket.Dialer{HandshakeTimeout: testTimeout}).Dial(p.url("/ws"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if conns(b0)+conns(b1) != sessions+1 || conns(home) != sessions {
		t.Fatalf("a session without the cookie went to the full backend: %d, %d", conns(b0), conns(b1))
	}
}

// maskAccept replaces the Sec-WebSocket-Accept value of a head with %s.
func maskAccept(head string) string {
	i := strings.Index(head, "Sec-WebSocket-Accept: ")
	if i < 0 {
		return head
	}
	i += len("Sec-WebSocket-Accept: ")
	return head[:i] + "%s" + head[i+strings.Index(head[i:], "\r\n"):]
}

// encodeTag is a tag as a cookie value.
func encodeTag(tag [tagLen]byte) string { return base64.RawURLEncoding.EncodeToString(tag[:]) }

// acceptKey is the Sec-WebSocket-Accept for key (RFC 6455 section 4.2.2).
func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// TestAffinityChoiceAllocs: the backend choice of a request with a valid
// cookie, one with a forged cookie and one without, and the Set-Cookie of
// a plain response, allocate nothing.
func TestAffinityChoiceAllocs(t *testing.T) {
	addrs := startEIOPool(t)
	p := startProxy(t, fmt.Sprintf(affinityConfig, ""), addrs...)
	rt := p.srv.table.Load().routes[0]
	e := &rt.affinity.entries[1]
	valid := []byte("io=abc; wsp_backend=" + encodeTag(e.tag))
	forged := []byte("wsp_backend=" + strings.Repeat("A", 22))
	ip := netip.MustParseAddr("127.0.0.1")
	var reqs [3]fasthttp.Request
	for i, c := range [][]byte{valid, forged, nil} {
		reqs[i].SetRequestURI("/socket.io/?EIO=4&transport=polling")
		if c != nil {
			reqs[i].Header.SetBytesV("Cookie", c)
		}
	}
	var resp fasthttp.Response
	if c := p.srv.choose(&reqs[0], rt, ip); c.sticky != e.b {
		t.Fatalf("the valid cookie chose %v, want %s", c.sticky, e.b.Addr)
	}
	if n := testing.AllocsPerRun(200, func() {
		for i := range reqs {
			c := p.srv.choose(&reqs[i], rt, ip)
			resp.Header.Reset()
			p.srv.setAffinityCookie(&resp.Header, &c, c.pickPlain(rt.pool.lb), false)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per three requests", n)
	}
}

// BenchmarkAffinityChoose is the backend choice of a request carrying a
// valid cookie, on a pool of 3 and of 64 backends.
func BenchmarkAffinityChoose(b *testing.B) {
	for _, n := range []int{3, 64} {
		b.Run(fmt.Sprintf("%d backends", n), func(b *testing.B) {
			var list []string
			for i := 0; i < n; i++ {
				list = append(list, fmt.Sprintf(`{address: "127.0.0.1:%d"}`, 20000+i))
			}
			p := startProxy(b, `
listeners: [{address: "127.0.0.1:0"}]
routes: [{path: /, pool: p, affinity: {}}]
pools: {p: {backends: [`+strings.Join(list, ", ")+`]}}
`)
			rt := p.srv.table.Load().routes[0]
			var req fasthttp.Request
			req.Header.Set("Cookie", "io=abc; wsp_backend="+encodeTag(rt.affinity.entries[n/2].tag))
			ip := netip.MustParseAddr("127.0.0.1")
			b.ReportAllocs()
			for b.Loop() {
				if c := p.srv.choose(&req, rt, ip); c.sticky == nil {
					b.Fatal("not honoured")
				}
			}
		})
	}
}
