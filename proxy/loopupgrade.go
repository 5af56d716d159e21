package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/internal/poller"
	"github.com/wsproxy/wsproxy/internal/relay"
)

// Upgrades on the loops (engine: loops).
//
// A head that is whole, with nothing behind it, is parsed on its loop
// (upgradeLocked). An upgrade the loop can carry out itself (no Preroute,
// a route without authentication, a plain pool, no body or Expect, a
// client address known from the accept) that passes checkUpgrade, the
// route's origins and the shutdown check is admitted there; the loop
// then connects to the backend without blocking, on the same loop, sends
// the upgrade request, reads the answer head and, on a 101, writes it to
// the client and starts the session on both descriptors: no goroutine,
// no net.Conn and no fasthttp RequestCtx. A dial failure tries the next
// backend as upgrade does; handshake_timeout is one timer, the
// connection's.
//
// Whatever else comes of it is answered by fasthttp, so that it is
// answered exactly as the goroutine engine answers it: the connection is
// handed over with a loopNote, which serveWebSocket reads instead of
// admitting again, and upgrade goes on from where the loop stopped (an
// admission refusal, a backend's non-101 answer to relay, the backends
// left to try, or the verdict of the last failure). A failed check hands
// the connection over with no note.

// loopNote is how far a loop took an upgrade it handed over.
type loopNote struct {
	tk      ticket
	refusal *refusal // admission refused it
	chosen  bool     // ch holds the backend choice
	ch      choice
	tried   []*balancer.Backend
	last    verdict
	attempt int // the next attempt upgrade makes
	// conn and answer are a backend's non-101 answer, to relay.
	conn   net.Conn
	answer *backendAnswer
}

// takeLoopNote returns, once, the note a loop handed ctx's connection
// over with.
func takeLoopNote(ctx *fasthttp.RequestCtx) *loopNote {
	rc, ok := ctx.Conn().(*replayConn)
	if !ok {
		return nil
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	n := rc.note
	rc.note = nil
	return n
}

// loopUpgrade is an upgrade a loop carries out: its backend side.
type loopUpgrade struct {
	c        *loopConn
	rt       *route
	tk       ticket
	ch       choice
	cont     bool // the request continues a long-polling session
	tried    []*balancer.Backend
	attempt  int
	last     verdict // the last failure's
	b        *balancer.Backend
	fd       int // the backend socket; -1 for none
	reg      poller.Registration
	dialed   bool
	aborted  bool    // the server's shutdown ended the exchange
	req      *[]byte // the upgrade request (reqPool)
	sent     int
	ans      *[]byte // the answer read so far (headPool)
	searched int
	deadline time.Time
}

// headReaders parse heads on the loops.
var headReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// upgradeLocked takes the head in c's buffer on as an upgrade the loop
// carries out, or hands it over with a note; it reports false if c is
// to be handed over as it is.
func (c *loopConn) upgradeLocked() bool {
	s := c.a.l.s
	if s.preroute != nil || !c.peer.IsValid() {
		return false
	}
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	br := headReaders.Get().(*bufio.Reader)
	var src bytes.Reader
	src.Reset((*c.buf)[:c.n])
	br.Reset(&src)
	err := req.Header.Read(br)
	br.Reset(nil)
	headReaders.Put(br)
	if err != nil {
		return false
	}
	h := &req.Header
	// A GET without Content-Length reads -2: no body.
	if cl := h.ContentLength(); !isUpgradeAttempt(h) || cl > 0 || cl == -1 || len(h.Peek("Expect")) > 0 {
		return false
	}
	t := s.table.Load()
	rt := t.match(req.URI().Path())
	if rt == nil || rt.auth != nil || len(rt.pool.tls) > 0 || rt.pool.tlsBase != nil {
		return false
	}
	if checkUpgrade(h) != nil || !rt.originAllowed(h.Peek("Origin")) || s.stopping.Load() {
		return false
	}
	peer := c.peer.Addr().Unmap()
	clientIP := balancer.ClientIP(peer, joinedHeader(h, "X-Forwarded-For"), t.trusted)
	tk, r := s.admit(&t.admission, rt, clientIP)
	if r != nil {
		c.note = &loopNote{refusal: r}
		c.handOverLocked()
		return true
	}
	f := forwarded{clientIP: clientIP, trusted: t.isTrusted(peer), host: h.Host(), proto: "http"}
	bp := reqPool.Get().(*[]byte)
	*bp = appendUpgradeRequest((*bp)[:0], req, &f, peer)
	u := &loopUpgrade{c: c, rt: rt, tk: tk, ch: s.choose(req, rt, clientIP), cont: continuesSession(req), fd: -1, req: bp,
		deadline: time.Now().Add(rt.limits.HandshakeTimeout)}
	// The loop owns c now: Close no longer hands it over, fasthttp's
	// Shutdown waits for it as for a handler, Shutdown's waitUpgrades too.
	c.up = u
	// Added before a.mu is taken, which Close takes next: its Wait is
	// ordered after this Add.
	c.a.l.served.Add(1)
	a := c.a
	a.mu.Lock()
	a.heads.remove(c)
	a.ups.add(c)
	a.mu.Unlock()
	s.upgrading.Add(1)
	c.timer.Stop()
	c.timer.Reset(rt.limits.HandshakeTimeout)
	u.dialNext()
	return true
}

// dialNext connects to the next backend to try, as upgrade picks them;
// with none left it hands the connection over with the last verdict.
func (u *loopUpgrade) dialNext() {
	s := u.c.a.l.s
	for u.attempt < s.attempts {
		var b *balancer.Backend
		switch {
		case u.attempt == 0 && u.ch.sticky != nil:
			b = u.ch.sticky
		case u.attempt == 0 && u.cont:
			b = u.rt.pool.lb.PickUnbounded(u.ch.key)
		default:
			b = u.rt.pool.lb.PickExcluding(u.ch.key, u.tried)
		}
		if b == nil {
			break
		}
		ap, perr := netip.ParseAddrPort(b.Addr)
		if perr != nil {
			u.handOver(u.last, u.attempt) // a name: upgrade dials it
			return
		}
		u.tried = append(u.tried, b)
		u.attempt++
		err := u.connect(b, ap)
		if err == nil {
			return // the loop waits for the connect
		}
		u.last = classify(err, exchange{upgrade: true})
		s.backendFailed(u.rt.pool.name, b, err, u.last, "backend handshake failed")
		if u.last.kind == failLocal {
			break
		}
	}
	u.handOver(u.last, s.attempts)
}

// connect opens a non-blocking connection to ap on the loop.
func (u *loopUpgrade) connect(b *balancer.Backend, ap netip.AddrPort) error {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	family := unix.AF_INET
	if ap.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return &dialError{os.NewSyscallError("socket", err)}
	}
	setNoDelay(fd)
	if errno := rawConnect(fd, ap); errno != 0 && errno != unix.EINPROGRESS {
		unix.Close(fd)
		return &dialError{&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}}
	}
	reg, err := u.c.a.p.AddFlags(fd, poller.Writable, u)
	if err != nil {
		unix.Close(fd)
		return &dialError{err}
	}
	u.b, u.fd, u.reg, u.dialed, u.sent = b, fd, reg, false, 0
	return nil
}

// Ready moves the backend exchange on, on the loop.
func (u *loopUpgrade) Ready(l *poller.Loop) {
	c := u.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.handed || c.up != u || u.fd < 0 {
		return
	}
	s := c.a.l.s
	if !u.dialed {
		errno, err := soError(u.fd)
		if err == nil && errno == 0 {
			u.dialed = true
		} else {
			if err == nil {
				err = syscall.Errno(errno)
			}
			err = &dialError{&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", err)}}
			u.last = classify(err, exchange{upgrade: true})
			s.backendFailed(u.rt.pool.name, u.b, err, u.last, "backend handshake failed")
			u.closeBackend()
			if u.last.kind == failLocal {
				u.handOver(u.last, s.attempts)
				return
			}
			u.dialNext()
			return
		}
	}
	req := *u.req
	for u.sent < len(req) {
		n, err := sysWrite(u.fd, req[u.sent:])
		if err == syscall.EAGAIN {
			return
		}
		if err == syscall.EINTR {
			continue
		}
		if err != 0 {
			u.failed(err)
			return
		}
		u.sent += n
	}
	if u.ans == nil {
		u.ans = headPool.Get().(*[]byte)
		*u.ans = (*u.ans)[:0]
	}
	for {
		buf := *u.ans
		if len(buf) == cap(buf) {
			if cap(buf) >= maxResponseHead {
				u.failed(errHeadTooLarge)
				return
			}
			nb := make([]byte, len(buf), 2*cap(buf))
			copy(nb, buf)
			buf = nb
		}
		n, errno := sysRead(u.fd, buf[len(buf):cap(buf)])
		if errno == syscall.EAGAIN {
			*u.ans = buf
			return
		}
		if errno == syscall.EINTR {
			continue
		}
		var err error
		switch {
		case errno != 0:
			err = errno
		case n == 0 && len(buf) == 0:
			err = io.ErrUnexpectedEOF
		case n == 0:
			err = io.EOF
		}
		if err != nil {
			*u.ans = buf
			u.failed(err)
			return
		}
		buf = buf[:len(buf)+n]
		*u.ans = buf
		a, perr := answerHead(buf, u.searched)
		if perr != nil {
			u.failed(perr)
			return
		}
		if a != nil {
			u.answered(a, l)
			return
		}
		u.searched = len(buf)
	}
}

// answered acts on the backend's answer head, in a handler on l.
func (u *loopUpgrade) answered(a *backendAnswer, l *poller.Loop) {
	c := u.c
	s := c.a.l.s
	if s.health != nil {
		s.health.ReportSuccess(u.b.Addr)
	}
	if a.status != fasthttp.StatusSwitchingProtocols {
		// fasthttp relays it, its body read within the handshake's time.
		_ = u.reg.Delete()
		conn, err := c.a.l.fileConn(u.fd)
		u.fd = -1
		if err != nil {
			u.handOver(classify(err, exchange{dialed: true, upgrade: true, heard: true}), s.attempts)
			return
		}
		_ = conn.SetDeadline(u.deadline)
		a.br = bufio.NewReader(io.MultiReader(bytes.NewReader(bytes.Clone(*u.ans)), conn))
		n := u.note(s.attempts)
		n.conn, n.answer = conn, a
		u.unlist()
		u.release()
		c.note = n
		c.handOverLocked()
		s.upgrading.Add(-1)
		c.a.l.served.Done()
		return
	}
	a.head = s.stampHead(a.head, &u.ch, u.b, false)
	rt := u.rt
	hi := hijackInfo{
		route: rt.path, exact: rt.exact, pool: rt.pool.name, limits: &rt.limits, relayLimits: &rt.relay, upstream: u.b,
		rm: rt.metrics, bm: s.metrics.backend(u.b.Addr),
		answer: a, peer: netip.AddrPortFrom(c.peer.Addr().Unmap(), c.peer.Port()).String(), handshakeTimeout: rt.limits.HandshakeTimeout,
		ticket: u.tk,
	}
	u.tk = ticket{}
	s.stats.HandshakeOK.Add(1)
	s.stats.LoopUpgrades.Add(1)
	client := relay.Endpoint{FD: c.fd, Reg: c.reg}
	backend := relay.Endpoint{FD: u.fd, Reg: u.reg, Writable: true}
	u.fd = -1
	u.unlist()
	c.handed = true
	c.timer.Stop()
	c.releaseBuf()
	u.release()
	defer s.upgrading.Add(-1)
	defer c.a.l.served.Done()
	s.conns.release() // as a hijack gives its slot back
	// The client's socket is empty: it takes the 101 whole at once.
	if n, errno := sysWrite(client.FD, a.head); errno != 0 || n != len(a.head) {
		var err error = io.ErrShortWrite
		if errno != 0 {
			err = errno
		}
		s.log.Debug("session setup failed", zap.String("client", hi.peer), zap.Error(err))
		client.Reg.Remove()
		unix.Close(client.FD)
		backend.Reg.Remove()
		abandonFD(backend.FD)
		s.admission.release(&hi.ticket)
		return
	}
	s.runSession(client, backend, nil, l, nil, &hi, func(err error) {
		s.log.Debug("session setup failed", zap.String("client", hi.peer), zap.Error(err))
		s.admission.release(&hi.ticket)
	})
}

// failed ends an exchange that failed after the connect: nothing else is
// tried, as upgrade tries nothing else.
func (u *loopUpgrade) failed(err error) {
	s := u.c.a.l.s
	v := classify(err, exchange{dialed: true, upgrade: true})
	s.backendFailed(u.rt.pool.name, u.b, err, v, "backend handshake failed")
	u.closeBackend()
	u.handOver(v, s.attempts)
}

// unlist takes c off its acceptor's upgrades.
func (u *loopUpgrade) unlist() {
	a := u.c.a
	a.mu.Lock()
	a.ups.remove(u.c)
	a.mu.Unlock()
}

// abortUpgrades ends the upgrades the loops carry out as the server's
// context ends them on the goroutine engine: 504, not the backend's fault.
func (l *loopListener) abortUpgrades() {
	for _, a := range l.acc {
		for {
			a.mu.Lock()
			c := a.ups.first
			a.mu.Unlock()
			if c == nil {
				break
			}
			c.mu.Lock()
			if u := c.up; u != nil && !c.handed {
				u.deadline = time.Time{}
				u.aborted = true
				u.expired()
			} else {
				a.mu.Lock()
				a.ups.remove(c)
				a.mu.Unlock()
			}
			c.mu.Unlock()
		}
	}
}

// expired ends an exchange that handshake_timeout cut short; the timer
// holds c.mu. A timer that fired as it was reset is early: the reset one
// follows.
func (u *loopUpgrade) expired() {
	if time.Now().Before(u.deadline) {
		return
	}
	s := u.c.a.l.s
	var err error = os.ErrDeadlineExceeded
	x := exchange{dialed: u.dialed, upgrade: true, aborted: u.aborted}
	if !u.dialed {
		err = &dialError{&net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}}
	}
	v := classify(err, x)
	if u.b != nil && u.fd >= 0 {
		s.backendFailed(u.rt.pool.name, u.b, err, v, "backend handshake failed")
	}
	u.closeBackend()
	u.handOver(v, s.attempts)
}

// note is what upgrade needs to go on from attempt.
func (u *loopUpgrade) note(attempt int) *loopNote {
	return &loopNote{tk: u.tk, chosen: true, ch: u.ch, tried: u.tried, attempt: attempt}
}

// handOver gives the connection to fasthttp, upgrade to go on from
// attempt with last the verdict so far.
func (u *loopUpgrade) handOver(last verdict, attempt int) {
	c := u.c
	s := c.a.l.s
	n := u.note(attempt)
	n.last = last
	u.unlist()
	u.closeBackend()
	u.release()
	c.note = n
	c.handOverLocked()
	s.upgrading.Add(-1) // upgrade counts itself
	c.a.l.served.Done() // handOverLocked counted the connection
}

// closeBackend closes the backend socket, if open.
func (u *loopUpgrade) closeBackend() {
	if u.fd >= 0 {
		u.reg.Remove()
		unix.Close(u.fd)
		u.fd = -1
	}
}

// release gives the pooled buffers back.
func (u *loopUpgrade) release() {
	if u.req != nil {
		*u.req = (*u.req)[:0]
		reqPool.Put(u.req)
		u.req = nil
	}
	if u.ans != nil {
		if cap(*u.ans) <= 64<<10 {
			*u.ans = (*u.ans)[:0]
			headPool.Put(u.ans)
		}
		u.ans = nil
	}
}

// abandonFD closes a backend socket that accepted an upgrade whose
// session could not start, as abandonBackend does.
func abandonFD(fd int) {
	nc, err := net.FileConn(os.NewFile(uintptr(fd), ""))
	unix.Close(fd)
	if err == nil {
		abandonBackend(nc)
	}
}

// The loops' system calls on non-blocking sockets (connect, the upgrade
// request and the answer, the 101) are raw: they never wait, and telling
// the scheduler of each costs two transitions and, for one that outlasts
// its monitor's 20 µs tick (a loopback connect or write does the peer's
// TCP work too), a P handed to another thread and a wake-up.

// sysRead is read(2) on a non-blocking socket.
func sysRead(fd int, b []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// sysWrite is write(2) on a non-blocking socket.
func sysWrite(fd int, b []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// soError is getsockopt(SO_ERROR): how a non-blocking connect ended.
func soError(fd int) (int, error) {
	var v int32
	l := uint32(4)
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_ERROR,
		uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, e
	}
	return int(v), nil
}

// rawConnect starts a connect to ap without allocating.
func rawConnect(fd int, ap netip.AddrPort) syscall.Errno {
	var e syscall.Errno
	port := ap.Port()
	if ap.Addr().Is4() {
		sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		_, _, e = unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	} else {
		sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ap.Addr().As16()}
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		_, _, e = unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	}
	return e
}

// sockaddrPort is the address accept4 wrote, or zero.
func sockaddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// abortLoopUpgrades ends the upgrades the loops carry out, once the
// server's context is done.
func (s *Server) abortLoopUpgrades() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ln := range s.listeners {
		if l, ok := ln.(*loopListener); ok {
			l.abortUpgrades()
		}
	}
}
