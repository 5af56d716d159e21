package relay

import "github.com/wsproxy/wsproxy/internal/wsframe"

// walk is one pass of a pump over what it read: buf[p:end] is still to
// parse, buf[fw:p] is parsed and not yet forwarded. Forwarded bytes go out
// in runs as long as possible: a run is cut only where a frame is dropped
// or the relay puts in a frame of its own.
type walk struct {
	buf        []byte
	p, fw, end int
	data       bool // data frame bytes were seen
}

// run is the parsed run not yet forwarded.
func (wk *walk) run() []byte { return wk.buf[wk.fw:wk.p] }

// relay parses buf[p:end] and forwards it to the peer.
func (x *side) relay(buf []byte, p, end int) {
	wk := walk{buf: buf, p: p, fw: p, end: end}
	for wk.p < wk.end {
		if x.remaining == 0 {
			if !x.frame(&wk) {
				return
			}
			continue
		}
		// The payload of the current data frame that this read holds,
		// cut out of the run if the frame is dropped. (Inline: it is
		// the step every frame takes.)
		k := min(int64(wk.end-wk.p), x.remaining)
		if x.drop {
			if !x.forward(wk.run(), false) {
				return
			}
			wk.fw = wk.p + int(k)
		}
		wk.data = true
		wk.p += int(k)
		x.remaining -= k
	}
	if wk.data {
		x.s.lastData.Store(monoNow())
	}
	x.forward(wk.run(), x.remaining > 0 && !x.drop)
}

// frame handles the frame that starts at wk.p, a frame boundary: a
// control frame in controlFrame, the header of a data frame here (the
// step every frame takes). It reports false when the pass ends there.
func (x *side) frame(wk *walk) bool {
	// The relay may put its own frames here.
	if x.peer.ctrl.pending.Load() {
		if !x.forward(wk.run(), false) {
			return false
		}
		wk.fw = wk.p
		x.flushCtrl()
	}
	h, hl, err := wsframe.Parse(wk.buf[wk.p:wk.end])
	switch {
	case err != nil:
		return x.protocolError(wk, "invalid frame length")
	case hl == 0:
		x.carry(wk)
		return false
	}
	if reason := x.check(&h); reason != "" {
		return x.protocolError(wk, reason)
	}
	if h.IsControl() {
		return x.controlFrame(wk, &h, hl)
	}
	if h.Opcode == wsframe.OpContinuation {
		if !x.msgOpen {
			return x.protocolError(wk, "continuation frame with no message open")
		}
		x.msgBytes += h.Length
	} else {
		if x.msgOpen {
			return x.protocolError(wk, "new message before the last one ended")
		}
		x.msgBytes = h.Length
		if x.lim != nil && !x.lim.allow(x.lastRead.Load()) {
			x.forward(wk.run(), false)
			x.s.rateLimited(x, MessageRate)
			return false
		}
	}
	x.msgOpen = !h.Fin
	if h.Fin {
		x.msgs.Add(1)
	}
	wk.data = true
	x.drop = x.eof || x.close.has(closeRead) || x.peer.close.has(closeQueued|sideGone)
	max := x.s.limits.MaxMessageBytes
	tooBig := !x.drop && max > 0 && x.msgBytes > max
	if tooBig {
		// Refuse the message but keep parsing its frames, so the
		// sender's Close can be found behind them.
		x.drop = true
	}
	if x.drop {
		if !x.forward(wk.run(), false) {
			return false
		}
		wk.fw = wk.p + hl
	}
	if tooBig {
		x.s.tooBig(x)
	}
	wk.p += hl
	x.remaining = h.Length
	return true
}

// protocolError forwards the run before the frame at wk.p, which broke the
// protocol, and fails the session. The pass ends there.
func (x *side) protocolError(wk *walk, reason string) bool {
	x.forward(wk.run(), false)
	x.s.violation(x, reason)
	return false
}

// carry keeps the incomplete frame at wk.p for the next read, which places
// it in the headroom in front of what it reads.
func (x *side) carry(wk *walk) {
	x.forward(wk.run(), false)
	x.tail = append(x.tail, wk.buf[wk.p:wk.end]...)
}

// controlFrame handles a control frame with an hl-byte header at wk.p. It
// is acted on only once it is whole in the buffer.
func (x *side) controlFrame(wk *walk, h *wsframe.Header, hl int) bool {
	total := hl + int(h.Length)
	if wk.end-wk.p < total {
		x.carry(wk)
		return false
	}
	switch x.control(h, wk.buf[wk.p+hl:wk.p+total]) {
	case ctrlDrop:
		if !x.forward(wk.run(), false) {
			return false
		}
		wk.fw = wk.p + total
	case ctrlLimited:
		x.forward(wk.run(), false)
		x.s.rateLimited(x, ControlRate)
		return false
	case ctrlClose:
		// Write through the Close frame now: the session may end as soon
		// as it is out.
		wk.p += total
		if !x.forward(wk.run(), false) {
			return false
		}
		wk.fw = wk.p
		x.peer.close.set(closeWritten)
		x.s.maybeFinish()
		return true
	}
	wk.p += total
	return true
}

// forward writes a run of x's bytes to its peer and records whether the
// peer's stream now ends inside a frame. It reports false when the session
// cannot go on relaying from x.
func (x *side) forward(b []byte, midFrame bool) bool {
	w := x.peer
	if len(b) == 0 || w.close.has(sideGone) {
		return true
	}
	if err := w.write(b); err != nil {
		x.s.writeFailed(w, err)
		return false
	}
	w.midFrame.Store(midFrame)
	return true
}
