package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// headEndRef is headEnd written the obvious way: the first blank line,
// CRLF or bare LF.
func headEndRef(b []byte) int {
	for i := 0; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if i+1 < len(b) && b[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
			return i + 3
		}
	}
	return 0
}

// headEndSplit feeds b to headEnd as reads of the given sizes would, and
// returns what it found once it found it.
func headEndSplit(b []byte, cuts ...int) int {
	scanned := 0
	for _, n := range append(cuts, len(b)) {
		n = min(n, len(b))
		if end := headEnd(b[:n], scanned); end > 0 {
			return end
		}
		scanned = n
	}
	return 0
}

// A head split across two reads at every offset, and across reads of one
// byte, ends where the whole head ends.
func TestHeadEndSplit(t *testing.T) {
	heads := []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"GET / HTTP/1.1\r\nHost: a\n\r\n",
		"GET / HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x81\x85abcdhello",
	}
	for _, h := range heads {
		b := []byte(h)
		want := headEndRef(b)
		if want == 0 {
			t.Fatalf("%q: no head", h)
		}
		if got := headEnd(b, 0); got != want {
			t.Fatalf("%q: headEnd %d, want %d", h, got, want)
		}
		for cut := 0; cut <= len(b); cut++ {
			if got := headEndSplit(b, cut); got != want {
				t.Fatalf("%q cut at %d: %d, want %d", h, cut, got, want)
			}
		}
		cuts := make([]int, len(b))
		for i := range cuts {
			cuts[i] = i + 1
		}
		if got := headEndSplit(b, cuts...); got != want {
			t.Fatalf("%q a byte at a time: %d, want %d", h, got, want)
		}
	}
	for _, h := range []string{"", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: a\r\n\r", "\r"} {
		if got := headEnd([]byte(h), 0); got != 0 {
			t.Fatalf("%q: headEnd %d, want 0", h, got)
		}
	}
}

// FuzzHeadEnd checks the loops' head framer against the obvious one, read
// whole and split at any point.
func FuzzHeadEnd(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 7)
	f.Add([]byte("GET / HTTP/1.1\nHost: a\n\nxyz"), 22)
	f.Add([]byte("\n\r\n"), 1)
	f.Fuzz(func(t *testing.T, b []byte, cut int) {
		want := headEndRef(b)
		if got := headEnd(b, 0); got != want {
			t.Fatalf("%q: %d, want %d", b, got, want)
		}
		if cut < 0 {
			cut = -cut
		}
		if got := headEndSplit(b, cut%(len(b)+1)); got != want {
			t.Fatalf("%q cut at %d: %d, want %d", b, cut%(len(b)+1), got, want)
		}
	})
}

// engines names both engines, for tests that hold the loops to what the
// goroutines do.
var engines = []string{"goroutines", "loops"}

// loopConfig is headConfig with an engine.
func loopConfig(engine string) string {
	return "engine: " + engine + "\n" + headConfig
}

// startEngine starts a proxy on headConfig with engine and waits until
// its listener is served the way engine says.
func startEngine(t *testing.T, engine string, backends ...string) *testProxy {
	t.Helper()
	if engineOverride != "" && engineOverride != engine {
		t.Skipf("WSPROXY_ENGINE=%s", engineOverride)
	}
	p := startProxy(t, loopConfig(engine), backends...)
	waitEngineServed(t, p.srv, engine)
	return p
}

// waitEngineServed waits until srv serves its listener the way engine says.
func waitEngineServed(t *testing.T, srv *Server, engine string) {
	t.Helper()
	waitFor(t, "the listener served", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for ln := range srv.listeners {
			_, loops := ln.(*loopListener)
			return loops == (engine == "loops")
		}
		return false
	})
}

// loopExchange sends the pieces, each a write of its own, and returns what
// the proxy answered until it closed or went quiet for 2 s.
func loopExchange(t *testing.T, addr string, pieces ...string) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, p := range pieces {
		if _, err := conn.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(conn)
	return string(b)
}

// An upgrade whose head arrives in two writes split at every offset is
// proxied, on both engines.
func TestLoopHeadSplitEveryOffset(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			b := startBackend(t, "b0")
			p := startEngine(t, engine, b.addr())
			req := rawHandshake(p.ln.Addr().String(), "/")
			hello := clientFrame(true, wsframe.OpText, []byte("hi"))
			for cut := 1; cut < len(req); cut++ {
				conn, err := net.Dial("tcp", p.ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := conn.Write([]byte(req[:cut])); err != nil {
					t.Fatal(err)
				}
				if _, err := conn.Write(append([]byte(req[cut:]), hello...)); err != nil {
					t.Fatal(err)
				}
				rc := &rawClient{t: t, conn: conn, br: bufio.NewReader(conn)}
				resp, err := http.ReadResponse(rc.br, nil)
				if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf("cut at %d: %v %v", cut, resp, err)
				}
				f, err := rc.next()
				if err != nil || string(f.payload) != "hi" {
					t.Fatalf("cut at %d: echo %q %v", cut, f.payload, err)
				}
				conn.Close()
			}
			p.waitSessions(t, 0)
		})
	}
}

// Two plain requests in one write are both answered, in order, and a
// frame sent behind an upgrade request in the same write reaches the
// backend: the loops hand what they read on to fasthttp.
func TestLoopPipelined(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			b := startBackend(t, "b0")
			p := startEngine(t, engine, b.addr())
			addr := p.ln.Addr().String()
			got := loopExchange(t, addr, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			if n := strings.Count(got, "HTTP/1.1 200"); n != 2 || strings.Count(got, "\r\n\r\nb0") != 2 {
				t.Fatalf("two pipelined requests: %d answers:\n%s", n, got)
			}
			rc := dialRaw(t, p, "/", clientFrame(true, wsframe.OpText, []byte("behind")))
			if f, err := rc.next(); err != nil || string(f.payload) != "behind" {
				t.Fatalf("frame behind the head: %q %v", f.payload, err)
			}
		})
	}
}

// A head that fills max_header_bytes exactly is served; one byte more
// gets 431; both engines answer the same.
func TestLoopHeadAtBufferEnd(t *testing.T) {
	answers := map[string][2]string{}
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			b := startBackend(t, "b0")
			p := startEngine(t, engine, b.addr())
			addr := p.ln.Addr().String()
			head := func(size int) string {
				h := "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
				return h + strings.Repeat("p", size-len(h)-4) + "\r\n\r\n"
			}
			fits, over := head(2048), head(2049)
			if len(fits) != 2048 {
				t.Fatalf("head of %d bytes", len(fits))
			}
			a := loopExchange(t, addr, fits)
			if !strings.HasPrefix(a, "HTTP/1.1 200") {
				t.Fatalf("a head of exactly max_header_bytes: %q", a)
			}
			o := loopExchange(t, addr, over)
			if !strings.HasPrefix(o, "HTTP/1.1 431") {
				t.Fatalf("a head one byte over: %q", o)
			}
			if n := p.srv.Stats().RequestHeadTooLarge.Load(); n != 1 {
				t.Fatalf("RequestHeadTooLarge = %d, want 1", n)
			}
			answers[engine] = [2]string{firstLine(a), stripDate(o)}
		})
	}
	sameOnBoth(t, answers)
}

// A client that sends half a head and then nothing gets the same 408 at
// handshake_timeout from both engines, counted.
func TestLoopSlowClient(t *testing.T) {
	answers := map[string]string{}
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			b := startBackend(t, "b0")
			p := startEngine(t, engine, b.addr())
			start := time.Now()
			got := loopExchange(t, p.ln.Addr().String(), "GET / HTTP/1.1\r\nHost: x\r\n")
			took := time.Since(start)
			if !strings.HasPrefix(got, "HTTP/1.1 408") {
				t.Fatalf("answer %q, want 408", got)
			}
			// handshake_timeout is 1s from the accept, not from the
			// handover to fasthttp.
			if took < 900*time.Millisecond || took > 1900*time.Millisecond {
				t.Fatalf("408 after %v, want about 1s", took)
			}
			if n := p.srv.Stats().RequestTimeouts.Load(); n != 1 {
				t.Fatalf("RequestTimeouts = %d, want 1", n)
			}
			answers[engine] = stripDate(got)
		})
	}
	sameOnBoth(t, answers)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// stripDate drops the Date header of an answer, for comparisons.
func stripDate(s string) string {
	var out bytes.Buffer
	for _, l := range strings.SplitAfter(s, "\n") {
		if !strings.HasPrefix(l, "Date: ") {
			out.WriteString(l)
		}
	}
	return out.String()
}

// A session outlives the handshake_timeout that bounded reading its
// head: the read deadline fasthttp set for it does not stay on the
// socket the relay reads.
func TestLoopSessionOutlivesHeadDeadline(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			b := startBackend(t, "b0")
			p := startEngine(t, engine, b.addr())
			rc := dialRaw(t, p, "/", nil)
			time.Sleep(1500 * time.Millisecond) // past the 1s handshake_timeout, not a synchronisation
			rc.send(clientFrame(true, wsframe.OpText, []byte("late")))
			if f, err := rc.next(); err != nil || string(f.payload) != "late" {
				t.Fatalf("echo after the head's deadline: %q %v", f.payload, err)
			}
			rc.send(clientFrame(true, wsframe.OpClose, []byte{0x03, 0xe8}))
			if f, err := rc.next(); err != nil || f.op != wsframe.OpClose {
				t.Fatalf("close reply: %+v %v", f, err)
			}
		})
	}
}

// A connection handed to fasthttp has TCP keep-alive off, as the
// listeners wsproxy opens give their connections, though net.FileConn
// turns it on.
func TestLoopHandedOverNoKeepAlive(t *testing.T) {
	b := startBackend(t, "b0")
	p := startEngine(t, "loops", b.addr())
	conn, err := net.Dial("tcp", p.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	resp.Body.Close()
	var handed []*replayConn
	p.srv.conns.conns.Range(func(k, _ any) bool {
		if rc, ok := k.(*replayConn); ok {
			handed = append(handed, rc)
		}
		return true
	})
	if len(handed) != 1 {
		t.Fatalf("%d connections handed over, want 1", len(handed))
	}
	rc, err := handed[0].Conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on int
	var serr error
	_ = rc.Control(func(fd uintptr) { on, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE) })
	if serr != nil || on != 0 {
		t.Fatalf("SO_KEEPALIVE %d %v, want off", on, serr)
	}
}
