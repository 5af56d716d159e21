package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/health"
)

// healthProxy is a proxy whose passive health is a real health.Manager
// feeding the balancer, as in the binary, with its logs observed.
type healthProxy struct {
	*testProxy
	health *health.Manager
	logs   *observer.ObservedLogs
}

// startHealthProxy starts a proxy for yaml ("{{B0}}"... replaced by the
// backends) with passive health checks as the pools configure them.
func startHealthProxy(t *testing.T, yaml string, backends ...string) *healthProxy {
	t.Helper()
	for i, a := range backends {
		yaml = strings.ReplaceAll(yaml, fmt.Sprintf("{{B%d}}", i), a)
	}
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	reg := balancer.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	m := health.NewManager(ctx, health.Config{Setter: reg, Logger: log.Named("health")})
	t.Cleanup(func() { m.Close(); cancel() })
	var specs []health.PoolSpec
	for _, name := range cfg.PoolNames() {
		pc := cfg.Pools[name]
		spec := health.Spec{Type: health.TypeNone, PassiveFailures: pc.Health.PassiveFailures}
		if spec.PassiveFailures == 0 {
			spec.PassiveFailures = health.PassiveOff
		}
		var addrs []string
		for _, b := range pc.Backends {
			addrs = append(addrs, b.Address)
		}
		specs = append(specs, health.PoolSpec{Pool: name, Backends: addrs, Spec: spec})
	}
	m.Update(specs)
	srv, err := New(Config{Config: cfg, Logger: log, Backends: reg, Health: m, CloseTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &testProxy{srv: srv, ln: ln, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(p.stop)
	return &healthProxy{testProxy: p, health: m, logs: logs}
}

// up reports whether passive health holds addr up.
func (hp *healthProxy) up(t *testing.T, addr string) bool {
	t.Helper()
	up, ok := hp.health.State(addr)
	if !ok {
		t.Fatalf("health does not know %s", addr)
	}
	return up
}

func (hp *healthProxy) base() string { return "http://" + hp.ln.Addr().String() }

// rawBackend is a hand-written HTTP/1.1 backend on loopback, to misbehave
// on cue. serve answers the nth request (from 0) of a connection, nthConn
// of the backend (from 0); it returns false to stop serving the
// connection, which is then closed.
type rawBackend struct {
	ln       net.Listener
	accepted atomic.Int64
	serve    func(c net.Conn, nthConn, nth int, req *http.Request) bool
}

func startRawBackend(t *testing.T, serve func(c net.Conn, nthConn, nth int, req *http.Request) bool) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rb := &rawBackend{ln: ln, serve: serve}
	go rb.acceptLoop()
	t.Cleanup(func() { ln.Close() })
	return rb
}

func (rb *rawBackend) addr() string { return rb.ln.Addr().String() }

func (rb *rawBackend) acceptLoop() {
	for {
		c, err := rb.ln.Accept()
		if err != nil {
			return
		}
		n := int(rb.accepted.Add(1) - 1)
		go rb.serveConn(c, n)
	}
}

func (rb *rawBackend) serveConn(c net.Conn, nthConn int) {
	defer c.Close()
	br := bufio.NewReader(c)
	for nth := 0; ; nth++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if !rb.serve(c, nthConn, nth, req) {
			return
		}
	}
}

// reset closes c with a TCP RST.
func reset(c net.Conn) {
	_ = c.(*net.TCPConn).SetLinger(0)
	_ = c.Close()
}

func answerOK(c net.Conn, req *http.Request, body string) bool {
	_, _ = io.Copy(io.Discard, req.Body)
	_, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	return err == nil
}

const passiveConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: true}
defaults: {read_timeout: %s, ping_interval: 0s, write_timeout: 1s, handshake_timeout: 2s}
routes:
  - {path: /, pool: p}
pools:
  p:
    idle_conn_timeout: %s
    backends: [{address: "{{B0}}"}]
    health: {passive_failures: 2}
`

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// TestOnlyBackendFaultsCount sends a backend the failures that are not
// its own (a client that aborts its upload, an HTTP/1.0 request without
// Host, answers slower than read_timeout) and failures that are
// (connection resets) between successes. With passive_failures 2 the
// backend must stay up throughout: only two of its own failures in a row
// would take it down.
func TestOnlyBackendFaultsCount(t *testing.T) {
	var mode atomic.Value // what the backend does with fresh connections
	mode.Store("ok")
	release := make(chan struct{})
	rb := startRawBackend(t, func(c net.Conn, _, _ int, req *http.Request) bool {
		switch mode.Load().(string) {
		case "reset":
			reset(c)
			return false
		case "slow":
			<-release
			return false
		}
		return answerOK(c, req, "ok")
	})
	hp := startHealthProxy(t, fmt.Sprintf(passiveConfig, "300ms", "0s"), rb.addr())
	addr := hp.ln.Addr().String()
	st := hp.srv.Stats()

	check := func(what string) {
		t.Helper()
		if !hp.up(t, rb.addr()) {
			t.Fatalf("%s took the backend down", what)
		}
		if code, body := get(t, hp.base()+"/"); code != 200 || body != "ok" {
			t.Fatalf("after %s: %d %q", what, code, body)
		}
	}

	// A client that aborts its upload half-way: not the backend's fault.
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n%s", strings.Repeat("a", 100_000))
		c.Close()
	}
	waitFor(t, "3 client aborts", func() bool { return st.HTTPClientAborts.Load() == 3 })
	check("3 aborted uploads")

	// HTTP/1.0 without Host: the backend gets the request, Host set to
	// its own address.
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /old HTTP/1.0\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		c.Close()
		if resp.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("HTTP/1.0 without Host: %d %q", resp.StatusCode, body)
		}
	}
	check("3 HTTP/1.0 requests without Host")

	// Answers slower than read_timeout: 504, and the backend's choice.
	mode.Store("slow")
	for i := 0; i < 3; i++ {
		resp, err := http.Get(hp.base() + "/poll")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 504 || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("slow answer: %d %q, want 504 with Retry-After", resp.StatusCode, body)
		}
	}
	close(release)
	mode.Store("ok")
	check("3 answers slower than read_timeout")

	// Resets on fresh connections are the backend's: each one counts,
	// and each success in between starts the count again.
	for i := 0; i < 3; i++ {
		mode.Store("reset")
		if code, _ := get(t, hp.base()+"/"); code != 502 {
			t.Fatalf("reset: %d, want 502", code)
		}
		mode.Store("ok")
		check(fmt.Sprintf("reset %d and a success", i))
	}
	// Two in a row are two of the backend's own failures.
	mode.Store("reset")
	get(t, hp.base()+"/")
	get(t, hp.base()+"/")
	if hp.up(t, rb.addr()) {
		t.Fatal("two resets in a row left the backend up")
	}
	// The passive trip names the pool.
	downs := hp.logs.FilterMessage("backend down").All()
	if len(downs) != 1 || downs[0].ContextMap()["pool"] != "p" {
		t.Fatalf("backend down log lines: %v", downs)
	}
	if n := st.HTTPBackendErrors.Load(); n != 3+3+2 {
		t.Errorf("HTTPBackendErrors = %d, want 8 (3 slow, 3+2 resets)", n)
	}
	// The access log gives a refusal's real body length.
	for _, e := range hp.logs.FilterMessage("http").All() {
		if e.ContextMap()["status"] == int64(504) {
			if n := e.ContextMap()["content_length"]; n != int64(len("backend did not answer in time")) {
				t.Fatalf("access log of a 504: content_length %v", n)
			}
			return
		}
	}
	t.Fatal("no access-log line for a 504")
}

// TestClassify pins the one mapping from backend errors to statuses and
// blame, for plain HTTP and upgrades, on errors as the kernel and the
// libraries return them.
func TestClassify(t *testing.T) {
	sys := func(op string, e syscall.Errno) error {
		return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, e)}
	}
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		name   string
		err    error
		x      exchange
		status int
		blame  bool
	}{
		{"refused", &dialError{sys("dial", syscall.ECONNREFUSED)}, exchange{}, 502, true},
		{"unreachable", &dialError{sys("dial", syscall.EHOSTUNREACH)}, exchange{}, 502, true},
		{"connect timed out", &dialError{context.DeadlineExceeded}, exchange{}, 504, true},
		{"connect timed out, upgrade", &dialError{timeout}, exchange{upgrade: true}, 504, true},
		{"EMFILE on connect", &dialError{sys("socket", syscall.EMFILE)}, exchange{}, 503, false},
		{"ENFILE on connect", &dialError{sys("socket", syscall.ENFILE)}, exchange{upgrade: true}, 503, false},
		{"ENOBUFS on connect", &dialError{sys("dial", syscall.ENOBUFS)}, exchange{}, 503, false},
		{"no local port", &dialError{sys("dial", syscall.EADDRNOTAVAIL)}, exchange{}, 503, false},
		{"TLS refused", &dialError{errors.New("tls: bad certificate")}, exchange{}, 502, true},
		{"reset, fresh", sys("read", syscall.ECONNRESET), exchange{dialed: true}, 502, true},
		{"EOF, fresh", io.EOF, exchange{dialed: true}, 502, true},
		{"EOF, reused", io.EOF, exchange{dialed: true, reused: true}, 502, false},
		{"EOF after answer bytes", io.ErrUnexpectedEOF, exchange{dialed: true, heard: true}, 502, false},
		{"fasthttp timeout", fasthttp.ErrTimeout, exchange{dialed: true}, 504, false},
		{"silent long-poll", timeout, exchange{dialed: true}, 504, false},
		{"no 101 in time", timeout, exchange{dialed: true, upgrade: true}, 504, true},
		{"not HTTP", fmt.Errorf("%w: junk", errProtocol), exchange{dialed: true}, 502, false},
		{"bad status line", errBadStatus, exchange{dialed: true, upgrade: true}, 502, false},
		{"client gone", sys("write", syscall.EPIPE), exchange{dialed: true, client: io.ErrUnexpectedEOF}, 400, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := classify(tc.err, tc.x)
			if v.status != tc.status || v.blame != tc.blame || v.reason == "" {
				t.Fatalf("classify = %+v, want status %d blame %v", v, tc.status, tc.blame)
			}
		})
	}
}

// TestLocalResourcesAreNotTheBackends runs the proxy out of descriptors:
// the connect to the backend fails with EMFILE, which must be answered 503
// with Retry-After, counted as the proxy's own, and leave the backend up.
func TestLocalResourcesAreNotTheBackends(t *testing.T) {
	// The backend closes every connection, so each request connects.
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onHTTP = func(ctx *fasthttp.RequestCtx) { ctx.SetConnectionClose() }
	})
	hp := startHealthProxy(t, fmt.Sprintf(passiveConfig, "2s", "0s"), b.addr())
	// A keep-alive client connection opened while descriptors remain.
	c, err := net.Dial("tcp", hp.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	roundTrip := func(path string) *http.Response {
		t.Helper()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp
	}
	if r := roundTrip("/"); r.StatusCode != 200 {
		t.Fatalf("before: %d", r.StatusCode)
	}

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	var files []*os.File
	restore := func() {
		for _, f := range files {
			f.Close()
		}
		files = nil
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	defer restore()
	low := lim
	low.Cur = 4096
	if low.Cur > lim.Max {
		low.Cur = lim.Max
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("cannot lower the open-files limit: %v", err)
	}
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		files = append(files, f)
	}
	var codes []int
	for i := 0; i < 3; i++ {
		r := roundTrip("/")
		codes = append(codes, r.StatusCode)
		if r.StatusCode != 503 || r.Header.Get("Retry-After") == "" {
			restore()
			t.Fatalf("out of descriptors: %d (Retry-After %q), want 503 with Retry-After", r.StatusCode, r.Header.Get("Retry-After"))
		}
	}
	// An upgrade on the same connection meets the same wall.
	fmt.Fprint(c, rawHandshake("x", "/ws"))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		restore()
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		restore()
		t.Fatalf("upgrade out of descriptors: %d, want 503 with Retry-After", resp.StatusCode)
	}
	restore()
	if n := hp.srv.Stats().HTTPLocalResources.Load(); n != 3 {
		t.Errorf("HTTPLocalResources = %d, want 3", n)
	}
	if n := hp.srv.Stats().HandshakeLocalResources.Load(); n != 1 {
		t.Errorf("HandshakeLocalResources = %d, want 1", n)
	}
	if !hp.up(t, b.addr()) {
		t.Fatal("the proxy's own EMFILE took the backend down")
	}
	if r := roundTrip("/"); r.StatusCode != 200 {
		t.Fatalf("after: %d", r.StatusCode)
	}
}

// fullBacklog returns the address of a listener whose accept queue is
// full: the kernel drops further SYNs, so connecting to it times out.
func fullBacklog(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break // the queue is full
		}
		t.Cleanup(func() { c.Close() })
		if i == 16 {
			t.Skip("the kernel accepts connections past a full backlog")
		}
	}
	return addr
}

// TestErrorsMapOneWay checks the one mapping on real sockets, for plain
// HTTP and upgrades alike: a connect that times out is 504, a refused one
// 502, a backend that accepts and never answers 504 (within
// handshake_timeout for an upgrade, read_timeout for plain HTTP), each
// counted once by the matching counter.
func TestErrorsMapOneWay(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	refusing := closed.Addr().String()
	closed.Close()
	p := startProxy(t, `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {handshake_timeout: 300ms, read_timeout: 300ms, ping_interval: 0s}
routes:
  - {path: /silent, pool: s}
  - {path: /refused, pool: r}
  - {path: /full, pool: f}
pools:
  s: {backends: [{address: "{{B0}}"}]}
  r: {backends: [{address: "{{B1}}"}]}
  f: {backends: [{address: "{{B2}}"}]}
`, silent.Addr().String(), refusing, fullBacklog(t))
	for _, tc := range []struct {
		path   string
		status int
	}{{"/silent", 504}, {"/refused", 502}, {"/full", 504}} {
		for _, upgrade := range []bool{true, false} {
			c, err := net.Dial("tcp", p.ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			if upgrade {
				fmt.Fprint(c, rawHandshake("x", tc.path))
			} else {
				fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", tc.path)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("%s (upgrade %v): %d, want %d with Retry-After", tc.path, upgrade, resp.StatusCode, tc.status)
			}
		}
	}
	st := p.srv.Stats()
	if st.HandshakeBackendTimeout.Load() != 2 || st.HandshakeBackendRefused.Load() != 1 || st.HTTPBackendErrors.Load() != 3 {
		t.Fatalf("upgrade timeouts %d refused %d, HTTP errors %d; want 2, 1, 3",
			st.HandshakeBackendTimeout.Load(), st.HandshakeBackendRefused.Load(), st.HTTPBackendErrors.Load())
	}
}

var _ = tls.VersionTLS12
