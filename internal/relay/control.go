package relay

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// ctrlQueue holds the relay's own control frames for a side until the
// side's stream reaches a frame boundary: at most a ping (the latest; an
// earlier one not yet written is superseded) and a Close, always written
// last. Senders are the timer and any pump; the writer is the peer's pump.
type ctrlQueue struct {
	mu      sync.Mutex
	pending atomic.Bool // something is queued
	ping    bool
	close   bool
	code    uint16
	seq     uint32 // of the queued ping
	reason  string
}

// queueClose queues a Close for x; x's peer pump writes it at the next
// frame boundary of x's stream.
func (x *side) queueClose(code int, reason string) {
	q := &x.ctrl
	q.mu.Lock()
	q.close, q.code, q.reason = true, uint16(code), reason
	q.pending.Store(true)
	q.mu.Unlock()
	x.peer.schedule()
}

// ping queues a Ping for x carrying the session's tag and a sequence
// number, so that x's Pong can be told apart from the endpoints' own.
func (s *Session) ping(x *side, now int64) {
	if x.close.has(closeQueued | sideGone) {
		return
	}
	x.lastPing.Store(now)
	s.hooks.PingSent(x.kind)
	q := &x.ctrl
	q.mu.Lock()
	q.ping, q.seq = true, x.pingSeq.Add(1)
	q.pending.Store(true)
	q.mu.Unlock()
	x.peer.schedule()
}

// flushCtrl writes the control frames queued for x's peer, when its stream
// is at a frame boundary. It runs on x's pump, the peer stream's writer.
func (x *side) flushCtrl() {
	w := x.peer
	q := &w.ctrl
	if !q.pending.Load() || w.midFrame.Load() {
		return
	}
	q.mu.Lock()
	ping, seq, cl, code, reason := q.ping, q.seq, q.close, int(q.code), q.reason
	q.ping, q.close, q.reason = false, false, ""
	q.pending.Store(false)
	q.mu.Unlock()
	if w.close.has(sideGone | closeWritten) {
		return // nothing may follow a Close
	}
	frames := make([]byte, 0, 2*wsframe.MaxHeaderLen+8+2+len(reason))
	if ping {
		var payload [8]byte
		copy(payload[:4], x.s.pingTag[:])
		binary.BigEndian.PutUint32(payload[4:], seq)
		frames = wsframe.AppendControl(frames, wsframe.OpPing, w.mask(), payload[:])
	}
	if cl {
		frames = wsframe.AppendClose(frames, w.mask(), code, reason)
	}
	if err := w.write(frames); err != nil {
		x.s.writeFailed(w, err)
		return
	}
	if cl && w.close.set(closeWritten) {
		x.s.maybeFinish()
	}
}

// mask returns a fresh masking key for a frame to x: frames toward the
// backend are masked, as a client's must be (RFC 6455 section 5.3).
func (x *side) mask() *[4]byte {
	if x.kind == Client {
		return nil
	}
	var m [4]byte
	binary.LittleEndian.PutUint32(m[:], rand.Uint32())
	return &m
}

// Actions for a control frame.
type ctrlAction uint8

const (
	ctrlForward ctrlAction = iota
	ctrlDrop
	ctrlClose   // forward, and it is a Close
	ctrlLimited // over the client's control-frame budget: close the session
)

// control decides what becomes of a control frame x sent.
func (x *side) control(h *wsframe.Header, payload []byte) ctrlAction {
	s := x.s
	w := x.peer
	if x.close.has(closeRead) {
		return ctrlDrop // nothing may follow a Close
	}
	var p [wsframe.MaxControlPayload]byte
	n := copy(p[:], payload)
	if h.Masked {
		wsframe.MaskBytes(h.Mask, 0, p[:n])
	}
	switch h.Opcode {
	case wsframe.OpPing:
		if x.kind == Client && !s.allowControl(x.lastRead.Load()) {
			return ctrlLimited
		}
	case wsframe.OpPong:
		if n == 8 && [4]byte(p[:4]) == s.pingTag {
			return x.relayPong(binary.BigEndian.Uint32(p[4:8]))
		}
		if x.kind == Client && !s.allowControl(x.lastRead.Load()) {
			return ctrlLimited
		}
	case wsframe.OpClose:
		x.close.set(closeRead)
		code, _, _ := wsframe.ParseClose(p[:n])
		s.noteFirst(partyOf(x.kind), code)
		s.beginClosing()
		if !w.close.has(sideGone) && w.close.set(closeQueued) {
			return ctrlClose
		}
		s.maybeFinish()
		return ctrlDrop
	}
	if w.close.has(closeQueued | sideGone) {
		return ctrlDrop
	}
	return ctrlForward
}

// relayPong handles x's answer to a relay ping (seq): it is never
// forwarded. The first answer to the latest ping is the relay's; a late or
// repeated one costs the client from its control-frame budget.
func (x *side) relayPong(seq uint32) ctrlAction {
	s := x.s
	answer := seq == x.pingSeq.Load()
	if answer {
		s.hooks.Pong(x.kind, time.Duration(monoNow()-x.lastPing.Load()))
	}
	if x.kind == Client {
		if answer && seq != s.ctrlPonged {
			s.ctrlPonged = seq
		} else if !s.allowControl(x.lastRead.Load()) {
			return ctrlLimited
		}
	}
	return ctrlDrop
}
