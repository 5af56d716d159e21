package health

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// failsafe bounds every wait on an event; tests never sleep.
const failsafe = 10 * time.Second

// testTLS returns a server config with a certificate for 127.0.0.1,
// generated now, and a client config that trusts it.
func testTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "health test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	client = &tls.Config{RootCAs: pool}
	return server, client
}

// checkLeaks fails the test if goroutines started during it outlive it.
// Call it first, so that its cleanup runs last. Goroutines of closed
// connections have no exit event to wait on, so this one polls.
func checkLeaks(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(failsafe)
		for runtime.NumGoroutine() > base {
			select {
			case <-tick.C:
			case <-deadline:
				buf := make([]byte, 1<<20)
				t.Errorf("goroutines: %d at start, %d at end:\n%s", base, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
		}
	})
}

// phase is how an HTTP backend answers from some moment on.
type phase struct {
	status int  // answer this status; 0 means 200, or 101 to an upgrade
	slow   bool // hold every request until the client leaves
	// holdAt, if not 0, holds the holdAt-th request of the phase until
	// release is closed; held is closed when it arrives.
	holdAt  int64
	held    chan struct{}
	release chan struct{}

	n atomic.Int64 // requests received in this phase
}

func okPhase() *phase          { return &phase{} }
func statusPhase(s int) *phase { return &phase{status: s} }
func slowPhase() *phase        { return &phase{slow: true} }

// holding returns p set to hold its n-th request.
func (p *phase) holding(n int64) *phase {
	p.holdAt, p.held, p.release = n, make(chan struct{}), make(chan struct{})
	return p
}

// backend is an HTTP and WebSocket test server on 127.0.0.1.
type backend struct {
	addr   string
	srv    *http.Server
	quit   chan struct{}
	phase  atomic.Pointer[phase]
	closes chan int // close codes received by upgraded connections

	mu    sync.Mutex
	paths map[string]int
	hosts map[string]int
}

// newBackend starts a backend, over TLS when srvTLS is not nil, closed at
// the end of the test.
func newBackend(t *testing.T, srvTLS *tls.Config) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if srvTLS != nil {
		ln = tls.NewListener(ln, srvTLS)
	}
	b := &backend{
		addr:   ln.Addr().String(),
		quit:   make(chan struct{}),
		closes: make(chan int, 64),
		paths:  make(map[string]int),
		hosts:  make(map[string]int),
	}
	b.phase.Store(okPhase())
	b.srv = &http.Server{Handler: b, ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		close(b.quit)
		b.srv.Close()
		<-done
	})
	return b
}

// set switches to p and returns it.
func (b *backend) set(p *phase) *phase {
	b.phase.Store(p)
	return p
}

// served returns the requests received in the current phase.
func (b *backend) served() int64 { return b.phase.Load().n.Load() }

// pathCount returns the requests received on path since the start.
func (b *backend) pathCount(path string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return int64(b.paths[path])
}

func (b *backend) hostCount(host string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hosts[host]
}

var upgrader = websocket.Upgrader{}

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := b.phase.Load()
	n := p.n.Add(1)
	b.mu.Lock()
	b.paths[r.URL.Path]++
	b.hosts[r.Host]++
	b.mu.Unlock()
	if p.holdAt == n {
		close(p.held)
		select {
		case <-p.release:
		case <-r.Context().Done():
			return
		case <-b.quit:
			return
		}
	}
	if p.slow {
		select {
		case <-r.Context().Done():
		case <-b.quit:
		}
		return
	}
	if p.status == 0 && websocket.IsWebSocketUpgrade(r) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					select {
					case b.closes <- ce.Code:
					default:
					}
				}
				return
			}
		}
	}
	if p.status != 0 {
		w.WriteHeader(p.status)
	}
}

// tcpBackend is a TCP (or TLS) listener on 127.0.0.1 that can be stopped
// and restarted on the same address; it counts the connections it
// accepted.
type tcpBackend struct {
	addr    string
	tls     *tls.Config
	accepts atomic.Int64

	mu sync.Mutex
	ln net.Listener
	wg sync.WaitGroup
}

func newTCPBackend(t *testing.T, srvTLS *tls.Config) *tcpBackend {
	t.Helper()
	b := &tcpBackend{addr: "127.0.0.1:0", tls: srvTLS}
	b.start(t)
	t.Cleanup(b.stop)
	return b
}

// start listens on the backend's address.
func (b *tcpBackend) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.addr = ln.Addr().String()
	b.ln = ln
	b.mu.Unlock()
	b.wg.Add(1)
	go b.acceptLoop(ln)
}

// stop closes the listener: connections are refused until start.
func (b *tcpBackend) stop() {
	b.mu.Lock()
	ln := b.ln
	b.ln = nil
	b.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	b.wg.Wait()
}

func (b *tcpBackend) acceptLoop(ln net.Listener) {
	defer b.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b.accepts.Add(1)
		if b.tls != nil {
			tc := tls.Server(c, b.tls)
			tc.SetDeadline(time.Now().Add(failsafe))
			tc.Handshake()
			c = tc
		}
		c.Close()
	}
}

// deadAddr returns an address on which nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// event is a Change with what the test saw when it was delivered.
type event struct {
	Change
	probes int   // probe results recorded for (Pool, Addr), or for Addr when Pool is empty
	run    int   // of them, the last ones in a row with the same outcome
	served int64 // the backend's own count, from the served func of Addr
}

// recorder is the Setter, the OnChange hook and the probe hook of a test
// Manager; tests wait on what it records.
type recorder struct {
	mu      sync.Mutex
	notify  chan struct{} // closed and replaced on every record
	probes  map[checkerKey][]error
	changes []event
	sets    []Change // SetHealthy calls, Addr and Up only
	served  map[string]func() int64
}

func newRecorder() *recorder {
	return &recorder{
		notify: make(chan struct{}),
		probes: make(map[checkerKey][]error),
		served: make(map[string]func() int64),
	}
}

// newManager returns a Manager reporting to a new recorder, closed at the
// end of the test.
func newManager(t *testing.T) (*Manager, *recorder) {
	t.Helper()
	r := newRecorder()
	m := NewManager(t.Context(), Config{
		Setter:   r,
		Logger:   zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)),
		OnChange: r.onChange,
	})
	m.probed = r.probed
	t.Cleanup(m.Close)
	return m, r
}

// watch makes events of addr carry served().
func (r *recorder) watch(addr string, served func() int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.served[addr] = served
}

func (r *recorder) broadcast() {
	close(r.notify)
	r.notify = make(chan struct{})
}

func (r *recorder) probed(pool, addr string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := checkerKey{pool, addr}
	r.probes[k] = append(r.probes[k], err)
	r.broadcast()
}

func (r *recorder) SetHealthy(addr string, up bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets = append(r.sets, Change{Addr: addr, Up: up})
}

func (r *recorder) onChange(ch Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := event{Change: ch}
	var results []error
	if ch.Pool != "" {
		results = r.probes[checkerKey{ch.Pool, ch.Addr}]
	} else {
		for k, rs := range r.probes {
			if k.addr == ch.Addr {
				results = append(results, rs...)
			}
		}
	}
	ev.probes = len(results)
	for i := len(results) - 1; i >= 0 && (results[i] == nil) == (results[len(results)-1] == nil); i-- {
		ev.run++
	}
	if f := r.served[ch.Addr]; f != nil {
		ev.served = f()
	}
	r.changes = append(r.changes, ev)
	r.broadcast()
}

// wait returns once cond, called with r locked, holds.
func (r *recorder) wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(failsafe)
	for {
		r.mu.Lock()
		ok := cond()
		ch := r.notify
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// waitProbes waits until (pool, addr) has at least n probe results, and
// returns them.
func (r *recorder) waitProbes(t *testing.T, pool, addr string, n int) []error {
	t.Helper()
	var got []error
	r.wait(t, "probes", func() bool {
		got = r.probes[checkerKey{pool, addr}]
		return len(got) >= n
	})
	return got
}

// waitChange waits for the i-th change (from 0) of addr and checks its
// direction.
func (r *recorder) waitChange(t *testing.T, addr string, i int, up bool) event {
	t.Helper()
	var ev event
	r.wait(t, "change", func() bool {
		n := 0
		for _, e := range r.changes {
			if e.Addr != addr {
				continue
			}
			if n == i {
				ev = e
				return true
			}
			n++
		}
		return false
	})
	if ev.Up != up {
		t.Fatalf("change %d of %s: up = %v, want %v (%s)", i, addr, ev.Up, up, ev.Reason)
	}
	return ev
}

// changesOf returns the changes of addr so far.
func (r *recorder) changesOf(addr string) []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []event
	for _, e := range r.changes {
		if e.Addr == addr {
			out = append(out, e)
		}
	}
	return out
}

// probeCount returns the probe results of (pool, addr) so far.
func (r *recorder) probeCount(pool, addr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.probes[checkerKey{pool, addr}])
}
