package proxy

import (
	"sync/atomic"
	"time"
)

// Stats are the proxy's counters, safe for concurrent use.
type Stats struct {
	HandshakeOK             atomic.Int64
	HandshakeBadRequest     atomic.Int64
	HandshakeOriginRefused  atomic.Int64
	HandshakeNoBackend      atomic.Int64
	HandshakeBackendRefused atomic.Int64
	HandshakeBackendTimeout atomic.Int64
	HandshakeBackendNon101  atomic.Int64
	HTTPNoRoute             atomic.Int64
	HTTPRequests            atomic.Int64
	HTTPBackendErrors       atomic.Int64
	SessionsStarted         atomic.Int64
	SessionsEnded           atomic.Int64
	SessionsDraining        atomic.Int64
	ViolationsClient        atomic.Int64
	ViolationsBackend       atomic.Int64
	ReadTimeouts            atomic.Int64
	IdleTimeouts            atomic.Int64
	PingsClient             atomic.Int64
	PingsBackend            atomic.Int64
	PongsClient             atomic.Int64
	PongsBackend            atomic.Int64
	// LastPongRTT is the round trip of the latest answered proxy ping, ns.
	LastPongRTT atomic.Int64
}

func (s *Server) countViolation(k sideKind, reason string) {
	if k == clientSide {
		s.stats.ViolationsClient.Add(1)
	} else {
		s.stats.ViolationsBackend.Add(1)
	}
}

func (s *Server) countTimeout(which string) {
	if which == "read" {
		s.stats.ReadTimeouts.Add(1)
	} else {
		s.stats.IdleTimeouts.Add(1)
	}
}

func (s *Server) countPing(k sideKind) {
	if k == clientSide {
		s.stats.PingsClient.Add(1)
	} else {
		s.stats.PingsBackend.Add(1)
	}
}

func (s *Server) observePong(k sideKind, rtt time.Duration) {
	if k == clientSide {
		s.stats.PongsClient.Add(1)
	} else {
		s.stats.PongsBackend.Add(1)
	}
	s.stats.LastPongRTT.Store(int64(rtt))
}

func (s *Server) accessLog() bool { return s.table.Load().accessLog }
