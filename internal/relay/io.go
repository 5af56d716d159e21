package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

var errWouldBlock = errors.New("relay: would block")

// read reads without blocking. It returns errWouldBlock when the socket has
// nothing, io.EOF at the end.
func (x *side) read(b []byte) (n int, err error) {
	if x.tls != nil {
		return x.readTLS(b)
	}
	x.raw.rbuf = b
	rerr := x.rc.Read(x.raw.readFn)
	x.raw.rbuf = nil
	n, err = x.raw.rn, x.raw.rerr
	switch {
	case rerr != nil:
		return 0, rerr
	case err == unix.EAGAIN:
		return 0, errWouldBlock
	case err != nil:
		return 0, err
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readTLS reads decrypted bytes without blocking.
func (x *side) readTLS(b []byte) (int, error) {
	n, err := x.tls.Read(b)
	if n > 0 {
		return n, nil
	}
	var empty errSocketEmpty
	if err == nil || errors.As(err, &empty) {
		return 0, errWouldBlock
	}
	return 0, err
}

// write writes b to x in full: first without blocking, then, if the socket
// is full, blocking up to the write timeout, which applies back-pressure
// to the pump that feeds it.
func (x *side) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if x.tls != nil {
		// A TLS record must go out whole: the Socket writes what it can
		// at once and detaches the writing pump (x.peer's) before it
		// waits for the rest.
		if err := x.setWriteDeadline(); err != nil {
			return err
		}
		_, err := x.tls.Write(b)
		return err
	}
	x.raw.wbuf = b
	rerr := x.rc.Write(x.raw.writeFn)
	b, serr := x.raw.wbuf, x.raw.werr
	x.raw.wbuf = nil
	if rerr != nil {
		return rerr
	}
	if serr != nil && serr != unix.EAGAIN {
		return serr
	}
	if len(b) == 0 {
		return nil
	}
	// The socket is full: wait for the peer to read, which holds up the
	// pump that feeds it (x's peer's), not its poller.
	x.peer.detach()
	if err := x.setWriteDeadline(); err != nil {
		return err
	}
	_, err := x.conn.Write(b)
	return err
}

func (x *side) setWriteDeadline() error {
	if wt := x.s.limits.WriteTimeout; wt > 0 {
		return x.conn.SetWriteDeadline(time.Now().Add(wt))
	}
	return nil
}

// isTimeout reports whether a write failed on its deadline.
func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// abort makes closing x reset the connection: the bytes the kernel still
// holds for a peer that stopped reading are dropped at once instead of
// being retried for minutes, as nginx's reset_timedout_connection does.
func (x *side) abort() {
	tc, ok := x.conn.(*net.TCPConn)
	if x.sock != nil {
		tc, ok = x.sock.TCPConn, true
	}
	if ok {
		_ = tc.SetLinger(0)
	}
}
