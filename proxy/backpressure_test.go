package proxy

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

const slowPeerConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults:
  ping_interval: 0s
  write_timeout: 2s
routes:
  - {path: /, pool: p}
pools:
  p:
    backends: [{address: "{{B0}}"}]
`

// stalls waits until *n has not grown for quiet, and returns its value.
func stalls(t *testing.T, n *atomic.Int64, quiet, within time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(within)
	last, since := n.Load(), time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		if v := n.Load(); v != last {
			last, since = v, time.Now()
			continue
		}
		if time.Since(since) >= quiet {
			return last
		}
	}
	t.Fatalf("the sender never stalled: %d bytes accepted and counting", n.Load())
	return 0
}

// A client that stops reading slows the backend down to what the socket
// buffers hold, instead of making the proxy buffer without end; after
// write_timeout the backend gets Close 1001 and the session ends.
func TestSlowClientBackPressureThenWriteTimeout(t *testing.T) {
	var written atomic.Int64
	got := make(chan [2]any, 1)
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			go func() {
				_, _, err := c.ReadMessage()
				code, reason := closeCode(err)
				got <- [2]any{code, reason}
			}()
			msg := make([]byte, 64<<10)
			for {
				if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					return
				}
				written.Add(int64(len(msg)))
			}
		}
	})
	p := startProxy(t, slowPeerConfig, b.addr())
	rc := dialRaw(t, p, "/", nil)
	if err := rc.conn.(*net.TCPConn).SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// The client reads nothing from here on.
	held := stalls(t, &written, 300*time.Millisecond, 1500*time.Millisecond)
	// What is in flight is bounded by the sockets' buffers on both hops
	// and the proxy's one read buffer, not by the time the client idles.
	if held > 32<<20 {
		t.Fatalf("backend wrote %d bytes into a client that reads nothing", held)
	}
	if p.srv.Sessions() != 1 {
		t.Fatalf("%d sessions while back-pressured, want 1", p.srv.Sessions())
	}
	var r [2]any
	select {
	case r = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("backend got no Close after the write timeout")
	}
	if code := r[0].(int); code != wsframe.CloseGoingAway {
		t.Fatalf("backend got close %d %q, want 1001", code, r[1])
	}
	if reason := r[1].(string); reason != "client stopped reading" {
		t.Fatalf("backend got reason %q", reason)
	}
	if el := time.Since(start); el < 1500*time.Millisecond {
		t.Fatalf("closed after %v, before the 2s write timeout", el)
	}
	p.waitSessions(t, 0)
	if n := p.srv.Stats().WriteTimeouts.Load(); n != 1 {
		t.Fatalf("WriteTimeouts = %d, want 1", n)
	}
	// The proxy closed the client's socket.
	_ = rc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	// It is reset, not closed gracefully: the megabytes queued for it are
	// dropped rather than trickled into a reader that may never come.
	if _, err := io.Copy(io.Discard, rc.conn); !isReset(err) {
		t.Fatalf("client socket: %v, want a reset", err)
	}
}

// A backend that stops reading slows the client down the same way; after
// write_timeout the client gets Close 1014.
func TestSlowBackendBackPressureThenWriteTimeout(t *testing.T) {
	release := make(chan struct{})
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			<-release // reads nothing
		}
	})
	defer close(release)
	p := startProxy(t, slowPeerConfig, b.addr())
	rc := dialRaw(t, p, "/", nil)
	var sent atomic.Int64
	frame := clientFrame(true, wsframe.OpBinary, make([]byte, 64<<10))
	go func() {
		for {
			_ = rc.conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
			if _, err := rc.conn.Write(frame); err != nil {
				return
			}
			sent.Add(int64(len(frame)))
		}
	}()
	held := stalls(t, &sent, 300*time.Millisecond, 1500*time.Millisecond)
	if held > 32<<20 {
		t.Fatalf("client wrote %d bytes into a backend that reads nothing", held)
	}
	code, reason := rc.expectClose()
	if code != wsframe.CloseBadGateway || reason != "backend stopped reading" {
		t.Fatalf("client got close %d %q, want 1014 \"backend stopped reading\"", code, reason)
	}
	rc.conn.Close()
	p.waitSessions(t, 0)
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }
