// Package pebbletest runs pebble, the ACME test CA, for tests: on loopback
// ports, validating challenges for real against the ports a test names,
// with names resolved by an in-process DNS server.
package pebbletest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/wsproxy/wsproxy/internal/testpki"
)

// Options configure a pebble.
type Options struct {
	// TLSPort and HTTPPort are where pebble connects, on a name's
	// address, to validate TLS-ALPN-01 and HTTP-01 challenges.
	TLSPort, HTTPPort int
	// Names resolve to 127.0.0.1; any other name is NXDOMAIN, so its
	// challenges fail.
	Names []string
	// Validity is the lifetime of the certificates issued; zero means
	// pebble's default (about five years).
	Validity time.Duration
}

// Pebble is a running pebble.
type Pebble struct {
	// DirectoryURL is the ACME directory.
	DirectoryURL string
	// CAFile holds the CA of pebble's own HTTPS certificate, for the ACME
	// client's ca_file.
	CAFile string

	mgmt   string
	client *http.Client
	cmd    *exec.Cmd
	done   chan struct{}
	out    *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Binary returns pebble's path, skipping t when it is not installed.
func Binary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{os.Getenv("PEBBLE"), "/usr/bin/pebble"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if p, err := exec.LookPath("pebble"); err == nil {
		return p
	}
	t.Skip("pebble, the ACME test server, is not installed (apt-get install pebble)")
	return ""
}

// FreePorts returns n distinct loopback TCP ports, none of avoid, free a
// moment ago. They are drawn below the kernel's ephemeral range when it
// leaves room, so that no outgoing connection (pebble's, the test's) takes
// one before the test listens on it.
func FreePorts(t testing.TB, n int, avoid ...int) []int {
	t.Helper()
	var ports []int
	var held []net.Listener
	defer func() {
		for _, ln := range held {
			ln.Close()
		}
	}()
	low := ephemeralLow()
	for tries := 0; len(ports) < n; tries++ {
		addr := "127.0.0.1:0"
		if low > 11000 && tries < 1000 {
			addr = fmt.Sprintf("127.0.0.1:%d", 10000+mrand.IntN(low-10000))
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			if addr == "127.0.0.1:0" {
				t.Fatal(err)
			}
			continue
		}
		held = append(held, ln)
		p := ln.Addr().(*net.TCPAddr).Port
		if !slices.Contains(avoid, p) {
			ports = append(ports, p)
		}
	}
	return ports
}

// ephemeralLow is the first port of the kernel's ephemeral range; 0 when
// unknown.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil {
		return 0
	}
	return low
}

// Start runs pebble until t ends, and waits until its directory answers.
func Start(t testing.TB, opts Options) *Pebble {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	ca := testpki.NewCA(t)
	leaf := ca.Issue(t, "pebble", testpki.Options{Names: []string{"127.0.0.1", "localhost"}})
	ports := FreePorts(t, 2, opts.TLSPort, opts.HTTPPort)
	api, mgmt := ports[0], ports[1]
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":           fmt.Sprintf("127.0.0.1:%d", api),
		"managementListenAddress": fmt.Sprintf("127.0.0.1:%d", mgmt),
		"certificate":             leaf.CertFile,
		"privateKey":              leaf.KeyFile,
		"httpPort":                opts.HTTPPort,
		"tlsPort":                 opts.TLSPort,
		"ocspResponderURL":        "",
	}}
	if opts.Validity > 0 {
		conf["pebble"].(map[string]any)["certificateValidityPeriod"] = int(opts.Validity / time.Second)
	}
	b, _ := json.Marshal(conf)
	confFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(confFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	dnsAddr := startDNS(t, opts.Names, opts.TLSPort, opts.HTTPPort, api, mgmt)
	p := &Pebble{
		DirectoryURL: fmt.Sprintf("https://127.0.0.1:%d/dir", api),
		CAFile:       ca.File,
		mgmt:         fmt.Sprintf("https://127.0.0.1:%d", mgmt),
		client:       &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}},
		done:         make(chan struct{}),
		out:          &syncBuffer{},
	}
	p.cmd = exec.Command(bin, "-config", confFile, "-dnsserver", dnsAddr, "-strict=false")
	p.cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pebble's output:\n%s", p.out.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := p.client.Get(p.DirectoryURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.done:
			t.Fatalf("pebble exited:\n%s", p.out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble's directory never answered: %v\n%s", err, p.out.String())
		}
	}
}

// Roots returns a pool with the root that signs pebble's issued
// certificates (fetched from its management interface; a new one each run).
func (p *Pebble) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	resp, err := p.client.Get(p.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	pemData, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("pebble's root: %d %v", resp.StatusCode, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatalf("pebble's root is not PEM: %q", pemData)
	}
	return pool
}

// Output is what pebble has logged.
func (p *Pebble) Output() string { return p.out.String() }

// Stop ends pebble and waits for it.
func (p *Pebble) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// startDNS serves A 127.0.0.1 for names (and empty answers for their
// other types), NXDOMAIN for the rest, over UDP and TCP on one port (none
// of avoid).
func startDNS(t testing.TB, names []string, avoid ...int) string {
	t.Helper()
	known := map[string]bool{}
	for _, n := range names {
		known[dns.Fqdn(strings.ToLower(n))] = true
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		for _, q := range r.Question {
			if !known[strings.ToLower(q.Name)] {
				m.Rcode = dns.RcodeNameError
				continue
			}
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		_ = w.WriteMsg(m)
	})
	// The same port over UDP and TCP: the first free for both.
	var pc net.PacketConn
	var ln net.Listener
	for _, port := range FreePorts(t, 20, avoid...) {
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			continue
		}
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if ln == nil {
		t.Fatal("no loopback port free for DNS over both UDP and TCP")
	}
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	go udp.ActivateAndServe() //nolint:errcheck
	go tcp.ActivateAndServe() //nolint:errcheck
	t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })
	return pc.LocalAddr().String()
}
