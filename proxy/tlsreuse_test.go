package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/internal/testpki"
)

const tlsPoolConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
routes:
  - {path: /, pool: p}
pools:
  p:
    tls: {enabled: true, ca_file: %q}
    backends: [%s]
`

// TestUpdateKeepsTLSConnections: an Update that changes a TLS pool's
// members but neither its TLS settings nor their files (a backend found
// in DNS, a reload of other keys) keeps the keep-alive connections to the
// backends that stay; one whose CA file was rewritten renews them, so
// that a reload picks renewed certificates up.
func TestUpdateKeepsTLSConnections(t *testing.T) {
	ca := testpki.NewCA(t)
	back := ca.Issue(t, "back", testpki.Options{Names: []string{"127.0.0.1"}})
	cert, err := tls.LoadX509KeyPair(back.CertFile, back.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("tls") }}
	go srv.Serve(tls.NewListener(cl, &tls.Config{Certificates: []tls.Certificate{cert}})) //nolint:errcheck
	t.Cleanup(func() { srv.Shutdown() })
	addr := ln.Addr().String()
	parse := func(backends string) *config.Config {
		t.Helper()
		c, err := config.Parse("test.yaml", []byte(fmt.Sprintf(tlsPoolConfig, ca.File, backends)))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	p := startProxy(t, fmt.Sprintf(tlsPoolConfig, ca.File, fmt.Sprintf("{address: %q}", addr)))
	requests := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			if code, body := get(t, "http://"+p.ln.Addr().String()+"/page"); code != 200 || body != "tls" {
				t.Fatalf("request %d to the TLS backend: %d %q", i, code, body)
			}
		}
	}
	requests(5)
	// A second member joins with weight 0 (so every request stays on the
	// first): the pool's TLS settings and files are unchanged.
	if err := p.srv.Update(parse(fmt.Sprintf("{address: %q}, {address: \"127.0.0.1:1\", weight: 0}", addr))); err != nil {
		t.Fatal(err)
	}
	requests(5)
	if n := cl.n.Load(); n != 1 {
		t.Fatalf("%d TLS connections after an Update that changed no TLS setting or file, want the one kept alive", n)
	}
	// The CA file is written anew (same content, a later time): the next
	// Update renews the connections.
	data, err := os.ReadFile(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca.File, data, 0o644); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(2 * time.Second)
	if err := os.Chtimes(ca.File, later, later); err != nil {
		t.Fatal(err)
	}
	if err := p.srv.Update(parse(fmt.Sprintf("{address: %q}", addr))); err != nil {
		t.Fatal(err)
	}
	requests(1)
	if n := cl.n.Load(); n != 2 {
		t.Fatalf("%d TLS connections after the CA file changed, want a new one (2)", n)
	}
}
