package relay

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wsproxy/wsproxy/internal/poller"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// ErrNotSocket is returned by Init for a connection the relay cannot read
// without blocking: neither a TCP socket nor TLS over a Socket.
var ErrNotSocket = errors.New("relay: connection has no socket")

// DefaultCloseTimeout bounds the wait for a peer's Close reply once the
// closing handshake has begun, when Limits.CloseTimeout is 0.
const DefaultCloseTimeout = 5 * time.Second

// Side names the two connections of a session.
type Side uint8

const (
	Client  Side = iota // the connection the proxy accepted
	Backend             // the connection the proxy dialed
)

func (k Side) String() string {
	if k == Client {
		return "client"
	}
	return "backend"
}

// Party is who began the closing handshake of a session.
type Party uint8

const (
	PartyNone Party = iota
	PartyClient
	PartyBackend
	PartyProxy
)

var partyNames = [...]string{"none", "client", "backend", "proxy"}

func (p Party) String() string { return partyNames[p] }

// partyOf is the party of a side.
func partyOf(k Side) Party { return PartyClient + Party(k) }

// Session relays one WebSocket connection between a client and a backend
// whose handshake is done. The zero value is ready for Init; a Session
// must not be copied once initialised. Its methods are safe for concurrent
// use. See the package documentation for who owns which field.
type Session struct {
	client, backend side
	limits          *Limits
	hooks           Hooks
	rsv             RSVRule
	pingTag         [4]byte

	lastData      atomic.Int64 // monotonic ns of the last data frame read
	closeDeadline atomic.Int64
	closing       atomic.Bool
	done          atomic.Bool
	closeCode     atomic.Int32
	closedBy      atomic.Int32
	regMu         sync.Mutex // guards the sides' reg between Start and finish
	timer         *time.Timer
	// deadline is Options.Deadline's, for the few sessions that have one.
	deadline *deadline

	// ctrlTAT is the state of the client's control-frame budget (see
	// allowControl), ctrlPonged the sequence number of the last relay
	// ping the client answered. The client's pump alone uses them.
	ctrlTAT    int64
	ctrlPonged uint32
}

// deadline is when a session is closed, with what (Options.Deadline).
type deadline struct {
	at     int64 // monotonic ns
	code   int
	reason string
}

// Init prepares s to relay between two connected sockets: each a TCP
// connection or TLS over a Socket. On error s must not be used, and the
// connections are left to the caller.
func (s *Session) Init(clientConn, backendConn net.Conn, o *Options) error {
	s.limits, s.hooks, s.rsv = o.Limits, o.Hooks, o.Extensions
	if !o.Deadline.IsZero() {
		s.deadline = &deadline{at: monoNow() + int64(time.Until(o.Deadline)), code: o.DeadlineCode, reason: o.DeadlineReason}
		if s.deadline.code == 0 {
			s.deadline.code = wsframe.ClosePolicyViolation
		}
	}
	if s.hooks == nil {
		s.hooks = noHooks{}
	}
	// The timer exists before anything can see the session; Start arms it.
	s.timer = time.AfterFunc(time.Hour, s.tick)
	s.timer.Stop()
	binary.LittleEndian.PutUint32(s.pingTag[:], rand.Uint32()|1)
	s.client = side{s: s, kind: Client, peer: &s.backend, conn: clientConn, early: o.ClientEarly}
	s.backend = side{s: s, kind: Backend, peer: &s.client, conn: backendConn, early: o.BackendEarly}
	s.client.limitRate(s.limits.MaxMessagesPerSecond, s.limits.MessageBurst)
	for _, x := range []*side{&s.client, &s.backend} {
		if err := x.bind(); err != nil {
			return err
		}
	}
	return nil
}

// bind finds x's socket and binds its raw calls.
func (x *side) bind() error {
	var sc syscall.Conn
	if tc, ok := x.conn.(*tls.Conn); ok {
		sock, ok := tc.NetConn().(*Socket)
		if !ok {
			return ErrNotSocket
		}
		x.tls, x.sock = tc, sock
		sock.beforeBlock = x.peer.detach
		sock.nonblock.Store(true)
		sc = sock.TCPConn
	} else if c, ok := x.conn.(syscall.Conn); ok {
		sc = c
	} else {
		return ErrNotSocket
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	x.rc = rc
	x.raw.bind()
	return rc.Control(func(fd uintptr) { x.fd = int(fd) })
}

// Start registers both sockets with p, relays what arrived with the
// handshakes and starts the session's timer. If it fails, the caller ends
// the session with Finish.
func (s *Session) Start(p *poller.Poller) error {
	now := monoNow()
	s.lastData.Store(now)
	// The client side may fire, and even finish the session, before the
	// backend side is registered: regMu keeps finish from closing a
	// socket while it is being registered, and Start from registering one
	// that finish closed (its descriptor number may be reused already).
	s.regMu.Lock()
	if s.done.Load() {
		s.regMu.Unlock()
		return nil
	}
	for _, x := range []*side{&s.client, &s.backend} {
		x.lastRead.Store(now)
		x.lastPing.Store(now)
		reg, err := p.Add(x.fd, x)
		if err != nil {
			s.client.reg.Remove()
			s.client.reg = poller.Registration{}
			s.regMu.Unlock()
			return err
		}
		x.reg = reg
	}
	s.regMu.Unlock()
	s.timer.Reset(s.nextTick(now))
	// Data may have arrived before the sockets were watched, and bytes
	// that came with the handshakes wait in early.
	s.client.schedule()
	s.backend.schedule()
	return nil
}

// Close starts the closing handshake with both sides, each getting its
// code, unless a Close already went to it. Frames already read are
// relayed before the Close frames.
func (s *Session) Close(clientCode, backendCode int, reason string) {
	s.noteFirst(PartyProxy, clientCode)
	s.beginClosing()
	s.sendClose(&s.client, clientCode, reason)
	s.sendClose(&s.backend, backendCode, reason)
	s.maybeFinish()
}

// Finish ends the session at once: both sockets are closed, and Ended
// runs unless it ran already.
func (s *Session) Finish() { s.finish() }

// Done reports whether the session has finished.
func (s *Session) Done() bool { return s.done.Load() }

// SinceData is how long ago the last data frame was read from either side
// (or the session started, before the first).
func (s *Session) SinceData() time.Duration { return time.Duration(monoNow() - s.lastData.Load()) }

// Counts returns the data messages and the bytes (frames whole, control
// frames included) read from a side so far.
func (s *Session) Counts(from Side) (messages, bytes int64) {
	x := s.sideOf(from)
	return x.msgs.Load(), x.bytes.Load()
}

// CloseCode is the code of the first Close of the session: 1006 when a
// side vanished, or when the relay's own Close never reached the client.
func (s *Session) CloseCode() int { return int(s.closeCode.Load()) }

// ClosedBy is who began the closing handshake.
func (s *Session) ClosedBy() Party { return Party(s.closedBy.Load()) }

func (s *Session) sideOf(k Side) *side {
	if k == Client {
		return &s.client
	}
	return &s.backend
}

// epoch anchors monoNow.
var epoch = time.Now()

// monoNow returns monotonic nanoseconds since process start.
func monoNow() int64 { return int64(time.Since(epoch)) }

type noHooks struct{}

func (noHooks) Violation(Side, string)              {}
func (noHooks) RateLimited(Limit, float64, float64) {}
func (noHooks) Timeout(Timeout)                     {}
func (noHooks) PingSent(Side)                       {}
func (noHooks) Pong(Side, time.Duration)            {}
func (noHooks) Ended()                              {}
