package relay

import (
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// closeState is where a side stands in the closing handshake: one atomic
// set of flags per side, which only ever grows.
type closeState struct{ v atomic.Uint32 }

const (
	closeQueued  uint32 = 1 << iota // a Close is queued or written to this side
	closeWritten                    // ... and written
	closeRead                       // this side sent a Close, or is read no more
	sideGone                        // this side cannot be written to any more
	sideStalled                     // ... because it accepted nothing for write_timeout
)

// has reports whether any of flags is set.
func (c *closeState) has(flags uint32) bool { return c.v.Load()&flags != 0 }

// set sets flag and reports whether this call set it.
func (c *closeState) set(flag uint32) (first bool) { return c.v.Or(flag)&flag == 0 }

// done reports whether nothing more is expected of the side: it is gone,
// or Closes went both ways.
func (c *closeState) done() bool {
	v := c.v.Load()
	return v&sideGone != 0 || v&(closeWritten|closeRead) == closeWritten|closeRead
}

// noteFirst records who began the closing handshake, and with which code,
// unless someone did already. It is the one place that decides it.
func (s *Session) noteFirst(by Party, code int) {
	if s.closedBy.CompareAndSwap(int32(PartyNone), int32(by)) {
		s.closeCode.Store(int32(code))
	}
}

// beginClosing arms the deadline for the closing handshake.
func (s *Session) beginClosing() {
	if s.closing.CompareAndSwap(false, true) {
		d := s.limits.CloseTimeout
		if d <= 0 {
			d = DefaultCloseTimeout
		}
		s.closeDeadline.Store(monoNow() + int64(d))
		s.timer.Reset(d)
	}
}

// sendClose queues a Close for x unless one went to it already.
func (s *Session) sendClose(x *side, code int, reason string) {
	if x.close.has(sideGone) || !x.close.set(closeQueued) {
		return
	}
	x.queueClose(code, reason)
}

// fail closes the session after x broke the protocol or a limit: x gets
// code and is read no more (its peer never sees what follows), its peer
// gets peerCode.
func (s *Session) fail(x *side, code int, reason string, peerCode int, peerReason string) {
	x.eof = true
	s.noteFirst(PartyProxy, code)
	s.beginClosing()
	x.close.set(closeRead) // nothing more is read from x: do not wait for it
	s.sendClose(x, code, reason)
	s.sendClose(x.peer, peerCode, peerReason)
	s.maybeFinish()
}

// violation fails the session after x broke RFC 6455.
func (s *Session) violation(x *side, reason string) {
	s.hooks.Violation(x.kind, reason)
	if x.kind == Backend {
		s.fail(x, wsframe.CloseProtocolError, reason, s.backendGoneCode(), "backend broke the protocol")
		return
	}
	s.fail(x, wsframe.CloseProtocolError, reason, wsframe.CloseGoingAway, "client broke the protocol")
}

// rateLimited fails the session after x, the client, went over a rate
// limit: it gets 1008, the backend a graceful close.
func (s *Session) rateLimited(x *side, l Limit) {
	if l == MessageRate {
		s.hooks.RateLimited(l, x.lim.rate, x.lim.burst)
		s.fail(x, wsframe.ClosePolicyViolation, "message rate limit exceeded",
			wsframe.CloseGoingAway, "client exceeded the message rate limit")
		return
	}
	rate := s.limits.MaxControlFramesPerSecond
	s.hooks.RateLimited(l, rate, controlBurst(rate))
	s.fail(x, wsframe.ClosePolicyViolation, "control frame rate limit exceeded",
		wsframe.CloseGoingAway, "client exceeded the control frame rate limit")
}

// tooBig closes the session after x sent a message over the limit. x is
// still read, so that its Close can be found behind the message.
func (s *Session) tooBig(x *side) {
	s.hooks.Violation(x.kind, "message too big")
	if x.kind == Client {
		s.Close(wsframe.CloseTooBig, wsframe.CloseGoingAway, "message too big")
		return
	}
	s.Close(s.backendGoneCode(), wsframe.CloseTooBig, "message too big")
}

// sideGone handles x going away: EOF or an error on read or write. A side
// that sent its Close is done; otherwise its peer gets a Close saying so.
func (s *Session) sideGone(x *side) {
	if x.close.has(closeRead) && !x.close.has(sideGone) {
		// x sent Close and then shut its half; the reply may still go out.
		s.maybeFinish()
		return
	}
	x.close.set(sideGone)
	if !x.close.set(closeRead) {
		s.maybeFinish()
		return
	}
	s.noteFirst(partyOf(x.kind), wsframe.CloseAbnormal)
	s.beginClosing()
	y := x.peer
	if y.midFrame.Load() {
		// y's stream ends inside a frame that can never be completed: a
		// Close cannot follow it.
		s.finish()
		return
	}
	stalled := x.close.has(sideStalled)
	if stalled {
		s.hooks.Timeout(WriteTimeout)
	}
	switch {
	case x.kind == Backend && stalled:
		s.sendClose(y, s.backendGoneCode(), "backend stopped reading")
	case x.kind == Backend:
		s.sendClose(y, s.backendGoneCode(), "backend went away")
	case stalled:
		s.sendClose(y, wsframe.CloseGoingAway, "client stopped reading")
	default:
		s.sendClose(y, wsframe.CloseGoingAway, "client went away")
	}
	s.maybeFinish()
}

// backendGoneCode is the Close code the client gets when its backend
// vanished, stopped reading or broke the protocol.
func (s *Session) backendGoneCode() int {
	if c := s.limits.BackendGoneCloseCode; c != 0 {
		return c
	}
	return wsframe.CloseBadGateway
}

// writeFailed handles an error writing to x: nothing more can reach it.
func (s *Session) writeFailed(x *side, err error) {
	if isTimeout(err) {
		x.close.set(sideStalled)
	}
	x.close.set(sideGone)
	s.sideGone(x)
}

// maybeFinish ends the session once both sides are done.
func (s *Session) maybeFinish() {
	if s.client.close.done() && s.backend.close.done() {
		s.finish()
	}
}

// finish closes both sockets and releases everything the session holds.
// It runs once. A bare descriptor is closed once no pump may use it any
// more (releaseFDs): a descriptor number closed under a pump could be
// another connection's by the time the pump uses it. A pump still running
// may be waiting to write: finish wakes it.
func (s *Session) finish() {
	if !s.done.CompareAndSwap(false, true) {
		return
	}
	s.timer.Stop()
	s.regMu.Lock()
	for _, x := range []*side{&s.client, &s.backend} {
		x.reg.Remove()
		if x.close.has(sideStalled) {
			x.abort()
		}
		switch {
		case x.bare:
		case x.sock != nil:
			// The WebSocket closing handshake is done; a TLS
			// close_notify could block on a peer that stopped reading.
			_ = x.sock.Close()
		default:
			_ = x.conn.Close()
		}
	}
	s.regMu.Unlock()
	// An idle pump stops for good here; a running one when it next looks.
	s.client.retireIdle()
	s.backend.retireIdle()
	if s.fdUsers.Load() > 1 {
		// A pump still runs, and finish still holds the descriptors, so
		// they are open. The pump stops at its next look at done (its
		// reads never block, its writes fail once done is set); a writer
		// parked for room hears no more from the poller and is woken, one
		// waiting in ppoll (before Start) by shutting its socket down.
		for _, x := range []*side{&s.client, &s.backend} {
			if !x.bare {
				continue
			}
			if x.polling.Load() {
				_ = unix.Shutdown(x.fd, unix.SHUT_RDWR)
			}
			if x.wwait.Load() {
				x.roomReady()
			}
		}
	}
	s.releaseFDs()
	// Logs and metrics say what the client saw: a Close the relay decided
	// on but never wrote out (the session was finished hard, or while the
	// client's stream stood inside a frame) reached nobody, and the client
	// saw the connection drop.
	if s.ClosedBy() == PartyProxy && !s.client.close.has(closeWritten) {
		s.closeCode.Store(wsframe.CloseAbnormal)
	}
	s.hooks.Ended()
}

// closeFn holds close(2), as a func(int) error; tests count the calls
// through it. It is atomic because a test swaps it while pumps of an
// earlier test may still be on their way out.
var closeFn atomic.Value

func init() { closeFn.Store(rawClose) }

// closeFD closes a bare descriptor.
func closeFD(fd int) error { return closeFn.Load().(func(int) error)(fd) }

// releaseFDs is called once by each pump when it stops for good and once
// by finish: the last of the three closes the bare descriptors. The kernel
// drops their epoll registrations (Registration.Remove ran in finish).
func (s *Session) releaseFDs() {
	if s.fdUsers.Add(-1) != 0 {
		return
	}
	for _, x := range []*side{&s.client, &s.backend} {
		if x.bare {
			_ = closeFD(x.fd)
		}
	}
}
