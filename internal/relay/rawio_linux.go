package relay

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawRead and rawWrite are recv(2) and send(2) on a non-blocking socket
// without telling the Go scheduler: such a call never waits, so there is no
// point in handing the P to another thread while it runs. recvfrom and
// sendto go to the socket directly, where read and write pass through the
// file layer first; MSG_NOSIGNAL spares a write to a reset peer the
// SIGPIPE that the runtime would only ignore. Going through
// the scheduler costs two transitions per call and, when a loopback write
// takes longer than the runtime's 20 µs monitor tick, a P hand-off and a
// thread wake-up. The relay's sides and Socket share them.
func rawRead(fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(p), uintptr(len(b)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func rawWrite(fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(p), uintptr(len(b)), unix.MSG_NOSIGNAL, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// rawClose is close(2) as a raw system call: closing a socket never waits
// (the relay sets no lingering timeout, only SO_LINGER 0), but sending the
// FIN and freeing its buffers takes long enough for the scheduler's
// monitor to hand the P of a thread in a system call to another thread.
func rawClose(fd int) error {
	if _, _, errno := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0); errno != 0 {
		return errno
	}
	return nil
}

// rawCalls are one socket's read and write calls for syscall.RawConn, with
// their arguments and results kept beside them: the functions are bound
// once, so a call allocates no closure.
type rawCalls struct {
	readFn, writeFn func(fd uintptr) bool
	rbuf, wbuf      []byte
	rn              int
	rerr, werr      error
}

func (c *rawCalls) bind() { c.readFn, c.writeFn = c.rawRead, c.rawWrite }

// rawRead is c.readFn: one read(2), never waiting.
func (c *rawCalls) rawRead(fd uintptr) bool {
	for {
		c.rn, c.rerr = rawRead(int(fd), c.rbuf)
		if c.rerr != unix.EINTR {
			return true
		}
	}
}

// rawWrite is c.writeFn: writes c.wbuf until it is all out or the socket
// is full, never waiting. What is left stays in c.wbuf.
func (c *rawCalls) rawWrite(fd uintptr) bool {
	c.werr = nil
	for len(c.wbuf) > 0 {
		n, err := rawWrite(int(fd), c.wbuf)
		if n > 0 {
			c.wbuf = c.wbuf[n:]
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			c.werr = err
			return true
		}
	}
	return true
}
