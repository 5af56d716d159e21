package acmecert

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"go.uber.org/zap"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// Options configure a Manager.
type Options struct {
	// Domains are the names served and ordered; names outside them are
	// never ordered. At least one.
	Domains []string
	// Email is the account's contact; optional.
	Email string
	// DirectoryURL is the CA's directory; empty means Let's Encrypt's.
	DirectoryURL string
	// CAFile holds extra PEM CAs trusted for the ACME server itself.
	CAFile string
	// Storage is the directory for the account key and certificates.
	// Required.
	Storage string
	// RenewBefore renews this long before expiry; zero means a third of
	// the certificate's lifetime.
	RenewBefore time.Duration
	// HTTP01 answers HTTP-01 challenges through ServeHTTP01 as well as
	// TLS-ALPN-01 ones: set it when a plain listener serves port 80.
	HTTP01 bool
	// Logger receives logs; nil means none.
	Logger *zap.Logger
}

// Attempts at a domain's first certificate wait from retryMin, doubling,
// to retryMax. autocert answers a retry within a minute of a failed order
// from memory ("missing certificate"), without asking the CA again.
const (
	retryMin = time.Minute
	retryMax = time.Hour
)

// accountKeyName is where autocert keeps the account key in storage.
const accountKeyName = "acme_account+key"

// challengePrefix is the path of HTTP-01 responses (RFC 8555, section 8.3).
const challengePrefix = "/.well-known/acme-challenge/"

// errClosed fails the CA requests and storage writes of a closed Manager.
var errClosed = errors.New("acmecert: manager closed")

// Manager holds the certificates of one listener's ACME domains.
type Manager struct {
	log     *zap.Logger
	domains map[string]*domain // fixed at New
	order   []*domain          // as configured, for metrics
	closed  atomic.Bool
	stop    chan struct{} // closed by Close
	once    sync.Once
	wg      sync.WaitGroup
}

// domain is one name's certificate and the state of its orders.
type domain struct {
	name string
	m    *Manager
	ac   *autocert.Manager
	http fasthttp.RequestHandler // nil without HTTP-01
	cert atomic.Pointer[tls.Certificate]

	mu        sync.Mutex
	attempted bool      // an order finished, well or not
	lastOK    bool      // the last one succeeded
	lastAt    time.Time // when it finished
	lastErr   string
	warned    atomic.Int64 // unix seconds of the last "no certificate yet" log
}

// New loads or creates the account key in storage and prepares a manager
// per domain. It does not contact the CA; Start does.
func New(opts Options) (*Manager, error) {
	if len(opts.Domains) == 0 {
		return nil, errors.New("acmecert: no domains")
	}
	if opts.Storage == "" {
		return nil, errors.New("acmecert: no storage directory")
	}
	if opts.DirectoryURL == "" {
		opts.DirectoryURL = autocert.DefaultACMEDirectory
	}
	m := &Manager{log: opts.Logger, domains: map[string]*domain{}, stop: make(chan struct{})}
	if m.log == nil {
		m.log = zap.NewNop()
	}
	base, err := caTransport(opts.CAFile)
	if err != nil {
		return nil, err
	}
	cache := autocert.DirCache(opts.Storage)
	key, err := accountKey(cache)
	if err != nil {
		return nil, err
	}
	for _, name := range opts.Domains {
		name = strings.ToLower(strings.TrimSuffix(name, "."))
		d := &domain{name: name, m: m}
		client := &acme.Client{
			Key:          key,
			DirectoryURL: opts.DirectoryURL,
			UserAgent:    "wsproxy",
			RetryBackoff: m.retryBackoff,
			HTTPClient:   &http.Client{Transport: &watchTransport{next: base, d: d}, Timeout: time.Minute},
		}
		d.ac = &autocert.Manager{
			Prompt:      autocert.AcceptTOS,
			Cache:       watchCache{cache: cache, d: d},
			HostPolicy:  autocert.HostWhitelist(name),
			RenewBefore: opts.RenewBefore,
			Client:      client,
			Email:       opts.Email,
		}
		if opts.HTTP01 {
			d.http = fasthttpadaptor.NewFastHTTPHandler(d.ac.HTTPHandler(http.NotFoundHandler()))
		}
		m.domains[name] = d
		m.order = append(m.order, d)
	}
	return m, nil
}

// maxRequestRetries bounds the retries of one request to the CA (a 5xx, a
// bad nonce); the attempts above retry whole orders.
const maxRequestRetries = 4

// retryBackoff replaces the ACME client's, which sleeps through a rate
// limit's Retry-After (an hour, say) inside the request: an order stuck
// there holds Close, and so shutdown, for up to the five minutes autocert
// allows. A rate limit is not retried in the request; the attempts back
// off instead. Other failures are retried a few times, 1s then doubling,
// and not at all once the manager is closed.
func (m *Manager) retryBackoff(n int, _ *http.Request, resp *http.Response) time.Duration {
	if m.closed.Load() || n > maxRequestRetries || (resp != nil && resp.StatusCode == http.StatusTooManyRequests) {
		return 0
	}
	return time.Second << (n - 1)
}

// accountKey reads the account key autocert keeps in storage, or creates
// and stores one, so that every domain's client shares it.
func accountKey(cache autocert.DirCache) (*ecdsa.PrivateKey, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, err := cache.Get(ctx, accountKeyName)
	if errors.Is(err, autocert.ErrCacheMiss) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := cache.Put(ctx, accountKeyName, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})); err != nil {
			return nil, fmt.Errorf("acmecert: storing the account key in %s: %w", string(cache), err)
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("acmecert: reading the account key from %s: %w", string(cache), err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("acmecert: %s in %s is not PEM", accountKeyName, string(cache))
	}
	if key, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return key, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if key, ok := k.(*ecdsa.PrivateKey); ok && err == nil {
		return key, nil
	}
	return nil, fmt.Errorf("acmecert: %s in %s is not an ECDSA key", accountKeyName, string(cache))
}

// Start loads each domain's certificate from storage or, when there is
// none, obtains one from the CA, in the background; it returns at once.
// The attempts stop when ctx is done or the manager is closed.
func (m *Manager) Start(ctx context.Context) {
	for _, d := range m.order {
		m.wg.Add(1)
		go d.obtainLoop(ctx)
	}
}

// Close stops the attempts at first certificates and waits for them; the
// CA and storage are not used again (autocert's renewal timers find them
// refused).
func (m *Manager) Close() {
	m.closed.Store(true)
	m.once.Do(func() { close(m.stop) })
	m.wg.Wait()
}

// Has reports whether name is one of the domains.
func (m *Manager) Has(name string) bool {
	_, ok := m.domains[name]
	return ok
}

// Domains lists the domains as configured.
func (m *Manager) Domains() []string {
	out := make([]string, len(m.order))
	for i, d := range m.order {
		out[i] = d.name
	}
	return out
}

// Certificate returns the certificate served for name, nil if none yet.
func (m *Manager) Certificate(name string) *tls.Certificate {
	if d := m.domains[name]; d != nil {
		return d.cert.Load()
	}
	return nil
}

// GetCertificate serves the certificate of hello's name, or the response
// to a TLS-ALPN-01 challenge for it. Without a certificate yet it fails at
// once (the client gets an internal_error alert) rather than waiting for
// the CA.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	d := m.domains[name]
	if d == nil {
		return nil, fmt.Errorf("acmecert: %q is not one of the ACME domains", name)
	}
	if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto {
		return d.ac.GetCertificate(hello)
	}
	if c := d.cert.Load(); c != nil {
		return c, nil
	}
	// One line a second at most, however many clients try.
	now := time.Now().Unix()
	if last := d.warned.Load(); now != last && d.warned.CompareAndSwap(last, now) {
		m.log.Warn("acme: refused a handshake: no certificate obtained yet", zap.String("domain", name))
	}
	return nil, fmt.Errorf("acmecert: no certificate for %s yet", name)
}

// ServeHTTP01 answers an HTTP-01 challenge request for one of the domains
// and reports whether it did; other requests are left alone. It allocates
// nothing for them.
func (m *Manager) ServeHTTP01(ctx *fasthttp.RequestCtx) bool {
	if !bytes.HasPrefix(ctx.Path(), []byte(challengePrefix)) {
		return false
	}
	host := string(ctx.Host())
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		host = host[:i]
	}
	d := m.domains[strings.ToLower(strings.TrimSuffix(host, "."))]
	if d == nil || d.http == nil {
		return false
	}
	// autocert checks Host against its policy as it stands: with a port
	// (Host: ws.example.com:80 is legal) it answers 403.
	ctx.Request.SetHost(d.name)
	d.http(ctx)
	return true
}

// obtainLoop gets the domain's first certificate: from storage, or from
// the CA, retried with doubling waits from retryMin to retryMax (autocert
// renews the certificate from then on).
func (d *domain) obtainLoop(ctx context.Context) {
	defer d.m.wg.Done()
	wait := retryMin
	for {
		began := time.Now()
		hello := &tls.ClientHelloInfo{
			ServerName:       d.name,
			SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
			SupportedCurves:  []tls.CurveID{tls.CurveP256},
			CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		}
		c, err := d.ac.GetCertificate(hello)
		if err == nil {
			if d.cert.Load() == nil { // not just obtained: watchCache would have stored it
				d.cert.Store(c)
				d.m.log.Info("acme: certificate loaded from storage", zap.String("domain", d.name),
					zap.Time("expires", c.Leaf.NotAfter))
			}
			return
		}
		if d.m.closed.Load() || ctx.Err() != nil {
			return
		}
		// The CA's own words, when watchTransport heard them, say more
		// than autocert's error.
		reason := d.failedSince(began, err.Error())
		d.m.log.Error("acme: could not obtain a certificate; retrying", zap.String("domain", d.name),
			zap.String("reason", reason), zap.Error(err), zap.Duration("retry_in", wait))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-d.m.stop:
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, retryMax)
	}
}

// issued swaps in a certificate the CA just issued and records success.
func (d *domain) issued(c *tls.Certificate) {
	prev := d.cert.Swap(c)
	d.mu.Lock()
	d.attempted, d.lastOK, d.lastAt, d.lastErr = true, true, time.Now(), ""
	d.mu.Unlock()
	verb := "acme: certificate obtained"
	if prev != nil {
		verb = "acme: certificate renewed"
	}
	d.m.log.Info(verb, zap.String("domain", d.name), zap.Time("expires", c.Leaf.NotAfter),
		zap.String("serial", c.Leaf.SerialNumber.Text(16)))
}

// failed records a failed order.
func (d *domain) failed(why string) {
	d.mu.Lock()
	d.attempted, d.lastOK, d.lastAt, d.lastErr = true, false, time.Now(), why
	d.mu.Unlock()
}

// failedSince records a failed order unless the CA's answer since began
// already did, and returns the reason kept.
func (d *domain) failedSince(began time.Time, why string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.lastOK && d.lastErr != "" && !d.lastAt.Before(began) {
		return d.lastErr
	}
	d.attempted, d.lastOK, d.lastAt, d.lastErr = true, false, time.Now(), why
	return why
}

// Status is a domain's certificate and last order, for metrics and /status.
type Status struct {
	Domain string
	// Expires is the served certificate's NotAfter; zero without one.
	Expires time.Time
	// Attempted reports whether an order (a first certificate or a
	// renewal) has finished since start; then LastOK, LastAt and
	// LastError describe the last one.
	Attempted bool
	LastOK    bool
	LastAt    time.Time
	LastError string
}

// Status reports every domain, in configured order.
func (m *Manager) Status() []Status {
	out := make([]Status, 0, len(m.order))
	for _, d := range m.order {
		s := Status{Domain: d.name}
		if c := d.cert.Load(); c != nil {
			s.Expires = c.Leaf.NotAfter
		}
		d.mu.Lock()
		s.Attempted, s.LastOK, s.LastAt, s.LastError = d.attempted, d.lastOK, d.lastAt, d.lastErr
		d.mu.Unlock()
		out = append(out, s)
	}
	return out
}
