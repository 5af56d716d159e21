package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/internal/testpki"
	"github.com/wsproxy/wsproxy/tlsconf"
)

func TestFileBudget(t *testing.T) {
	tests := []struct {
		name                   string
		limit                  int64
		maxSessions, maxConns  int
		wantSessions, wantConn int64
	}{
		{"both derived", 20000, 0, 0, 8550, 950},
		{"both derived, small limit", 1024, 0, 0, 432, 48},
		{"connections at their floor", 256, 0, 0, 64, 32},
		{"tiny limit", 80, 0, 0, 1, 32},
		{"sessions set", 20000, 5000, 0, 5000, 4500},
		{"sessions set past the limit", 20000, 12000, 0, 12000, minConnections},
		{"connections set", 20000, 0, 500, 9000, 500},
		{"both set", 20000, 100, 200, 100, 200},
		{"no limit", 0, 0, 0, math.MaxInt64, math.MaxInt64},
		{"no limit, both set", 0, 7, 9, 7, 9},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, c := fileBudget{limit: tc.limit}.caps(config.Admission{MaxSessions: tc.maxSessions, MaxConnections: tc.maxConns})
			if s != tc.wantSessions || c != tc.wantConn {
				t.Fatalf("caps = %d sessions, %d connections; want %d, %d", s, c, tc.wantSessions, tc.wantConn)
			}
		})
	}
}

// TestFileBudgetFits checks the budget's promise: whatever the limit,
// derived caps leave the reserve free (2 descriptors per session and
// per connection), unless the limit is too small for the floors.
func TestFileBudgetFits(t *testing.T) {
	for n := int64(64); n < 1<<22; n = n*5/4 + 1 {
		b := fileBudget{limit: n}
		for _, a := range []config.Admission{{}, {MaxSessions: int(n / 8)}, {MaxConnections: int(n / 8)}} {
			s, c := b.caps(a)
			if s < 1 || (a.MaxConnections == 0 && c < minConnections) {
				t.Fatalf("limit %d, %+v: %d sessions, %d connections", n, a, s, c)
			}
			floors := s == 1 || (a.MaxConnections == 0 && c == minConnections)
			if used := 2*s + 2*c + b.reserve(); used > n && !floors {
				t.Fatalf("limit %d, %+v: %d sessions and %d connections need %d", n, a, s, c, used)
			}
			if b.overrun(s, c) != (2*s+2*c+b.reserve() > n) {
				t.Fatalf("limit %d: overrun(%d, %d) = %v", n, s, c, b.overrun(s, c))
			}
		}
	}
}

// faultyListener is a real listener whose next accepts fail with err.
type faultyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
	err   error
	calls []time.Time // when each failed accept was made
}

func (l *faultyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.fails > 0 {
		l.fails--
		l.calls = append(l.calls, time.Now())
		l.mu.Unlock()
		return nil, l.err
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

func (l *faultyListener) failedAccepts() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.calls...)
}

// acceptError is what accept(2) failing with errno looks like from a
// net.TCPListener.
func acceptError(errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
}

// newTestServer builds a proxy Server from yaml, logging warnings to the
// returned observer.
func newTestServer(t *testing.T, yaml string, backends ...string) (*Server, *observer.ObservedLogs) {
	t.Helper()
	for i, a := range backends {
		yaml = strings.ReplaceAll(yaml, fmt.Sprintf("{{B%d}}", i), a)
	}
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	srv, err := New(Config{Config: cfg, Logger: zap.New(core), CloseTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return srv, logs
}

// serve runs srv.Serve(ln) and returns its result channel; the cleanup
// shuts srv down.
func serve(t *testing.T, srv *Server, ln net.Listener) <-chan error {
	t.Helper()
	done, finished := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(finished)
		done <- srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := contextWithTimeout(time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-finished
	})
	return done
}

// TestAcceptErrorsPass fails accepts with errors that pass, on a plain
// and a TLS listener, and checks that the proxy keeps serving: it
// retries after growing pauses, counts each failure and warns once.
func TestAcceptErrorsPass(t *testing.T) {
	checkGoroutines(t)
	ca := testpki.NewCA(t)
	leaf := ca.Issue(t, "front", testpki.Options{Names: []string{"127.0.0.1"}})
	ts, err := tlsconf.NewServer(tlsconf.ServerOptions{Certificates: []tlsconf.CertFiles{{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile}}})
	if err != nil {
		t.Fatal(err)
	}
	b := startBackend(t, "b0")
	tests := []struct {
		name   string
		errno  syscall.Errno
		reason int
		tls    bool
	}{
		{"EMFILE", syscall.EMFILE, acceptEMFILE, false},
		{"EMFILE over TLS", syscall.EMFILE, acceptEMFILE, true},
		{"ENFILE", syscall.ENFILE, acceptENFILE, false},
		{"ENOBUFS", syscall.ENOBUFS, acceptENOBUFS, false},
		{"ECONNABORTED over TLS", syscall.ECONNABORTED, acceptOther, true},
		{"EPROTO", syscall.EPROTO, acceptOther, false},
	}
	const fails = 5
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, logs := newTestServer(t, basicConfig, b.addr())
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			fl := &faultyListener{Listener: inner, fails: fails, err: acceptError(tc.errno)}
			var ln net.Listener = fl
			d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
			url := "ws://" + inner.Addr().String() + "/"
			if tc.tls {
				ln = WrapListener(fl, ts.Config())
				d.TLSClientConfig = &tls.Config{RootCAs: ca.Pool()}
				url = "wss://" + inner.Addr().String() + "/"
			}
			done := serve(t, srv, ln)

			c, _, err := d.Dial(url, nil)
			if err != nil {
				t.Fatalf("upgrade after %d failed accepts: %v", fails, err)
			}
			defer c.Close()
			if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hi" {
				t.Fatalf("echo: %q %v", msg, err)
			}
			select {
			case err := <-done:
				t.Fatalf("Serve returned %v", err)
			default:
			}
			if got := srv.stats.AcceptErrors[tc.reason].Load(); got != fails {
				t.Fatalf("counted %d %s accept errors, want %d", got, acceptErrLabels[tc.reason], fails)
			}
			// The pauses double from 5 ms: timers never fire early, so
			// these lower bounds hold however slow the machine.
			calls := fl.failedAccepts()
			for i := 1; i < len(calls); i++ {
				want := acceptRetryMin << (i - 1)
				if gap := calls[i].Sub(calls[i-1]); gap < want {
					t.Errorf("pause %d was %v, want at least %v", i, gap, want)
				}
			}
			if n := logs.FilterMessageSnippet("accept failed").Len(); n != 1 {
				t.Fatalf("%d accept warnings for %d failures within %v, want 1", n, fails, logEvery)
			}
		})
	}
}

// TestAcceptFailureEndsServe: a listener that fails for good still ends
// Serve with its error.
func TestAcceptFailureEndsServe(t *testing.T) {
	srv, _ := newTestServer(t, basicConfig, "127.0.0.1:1")
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	broken := acceptError(syscall.EINVAL)
	done := serve(t, srv, &faultyListener{Listener: inner, fails: 1, err: broken})
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("Serve returned %v, want %v", err, broken)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still running after its listener failed")
	}
}

const capConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
admission: {max_connections: 2}
defaults: {ping_interval: 0s}
routes:
  - {path: /, pool: p}
pools:
  p:
    backends: [{address: "{{B0}}"}]
`

// httpConn is a raw keep-alive HTTP/1.1 client connection.
type httpConn struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dialHTTP(t *testing.T, addr string) *httpConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &httpConn{t: t, conn: c, br: bufio.NewReader(c)}
}

func (h *httpConn) send() {
	h.t.Helper()
	if _, err := io.WriteString(h.conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		h.t.Fatal(err)
	}
}

// read reads a response within d.
func (h *httpConn) read(d time.Duration) (*http.Response, error) {
	_ = h.conn.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, err
}

// get sends a request and expects a 200.
func (h *httpConn) get() {
	h.t.Helper()
	h.send()
	resp, err := h.read(10 * time.Second)
	if err != nil || resp.StatusCode != 200 {
		h.t.Fatalf("GET: %v %v", resp, err)
	}
}

// TestConnectionCap checks admission.max_connections on a real listener:
// at the cap the proxy stops accepting and serves the next client once a
// connection closes, sessions leave the count, an idle keep-alive
// connection is closed to make room, and a reload that raises the cap
// lets waiting clients in.
func TestConnectionCap(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, capConfig, b.addr())
	addr := p.ln.Addr().String()
	g := &p.srv.conns
	open := func(n int64) {
		t.Helper()
		waitFor(t, fmt.Sprintf("%d connections open", n), func() bool { return g.connections() == n })
	}

	// Two silent clients fill the cap; a third waits in the backlog.
	first, second := dialHTTP(t, addr), dialHTTP(t, addr)
	open(2)
	third := dialHTTP(t, addr)
	third.send()
	waitFor(t, "accept paused", func() bool { return p.srv.stats.AcceptPaused.Load() > 0 })
	if resp, err := third.read(300 * time.Millisecond); err == nil {
		t.Fatalf("third client served (%d) with the cap of 2 full", resp.StatusCode)
	}
	first.conn.Close()
	resp, err := third.read(10 * time.Second)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("third client after one closed: %v %v", resp, err)
	}
	second.conn.Close()
	third.conn.Close()
	open(0)

	// Sessions are not connections: four of them under a cap of two,
	// and plain requests still get in.
	for i := 0; i < 4; i++ {
		c := dial(t, p.url("/"), nil)
		defer c.Close()
	}
	p.waitSessions(t, 4)
	open(0)
	plain := dialHTTP(t, addr)
	plain.get()
	plain.conn.Close()

	// Idle keep-alive connections make room: the one idle longest goes
	// once it has been idle for evictIdleAfter.
	open(0)
	older, newer := dialHTTP(t, addr), dialHTTP(t, addr)
	older.get()
	newer.get()
	late := dialHTTP(t, addr)
	late.get()
	if got := p.srv.stats.ConnectionsEvicted.Load(); got != 1 {
		t.Fatalf("%d connections evicted, want 1", got)
	}
	if _, err := older.read(10 * time.Second); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("the connection idle longest: %v, want it closed", err)
	}
	newer.get()
	late.conn.Close()
	newer.conn.Close()
	open(0)

	// A reload that raises the cap wakes the waiting listener.
	a, c := dialHTTP(t, addr), dialHTTP(t, addr)
	open(2)
	waiting := dialHTTP(t, addr)
	waiting.send()
	cfg, err := config.Parse("test.yaml", []byte(strings.ReplaceAll(strings.ReplaceAll(capConfig, "{{B0}}", b.addr()), "max_connections: 2", "max_connections: 3")))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.srv.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if resp, err := waiting.read(10 * time.Second); err != nil || resp.StatusCode != 200 {
		t.Fatalf("waiting client after the cap was raised: %v %v", resp, err)
	}
	a.conn.Close()
	c.conn.Close()
}

// TestConnStateAllocs: moving a connection between idle and active, once
// per request, allocates nothing.
func TestConnStateAllocs(t *testing.T) {
	var g connGate
	conns := make([]net.Conn, 1000)
	for i := range conns {
		conns[i] = &net.TCPConn{}
		g.connState(conns[i], fasthttp.StateNew)
	}
	c := conns[500]
	if n := testing.AllocsPerRun(1000, func() {
		g.connState(c, fasthttp.StateActive)
		g.connState(c, fasthttp.StateIdle)
	}); n != 0 {
		t.Fatalf("%v allocations per request", n)
	}
	for _, c := range conns {
		g.open.Add(1) // as their accepts would have
		g.connState(c, fasthttp.StateClosed)
	}
	if n := g.open.Load(); n != 0 {
		t.Fatalf("%d connections left open", n)
	}
}

// BenchmarkConnState is the gate's cost per plain HTTP request, from
// every core at once.
func BenchmarkConnState(b *testing.B) {
	var g connGate
	b.RunParallel(func(pb *testing.PB) {
		c := net.Conn(&net.TCPConn{})
		g.connState(c, fasthttp.StateNew)
		for pb.Next() {
			g.connState(c, fasthttp.StateActive)
			g.connState(c, fasthttp.StateIdle)
		}
	})
}
