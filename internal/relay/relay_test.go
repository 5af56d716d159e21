package relay

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"golang.org/x/sys/unix"
)

// waitFor polls cond until it holds, failing after 10 s: it waits for a
// state to be reached, never for time to pass.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func plain() *Limits { return &Limits{MaxMessageBytes: 1 << 20} }

// Frames pass both ways byte for byte, masked toward the backend only.
func TestRelayBothWays(t *testing.T) {
	r := newRig(t, plain(), rigOpts{})
	for _, n := range []int{0, 125, 126, 127, 65535, 65536} {
		payload := bytes.Repeat([]byte{'x'}, n)
		in := r.client.frame(true, wsframe.OpBinary, payload)
		r.client.send(in)
		got := make([]byte, len(in))
		if _, err := io.ReadFull(r.backend.br, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, in) {
			t.Fatalf("%d bytes: the backend got other bytes than the client sent", n)
		}
		r.backend.send(r.backend.frame(true, wsframe.OpText, payload))
		r.client.expect(wsframe.OpText, string(payload))
	}
	if m, b := r.s.Counts(Client); m != 6 || b == 0 {
		t.Fatalf("client counts %d messages, %d bytes", m, b)
	}
}

// A frame header, or a control frame, cut across two reads at any byte is
// carried over and relayed whole: every offset of a stream holding each
// header length (2, 4 and 10 bytes before the mask) and a 125-byte ping.
func TestRelaySplitAtEveryOffset(t *testing.T) {
	r := newRig(t, plain(), rigOpts{})
	var stream []byte
	stream = append(stream, r.client.frame(false, wsframe.OpText, []byte("hello"))...)
	stream = append(stream, r.client.frame(true, wsframe.OpPing, bytes.Repeat([]byte{'p'}, 125))...)
	stream = append(stream, r.client.frame(true, wsframe.OpContinuation, bytes.Repeat([]byte{'b'}, 300))...)
	last := len(stream)
	stream = append(stream, r.client.frame(true, wsframe.OpBinary, make([]byte, 70000))...)
	got := make([]byte, len(stream))
	var read int64
	for k := 1; k <= last+wsframe.MaxHeaderLen; k++ {
		r.client.send(stream[:k])
		read += int64(k)
		waitFor(t, fmt.Sprintf("the relay to read %d bytes", k), func() bool {
			_, b := r.s.Counts(Client)
			return b == read
		})
		r.client.send(stream[k:])
		read += int64(len(stream) - k)
		if _, err := io.ReadFull(r.backend.br, got); err != nil {
			t.Fatalf("split at %d: %v", k, err)
		}
		if !bytes.Equal(got, stream) {
			t.Fatalf("split at %d: the backend got other bytes than the client sent", k)
		}
	}
	if v := r.hooks.list(); len(v) != 0 {
		t.Fatalf("events %v, want none", v)
	}
}

// Bytes read behind the handshakes go first, before what the sockets hold.
func TestRelayEarlyBytesFirst(t *testing.T) {
	c := &peer{mask: true}
	early := c.frame(true, wsframe.OpText, []byte("early"))
	b := &peer{}
	r := newRig(t, plain(), rigOpts{early: early, backendEarly: b.frame(true, wsframe.OpText, []byte("early too"))})
	r.client.send(r.client.frame(true, wsframe.OpText, []byte("later")))
	r.backend.expect(wsframe.OpText, "early")
	r.backend.expect(wsframe.OpText, "later")
	r.client.expect(wsframe.OpText, "early too")
}

// Data already waiting in the relay's sockets when the session starts is
// relayed: no event may report it (a registration's old handler took its
// edge), so Start looks.
func TestRelayDataBeforeStart(t *testing.T) {
	r := newRig(t, plain(), rigOpts{beforeInit: func(r *rig, client, backend Endpoint) {
		r.client.send(r.client.frame(true, wsframe.OpText, []byte("from the client")))
		r.backend.send(r.backend.frame(true, wsframe.OpText, []byte("from the backend")))
		for _, ep := range []Endpoint{client, backend} {
			fd := endpointFD(t, ep)
			waitFor(t, "the bytes in the relay's socket", func() bool {
				n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
				return err == nil && n > 0
			})
		}
		// A client registration asks for nothing but reads: its old
		// handler hears of the data, and no event will tell again.
		if h := r.old[Client]; h != nil {
			waitFor(t, "the old handler to hear of the data", func() bool { return h.calls.Load() > 0 })
		}
	}})
	r.backend.expect(wsframe.OpText, "from the client")
	r.client.expect(wsframe.OpText, "from the backend")
}

// endpointFD is the socket under ep.
func endpointFD(tb testing.TB, ep Endpoint) int {
	c := ep.Conn
	if c == nil {
		return ep.FD
	}
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn().(*Socket).TCPConn
	}
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	fd := -1
	_ = rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// Every way a session closes: who closed first and the code are recorded,
// each side gets the Close it should, and the session ends.
func TestRelayClosePaths(t *testing.T) {
	for _, tc := range []struct {
		name        string
		limits      Limits
		act         func(r *rig)
		finish      func(r *rig) // completes the handshake, if needed
		by          Party
		code        int
		clientClose int // 0: none expected
		backClose   int
		reason      string
	}{
		{name: "client closes", act: func(r *rig) { r.client.send(r.client.closeFrame(1000, "bye")) },
			finish: func(r *rig) {
				r.backend.expectClose()
				r.backend.send(r.backend.closeFrame(1000, "bye"))
				if c, _ := r.client.expectClose(); c != 1000 {
					t.Errorf("client got %d back", c)
				}
			}, by: PartyClient, code: 1000},
		{name: "backend closes", act: func(r *rig) { r.backend.send(r.backend.closeFrame(4001, "done")) },
			finish: func(r *rig) {
				r.client.expectClose()
				r.client.send(r.client.closeFrame(4001, "done"))
				r.backend.expectClose()
			}, by: PartyBackend, code: 4001},
		{name: "client vanishes", act: func(r *rig) { r.client.conn.Close() },
			by: PartyClient, code: 1006, backClose: 1001, reason: "client went away"},
		{name: "backend vanishes", act: func(r *rig) { r.backend.conn.Close() },
			by: PartyBackend, code: 1006, clientClose: 1014, reason: "backend went away"},
		{name: "backend vanishes, gone code 1011", limits: Limits{BackendGoneCloseCode: 1011}, act: func(r *rig) { r.backend.conn.Close() },
			by: PartyBackend, code: 1006, clientClose: 1011, reason: "backend went away"},
		{name: "relay closes", act: func(r *rig) { r.s.Close(1012, 1001, "restart") },
			by: PartyProxy, code: 1012, clientClose: 1012, backClose: 1001, reason: "restart"},
		{name: "idle timeout", limits: Limits{IdleTimeout: 50 * time.Millisecond}, act: func(*rig) {},
			by: PartyProxy, code: 1001, clientClose: 1001, backClose: 1001, reason: "idle timeout"},
		{name: "read timeout", limits: Limits{ReadTimeout: 50 * time.Millisecond}, act: func(*rig) {},
			by: PartyProxy, code: 1001, clientClose: 1001, backClose: 1001, reason: "read timeout: nothing from the client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.limits
			l.MaxMessageBytes = 1 << 20
			l.CloseTimeout = 5 * time.Second
			r := newRig(t, &l, rigOpts{})
			tc.act(r)
			for _, x := range []struct {
				p    *peer
				code int
			}{{r.client, tc.clientClose}, {r.backend, tc.backClose}} {
				if x.code == 0 {
					continue
				}
				code, reason := x.p.expectClose()
				// The backend may get the client's reply to the relay's
				// Close rather than its own: the same code.
				if x.p == r.backend && tc.clientClose != 0 {
					reason = tc.reason
				}
				if code != x.code || reason != tc.reason {
					t.Fatalf("got Close %d %q, want %d %q", code, reason, x.code, tc.reason)
				}
				x.p.send(x.p.closeFrame(code, ""))
			}
			if tc.finish != nil {
				tc.finish(r)
			}
			r.waitEnded()
			if r.s.ClosedBy() != tc.by || r.s.CloseCode() != tc.code {
				t.Fatalf("closed by %s with %d, want %s with %d", r.s.ClosedBy(), r.s.CloseCode(), tc.by, tc.code)
			}
		})
	}
}

// Between messages a session holds no goroutine: no pump runs, inline on
// the poller's loop or on its own, once both sides are read out.
func TestRelayIdleSessionHoldsNoGoroutine(t *testing.T) {
	r := newRig(t, plain(), rigOpts{})
	for i := 0; i < 3; i++ {
		r.client.send(r.client.frame(true, wsframe.OpText, bytes.Repeat([]byte{'c'}, 100<<10)))
		r.backend.expect(wsframe.OpText, string(bytes.Repeat([]byte{'c'}, 100<<10)))
		r.backend.send(r.backend.frame(true, wsframe.OpText, []byte("b")))
		r.client.expect(wsframe.OpText, "b")
	}
	// A pump that has just gone idle may still be returning: wait for
	// the state to be reached, which it never is if a pump stays.
	buf := make([]byte, 1<<20)
	waitFor(t, "both pumps idle, and no goroutine in one", func() bool {
		st := string(buf[:runtime.Stack(buf, true)])
		return r.s.client.state.Load() == pumpIdle && r.s.backend.state.Load() == pumpIdle &&
			!strings.Contains(st, "relay.(*side).pump")
	})
}

// Options.Deadline closes a session when it passes, not before: frames
// flow until then, and both sides get 1008 with the reason; one already
// past closes the session at once. The session's one timer serves it.
func TestRelayDeadline(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   time.Duration
	}{{"ahead", 300 * time.Millisecond}, {"already past", -time.Second}} {
		t.Run(tc.name, func(t *testing.T) {
			l := plain()
			l.PingInterval = time.Hour // a timer armed for later than the deadline
			deadline := time.Now().Add(tc.in)
			r := newRig(t, l, rigOpts{deadline: deadline})
			if tc.in > 0 {
				r.client.send(r.client.frame(true, wsframe.OpText, []byte("before")))
				r.backend.expect(wsframe.OpText, "before")
			}
			for _, p := range []*peer{r.client, r.backend} {
				code, reason := p.expectClose()
				// The backend may get the client's reply to the relay's
				// Close rather than its own: the same code.
				if code != wsframe.ClosePolicyViolation || reason != "token expired" && (p != r.backend || reason != "") {
					t.Fatalf("got Close %d %q, want 1008 \"token expired\"", code, reason)
				}
				if now := time.Now(); now.Before(deadline) {
					t.Fatalf("closed %v before the deadline", deadline.Sub(now))
				}
				p.send(p.closeFrame(code, ""))
			}
			r.waitEnded()
			if r.s.ClosedBy() != PartyProxy || !r.hooks.has(fmt.Sprintf("timeout %d", Deadline)) {
				t.Fatalf("closed by %s; events %v", r.s.ClosedBy(), r.hooks.list())
			}
		})
	}
}
