package poller

import (
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// forEachWait runs test once per way a loop can wait.
func forEachWait(t *testing.T, test func(*testing.T, Config)) {
	for _, cfg := range []Config{{Wait: Parked}, {Wait: Locked}, {Wait: Locked, Spin: 50 * time.Microsecond}} {
		name := cfg.Wait.String()
		if cfg.Spin > 0 {
			name += "-spin"
		}
		t.Run(name, func(t *testing.T) { test(t, cfg) })
	}
}

type chanHandler chan struct{}

func (c chanHandler) Ready(*Loop) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func pair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-acc
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func fdOf(t *testing.T, c any) int {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

func wait(t *testing.T, c chanHandler, want bool) {
	t.Helper()
	select {
	case <-c:
		if !want {
			t.Fatal("unexpected readiness")
		}
	case <-time.After(map[bool]time.Duration{true: 5 * time.Second, false: 100 * time.Millisecond}[want]):
		if want {
			t.Fatal("no readiness")
		}
	}
}

func TestReadinessEdgeTriggered(t *testing.T) { forEachWait(t, testReadinessEdgeTriggered) }

func testReadinessEdgeTriggered(t *testing.T, cfg Config) {
	p, err := NewWith(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a, b := pair(t)
	h := make(chanHandler, 1)
	reg, err := p.Add(fdOf(t, b), h)
	if err != nil {
		t.Fatal(err)
	}
	if p.Len() != 1 {
		t.Fatalf("Len %d", p.Len())
	}
	a.Write([]byte("x"))
	wait(t, h, true)
	// The byte is not read: edge-triggered, no new event without new data.
	wait(t, h, false)
	a.Write([]byte("y"))
	wait(t, h, true)
	// Reading through the net.Conn still works: the runtime owns the socket.
	buf := make([]byte, 2)
	if n, err := b.Read(buf); err != nil || n != 2 {
		t.Fatalf("read %d %v", n, err)
	}
	// Hang-up is reported too.
	a.Close()
	wait(t, h, true)
	reg.Remove()
	if p.Len() != 0 {
		t.Fatalf("Len %d after Remove", p.Len())
	}
}

func TestRemovedRegistrationIsSilent(t *testing.T) { forEachWait(t, testRemovedRegistrationIsSilent) }

func testRemovedRegistrationIsSilent(t *testing.T, cfg Config) {
	p, err := NewWith(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a, b := pair(t)
	h := make(chanHandler, 1)
	reg, err := p.Add(fdOf(t, b), h)
	if err != nil {
		t.Fatal(err)
	}
	reg.Remove()
	a.Write([]byte("x"))
	wait(t, h, false)
	b.Close() // the kernel drops the registration
	// The slot is reused with a new generation; the descriptor number may
	// be too.
	a2, b2 := pair(t)
	h2 := make(chanHandler, 1)
	if _, err := p.Add(fdOf(t, b2), h2); err != nil {
		t.Fatal(err)
	}
	if p.Len() != 1 {
		t.Fatalf("Len %d", p.Len())
	}
	a2.Write([]byte("z"))
	wait(t, h2, true)
	wait(t, h, false)
}

func TestCloseStopsGoroutine(t *testing.T) { forEachWait(t, testCloseStopsGoroutine) }

func testCloseStopsGoroutine(t *testing.T, cfg Config) {
	before := runtime.NumGoroutine()
	g, err := NewGroupWith(3, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if g.Pick() == g.Pick() {
		t.Fatal("Pick does not rotate")
	}
	g.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := g.pollers[0].Add(0, make(chanHandler)); err != ErrClosed {
		t.Fatalf("Add after Close: %v", err)
	}
}

// blockingHandler detaches the loop and then blocks until released.
type blockingHandler struct {
	entered chan struct{}
	release chan struct{}
}

func (h *blockingHandler) Ready(l *Loop) {
	l.Detach()
	l.Detach() // a second call does nothing
	h.entered <- struct{}{}
	<-h.release
}

// A handler that detached and blocks holds up neither the rest of its
// batch nor later events.
func TestDetachedHandlerDoesNotStallTheLoop(t *testing.T) {
	forEachWait(t, testDetachedHandlerDoesNotStallTheLoop)
}

func testDetachedHandlerDoesNotStallTheLoop(t *testing.T, cfg Config) {
	p, err := NewWith(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a1, b1 := pair(t)
	a2, b2 := pair(t)
	bh := &blockingHandler{entered: make(chan struct{}, 1), release: make(chan struct{})}
	if _, err := p.Add(fdOf(t, b1), bh); err != nil {
		t.Fatal(err)
	}
	h := make(chanHandler, 1)
	if _, err := p.Add(fdOf(t, b2), h); err != nil {
		t.Fatal(err)
	}
	// Both in one batch, most likely; either way the second must be seen
	// while the first blocks.
	a1.Write([]byte("x"))
	a2.Write([]byte("y"))
	<-bh.entered
	wait(t, h, true)
	a2.Write([]byte("z"))
	wait(t, h, true)
	if got := p.Detaches(); got != 1 {
		t.Fatalf("Detaches = %d, want 1", got)
	}
	close(bh.release)
	before := runtime.NumGoroutine()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() >= before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWritableConnect(t *testing.T) { forEachWait(t, testWritableConnect) }

func testWritableConnect(t *testing.T, cfg Config) {
	p, err := NewWith(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	h := make(chanHandler, 1)
	reg, err := p.AddFlags(fd, Writable, h)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Remove()
	port := ln.Addr().(*net.TCPAddr).Port
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil && err != unix.EINPROGRESS {
		t.Fatal(err)
	}
	wait(t, h, true) // the connect completed
	if e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || e != 0 {
		t.Fatalf("SO_ERROR %d %v", e, err)
	}
	if err := reg.Modify(0); err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wait(t, h, false) // writability is no longer reported
	c.Write([]byte("x"))
	wait(t, h, true)
}

func TestExclusiveListenerAndRebind(t *testing.T) { forEachWait(t, testExclusiveListenerAndRebind) }

func testExclusiveListenerAndRebind(t *testing.T, cfg Config) {
	g, err := NewGroupWith(2, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lfd := fdOf(t, ln)
	h := make(chanHandler, 4)
	for _, p := range g.Pollers() {
		reg, err := p.AddFlags(lfd, Exclusive, h)
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Remove()
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wait(t, h, true)

	a, b := pair(t)
	p := g.Pick()
	first, second := make(chanHandler, 1), make(chanHandler, 1)
	reg, err := p.Add(fdOf(t, b), first)
	if err != nil {
		t.Fatal(err)
	}
	if reg.Poller() != p || reg.FD() != fdOf(t, b) {
		t.Fatal("registration does not say where it is")
	}
	if !reg.Rebind(second) {
		t.Fatal("Rebind of a live registration failed")
	}
	a.Write([]byte("x"))
	wait(t, second, true)
	wait(t, first, false)
	reg.Remove()
	if reg.Rebind(first) {
		t.Fatal("Rebind after Remove succeeded")
	}
}

// Delete takes the descriptor out of the kernel's interest list, not only
// the handler's slot: adding it again succeeds, where EPOLL_CTL_ADD of a
// descriptor still watched fails with EEXIST.
func TestDeleteLeavesTheKernel(t *testing.T) {
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a, _ := pair(t)
	fd := fdOf(t, a)
	r, err := p.Add(fd, make(chanHandler, 1))
	if err != nil {
		t.Fatal(err)
	}
	r.Remove()
	if _, err := p.Add(fd, make(chanHandler, 1)); err == nil {
		t.Fatal("Remove took the descriptor out of the kernel: the test cannot tell Delete from it")
	}
	r2, err := p.Add(dupFD(t, fd), make(chanHandler, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Delete(); err != nil {
		t.Fatal(err)
	}
	if n := p.Len(); n != 0 {
		t.Fatalf("%d watched after Delete, want 0", n)
	}
	if _, err := p.Add(r2.FD(), make(chanHandler, 1)); err != nil {
		t.Fatalf("adding a deleted descriptor again: %v", err)
	}
}

func dupFD(t *testing.T, fd int) int {
	t.Helper()
	d, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(d) })
	return d
}
