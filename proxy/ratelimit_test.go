package proxy

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

const rateConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults:
  ping_interval: 0s
routes:
  - {path: /, pool: p, max_messages_per_second: 20, message_burst: 5}
  - {path: /free, pool: p}
pools:
  p:
    backends: [{address: "{{B0}}"}]
`

// A client within its rate is served; a burst above it is closed with 1008
// and the backend never sees the excess.
func TestMessageRateLimit(t *testing.T) {
	seen := make(chan string, 100)
	closed := make(chan int, 1)
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			for {
				_, m, err := c.ReadMessage()
				if err != nil {
					code, _ := closeCode(err)
					closed <- code
					return
				}
				seen <- string(m)
				_ = c.WriteMessage(websocket.TextMessage, m)
			}
		}
	})
	p := startProxy(t, rateConfig, b.addr())

	// At 10 messages a second, half the limit, for a second: all pass.
	rc := dialRaw(t, p, "/", nil)
	for i := 0; i < 10; i++ {
		rc.send(clientFrame(true, wsframe.OpText, []byte(fmt.Sprint("slow", i))))
		if f, err := rc.next(); err != nil || string(f.payload) != fmt.Sprint("slow", i) {
			t.Fatalf("message %d: %q %v", i, f.payload, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Then 30 at once: the bucket (5, refilled at 20/s) runs dry.
	var flood [][]byte
	for i := 0; i < 30; i++ {
		flood = append(flood, clientFrame(true, wsframe.OpText, []byte(fmt.Sprint("flood", i))))
	}
	rc.send(flood...)
	code, reason := rc.expectClose()
	if code != wsframe.ClosePolicyViolation || reason != "message rate limit exceeded" {
		t.Fatalf("client got close %d %q, want 1008", code, reason)
	}
	if got := <-closed; got != wsframe.CloseGoingAway {
		t.Fatalf("backend got close %d, want 1001", got)
	}
	got := len(seen)
	if got < 10+5 || got > 10+7 {
		t.Fatalf("backend saw %d messages, want the 10 slow ones and about 5 of the flood", got)
	}
	p.waitSessions(t, 0)
	if n := p.srv.Stats().MessageRateLimited.Load(); n != 1 {
		t.Fatalf("MessageRateLimited = %d, want 1", n)
	}

	// The same flood on a route without a limit passes.
	for len(seen) > 0 {
		<-seen
	}
	rc = dialRaw(t, p, "/free", nil)
	rc.send(flood...)
	for i := 0; i < 30; i++ {
		if f, err := rc.next(); err != nil || string(f.payload) != fmt.Sprint("flood", i) {
			t.Fatalf("unlimited route, message %d: %q %v", i, f.payload, err)
		}
	}
}

const controlRateConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults:
  ping_interval: 0s
routes:
  - {path: /, pool: p}
  - {path: /free, pool: p, max_control_frames_per_second: 0}
  - {path: /slow, pool: p, max_control_frames_per_second: 1, ping_interval: 20ms}
pools:
  p:
    backends: [{address: "{{B0}}"}]
`

// controlBackend echoes messages and answers pings, counting them; on
// /backend-pings it first sends pings of its own.
func controlBackend(t *testing.T, pings *atomic.Int64, closed chan<- string) *testBackend {
	return startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, ctx *fasthttp.RequestCtx) {
			c.SetPingHandler(func(data string) error {
				pings.Add(1)
				return c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
			})
			if string(ctx.Path()) == "/backend-pings" {
				for i := 0; i < 50; i++ {
					_ = c.WriteControl(websocket.PingMessage, []byte("b"), time.Now().Add(time.Second))
				}
				_ = c.WriteMessage(websocket.TextMessage, []byte("done"))
			}
			for {
				mt, m, err := c.ReadMessage()
				if err != nil {
					code, text := closeCode(err)
					closed <- fmt.Sprint(code, " ", text)
					return
				}
				_ = c.WriteMessage(mt, m)
			}
		}
	})
}

// readUntil reads frames up to a text message, counting those of opcode op
// on the way.
func (rc *rawClient) readUntil(text string, op byte) int {
	rc.t.Helper()
	n := 0
	for {
		f, err := rc.next()
		if err != nil {
			rc.t.Fatalf("waiting for %q: %v", text, err)
		}
		switch {
		case f.op == op:
			n++
		case f.op == wsframe.OpText && string(f.payload) == text:
			return n
		case f.op == wsframe.OpClose:
			code, reason, _ := wsframe.ParseClose(f.payload)
			rc.t.Fatalf("waiting for %q: closed %d %q", text, code, reason)
		}
	}
}

func repeatFrame(n int, op byte, payload string) [][]byte {
	var fs [][]byte
	for i := 0; i < n; i++ {
		fs = append(fs, clientFrame(true, op, []byte(payload)))
	}
	return fs
}

// Pings and unsolicited pongs from a client are held to
// max_control_frames_per_second (burst twice the rate): the flood is
// closed with 1008 and never reaches the backend. Close frames, the
// backend's pings and routes with the limit off are not counted.
func TestControlFrameRateLimit(t *testing.T) {
	var pings atomic.Int64
	closed := make(chan string, 10)
	b := controlBackend(t, &pings, closed)
	p := startProxy(t, controlRateConfig, b.addr())

	t.Run("ping flood", func(t *testing.T) {
		pings.Store(0)
		rc := dialRaw(t, p, "/", nil)
		start := time.Now()
		// The burst (20 at the default 10/s) passes whole.
		rc.send(append(repeatFrame(20, wsframe.OpPing, "p"), clientFrame(true, wsframe.OpText, []byte("mark")))...)
		if n := rc.readUntil("mark", wsframe.OpPong); n != 20 {
			t.Fatalf("client got %d pongs for its 20 pings, want 20", n)
		}
		rc.send(repeatFrame(1000, wsframe.OpPing, "p")...)
		code, reason := rc.expectClose()
		if code != wsframe.ClosePolicyViolation || reason != "control frame rate limit exceeded" {
			t.Fatalf("client got close %d %q, want 1008", code, reason)
		}
		if got := <-closed; got != "1001 client exceeded the control frame rate limit" {
			t.Fatalf("backend got close %q, want 1001", got)
		}
		// The refill while the test ran may add a ping or two.
		refill := int64(time.Since(start).Seconds()*10) + 1
		if n := pings.Load(); n < 20 || n > 20+refill {
			t.Fatalf("backend saw %d pings, want the burst of 20 and at most %d refilled", n, refill)
		}
		p.waitSessions(t, 0)
		if n := p.srv.Stats().ControlRateLimited.Load(); n != 1 {
			t.Fatalf("ControlRateLimited = %d, want 1", n)
		}
	})
	t.Run("unsolicited pongs", func(t *testing.T) {
		rc := dialRaw(t, p, "/", nil)
		rc.send(repeatFrame(1000, wsframe.OpPong, "heartbeat")...)
		if code, reason := rc.expectClose(); code != wsframe.ClosePolicyViolation || reason != "control frame rate limit exceeded" {
			t.Fatalf("client got close %d %q, want 1008", code, reason)
		}
		<-closed
		p.waitSessions(t, 0)
	})
	t.Run("close does not count", func(t *testing.T) {
		rc := dialRaw(t, p, "/", nil)
		rc.send(append(repeatFrame(20, wsframe.OpPing, "p"), clientFrame(true, wsframe.OpClose, []byte{0x03, 0xe8}))...)
		if code, _ := rc.expectClose(); code != 1000 {
			t.Fatalf("client got close %d, want the backend's 1000", code)
		}
		if got := <-closed; got != "1000 " {
			t.Fatalf("backend got close %q, want 1000", got)
		}
		p.waitSessions(t, 0)
	})
	t.Run("backend pings", func(t *testing.T) {
		rc := dialRaw(t, p, "/backend-pings", nil)
		if n := rc.readUntil("done", wsframe.OpPing); n != 50 {
			t.Fatalf("client got %d of the backend's 50 pings", n)
		}
		rc.send(clientFrame(true, wsframe.OpText, []byte("still here")))
		rc.readUntil("still here", wsframe.OpPing)
	})
	t.Run("limit off", func(t *testing.T) {
		rc := dialRaw(t, p, "/free", nil)
		rc.send(append(repeatFrame(200, wsframe.OpPing, "p"), clientFrame(true, wsframe.OpText, []byte("mark")))...)
		if n := rc.readUntil("mark", wsframe.OpPong); n != 200 {
			t.Fatalf("client got %d pongs for its 200 pings, want 200", n)
		}
	})
	if n := p.srv.Stats().ControlRateLimited.Load(); n != 2 {
		t.Fatalf("ControlRateLimited = %d, want 2", n)
	}
}

// The proxy's own pings and the first answer to each are not the client's:
// a client answering them all stays, on a budget of one frame a second,
// far beyond its burst. A repeated answer is the client's.
func TestControlFrameBudgetSparesProxyPings(t *testing.T) {
	var pings atomic.Int64
	closed := make(chan string, 10)
	b := controlBackend(t, &pings, closed)
	p := startProxy(t, controlRateConfig, b.addr())

	c := dial(t, p.url("/slow"), nil) // answers every ping, as libraries do
	readErr := make(chan error, 1)
	go func() {
		_, _, err := c.ReadMessage()
		readErr <- err
	}()
	waitFor(t, "10 answered proxy pings", func() bool { return p.srv.Stats().PongsClient.Load() >= 10 })
	select {
	case err := <-readErr:
		t.Fatalf("a client answering the proxy's pings was closed: %v", err)
	default:
	}
	if n := p.srv.Stats().ControlRateLimited.Load(); n != 0 {
		t.Fatalf("ControlRateLimited = %d, want 0", n)
	}

	// Answering one proxy ping four times: the first is free, the next
	// two take the burst of two, the last is over it.
	rc := dialRaw(t, p, "/slow", nil)
	var ping frame
	for ping.op != wsframe.OpPing {
		f, err := rc.next()
		if err != nil {
			t.Fatal(err)
		}
		ping = f
	}
	rc.send(repeatFrame(4, wsframe.OpPong, string(ping.payload))...)
	if code, reason := rc.expectClose(); code != wsframe.ClosePolicyViolation || reason != "control frame rate limit exceeded" {
		t.Fatalf("client got close %d %q, want 1008", code, reason)
	}
}
