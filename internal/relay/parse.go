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
		var ok bool
		if x.remaining > 0 {
			ok = x.payload(&wk)
		} else {
			ok = x.frame(&wk)
		}
		if !ok {
			return
		}
	}
	if wk.data {
		x.s.lastData.Store(monoNow())
	}
	x.forward(wk.run(), x.remaining > 0 && !x.drop)
}

// payload passes over the payload bytes of the current data frame that
// this read holds, cutting them out of the run if the frame is dropped.
func (x *side) payload(wk *walk) bool {
	k := min(int64(wk.end-wk.p), x.remaining)
	if x.drop {
		if !x.forward(wk.run(), false) {
			return false
		}
		wk.fw = wk.p + int(k)
	}
	wk.data = true
	wk.p += int(k)
	x.remaining -= k
	return true
}

// frame handles the frame that starts at wk.p, a frame boundary. It
// reports false when the pass ends there.
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
	if err != nil {
		x.forward(wk.run(), false)
		x.s.violation(x, "invalid frame length")
		return false
	}
	if hl == 0 {
		x.carry(wk)
		return false
	}
	if reason := x.check(&h); reason != "" {
		x.forward(wk.run(), false)
		x.s.violation(x, reason)
		return false
	}
	if h.IsControl() {
		return x.controlFrame(wk, &h, hl)
	}
	return x.dataFrame(wk, &h, hl)
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

// dataFrame handles the header of a data frame, hl bytes at wk.p: it
// checks the message sequence and the limits and decides whether the
// frame is forwarded.
func (x *side) dataFrame(wk *walk, h *wsframe.Header, hl int) bool {
	if h.Opcode == wsframe.OpContinuation {
		if !x.msgOpen {
			x.forward(wk.run(), false)
			x.s.violation(x, "continuation frame with no message open")
			return false
		}
		x.msgBytes += h.Length
	} else {
		if x.msgOpen {
			x.forward(wk.run(), false)
			x.s.violation(x, "new message before the last one ended")
			return false
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
