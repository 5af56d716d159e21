package proxy

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/wsproxy/wsproxy/internal/poller"
)

// Reading request heads on the loops (engine: loops).
//
// An accepted connection is registered on its loop, which reads into a
// pooled buffer of admission.max_header_bytes until the head is complete
// (headEnd), the buffer is full, the client hangs up or handshake_timeout
// passes since the accept. The connection is then handed to fasthttp with
// the bytes read (handOver): fasthttp parses them as it parses any
// request, so a head over the buffer gets its 431, a malformed one its
// 400, and a client too slow its 408, at handshake_timeout from the
// accept as on the goroutine path (the first read deadline fasthttp sets
// is held to it).
//
// A client that hangs up or fails before sending a byte is closed without
// an answer, as fasthttp closes it.

// loopConn is an accepted connection reading its request head on a loop.
type loopConn struct {
	a   *acceptor
	fd  int
	reg poller.Registration
	// deadline is handshake_timeout after the accept.
	deadline time.Time
	timer    *time.Timer
	peer     netip.AddrPort // the client's, from accept; zero if unknown
	// up is the upgrade the loop carries out (loopupgrade.go); note is
	// what a handover tells serveWebSocket of it.
	up   *loopUpgrade
	note *loopNote

	// mu serialises the loop's reads with the timer's handover.
	mu      sync.Mutex
	handed  bool // handed over or closed: the loop has nothing to do
	buf     *[]byte
	n       int // bytes read into buf
	scanned int // bytes headEnd has looked at

	prev, next *loopConn // in a.heads
}

// headList is an acceptor's connections reading their heads, so that
// Close can hand them over.
type headList struct{ first *loopConn }

func (h *headList) add(c *loopConn) {
	c.next = h.first
	if h.first != nil {
		h.first.prev = c
	}
	h.first = c
}

func (h *headList) remove(c *loopConn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else if h.first == c {
		h.first = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	}
	c.prev, c.next = nil, nil
}

// headBufPool holds head buffers of the size the server started with.
type headBufPool struct {
	size int
	pool sync.Pool
}

func (p *headBufPool) get() *[]byte {
	if b, ok := p.pool.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, p.size)
	return &b
}

func (p *headBufPool) put(b *[]byte) { p.pool.Put(b) }

// open registers an accepted descriptor on a's loop, its slot under the
// connection cap taken.
func (a *acceptor) open(fd int, peer netip.AddrPort) {
	s := a.l.s
	setNoDelay(fd)
	c := &loopConn{a: a, fd: fd, deadline: time.Now().Add(s.readTimeout), peer: peer}
	a.mu.Lock()
	a.heads.add(c)
	a.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	reg, err := a.p.Add(fd, c)
	if err != nil {
		c.closeLocked()
		return
	}
	c.reg = reg
	c.timer = time.AfterFunc(s.readTimeout, c.expired)
}

// Ready reads what the client sent, on the loop.
func (c *loopConn) Ready(*poller.Loop) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.handed || c.up != nil { // the relay reads what comes now
		return
	}
	if c.buf == nil {
		c.buf = c.a.l.s.headBufs.get()
	}
	buf := *c.buf
	for {
		n, errno := rawRead(c.fd, buf[c.n:])
		switch {
		case errno == unix.EAGAIN:
			return
		case errno == unix.EINTR:
			continue
		case errno != 0 || n == 0:
			if c.n == 0 {
				c.closeLocked() // gone before a byte: no answer
				return
			}
			c.handOverLocked() // fasthttp answers what it read
			return
		}
		c.n += n
		if end := headEnd(buf[:c.n], c.scanned); end > 0 || c.n == len(buf) {
			if end == c.n && c.upgradeLocked() {
				return
			}
			c.handOverLocked()
			return
		}
		c.scanned = c.n
	}
}

// expired hands over a connection whose head did not come in time:
// fasthttp's first read then times out at once and answers 408.
func (c *loopConn) expired() {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.handed:
	case c.up != nil:
		c.up.expired()
	default:
		c.handOverLocked()
	}
}

// handOverNow hands the connection over, whatever it has read.
func (c *loopConn) handOverNow() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.handed {
		c.handOverLocked()
	} else {
		c.unlist()
	}
}

// unlist takes c off its acceptor's list.
func (c *loopConn) unlist() {
	c.a.mu.Lock()
	c.a.heads.remove(c)
	c.a.mu.Unlock()
}

// closeLocked closes a connection that sent nothing.
func (c *loopConn) closeLocked() {
	c.handed = true
	c.unlist()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.reg.Remove()
	unix.Close(c.fd)
	c.releaseBuf()
	c.a.l.s.conns.release()
}

func (c *loopConn) releaseBuf() {
	if c.buf != nil {
		c.a.l.s.headBufs.put(c.buf)
		c.buf = nil
	}
}

// handOverLocked gives the connection to fasthttp: a net.Conn of its own
// descriptor (the loop's registration deleted) that replays the bytes
// read, counted by the connection gate as fasthttp's connections are.
func (c *loopConn) handOverLocked() {
	l := c.a.l
	s := l.s
	c.handed = true
	l.served.Add(1) // before unlist: Close waits for the list to empty
	c.unlist()
	c.timer.Stop()
	_ = c.reg.Delete()
	nc, err := l.fileConn(c.fd)
	if err != nil {
		c.releaseBuf()
		s.conns.release()
		l.served.Done()
		return
	}
	rc := &replayConn{Conn: nc, first: c.deadline, pool: &s.headBufs, note: c.note}
	if c.n > 0 {
		rc.buf, rc.rest = c.buf, (*c.buf)[:c.n]
		c.buf = nil
	} else {
		c.releaseBuf()
	}
	s.conns.connState(rc, fasthttp.StateNew) // ServeConn reports no StateNew
	go l.serveHandedOver(rc)
}

// fileConn turns fd into a net.Conn and closes fd. net.FileConn takes a
// duplicate, so it needs a descriptor to spare: out of them (EMFILE,
// ENFILE), the listener's spare one makes room, so that the client still
// gets fasthttp's answer (a 503 for an upgrade that cannot dial, say)
// rather than a silent close.
func (l *loopListener) fileConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "")
	defer f.Close()
	nc, err := net.FileConn(f)
	if err == nil {
		return nc, noKeepAlive(nc)
	}
	if !errors.Is(err, unix.EMFILE) && !errors.Is(err, unix.ENFILE) {
		return nil, err
	}
	l.spareMu.Lock()
	defer l.spareMu.Unlock()
	if l.spare < 0 {
		return nil, err
	}
	unix.Close(l.spare)
	nc, err = net.FileConn(f)
	_ = f.Close() // its slot is the spare's again
	l.spare = openSpare()
	if err != nil {
		return nil, err
	}
	return nc, noKeepAlive(nc)
}

// noKeepAlive turns off the TCP keep-alive net.FileConn turns on, as the
// listeners wsproxy opens have it off: the relay's pings and the
// keep-alive timeout find dead clients, and a kernel timer per idle
// session would cost more than they do.
func noKeepAlive(nc net.Conn) error {
	if tc, ok := nc.(*net.TCPConn); ok {
		if err := tc.SetKeepAlive(false); err != nil {
			nc.Close()
			return err
		}
	}
	return nil
}

// openSpare opens the descriptor a loopListener keeps to spare, or
// returns -1.
func openSpare() int {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// serveHandedOver serves a connection the loops handed over.
func (l *loopListener) serveHandedOver(c *replayConn) {
	defer l.served.Done()
	_ = l.s.http.ServeConn(c)
}

// replayConn is a connection whose first bytes were read already: Read
// returns them first. fasthttp's first read deadline is held to the
// handshake_timeout of the accept.
type replayConn struct {
	net.Conn
	mu      sync.Mutex // Read against unwrap, which a hijack calls
	rest    []byte     // not yet replayed
	buf     *[]byte    // rest's pooled buffer
	pool    *headBufPool
	first   time.Time // the first read deadline's limit
	note    *loopNote // how far the loop took the first request
	clamped bool      // the first deadline was set
}

// Read replays the bytes read on the loop, then reads the socket.
func (c *replayConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if len(c.rest) > 0 {
		n := copy(b, c.rest)
		c.rest = c.rest[n:]
		if len(c.rest) == 0 {
			c.pool.put(c.buf)
			c.buf, c.rest = nil, nil
		}
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(b)
}

// SetReadDeadline holds the first deadline fasthttp sets, that for the
// first request, to handshake_timeout after the accept.
func (c *replayConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	if !c.clamped {
		c.clamped = true
		if t.IsZero() || t.After(c.first) {
			t = c.first
		}
	}
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

// unwrap returns the socket's own connection and the bytes not yet
// replayed, for a session that reads the socket itself.
func (c *replayConn) unwrap() (net.Conn, []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rest := bytes.Clone(c.rest)
	if c.buf != nil {
		c.pool.put(c.buf)
		c.buf, c.rest = nil, nil
	}
	return c.Conn, rest
}

// headEnd returns the length of the request head at the start of b,
// through its blank line, or 0 if b holds no complete head. from is how
// much of b an earlier call looked at. Lines end in CRLF or, as fasthttp
// accepts, a bare LF.
func headEnd(b []byte, from int) int {
	i := max(from-2, 0)
	for {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return 0
		}
		j += i // b[j] is a line's LF
		switch {
		case j+1 < len(b) && b[j+1] == '\n':
			return j + 2
		case j+2 < len(b) && b[j+1] == '\r' && b[j+2] == '\n':
			return j + 3
		}
		i = j + 1
	}
}

// rawRead reads once from fd, without the runtime's poller. It goes
// through syscall.Read, whose race-detector annotation orders a peer's
// write before this read as the net package's reads are ordered: once
// per connection, its cost beside a raw system call does not count.
func rawRead(fd int, b []byte) (int, unix.Errno) {
	if len(b) == 0 {
		return 0, unix.ENOBUFS
	}
	n, err := syscall.Read(fd, b)
	if err != nil {
		if e, ok := err.(syscall.Errno); ok {
			return 0, e
		}
		return 0, unix.EIO
	}
	return n, 0
}
