package proxy

import (
	"crypto/tls"
	"net"
	"sync/atomic"
	"syscall"

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
// handing them to crypto/tls (see WrapListener).
type Socket struct {
	*net.TCPConn
	rc       syscall.RawConn
	nonblock atomic.Bool
	// beforeBlock, set before the relay starts, is called by Write before
	// it waits for the socket to take more.
	beforeBlock func()

	// the raw calls' arguments and results, bound once (see rawRead)
	readFn, writeFn func(fd uintptr) bool
	rbuf, wbuf      []byte
	rn              int
	rerr, werr      error
}

// NewSocket wraps c.
func NewSocket(c *net.TCPConn) (*Socket, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	s := &Socket{TCPConn: c, rc: rc}
	s.readFn, s.writeFn = s.rawRead, s.rawWrite
	return s, nil
}

// errSocketEmpty is what a non-blocking Socket read returns when there is
// nothing to read. It is temporary, so crypto/tls does not record it as
// the connection's failure.
type errSocketEmpty struct{}

func (errSocketEmpty) Error() string   { return "proxy: socket empty" }
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
	s.rbuf = b
	err := s.rc.Read(s.readFn)
	s.rbuf = nil
	if err != nil {
		return 0, err
	}
	switch {
	case s.rerr == unix.EAGAIN:
		return 0, errSocketEmpty{}
	case s.rerr != nil:
		return 0, s.rerr
	case s.rn == 0:
		return 0, errEOF
	}
	return s.rn, nil
}

func (s *Socket) rawRead(fd uintptr) bool {
	for {
		s.rn, s.rerr = unix.Read(int(fd), s.rbuf)
		if s.rerr != unix.EINTR {
			return true
		}
	}
}

// Write writes b in full. In non-blocking mode it writes what the socket
// takes at once and calls beforeBlock before it waits for the rest.
func (s *Socket) Write(b []byte) (int, error) {
	if !s.nonblock.Load() || s.beforeBlock == nil {
		return s.TCPConn.Write(b)
	}
	s.wbuf = b
	err := s.rc.Write(s.writeFn)
	rest, werr := s.wbuf, s.werr
	s.wbuf = nil
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
	m, err := s.TCPConn.Write(rest)
	return n + m, err
}

func (s *Socket) rawWrite(fd uintptr) bool {
	s.werr = nil
	for len(s.wbuf) > 0 {
		n, err := unix.Write(int(fd), s.wbuf)
		if n > 0 {
			s.wbuf = s.wbuf[n:]
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			s.werr = err
			return true
		}
	}
	return true
}

// socketListener wraps accepted connections in Sockets and TLS.
type socketListener struct {
	net.Listener
	config *tls.Config
}

// WrapListener returns a listener whose connections are TLS over Sockets,
// so that the relay can read them without blocking. config is used as
// crypto/tls's server configuration (use GetConfigForClient for certificates
// that change on reload).
func WrapListener(ln net.Listener, config *tls.Config) net.Listener {
	return &socketListener{Listener: ln, config: config}
}

func (l *socketListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return tls.Server(c, l.config), nil
	}
	s, err := NewSocket(tc)
	if err != nil {
		c.Close()
		return nil, err
	}
	return tls.Server(s, l.config), nil
}
