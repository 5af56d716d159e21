package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// authServer is a real forward-auth service on loopback: "Bearer
// good-USER" passes as USER, anything else gets a 401 of its own making.
type authServer struct {
	*httptest.Server
	calls atomic.Int64
	mu    sync.Mutex
	seen  []http.Header // request headers of each call
}

// authRefusalBody is the auth service's refusal body, to be relayed byte
// for byte (no trailing newline, a byte fasthttp would not add).
const authRefusalBody = "who are you?\x00\xff"

func startAuthServer(t *testing.T) *authServer {
	t.Helper()
	a := &authServer{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.calls.Add(1)
		a.mu.Lock()
		a.seen = append(a.seen, r.Header.Clone())
		a.mu.Unlock()
		if user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer good-"); ok {
			w.Header().Set("X-User-Id", user)
			w.Header().Set("X-Not-Copied", "x")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="chat"`)
		w.Header().Set("X-Auth-Reason", "no token")
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, authRefusalBody)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *authServer) last() http.Header {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[len(a.seen)-1]
}

// identityBackend answers plain requests with the X-User-Id values it got.
func identityBackend(t *testing.T, name string) *testBackend {
	return startBackend(t, name, func(b *testBackend) {
		b.onHTTP = func(ctx *fasthttp.RequestCtx) {
			var vs []string
			for _, v := range ctx.Request.Header.PeekAll("X-User-Id") {
				vs = append(vs, string(v))
			}
			ctx.SetBodyString(name + ":" + strings.Join(vs, "|"))
		}
	})
}

func authYAML(auth string) string {
	return `
listeners: [{address: "127.0.0.1:0"}]
pools: {p: {backends: [{address: "{{B0}}"}, {address: "{{B1}}"}]}}
routes:
  - path: /
    pool: p
    hash_key: header:X-User-Id
    auth: ` + auth + "\n"
}

// rawExchange sends a request as written and returns the response, read
// whole.
func rawExchange(t *testing.T, addr, req string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// getAs makes a plain request with the given headers.
func getAs(t *testing.T, url string, h map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range h {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// Forward auth: a refusal reaches the client as the auth service sent it
// and nothing reaches a backend; a pass carries the copied identity, never
// the client's forged one, and the identity is the hash key.
func TestForwardAuth(t *testing.T) {
	as := startAuthServer(t)
	b0, b1 := identityBackend(t, "b0"), identityBackend(t, "b1")
	p := startProxy(t, authYAML(`{url: "`+as.URL+`/check", copy_headers: [X-User-Id]}`), b0.addr(), b1.addr())
	addr := p.ln.Addr().String()
	base := "http://" + addr

	t.Run("refusal relayed byte for byte", func(t *testing.T) {
		for _, req := range []string{
			rawHandshake(addr, "/room?x=1", "X-User-Id: mallory"),
			"GET /page HTTP/1.1\r\nHost: " + addr + "\r\nX-User-Id: mallory\r\n\r\n",
		} {
			resp, body := rawExchange(t, addr, req)
			if resp.StatusCode != http.StatusUnauthorized || string(body) != authRefusalBody ||
				resp.Header.Get("WWW-Authenticate") != `Bearer realm="chat"` || resp.Header.Get("X-Auth-Reason") != "no token" ||
				resp.Header.Get("Content-Type") != "application/octet-stream" {
				t.Fatalf("got %d %q %v", resp.StatusCode, body, resp.Header)
			}
		}
		if b0.conns+b1.conns != 0 {
			t.Fatal("a refused upgrade reached a backend")
		}
		h := as.last()
		if h.Get("X-User-Id") != "" || h.Get("X-Forwarded-For") != "127.0.0.1" || h.Get("X-Forwarded-Method") != "GET" ||
			h.Get("X-Forwarded-Uri") != "/page" || h.Get("X-Forwarded-Host") != addr || h.Get("X-Forwarded-Proto") != "http" {
			t.Fatalf("the auth service got %v", h)
		}
	})

	t.Run("identity copied, forgery dropped", func(t *testing.T) {
		c := dial(t, p.url("/room"), http.Header{"Authorization": {"Bearer good-alice"}, "X-User-Id": {"mallory"}})
		if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hi" {
			t.Fatalf("echo: %q %v", msg, err)
		}
		var got []string
		for _, b := range []*testBackend{b0, b1} {
			b.mu.Lock()
			for _, h := range b.headers {
				got = append(got, h.Values("X-User-Id")...)
				if h.Get("X-Not-Copied") != "" {
					t.Error("a header not in copy_headers was copied")
				}
			}
			b.mu.Unlock()
		}
		if strings.Join(got, ",") != "alice" {
			t.Fatalf("backends got X-User-Id %q", got)
		}
		if h := as.last(); h.Get("Upgrade") != "" || h.Get("Connection") != "" || h.Get("Sec-Websocket-Key") == "" {
			t.Fatalf("the auth service got %v", h)
		}
		status, body := getAs(t, base+"/page", map[string]string{"Authorization": "Bearer good-bob", "X-User-Id": "mallory"})
		if status != http.StatusOK || !strings.HasSuffix(body, ":bob") {
			t.Fatalf("plain request: %d %q", status, body)
		}
	})

	t.Run("identity is the hash key", func(t *testing.T) {
		spread := map[string]int{}
		for i := 0; i < 24; i++ {
			user := fmt.Sprintf("user%d", i)
			var first string
			for j := 0; j < 3; j++ {
				_, body := getAs(t, base+"/page", map[string]string{"Authorization": "Bearer good-" + user})
				name, _, _ := strings.Cut(body, ":")
				if j == 0 {
					first = name
					spread[name]++
				} else if name != first {
					t.Fatalf("%s went to %s, then %s", user, first, name)
				}
			}
		}
		if len(spread) != 2 {
			t.Fatalf("24 users all on %v", spread)
		}
	})
	sc := scrapeProxy(t, p)
	if sc.value("wsproxy_auth_total", "step", "forward", "outcome", "refused") != 2 ||
		sc.value("wsproxy_auth_total", "step", "forward", "outcome", "passed") != 2+72 {
		t.Fatalf("auth metrics: refused %v, passed %v", sc.value("wsproxy_auth_total", "step", "forward", "outcome", "refused"),
			sc.value("wsproxy_auth_total", "step", "forward", "outcome", "passed"))
	}
}

// An auth service that cannot answer (refused connections, no answer in
// time) gets requests 503 with on_error deny, and lets them through
// without identity with allow; a backend never hears of it.
func TestForwardAuthUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/check"
	ln.Close()
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(hang)
	b0, b1 := identityBackend(t, "b0"), identityBackend(t, "b1")
	for _, tc := range []struct {
		name, url, onError string
		status             int
	}{
		{"down, deny", closed, "deny", http.StatusServiceUnavailable},
		{"down, allow", closed, "allow", http.StatusOK},
		{"timeout, deny", slow.URL, "deny", http.StatusServiceUnavailable},
		{"timeout, allow", slow.URL, "allow", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := strings.Replace(authYAML(`{url: "`+tc.url+`", timeout: 200ms, copy_headers: [X-User-Id], on_error: `+tc.onError+`}`),
				"{p: {backends:", "{p: {health: {passive_failures: 1}, backends:", 1)
			hp := startHealthProxy(t, y, b0.addr(), b1.addr())
			base := "http://" + hp.ln.Addr().String()
			status, body := getAs(t, base+"/page", map[string]string{"Authorization": "Bearer good-alice", "X-User-Id": "mallory"})
			if status != tc.status {
				t.Fatalf("plain: %d %q, want %d", status, body, tc.status)
			}
			if tc.status == http.StatusOK && !strings.HasSuffix(body, ":") {
				t.Fatalf("let through with identity %q", body)
			}
			resp, _ := rawExchange(t, hp.ln.Addr().String(), rawHandshake(hp.ln.Addr().String(), "/room"))
			want := tc.status
			if want == http.StatusOK {
				want = http.StatusSwitchingProtocols
			}
			if resp.StatusCode != want {
				t.Fatalf("upgrade: %d, want %d", resp.StatusCode, want)
			}
			outcome := "unavailable_" + map[string]string{"deny": "denied", "allow": "allowed"}[tc.onError]
			if n := hp.srv.stats.Auth[1][map[string]int{"deny": authDenied, "allow": authAllowed}[tc.onError]].Load(); n != 2 {
				t.Fatalf("%s counted %d", outcome, n)
			}
			if hp.logs.FilterMessage("auth service unavailable").Len() == 0 {
				t.Fatal("not logged")
			}
			for _, b := range hp.srv.Status().Pools {
				for _, be := range b.Backends {
					if !be.Healthy {
						t.Fatalf("backend %s held responsible: %+v", be.Address, be)
					}
				}
			}
		})
	}
}

// A 2xx answer is cached on the credentials for cache_ttl; refusals and
// other credentials go to the auth service.
func TestForwardAuthCache(t *testing.T) {
	as := startAuthServer(t)
	b0, b1 := identityBackend(t, "b0"), identityBackend(t, "b1")
	p := startProxy(t, authYAML(`{url: "`+as.URL+`/check", copy_headers: [X-User-Id], cache_ttl: 1m}`), b0.addr(), b1.addr())
	base := "http://" + p.ln.Addr().String()
	for i, tc := range []struct {
		auth, cookie, wantUser string
		calls                  int64
	}{
		{"Bearer good-alice", "", "alice", 1},
		{"Bearer good-alice", "", "alice", 1}, // cached
		{"Bearer good-alice", "s=1", "alice", 2},
		{"Bearer good-bob", "", "bob", 3},
		{"Bearer good-bob", "", "bob", 3},
		{"Bearer bad", "", "", 4},
		{"Bearer bad", "", "", 5}, // refusals are not cached
	} {
		h := map[string]string{"Authorization": tc.auth}
		if tc.cookie != "" {
			h["Cookie"] = tc.cookie
		}
		status, body := getAs(t, base+"/page", h)
		if tc.wantUser != "" && (status != http.StatusOK || !strings.HasSuffix(body, ":"+tc.wantUser)) ||
			tc.wantUser == "" && status != http.StatusUnauthorized {
			t.Fatalf("request %d: %d %q", i, status, body)
		}
		if n := as.calls.Load(); n != tc.calls {
			t.Fatalf("request %d: the auth service was asked %d times, want %d", i, n, tc.calls)
		}
	}
	// A WebSocket upgrade with cached credentials passes too.
	c := dial(t, p.url("/room"), http.Header{"Authorization": {"Bearer good-bob"}})
	c.Close()
	if n := as.calls.Load(); n != 5 {
		t.Fatalf("the upgrade asked the auth service: %d calls", n)
	}
	if n := p.srv.stats.Auth[1][authCached].Load(); n != 3 {
		t.Fatalf("cached: %d", n)
	}
}

// The cache stays within its bound and forgets what expired.
func TestAuthCacheBounded(t *testing.T) {
	c := newAuthCache(time.Hour)
	for i := 0; i < 3*authCacheEntries; i++ {
		c.put(fmt.Sprint(i), nil)
	}
	if n := c.len(); n > authCacheEntries || n < authCacheEntries/2 {
		t.Fatalf("%d entries, want at most %d and most of that", n, authCacheEntries)
	}
	if _, ok := c.get(fmt.Sprint(3*authCacheEntries - 1)); !ok {
		t.Fatal("the latest answer was not kept")
	}
	c = newAuthCache(time.Nanosecond)
	c.put("k", []header{{"X-User-Id", "a"}})
	waitFor(t, "the entry to expire", func() bool { _, ok := c.get("k"); return !ok })
}

// Answers the proxy cannot relay as they are (a body over the bound, a
// 101 that would tell the client it was upgraded) get 502, and still
// reach no backend.
func TestForwardAuthUnrelayable(t *testing.T) {
	big := strings.Repeat("x", maxAuthBody+1)
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "big" {
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, big)
			return
		}
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Connection", "Upgrade")
		w.WriteHeader(http.StatusSwitchingProtocols)
	}))
	defer as.Close()
	b0, b1 := identityBackend(t, "b0"), identityBackend(t, "b1")
	p := startProxy(t, authYAML(`{url: "`+as.URL+`"}`), b0.addr(), b1.addr())
	addr := p.ln.Addr().String()
	for _, auth := range []string{"big", "switch"} {
		resp, body := rawExchange(t, addr, rawHandshake(addr, "/room", "Authorization: "+auth))
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("%s: %d %.80q", auth, resp.StatusCode, body)
		}
	}
	if b0.conns+b1.conns != 0 {
		t.Fatal("reached a backend")
	}
}
