// Package tlsconf builds the proxy's TLS configurations: termination on
// listeners (several certificates chosen by SNI, optional client
// certificates, certificates that reload without a restart) and TLS to
// backends.
//
// A Server is safe for concurrent use: handshakes read the current
// certificates through an atomic pointer while Reload validates new ones
// off to the side and swaps them in whole, or refuses them and keeps the
// old.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// CertFiles names a certificate chain and its private key, PEM encoded.
type CertFiles struct {
	CertFile string
	KeyFile  string
}

// ServerOptions configure TLS termination on a listener.
type ServerOptions struct {
	// Certificates are served by SNI: an exact name first, then a
	// wildcard, then the first certificate as the default. At least one.
	Certificates []CertFiles
	// MinVersion is "1.2" or "1.3"; empty means "1.2".
	MinVersion string
	// ClientCAFile, when set, makes the listener ask for client
	// certificates and verify them against these CAs.
	ClientCAFile string
	// ClientAuth is "require" (the default when ClientCAFile is set: no
	// valid certificate, no connection) or "request" (verified if given).
	ClientAuth string
	// ACME, when set, serves the names it Has, after an exact static name
	// and before a wildcard, and answers TLS-ALPN-01 challenges for them;
	// Certificates may then be empty. A Server keeps the source it was
	// built with across reloads.
	ACME CertSource
}

// CertSource supplies certificates for a fixed set of names, such as an
// ACME manager's domains. Both methods are called per handshake,
// concurrently; GetCertificate must not block on the network.
type CertSource interface {
	Has(name string) bool
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// alpnACME is the protocol of TLS-ALPN-01 challenges (RFC 8737, section 6).
const alpnACME = "acme-tls/1"

// ClientOptions configure TLS to a backend pool.
type ClientOptions struct {
	// ServerName is checked against the backend's certificate; empty means
	// the host of the backend address.
	ServerName string
	// CAFile holds the CAs that sign the backends' certificates; empty
	// means the system roots.
	CAFile string
	// CertFile and KeyFile are a client certificate to present, if any.
	CertFile, KeyFile string
	// InsecureSkipVerify accepts any backend certificate. For tests only.
	InsecureSkipVerify bool
}

// aeadSuites are the TLS 1.2 suites offered: forward secret and
// authenticated encryption only (TLS 1.3 suites are not configurable).
var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// ErrNoCertificate is returned for a listener without certificates.
var ErrNoCertificate = errors.New("tlsconf: no certificate")

// Server serves TLS with certificates that can be reloaded.
type Server struct {
	cur atomic.Pointer[tls.Config]
	// base is handed to crypto/tls; it picks the current config per
	// handshake.
	base *tls.Config
	acme CertSource
}

// NewServer loads and checks the certificates of opts.
func NewServer(opts ServerOptions) (*Server, error) {
	cfg, err := build(opts, time.Now())
	if err != nil {
		return nil, err
	}
	s := &Server{acme: opts.ACME}
	s.cur.Store(cfg)
	s.base = &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return s.cur.Load(), nil
		},
	}
	return s, nil
}

// Config returns the configuration to serve with; it follows reloads.
func (s *Server) Config() *tls.Config { return s.base }

// Reload swaps in the certificates and settings of opts, unless one of
// them is missing, unreadable, mismatched with its key or expired: then it
// returns why and the current ones keep serving. Connections already
// established are not touched.
func (s *Server) Reload(opts ServerOptions) error {
	opts.ACME = s.acme
	cfg, err := build(opts, time.Now())
	if err != nil {
		return err
	}
	s.cur.Store(cfg)
	return nil
}

// build makes the per-handshake configuration for opts.
func build(opts ServerOptions, now time.Time) (*tls.Config, error) {
	if len(opts.Certificates) == 0 && opts.ACME == nil {
		return nil, ErrNoCertificate
	}
	sel := &selector{exact: map[string]*tls.Certificate{}, wildcard: map[string]*tls.Certificate{}, acme: opts.ACME}
	for _, cf := range opts.Certificates {
		c, err := LoadCertificate(cf.CertFile, cf.KeyFile, now)
		if err != nil {
			return nil, err
		}
		if sel.def == nil {
			sel.def = c
		}
		for _, name := range c.Leaf.DNSNames {
			name = strings.ToLower(name)
			if strings.HasPrefix(name, "*.") {
				if _, dup := sel.wildcard[name[2:]]; !dup {
					sel.wildcard[name[2:]] = c
				}
			} else if _, dup := sel.exact[name]; !dup {
				sel.exact[name] = c
			}
		}
	}
	min, err := parseVersion(opts.MinVersion)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:     min,
		CipherSuites:   aeadSuites,
		NextProtos:     []string{"http/1.1"},
		GetCertificate: sel.get,
	}
	if opts.ACME != nil {
		cfg.NextProtos = []string{"http/1.1", alpnACME}
	}
	if opts.ClientCAFile != "" {
		pool, err := loadPool(opts.ClientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		switch opts.ClientAuth {
		case "", "require":
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		case "request":
			cfg.ClientAuth = tls.VerifyClientCertIfGiven
		default:
			return nil, fmt.Errorf("tlsconf: client_auth %q: want require or request", opts.ClientAuth)
		}
	}
	return cfg, nil
}

func parseVersion(v string) (uint16, error) {
	switch v {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("tlsconf: min_version %q: want 1.2 or 1.3", v)
}

// selector picks a certificate by SNI.
type selector struct {
	exact    map[string]*tls.Certificate
	wildcard map[string]*tls.Certificate // by the suffix after "*."
	def      *tls.Certificate            // nil when only ACME serves
	acme     CertSource
}

// errChallengeName refuses a TLS-ALPN-01 challenge for a name outside the
// ACME domains.
var errChallengeName = errors.New("tlsconf: acme-tls/1 challenge for a name outside the ACME domains")

func (s *selector) get(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if s.acme != nil && len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == alpnACME {
		if !s.acme.Has(name) {
			return nil, errChallengeName
		}
		return s.acme.GetCertificate(hello)
	}
	if c, ok := s.exact[name]; ok {
		return c, nil
	}
	if s.acme != nil && s.acme.Has(name) {
		return s.acme.GetCertificate(hello)
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if c, ok := s.wildcard[name[i+1:]]; ok {
			return c, nil
		}
	}
	if s.def == nil {
		return nil, fmt.Errorf("tlsconf: no certificate for server name %q", name)
	}
	return s.def, nil
}

// LoadCertificate loads a certificate chain and key and checks that they
// match and that the leaf is valid at now.
func LoadCertificate(certFile, keyFile string, now time.Time) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: certificate %s with key %s: %w", certFile, keyFile, err)
	}
	if c.Leaf == nil {
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("tlsconf: certificate %s: %w", certFile, err)
		}
		c.Leaf = leaf
	}
	if now.After(c.Leaf.NotAfter) {
		return nil, fmt.Errorf("tlsconf: certificate %s expired on %s", certFile, c.Leaf.NotAfter.Format(time.RFC3339))
	}
	if now.Before(c.Leaf.NotBefore) {
		return nil, fmt.Errorf("tlsconf: certificate %s is not valid before %s", certFile, c.Leaf.NotBefore.Format(time.RFC3339))
	}
	return &c, nil
}

// loadPool reads PEM CA certificates.
func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tlsconf: CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// NewClient returns the configuration for TLS to a backend pool.
func NewClient(opts ClientOptions) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         opts.ServerName,
		InsecureSkipVerify: opts.InsecureSkipVerify, //nolint:gosec // only when configured explicitly
		NextProtos:         []string{"http/1.1"},
	}
	if opts.CAFile != "" {
		pool, err := loadPool(opts.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if opts.CertFile != "" || opts.KeyFile != "" {
		c, err := LoadCertificate(opts.CertFile, opts.KeyFile, time.Now())
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{*c}
	}
	return cfg, nil
}
