package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/internal/poller"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// epoch anchors monoNow.
var epoch = time.Now()

// monoNow returns monotonic nanoseconds since process start.
func monoNow() int64 { return int64(time.Since(epoch)) }

// defaultCloseTimeout bounds the wait for a peer's Close reply once the
// closing handshake has begun.
const defaultCloseTimeout = 5 * time.Second

// Who ended a session, for logs and metrics.
const (
	closedByNone int32 = iota
	closedByClient
	closedByBackend
	closedByProxy
)

var closedByNames = [...]string{"", "client", "backend", "proxy"}

// Extension handling derived from the backend's 101 answer: which RSV bits
// data frames may carry.
type rsvRule uint8

const (
	rsvNone    rsvRule = iota // no extension: RSV bits must be 0
	rsvDeflate                // permessage-deflate: RSV1 on a message's first frame
	rsvAny                    // an extension the proxy does not know: not checked
)

// session is one proxied WebSocket connection.
type session struct {
	srv      *Server
	client   side
	backend  side
	limits   *Limits // its route's, in the table it started with
	route    string  // the route's path
	pool     string
	upstream *balancer.Backend
	exact    bool // the route is exact
	rsv      rsvRule
	pingTag  [4]byte
	start    time.Time
	peer     string // client address for logs
	proto    string // negotiated subprotocol
	rm       *routeMetrics
	bm       *backendMetrics
	ticket   ticket // its place under the admission caps

	lastData      atomic.Int64
	closeDeadline atomic.Int64
	closing       atomic.Bool
	done          atomic.Bool
	closeCode     atomic.Int32
	closedBy      atomic.Int32
	drainedBy     atomic.Uint32
	regMu         sync.Mutex // guards the sides' reg between run and finish
	timer         *time.Timer
	closeTimeout  time.Duration
	unregister    func()

	// ctrlTAT is the state of the client's control-frame budget (see
	// allowControl), ctrlPonged the sequence number of the last proxy
	// ping the client answered. The client's pump alone uses them.
	ctrlTAT    int64
	ctrlPonged uint32
}

// newSession builds a session over an upgraded client connection and the
// backend connection that accepted the upgrade.
func newSession(srv *Server, clientConn, backendConn net.Conn) (*session, error) {
	s := &session{srv: srv, start: time.Now()}
	// The timer exists before anything can see the session; run arms it.
	s.timer = time.AfterFunc(time.Hour, s.tick)
	s.timer.Stop()
	binary.LittleEndian.PutUint32(s.pingTag[:], rand.Uint32()|1)
	s.client = side{s: s, kind: clientSide, peer: &s.backend, conn: clientConn}
	s.backend = side{s: s, kind: backendSide, peer: &s.client, conn: backendConn}
	for _, x := range []*side{&s.client, &s.backend} {
		var sc syscall.Conn
		if tc, ok := x.conn.(*tls.Conn); ok {
			sock, ok := tc.NetConn().(*Socket)
			if !ok {
				return nil, errNotSocket
			}
			x.tls, x.sock = tc, sock
			sock.beforeBlock = x.peer.detach
			sock.nonblock.Store(true)
			sc = sock.TCPConn
		} else if c, ok := x.conn.(syscall.Conn); ok {
			sc = c
		} else {
			return nil, errNotSocket
		}
		rc, err := sc.SyscallConn()
		if err != nil {
			return nil, err
		}
		x.rc = rc
		x.readFn, x.writeFn = x.rawRead, x.rawWrite
		if err := rc.Control(func(fd uintptr) { x.fd = int(fd) }); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// start registers both sockets with the poller, pumps what arrived with
// the handshake and starts the session's timer.
func (s *session) run(p *poller.Poller) error {
	now := monoNow()
	s.lastData.Store(now)
	// The client side may fire, and even finish the session, before the
	// backend side is registered: regMu keeps finish from closing a
	// socket while it is being registered, and run from registering one
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

// closeFrame builds a Close frame for x: masked toward the backend, as a
// client must (RFC 6455 section 5.3).
func closeFrame(x *side, code int, reason string) []byte {
	var mask *[4]byte
	if x.kind == backendSide {
		var m [4]byte
		binary.LittleEndian.PutUint32(m[:], rand.Uint32())
		mask = &m
	}
	return wsframe.AppendClose(make([]byte, 0, 8+len(reason)), mask, code, reason)
}

// closeWith starts the closing handshake with both sides, each getting its
// code, unless a Close already went to it.
func (s *session) closeWith(clientCode, backendCode int, reason string) {
	if s.closedBy.CompareAndSwap(closedByNone, closedByProxy) {
		s.closeCode.Store(int32(clientCode))
	}
	s.beginClosing()
	s.sendClose(&s.client, clientCode, reason)
	s.sendClose(&s.backend, backendCode, reason)
	s.maybeFinish()
}

// sendClose queues a Close for x unless one went to it already.
func (s *session) sendClose(x *side, code int, reason string) {
	if x.gone.Load() || !x.closeSent.CompareAndSwap(false, true) {
		return
	}
	x.queueCtrl(closeFrame(x, code, reason))
}

// beginClosing arms the deadline for the closing handshake.
func (s *session) beginClosing() {
	if s.closing.CompareAndSwap(false, true) {
		s.closeDeadline.Store(monoNow() + int64(s.closeTimeout))
		s.timer.Reset(s.closeTimeout)
	}
}

// violation fails the session after x broke the protocol: x gets code and
// is not read any more; its peer gets a graceful close.
func (s *session) violation(x *side, code int, reason string) {
	x.eof = true
	s.srv.countViolation(x.kind, reason)
	if ce := s.srv.log.Check(zap.DebugLevel, "protocol violation"); ce != nil {
		ce.Write(zap.String("route", s.route), zap.String("side", x.kind.String()), zap.String("reason", reason), zap.String("client", s.peer))
	}
	peerCode, peerReason := wsframe.CloseGoingAway, "client broke the protocol"
	if x.kind == backendSide {
		peerCode, peerReason = s.backendGoneCode(), "backend broke the protocol"
	}
	if s.closedBy.CompareAndSwap(closedByNone, closedByProxy) {
		s.closeCode.Store(int32(code))
	}
	s.beginClosing()
	x.closeRecv.Store(true) // nothing more is read from x: do not wait for it
	s.sendClose(x, code, reason)
	s.sendClose(x.peer, peerCode, peerReason)
	s.maybeFinish()
}

// rateLimited closes the session after x, the client, sent messages
// faster than its route allows.
func (s *session) rateLimited(x *side) {
	s.srv.stats.MessageRateLimited.Add(1)
	s.srv.log.Info("message rate limit exceeded", zap.String("route", s.route), zap.String("client", s.peer),
		zap.Float64("max_messages_per_second", x.lim.rate), zap.Float64("burst", x.lim.burst))
	s.closeLimited(x, "message rate limit exceeded", "client exceeded the message rate limit")
}

// controlRateLimited closes the session after x, the client, sent pings
// (or pongs answering no proxy ping) faster than its route allows.
func (s *session) controlRateLimited(x *side) {
	s.srv.stats.ControlRateLimited.Add(1)
	rate := s.limits.MaxControlFramesPerSecond
	s.srv.log.Info("control frame rate limit exceeded", zap.String("route", s.route), zap.String("client", s.peer),
		zap.Float64("max_control_frames_per_second", rate), zap.Float64("burst", controlBurst(rate)))
	s.closeLimited(x, "control frame rate limit exceeded", "client exceeded the control frame rate limit")
}

// closeLimited closes the session after x, the client, went over a rate
// limit: it gets 1008 and is not read any more, so the backend never sees
// the flood; the backend gets a graceful close.
func (s *session) closeLimited(x *side, reason, backendReason string) {
	x.eof = true
	if s.closedBy.CompareAndSwap(closedByNone, closedByProxy) {
		s.closeCode.Store(wsframe.ClosePolicyViolation)
	}
	s.beginClosing()
	x.closeRecv.Store(true)
	s.sendClose(x, wsframe.ClosePolicyViolation, reason)
	s.sendClose(x.peer, wsframe.CloseGoingAway, backendReason)
	s.maybeFinish()
}

// tooBig closes the session after x sent a message over the limit.
func (s *session) tooBig(x *side) {
	s.srv.countViolation(x.kind, "message too big")
	if x.kind == clientSide {
		s.closeWith(wsframe.CloseTooBig, wsframe.CloseGoingAway, "message too big")
		return
	}
	s.closeWith(s.backendGoneCode(), wsframe.CloseTooBig, "message too big")
}

// sideGone handles x going away: EOF or an error on read or write. A side
// that sent its Close is done; otherwise its peer gets a Close saying so.
func (s *session) sideGone(x *side, err error) {
	if x.closeRecv.Load() && !x.gone.Load() {
		// x sent Close and then shut its half; the reply may still go out.
		s.maybeFinish()
		return
	}
	x.gone.Store(true)
	y := x.peer
	if !x.closeRecv.Load() {
		x.closeRecv.Store(true)
		if s.closedBy.CompareAndSwap(closedByNone, int32(closedByClient+int32(x.kind))) {
			s.closeCode.Store(wsframe.CloseAbnormal)
		}
		s.beginClosing()
		if y.midFrame.Load() {
			// y's stream ends inside a frame that can never be completed:
			// a Close cannot follow it.
			s.finish()
			return
		}
		stalled := x.stalled.Load()
		if stalled {
			s.srv.countTimeout("write")
		}
		switch {
		case x.kind == backendSide && stalled:
			s.sendClose(y, s.backendGoneCode(), "backend stopped reading")
		case x.kind == backendSide:
			s.sendClose(y, s.backendGoneCode(), "backend went away")
		case stalled:
			s.sendClose(y, wsframe.CloseGoingAway, "client stopped reading")
		default:
			s.sendClose(y, wsframe.CloseGoingAway, "client went away")
		}
	}
	s.maybeFinish()
}

// backendGoneCode is the Close code the client gets when its backend
// vanished, stopped reading or broke the protocol: the route's
// backend_gone_close_code, 1014 unless set.
func (s *session) backendGoneCode() int {
	if c := s.limits.BackendGoneCloseCode; c != 0 {
		return c
	}
	return wsframe.CloseBadGateway
}

// writeFailed handles an error writing to x: nothing more can reach it.
func (s *session) writeFailed(x *side, err error) {
	if isTimeout(err) {
		x.stalled.Store(true)
	}
	x.gone.Store(true)
	s.sideGone(x, err)
}

// noteClose records the first Close seen, for logs and metrics.
func (s *session) noteClose(x *side, code int) {
	if s.closedBy.CompareAndSwap(closedByNone, closedByClient+int32(x.kind)) {
		s.closeCode.Store(int32(code))
	}
}

// sideDone reports whether nothing more is expected of x.
func sideDone(x *side) bool {
	if x.gone.Load() {
		return true
	}
	return x.closeFlushed.Load() && x.closeRecv.Load()
}

// maybeFinish ends the session once both sides are done.
func (s *session) maybeFinish() {
	if sideDone(&s.client) && sideDone(&s.backend) {
		s.finish()
	}
}

// finish closes both sockets and releases everything the session holds.
// It runs once.
func (s *session) finish() {
	if !s.done.CompareAndSwap(false, true) {
		return
	}
	s.timer.Stop()
	s.regMu.Lock()
	defer s.regMu.Unlock()
	for _, x := range []*side{&s.client, &s.backend} {
		x.reg.Remove()
		if x.stalled.Load() {
			x.abort()
		}
		if x.sock != nil {
			// The WebSocket closing handshake is done; a TLS
			// close_notify could block on a peer that stopped reading.
			_ = x.sock.Close()
			continue
		}
		_ = x.conn.Close()
	}
	// Logs and metrics say what the client saw: a Close the proxy decided
	// on but never wrote out (the session was finished hard, at the end
	// of a shutdown, or while the client's stream stood inside a frame)
	// reached nobody, and the client saw the connection drop.
	if s.closedBy.Load() == closedByProxy && !s.client.closeFlushed.Load() {
		s.closeCode.Store(wsframe.CloseAbnormal)
	}
	s.srv.metrics.retire(s) // unregisters
	s.srv.sessionEnded(s)
}

// abort makes closing x reset the connection: the bytes the kernel still
// holds for a peer that stopped reading are dropped at once instead of
// being retried for minutes, as nginx's reset_timedout_connection does.
func (x *side) abort() {
	tc, ok := x.conn.(*net.TCPConn)
	if x.sock != nil {
		tc, ok = x.sock.TCPConn, true
	}
	if ok {
		_ = tc.SetLinger(0)
	}
}

// tick runs the session's timeouts and pings.
func (s *session) tick() {
	if s.done.Load() {
		return
	}
	now := monoNow()
	l := s.limits
	if s.closing.Load() {
		if now >= s.closeDeadline.Load() {
			s.finish()
			return
		}
	} else {
		for _, x := range []*side{&s.client, &s.backend} {
			if l.ReadTimeout > 0 && now-x.lastRead.Load() >= int64(l.ReadTimeout) {
				s.srv.countTimeout("read")
				s.closeWith(wsframe.CloseGoingAway, wsframe.CloseGoingAway, "read timeout: nothing from the "+x.kind.String())
				break
			}
		}
		if !s.closing.Load() && l.IdleTimeout > 0 && now-s.lastData.Load() >= int64(l.IdleTimeout) {
			s.srv.countTimeout("idle")
			s.closeWith(wsframe.CloseGoingAway, wsframe.CloseGoingAway, "idle timeout")
		}
		if !s.closing.Load() && l.PingInterval > 0 {
			for _, x := range []*side{&s.client, &s.backend} {
				pi := int64(l.PingInterval)
				if now-x.lastRead.Load() >= pi && now-x.lastPing.Load() >= pi {
					s.ping(x, now)
				}
			}
		}
	}
	if !s.done.Load() {
		s.timer.Reset(s.nextTick(monoNow()))
	}
}

// minTick keeps a session's timer from spinning.
const minTick = 5 * time.Millisecond

// nextTick returns how long until the session's next deadline.
func (s *session) nextTick(now int64) time.Duration {
	if s.closing.Load() {
		return max(time.Duration(s.closeDeadline.Load()-now), minTick)
	}
	next := int64(1<<62 - 1)
	l := s.limits
	for _, x := range []*side{&s.client, &s.backend} {
		lr := x.lastRead.Load()
		if l.ReadTimeout > 0 {
			next = min(next, lr+int64(l.ReadTimeout))
		}
		if l.PingInterval > 0 {
			next = min(next, max(lr, x.lastPing.Load())+int64(l.PingInterval))
		}
	}
	if l.IdleTimeout > 0 {
		next = min(next, s.lastData.Load()+int64(l.IdleTimeout))
	}
	return max(time.Duration(next-now), minTick)
}

// ping queues a Ping for x carrying the session's tag and a sequence
// number, so that x's Pong can be told apart from the endpoints' own.
func (s *session) ping(x *side, now int64) {
	if x.closeSent.Load() || x.gone.Load() {
		return
	}
	var payload [8]byte
	copy(payload[:4], s.pingTag[:])
	binary.BigEndian.PutUint32(payload[4:], x.pingSeq.Add(1))
	var mask *[4]byte
	if x.kind == backendSide {
		var m [4]byte
		binary.LittleEndian.PutUint32(m[:], rand.Uint32())
		mask = &m
	}
	var frame [14 + 8]byte
	x.lastPing.Store(now)
	s.srv.countPing(x.kind)
	x.queueCtrl(wsframe.AppendControl(frame[:0], wsframe.OpPing, mask, payload[:]))
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
	if x.closeRecv.Load() {
		return ctrlDrop // nothing may follow a Close
	}
	var p [wsframe.MaxControlPayload]byte
	n := copy(p[:], payload)
	if h.Masked {
		wsframe.MaskBytes(h.Mask, 0, p[:n])
	}
	switch h.Opcode {
	case wsframe.OpPing:
		if x.kind == clientSide && !s.allowControl(x.lastRead.Load()) {
			return ctrlLimited
		}
	case wsframe.OpPong:
		if n == 8 && [4]byte(p[:4]) == s.pingTag {
			seq := binary.BigEndian.Uint32(p[4:8])
			answer := seq == x.pingSeq.Load()
			if answer {
				s.srv.observePong(s, x.kind, time.Duration(monoNow()-x.lastPing.Load()))
			}
			if x.kind == clientSide {
				// The first answer to the latest proxy ping is the
				// proxy's; a late or repeated one costs the client.
				if answer && seq != s.ctrlPonged {
					s.ctrlPonged = seq
				} else if !s.allowControl(x.lastRead.Load()) {
					return ctrlLimited
				}
			}
			return ctrlDrop
		}
		if x.kind == clientSide && !s.allowControl(x.lastRead.Load()) {
			return ctrlLimited
		}
	case wsframe.OpClose:
		x.closeRecv.Store(true)
		code, _, _ := wsframe.ParseClose(p[:n])
		s.noteClose(x, code)
		s.beginClosing()
		if !w.gone.Load() && w.closeSent.CompareAndSwap(false, true) {
			return ctrlClose
		}
		s.maybeFinish()
		return ctrlDrop
	}
	if w.closeSent.Load() || w.gone.Load() {
		return ctrlDrop
	}
	return ctrlForward
}

// check validates a frame header from x against RFC 6455 section 5 and
// returns what is wrong with it, or "".
func (x *side) check(h *wsframe.Header) string {
	if x.kind == clientSide && !h.Masked {
		return "unmasked frame from client"
	}
	if x.kind == backendSide && h.Masked {
		return "masked frame from backend"
	}
	switch h.Opcode {
	case wsframe.OpContinuation, wsframe.OpText, wsframe.OpBinary:
	case wsframe.OpClose, wsframe.OpPing, wsframe.OpPong:
		if !h.Fin {
			return "fragmented control frame"
		}
		if h.Length > wsframe.MaxControlPayload {
			return "control frame over 125 bytes"
		}
		if h.Opcode == wsframe.OpClose && h.Length == 1 {
			return "close frame with a one-byte payload"
		}
	default:
		return "reserved opcode"
	}
	if h.Rsv != 0 {
		switch x.s.rsv {
		case rsvAny:
		case rsvDeflate:
			if h.Rsv != 0x40 || h.IsControl() || h.Opcode == wsframe.OpContinuation {
				return "RSV bits not allowed by the negotiated extension"
			}
		default:
			return "RSV bits set without a negotiated extension"
		}
	}
	return ""
}
