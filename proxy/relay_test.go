package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

const basicConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults:
  max_message_bytes: 32MiB
  ping_interval: 0s
routes:
  - {path: /, pool: p}
pools:
  p:
    backends: [{address: "{{B0}}"}]
`

func TestEchoSizes(t *testing.T) {
	checkGoroutines(t)
	b := startBackend(t, "b0")
	p := startProxy(t, basicConfig, b.addr())
	c := dial(t, p.url("/echo"), nil)
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 64 << 10, 1 << 20, 16 << 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			msg := bytes.Repeat([]byte{byte(n)}, n)
			for i := range msg {
				msg[i] = byte(i * 7)
			}
			if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
				t.Fatal(err)
			}
			mt, got, err := c.ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			if mt != websocket.BinaryMessage || !bytes.Equal(got, msg) {
				t.Fatalf("echo of %d bytes came back as %d bytes (type %d)", n, len(got), mt)
			}
		})
	}
	c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""))
	c.Close()
	p.waitSessions(t, 0)
}

func TestFragmentedWithInterleavedControl(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, basicConfig, b.addr())
	rc := dialRaw(t, p, "/", nil)
	// A text message in three fragments with a Ping between each: the
	// backend pongs the pings and echoes the whole message.
	rc.send(
		clientFrame(false, wsframe.OpText, []byte("hel")),
		clientFrame(true, wsframe.OpPing, []byte("p1")),
		clientFrame(false, wsframe.OpContinuation, []byte("lo, ")),
		clientFrame(true, wsframe.OpPing, []byte("p2")),
		clientFrame(true, wsframe.OpContinuation, []byte("world")),
	)
	var pongs []string
	for {
		f, err := rc.next()
		if err != nil {
			t.Fatal(err)
		}
		if f.op == wsframe.OpPong {
			pongs = append(pongs, string(f.payload))
			continue
		}
		if f.op != wsframe.OpText || string(f.payload) != "hello, world" {
			t.Fatalf("got op %d %q", f.op, f.payload)
		}
		break
	}
	if len(pongs) != 2 || pongs[0] != "p1" || pongs[1] != "p2" {
		t.Fatalf("pongs %q, want p1 p2", pongs)
	}
}

func TestBackendFragmentsReachClient(t *testing.T) {
	b := startBackend(t, "b0", func(b *testBackend) {
		b.upgrader.WriteBufferSize = 64 // forces the message out in fragments
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			w, _ := c.NextWriter(websocket.TextMessage)
			w.Write(bytes.Repeat([]byte("x"), 1000))
			w.Close()
			c.ReadMessage()
		}
	})
	p := startProxy(t, basicConfig, b.addr())
	c := dial(t, p.url("/"), nil)
	_, msg, err := c.ReadMessage()
	if err != nil || len(msg) != 1000 {
		t.Fatalf("len %d err %v", len(msg), err)
	}
}

func TestDataInHandshakeSegment(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, basicConfig, b.addr())
	// The first message rides in the same write (and TCP segment) as the
	// handshake.
	rc := dialRaw(t, p, "/", clientFrame(true, wsframe.OpBinary, []byte("early bird")))
	f, err := rc.next()
	if err != nil || f.op != wsframe.OpBinary || string(f.payload) != "early bird" {
		t.Fatalf("got %+v err %v", f, err)
	}
}

func TestBackendSendsRightAfter101(t *testing.T) {
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			c.WriteMessage(websocket.TextMessage, []byte("welcome"))
			echo(c)
		}
	})
	p := startProxy(t, basicConfig, b.addr())
	c := dial(t, p.url("/"), nil)
	_, msg, err := c.ReadMessage()
	if err != nil || string(msg) != "welcome" {
		t.Fatalf("%q %v", msg, err)
	}
}

func TestCompressionAndSubprotocolPassThrough(t *testing.T) {
	b := startBackend(t, "b0", func(b *testBackend) {
		b.upgrader.EnableCompression = true
		b.upgrader.Subprotocols = []string{"v2.chat", "v1.chat"}
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			c.EnableWriteCompression(true)
			echo(c)
		}
	})
	p := startProxy(t, basicConfig, b.addr())
	d := websocket.Dialer{EnableCompression: true, Subprotocols: []string{"v1.chat", "v2.chat"}}
	c, resp, err := d.Dial(p.url("/"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Subprotocol() != "v2.chat" {
		t.Fatalf("subprotocol %q, want v2.chat", c.Subprotocol())
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !bytes.Contains([]byte(ext), []byte("permessage-deflate")) {
		t.Fatalf("extensions %q, want permessage-deflate", ext)
	}
	c.EnableWriteCompression(true)
	msg := bytes.Repeat([]byte("compressible "), 1000)
	for i := 0; i < 3; i++ {
		if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.ReadMessage()
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("round %d: %d bytes, err %v", i, len(got), err)
		}
	}
	// Compressed frames carry RSV1: the proxy let them through both ways.
	if p.srv.Stats().ViolationsClient.Load()+p.srv.Stats().ViolationsBackend.Load() != 0 {
		t.Fatal("compressed frames were counted as violations")
	}
}

func TestClosePassesThrough(t *testing.T) {
	got := make(chan [2]any, 1)
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			_, _, err := c.ReadMessage()
			code, text := closeCode(err)
			got <- [2]any{code, text}
		}
	})
	p := startProxy(t, basicConfig, b.addr())
	c := dial(t, p.url("/"), nil)
	c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "bye now"))
	// The backend library answers the Close; the answer reaches us.
	_, _, err := c.ReadMessage()
	if code, _ := closeCode(err); code != 4001 {
		t.Fatalf("client got %v, want the echoed 4001", err)
	}
	g := <-got
	if g[0] != 4001 || g[1] != "bye now" {
		t.Fatalf("backend got %v", g)
	}
	p.waitSessions(t, 0)
}

func TestBackendCloseReachesClient(t *testing.T) {
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1008, "policy"))
			c.ReadMessage() // waits for the close reply
		}
	})
	p := startProxy(t, basicConfig, b.addr())
	c := dial(t, p.url("/"), nil)
	_, _, err := c.ReadMessage()
	if code, text := closeCode(err); code != 1008 || text != "policy" {
		t.Fatalf("got %d %q", code, text)
	}
	p.waitSessions(t, 0)
}

func TestBackendVanishes(t *testing.T) {
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			c.ReadMessage()
			c.NetConn().Close() // gone without a Close frame
		}
	})
	p := startProxy(t, basicConfig, b.addr())
	rc := dialRaw(t, p, "/", nil)
	rc.send(clientFrame(true, wsframe.OpText, []byte("trigger")))
	code, _ := rc.expectClose()
	if code != wsframe.CloseBadGateway {
		t.Fatalf("client got close %d, want 1014", code)
	}
	rc.send(clientFrame(true, wsframe.OpClose, []byte{0x03, 0xe8}))
	p.waitSessions(t, 0)
}

func TestClientVanishes(t *testing.T) {
	got := make(chan int, 1)
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			c.WriteMessage(websocket.TextMessage, []byte("hi"))
			_, _, err := c.ReadMessage()
			code, _ := closeCode(err)
			got <- code
		}
	})
	p := startProxy(t, basicConfig, b.addr())
	rc := dialRaw(t, p, "/", nil)
	if _, err := rc.next(); err != nil {
		t.Fatal(err)
	}
	rc.conn.Close()
	if code := <-got; code != wsframe.CloseGoingAway {
		t.Fatalf("backend got close %d, want 1001", code)
	}
	p.waitSessions(t, 0)
}

func TestProtocolViolations(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		code  int
	}{
		{"unmasked client frame", wsframe.AppendHeader(nil, true, wsframe.OpText, nil, 0), 1002},
		{"reserved opcode", clientFrame(true, 0x3, nil), 1002},
		{"reserved control opcode", clientFrame(true, 0xB, nil), 1002},
		{"rsv bit without extension", func() []byte { f := clientFrame(true, wsframe.OpText, []byte("x")); f[0] |= 0x40; return f }(), 1002},
		{"fragmented control frame", clientFrame(false, wsframe.OpPing, nil), 1002},
		{"long control frame", clientFrame(true, wsframe.OpPing, make([]byte, 126)), 1002},
		{"continuation without message", clientFrame(true, wsframe.OpContinuation, []byte("x")), 1002},
		{"new message inside a message", append(clientFrame(false, wsframe.OpText, []byte("a")), clientFrame(true, wsframe.OpText, []byte("b"))...), 1002},
		{"message too big", clientFrame(true, wsframe.OpBinary, make([]byte, 2000)), 1009},
		{"fragments too big together", append(clientFrame(false, wsframe.OpBinary, make([]byte, 600)), clientFrame(true, wsframe.OpContinuation, make([]byte, 600))...), 1009},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backendCode := make(chan int, 1)
			b := startBackend(t, "b0", func(b *testBackend) {
				b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
					for {
						if _, _, err := c.ReadMessage(); err != nil {
							code, _ := closeCode(err)
							backendCode <- code
							return
						}
					}
				}
			})
			p := startProxy(t, basicConfig+"\n", b.addr())
			cfgLimit(t, p, 1024)
			rc := dialRaw(t, p, "/", nil)
			rc.send(tc.frame)
			code, _ := rc.expectClose()
			if code != tc.code {
				t.Fatalf("client got close %d, want %d", code, tc.code)
			}
			if bc := <-backendCode; bc != wsframe.CloseGoingAway {
				t.Fatalf("backend got close %d, want 1001", bc)
			}
			if tc.code == 1009 {
				// A sender refused for size can still complete the
				// closing handshake.
				rc.send(clientFrame(true, wsframe.OpClose, []byte{0x03, 0xf1}))
			}
			p.waitSessions(t, 0)
		})
	}
}

// cfgLimit lowers the message limit of every route of a running proxy.
func cfgLimit(t *testing.T, p *testProxy, n int64) {
	t.Helper()
	tb := p.srv.table.Load()
	nt := *tb
	nt.routes = nil
	for _, r := range tb.routes {
		rr := *r
		rr.limits.MaxMessageBytes = n
		rr.relay.MaxMessageBytes = n
		nt.routes = append(nt.routes, &rr)
	}
	p.srv.table.Store(&nt)
}

func TestBackendViolationClosesClientWith1014(t *testing.T) {
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			// A masked frame from a server breaks RFC 6455 section 5.1.
			c.NetConn().Write(clientFrame(true, wsframe.OpText, []byte("bad")))
			c.ReadMessage()
		}
	})
	p := startProxy(t, basicConfig, b.addr())
	rc := dialRaw(t, p, "/", nil)
	code, _ := rc.expectClose()
	if code != wsframe.CloseBadGateway {
		t.Fatalf("client got %d, want 1014", code)
	}
}

const timeoutConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults:
  ping_interval: %s
  read_timeout: %s
  idle_timeout: %s
routes:
  - {path: /, pool: p}
pools:
  p:
    backends: [{address: "{{B0}}"}]
`

func TestReadTimeout(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, fmt.Sprintf(timeoutConfig, "0s", "300ms", "0s"), b.addr())
	rc := dialRaw(t, p, "/", nil)
	start := time.Now()
	code, reason := rc.expectClose()
	if code != wsframe.CloseGoingAway || !bytes.Contains([]byte(reason), []byte("read timeout")) {
		t.Fatalf("close %d %q", code, reason)
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Fatalf("closed after %v, before the read timeout", el)
	}
}

func TestIdleTimeoutDespitePongs(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, fmt.Sprintf(timeoutConfig, "50ms", "10s", "400ms"), b.addr())
	c := dial(t, p.url("/"), nil)
	pings := 0
	var mu sync.Mutex
	c.SetPingHandler(func(data string) error {
		mu.Lock()
		pings++
		mu.Unlock()
		return c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	_, _, err := c.ReadMessage()
	code, text := closeCode(err)
	if code != wsframe.CloseGoingAway || text != "idle timeout" {
		t.Fatalf("got %d %q", code, text)
	}
	mu.Lock()
	defer mu.Unlock()
	if pings < 2 {
		t.Fatalf("client answered %d proxy pings, want several before the idle timeout", pings)
	}
}

func TestProxyPingsKeepSessionAliveAndPongsAreSwallowed(t *testing.T) {
	pongsAtBackend := make(chan string, 100)
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			c.SetPongHandler(func(s string) error { pongsAtBackend <- s; return nil })
			echo(c)
		}
	})
	// read_timeout 300ms, pings every 60ms: a silent client that answers
	// pings stays connected well past the read timeout.
	p := startProxy(t, fmt.Sprintf(timeoutConfig, "60ms", "300ms", "0s"), b.addr())
	c := dial(t, p.url("/"), nil)
	var pings int
	var mu sync.Mutex
	c.SetPingHandler(func(data string) error {
		mu.Lock()
		pings++
		mu.Unlock()
		return c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	readErr := make(chan error, 1)
	go func() {
		_, _, err := c.ReadMessage()
		readErr <- err
	}()
	waitFor(t, "10 proxy pings", func() bool { mu.Lock(); defer mu.Unlock(); return pings >= 10 })
	select {
	case err := <-readErr:
		t.Fatalf("session ended: %v", err)
	default:
	}
	if len(pongsAtBackend) != 0 {
		t.Fatalf("the client's pongs to proxy pings reached the backend")
	}
	if p.srv.Stats().PongsClient.Load() == 0 || p.srv.Stats().PongsBackend.Load() == 0 {
		t.Fatalf("proxy saw no pongs: %d client, %d backend", p.srv.Stats().PongsClient.Load(), p.srv.Stats().PongsBackend.Load())
	}
}

func TestEndpointPingsPassThrough(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, basicConfig, b.addr())
	rc := dialRaw(t, p, "/", nil)
	rc.send(clientFrame(true, wsframe.OpPing, []byte("mine")))
	f, err := rc.next()
	if err != nil || f.op != wsframe.OpPong || string(f.payload) != "mine" {
		t.Fatalf("got %+v %v", f, err)
	}
}

func TestManySessionsSequenced(t *testing.T) {
	checkGoroutines(t)
	n := 1000
	msgs := 20
	if testing.Short() {
		n = 100
	}
	b := startBackend(t, "b0")
	p := startProxy(t, basicConfig, b.addr())
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- sequencedSession(p.url("/"), i, msgs)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	p.waitSessions(t, 0)
}

// sequencedSession sends numbered messages tagged with the session id and
// checks each comes back in order, whole and to the right session.
func sequencedSession(url string, id, msgs int) error {
	var c *websocket.Conn
	var err error
	for try := 0; try < 5; try++ {
		c, _, err = websocket.DefaultDialer.Dial(url, nil)
		if err == nil {
			break
		}
		time.Sleep(time.Duration(try+1) * 20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("session %d: dial: %w", id, err)
	}
	defer c.Close()
	for seq := 0; seq < msgs; seq++ {
		var m [16]byte
		binary.BigEndian.PutUint64(m[:8], uint64(id))
		binary.BigEndian.PutUint64(m[8:], uint64(seq))
		if err := c.WriteMessage(websocket.BinaryMessage, m[:]); err != nil {
			return fmt.Errorf("session %d: write: %w", id, err)
		}
		_, got, err := c.ReadMessage()
		if err != nil {
			return fmt.Errorf("session %d: read: %w", id, err)
		}
		if !bytes.Equal(got, m[:]) {
			return fmt.Errorf("session %d seq %d: got %x", id, seq, got)
		}
	}
	c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""))
	_, _, err = c.ReadMessage()
	if code, _ := closeCode(err); code != 1000 {
		return fmt.Errorf("session %d: close reply %v", id, err)
	}
	return nil
}

func TestShutdownClosesSessionsWith1001(t *testing.T) {
	b := startBackend(t, "b0")
	p := startProxy(t, basicConfig, b.addr())
	c := dial(t, p.url("/"), nil)
	p.waitSessions(t, 1)
	go p.stop()
	_, _, err := c.ReadMessage()
	if code, _ := closeCode(err); code != 1001 {
		t.Fatalf("got %v, want close 1001", err)
	}
	<-p.done
}

// Keep the net import used by helpers in other files.
var _ = net.Dial

const goneConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults:
  ping_interval: 0s
routes:
  - {path: /, pool: p}
  - {path: /internal, pool: p, backend_gone_close_code: 1011}
  - {path: /away, pool: p, backend_gone_close_code: 1001}
pools:
  p:
    backends: [{address: "{{B0}}"}]
`

// A client whose backend vanished or broke the protocol gets the route's
// backend_gone_close_code. gorilla/websocket (here its fasthttp fork)
// refuses 1014 as an invalid code: it fails the connection as a protocol
// error instead of reporting the Close, so the codes it accepts must be
// configurable.
func TestBackendGoneCloseCode(t *testing.T) {
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, ctx *fasthttp.RequestCtx) {
			if bytes.HasSuffix(ctx.Path(), []byte("/violate")) {
				// A masked frame from a server breaks RFC 6455 section 5.1.
				c.NetConn().Write(clientFrame(true, wsframe.OpText, []byte("bad")))
				c.ReadMessage()
				return
			}
			c.NetConn().Close() // gone without a Close frame
		}
	})
	p := startProxy(t, goneConfig, b.addr())
	for _, tc := range []struct {
		path   string
		code   int // 0: the client fails the connection itself
		reason string
	}{
		{"/vanish", 0, "bad close code 1014"},
		{"/violate", 0, "bad close code 1014"},
		{"/internal/vanish", 1011, "backend went away"},
		{"/internal/violate", 1011, "backend broke the protocol"},
		{"/away/vanish", 1001, "backend went away"},
		{"/away/violate", 1001, "backend broke the protocol"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			c := dial(t, p.url(tc.path), nil)
			_, _, err := c.ReadMessage()
			code, text := closeCode(err)
			if tc.code == 0 {
				if code != -1 || !strings.Contains(text, tc.reason) {
					t.Fatalf("client read %v, want a protocol error %q", err, tc.reason)
				}
				return
			}
			if code != tc.code || text != tc.reason {
				t.Fatalf("client got close %d %q, want %d %q", code, text, tc.code, tc.reason)
			}
		})
	}
	p.waitSessions(t, 0)
}

// A session that Shutdown finishes hard, its Close to the client never
// written, is logged with what the client saw: 1006, no Close frame. Here
// the backend stops inside a frame, so no Close can follow it.
func TestHardFinishLogsWhatTheClientSaw(t *testing.T) {
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			// The header of a 100-byte frame and 10 bytes of it.
			c.NetConn().Write(append(wsframe.AppendHeader(nil, true, wsframe.OpBinary, nil, 100), make([]byte, 10)...))
			// Reads, but answers nothing, not even the proxy's Close,
			// which would land inside the frame.
			io.Copy(io.Discard, c.NetConn())
		}
	})
	yaml := strings.NewReplacer("access_log: false", "access_log: true", "{{B0}}", b.addr()).Replace(basicConfig)
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	srv, err := New(Config{Config: cfg, Logger: zap.New(core), CloseTimeout: time.Second})
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

	rc := dialRaw(t, p, "/", nil)
	if _, err := io.ReadFull(rc.br, make([]byte, 2+10)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithTimeout(200 * time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown returned nil; want its deadline passed with the session left")
	}
	_ = rc.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, _ := io.ReadAll(rc.br); len(rest) != 0 {
		t.Fatalf("client got %d more bytes after the partial frame, want none: %x", len(rest), rest)
	}
	lines := logs.FilterMessage("session").All()
	if len(lines) != 1 {
		t.Fatalf("%d session lines, want 1", len(lines))
	}
	if f := lines[0].ContextMap(); f["close_code"] != int32(wsframe.CloseAbnormal) || f["closed_by"] != "proxy" {
		t.Fatalf("session line says close %v by %v; the client saw 1006, no Close", f["close_code"], f["closed_by"])
	}
}
