package tlsconf

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/testpki"
)

// serve accepts TLS connections with cfg until the test ends and
// completes each handshake.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if c.(*tls.Conn).Handshake() == nil {
					var b [1]byte
					c.Read(b[:])
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// handshake connects and returns the certificate the server chose.
func handshake(addr string, cfg *tls.Config) (*tls.ConnectionState, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	st := c.ConnectionState()
	return &st, nil
}

func TestSNISelection(t *testing.T) {
	ca := testpki.NewCA(t)
	first := ca.Issue(t, "first", testpki.Options{Names: []string{"first.test"}})
	exact := ca.Issue(t, "exact", testpki.Options{Names: []string{"chat.example.com"}})
	wild := ca.Issue(t, "wild", testpki.Options{Names: []string{"*.example.com"}})
	s, err := NewServer(ServerOptions{Certificates: []CertFiles{
		{first.CertFile, first.KeyFile}, {wild.CertFile, wild.KeyFile}, {exact.CertFile, exact.KeyFile},
	}})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s.Config())
	for name, want := range map[string]string{
		"chat.example.com": "exact",
		"CHAT.example.com": "exact",
		"game.example.com": "wild",
		"first.test":       "first",
		"other.org":        "first",
		"":                 "first",
	} {
		st, err := handshake(addr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("%q: %v", name, err)
		}
		if got := st.PeerCertificates[0].Subject.CommonName; got != want {
			t.Errorf("SNI %q got %s, want %s", name, got, want)
		}
		if st.NegotiatedProtocol != "" && st.NegotiatedProtocol != "http/1.1" {
			t.Errorf("ALPN %q", st.NegotiatedProtocol)
		}
	}
}

func TestVersionsAndSuites(t *testing.T) {
	ca := testpki.NewCA(t)
	leaf := ca.Issue(t, "leaf", testpki.Options{Names: []string{"localhost"}})
	s12, _ := NewServer(ServerOptions{Certificates: []CertFiles{{leaf.CertFile, leaf.KeyFile}}})
	s13, _ := NewServer(ServerOptions{Certificates: []CertFiles{{leaf.CertFile, leaf.KeyFile}}, MinVersion: "1.3"})
	a12, a13 := serve(t, s12.Config()), serve(t, s13.Config())
	only12 := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", MaxVersion: tls.VersionTLS12}
	st, err := handshake(a12, only12)
	if err != nil || st.Version != tls.VersionTLS12 {
		t.Fatalf("1.2 client on a 1.2 listener: %v", err)
	}
	if !strings.Contains(tls.CipherSuiteName(st.CipherSuite), "GCM") && !strings.Contains(tls.CipherSuiteName(st.CipherSuite), "CHACHA20") {
		t.Fatalf("suite %s is not AEAD", tls.CipherSuiteName(st.CipherSuite))
	}
	if _, err := handshake(a13, only12); err == nil {
		t.Fatal("1.2 client accepted by a min_version 1.3 listener")
	}
	// A TLS 1.2 client offering only CBC suites is refused.
	cbc := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}
	if _, err := handshake(a12, cbc); err == nil {
		t.Fatal("CBC-only client accepted")
	}
}

func TestClientCertificates(t *testing.T) {
	ca := testpki.NewCA(t)
	leaf := ca.Issue(t, "leaf", testpki.Options{Names: []string{"localhost"}})
	client := ca.Issue(t, "client", testpki.Options{Client: true})
	other := testpki.NewCA(t)
	stranger := other.Issue(t, "stranger", testpki.Options{Client: true})
	clientCert, _ := tls.LoadX509KeyPair(client.CertFile, client.KeyFile)
	strangerCert, _ := tls.LoadX509KeyPair(stranger.CertFile, stranger.KeyFile)
	for _, mode := range []string{"require", "request"} {
		t.Run(mode, func(t *testing.T) {
			s, err := NewServer(ServerOptions{Certificates: []CertFiles{{leaf.CertFile, leaf.KeyFile}}, ClientCAFile: ca.File, ClientAuth: mode})
			if err != nil {
				t.Fatal(err)
			}
			addr := serve(t, s.Config())
			config := func(certs ...tls.Certificate) *tls.Config {
				return &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: certs}
			}
			if err := roundTrip(addr, config(clientCert)); err != nil {
				t.Fatalf("valid client certificate refused: %v", err)
			}
			if err := roundTrip(addr, config(strangerCert)); err == nil {
				t.Fatal("certificate from another CA accepted")
			}
			err = roundTrip(addr, config())
			if mode == "require" && err == nil {
				t.Fatal("no client certificate accepted under require")
			}
			if mode == "request" && err != nil {
				t.Fatalf("no client certificate refused under request: %v", err)
			}
		})
	}
}

// roundTrip completes a handshake and reads: with TLS 1.3 the server's
// verdict on a client certificate arrives after the client's handshake.
func roundTrip(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		return err
	}
	var b [1]byte
	_, err = c.Read(b[:])
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return nil // the server kept the connection: accepted
	}
	if err != nil && strings.Contains(err.Error(), "EOF") {
		return nil // the test server closes after one read: accepted
	}
	return err
}

func TestReload(t *testing.T) {
	ca := testpki.NewCA(t)
	v1 := ca.Issue(t, "v1", testpki.Options{Names: []string{"localhost"}})
	v2 := ca.Issue(t, "v2", testpki.Options{Names: []string{"localhost"}})
	expired := ca.Issue(t, "expired", testpki.Options{Names: []string{"localhost"}, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	s, err := NewServer(ServerOptions{Certificates: []CertFiles{{v1.CertFile, v1.KeyFile}}})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s.Config())
	serving := func() string {
		st, err := handshake(addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		return st.PeerCertificates[0].Subject.CommonName
	}
	if serving() != "v1" {
		t.Fatal("not serving v1")
	}
	for name, bad := range map[string]ServerOptions{
		"missing file":   {Certificates: []CertFiles{{v2.CertFile + ".nope", v2.KeyFile}}},
		"mismatched key": {Certificates: []CertFiles{{v2.CertFile, v1.KeyFile}}},
		"expired":        {Certificates: []CertFiles{{expired.CertFile, expired.KeyFile}}},
		"no certificate": {},
	} {
		if err := s.Reload(bad); err == nil {
			t.Errorf("%s: reload accepted", name)
		}
		if got := serving(); got != "v1" {
			t.Fatalf("after a refused reload (%s) serving %s", name, got)
		}
	}
	if err := s.Reload(ServerOptions{Certificates: []CertFiles{{v2.CertFile, v2.KeyFile}}}); err != nil {
		t.Fatal(err)
	}
	if got := serving(); got != "v2" {
		t.Fatalf("after reload serving %s", got)
	}
}

func TestClientConfig(t *testing.T) {
	ca := testpki.NewCA(t)
	leaf := ca.Issue(t, "backend", testpki.Options{Names: []string{"backend.internal"}})
	s, _ := NewServer(ServerOptions{Certificates: []CertFiles{{leaf.CertFile, leaf.KeyFile}}})
	addr := serve(t, s.Config())
	cfg, err := NewClient(ClientOptions{CAFile: ca.File, ServerName: "backend.internal"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(addr, cfg); err != nil {
		t.Fatalf("verified backend refused: %v", err)
	}
	wrongName, _ := NewClient(ClientOptions{CAFile: ca.File, ServerName: "other.internal"})
	if _, err := handshake(addr, wrongName); err == nil {
		t.Fatal("wrong server name accepted")
	}
	system, _ := NewClient(ClientOptions{ServerName: "backend.internal"})
	if _, err := handshake(addr, system); err == nil {
		t.Fatal("certificate from a private CA accepted with system roots")
	}
	if _, err := NewClient(ClientOptions{CAFile: ca.File + ".missing"}); err == nil {
		t.Fatal("missing CA file accepted")
	}
}
