package relay

import (
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wsproxy/wsproxy/internal/poller"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// Pump states.
const (
	pumpIdle    int32 = iota // no goroutine; the poller or a sender schedules one
	pumpRunning              // a goroutine is pumping
	pumpAgain                // running, and asked to look again before it stops
	pumpDead                 // stopped for good: the session finished
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

// side is one connection of a session. The package documentation says
// which goroutine owns each field.
type side struct {
	s    *Session
	peer *side
	conn net.Conn // nil for a bare descriptor
	rc   syscall.RawConn
	fd   int
	reg  poller.Registration
	tls  *tls.Conn // nil for plain TCP
	sock *Socket   // under tls
	// bare: fd is all there is (Endpoint.FD), read and written with raw
	// system calls and closed by releaseFDs.
	bare bool
	// rebind: reg came with the endpoint, and Start takes it over;
	// writable: it reports room to write already (wmod from the start).
	rebind, writable bool
	// look: Start must schedule a look at x, which no event would report
	// (Init decides, before any pump runs).
	look bool
	// watched: Start has registered x (or taken its registration over);
	// x.reg may be used from then on.
	watched atomic.Bool

	// A writer waiting for room in bare x (x.peer's pump) parks on wready,
	// which x's Ready signals while wwait is set; wtimer bounds the wait,
	// and wmod says x.reg reports room to write (see waitRoom).
	wwait  atomic.Bool
	wready chan struct{}
	wtimer *time.Timer
	wmod   bool
	// polling: x's writer waits in ppoll(2), as it does before Start;
	// finish shuts x down to wake it.
	polling atomic.Bool

	state atomic.Int32 // pump state
	kind  Side
	drop  bool // the current data frame is not forwarded
	// msgOpen: a data message has begun and not ended
	msgOpen bool
	eof     bool // nothing more is read (EOF, error or given up)
	// loop is the poller loop the pump runs on, nil when it runs on a
	// goroutine of its own.
	loop *poller.Loop

	// read state: what this side sends
	early     []byte // bytes that arrived with the handshake
	tail      []byte // incomplete header or control frame from the last read
	remaining int64  // payload bytes left in the current data frame
	msgBytes  int64
	lim       *messageLimiter // nil: no message rate limit

	// write state: what is sent to this side
	midFrame atomic.Bool   // the bytes written so far end inside a frame
	pingSeq  atomic.Uint32 // of the relay's last ping to this side
	close    closeState
	ctrl     ctrlQueue // the relay's own frames for this side

	lastRead atomic.Int64 // monotonic ns of the last bytes read
	lastPing atomic.Int64 // monotonic ns of the last ping the relay sent

	raw *rawCalls // a Conn side's RawConn calls; nil for a bare one

	// counters for logs and metrics; written by the side's own pump
	msgs  atomic.Int64 // data messages received from this side
	bytes atomic.Int64 // bytes received from this side
}

// wake is the pump's one transition from outside: it claims an idle pump
// for the caller, who must then run it (true), or asks a running pump to
// look again before it stops.
func (x *side) wake() bool {
	for {
		switch st := x.state.Load(); st {
		case pumpIdle:
			if x.state.CompareAndSwap(pumpIdle, pumpRunning) {
				return true
			}
		case pumpRunning:
			if x.state.CompareAndSwap(pumpRunning, pumpAgain) {
				return false
			}
		default:
			return false
		}
	}
}

// Ready implements poller.Handler: x's socket has data, or hung up. The
// pump runs on the poller's loop.
func (x *side) Ready(l *poller.Loop) {
	if x.wwait.Load() {
		x.roomReady()
	}
	if x.wake() {
		x.loop = l
		x.pump()
	}
}

// schedule makes sure a pump looks at x soon: it starts one on a goroutine
// of its own, or asks the running one to look again before it stops.
func (x *side) schedule() {
	if x.wake() {
		go x.pump()
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
	reads := 0
	for {
		if x.s.done.Load() {
			x.loop = nil
			x.state.Store(pumpDead)
			x.s.releaseFDs()
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
			// finish may have found the pump running, and left it to stop
			// for good by itself.
			x.retireIdle()
			return
		}
		x.loop = l
		x.state.Store(pumpRunning)
	}
}

// retireIdle stops an idle pump for good once the session is finished:
// finish and the pump that has just gone idle both try, one succeeds. A
// pump woken meanwhile stops for good when it sees the session done.
func (x *side) retireIdle() {
	if x.s.done.Load() && x.state.CompareAndSwap(pumpIdle, pumpDead) {
		x.s.releaseFDs()
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
	if err != nil && err != errWouldBlock {
		x.lost()
	}
	return false
}

// lost handles a read error or EOF on x: the peer gets a Close unless the
// closing handshake already covers it.
func (x *side) lost() {
	x.eof = true
	x.s.sideGone(x)
}
