package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
)

// Accepting connections.
//
// Serve wraps every listener in a gatedListener, so that fasthttp never
// holds more client connections than admission.max_connections and
// never sees an accept error it would take for a dead listener.
//
// The cap. A client connection counts from its accept until fasthttp
// closes it or hands it over as a WebSocket session (hijacked: sessions
// are capped by admission.max_sessions instead). At the cap the listener
// holds the connection it just accepted and accepts no more: later
// clients wait in the kernel's backlog, which costs no descriptor. While
// it holds one, it closes the keep-alive connection that has been idle
// longest (at least evictIdleAfter), so that idle clients cannot keep new
// ones out for the whole keep-alive timeout; connections that have not
// sent a request yet are left to handshake_timeout. So a listener holds
// at most one connection beyond the cap, and closes idle ones only for a
// client that is there.
//
// Accept errors. EMFILE and ENFILE (out of descriptors), ENOBUFS and
// ENOMEM (out of kernel memory) pass; ECONNABORTED, EPROTO and their kind
// are a connection that died in the backlog. Accept retries all of them
// after a pause, 5 ms doubling to 1 s as net/http does, counts them and
// logs at most once per logEvery. Out of descriptors, it also closes an
// idle keep-alive connection as at the cap. Any other error (a closed or
// broken listener) goes to fasthttp and ends Serve.
//
// Cost. The count is an atomic; the gate's lock is taken only while a
// listener waits at the cap. Open connections are kept in a sync.Map
// (one store at accept, one delete at close, as fasthttp's own idle
// table does), and a request moving a connection between idle and
// active costs a lock-free load from it and an atomic store. Nothing is
// done per frame: a session has left the gate.

const (
	// evictIdleAfter is how long a keep-alive connection must have been
	// idle before it is closed to make room at the cap: a client's next
	// request on a busy connection comes sooner.
	evictIdleAfter = time.Second
	// evictPoll is how often a listener waiting at the cap looks again
	// for an idle connection to close.
	evictPoll = 100 * time.Millisecond
	// acceptRetryMin and acceptRetryMax bound the pause after a failed
	// accept.
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
	// logEvery spaces the warnings about accept errors and the cap.
	logEvery = 10 * time.Second
)

// Why accepts failed, for metrics.
const (
	acceptEMFILE = iota
	acceptENFILE
	acceptENOBUFS
	acceptENOMEM
	acceptOther
)

// acceptErrLabels name the accept failure reasons in metrics.
var acceptErrLabels = [...]string{"emfile", "enfile", "enobufs", "enomem", "other"}

// connGate counts the client connections that are open and not
// sessions, holds accepts at the cap and finds idle connections to close.
// The zero value has no cap.
type connGate struct {
	open    atomic.Int64 // accepted, not closed nor hijacked
	max     atomic.Int64 // 0: no cap
	waiters atomic.Int32 // listeners waiting at the cap

	mu    sync.Mutex
	freed chan struct{} // closed when a slot frees while someone waits

	// conns maps each open connection, as fasthttp sees it, to its entry.
	conns sync.Map // net.Conn → *gatedConn
}

// gatedConn is an open client connection's state.
type gatedConn struct {
	c net.Conn
	// idleSince is the monoNow at which the connection finished a
	// response and began waiting for the next request; 0 while reading
	// or serving one, -1 once chosen to be closed.
	idleSince atomic.Int64
}

// setMax sets the cap; 0 means none.
func (g *connGate) setMax(n int64) {
	g.max.Store(n)
	g.wake()
}

// connections returns the connections open.
func (g *connGate) connections() int64 { return g.open.Load() }

// tryAcquire takes a slot if the cap allows.
func (g *connGate) tryAcquire() bool {
	for {
		n, m := g.open.Load(), g.max.Load()
		if m > 0 && n >= m {
			return false
		}
		if g.open.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release gives a slot back.
func (g *connGate) release() {
	g.open.Add(-1)
	// A waiter counts itself before it looks at open, and release
	// decrements open before it looks at waiters, so one of them sees
	// the other.
	if g.waiters.Load() > 0 {
		g.wake()
	}
}

// wake releases every waiter to look at the cap again.
func (g *connGate) wake() {
	g.mu.Lock()
	if g.freed != nil {
		close(g.freed)
		g.freed = nil
	}
	g.mu.Unlock()
}

// freedChan returns the channel closed at the next wake.
func (g *connGate) freedChan() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.freed == nil {
		g.freed = make(chan struct{})
	}
	return g.freed
}

// connState follows fasthttp's connections: it is the Server's
// ConnState hook.
func (g *connGate) connState(c net.Conn, st fasthttp.ConnState) {
	switch st {
	case fasthttp.StateNew:
		g.conns.Store(c, &gatedConn{c: c})
	case fasthttp.StateIdle:
		if v, ok := g.conns.Load(c); ok {
			v.(*gatedConn).idleSince.Store(max(monoNow(), 1))
		}
	case fasthttp.StateActive:
		if v, ok := g.conns.Load(c); ok {
			v.(*gatedConn).idleSince.Store(0)
		}
	case fasthttp.StateHijacked, fasthttp.StateClosed:
		// Each connection ends once, as one or the other.
		if _, ok := g.conns.LoadAndDelete(c); ok {
			g.release()
		}
	}
}

// evictIdle closes the keep-alive connection idle longest, if one has
// been idle for evictIdleAfter, and reports whether it closed one. The
// slot frees when fasthttp sees the connection closed.
func (g *connGate) evictIdle(now int64) bool {
	var victim *gatedConn
	var since int64
	g.conns.Range(func(_, v any) bool {
		gc := v.(*gatedConn)
		if t := gc.idleSince.Load(); t > 0 && now-t >= int64(evictIdleAfter) && (victim == nil || t < since) {
			victim, since = gc, t
		}
		return true
	})
	if victim == nil || !victim.idleSince.CompareAndSwap(since, -1) {
		return false
	}
	// Close the socket under TLS: a close_notify could wait on a client
	// that does not read, and an idle HTTP client needs none.
	c := victim.c
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	_ = c.Close()
	return true
}

// gatedListener is a listener served by the Server: see the comment at
// the top.
type gatedListener struct {
	net.Listener
	s         *Server
	done      chan struct{} // closed by Close
	closeOnce sync.Once
}

// gate wraps ln for Serve.
func (s *Server) gate(ln net.Listener) *gatedListener {
	return &gatedListener{Listener: ln, s: s, done: make(chan struct{})}
}

// Accept accepts a connection, retrying the errors that pass, and holds
// it until the cap has room for it.
func (l *gatedListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			if !l.acquire() {
				c.Close()
				return nil, net.ErrClosed
			}
			return c, nil
		}
		_, retry := acceptRetryable(err)
		if !retry {
			return nil, err
		}
		if delay, retry = l.failed(err, delay); !retry {
			return nil, net.ErrClosed
		}
	}
}

// failed counts, logs and waits out an accept error that passes, as
// Accept does; it reports false if the listener closed meanwhile.
func (l *gatedListener) failed(err error, delay time.Duration) (time.Duration, bool) {
	reason, _ := acceptRetryable(err)
	l.s.stats.AcceptErrors[reason].Add(1)
	if reason == acceptEMFILE || reason == acceptENFILE {
		// A client is waiting and a descriptor would let it in.
		if l.s.conns.evictIdle(monoNow()) {
			l.s.stats.ConnectionsEvicted.Add(1)
		}
	}
	delay = min(max(2*delay, acceptRetryMin), acceptRetryMax)
	if missed, ok := l.s.acceptLog.allow(); ok {
		msg := "accept failed; retrying"
		if reason == acceptEMFILE || reason == acceptENFILE {
			msg = "accept failed: out of file descriptors; retrying (raise the open-files limit, or lower admission.max_sessions or admission.max_connections)"
		}
		l.s.log.Warn(msg, zap.Stringer("listener", l.Addr()), zap.Error(err),
			zap.Duration("retry_in", delay), zap.Int64("more_since_last_warning", missed))
	}
	t := time.NewTimer(delay)
	select {
	case <-t.C:
		return delay, true
	case <-l.done:
		t.Stop()
		return delay, false
	}
}

// acquire takes a slot for a connection just accepted, waiting at the
// cap and closing idle keep-alive connections to make room. It returns
// false if the listener closed.
func (l *gatedListener) acquire() bool {
	g := &l.s.conns
	if g.tryAcquire() {
		return true
	}
	l.s.stats.AcceptPaused.Add(1)
	if missed, ok := l.s.capLog.allow(); ok {
		l.s.log.Warn("accepting paused: client connections at admission.max_connections; new clients wait in the listen backlog",
			zap.Stringer("listener", l.Addr()), zap.Int64("max_connections", g.max.Load()),
			zap.Int64("more_since_last_warning", missed))
	}
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		g.waiters.Add(1)
		freed := g.freedChan()
		if g.tryAcquire() {
			g.waiters.Add(-1)
			return true
		}
		if g.evictIdle(monoNow()) {
			l.s.stats.ConnectionsEvicted.Add(1)
		}
		if t == nil {
			t = time.NewTimer(evictPoll)
		} else {
			t.Reset(evictPoll)
		}
		select {
		case <-freed:
		case <-t.C:
		case <-l.done:
			g.waiters.Add(-1)
			return false
		}
		g.waiters.Add(-1)
	}
}

// Close closes the listener and ends an Accept waiting in it.
func (l *gatedListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// acceptRetryable reports whether an accept error passes, and why it
// happened.
func acceptRetryable(err error) (reason int, ok bool) {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EMFILE:
			return acceptEMFILE, true
		case syscall.ENFILE:
			return acceptENFILE, true
		case syscall.ENOBUFS:
			return acceptENOBUFS, true
		case syscall.ENOMEM:
			return acceptENOMEM, true
		case syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN,
			syscall.ETIMEDOUT, syscall.EPROTO, syscall.EPERM, syscall.ENOPROTOOPT,
			syscall.EOPNOTSUPP, syscall.ENETDOWN, syscall.ENETUNREACH,
			syscall.EHOSTDOWN, syscall.EHOSTUNREACH:
			// accept(2): errors of a connection that died in the
			// backlog, to be retried like EAGAIN.
			return acceptOther, true
		}
		return 0, false
	}
	var te interface{ Temporary() bool }
	if errors.As(err, &te) && te.Temporary() {
		return acceptOther, true
	}
	return 0, false
}

// logLimiter lets a warning through at most once per logEvery and counts
// the ones it held back.
type logLimiter struct {
	last   atomic.Int64 // monoNow of the last warning let through, plus one
	missed atomic.Int64
}

// allow reports whether to log now, and how many were held back since
// the last one.
func (l *logLimiter) allow() (missed int64, ok bool) {
	now := monoNow() + 1
	last := l.last.Load()
	if (last != 0 && now-last < int64(logEvery)) || !l.last.CompareAndSwap(last, now) {
		l.missed.Add(1)
		return 0, false
	}
	return l.missed.Swap(0), true
}
