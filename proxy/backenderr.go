package proxy

import (
	"context"
	"errors"
	"os"
	"syscall"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/balancer"
)

// How a failed exchange with a backend is answered, counted and blamed:
// one mapping for plain HTTP and upgrades, nginx's.
//
//   - The connect timed out, or the backend said nothing within the time it
//     had (handshake_timeout for a 101, read_timeout of silence for plain
//     HTTP): 504.
//   - Refused, reset, unreachable, closed before answering, or an answer
//     that cannot be read: 502.
//   - No backend to try: 503, as is a connect the proxy could not make for
//     want of its own resources (descriptors, buffers, local ports).
//
// Only the backend's own failures count against its passive health: a
// connect refused or timed out, a reset or EOF before any answer byte on a
// connection opened for the request, a TLS handshake that failed, and for
// an upgrade no 101 within handshake_timeout. Not counted: the proxy's own
// resources, its shutdown ending a handshake in flight (504, counted as
// shutting_down), a client that went away, a connection reused from the pool
// (the backend may have closed it while idle), a plain request the backend
// holds longer than read_timeout (a long-poll is an application's choice),
// and answers that are not HTTP.

// failKind is the class of a failed exchange.
type failKind uint8

const (
	failUnreachable failKind = iota // 502: refused, reset, EOF, TLS
	failTimeout                     // 504: connect or answer not in time
	failLocal                       // 503: the proxy's own resources
	failProtocol                    // 502: an answer that is not HTTP
	failClient                      // the client went away mid-request
	failShutdown                    // 504: the proxy's shutdown ended it
)

// verdict is what the proxy does about a failed exchange.
type verdict struct {
	kind       failKind
	status     int
	reason     string
	retryAfter int
	// blame: the failure counts against the backend's passive health.
	blame bool
}

// exchange describes how far a failed exchange with a backend got.
type exchange struct {
	// dialed: a connection was open (the connect and any TLS handshake
	// succeeded, or it came from the pool).
	dialed bool
	// reused: the connection came from the keep-alive pool.
	reused bool
	// upgrade: the request was a WebSocket handshake, which must be
	// answered within handshake_timeout.
	upgrade bool
	// client is the error reading the client's request body, if any.
	client error
	// heard: the backend sent at least one byte of its answer.
	heard bool
	// aborted: the proxy's shutdown ended the exchange, whatever the
	// error it left.
	aborted bool
}

var errProtocol = errors.New("proxy: backend answer is not HTTP")

// classify maps a failed exchange to its answer. It is the only place
// statuses of backend failures are chosen.
func classify(err error, x exchange) verdict {
	switch {
	case x.client != nil:
		return verdict{kind: failClient, status: fasthttp.StatusBadRequest, reason: "request body not received whole"}
	case isLocalResource(err):
		return verdict{kind: failLocal, status: fasthttp.StatusServiceUnavailable, reason: "proxy out of resources to reach the backend", retryAfter: 1}
	case x.aborted || errors.Is(err, context.Canceled):
		// Canceled: the server's context, at shutdown, ended the dial.
		return verdict{kind: failShutdown, status: fasthttp.StatusGatewayTimeout, reason: "proxy shut down before the backend answered", retryAfter: 1}
	case !x.dialed && isTimeout(err):
		return verdict{kind: failTimeout, status: fasthttp.StatusGatewayTimeout, reason: "backend did not accept the connection in time", retryAfter: 1, blame: true}
	case !x.dialed:
		return verdict{kind: failUnreachable, status: fasthttp.StatusBadGateway, reason: "backend unreachable", retryAfter: 1, blame: true}
	case isTimeout(err) && x.upgrade:
		return verdict{kind: failTimeout, status: fasthttp.StatusGatewayTimeout, reason: "backend did not answer the handshake in time", retryAfter: 1, blame: true}
	case isTimeout(err):
		return verdict{kind: failTimeout, status: fasthttp.StatusGatewayTimeout, reason: "backend did not answer in time", retryAfter: 1}
	case errors.Is(err, errProtocol) || errors.Is(err, errBadStatus) || errors.Is(err, errHeadTooLarge):
		return verdict{kind: failProtocol, status: fasthttp.StatusBadGateway, reason: "backend sent an unreadable answer", retryAfter: 1}
	}
	return verdict{kind: failUnreachable, status: fasthttp.StatusBadGateway, reason: "backend closed the connection without answering", retryAfter: 1, blame: !x.reused && !x.heard}
}

// noBackend is the answer when the pool has no backend to try.
var noBackend = verdict{status: fasthttp.StatusServiceUnavailable, reason: "no healthy backend", retryAfter: 5}

// isTimeout reports whether err is a deadline or timeout, fasthttp's
// ErrTimeout (which has no Temporary method, so is no net.Error) included.
func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &te) && te.Timeout())
}

// isLocalResource reports whether err says the proxy itself ran out of
// something needed for a connection: descriptors, kernel buffers or memory,
// or local ports. The backend is not to blame.
func isLocalResource(err error) bool {
	for _, e := range [...]syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// isDialError reports whether err is a failed connect, before anything
// reached the backend.
func isDialError(err error) bool {
	var de *dialError
	return errors.As(err, &de)
}

// backendFailed tells passive health about a failure that is the
// backend's, and logs it with its pool.
func (s *Server) backendFailed(pool string, b *balancer.Backend, err error, v verdict, msg string) {
	if v.blame && s.health != nil {
		s.health.ReportFailure(pool, b.Addr, err)
	}
	if v.kind == failShutdown {
		if ce := s.log.Check(zap.DebugLevel, "backend exchange ended by shutdown"); ce != nil {
			ce.Write(zap.String("pool", pool), zap.String("backend", b.Addr), zap.Error(err))
		}
		return
	}
	if v.kind == failClient {
		if ce := s.log.Check(zap.DebugLevel, "client aborted its request"); ce != nil {
			ce.Write(zap.String("pool", pool), zap.String("backend", b.Addr), zap.Error(err))
		}
		return
	}
	s.log.Warn(msg, zap.String("pool", pool), zap.String("backend", b.Addr), zap.Int("status", v.status),
		zap.Bool("counted_against_backend", v.blame), zap.Error(err))
}
