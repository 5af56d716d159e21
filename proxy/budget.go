package proxy

import (
	"fmt"
	"math"
	"syscall"

	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/config"
)

// The descriptor budget: how the open-files limit is split when
// admission.max_sessions or admission.max_connections is 0.
//
// With a limit of N descriptors:
//
//	reserve     = max(64, N/20)   listeners, admin, logs, health probes, pollers, DNS
//	usable      = N - reserve
//	connections = usable/20       max_connections (at least 32): a client connection
//	                              that is not a session, and the backend connection
//	                              a plain HTTP request on it may hold
//	sessions    = (usable - 2×connections)/2
//	                              max_sessions (at least 1): a client and a backend
//	                              connection each
//
// so that 2×sessions + 2×connections + reserve ≤ N. When one of the two
// is set, the other takes what is left of usable after it; when both
// are set they are used as given, and a warning says when they overrun
// the limit. A handshake in progress is counted twice (a session ticket
// and a connection), which errs on the safe side.

// minFileReserve is the least number of descriptors kept out of the
// budget for everything that is neither a session nor a client
// connection.
const minFileReserve = 64

// minConnections is the least derived max_connections: enough to keep
// answering, even if only with refusals.
const minConnections = 32

// fileBudget splits the open-files limit between sessions and
// connections.
type fileBudget struct {
	limit int64 // RLIMIT_NOFILE; 0: none or unknown, so no derived cap
}

// processFileBudget reads the process's open-files limit.
func processFileBudget() fileBudget {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > math.MaxInt32 {
		return fileBudget{}
	}
	return fileBudget{limit: int64(rl.Cur)}
}

// reserve is the part of the limit kept for everything else.
func (b fileBudget) reserve() int64 { return max(minFileReserve, b.limit/20) }

// caps returns the effective max_sessions and max_connections for a.
// math.MaxInt64 means no cap.
func (b fileBudget) caps(a config.Admission) (sessions, conns int64) {
	sessions, conns = int64(a.MaxSessions), int64(a.MaxConnections)
	if b.limit == 0 {
		if sessions == 0 {
			sessions = math.MaxInt64
		}
		if conns == 0 {
			conns = math.MaxInt64
		}
		return sessions, conns
	}
	usable := b.limit - b.reserve()
	switch {
	case sessions == 0 && conns == 0:
		conns = max(usable/20, minConnections)
		sessions = max((usable-2*conns)/2, 1)
	case sessions == 0:
		sessions = max((usable-2*conns)/2, 1)
	case conns == 0:
		conns = max((usable-2*sessions)/2, minConnections)
	}
	return sessions, conns
}

// overrun reports whether sessions and conns may need more descriptors
// than the limit holds.
func (b fileBudget) overrun(sessions, conns int64) bool {
	if b.limit == 0 {
		return false
	}
	need := b.reserve()
	for _, n := range []int64{sessions, conns} {
		if n > b.limit {
			return true
		}
		need += 2 * n
	}
	return need > b.limit
}

// applyBudget sets the connection cap of t, and logs the budget at start
// (old is nil) and when a reload changes it.
func (s *Server) applyBudget(old, t *table) {
	a := &t.admission
	s.conns.setMax(a.maxConnections)
	if old != nil && old.admission.maxSessions == a.maxSessions && old.admission.maxConnections == a.maxConnections {
		return
	}
	b := s.budget
	if b.limit == 0 {
		s.log.Info("descriptor budget: no open-files limit, so admission.max_sessions and admission.max_connections cap only when set",
			zap.Int64("max_sessions", a.maxSessions), zap.Int64("max_connections", a.maxConnections))
		return
	}
	fields := []zap.Field{
		zap.Int64("open_files_limit", b.limit),
		zap.Int64("max_sessions", a.maxSessions),
		zap.Int64("max_connections", a.maxConnections),
		zap.Int64("reserved", b.reserve()),
	}
	if b.overrun(a.maxSessions, a.maxConnections) {
		s.log.Warn("descriptor budget: admission.max_sessions and admission.max_connections may need more descriptors than the open-files limit; when it is reached, accepts pause and retry",
			fields...)
		return
	}
	s.log.Info("descriptor budget", append(fields, zap.String("budget",
		fmt.Sprintf("2 per session × %d + 2 per connection × %d + %d reserved = %d of %d descriptors",
			a.maxSessions, a.maxConnections, b.reserve(), 2*a.maxSessions+2*a.maxConnections+b.reserve(), b.limit)))...)
}
