package proxy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// testBackend is a real WebSocket backend on loopback.
type testBackend struct {
	name     string
	ln       net.Listener
	srv      *fasthttp.Server
	upgrader websocket.FastHTTPUpgrader
	// onConn, when set, handles each upgraded connection instead of echo.
	onConn func(c *websocket.Conn, ctx *fasthttp.RequestCtx)
	// onHTTP, when set, answers requests that are not upgrades, or all
	// requests if reject is true.
	onHTTP func(ctx *fasthttp.RequestCtx)
	reject bool
	// forget, when set, keeps no record of upgrades (long soak runs).
	forget bool

	mu       sync.Mutex
	headers  []http.Header // request headers of each upgrade
	conns    int
	received []string
}

func startBackend(t testing.TB, name string, opts ...func(*testBackend)) *testBackend {
	t.Helper()
	b := &testBackend{name: name}
	b.upgrader = websocket.FastHTTPUpgrader{
		CheckOrigin:     func(*fasthttp.RequestCtx) bool { return true },
		ReadBufferSize:  4096,
		WriteBufferSize: 4096,
	}
	for _, o := range opts {
		o(b)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.ln = ln
	b.srv = &fasthttp.Server{Handler: b.handle, Name: name, MaxRequestBodySize: 1 << 20}
	go b.srv.Serve(ln) //nolint:errcheck
	t.Cleanup(func() { b.srv.Shutdown() })
	return b
}

func (b *testBackend) addr() string { return b.ln.Addr().String() }

func (b *testBackend) handle(ctx *fasthttp.RequestCtx) {
	if b.reject || !websocket.FastHTTPIsWebSocketUpgrade(ctx) {
		if b.onHTTP != nil {
			b.onHTTP(ctx)
			return
		}
		ctx.SetBodyString(b.name)
		return
	}
	if !b.forget {
		h := http.Header{}
		ctx.Request.Header.VisitAll(func(k, v []byte) { h.Add(string(k), string(v)) })
		b.mu.Lock()
		b.headers = append(b.headers, h)
		b.conns++
		b.mu.Unlock()
	}
	_ = b.upgrader.Upgrade(ctx, func(c *websocket.Conn) {
		defer c.Close()
		if b.onConn != nil {
			b.onConn(c, ctx)
			return
		}
		echo(c)
	})
}

// echo answers every message with the same message.
func echo(c *websocket.Conn) {
	for {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(mt, msg); err != nil {
			return
		}
	}
}

// testProxy is a real proxy Server on loopback.
type testProxy struct {
	srv  *Server
	ln   net.Listener
	done chan struct{}
}

// startProxy starts a proxy for the YAML config; "{{B0}}", "{{B1}}", ...
// are replaced by the backends' addresses.
func startProxy(t testing.TB, yaml string, backends ...string) *testProxy {
	t.Helper()
	for i, a := range backends {
		yaml = strings.ReplaceAll(yaml, fmt.Sprintf("{{B%d}}", i), a)
	}
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	srv, err := New(Config{Config: cfg, CloseTimeout: 2 * time.Second})
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
	return p
}

func (p *testProxy) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	// A short drain: tests that end with sessions open need not wait.
	ctx, cancel := contextWithTimeout(time.Second)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
	<-p.done
}

func (p *testProxy) url(path string) string { return "ws://" + p.ln.Addr().String() + path }

// waitSessions waits until the proxy has n live sessions.
func (p *testProxy) waitSessions(t testing.TB, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d live sessions", n), func() bool { return p.srv.Sessions() == n })
}

// waitFor polls cond until it holds, failing after 10 s. It synchronises on
// a state reached, not on elapsed time.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// checkGoroutines fails if goroutines started during the test remain.
// fasthttp's date updater, started once per process by the first server,
// and its worker pool cleaners, which sleep 10 s before they see a stop,
// are not the test's.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := countGoroutines()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for countGoroutines() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Fatalf("goroutine leak: %d before, %d after\n%s", before, countGoroutines(), buf[:n])
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

func countGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.TrimSpace(g) != "" && !strings.Contains(g, "fasthttp.updateServerDate") &&
			!strings.Contains(g, "fasthttp.(*workerPool).Start") {
			count++
		}
	}
	return count
}

func dial(t testing.TB, url string, h http.Header) *websocket.Conn {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial(url, h)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rawClient speaks WebSocket frame by frame, to send what a library would
// not.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

// rawHandshake builds a valid upgrade request for path plus extra header
// lines.
func rawHandshake(host, path string, extra ...string) string {
	var key [16]byte
	_, _ = rand.Read(key[:])
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", path, host)
	fmt.Fprintf(&b, "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", base64.StdEncoding.EncodeToString(key[:]))
	for _, e := range extra {
		b.WriteString(e + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// dialRaw connects, sends the handshake followed by trailer in the same
// write, and checks for a 101.
func dialRaw(t testing.TB, p *testProxy, path string, trailer []byte) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", p.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	req := append([]byte(rawHandshake(p.ln.Addr().String(), path)), trailer...)
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	rc := &rawClient{t: t, conn: conn, br: bufio.NewReader(conn)}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	return rc
}

// clientFrame builds a masked client frame.
func clientFrame(fin bool, op byte, payload []byte) []byte {
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	f := wsframe.AppendHeader(nil, fin, op, &mask, len(payload))
	start := len(f)
	f = append(f, payload...)
	wsframe.MaskBytes(mask, 0, f[start:])
	return f
}

func (rc *rawClient) send(frames ...[]byte) {
	rc.t.Helper()
	if _, err := rc.conn.Write(bytes.Join(frames, nil)); err != nil {
		rc.t.Fatal(err)
	}
}

type frame struct {
	fin     bool
	op      byte
	payload []byte
}

// next reads one frame from the proxy (unmasked, as a server sends).
func (rc *rawClient) next() (frame, error) {
	_ = rc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [wsframe.MaxHeaderLen]byte
	if _, err := io.ReadFull(rc.br, hdr[:2]); err != nil {
		return frame{}, err
	}
	n := 2
	for {
		h, hl, err := wsframe.Parse(hdr[:n])
		if err != nil {
			return frame{}, err
		}
		if hl > 0 {
			if h.Masked {
				return frame{}, errors.New("masked frame from proxy")
			}
			p := make([]byte, h.Length)
			if _, err := io.ReadFull(rc.br, p); err != nil {
				return frame{}, err
			}
			return frame{fin: h.Fin, op: h.Opcode, payload: p}, nil
		}
		if _, err := io.ReadFull(rc.br, hdr[n:n+1]); err != nil {
			return frame{}, err
		}
		n++
	}
}

// expectClose reads until a Close frame and returns its code and reason.
func (rc *rawClient) expectClose() (int, string) {
	rc.t.Helper()
	for {
		f, err := rc.next()
		if err != nil {
			rc.t.Fatalf("waiting for Close: %v", err)
		}
		if f.op == wsframe.OpClose {
			code, reason, _ := wsframe.ParseClose(f.payload)
			return code, string(reason)
		}
	}
}

// closeCode extracts the code of a websocket.CloseError.
func closeCode(err error) (int, string) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code, ce.Text
	}
	return -1, fmt.Sprint(err)
}
