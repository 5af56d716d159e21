package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/internal/testpki"
	"github.com/wsproxy/wsproxy/tlsconf"
)

// startTLSProxy serves the proxy on a TLS listener with the given server.
func startTLSProxy(t *testing.T, yaml string, ts *tlsconf.Server, backends ...string) *testProxy {
	t.Helper()
	p := startProxy(t, yaml, backends...)
	// Serve the same proxy on a second, TLS listener.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &testProxy{srv: p.srv, ln: ln, done: make(chan struct{})}
	go func() {
		defer close(tp.done)
		_ = p.srv.Serve(WrapListener(ln, ts.Config()))
	}()
	t.Cleanup(func() { ln.Close() })
	return tp
}

// startTLSBackend is an echo backend serving wss with leaf.
func startTLSBackend(t *testing.T, leaf testpki.Leaf) string {
	t.Helper()
	b := &testBackend{name: "tls"}
	b.upgrader = websocket.FastHTTPUpgrader{CheckOrigin: func(*fasthttp.RequestCtx) bool { return true }}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: b.handle}
	go srv.ServeTLS(ln, leaf.CertFile, leaf.KeyFile) //nolint:errcheck
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

func TestTLSEndToEnd(t *testing.T) {
	checkGoroutines(t)
	ca := testpki.NewCA(t)
	front := ca.Issue(t, "front", testpki.Options{Names: []string{"ws.example.com"}})
	back := ca.Issue(t, "back", testpki.Options{Names: []string{"127.0.0.1"}})
	ts, err := tlsconf.NewServer(tlsconf.ServerOptions{Certificates: []tlsconf.CertFiles{{CertFile: front.CertFile, KeyFile: front.KeyFile}}})
	if err != nil {
		t.Fatal(err)
	}
	backend := startTLSBackend(t, back)
	p := startTLSProxy(t, basicConfig, ts, backend)
	// The pool speaks wss to its backend, verified against the test CA.
	setPoolTLS(t, p, config.PoolTLS{Enabled: true, CAFile: ca.File})

	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "ws.example.com"}}
	c, _, err := d.Dial("wss://"+p.ln.Addr().String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 125, 126, 70000, 1 << 20} {
		msg := bytes.Repeat([]byte{byte(n)}, n)
		if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.ReadMessage()
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("%d bytes: got %d, %v", n, len(got), err)
		}
	}

	// A certificate reload leaves the open session alone and serves new
	// handshakes with the new certificate.
	front2 := ca.Issue(t, "front2", testpki.Options{Names: []string{"ws.example.com"}})
	if err := ts.Reload(tlsconf.ServerOptions{Certificates: []tlsconf.CertFiles{{CertFile: front2.CertFile, KeyFile: front2.KeyFile}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte("after reload")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.ReadMessage(); err != nil || string(got) != "after reload" {
		t.Fatalf("session after reload: %q %v", got, err)
	}
	c2, _, err := d.Dial("wss://"+p.ln.Addr().String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cn := c2.NetConn().(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "front2" {
		t.Fatalf("new handshake got %s", cn)
	}
	c2.Close()
	c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""))
	c.ReadMessage()
	c.Close()
	p.waitSessions(t, 0)
}

func TestTLSIdleSessionPings(t *testing.T) {
	ca := testpki.NewCA(t)
	front := ca.Issue(t, "front", testpki.Options{Names: []string{"localhost"}})
	ts, _ := tlsconf.NewServer(tlsconf.ServerOptions{Certificates: []tlsconf.CertFiles{{CertFile: front.CertFile, KeyFile: front.KeyFile}}})
	b := startBackend(t, "b0")
	p := startTLSProxy(t, fmt.Sprintf(timeoutConfig, "40ms", "400ms", "0s"), ts, b.addr())
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}}
	c, _, err := d.Dial("wss://"+p.ln.Addr().String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pings := make(chan struct{}, 100)
	c.SetPingHandler(func(s string) error {
		pings <- struct{}{}
		return c.WriteControl(websocket.PongMessage, []byte(s), time.Now().Add(time.Second))
	})
	go c.ReadMessage()
	for i := 0; i < 15; i++ {
		select {
		case <-pings:
		case <-time.After(5 * time.Second):
			t.Fatalf("ping %d never came over TLS", i)
		}
	}
	if p.srv.Sessions() != 1 {
		t.Fatal("TLS session ended although the client answered pings")
	}
}

// setPoolTLS turns on TLS to the backends of every pool of a running proxy.
func setPoolTLS(t *testing.T, p *testProxy, pt config.PoolTLS) {
	t.Helper()
	tb := p.srv.table.Load()
	for _, pl := range tb.pools {
		base, err := tlsconf.NewClient(tlsconf.ClientOptions{CAFile: pt.CAFile, ServerName: pt.ServerName})
		if err != nil {
			t.Fatal(err)
		}
		pl.tls = map[string]*tls.Config{}
		for addr := range pl.clients {
			bt := base.Clone()
			bt.ServerName, _, _ = net.SplitHostPort(addr)
			pl.tls[addr] = bt
		}
	}
}

var _ = http.StatusOK
