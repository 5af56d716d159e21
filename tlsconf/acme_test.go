package tlsconf

import (
	"crypto/tls"
	"errors"
	"testing"

	"github.com/wsproxy/wsproxy/internal/testpki"
)

// certSource serves fixed certificates for its names, and a distinct one
// to acme-tls/1 challenges, as an ACME manager does.
type certSource struct {
	certs     map[string]*tls.Certificate
	challenge *tls.Certificate
}

func (s certSource) Has(name string) bool { _, ok := s.certs[name]; return ok }

func (s certSource) GetCertificate(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if len(h.SupportedProtos) == 1 && h.SupportedProtos[0] == alpnACME {
		return s.challenge, nil
	}
	if c := s.certs[h.ServerName]; c != nil {
		return c, nil
	}
	return nil, errors.New("no certificate yet")
}

func load(t *testing.T, l testpki.Leaf) *tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(l.CertFile, l.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

// SNI picks an exact static name, then an ACME domain, then a static
// wildcard, then the first static pair; acme-tls/1 goes to the ACME source
// for its domains only; an ACME-only listener refuses other names.
func TestSNIWithACME(t *testing.T) {
	ca := testpki.NewCA(t)
	first := ca.Issue(t, "first", testpki.Options{Names: []string{"first.test"}})
	exact := ca.Issue(t, "exact", testpki.Options{Names: []string{"chat.example.com"}})
	wild := ca.Issue(t, "wild", testpki.Options{Names: []string{"*.example.com"}})
	acmeLeaf := ca.Issue(t, "acme", testpki.Options{Names: []string{"ws.example.com", "chat.example.com"}})
	token := ca.Issue(t, "token", testpki.Options{Names: []string{"ws.example.com"}})
	src := certSource{
		certs:     map[string]*tls.Certificate{"ws.example.com": load(t, acmeLeaf), "chat.example.com": load(t, acmeLeaf), "new.example.com": nil},
		challenge: load(t, token),
	}
	mixed, err := NewServer(ServerOptions{Certificates: []CertFiles{
		{first.CertFile, first.KeyFile}, {wild.CertFile, wild.KeyFile}, {exact.CertFile, exact.KeyFile},
	}, ACME: src})
	if err != nil {
		t.Fatal(err)
	}
	only, err := NewServer(ServerOptions{ACME: src})
	if err != nil {
		t.Fatalf("an ACME-only listener: %v", err)
	}
	mixedAddr, onlyAddr := serve(t, mixed.Config()), serve(t, only.Config())
	for _, tc := range []struct {
		name, addr, sni string
		protos          []string
		want            string // CommonName served; "" for a refused handshake
	}{
		{"exact static before ACME", mixedAddr, "chat.example.com", nil, "exact"},
		{"ACME before wildcard", mixedAddr, "ws.example.com", nil, "acme"},
		{"ACME domain without a certificate yet", mixedAddr, "new.example.com", nil, ""},
		{"wildcard", mixedAddr, "other.example.com", nil, "wild"},
		{"first as default", mixedAddr, "unknown.test", nil, "first"},
		{"challenge", mixedAddr, "ws.example.com", []string{alpnACME}, "token"},
		{"challenge outside the domains", mixedAddr, "other.example.com", []string{alpnACME}, ""},
		{"ACME only: domain", onlyAddr, "ws.example.com", []string{"http/1.1"}, "acme"},
		{"ACME only: other name refused", onlyAddr, "other.example.com", nil, ""},
		{"ACME only: no SNI refused", onlyAddr, "", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := handshake(tc.addr, &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true, NextProtos: tc.protos})
			if tc.want == "" {
				if err == nil {
					t.Fatalf("served %q, want a refused handshake", st.PeerCertificates[0].Subject.CommonName)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := st.PeerCertificates[0].Subject.CommonName; got != tc.want {
				t.Fatalf("served %q, want %q", got, tc.want)
			}
			if len(tc.protos) == 1 && st.NegotiatedProtocol != tc.protos[0] {
				t.Fatalf("negotiated %q, want %q", st.NegotiatedProtocol, tc.protos[0])
			}
		})
	}
	// A reload keeps the ACME source.
	if err := mixed.Reload(ServerOptions{Certificates: []CertFiles{{first.CertFile, first.KeyFile}}}); err != nil {
		t.Fatal(err)
	}
	if st, err := handshake(mixedAddr, &tls.Config{ServerName: "ws.example.com", InsecureSkipVerify: true}); err != nil || st.PeerCertificates[0].Subject.CommonName != "acme" {
		t.Fatalf("after a reload: %v", err)
	}
}
