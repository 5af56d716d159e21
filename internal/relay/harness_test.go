package relay

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/poller"
	"github.com/wsproxy/wsproxy/internal/testpki"
	"github.com/wsproxy/wsproxy/internal/wsframe"
	"golang.org/x/sys/unix"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (dialed, accepted *net.TCPConn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	a := <-acc
	if a == nil {
		tb.Fatal("accept failed")
	}
	return d.(*net.TCPConn), a.(*net.TCPConn)
}

// event is a hook call, as text: "violation client: reason",
// "timeout read", "ping backend", "pong client", "limited message",
// "ended".
type recorder struct {
	mu     sync.Mutex
	events []string
	ended  chan struct{}
	rtts   []time.Duration
}

func newRecorder() *recorder { return &recorder{ended: make(chan struct{})} }

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *recorder) Violation(from Side, reason string) { r.add("violation %s: %s", from, reason) }
func (r *recorder) RateLimited(l Limit, rate, burst float64) {
	r.add("limited %d %g %g", l, rate, burst)
}
func (r *recorder) Timeout(t Timeout) { r.add("timeout %d", t) }
func (r *recorder) PingSent(to Side)  { r.add("ping %s", to) }
func (r *recorder) Pong(from Side, rtt time.Duration) {
	r.mu.Lock()
	r.rtts = append(r.rtts, rtt)
	r.mu.Unlock()
	r.add("pong %s", from)
}
func (r *recorder) Ended() { r.add("ended"); close(r.ended) }

// has reports whether an event was recorded.
func (r *recorder) has(e string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range r.events {
		if x == e {
			return true
		}
	}
	return false
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

// rig is a session between two loopback pairs: the test plays the client
// on client and the backend on backend; the relay sits between.
type rig struct {
	t       testing.TB
	s       *Session
	hooks   *recorder
	client  *peer
	backend *peer
	// fds are the relay's bare descriptors, client's then backend's (-1
	// for a Conn side).
	fds [2]int
	// old are the handlers of the registrations the sides came with.
	old [2]*oldHandler
}

// peer is the test's end of one side.
type peer struct {
	t    testing.TB
	conn net.Conn
	tcp  *net.TCPConn // under conn
	br   *bufio.Reader
	mask bool // frames from here are masked (the client's)
}

// sides is what the relay's ends of a rig's session are.
type sides uint8

const (
	defaultSides sides = iota // rigSides
	connSides                 // two *net.TCPConn
	fdSides                   // two bare descriptors, added to the poller by Start
	regSides                  // two bare descriptors registered already, each on a poller of its own
	mixedSides                // a bare client, a TLS backend over a Socket
)

var sidesNames = [...]string{"default", "conn", "fd", "reg", "mixed"}

func (k sides) String() string { return sidesNames[k] }

// rigSides is what newRig builds unless told: runOverSides runs the rig
// tests over each kind.
var rigSides = connSides

// rigOpts tune a rig.
type rigOpts struct {
	early, backendEarly []byte
	rsv                 RSVRule
	deadline            time.Time
	sides               sides
	// hooks, if set, wraps the recorder the session reports to.
	hooks func(*recorder) Hooks
	// beforeInit, if set, runs once the peers are connected, before the
	// session is set up.
	beforeInit func(r *rig, client, backend Endpoint)
}

// ignore is a handler for a registration the relay takes over at Start.
type ignore struct{}

func (ignore) Ready(*poller.Loop) {}

// oldHandler is the handler of a registration before the relay takes it
// over: it ignores events and counts them.
type oldHandler struct{ calls atomic.Int32 }

func (h *oldHandler) Ready(*poller.Loop) { h.calls.Add(1) }

// newRig starts a session relaying with limits. The goroutine-leak check
// runs when the test ends: after the session has finished, the relay must
// hold no goroutine.
func newRig(tb testing.TB, limits *Limits, o rigOpts) *rig {
	tb.Helper()
	checkGoroutines(tb)
	p, err := poller.New()
	if err != nil {
		tb.Fatal(err)
	}
	if o.sides == defaultSides {
		o.sides = rigSides
	}
	r := &rig{t: tb, s: new(Session), hooks: newRecorder(), fds: [2]int{-1, -1}}
	var cep, bep Endpoint
	var client, backend net.Conn
	var ctcp, btcp *net.TCPConn
	pollers := []*poller.Poller{p}
	switch o.sides {
	case connSides:
		var proxyClient, proxyBackend *net.TCPConn
		ctcp, proxyClient = tcpPair(tb)
		proxyBackend, btcp = tcpPair(tb)
		cep, bep = Endpoint{Conn: proxyClient}, Endpoint{Conn: proxyBackend}
	case fdSides, regSides, mixedSides:
		r.fds[0], ctcp = rawPair(tb)
		cep = Endpoint{FD: r.fds[0]}
		if o.sides == mixedSides {
			var proxyBackend *net.TCPConn
			proxyBackend, btcp = tcpPair(tb)
			bep.Conn, backend = tlsPair(tb, proxyBackend, btcp)
			break
		}
		r.fds[1], btcp = rawPair(tb)
		bep = Endpoint{FD: r.fds[1]}
		if o.sides == regSides {
			for i, ep := range []*Endpoint{&cep, &bep} {
				pi, err := poller.New()
				if err != nil {
					tb.Fatal(err)
				}
				pollers = append(pollers, pi)
				// The backend's comes from a non-blocking connect, which
				// waits for the socket to be writable.
				ep.Writable = i == 1
				f := poller.Flags(0)
				if ep.Writable {
					f = poller.Writable
				}
				r.old[i] = new(oldHandler)
				if ep.Reg, err = pi.AddFlags(ep.FD, f, r.old[i]); err != nil {
					tb.Fatal(err)
				}
			}
		}
	}
	client = ctcp
	if backend == nil {
		backend = btcp
	}
	r.client = &peer{t: tb, conn: client, tcp: ctcp, br: bufio.NewReader(client), mask: true}
	r.backend = &peer{t: tb, conn: backend, tcp: btcp, br: bufio.NewReader(backend)}
	if limits.CloseTimeout == 0 {
		limits.CloseTimeout = 2 * time.Second
	}
	if o.beforeInit != nil {
		o.beforeInit(r, cep, bep)
	}
	var hooks Hooks = r.hooks
	if o.hooks != nil {
		hooks = o.hooks(r.hooks)
	}
	err = r.s.InitEndpoints(cep, bep, &Options{Limits: limits,
		ClientEarly: o.early, BackendEarly: o.backendEarly, Extensions: o.rsv, Hooks: hooks,
		Deadline: o.deadline, DeadlineReason: "token expired"})
	if err != nil {
		tb.Fatal(err)
	}
	start := p
	if o.sides == regSides {
		start = nil // each side has its poller
	}
	if err := r.s.Start(start); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		r.s.Finish()
		<-r.hooks.ended
		client.Close()
		backend.Close()
		for _, p := range pollers {
			p.Close()
		}
	})
	return r
}

// rawPair returns a connected non-blocking TCP socket for the relay to own,
// and the test's end of it.
func rawPair(tb testing.TB) (fd int, peer *net.TCPConn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		tb.Fatal(err)
	}
	// The relay leaves TCP_NODELAY to whoever made the socket; Go's net
	// sets it on every connection.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		tb.Fatal(err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		tb.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		unix.Close(fd)
		tb.Fatal(err)
	}
	return fd, c.(*net.TCPConn)
}

var testCert struct {
	once sync.Once
	cert tls.Certificate
	pool *x509.CertPool
}

// tlsPair runs a TLS handshake over a loopback pair: the relay's end is a
// client over a Socket, the test's a server. It returns both.
func tlsPair(tb testing.TB, proxyEnd, testEnd *net.TCPConn) (relayConn, peerConn *tls.Conn) {
	tb.Helper()
	testCert.once.Do(func() {
		ca := testpki.NewCA(tb)
		leaf := ca.Issue(tb, "relay", testpki.Options{Names: []string{"relay.test"}})
		cert, err := tls.LoadX509KeyPair(leaf.CertFile, leaf.KeyFile)
		if err != nil {
			tb.Fatal(err)
		}
		testCert.cert, testCert.pool = cert, ca.Pool()
	})
	sock, err := NewSocket(proxyEnd)
	if err != nil {
		tb.Fatal(err)
	}
	relayConn = tls.Client(sock, &tls.Config{RootCAs: testCert.pool, ServerName: "relay.test"})
	peerConn = tls.Server(testEnd, &tls.Config{Certificates: []tls.Certificate{testCert.cert}})
	done := make(chan error, 1)
	go func() { done <- peerConn.Handshake() }()
	if err := relayConn.Handshake(); err != nil {
		tb.Fatal(err)
	}
	if err := <-done; err != nil {
		tb.Fatal(err)
	}
	return relayConn, peerConn
}

// waitEnded waits for the Ended hook.
func (r *rig) waitEnded() {
	r.t.Helper()
	select {
	case <-r.hooks.ended:
	case <-time.After(10 * time.Second):
		r.t.Fatalf("session did not end; events %v", r.hooks.list())
	}
}

// frame builds a frame as p sends it.
func (p *peer) frame(fin bool, op byte, payload []byte) []byte {
	if !p.mask {
		return append(wsframe.AppendHeader(nil, fin, op, nil, len(payload)), payload...)
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	f := wsframe.AppendHeader(nil, fin, op, &mask, len(payload))
	start := len(f)
	f = append(f, payload...)
	wsframe.MaskBytes(mask, 0, f[start:])
	return f
}

func (p *peer) closeFrame(code int, reason string) []byte {
	var payload []byte
	payload = append(payload, byte(code>>8), byte(code))
	return p.frame(true, wsframe.OpClose, append(payload, reason...))
}

func (p *peer) send(b ...[]byte) {
	p.t.Helper()
	for _, f := range b {
		if _, err := p.conn.Write(f); err != nil {
			p.t.Fatal(err)
		}
	}
}

type frame struct {
	fin     bool
	op      byte
	masked  bool
	payload []byte
}

// next reads one frame, unmasking it.
func (p *peer) next() (frame, error) {
	_ = p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [wsframe.MaxHeaderLen]byte
	if _, err := io.ReadFull(p.br, hdr[:2]); err != nil {
		return frame{}, err
	}
	n := 2
	for {
		h, hl, err := wsframe.Parse(hdr[:n])
		if err != nil {
			return frame{}, err
		}
		if hl > 0 {
			b := make([]byte, h.Length)
			if _, err := io.ReadFull(p.br, b); err != nil {
				return frame{}, err
			}
			if h.Masked {
				wsframe.MaskBytes(h.Mask, 0, b)
			}
			return frame{fin: h.Fin, op: h.Opcode, masked: h.Masked, payload: b}, nil
		}
		if _, err := io.ReadFull(p.br, hdr[n:n+1]); err != nil {
			return frame{}, err
		}
		n++
	}
}

// expect reads the next frame and checks it.
func (p *peer) expect(op byte, payload string) frame {
	p.t.Helper()
	f, err := p.next()
	if err != nil {
		p.t.Fatalf("waiting for opcode %d %q: %v", op, payload, err)
	}
	if f.op != op || string(f.payload) != payload {
		p.t.Fatalf("got opcode %d %q, want %d %q", f.op, f.payload, op, payload)
	}
	if f.masked != !p.mask {
		p.t.Fatalf("frame to this side masked=%v", f.masked)
	}
	return f
}

// expectClose reads frames until a Close and returns its code and reason.
func (p *peer) expectClose() (int, string) {
	p.t.Helper()
	for {
		f, err := p.next()
		if err != nil {
			p.t.Fatalf("waiting for Close: %v", err)
		}
		if f.op == wsframe.OpClose {
			if f.masked != !p.mask {
				p.t.Fatalf("Close to this side masked=%v", f.masked)
			}
			code, reason, _ := wsframe.ParseClose(f.payload)
			return code, string(reason)
		}
	}
}

// expectEOF reads until the connection ends: EOF or a reset.
func (p *peer) expectEOF() {
	p.t.Helper()
	_ = p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, p.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		p.t.Fatal("connection still open")
	}
}

// checkGoroutines fails the test if goroutines started during it remain
// once it has cleaned up. Tests that use it do not run in parallel.
func checkGoroutines(tb testing.TB) {
	tb.Helper()
	before := runtime.NumGoroutine()
	tb.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				tb.Fatalf("goroutine leak: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:n])
			}
			time.Sleep(time.Millisecond)
		}
	})
}
