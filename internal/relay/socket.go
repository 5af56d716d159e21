package relay

import (
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A TLS session is relayed like a plain one: the poller watches the TCP
// socket and the pump reads through crypto/tls without blocking. For that
// the TLS connection runs over a Socket, which reads normally during the
// TLS and HTTP handshakes and, once the relay starts, returns at once with
// a temporary error when the socket is empty. crypto/tls keeps a partial
// record across such an error and reports it back unchanged, so the next
// read carries on where this one stopped.

// Socket is a TCP connection that can be switched to non-blocking reads.
// Writes always go out whole (waiting up to their deadline), so TLS
// records are never written in part; in non-blocking mode a write first
// writes what the socket takes at once and calls beforeBlock before it
// waits for the rest. Wrap accepted or dialed connections in it before
// handing them to crypto/tls; the relay switches it when its session
// starts.
type Socket struct {
	*net.TCPConn
	rc       syscall.RawConn
	nonblock atomic.Bool
	// beforeBlock, set before the relay starts, is called by Write before
	// it waits for the socket to take more; writeTimeout bounds that wait.
	beforeBlock  func()
	writeTimeout time.Duration
	raw          rawCalls
}

// NewSocket wraps c.
func NewSocket(c *net.TCPConn) (*Socket, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	s := &Socket{TCPConn: c, rc: rc}
	s.raw.bind()
	return s, nil
}

// errSocketEmpty is what a non-blocking Socket read returns when there is
// nothing to read. It is temporary, so crypto/tls does not record it as
// the connection's failure.
type errSocketEmpty struct{}

func (errSocketEmpty) Error() string   { return "relay: socket empty" }
func (errSocketEmpty) Timeout() bool   { return true }
func (errSocketEmpty) Temporary() bool { return true }

// Read reads; in non-blocking mode it never waits.
func (s *Socket) Read(b []byte) (int, error) {
	if !s.nonblock.Load() {
		return s.TCPConn.Read(b)
	}
	if len(b) == 0 {
		return 0, nil
	}
	s.raw.rbuf = b
	err := s.rc.Read(s.raw.readFn)
	s.raw.rbuf = nil
	if err != nil {
		return 0, err
	}
	switch {
	case s.raw.rerr == unix.EAGAIN:
		return 0, errSocketEmpty{}
	case s.raw.rerr != nil:
		return 0, s.raw.rerr
	case s.raw.rn == 0:
		return 0, io.EOF
	}
	return s.raw.rn, nil
}

// Write writes b in full. In non-blocking mode it writes what the socket
// takes at once and, before it waits for the rest, calls beforeBlock and
// sets a write deadline writeTimeout away (if set), which it clears once
// the rest is out: a write that needs no wait costs no deadline.
func (s *Socket) Write(b []byte) (int, error) {
	if !s.nonblock.Load() || s.beforeBlock == nil {
		return s.TCPConn.Write(b)
	}
	s.raw.wbuf = b
	err := s.rc.Write(s.raw.writeFn)
	rest, werr := s.raw.wbuf, s.raw.werr
	s.raw.wbuf = nil
	n := len(b) - len(rest)
	switch {
	case err != nil:
		return n, err
	case werr != nil && werr != unix.EAGAIN:
		return n, werr
	case len(rest) == 0:
		return n, nil
	}
	s.beforeBlock()
	if s.writeTimeout > 0 {
		if err := s.TCPConn.SetWriteDeadline(time.Now().Add(s.writeTimeout)); err != nil {
			return n, err
		}
	}
	m, err := s.TCPConn.Write(rest)
	if err == nil && s.writeTimeout > 0 {
		err = s.TCPConn.SetWriteDeadline(time.Time{})
	}
	return n + m, err
}
