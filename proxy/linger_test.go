package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/wsproxy/wsproxy/internal/testpki"
	"github.com/wsproxy/wsproxy/tlsconf"
)

// TestRefusedUploadGetsItsAnswer posts large bodies to a route whose only
// backend refuses connections, over a plain and a TLS listener: the
// client reads its 502 every time instead of "connection reset by peer",
// which a close with the upload still unread would make the kernel send.
func TestRefusedUploadGetsItsAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	cfg := fmt.Sprintf(`
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
routes: [{path: /, pool: p}]
pools:
  p: {health: {passive_failures: 0}, backends: [{address: %q}]}
`, dead)
	ca := testpki.NewCA(t)
	front := ca.Issue(t, "front", testpki.Options{Names: []string{"localhost"}})
	ts, err := tlsconf.NewServer(tlsconf.ServerOptions{Certificates: []tlsconf.CertFiles{{CertFile: front.CertFile, KeyFile: front.KeyFile}}})
	if err != nil {
		t.Fatal(err)
	}
	plain := startProxy(t, cfg)
	secure := startTLSProxy(t, cfg, ts)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	body := bytes.Repeat([]byte("x"), 10<<20)
	for _, base := range []string{"http://" + plain.ln.Addr().String(), "https://" + secure.ln.Addr().String()} {
		for i := 0; i < 3; i++ {
			for _, chunked := range []bool{false, true} {
				var r io.Reader = bytes.NewReader(body)
				if chunked {
					r = io.MultiReader(r) // no length known: sent chunked
				}
				resp, err := client.Post(base+"/upload", "application/octet-stream", r)
				if err != nil {
					t.Fatalf("%s, chunked %v, try %d: %v; want the 502", base, chunked, i, err)
				}
				io.Copy(io.Discard, resp.Body) //nolint:errcheck
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadGateway {
					t.Fatalf("%s: status %d, want 502", base, resp.StatusCode)
				}
			}
		}
	}
}
