package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

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
