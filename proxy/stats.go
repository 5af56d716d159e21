package proxy

import (
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
)

// Stats are the proxy's counters, safe for concurrent use. Collector
// exposes them with the per-route and per-backend totals.
type Stats struct {
	HandshakeOK            atomic.Int64
	HandshakeBadRequest    atomic.Int64
	HandshakeOriginRefused atomic.Int64
	// Limited counts upgrades refused by a session cap or the handshake
	// rate, by limit (limitKind); HandshakeLimited is their sum.
	Limited [len(limitLabels)]atomic.Int64
	// Untracked counts upgrades that skipped the per-address handshake
	// rate because the address table was full.
	Untracked atomic.Int64
	// HandshakeShuttingDown counts upgrades refused during shutdown.
	HandshakeShuttingDown   atomic.Int64
	HandshakeNoBackend      atomic.Int64
	HandshakeBackendRefused atomic.Int64
	HandshakeBackendTimeout atomic.Int64
	HandshakeBackendNon101  atomic.Int64
	// LoopUpgrades counts upgrades the event loops completed themselves,
	// from request head to session, without fasthttp (engine: loops).
	LoopUpgrades atomic.Int64
	// HandshakeLocalResources and HTTPLocalResources count backend
	// connections the proxy could not open for want of its own
	// resources (EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL),
	// answered 503 and not held against the backend.
	HandshakeLocalResources atomic.Int64
	HTTPLocalResources      atomic.Int64
	// HTTPClientAborts counts plain requests whose client went away
	// before its body was sent whole.
	HTTPClientAborts atomic.Int64
	// HTTPRetries counts plain requests sent again on a fresh connection
	// after a pooled one failed before any answer.
	HTTPRetries atomic.Int64
	HTTPNoRoute atomic.Int64
	// Requests that could not be read: a head over max_header_bytes
	// (431), not received within handshake_timeout (408), or not HTTP
	// (400).
	RequestHeadTooLarge atomic.Int64
	RequestTimeouts     atomic.Int64
	RequestMalformed    atomic.Int64
	HTTPBackendErrors   atomic.Int64
	SessionsStarted     atomic.Int64
	SessionsDraining    atomic.Int64
	ViolationsClient    atomic.Int64
	ViolationsBackend   atomic.Int64
	// MessageRateLimited counts sessions closed for exceeding their
	// route's message rate.
	MessageRateLimited atomic.Int64
	// ControlRateLimited counts sessions closed for exceeding their
	// route's control-frame rate.
	ControlRateLimited atomic.Int64
	ReadTimeouts       atomic.Int64
	IdleTimeouts       atomic.Int64
	// WriteTimeouts counts sessions ended because a peer accepted no
	// bytes for write_timeout.
	WriteTimeouts atomic.Int64
	PingsClient   atomic.Int64
	PingsBackend  atomic.Int64
	PongsClient   atomic.Int64
	PongsBackend  atomic.Int64
	// AcceptErrors counts failed accepts that were retried, by reason
	// (acceptErrLabels).
	AcceptErrors [len(acceptErrLabels)]atomic.Int64
	// AcceptPaused counts the times a listener stopped accepting at
	// admission.max_connections; ConnectionsEvicted the idle keep-alive
	// connections closed to make room.
	AcceptPaused       atomic.Int64
	ConnectionsEvicted atomic.Int64
	// Auth counts authentication outcomes by step (authStepLabels) and
	// outcome (authOutcomeLabels).
	Auth [len(authStepLabels)][authOutcomes]atomic.Int64
	// Affinity counts requests on routes with an affinity cookie by what
	// became of their cookie (affinityOutcome); AffinitySet the cookies
	// set or replaced.
	Affinity    [len(affinityLabels)]atomic.Int64
	AffinitySet atomic.Int64
}

// HandshakeLimited returns the upgrades refused by any admission limit.
func (st *Stats) HandshakeLimited() int64 {
	var n int64
	for i := range st.Limited {
		n += st.Limited[i].Load()
	}
	return n
}

// accessLog reports whether this session or request gets an access-log
// line: access_log is on and it falls in access_log_sample.
func (s *Server) accessLog() bool {
	t := s.table.Load()
	return t.accessLog && (t.accessLogSample >= 1 || rand.Float64() < t.accessLogSample)
}

// requestEnded counts a plain HTTP request by the class of its answer and
// writes its access-log line. It runs when the response headers are
// ready: a streamed body is still on its way.
func (s *Server) requestEnded(ctx *fasthttp.RequestCtx, rt *route, backend string, start time.Time) {
	status := ctx.Response.StatusCode()
	rt.metrics.countHTTP(status)
	if !s.accessLog() {
		return
	}
	s.log.Info("http",
		zap.String("route", rt.path),
		zap.String("backend", backend),
		zap.String("client", ctx.RemoteAddr().String()),
		zap.ByteString("method", ctx.Method()),
		zap.ByteString("path", ctx.Path()),
		zap.Int("status", status),
		zap.Duration("duration", time.Since(start)),
		zap.Int("content_length", responseLength(&ctx.Response)),
		identityField(s.table.Load(), requestIdentity(ctx)),
	)
}

// responseLength is the length of the body sent: the Content-Length of a
// streamed body (-1 for chunked), else the body's own length (the header
// is only set as the response is written).
func responseLength(r *fasthttp.Response) int {
	if r.IsBodyStream() {
		return r.Header.ContentLength()
	}
	return len(r.Body())
}
