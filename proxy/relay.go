package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wsproxy/wsproxy/internal/poller"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// The relay moves frames between the two sides of a session.
//
// Each side has a pump: it reads what that side sent, without blocking,
// parses frame headers and writes the bytes on to the peer untouched. The
// pump of a side is also the only writer of its peer's stream, so the
// proxy's own control frames (pings, closes) for a side are queued on that
// side and written by its peer's pump at the next frame boundary. A pump
// runs on a goroutine of its own only while there is something to do: when
// its socket has no more data it returns its buffer to the pool, the
// goroutine ends, and the poller schedules a new pump when data arrives.
// An idle session thus holds no goroutine and no buffer.
//
// A pump the poller starts runs on the poller's own loop goroutine, as in
// an event loop, for a bounded number of reads: no goroutine is started and
// no other thread woken for a message that fits in one read. A write that
// would block detaches the loop first (another goroutine takes over the
// poller), so one slow peer never holds up the other sessions of its
// poller; a pump with more to read than its budget moves to a goroutine of
// its own.

// Pump states.
const (
	pumpIdle    int32 = iota // no goroutine; the poller or a sender schedules one
	pumpRunning              // a goroutine is pumping
	pumpAgain                // running, and asked to look again before it stops
)

const (
	// headroom in front of each read, where an incomplete header or
	// control frame carried over from the previous read is placed, so that
	// it is contiguous with the bytes that complete it.
	headroom = wsframe.MaxHeaderLen + wsframe.MaxControlPayload + 1
	// readSize is the most a pump reads at a time.
	readSize = 32 << 10
	// inlineReads is how many reads a pump does on the poller's loop
	// before it moves to a goroutine of its own.
	inlineReads = 8
)

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, headroom+readSize)
	return &b
}}

var errWouldBlock = errors.New("proxy: would block")

var errEOF = io.EOF

// sideKind tells the two sides apart.
type sideKind uint8

const (
	clientSide sideKind = iota
	backendSide
)

func (k sideKind) String() string {
	if k == clientSide {
		return "client"
	}
	return "backend"
}

// side is one connection of a session. Fields under "read state" belong to
// the side's own pump; those under "write state" to its peer's pump.
type side struct {
	s    *session
	peer *side
	conn net.Conn
	rc   syscall.RawConn
	fd   int
	reg  poller.Registration
	tls  *tls.Conn // nil for plain TCP
	sock *Socket   // under tls

	state atomic.Int32 // pump state
	kind  sideKind
	drop  bool // the current data frame is not forwarded
	// msgOpen: a data message has begun and not ended
	msgOpen bool
	eof     bool // nothing more can be read (EOF, error or given up)
	// loop is the poller loop the pump runs on, nil when it runs on a
	// goroutine of its own. Only the pump touches it.
	loop *poller.Loop

	// read state: what this side sends
	early     []byte // bytes that arrived with the handshake
	tail      []byte // incomplete header or control frame from the last read
	remaining int64  // payload bytes left in the current data frame
	msgBytes  int64
	lim       *messageLimiter // nil: no message rate limit

	// write state: what is sent to this side
	midFrame atomic.Bool   // the bytes written so far end inside a frame
	pingSeq  atomic.Uint32 // of the proxy's last ping to this side
	ctrlMu   sync.Mutex
	ctrl     []byte // proxy control frames waiting for a frame boundary
	ctrlSet  atomic.Bool

	closeSent    atomic.Bool // a Close frame is queued or written to this side
	closeFlushed atomic.Bool // ... and written
	closeRecv    atomic.Bool // this side sent a Close frame
	gone         atomic.Bool // this side cannot be written to any more
	stalled      atomic.Bool // ... because it accepted nothing for write_timeout

	lastRead atomic.Int64 // monotonic ns of the last bytes read
	lastPing atomic.Int64 // monotonic ns of the last ping the proxy sent

	// raw socket calls, bound once (see rawRead, rawWrite)
	readFn, writeFn func(fd uintptr) bool
	rbuf            []byte
	rn              int
	rerr            error
	wbuf            []byte // written by the peer's pump only
	werr            error

	// counters for logs and metrics; written by the side's own pump
	msgs  atomic.Int64 // data messages received from this side
	bytes atomic.Int64 // bytes received from this side
}

// Ready implements poller.Handler: x's socket has data, or hung up.
func (x *side) Ready(l *poller.Loop) {
	for {
		switch x.state.Load() {
		case pumpIdle:
			if x.state.CompareAndSwap(pumpIdle, pumpRunning) {
				x.loop = l
				x.pump()
				return
			}
		case pumpRunning:
			if x.state.CompareAndSwap(pumpRunning, pumpAgain) {
				return
			}
		default:
			return
		}
	}
}

// schedule makes sure a pump looks at x soon: it starts one, or asks the
// running one to look again before it stops.
func (x *side) schedule() {
	for {
		switch x.state.Load() {
		case pumpIdle:
			if x.state.CompareAndSwap(pumpIdle, pumpRunning) {
				go x.pump()
				return
			}
		case pumpRunning:
			if x.state.CompareAndSwap(pumpRunning, pumpAgain) {
				return
			}
		default:
			return
		}
	}
}

// detach is called before the pump of x blocks: if it runs on a poller
// loop, another goroutine takes the loop over.
func (x *side) detach() {
	if x.loop != nil {
		x.loop.Detach()
		x.loop = nil
	}
}

// pump reads what x has sent and relays it to x.peer, and writes the
// control frames queued for x.peer. It runs until x has nothing more to
// read and nobody asked it to look again. On a poller loop it stops after
// inlineReads reads and carries on on a goroutine of its own.
func (x *side) pump() {
	var bp *[]byte
	defer func() {
		if bp != nil {
			bufPool.Put(bp)
		}
	}()
	s := x.s
	reads := 0
	for {
		if s.done.Load() {
			x.loop = nil
			x.state.Store(pumpIdle)
			return
		}
		x.flushCtrl()
		if !x.eof {
			if x.loop != nil && reads == inlineReads {
				// Keep the loop's other sockets served: go on elsewhere,
				// still in the running state.
				x.loop = nil
				go x.pump()
				return
			}
			if bp == nil {
				bp = bufPool.Get().(*[]byte)
			}
			reads++
			if x.readOnce(*bp) {
				continue
			}
		}
		// Nothing more to read for now. Flush control frames that were
		// queued meanwhile, then stop unless asked to look again.
		x.flushCtrl()
		if bp != nil {
			bufPool.Put(bp)
			bp = nil
		}
		// Once idle, another pump may start at any moment: x.loop must be
		// clear before.
		l := x.loop
		x.loop = nil
		if x.state.CompareAndSwap(pumpRunning, pumpIdle) {
			return
		}
		x.loop = l
		x.state.Store(pumpRunning)
	}
}

// readOnce reads once and relays what it got. It reports whether the
// pump should read again at once.
func (x *side) readOnce(buf []byte) (more bool) {
	var n int
	var err error
	if len(x.early) > 0 {
		n = copy(buf[headroom:], x.early)
		x.early = x.early[n:]
		if len(x.early) == 0 {
			x.early = nil
		}
	} else {
		n, err = x.read(buf[headroom:])
	}
	if n > 0 {
		x.lastRead.Store(monoNow())
		x.bytes.Add(int64(n))
		start := headroom
		if len(x.tail) > 0 {
			start -= copy(buf[headroom-len(x.tail):headroom], x.tail)
			x.tail = x.tail[:0]
		}
		x.relay(buf, start, headroom+n)
		if x.eof {
			return false
		}
		if err == nil {
			// A short read means the socket was drained; with an
			// edge-triggered poller, new data schedules a new look. TLS
			// may hold whole records already read off the socket: read
			// until it says the socket is empty.
			return n == readSize || len(x.early) > 0 || x.tls != nil
		}
	}
	switch {
	case err == errWouldBlock:
		return false
	case err != nil:
		x.lost(err)
		return false
	}
	return false
}

// read reads without blocking. It returns errWouldBlock when the socket has
// nothing, io.EOF at the end.
func (x *side) read(b []byte) (n int, err error) {
	if x.tls != nil {
		return x.readTLS(b)
	}
	x.rbuf = b
	rerr := x.rc.Read(x.readFn)
	x.rbuf = nil
	n, err = x.rn, x.rerr
	switch {
	case rerr != nil:
		return 0, rerr
	case err == unix.EAGAIN:
		return 0, errWouldBlock
	case err != nil:
		return 0, err
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readTLS reads decrypted bytes without blocking.
func (x *side) readTLS(b []byte) (int, error) {
	n, err := x.tls.Read(b)
	if n > 0 {
		return n, nil
	}
	var empty errSocketEmpty
	if errors.As(err, &empty) {
		return 0, errWouldBlock
	}
	if err == nil {
		return 0, errWouldBlock
	}
	return 0, err
}

// rawRead is x.readFn: one read(2) on the socket, never waiting. It is
// bound once per side, so that reads allocate no closure.
func (x *side) rawRead(fd uintptr) bool {
	for {
		x.rn, x.rerr = rawRead(int(fd), x.rbuf)
		if x.rerr != unix.EINTR {
			return true
		}
	}
}

// rawWrite is x.writeFn: writes x.wbuf until it is all out or the socket
// is full, never waiting.
func (x *side) rawWrite(fd uintptr) bool {
	x.werr = nil
	for len(x.wbuf) > 0 {
		n, err := rawWrite(int(fd), x.wbuf)
		if n > 0 {
			x.wbuf = x.wbuf[n:]
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			x.werr = err
			return true
		}
	}
	return true
}

// write writes b to x in full: first without blocking, then, if the socket
// is full, blocking up to the write timeout, which applies back-pressure
// to the pump that feeds it.
func (x *side) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if x.tls != nil {
		// A TLS record must go out whole: the Socket writes what it can
		// at once and detaches the writing pump (x.peer's) before it
		// waits for the rest.
		if wt := x.s.limits.WriteTimeout; wt > 0 {
			if err := x.conn.SetWriteDeadline(time.Now().Add(wt)); err != nil {
				return err
			}
		}
		_, err := x.tls.Write(b)
		return err
	}
	x.wbuf = b
	rerr := x.rc.Write(x.writeFn)
	b, serr := x.wbuf, x.werr
	x.wbuf = nil
	if rerr != nil {
		return rerr
	}
	if serr != nil && serr != unix.EAGAIN {
		return serr
	}
	if len(b) == 0 {
		return nil
	}
	// The socket is full: wait for the peer to read, which holds up the
	// pump that feeds it (x's peer's), not its poller.
	x.peer.detach()
	if wt := x.s.limits.WriteTimeout; wt > 0 {
		if err := x.conn.SetWriteDeadline(time.Now().Add(wt)); err != nil {
			return err
		}
	}
	_, err := x.conn.Write(b)
	return err
}

// relay parses buf[p:end] and forwards it to the peer. Forwarded bytes are
// written in runs as long as possible: a run is cut only where a frame is
// dropped or the proxy puts in a frame of its own.
func (x *side) relay(buf []byte, p, end int) {
	w := x.peer
	s := x.s
	fw := p // start of the run not yet written
	data := false
	for p < end {
		if x.remaining > 0 {
			k := int64(end - p)
			if k > x.remaining {
				k = x.remaining
			}
			if x.drop {
				if !x.forward(buf[fw:p], false) {
					return
				}
				fw = p + int(k)
			}
			data = true
			p += int(k)
			x.remaining -= k
			continue
		}
		// A frame boundary: the proxy may put its own frames here.
		if w.ctrlSet.Load() {
			if !x.forward(buf[fw:p], false) {
				return
			}
			fw = p
			x.flushCtrl()
		}
		h, hl, err := wsframe.Parse(buf[p:end])
		if err != nil {
			x.forward(buf[fw:p], false)
			s.violation(x, wsframe.CloseProtocolError, "invalid frame length")
			return
		}
		if hl == 0 {
			x.forward(buf[fw:p], false)
			x.tail = append(x.tail, buf[p:end]...)
			return
		}
		if reason := x.check(&h); reason != "" {
			x.forward(buf[fw:p], false)
			s.violation(x, wsframe.CloseProtocolError, reason)
			return
		}
		if h.IsControl() {
			total := hl + int(h.Length)
			if end-p < total {
				x.forward(buf[fw:p], false)
				x.tail = append(x.tail, buf[p:end]...)
				return
			}
			switch x.control(&h, buf[p+hl:p+total]) {
			case ctrlForward:
			case ctrlDrop:
				if !x.forward(buf[fw:p], false) {
					return
				}
				fw = p + total
			case ctrlLimited:
				x.forward(buf[fw:p], false)
				s.controlRateLimited(x)
				return
			case ctrlClose:
				// Write through the Close frame now: the session may
				// end as soon as it is out.
				if !x.forward(buf[fw:p+total], false) {
					return
				}
				w.closeFlushed.Store(true)
				fw = p + total
				p += total
				s.maybeFinish()
				continue
			}
			p += total
			continue
		}
		// A data frame.
		if h.Opcode == wsframe.OpContinuation {
			if !x.msgOpen {
				x.forward(buf[fw:p], false)
				s.violation(x, wsframe.CloseProtocolError, "continuation frame with no message open")
				return
			}
			x.msgBytes += h.Length
		} else {
			if x.msgOpen {
				x.forward(buf[fw:p], false)
				s.violation(x, wsframe.CloseProtocolError, "new message before the last one ended")
				return
			}
			x.msgBytes = h.Length
			if x.lim != nil && !x.lim.allow(x.lastRead.Load()) {
				x.forward(buf[fw:p], false)
				s.rateLimited(x)
				return
			}
		}
		x.msgOpen = !h.Fin
		if h.Fin {
			x.msgs.Add(1)
		}
		data = true
		x.drop = x.closeRecv.Load() || w.closeSent.Load() || w.gone.Load() || x.eof
		tooBig := !x.drop && s.limits.MaxMessageBytes > 0 && x.msgBytes > s.limits.MaxMessageBytes
		if tooBig {
			// Refuse the message but keep parsing its frames, so the
			// sender's Close can be found behind them.
			x.drop = true
		}
		if x.drop {
			if !x.forward(buf[fw:p], false) {
				return
			}
			fw = p + hl
		}
		if tooBig {
			s.tooBig(x)
		}
		p += hl
		x.remaining = h.Length
	}
	if data {
		s.lastData.Store(monoNow())
	}
	x.forward(buf[fw:p], x.remaining > 0 && !x.drop)
}

// messageLimiter is a side's message rate limit: a token bucket of burst
// messages refilled at rate per second. Only sessions of a route with a
// limit carry one.
type messageLimiter struct {
	rate, burst, tokens float64
	at                  int64 // monotonic ns of the last refill
}

// limitRate sets x's message rate limit: perSecond messages on average,
// burst at once (0: perSecond rounded up).
func (x *side) limitRate(perSecond float64, burst int) {
	if perSecond <= 0 {
		return
	}
	l := &messageLimiter{rate: perSecond, burst: float64(burst), at: monoNow()}
	if burst <= 0 {
		l.burst = math.Ceil(perSecond)
	}
	l.tokens = l.burst
	x.lim = l
}

// allow takes a token for a new message read at now (monotonic ns).
func (l *messageLimiter) allow(now int64) bool {
	if el := now - l.at; el > 0 {
		l.tokens = min(l.burst, l.tokens+float64(el)*l.rate/1e9)
		l.at = now
	}
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// allowControl takes from the client's control-frame budget for a ping, or
// a pong that answers no proxy ping, read at now (monotonic ns). The
// budget is a token bucket of max_control_frames_per_second with a burst
// of twice that, kept as the generic cell rate algorithm does in one
// number: the time at which the bucket would be full again.
func (s *session) allowControl(now int64) bool {
	rate := s.limits.MaxControlFramesPerSecond
	if rate <= 0 {
		return true
	}
	interval := int64(1e9 / rate)
	tolerance := int64(controlBurst(rate)-1) * interval
	tat := max(s.ctrlTAT, now)
	if tat-now > tolerance {
		return false
	}
	s.ctrlTAT = tat + interval
	return true
}

// controlBurst is how many control frames a client may send at once at a
// control-frame rate: twice the rate, at least one.
func controlBurst(rate float64) float64 { return max(1, math.Ceil(2*rate)) }

// forward writes a run of x's bytes to its peer and records whether the
// peer's stream now ends inside a frame. It reports false when the session
// cannot go on relaying from x.
func (x *side) forward(b []byte, midFrame bool) bool {
	w := x.peer
	if len(b) == 0 {
		return true
	}
	if w.gone.Load() {
		return true
	}
	if err := w.write(b); err != nil {
		x.s.writeFailed(w, err)
		return false
	}
	w.midFrame.Store(midFrame)
	return true
}

// queueCtrl queues a control frame for x; x's peer pump writes it at the
// next frame boundary of x's stream.
func (x *side) queueCtrl(frame []byte) {
	x.ctrlMu.Lock()
	x.ctrl = append(x.ctrl, frame...)
	x.ctrlSet.Store(true)
	x.ctrlMu.Unlock()
	x.peer.schedule()
}

// flushCtrl writes the control frames queued for x's peer, when its stream
// is at a frame boundary. It runs on x's pump, the peer stream's writer.
func (x *side) flushCtrl() {
	w := x.peer
	if !w.ctrlSet.Load() || w.midFrame.Load() {
		return
	}
	w.ctrlMu.Lock()
	frames := w.ctrl
	w.ctrl = nil
	w.ctrlSet.Store(false)
	w.ctrlMu.Unlock()
	if w.gone.Load() || w.closeFlushed.Load() {
		return // nothing may follow a Close
	}
	if err := w.write(frames); err != nil {
		x.s.writeFailed(w, err)
		return
	}
	if w.closeSent.Load() && !w.closeFlushed.Load() && containsClose(frames) {
		w.closeFlushed.Store(true)
		x.s.maybeFinish()
	}
}

// containsClose reports whether a run of whole frames holds a Close frame.
func containsClose(b []byte) bool {
	for len(b) > 0 {
		h, n, err := wsframe.Parse(b)
		if err != nil || n == 0 {
			return false
		}
		if h.Opcode == wsframe.OpClose {
			return true
		}
		b = b[n+int(h.Length):]
	}
	return false
}

// lost handles a read error or EOF on x: the peer gets a Close unless the
// closing handshake already covers it.
func (x *side) lost(err error) {
	x.eof = true
	x.s.sideGone(x, err)
}
