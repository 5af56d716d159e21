package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"github.com/wsproxy/wsproxy/internal/poller"
	"golang.org/x/sys/unix"
)

var errWouldBlock = errors.New("relay: would block")

// read reads without blocking. It returns errWouldBlock when the socket has
// nothing, io.EOF at the end.
func (x *side) read(b []byte) (n int, err error) {
	if x.bare {
		return x.readBare(b)
	}
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

// readBare is read for a bare descriptor: read(2) itself, with no
// runtime poller or lock in between.
func (x *side) readBare(b []byte) (int, error) {
	for {
		n, err := rawRead(x.fd, b)
		switch {
		case n > 0:
			return n, nil
		case err == nil:
			return 0, io.EOF
		case err == unix.EAGAIN:
			return 0, errWouldBlock
		case err != unix.EINTR:
			return 0, err
		}
	}
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
	if x.bare {
		return x.writeBare(b)
	}
	if x.tls != nil {
		// A TLS record must go out whole: the Socket writes what it can
		// at once and, before it waits for the rest, detaches the writing
		// pump (x.peer's) and sets the write timeout (Socket.Write).
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
	if err == nil && x.s.limits.WriteTimeout > 0 {
		// The deadline was this wait's: left in place, it would fail
		// the first write after it passed, however quick.
		err = x.conn.SetWriteDeadline(time.Time{})
	}
	return err
}

// writeBare is write for a bare descriptor: write(2) until b is out; when
// the socket is full, the writing pump (x's peer's) leaves its loop and
// waits for room (waitRoom), up to the write timeout for the rest of b.
func (x *side) writeBare(b []byte) error {
	if x.s.done.Load() {
		// The session is finished: what a pump still has goes nowhere,
		// as a write to a closed connection would.
		return net.ErrClosed
	}
	var deadline int64 // monotonic ns; set at the first full socket
	for len(b) > 0 {
		n, err := rawWrite(x.fd, b)
		if n > 0 {
			b = b[n:]
			continue
		}
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
		default:
			x.wwait.Store(false)
			return err
		}
		if deadline == 0 {
			x.peer.detach()
			deadline = -1
			if wt := x.s.limits.WriteTimeout; wt > 0 {
				deadline = monoNow() + int64(wt)
			}
		}
		if err := x.waitRoom(deadline); err != nil {
			x.wwait.Store(false)
			return err
		}
	}
	x.wwait.Store(false)
	return nil
}

// waitRoom waits until x's socket may take more bytes, or the deadline
// passes (monotonic ns; -1 for none). Once x is watched, the writer parks
// its goroutine until x's poller reports room (or an error, or finish
// wakes it), holding no thread: a thousand peers that stopped reading cost
// a thousand parked goroutines, not a thousand threads in a system call.
// The first wait arms it: wwait is set, the registration modified to
// report room (which it then keeps: it reports room only after the socket
// was full), and the write tried again, since room that came before wwait
// was set went unheard. Before Start, it waits in ppoll(2).
func (x *side) waitRoom(deadline int64) error {
	if !x.watched.Load() {
		// finish shuts x down if it sees polling set; if it came first,
		// done is set already.
		x.polling.Store(true)
		defer x.polling.Store(false)
		if x.s.done.Load() {
			return net.ErrClosed
		}
		return waitWritable(x.fd, deadline)
	}
	if !x.wwait.Load() {
		if x.wready == nil {
			x.wready = make(chan struct{}, 1)
		}
		x.wwait.Store(true) // publishes wready to Ready and finish
		if !x.wmod {
			if err := x.reg.Modify(poller.Writable); err != nil {
				x.wwait.Store(false)
				return waitWritable(x.fd, deadline)
			}
			x.wmod = true
		}
		return nil // try again
	}
	// finish wakes a writer it sees waiting; one that set wwait after
	// finish looked sees done here.
	if x.s.done.Load() {
		return net.ErrClosed
	}
	var expired <-chan time.Time
	if deadline >= 0 {
		left := deadline - monoNow()
		if left <= 0 {
			return os.ErrDeadlineExceeded
		}
		if x.wtimer == nil {
			x.wtimer = time.NewTimer(time.Duration(left))
		} else {
			x.wtimer.Reset(time.Duration(left))
		}
		expired = x.wtimer.C
		defer x.wtimer.Stop()
	}
	select {
	case <-x.wready:
		return nil
	case <-expired:
		return os.ErrDeadlineExceeded
	}
}

// roomReady wakes the writer waiting for room in x, if any.
func (x *side) roomReady() {
	select {
	case x.wready <- struct{}{}:
	default:
	}
}

// waitWritable blocks until fd can take more bytes, has failed or hung up
// (the next write says which), or the deadline passes (monotonic ns; -1
// for none: finish's shutdown(2) wakes it). It goes through syscall.Syscall6
// so the scheduler can hand the thread's P to other goroutines meanwhile;
// the thread stays blocked. Only a write before Start waits so.
func waitWritable(fd int, deadline int64) error {
	for {
		pfd := unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT}
		var ts unix.Timespec
		var tsp *unix.Timespec // nil: no timeout
		if deadline >= 0 {
			left := deadline - monoNow()
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			ts = unix.NsecToTimespec(left)
			tsp = &ts
		}
		n, _, errno := syscall.Syscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(tsp)), 0, 0, 0)
		switch {
		case errno == unix.EINTR || errno == 0 && n == 0:
			// Interrupted, or timed out: the deadline is looked at again.
		case errno != 0:
			return errno
		default:
			return nil
		}
	}
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
	if x.bare {
		_ = unix.SetsockoptLinger(x.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		return
	}
	tc, ok := x.conn.(*net.TCPConn)
	if x.sock != nil {
		tc, ok = x.sock.TCPConn, true
	}
	if ok {
		_ = tc.SetLinger(0)
	}
}
