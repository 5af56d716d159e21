package proxy

import (
	"fmt"
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
