package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsproxy/wsproxy/internal/pebbletest"
)

// wssDial opens a wss session to 127.0.0.1:port for name, verifying the
// chain against roots, and returns the leaf's serial.
func wssDial(t *testing.T, port int, name string, roots *x509.CertPool) (*websocket.Conn, *big.Int) {
	t.Helper()
	d := websocket.Dialer{
		TLSClientConfig:  &tls.Config{RootCAs: roots, ServerName: name},
		HandshakeTimeout: 5 * time.Second,
		NetDial: func(network, _ string) (net.Conn, error) {
			return net.DialTimeout(network, fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
		},
	}
	c, resp, err := d.Dial(fmt.Sprintf("wss://%s:%d/ws", name, port), nil)
	if err != nil {
		t.Fatalf("wss to %s: %v", name, err)
	}
	resp.Body.Close()
	t.Cleanup(func() { c.Close() })
	return c, c.NetConn().(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber
}

// A certificate obtained from pebble (TLS-ALPN-01 answered by the running
// proxy) is served to wss clients; its renewal is swapped in while a
// session stays open, and the metrics say so. Restarted with pebble down,
// the proxy serves the last certificate it stored.
func TestACMERenewalKeepsSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	ports := pebbletest.FreePorts(t, 3)
	peb := pebbletest.Start(t, pebbletest.Options{TLSPort: ports[0], HTTPPort: ports[1],
		Names: []string{"ws.example.com"}, Validity: 30 * time.Second})
	backend := echoBackend(t, "b1")
	cfg := writeConfig(t, fmt.Sprintf(`
listeners:
  - address: "127.0.0.1:%d"
    tls:
      acme:
        domains: [ws.example.com]
        email: ops@example.com
        directory_url: %s
        ca_file: %s
        storage: %s
        renew_before: 28s
admin: {address: "127.0.0.1:%d"}
log: {level: info, format: json}
routes: [{path: /ws, pool: p}]
pools: {p: {backends: [{address: %q}]}}
`, ports[0], peb.DirectoryURL, peb.CAFile, filepath.Join(t.TempDir(), "acme"), ports[2], backend))
	p := startProcess(t, "-config", cfg)
	waitLog(t, p, `"acme: certificate obtained"`)
	roots := peb.Roots(t)

	c1, first := wssDial(t, ports[0], "ws.example.com", roots)
	if got := exchange(t, c1, "before"); got != "b1:before" {
		t.Fatalf("got %q", got)
	}
	waitLog(t, p, `"acme: certificate renewed"`)
	if got := exchange(t, c1, "after"); got != "b1:after" {
		t.Fatalf("the session open across the renewal got %q", got)
	}
	c2, second := wssDial(t, ports[0], "ws.example.com", roots)
	if second.Cmp(first) == 0 {
		t.Fatalf("a new session still gets serial %x after the renewal", first)
	}
	if got := exchange(t, c2, "new"); got != "b1:new" {
		t.Fatalf("got %q", got)
	}

	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", ports[2]))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`wsproxy_acme_renewal_last_successful{domain="ws.example.com"} 1`,
		`wsproxy_acme_certificate_expiry_timestamp_seconds{domain="ws.example.com"} `,
		`wsproxy_acme_renewal_last_timestamp_seconds{domain="ws.example.com"} `,
	} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("metrics lack %q:\n%s", want, body)
		}
	}

	// Restart with the CA down: the stored certificate, the last one
	// issued (renewals go on every few seconds here), is served.
	c1.Close()
	c2.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	peb.Stop()
	serials := regexp.MustCompile(`"serial":"([0-9a-f]+)"`).FindAllStringSubmatch(p.stderr.String(), -1)
	last := serials[len(serials)-1][1]
	p2 := startProcess(t, "-config", cfg)
	waitLog(t, p2, `"acme: certificate loaded from storage"`)
	c3, third := wssDial(t, ports[0], "ws.example.com", roots)
	if third.Text(16) != last {
		t.Fatalf("after a restart with the CA down: serial %x, want the last issued %s", third, last)
	}
	if got := exchange(t, c3, "again"); got != "b1:again" {
		t.Fatalf("got %q", got)
	}
}

// check validates an acme block without contacting the CA: the directory
// below answers nothing, yet a good block passes; each bad one names its
// key.
func TestCheckACMEBlock(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	closed := freePort(t) // nothing listens: check must not ask
	for _, tc := range []struct {
		name, acme, want string
	}{
		{"good, storage created on first run", fmt.Sprintf(`{domains: [ws.example.com], directory_url: "https://%s/dir", storage: %s}`, closed, filepath.Join(dir, "new", "acme")), ""},
		{"storage is a file", fmt.Sprintf(`{domains: [ws.example.com], storage: %s}`, file), "listeners[0].tls.acme: acmecert: storage " + file + ": " + file + " is not a directory"},
		{"storage under a file", fmt.Sprintf(`{domains: [ws.example.com], storage: %s}`, filepath.Join(file, "acme")), "is not a directory"},
		{"no storage", `{domains: [ws.example.com]}`, "listeners[0].tls.acme.storage"},
		{"no domains", fmt.Sprintf(`{domains: [], storage: %s}`, dir), "listeners[0].tls.acme.domains"},
		{"wildcard", fmt.Sprintf(`{domains: ["*.example.com"], storage: %s}`, dir), "needs the DNS-01 challenge"},
		{"IP address", fmt.Sprintf(`{domains: ["127.0.0.1"], storage: %s}`, dir), "an IP address"},
		{"plain http directory", fmt.Sprintf(`{domains: [ws.example.com], directory_url: "http://ca.example/dir", storage: %s}`, dir), "listeners[0].tls.acme.directory_url"},
		{"ca_file not PEM", fmt.Sprintf(`{domains: [ws.example.com], ca_file: %s, storage: %s}`, file, dir), "holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeConfig(t, fmt.Sprintf(`
listeners: [{address: "127.0.0.1:0", tls: {acme: %s}}]
admin: {address: ""}
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: "127.0.0.1:1"}]}}
`, tc.acme))
			code, out, errOut := runCmd("check", "-config", cfg)
			if tc.want == "" {
				if code != 0 || !strings.Contains(out, "acme:") {
					t.Fatalf("exit %d: %s%s", code, errOut, out)
				}
				if _, err := os.Stat(filepath.Join(dir, "new")); err == nil {
					t.Fatal("check created the storage directory")
				}
				return
			}
			if code != 1 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, want 1 and %q in:\n%s", code, tc.want, errOut)
			}
		})
	}
}

// With a plain listener on port 80 the proxy answers HTTP-01 there before
// routing: pebble's TLS-ALPN-01 attempt goes to a port nothing listens on,
// so only HTTP-01 through the proxy can get the certificate.
func TestACMEHTTP01OnPort80(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:80")
	if err != nil {
		t.Skipf("port 80 is not free here: %v", err)
	}
	ln.Close()
	ports := pebbletest.FreePorts(t, 3, 80)
	peb := pebbletest.Start(t, pebbletest.Options{TLSPort: ports[1], HTTPPort: 80, Names: []string{"ws.example.com"}})
	backend := echoBackend(t, "b1")
	cfg := writeConfig(t, fmt.Sprintf(`
listeners:
  - address: "127.0.0.1:%d"
    tls:
      acme: {domains: [ws.example.com], directory_url: %s, ca_file: %s, storage: %s}
  - address: "127.0.0.1:80"
admin: {address: "127.0.0.1:%d"}
log: {level: info, format: json}
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: %q}]}}
`, ports[0], peb.DirectoryURL, peb.CAFile, filepath.Join(t.TempDir(), "acme"), ports[2], backend))
	p := startProcess(t, "-config", cfg)
	waitLog(t, p, `"acme: certificate obtained"`)
	if !strings.Contains(p.stderr.String(), `"detail":"tls-alpn-01: `) {
		t.Fatalf("TLS-ALPN-01 did not fail first as arranged:\n%s", p.stderr.String())
	}
	c, _ := wssDial(t, ports[0], "ws.example.com", peb.Roots(t))
	if got := exchange(t, c, "hi"); got != "b1:hi" {
		t.Fatalf("got %q", got)
	}
	// Other paths on port 80 are routed as before.
	resp, err := http.Get("http://127.0.0.1:80/.well-known/other")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "b1" {
		t.Fatalf("a plain request on port 80 got %d %q, want the backend's answer", resp.StatusCode, body)
	}
}
