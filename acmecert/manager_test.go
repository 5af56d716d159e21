package acmecert_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/wsproxy/wsproxy/acmecert"
	"github.com/wsproxy/wsproxy/internal/pebbletest"
	"github.com/wsproxy/wsproxy/internal/testpki"
	"github.com/wsproxy/wsproxy/tlsconf"
)

// logBuffer collects log lines and lets a test wait for one.
type logBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	added chan struct{}
}

func newLogBuffer() *logBuffer { return &logBuffer{added: make(chan struct{}, 1)} }

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.added <- struct{}{}:
	default:
	}
	return l.b.Write(p)
}

func (l *logBuffer) Sync() error { return nil }

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *zap.Logger {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(zapcore.NewCore(enc, l, zap.DebugLevel))
}

// wait returns once the log holds s, or fails after timeout.
func (l *logBuffer) wait(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for !strings.Contains(l.String(), s) {
		select {
		case <-l.added:
		case <-deadline.C:
			t.Fatalf("no log line with %q in %v:\n%s", s, timeout, l.String())
		}
	}
}

// fixture is pebble validating on port, and a TLS listener on that port
// serving a manager's certificates beside a static pair for
// static.example.com.
type fixture struct {
	pebble *pebbletest.Pebble
	port   int
	log    *logBuffer
	static *testpki.CA
}

func newFixture(t *testing.T, validity time.Duration, names ...string) *fixture {
	ports := pebbletest.FreePorts(t, 2)
	f := &fixture{port: ports[0], log: newLogBuffer(), static: testpki.NewCA(t)}
	f.pebble = pebbletest.Start(t, pebbletest.Options{TLSPort: f.port, HTTPPort: ports[1], Names: names, Validity: validity})
	return f
}

// serve starts the manager and a listener on the fixture's port until t
// ends or stop is called.
func (f *fixture) serve(t *testing.T, opts acmecert.Options) (m *acmecert.Manager, stop func()) {
	t.Helper()
	opts.Logger = f.log.logger()
	m, err := acmecert.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	leaf := f.static.Issue(t, "static", testpki.Options{Names: []string{"static.example.com"}})
	ts, err := tlsconf.NewServer(tlsconf.ServerOptions{
		Certificates: []tlsconf.CertFiles{{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile}},
		ACME:         m,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", f.port), ts.Config())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err == nil {
					_, _ = c.Write([]byte("ok"))
				}
			}()
		}
	}()
	m.Start(t.Context())
	var once sync.Once
	stop = func() { once.Do(func() { ln.Close(); wg.Wait(); m.Close() }) }
	t.Cleanup(stop)
	return m, stop
}

// dial makes a TLS handshake for name, verified against roots.
func (f *fixture) dial(name string, roots *x509.CertPool) (*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", f.port),
		&tls.Config{ServerName: name, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

func (f *fixture) options(t *testing.T, storage string, domains ...string) acmecert.Options {
	return acmecert.Options{
		Domains: domains, Email: "ops@example.com",
		DirectoryURL: f.pebble.DirectoryURL, CAFile: f.pebble.CAFile, Storage: storage,
	}
}

func TestObtainServeAndStore(t *testing.T) {
	f := newFixture(t, 0, "ws.example.com")
	storage := filepath.Join(t.TempDir(), "acme")
	m, _ := f.serve(t, f.options(t, storage, "ws.example.com"))
	f.log.wait(t, `"acme: certificate obtained"`, 15*time.Second)

	leaf, err := f.dial("ws.example.com", f.pebble.Roots(t))
	if err != nil {
		t.Fatalf("the obtained chain does not verify against pebble's root: %v", err)
	}
	if got := m.Certificate("ws.example.com").Leaf.SerialNumber; got.Cmp(leaf.SerialNumber) != 0 {
		t.Fatalf("served serial %x, manager holds %x", leaf.SerialNumber, got)
	}
	// The static pair still answers its own name.
	if _, err := f.dial("static.example.com", f.static.Pool()); err != nil {
		t.Fatalf("static pair beside ACME: %v", err)
	}
	// A name outside domains is refused rather than ordered.
	if _, err := f.dial("other.example.com", f.pebble.Roots(t)); err == nil {
		t.Fatal("a name outside domains got a certificate verifying against pebble's root")
	}
	if strings.Contains(f.pebble.Output(), "other.example.com") {
		t.Fatalf("pebble heard of a name outside domains:\n%s", f.pebble.Output())
	}

	fi, err := os.Stat(storage)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("storage %v, mode %v: want 0700", err, fi.Mode())
	}
	for _, name := range []string{"ws.example.com", "acme_account+key"} {
		fi, err := os.Stat(filepath.Join(storage, name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, want mode 0600", name, err)
		}
	}
	st := m.Status()
	if len(st) != 1 || !st[0].Attempted || !st[0].LastOK || !st[0].Expires.Equal(leaf.NotAfter) {
		t.Fatalf("status %+v", st)
	}
}

// A domain pebble cannot validate (its name does not resolve) fails with
// the CA's words in the log, is refused at once in handshakes, and the
// listener serves its other certificates throughout.
func TestRefusedOrderLeavesTheRest(t *testing.T) {
	f := newFixture(t, 0, "ws.example.com")
	storage := filepath.Join(t.TempDir(), "acme")
	m, _ := f.serve(t, f.options(t, storage, "ws.example.com", "bad.example.com"))
	f.log.wait(t, `"acme: certificate obtained"`, 15*time.Second)
	f.log.wait(t, `"acme: could not obtain a certificate; retrying"`, 15*time.Second)
	if !strings.Contains(f.log.String(), `"acme: the CA could not validate the domain","domain":"bad.example.com","detail":"tls-alpn-01: `) {
		t.Fatalf("the CA's reason is not logged:\n%s", f.log.String())
	}

	start := time.Now()
	_, err := f.dial("bad.example.com", f.pebble.Roots(t))
	if err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("handshake for a domain without a certificate: %v, want an internal_error alert", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("refusing took %v: it must not wait for the CA", d)
	}
	f.log.wait(t, `"acme: refused a handshake: no certificate obtained yet"`, 5*time.Second)
	if _, err := f.dial("ws.example.com", f.pebble.Roots(t)); err != nil {
		t.Fatalf("the obtained domain beside a refused one: %v", err)
	}
	if _, err := f.dial("static.example.com", f.static.Pool()); err != nil {
		t.Fatalf("the static pair beside a refused domain: %v", err)
	}
	for _, s := range m.Status() {
		if s.Domain == "bad.example.com" && (s.LastOK || !strings.HasPrefix(s.LastError, "tls-alpn-01: ") || !s.Expires.IsZero()) {
			t.Fatalf("bad.example.com status %+v", s)
		}
	}
}

// A restart with the CA down serves the stored certificate, loaded without
// a request to the CA.
func TestRestartWithCADownServesStored(t *testing.T) {
	f := newFixture(t, 0, "ws.example.com")
	storage := filepath.Join(t.TempDir(), "acme")
	opts := f.options(t, storage, "ws.example.com")
	roots := f.pebble.Roots(t)

	m1, stop := f.serve(t, opts)
	f.log.wait(t, `"acme: certificate obtained"`, 15*time.Second)
	want := m1.Certificate("ws.example.com").Leaf.SerialNumber
	stop()
	f.pebble.Stop()

	f.log = newLogBuffer()
	f.serve(t, opts)
	f.log.wait(t, `"acme: certificate loaded from storage"`, 5*time.Second)
	leaf, err := f.dial("ws.example.com", roots)
	if err != nil {
		t.Fatalf("stored certificate after a restart with the CA down: %v", err)
	}
	if leaf.SerialNumber.Cmp(want) != 0 {
		t.Fatalf("served serial %x, want the stored %x", leaf.SerialNumber, want)
	}
	if strings.Contains(f.log.String(), "cannot reach the CA") {
		t.Fatalf("loading from storage contacted the CA:\n%s", f.log.String())
	}
}

// HTTP-01 is answered through ServeHTTP01 on a plain listener when
// TLS-ALPN-01 cannot be (nothing listens on pebble's TLS port); other
// requests are left to the router.
func TestHTTP01(t *testing.T) {
	ports := pebbletest.FreePorts(t, 2)
	peb := pebbletest.Start(t, pebbletest.Options{TLSPort: ports[0], HTTPPort: ports[1], Names: []string{"ws.example.com"}})
	log := newLogBuffer()
	m, err := acmecert.New(acmecert.Options{
		Domains: []string{"ws.example.com"}, DirectoryURL: peb.DirectoryURL, CAFile: peb.CAFile,
		Storage: filepath.Join(t.TempDir(), "acme"), HTTP01: true, Logger: log.logger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ports[1]))
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if !m.ServeHTTP01(ctx) {
			ctx.SetStatusCode(fasthttp.StatusTeapot) // "routed"
		}
	}}
	go srv.Serve(ln) //nolint:errcheck
	defer srv.Shutdown()
	m.Start(t.Context())
	defer m.Close()
	log.wait(t, `"acme: certificate obtained"`, 15*time.Second)
	if c := m.Certificate("ws.example.com"); c == nil {
		t.Fatal("no certificate after HTTP-01")
	} else if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: "ws.example.com", Roots: peb.Roots(t), Intermediates: intermediates(c)}); err != nil {
		t.Fatal(err)
	}
	client := &fasthttp.HostClient{Addr: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	for _, tc := range []struct{ host, path string }{
		{"ws.example.com", "/app"},
		{"other.example.com", "/.well-known/acme-challenge/x"},
	} {
		req := fasthttp.AcquireRequest()
		resp := fasthttp.AcquireResponse()
		req.SetRequestURI("http://" + tc.host + tc.path)
		if err := client.DoTimeout(req, resp, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode() != fasthttp.StatusTeapot {
			t.Fatalf("%s%s answered %d, want it left to the router", tc.host, tc.path, resp.StatusCode())
		}
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}
}

func intermediates(c *tls.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, der := range c.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			p.AddCert(ic)
		}
	}
	return p
}

// Requests that are not challenges pass through ServeHTTP01 without an
// allocation: it sees every request on the proxy's listeners.
func TestServeHTTP01AllocatesNothingForOthers(t *testing.T) {
	m, err := acmecert.New(acmecert.Options{Domains: []string{"ws.example.com"}, Storage: t.TempDir(), HTTP01: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var ctx fasthttp.RequestCtx
	ctx.Request.SetRequestURI("http://ws.example.com/app/socket")
	if n := testing.AllocsPerRun(100, func() {
		if m.ServeHTTP01(&ctx) {
			t.Fatal("answered a request that is not a challenge")
		}
	}); n != 0 {
		t.Fatalf("%v allocations per request", n)
	}
}

// A rate limit is logged as such, with the CA's words and Retry-After,
// and is the domain's last result. Pebble has no rate limits: this CA
// on loopback answers its directory and nonces, and refuses the account.
func TestRateLimitLoggedWithTheCAsMessage(t *testing.T) {
	const detail = "too many new registrations (10) from this IP address in the last 3h0m0s, retry after 2026-12-02 05:00:00 UTC"
	var ca *httptest.Server
	ca = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Replay-Nonce", "nonce")
		switch r.URL.Path {
		case "/dir":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"newNonce": %q, "newAccount": %q, "newOrder": %q}`, ca.URL+"/nonce", ca.URL+"/account", ca.URL+"/order")
		case "/nonce":
		default:
			w.Header().Set("Content-Type", "application/problem+json")
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprintf(w, `{"type": "urn:ietf:params:acme:error:rateLimited", "detail": %q, "status": 429}`, detail)
		}
	}))
	defer ca.Close()
	log := newLogBuffer()
	m, err := acmecert.New(acmecert.Options{Domains: []string{"ws.example.com"}, DirectoryURL: ca.URL + "/dir",
		Storage: t.TempDir(), Logger: log.logger()})
	if err != nil {
		t.Fatal(err)
	}
	m.Start(t.Context())
	defer m.Close()
	log.wait(t, `"acme: could not obtain a certificate; retrying"`, 10*time.Second)
	want := fmt.Sprintf(`"msg":"acme: rate limited by the CA","domain":"ws.example.com","status":429,"type":"urn:ietf:params:acme:error:rateLimited","detail":%q,"retry_after":"3600"`, detail)
	if !strings.Contains(log.String(), want) {
		t.Fatalf("want %s in:\n%s", want, log.String())
	}
	if st := m.Status()[0]; st.LastOK || st.LastError != detail {
		t.Fatalf("status %+v, want the CA's detail as the last error", st)
	}
}
