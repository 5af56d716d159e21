package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/internal/poller"
)

// Accepting on the event loops (engine: loops).
//
// Serve registers a plain TCP listener's descriptor (a duplicate of it,
// which the proxy owns) with every poller of the server's group, with
// Exclusive so that one loop wakes per new connection. The loop accepts
// with accept4 (non-blocking, close-on-exec) until the backlog is empty,
// sets TCP_NODELAY as Go does, registers the socket on the same loop and
// reads its request head there (loophead.go). Whatever that head is, the
// connection is handed to fasthttp (Server.ServeConn on a goroutine) as a
// net.Conn that first replays the bytes already read, so that plain HTTP
// keeps every behaviour it has.
//
// The admission.max_connections cap and the accept errors that pass
// (EMFILE and the rest, listener.go) are the goroutine path's: a loop that
// meets either stops accepting from that listener and gives it to one
// goroutine, acceptSlowly, which waits at the cap, closes idle keep-alive
// connections and backs off exactly as gatedListener does, until the
// backlog is empty; then the loops take over again.
//
// fasthttp's Shutdown waits only for connections of a Server that has a
// listener: it is given the loopListener, whose Accept returns nothing
// until it is closed.

// loopListener is a plain listener whose connections the loops accept.
type loopListener struct {
	s    *Server
	ln   net.Listener // the caller's, closed with this one
	fd   int          // a duplicate of ln's descriptor: ours
	gate *gatedListener
	acc  []*acceptor

	// mu is held (shared) by every accept, and by Close to retire fd, so
	// that no accept4 runs on a descriptor number already reused.
	mu     sync.RWMutex
	closed bool
	// paused: a goroutine (acceptSlowly) accepts; the loops hold off.
	paused atomic.Bool
	slow   sync.WaitGroup
	// served counts the connections handed to fasthttp; Accept returns
	// once they are done, so that fasthttp's Shutdown, which counts its
	// Serve as a connection, waits for them.
	served sync.WaitGroup
	done   chan struct{}

	// spare is a descriptor kept open to be closed when a handover
	// finds none free (fileConn); -1 when it could not be opened again.
	spareMu sync.Mutex
	spare   int
}

// acceptor is a loopListener on one poller: its handler for the
// listening descriptor and the connections it accepted that are still
// reading their heads.
type acceptor struct {
	l   *loopListener
	p   *poller.Poller
	reg poller.Registration
	rsa unix.RawSockaddrAny // scratch for accept4, on this loop only

	mu    sync.Mutex
	heads headList
	ups   headList // connections whose upgrade the loop carries out
}

// engineOverride is WSPROXY_ENGINE: see loopEngine.
var engineOverride = os.Getenv("WSPROXY_ENGINE")

// loopEngine reports whether the server accepts plain listeners on its
// loops. WSPROXY_ENGINE, when set, overrides the configuration: the test
// suites run once per engine with it.
func loopEngine(c *config.Config) bool {
	if e := engineOverride; e != "" {
		return e == config.EngineLoops
	}
	return c.Engine == config.EngineLoops
}

// listenerFor returns what fasthttp serves for ln: on the loops, for a
// plain TCP listener, a loopListener; else ln gated (listener.go).
func (s *Server) listenerFor(ln net.Listener) (net.Listener, error) {
	tl, ok := ln.(*net.TCPListener)
	if !s.loops || !ok {
		return s.gate(ln), nil
	}
	return s.newLoopListener(tl)
}

// newLoopListener duplicates tl's descriptor and registers it with every
// poller.
func (s *Server) newLoopListener(tl *net.TCPListener) (*loopListener, error) {
	rc, err := tl.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(f uintptr) {
		fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("proxy: dup listener: %w", derr)
	}
	// The duplicate shares the open file, already non-blocking; set it
	// again rather than rely on the runtime's choice.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	l := &loopListener{s: s, ln: tl, fd: fd, gate: s.gate(tl), done: make(chan struct{}), spare: openSpare()}
	for _, p := range s.pollers.Pollers() {
		l.acc = append(l.acc, &acceptor{l: l, p: p})
	}
	// Every acceptor exists before the first can accept; a.reg is only
	// Close's, which takes mu.
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range l.acc {
		reg, err := a.p.AddFlags(fd, poller.Exclusive, a)
		if err != nil {
			l.mu.Unlock()
			l.Close()
			l.mu.Lock()
			return nil, err
		}
		a.reg = reg
	}
	return l, nil
}

// Accept returns no connection: the loops accept. It waits until the
// listener is closed, so that fasthttp counts it as served.
func (l *loopListener) Accept() (net.Conn, error) {
	<-l.done
	l.served.Wait()
	return nil, net.ErrClosed
}

// Addr is the listening address.
func (l *loopListener) Addr() net.Addr { return l.ln.Addr() }

// Close stops accepting, hands the connections still reading their heads
// to fasthttp (whose Shutdown then treats them as it treats its own) and
// closes the listener.
func (l *loopListener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	for _, a := range l.acc {
		_ = a.reg.Delete()
	}
	unix.Close(l.fd)
	l.mu.Unlock()
	err := l.gate.Close() // ends a wait at the cap; closes ln
	l.slow.Wait()
	defer func() {
		close(l.done)
		l.spareMu.Lock()
		if l.spare >= 0 {
			unix.Close(l.spare)
			l.spare = -1
		}
		l.spareMu.Unlock()
	}()
	for _, a := range l.acc {
		for {
			a.mu.Lock()
			c := a.heads.first
			a.mu.Unlock()
			if c == nil {
				break
			}
			c.handOverNow()
		}
	}
	return err
}

// Ready accepts until the backlog is empty, on the loop.
func (a *acceptor) Ready(*poller.Loop) {
	l := a.l
	if l.paused.Load() {
		return
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return
	}
	for {
		fd, errno := accept4(l.fd, &a.rsa)
		switch {
		case errno == 0:
		case errno == unix.EAGAIN:
			return
		case errno == unix.EINTR:
			continue
		default:
			if _, ok := acceptRetryable(errno); ok && l.pause() {
				go l.acceptSlowly(-1, errno)
			}
			return // else the listener is gone: Close follows
		}
		if !l.s.conns.tryAcquire() {
			if l.pause() {
				go l.acceptSlowly(fd, 0)
			} else {
				l.waitAtCap(fd) // a goroutine accepts already
			}
			return
		}
		a.open(fd, sockaddrPort(&a.rsa))
	}
}

// pause makes the loops hold off; it reports false if a goroutine
// accepts already.
func (l *loopListener) pause() bool {
	if !l.paused.CompareAndSwap(false, true) {
		return false
	}
	l.slow.Add(1)
	return true
}

// acceptSlowly accepts on a goroutine while the loops hold off: it waits
// at the cap with held (an accepted descriptor, or -1), retries the accept
// errors that pass after a pause, and gives the listener back to the loops
// once the backlog is empty.
func (l *loopListener) acceptSlowly(held int, errno syscall.Errno) {
	defer l.slow.Done()
	var delay time.Duration
	var rsa unix.RawSockaddrAny
	for {
		if errno != 0 {
			var ok bool
			if delay, ok = l.gate.failed(errno, delay); !ok {
				l.paused.Store(false)
				return
			}
			errno = 0
		}
		if held >= 0 {
			if !l.gate.acquire() {
				unix.Close(held)
				l.paused.Store(false)
				return
			}
			l.pick().open(held, netip.AddrPort{})
			held = -1
		}
		l.mu.RLock()
		if l.closed {
			l.mu.RUnlock()
			l.paused.Store(false)
			return
		}
		fd, e := accept4(l.fd, &rsa)
		l.mu.RUnlock()
		switch {
		case e == 0:
			held = fd
		case e == unix.EAGAIN:
			// Give the loops the listener back, then look once more:
			// a connection that came while they held off woke nobody.
			if l.paused.Swap(false) {
				l.mu.RLock()
				if !l.closed {
					fd, e = accept4(l.fd, &rsa)
				}
				l.mu.RUnlock()
				if e == 0 && fd > 0 {
					if l.paused.CompareAndSwap(false, true) {
						held = fd
						continue
					}
					l.waitAtCap(fd)
				}
			}
			return
		case e == unix.EINTR:
		default:
			if _, ok := acceptRetryable(e); !ok {
				l.paused.Store(false)
				return
			}
			errno = e
		}
	}
}

// waitAtCap opens fd once the cap has room, waiting on a goroutine of
// its own: a connection accepted while acceptSlowly had the listener.
func (l *loopListener) waitAtCap(fd int) {
	if l.s.conns.tryAcquire() {
		l.pick().open(fd, netip.AddrPort{})
		return
	}
	l.slow.Add(1)
	go l.holdAtCap(fd)
}

// holdAtCap waits at the cap with fd, then opens it; it closes fd if the
// listener closes first.
func (l *loopListener) holdAtCap(fd int) {
	defer l.slow.Done()
	if !l.gate.acquire() {
		unix.Close(fd)
		return
	}
	l.pick().open(fd, netip.AddrPort{})
}

// pick returns the next poller's acceptor in turn, for a connection
// accepted off the loops.
func (l *loopListener) pick() *acceptor {
	p := l.s.pollers.Pick()
	for _, a := range l.acc {
		if a.p == p {
			return a
		}
	}
	return l.acc[0]
}

// accept4 accepts one connection, non-blocking and close-on-exec, its
// peer's address in rsa.
func accept4(fd int, rsa *unix.RawSockaddrAny) (int, syscall.Errno) {
	n := uint32(unsafe.Sizeof(*rsa))
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(rsa)), uintptr(unsafe.Pointer(&n)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), 0
}

// setNoDelay sets TCP_NODELAY, as Go does on every TCP connection.
func setNoDelay(fd int) {
	one := int32(1)
	_, _, _ = unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY,
		uintptr(unsafe.Pointer(&one)), 4, 0)
}
