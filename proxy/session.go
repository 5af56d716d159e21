package proxy

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/internal/relay"
)

// defaultCloseTimeout bounds the closing handshake unless
// Config.CloseTimeout says otherwise.
const defaultCloseTimeout = relay.DefaultCloseTimeout

// session is one proxied WebSocket connection: the relay's session, which
// moves its frames, and what the proxy keeps about it for routing,
// admission, drains, metrics and logs. It is one allocation.
type session struct {
	relay.Session
	srv      *Server
	limits   *Limits // its route's, in the table it started with
	route    string  // the route's path
	pool     string
	upstream *balancer.Backend
	start    time.Time
	peer     string // client address for logs
	// about is what only some sessions have; nil for none.
	about  *sessionAbout
	rm     *routeMetrics
	bm     *backendMetrics
	ticket ticket // its place under the admission caps

	drainedBy  atomic.Uint32 // see drainPlan
	exact      bool          // the route is exact
	unregister func()
}

// sessionAbout is what only some sessions have, behind a pointer so that
// the others do not carry it.
type sessionAbout struct {
	proto    string    // negotiated subprotocol
	identity *identity // what authentication gave it
}

// subprotocol is the session's negotiated subprotocol, or "".
func (ss *session) subprotocol() string {
	if ss.about == nil {
		return ""
	}
	return ss.about.proto
}

// ident is the session's identity, or nil.
func (ss *session) ident() *identity {
	if ss.about == nil {
		return nil
	}
	return ss.about.identity
}

// The session hears the relay's rare events (relay.Hooks).

// Violation counts a peer that broke the protocol.
func (ss *session) Violation(from relay.Side, reason string) {
	s := ss.srv
	if from == relay.Client {
		s.stats.ViolationsClient.Add(1)
	} else {
		s.stats.ViolationsBackend.Add(1)
	}
	if ce := s.log.Check(zap.DebugLevel, "protocol violation"); ce != nil {
		ce.Write(zap.String("route", ss.route), zap.String("side", from.String()), zap.String("reason", reason), zap.String("client", ss.peer))
	}
}

// RateLimited counts and logs a client closed for going over a rate.
func (ss *session) RateLimited(l relay.Limit, rate, burst float64) {
	s := ss.srv
	if l == relay.MessageRate {
		s.stats.MessageRateLimited.Add(1)
		s.log.Info("message rate limit exceeded", zap.String("route", ss.route), zap.String("client", ss.peer),
			zap.Float64("max_messages_per_second", rate), zap.Float64("burst", burst))
		return
	}
	s.stats.ControlRateLimited.Add(1)
	s.log.Info("control frame rate limit exceeded", zap.String("route", ss.route), zap.String("client", ss.peer),
		zap.Float64("max_control_frames_per_second", rate), zap.Float64("burst", burst))
}

// Timeout counts a session closed by a timeout.
func (ss *session) Timeout(t relay.Timeout) {
	switch t {
	case relay.ReadTimeout:
		ss.srv.stats.ReadTimeouts.Add(1)
	case relay.WriteTimeout:
		ss.srv.stats.WriteTimeouts.Add(1)
	case relay.Deadline:
		ss.srv.stats.Auth[0][authExpired].Add(1)
	default:
		ss.srv.stats.IdleTimeouts.Add(1)
	}
}

// PingSent counts a ping to a silent peer.
func (ss *session) PingSent(to relay.Side) {
	if to == relay.Client {
		ss.srv.stats.PingsClient.Add(1)
	} else {
		ss.srv.stats.PingsBackend.Add(1)
	}
}

// Pong counts the answer to a proxy ping and observes its round trip: the
// one Prometheus type the relay reaches, once per ping interval of a
// silent session at most.
func (ss *session) Pong(from relay.Side, rtt time.Duration) {
	s := ss.srv
	if from == relay.Client {
		s.stats.PongsClient.Add(1)
		if s.metrics.clientRTT != nil {
			s.metrics.clientRTT.Observe(rtt.Seconds())
		}
		return
	}
	s.stats.PongsBackend.Add(1)
	if ss.bm != nil {
		ss.bm.rtt.Observe(rtt.Seconds())
	}
}

// Ended runs once when the session has finished: it leaves the registry
// and the metrics, gives back its backend and admission ticket, and
// writes its access-log line.
func (ss *session) Ended() {
	s := ss.srv
	s.metrics.retire(ss, ss.unregister)
	ss.upstream.Release()
	s.admission.release(&ss.ticket)
	if !s.accessLog() {
		return
	}
	cm, cb := ss.Counts(relay.Client)
	bm, bb := ss.Counts(relay.Backend)
	s.log.Info("session",
		zap.String("route", ss.route),
		zap.String("backend", ss.upstream.Addr),
		zap.String("client", ss.peer),
		zap.String("subprotocol", ss.subprotocol()),
		zap.Duration("duration", time.Since(ss.start)),
		zap.Int64("client_messages", cm),
		zap.Int64("client_bytes", cb),
		zap.Int64("backend_messages", bm),
		zap.Int64("backend_bytes", bb),
		zap.Int32("close_code", int32(ss.CloseCode())),
		zap.String("closed_by", ss.ClosedBy().String()),
		identityField(s.table.Load(), ss.ident()),
	)
}
