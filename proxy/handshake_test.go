package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// rawRequest sends req as it is and returns the response.
func rawRequest(t *testing.T, addr, req string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp, ""
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestHandshakeValidation(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, basicConfig, b.addr())
	host := p.ln.Addr().String()
	valid := rawHandshake(host, "/x")
	for _, tc := range []struct {
		name   string
		req    string
		status int
		reason string
	}{
		{"POST", strings.Replace(valid, "GET", "POST", 1), 400, "GET"},
		{"HTTP/1.0", strings.Replace(valid, "HTTP/1.1", "HTTP/1.0", 1), 400, "HTTP/1.1"},
		{"no upgrade token", strings.Replace(valid, "Connection: Upgrade", "Connection: keep-alive", 1), 400, "Connection"},
		{"key not 16 bytes", strings.Replace(valid, "Sec-WebSocket-Key: ", "Sec-WebSocket-Key: AAAA", 1), 400, "Sec-WebSocket-Key"},
		{"no key", removeLine(valid, "Sec-WebSocket-Key"), 400, "Sec-WebSocket-Key"},
		{"two keys", strings.Replace(valid, "Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", 1), 400, "must appear once"},
		{"version 8", strings.Replace(valid, "Version: 13", "Version: 8", 1), 426, "version 13"},
		{"no version", removeLine(valid, "Sec-WebSocket-Version"), 426, "version 13"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawRequest(t, host, tc.req)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.status, body)
			}
			if !strings.Contains(body, tc.reason) || strings.Count(strings.TrimSpace(body), "\n") != 0 {
				t.Fatalf("body %q should be one line naming %q", body, tc.reason)
			}
			if tc.status == 426 && resp.Header.Get("Sec-WebSocket-Version") != "13" {
				t.Fatalf("426 without Sec-WebSocket-Version: 13")
			}
		})
	}
	if n := conns(b); n != 0 {
		t.Fatalf("%d bad handshakes reached the backend", n)
	}
	// Comma lists and case do not matter.
	ok := strings.Replace(valid, "Connection: Upgrade", "Connection: keep-alive, UPGRADE", 1)
	ok = strings.Replace(ok, "Upgrade: websocket", "Upgrade: WebSocket", 1)
	if resp, body := rawRequest(t, host, ok); resp.StatusCode != 101 {
		t.Fatalf("status %d %s", resp.StatusCode, body)
	}
}

func removeLine(req, name string) string {
	var out []string
	for _, l := range strings.Split(req, "\r\n") {
		if !strings.HasPrefix(l, name+":") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\r\n")
}

func TestOriginCheck(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, `
listeners: [{address: "127.0.0.1:0"}]
routes:
  - {path: /, pool: p, allowed_origins: ["https://app.example.com"]}
pools:
  p: {backends: [{address: "{{B0}}"}]}
`, b.addr())
	_, resp, err := websocket.DefaultDialer.Dial(p.url("/"), http.Header{"Origin": {"https://evil.example.com"}})
	if err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("foreign origin: err %v resp %v", err, resp)
	}
	c := dial(t, p.url("/"), http.Header{"Origin": {"https://APP.example.com"}})
	c.Close()
}

func TestHeadersReachBackend(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, basicConfig, b.addr())
	h := http.Header{
		"Origin":           {"https://app.example.com"},
		"Cookie":           {"session=abc"},
		"X-User-Id":        {"u42"},
		"X-Forwarded-For":  {"6.6.6.6"}, // forged: the peer is not trusted
		"Keep-Alive":       {"timeout=5"},
		"X-Hop":            {"drop me"},
		"Proxy-Connection": {"keep-alive"},
	}
	d := websocket.Dialer{Subprotocols: []string{"chat"}}
	c, _, err := d.Dial(p.url("/room?id=7"), h)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	b.mu.Lock()
	got := b.headers[0]
	b.mu.Unlock()
	for k, want := range map[string]string{
		"Origin":                 "https://app.example.com",
		"Cookie":                 "session=abc",
		"X-User-Id":              "u42",
		"Sec-Websocket-Protocol": "chat",
		"X-Forwarded-For":        "127.0.0.1",
		"X-Forwarded-Proto":      "http",
		"X-Forwarded-Host":       p.ln.Addr().String(),
		"Forwarded":              "for=127.0.0.1;proto=http;host=\"" + p.ln.Addr().String() + "\"",
	} {
		if got.Get(k) != want {
			t.Errorf("%s = %q, want %q", k, got.Get(k), want)
		}
	}
	for _, k := range []string{"Keep-Alive", "Proxy-Connection"} {
		if got.Get(k) != "" {
			t.Errorf("hop-by-hop %s reached the backend", k)
		}
	}
}

func TestBackendRejectionRelayed(t *testing.T) {
	b := startBackend(t, "b0", func(b *testBackend) {
		b.reject = true
		b.onHTTP = func(ctx *fasthttp.RequestCtx) {
			ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="chat"`)
			ctx.Response.Header.Set("X-Reason", "token expired")
			ctx.SetStatusCode(401)
			ctx.SetBodyString("please log in")
		}
	})
	p := startProxy(t, basicConfig, b.addr())
	_, resp, err := websocket.DefaultDialer.Dial(p.url("/"), nil)
	if err == nil || resp == nil {
		t.Fatalf("err %v resp %v", err, resp)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 401 || string(body) != "please log in" ||
		resp.Header.Get("X-Reason") != "token expired" || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("status %d body %q headers %v", resp.StatusCode, body, resp.Header)
	}
}

// deadAddr returns a loopback address nobody listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func TestDeadBackend(t *testing.T) {
	p := startProxy(t, basicConfig, deadAddr(t))
	_, resp, err := websocket.DefaultDialer.Dial(p.url("/"), nil)
	if err == nil || resp == nil || resp.StatusCode != 502 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("err %v resp %+v", err, resp)
	}
}

func TestRetryNextBackend(t *testing.T) {
	b := startBackend(t, "alive")
	dead := deadAddr(t)
	p := startProxy(t, `
listeners: [{address: "127.0.0.1:0"}]
routes:
  - {path: /, pool: p, hash_key: "header:X-Key"}
pools:
  p: {backends: [{address: "{{B0}}"}, {address: "{{B1}}"}]}
`, b.addr(), dead)
	// Whatever backend each key hashes to first, every handshake lands.
	for i := 0; i < 20; i++ {
		c, _, err := websocket.DefaultDialer.Dial(p.url("/"), http.Header{"X-Key": {strings.Repeat("k", i+1)}})
		if err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
		c.Close()
	}
}

func TestBackendHandshakeTimeout(t *testing.T) {
	// A backend that accepts and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	p := startProxy(t, `
listeners: [{address: "127.0.0.1:0"}]
defaults: {handshake_timeout: 200ms}
routes: [{path: /, pool: p}]
pools:
  p: {backends: [{address: "{{B0}}"}]}
`, ln.Addr().String())
	_, resp, err := websocket.DefaultDialer.Dial(p.url("/"), nil)
	if err == nil || resp == nil || resp.StatusCode != 504 {
		t.Fatalf("err %v resp %+v", err, resp)
	}
}

func TestNoRoute(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, `
listeners: [{address: "127.0.0.1:0"}]
routes: [{path: /chat, pool: p}]
pools:
  p: {backends: [{address: "{{B0}}"}]}
`, b.addr())
	for _, path := range []string{"/", "/chatroom", "/other"} {
		_, resp, err := websocket.DefaultDialer.Dial(p.url(path), nil)
		if err == nil || resp == nil || resp.StatusCode != 404 {
			t.Fatalf("%s: err %v resp %+v", path, err, resp)
		}
	}
	for _, path := range []string{"/chat", "/chat/room"} {
		dial(t, p.url(path), nil).Close()
	}
}

func TestRouteMatching(t *testing.T) {
	tb := &table{routes: []*route{
		{path: "/chat/admin"},
		{path: "/chat", exact: true},
		{path: "/chat"},
		{path: "/"},
	}}
	for path, want := range map[string]int{
		"/chat":          1,
		"/chat/":         2,
		"/chat/x":        2,
		"/chat/admin":    0,
		"/chat/admin/x":  0,
		"/chat/adminx":   2,
		"/chatroom":      3,
		"/":              3,
		"/anything/else": 3,
	} {
		if got := tb.match([]byte(path)); got != tb.routes[want] {
			t.Errorf("%s matched %+v, want route %d", path, got, want)
		}
	}
}

func TestNoHealthyBackendIs503(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, basicConfig, b.addr())
	p.srv.backends.SetHealthy(b.addr(), false)
	_, resp, err := websocket.DefaultDialer.Dial(p.url("/"), nil)
	if err == nil || resp == nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("err %v resp %+v", err, resp)
	}
	// Plain HTTP on the route too.
	hr, err := http.Get("http://" + p.ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	hr.Body.Close()
	if hr.StatusCode != 503 || hr.Header.Get("Retry-After") == "" {
		t.Fatalf("plain HTTP: %d %v", hr.StatusCode, hr.Header)
	}
	if n := conns(b); n != 0 {
		t.Fatalf("%d handshakes reached an unhealthy backend", n)
	}
	p.srv.backends.SetHealthy(b.addr(), true)
	dial(t, p.url("/"), nil).Close()
}
