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
	// fdUsers counts who may still use the bare descriptors: each pump
	// until it stops for good, and finish until it has woken their waiters.
	// The last one closes them (releaseFDs).
	fdUsers atomic.Int32
	timer   *time.Timer
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

// Endpoint is one side of a session.
type Endpoint struct {
	// Conn, if set, is used as today: a TCP connection or TLS over a Socket.
	Conn net.Conn
	// FD, when Conn is nil, is a connected non-blocking TCP socket the
	// session owns from InitEndpoints on (it closes it, also on error).
	// The relay sets nothing on it but SO_LINGER, to reset a peer that
	// stopped reading: TCP_NODELAY and buffer sizes are the caller's.
	FD int
	// Reg, if set, is FD's registration on a poller (poller.AddFlags,
	// Registration.Poller): Start rebinds it to the relay (Registration.Rebind,
	// no epoll_ctl) instead of adding FD again. Until Start, and for the
	// batch of events Start runs in, its old handler must ignore the events
	// it still gets.
	Reg poller.Registration
	// Writable says Reg was added with poller.Writable. The relay keeps it
	// (no epoll_ctl): it is what the relay's writer would ask for at the
	// first full socket, and edge-triggered it costs no event until a
	// socket has been full.
	Writable bool
}

// connEndpoint is c as an endpoint; a nil c is no socket, not descriptor 0.
func connEndpoint(c net.Conn) Endpoint {
	if c == nil {
		return Endpoint{FD: -1}
	}
	return Endpoint{Conn: c}
}

// errRegNeedsFD is InitEndpoints' answer to a registration beside a Conn.
var errRegNeedsFD = errors.New("relay: an endpoint's Reg needs an FD, not a Conn")

// errNoPoller is Start's answer to a nil poller with a side to add to it.
var errNoPoller = errors.New("relay: Start needs a poller for an endpoint without a registration")

// errRegRemoved is Start's answer to an endpoint whose registration was
// removed before the session could take it over.
var errRegRemoved = errors.New("relay: endpoint registration removed before Start")

// Init prepares s to relay between two connected sockets: each a TCP
// connection or TLS over a Socket. On error s must not be used, and the
// connections are left to the caller.
func (s *Session) Init(clientConn, backendConn net.Conn, o *Options) error {
	return s.InitEndpoints(connEndpoint(clientConn), connEndpoint(backendConn), o)
}

// InitEndpoints is Init for endpoints of either kind. On error s must not
// be used; the Conns are left to the caller, the FDs are closed (their
// registrations removed first).
func (s *Session) InitEndpoints(client, backend Endpoint, o *Options) error {
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
	s.client = side{s: s, kind: Client, peer: &s.backend, early: o.ClientEarly}
	s.backend = side{s: s, kind: Backend, peer: &s.client, early: o.BackendEarly}
	// Two pumps and finish hold the bare descriptors (see releaseFDs).
	s.fdUsers.Store(3)
	s.client.limitRate(s.limits.MaxMessagesPerSecond, s.limits.MessageBurst)
	err := s.client.bind(client)
	if err == nil {
		err = s.backend.bind(backend)
	}
	if err != nil {
		for _, ep := range []Endpoint{client, backend} {
			if ep.Conn == nil && ep.FD >= 0 {
				ep.Reg.Remove()
				_ = closeFD(ep.FD)
			}
		}
		return err
	}
	return nil
}

// bind takes ep as x's socket and binds its raw calls.
func (x *side) bind(ep Endpoint) error {
	if ep.Conn == nil {
		if ep.FD < 0 {
			return ErrNotSocket
		}
		x.fd, x.bare = ep.FD, true
		if ep.Reg.Poller() != nil {
			x.reg, x.rebind, x.writable = ep.Reg, true, ep.Writable
			x.wmod = ep.Writable // it reports room already (see waitRoom)
		}
		x.look = len(x.early) > 0 || x.rebind
		return nil
	}
	if ep.Reg.Poller() != nil {
		return errRegNeedsFD
	}
	x.conn = ep.Conn
	var sc syscall.Conn
	if tc, ok := x.conn.(*tls.Conn); ok {
		sock, ok := tc.NetConn().(*Socket)
		if !ok {
			return ErrNotSocket
		}
		x.tls, x.sock = tc, sock
		sock.beforeBlock, sock.writeTimeout = x.peer.detach, x.s.limits.WriteTimeout
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
	x.raw = new(rawCalls)
	x.raw.bind()
	x.look = len(x.early) > 0 || x.tls != nil
	return rc.Control(func(fd uintptr) { x.fd = int(fd) })
}

// Start registers both sockets with p, or rebinds the registrations the
// endpoints came with (each side then runs on its own registration's
// poller, and p may be nil if both have one), relays what arrived with the
// handshakes and starts the session's timer. If it fails, the caller ends
// the session with Finish.
func (s *Session) Start(p *poller.Poller) error { return s.start(p, nil) }

// StartOn is Start for a caller in a handler on l: the sides' first looks
// run on l once that handler returns (poller.Loop.Later), not on
// goroutines of their own, and sides without a registration are added to
// l's poller.
func (s *Session) StartOn(l *poller.Loop) error { return s.start(l.Poller(), l) }

func (s *Session) start(p *poller.Poller, l *poller.Loop) error {
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
		var err error
		switch {
		case !x.rebind && p == nil:
			err = errNoPoller
		case !x.rebind:
			x.reg, err = p.Add(x.fd, x)
		case !x.reg.Rebind(x):
			err = errRegRemoved
		}
		if err == nil {
			x.watched.Store(true)
		}
		if err != nil {
			// Nothing more may reach the session; finish removes the
			// registrations again, which does nothing the second time.
			s.client.reg.Remove()
			s.backend.reg.Remove()
			s.regMu.Unlock()
			return err
		}
	}
	s.regMu.Unlock()
	s.timer.Reset(s.nextTick(now))
	// Data that arrived before a socket was added is reported by the
	// kernel at once, and the pump then runs on the poller's loop. A side
	// needs a look of its own for what no event will report: bytes read
	// with its handshake, records crypto/tls read ahead, or data whose
	// edge went to a registration's old handler (every rebound side: no
	// epoll_ctl re-arms it). On a loop (StartOn) the look costs one read
	// there, not a goroutine.
	for _, x := range []*side{&s.client, &s.backend} {
		switch {
		case !x.look:
		case l != nil:
			l.Later(x)
		default:
			x.schedule()
		}
	}
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

// Finish ends the session at once: both sockets are closed (a bare
// descriptor a pump still uses is closed when the pump stops, which it
// does at its next read or write), and Ended runs unless it ran already.
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
