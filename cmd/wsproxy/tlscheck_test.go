package main

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsproxy/wsproxy/internal/testpki"
)

const tlsCheckConfig = `
listeners:
  - address: "127.0.0.1:0"
    tls:
      certificates:
        - {cert_file: %q, key_file: %q}
      client_ca_file: %q
admin: {address: ""}
routes: [{path: /, pool: p}]
pools:
  p:
    backends: [{address: "127.0.0.1:1"}]
    tls: {enabled: true, ca_file: %q}
`

// TestCheckLoadsTLSFiles: check refuses, with exit 1 and the key and the
// reason, every TLS file that the proxy could not serve with, and run
// refuses the same files with the same message; a good set passes.
func TestCheckLoadsTLSFiles(t *testing.T) {
	ca := testpki.NewCA(t)
	site := ca.Issue(t, "site", testpki.Options{Names: []string{"localhost"}})
	other := ca.Issue(t, "other", testpki.Options{Names: []string{"localhost"}})
	expired := ca.Issue(t, "expired", testpki.Options{
		Names: []string{"localhost"}, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not-pem.txt")
	if err := os.WriteFile(notPEM, []byte("this is not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                string
		cert, key, clientCA string
		poolCA              string
		wantKey, wantReason string
	}{
		{"key of another certificate", site.CertFile, other.KeyFile, ca.File, ca.File,
			"listeners[0].tls.certificates[0]: ", "private key does not match public key"},
		{"certificate not PEM", notPEM, site.KeyFile, ca.File, ca.File,
			"listeners[0].tls.certificates[0]: ", "failed to find any PEM data in certificate input"},
		{"certificate in key_file", site.CertFile, site.CertFile, ca.File, ca.File,
			"listeners[0].tls.certificates[0]: ", "found a certificate rather than a key"},
		{"expired certificate", expired.CertFile, expired.KeyFile, ca.File, ca.File,
			"listeners[0].tls.certificates[0]: ", "expired on"},
		{"client CA not PEM", site.CertFile, site.KeyFile, notPEM, ca.File,
			"listeners[0].tls.client_ca_file: ", "holds no PEM certificate"},
		{"pool CA not PEM", site.CertFile, site.KeyFile, ca.File, notPEM,
			"pools.p.tls.ca_file: ", "holds no PEM certificate"},
		{"good", site.CertFile, site.KeyFile, ca.File, ca.File, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeConfig(t, fmt.Sprintf(tlsCheckConfig, tc.cert, tc.key, tc.clientCA, tc.poolCA))
			code, out, errOut := runCmd("check", "-config", cfg)
			if tc.wantKey == "" {
				if code != 0 || !strings.Contains(out, "configuration is valid") {
					t.Fatalf("exit %d, want 0:\n%s%s", code, out, errOut)
				}
				return
			}
			if code != 1 {
				t.Fatalf("check: exit %d, want 1:\n%s%s", code, out, errOut)
			}
			want := cfg + ": " + tc.wantKey
			if lines := strings.Split(strings.TrimSpace(errOut), "\n"); len(lines) != 1 ||
				!strings.HasPrefix(lines[0], want) || !strings.Contains(lines[0], tc.wantReason) {
				t.Fatalf("check said:\n%s\nwant one line starting %q and containing %q", errOut, want, tc.wantReason)
			}
			// run refuses the same file with the same message, before it
			// listens on anything.
			runCode, _, runErr := runCmd("-config", cfg)
			if runCode != 1 || runErr != errOut {
				t.Fatalf("run: exit %d, said %q; want 1 and check's %q", runCode, runErr, errOut)
			}
		})
	}
}

// TestCheckReportsEveryTLSProblem: two bad certificates on two listeners
// and a bad pool client certificate are reported together, one line each.
func TestCheckReportsEveryTLSProblem(t *testing.T) {
	ca := testpki.NewCA(t)
	a := ca.Issue(t, "a", testpki.Options{Names: []string{"a.example"}})
	b := ca.Issue(t, "b", testpki.Options{Names: []string{"b.example"}})
	cfg := writeConfig(t, fmt.Sprintf(`
listeners:
  - address: "127.0.0.1:0"
    tls:
      certificates:
        - {cert_file: %[1]q, key_file: %[2]q}
        - {cert_file: %[3]q, key_file: %[2]q}
  - address: "127.0.0.1:0"
    tls:
      certificates:
        - {cert_file: %[1]q, key_file: %[1]q}
admin: {address: ""}
routes: [{path: /, pool: p}]
pools:
  p:
    backends: [{address: "127.0.0.1:1"}]
`, a.CertFile, a.KeyFile, b.CertFile))
	code, _, errOut := runCmd("check", "-config", cfg)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	want := []string{"listeners[0].tls.certificates[1]: ", "listeners[1].tls.certificates[0]: "}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), errOut)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], cfg+": "+w) {
			t.Errorf("line %d: %q, want it to start %q", i, lines[i], cfg+": "+w)
		}
	}
}

// TestReloadRefusesBadTLSFiles: a reload naming a certificate that cannot
// be served fails, the log names the key, and the listener keeps serving
// the certificate it had.
func TestReloadRefusesBadTLSFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	ca := testpki.NewCA(t)
	site := ca.Issue(t, "site", testpki.Options{Names: []string{"127.0.0.1"}})
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	const conf = `
listeners:
  - address: %q
    tls: {certificates: [{cert_file: %q, key_file: %q}]}
admin: {address: %q}
log: {level: info, format: json}
routes: [{path: /, pool: p}]
pools:
  p: {backends: [{address: %q}]}
`
	cfgPath := writeConfig(t, fmt.Sprintf(conf, listen, site.CertFile, site.KeyFile, admin, backend))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)

	// The certificate where the key belongs.
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(conf, listen, site.CertFile, site.CertFile, admin, backend)), 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, p, "reload failed")
	var line string
	for _, l := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(l, "reload failed") {
			line = l
		}
	}
	if !strings.Contains(line, "listeners[0].tls.certificates[0]: ") || !strings.Contains(line, "found a certificate rather than a key") {
		t.Fatalf("reload failure does not name the key and the reason:\n%s", line)
	}
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}
	c, _, err := d.Dial("wss://"+listen+"/", nil)
	if err != nil {
		t.Fatalf("TLS listener after the refused reload: %v", err)
	}
	defer c.Close()
	if got := exchange(t, c, "hi"); got != "b1:hi" {
		t.Fatalf("got %q", got)
	}
}
