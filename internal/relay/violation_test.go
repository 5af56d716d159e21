package relay

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// with returns f changed by edit, for frames no peer would build.
func with(f []byte, edit func([]byte)) []byte { edit(f); return f }

// Every violation fails the session: the violator gets its code and is
// read no more, its peer a Close saying why, and the hook hears it.
func TestRelayViolations(t *testing.T) {
	c, b := &peer{mask: true}, &peer{}
	long := wsframe.AppendHeader(nil, true, wsframe.OpBinary, nil, 0)
	long = append(long[:1], 127, 0x80, 0, 0, 0, 0, 0, 0, 0) // 64-bit length, top bit set
	for _, tc := range []struct {
		name   string
		from   Side
		limits Limits
		rsv    RSVRule
		frames []byte
		code   int    // to the violator
		event  string // hook call
		peer   int    // Close code to the other side
	}{
		{"unmasked from client", Client, Limits{}, RSVNone, b.frame(true, wsframe.OpText, []byte("x")), 1002, "violation client: unmasked frame from client", 1001},
		{"masked from backend", Backend, Limits{}, RSVNone, c.frame(true, wsframe.OpText, []byte("x")), 1002, "violation backend: masked frame from backend", 1014},
		{"reserved opcode", Client, Limits{}, RSVNone, c.frame(true, 0x3, nil), 1002, "violation client: reserved opcode", 1001},
		{"reserved control opcode", Backend, Limits{}, RSVNone, b.frame(true, 0xB, nil), 1002, "violation backend: reserved opcode", 1014},
		{"fragmented control", Client, Limits{}, RSVNone, c.frame(false, wsframe.OpPing, nil), 1002, "violation client: fragmented control frame", 1001},
		{"control over 125", Client, Limits{}, RSVNone, c.frame(true, wsframe.OpPing, make([]byte, 126)), 1002, "violation client: control frame over 125 bytes", 1001},
		{"one-byte close", Backend, Limits{}, RSVNone, b.frame(true, wsframe.OpClose, []byte{3}), 1002, "violation backend: close frame with a one-byte payload", 1014},
		{"continuation first", Client, Limits{}, RSVNone, c.frame(true, wsframe.OpContinuation, []byte("x")), 1002, "violation client: continuation frame with no message open", 1001},
		{"message inside a message", Backend, Limits{}, RSVNone, append(b.frame(false, wsframe.OpText, []byte("a")), b.frame(true, wsframe.OpText, []byte("b"))...), 1002, "violation backend: new message before the last one ended", 1014},
		{"rsv without extension", Client, Limits{}, RSVNone, with(c.frame(true, wsframe.OpText, []byte("x")), func(f []byte) { f[0] |= 0x40 }), 1002, "violation client: RSV bits set without a negotiated extension", 1001},
		{"rsv1 on a continuation", Client, Limits{}, RSVDeflate, append(with(c.frame(false, wsframe.OpText, []byte("x")), func(f []byte) { f[0] |= 0x40 }), with(c.frame(true, wsframe.OpContinuation, []byte("y")), func(f []byte) { f[0] |= 0x40 })...), 1002, "violation client: RSV bits not allowed by the negotiated extension", 1001},
		{"rsv2 under deflate", Backend, Limits{}, RSVDeflate, with(b.frame(true, wsframe.OpText, []byte("x")), func(f []byte) { f[0] |= 0x20 }), 1002, "violation backend: RSV bits not allowed by the negotiated extension", 1014},
		{"length with top bit", Backend, Limits{}, RSVNone, long, 1002, "violation backend: invalid frame length", 1014},
		{"message too big", Client, Limits{MaxMessageBytes: 100}, RSVNone, c.frame(true, wsframe.OpBinary, make([]byte, 101)), 1009, "violation client: message too big", 1001},
		{"fragments too big", Backend, Limits{MaxMessageBytes: 100}, RSVNone, append(b.frame(false, wsframe.OpBinary, make([]byte, 60)), b.frame(true, wsframe.OpContinuation, make([]byte, 60))...), 1009, "violation backend: message too big", 1014},
		{"message rate", Client, Limits{MaxMessagesPerSecond: 1, MessageBurst: 2}, RSVNone, bytes.Repeat(c.frame(true, wsframe.OpText, []byte("m")), 3), 1008, "limited 0 1 2", 1001},
		{"control rate", Client, Limits{MaxControlFramesPerSecond: 1}, RSVNone, bytes.Repeat(c.frame(true, wsframe.OpPing, nil), 3), 1008, "limited 1 1 2", 1001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.limits
			if l.MaxMessageBytes == 0 {
				l.MaxMessageBytes = 1 << 20
			}
			r := newRig(t, &l, rigOpts{rsv: tc.rsv})
			from, to := r.client, r.backend
			if tc.from == Backend {
				from, to = r.backend, r.client
			}
			from.send(tc.frames)
			if code, reason := from.expectClose(); code != tc.code {
				t.Fatalf("violator got Close %d %q, want %d", code, reason, tc.code)
			}
			if code, reason := to.expectClose(); code != tc.peer {
				t.Fatalf("peer got Close %d %q, want %d", code, reason, tc.peer)
			}
			if !r.hooks.has(tc.event) {
				t.Fatalf("events %v, want %q", r.hooks.list(), tc.event)
			}
			// The violator's Close reply is not waited for when it is
			// read no more; the peer's completes the handshake.
			to.send(to.closeFrame(1000, ""))
			if tc.code == 1009 {
				from.send(from.closeFrame(1009, ""))
			}
			r.waitEnded()
			// The code recorded is the violator's, except for a message
			// too big, which is closed as the relay closes a session:
			// with the client's code.
			want := tc.code
			if tc.code == 1009 && tc.from == Backend {
				want = tc.peer
			}
			if r.s.ClosedBy() != PartyProxy || r.s.CloseCode() != want {
				t.Fatalf("closed by %s with %d, want proxy with %d", r.s.ClosedBy(), r.s.CloseCode(), want)
			}
		})
	}
}

// The relay's ping to a silent backend waits for the end of the frame the
// client is sending and goes in between two fragments of its message; the
// backend's answer is swallowed and timed, and the client's own ping in
// between fragments is relayed.
func TestRelayPingBetweenFragments(t *testing.T) {
	r := newRig(t, &Limits{MaxMessageBytes: 1 << 20, PingInterval: 30 * time.Millisecond}, rigOpts{})
	first := r.client.frame(false, wsframe.OpText, []byte("first half"))
	r.client.send(first[:len(first)-3]) // the frame is open
	waitFor(t, "a ping to the backend", func() bool { return r.hooks.has("ping backend") })
	r.client.send(first[len(first)-3:], r.client.frame(true, wsframe.OpPing, []byte("mine")),
		r.client.frame(true, wsframe.OpContinuation, []byte(", second half")))
	r.backend.expect(wsframe.OpText, "first half")
	ping, err := r.backend.next()
	if err != nil || ping.op != wsframe.OpPing || len(ping.payload) != 8 || !ping.masked {
		t.Fatalf("after the first fragment: %+v, %v; want the relay's masked ping", ping, err)
	}
	r.backend.expect(wsframe.OpPing, "mine")
	r.backend.expect(wsframe.OpContinuation, ", second half")
	r.backend.send(r.backend.frame(true, wsframe.OpPong, ping.payload))
	waitFor(t, "the pong", func() bool { return r.hooks.has("pong backend") })
	// The client sees its data and pings, never the backend's answer to
	// the relay.
	r.backend.send(r.backend.frame(true, wsframe.OpText, []byte("after")))
	for {
		f, err := r.client.next()
		if err != nil {
			t.Fatal(err)
		}
		if f.op == wsframe.OpPong {
			t.Fatalf("the client got the backend's pong to the relay")
		}
		if f.op == wsframe.OpText {
			break
		}
	}
}

// A side that reads nothing holds back the side that sends to it, up to
// the write timeout; then the sender gets a Close saying so, the
// staller's connection is reset, and the hook hears of the timeout.
func TestRelayBackPressure(t *testing.T) {
	for _, stall := range []Side{Backend, Client} {
		t.Run("stalled "+stall.String(), func(t *testing.T) {
			r := newRig(t, &Limits{MaxMessageBytes: 1 << 20, WriteTimeout: 300 * time.Millisecond}, rigOpts{})
			sender, staller, reason, code := r.client, r.backend, "backend stopped reading", 1014
			if stall == Client {
				sender, staller, reason, code = r.backend, r.client, "client stopped reading", 1001
			}
			_ = staller.tcp.SetReadBuffer(4 << 10)
			msg := sender.frame(true, wsframe.OpBinary, make([]byte, 64<<10))
			done := make(chan error, 1)
			go func() {
				// Send until the relay, held back, stops taking more.
				for {
					_ = sender.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
					if _, err := sender.conn.Write(msg); err != nil {
						done <- err
						return
					}
					if r.hooks.has("timeout 2") {
						done <- nil
						return
					}
				}
			}()
			waitFor(t, "the write timeout", func() bool { return r.hooks.has("timeout 2") })
			<-done
			if c, why := sender.expectClose(); c != code || why != reason {
				t.Fatalf("sender got Close %d %q, want %d %q", c, why, code, reason)
			}
			sender.send(sender.closeFrame(code, ""))
			r.waitEnded()
			_ = staller.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.Copy(io.Discard, staller.conn)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the staller's connection ended with %v, want a reset", err)
			}
		})
	}
}

// A side that does not answer the Close in time is cut off.
func TestRelayCloseTimeout(t *testing.T) {
	r := newRig(t, &Limits{MaxMessageBytes: 1 << 20, CloseTimeout: 100 * time.Millisecond}, rigOpts{})
	r.client.send(r.client.closeFrame(1000, ""))
	r.backend.expectClose() // and no answer
	r.waitEnded()
	r.client.expectEOF()
	if r.s.ClosedBy() != PartyClient || r.s.CloseCode() != 1000 {
		t.Fatalf("closed by %s with %d", r.s.ClosedBy(), r.s.CloseCode())
	}
}

// Finish ends a session at once, even one whose client stream stands
// inside a frame: the relay's Close never reached the client, so the
// session says 1006.
func TestRelayFinishMidFrame(t *testing.T) {
	r := newRig(t, plain(), rigOpts{})
	f := r.backend.frame(true, wsframe.OpBinary, make([]byte, 100))
	r.backend.send(f[:20])
	waitFor(t, "the partial frame", func() bool { _, b := r.s.Counts(Backend); return b == 20 })
	r.s.Close(1001, 1001, "going")
	r.s.Finish()
	r.waitEnded()
	if _, err := io.ReadFull(r.client.br, make([]byte, 20)); err != nil {
		t.Fatal(err)
	}
	if rest, _ := io.ReadAll(r.client.br); len(rest) != 0 {
		t.Fatalf("%d bytes after the partial frame", len(rest))
	}
	if r.s.CloseCode() != 1006 {
		t.Fatalf("close code %d, want 1006", r.s.CloseCode())
	}
}

// A writer held up by a full socket goes on as soon as the peer reads
// again: the side's poller reports the room (over bare descriptors, the
// registration a non-blocking connect left reporting it, which the relay
// keeps), long before the write timeout would end the wait.
func TestRelayRoomWakesWriter(t *testing.T) {
	for _, slow := range []Side{Backend, Client} {
		t.Run("slow "+slow.String(), func(t *testing.T) {
			r := newRig(t, &Limits{MaxMessageBytes: 32 << 20, WriteTimeout: 20 * time.Second}, rigOpts{})
			sender, reader := r.client, r.backend
			if slow == Client {
				sender, reader = r.backend, r.client
			}
			// A window small enough that the relay's socket fills, large
			// enough that reading it again is quick.
			_ = reader.tcp.SetReadBuffer(64 << 10)
			payload := make([]byte, 16<<20) // more than the kernel buffers between them
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			sent := make(chan error, 1)
			go func() {
				_ = sender.conn.SetWriteDeadline(time.Now().Add(15 * time.Second))
				_, err := sender.conn.Write(sender.frame(true, wsframe.OpBinary, payload))
				sent <- err
			}()
			buf := make([]byte, 1<<20)
			waitFor(t, "the relay's writer held up by the full socket", func() bool {
				// waitRoom for a bare descriptor, the runtime's poller
				// for a net.Conn or TLS over a Socket.
				st := string(buf[:runtime.Stack(buf, true)])
				return strings.Contains(st, "relay.(*side).waitRoom") || strings.Contains(st, "internal/poll.(*pollDesc).waitWrite")
			})
			start := time.Now()
			f, err := reader.next()
			if err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Fatalf("the message took %v once read again: the write timeout woke the writer, not the room", took)
			}
			if f.op != wsframe.OpBinary || !bytes.Equal(f.payload, payload) {
				t.Fatalf("got opcode %d with %d bytes, want the 16 MiB message whole", f.op, len(f.payload))
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			sender.send(sender.closeFrame(1000, ""))
			reader.expectClose()
			reader.send(reader.closeFrame(1000, ""))
			sender.expectClose()
			r.waitEnded()
		})
	}
}

// A write that waited for room, and got it in time, leaves no deadline
// behind: the session goes on relaying long after the write timeout of
// that wait would have passed.
func TestRelayWriteAfterWaitedWrite(t *testing.T) {
	for _, slow := range []Side{Backend, Client} {
		t.Run("slow "+slow.String(), func(t *testing.T) {
			const wt = 500 * time.Millisecond
			r := newRig(t, &Limits{MaxMessageBytes: 32 << 20, WriteTimeout: wt}, rigOpts{})
			sender, reader := r.client, r.backend
			if slow == Client {
				sender, reader = r.backend, r.client
			}
			_ = reader.tcp.SetReadBuffer(64 << 10)
			payload := make([]byte, 16<<20)
			go func() {
				_ = sender.conn.SetWriteDeadline(time.Now().Add(15 * time.Second))
				_, _ = sender.conn.Write(sender.frame(true, wsframe.OpBinary, payload))
			}()
			buf := make([]byte, 1<<20)
			waitFor(t, "the relay's writer held up by the full socket", func() bool {
				st := string(buf[:runtime.Stack(buf, true)])
				return strings.Contains(st, "relay.(*side).waitRoom") || strings.Contains(st, "internal/poll.(*pollDesc).waitWrite")
			})
			if f, err := reader.next(); err != nil || len(f.payload) != len(payload) {
				t.Fatalf("the big message: %d bytes, %v", len(f.payload), err)
			}
			time.Sleep(wt + 300*time.Millisecond)
			for i := 0; i < 3; i++ {
				sender.send(sender.frame(true, wsframe.OpText, []byte("after")))
				reader.expect(wsframe.OpText, "after")
				reader.send(reader.frame(true, wsframe.OpText, []byte("back")))
				sender.expect(wsframe.OpText, "back")
			}
			if r.hooks.has("timeout 2") {
				t.Fatalf("a write timeout was reported: %v", r.hooks.list())
			}
		})
	}
}
