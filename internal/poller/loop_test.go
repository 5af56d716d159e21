package poller

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tidHandler reports the OS thread each call runs on.
type tidHandler chan int

func (h tidHandler) Ready(*Loop) {
	select {
	case h <- unix.Gettid():
	default:
	}
}

func recvTid(t *testing.T, h tidHandler) int {
	t.Helper()
	select {
	case tid := <-h:
		return tid
	case <-time.After(5 * time.Second):
		t.Fatal("no readiness")
		return 0
	}
}

// socketpair returns a connected pair of Unix stream sockets, closed at
// the end of the test.
func socketpair(t *testing.T) (a, b int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// inEpollWait reports whether thread tid of this process is blocked in
// epoll_wait on epfd, as /proc says: the system call number and its first
// argument.
func inEpollWait(tid, epfd int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/syscall", tid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return false
	}
	nr, _ := strconv.Atoi(f[0])
	arg, _ := strconv.ParseUint(strings.TrimPrefix(f[1], "0x"), 16, 64)
	return (nr == unix.SYS_EPOLL_PWAIT || nr == unix.SYS_EPOLL_WAIT) && int(arg) == epfd
}

// waitInEpollWait waits, bounded, until thread tid blocks in epoll_wait
// on p's epoll descriptor.
func waitInEpollWait(t *testing.T, tid int, p *Poller) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !inEpollWait(tid, p.epfd) {
		if time.Now().After(deadline) {
			t.Fatalf("thread %d is not blocked in epoll_wait on %d", tid, p.epfd)
		}
		runtime.Gosched()
	}
}

func closeWithin(t *testing.T, p *Poller, d time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(d):
		t.Fatalf("Close did not return within %v", d)
	}
}

// A Locked loop blocks in epoll_wait on its own thread, and Close wakes it.
func TestLockedCloseWakesBlockedLoop(t *testing.T) {
	p, err := NewWith(Config{Wait: Locked})
	if err != nil {
		t.Fatal(err)
	}
	a, b := socketpair(t)
	h := make(tidHandler, 1)
	if _, err := p.Add(b, h); err != nil {
		t.Fatal(err)
	}
	unix.Write(a, []byte("x"))
	tid := recvTid(t, h)
	waitInEpollWait(t, tid, p)
	closeWithin(t, p, 5*time.Second)
	if _, err := p.Add(b, h); err != ErrClosed {
		t.Fatalf("Add after Close: %v", err)
	}
}

// detachingHandler detaches, says on which thread it ran, and blocks until
// released; then it signals that it returned.
type detachingHandler struct {
	tid      chan int
	release  chan struct{}
	returned chan struct{}
}

func (h *detachingHandler) Ready(l *Loop) {
	h.tid <- unix.Gettid()
	l.Detach()
	<-h.release
	close(h.returned)
}

// Detach on a Locked loop: a new goroutine locks a thread, blocks in
// epoll_wait there and serves the other descriptors while the detached
// handler blocks; the detached goroutine ends once its handler returns,
// its thread unlocked (a goroutine that ends locked takes its thread with
// it).
func TestLockedDetachHandsOverTheLoop(t *testing.T) {
	p, err := NewWith(Config{Wait: Locked})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a1, b1 := socketpair(t)
	a2, b2 := socketpair(t)
	dh := &detachingHandler{tid: make(chan int, 1), release: make(chan struct{}), returned: make(chan struct{})}
	if _, err := p.Add(b1, dh); err != nil {
		t.Fatal(err)
	}
	h := make(tidHandler, 1)
	if _, err := p.Add(b2, h); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	unix.Write(a1, []byte("x"))
	oldTid := recvTid(t, dh.tid)

	// The new loop serves b2 on a thread that blocks in epoll_wait
	// between batches and stays the same: it is locked.
	unix.Write(a2, []byte("y"))
	newTid := recvTid(t, h)
	for i := 0; i < 20; i++ {
		waitInEpollWait(t, newTid, p)
		unix.Write(a2, []byte("z"))
		if tid := recvTid(t, h); tid != newTid {
			t.Fatalf("the new loop moved from thread %d to %d", newTid, tid)
		}
	}
	if got := p.Detaches(); got != 1 {
		t.Fatalf("Detaches = %d, want 1", got)
	}

	close(dh.release)
	<-dh.returned
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before the detach: the detached one did not end", runtime.NumGoroutine(), before)
		}
		runtime.Gosched()
	}
	// Close is synchronous with the loop; by then a thread that a locked
	// goroutine took with it at its end is gone.
	closeWithin(t, p, 5*time.Second)
	if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", oldTid)); err != nil {
		t.Fatalf("the detached goroutine's thread %d ended with it: it was still locked (%v)", oldTid, err)
	}
}

// countHandler counts its calls and drains its socket.
type countHandler struct {
	fd    int
	calls atomic.Int64
	seen  *sync.WaitGroup
	once  sync.Once
}

func (h *countHandler) Ready(*Loop) {
	var buf [64]byte
	for {
		if n, _ := unix.Read(h.fd, buf[:]); n <= 0 {
			break
		}
	}
	h.calls.Add(1)
	h.once.Do(h.seen.Done)
}

// Every one of many descriptors, more than one batch holds, is reported,
// across the loops of a group, and a Detach in the middle loses none.
func TestManyDescriptors(t *testing.T) { forEachWait(t, testManyDescriptors) }

func testManyDescriptors(t *testing.T, cfg Config) {
	const n = 600 // over the 256 events a loop takes at a time, per loop
	before := runtime.NumGoroutine()
	g, err := NewGroupWith(2, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var seen sync.WaitGroup
	seen.Add(n)
	writers := make([]int, n)
	hs := make([]*countHandler, n)
	for i := range n {
		a, b := socketpair(t)
		writers[i] = a
		hs[i] = &countHandler{fd: b, seen: &seen}
		var h Handler = hs[i]
		if i == n/2 {
			h = detachThen{hs[i]}
		}
		if _, err := g.Pick().Add(b, h); err != nil {
			t.Fatal(err)
		}
	}
	if g.Len() != n {
		t.Fatalf("Len %d, want %d", g.Len(), n)
	}
	for _, a := range writers {
		if _, err := unix.Write(a, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() { seen.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		missing := 0
		for _, h := range hs {
			if h.calls.Load() == 0 {
				missing++
			}
		}
		t.Fatalf("%d of %d descriptors never reported", missing, n)
	}
	g.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before", runtime.NumGoroutine(), before)
		}
		runtime.Gosched()
	}
}

// detachThen detaches before handing the event on.
type detachThen struct{ h Handler }

func (d detachThen) Ready(l *Loop) {
	l.Detach()
	d.h.Ready(l)
}

// BenchmarkWakeup measures one readiness round trip through a loop: a byte
// written, the handler called, a byte written back.
func BenchmarkWakeup(b *testing.B) {
	for _, cfg := range []Config{{Wait: Parked}, {Wait: Locked}} {
		b.Run(cfg.Wait.String(), func(b *testing.B) {
			p, err := NewWith(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(fds[0])
			defer unix.Close(fds[1])
			unix.SetNonblock(fds[1], true)
			if _, err := p.Add(fds[1], newEchoHandler(fds[1])); err != nil {
				b.Fatal(err)
			}
			buf := []byte{0}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				unix.Write(fds[0], buf)
				unix.Read(fds[0], buf)
			}
		})
	}
}

// echoHandler writes back what its socket received. It owns its buffer:
// one on Ready's stack moves to the heap under -race, where unix.Read is
// not inlined and its argument escapes, an allocation per wake-up that
// would be the test's, not the loop's.
type echoHandler struct {
	fd  int
	buf [64]byte
}

func newEchoHandler(fd int) *echoHandler { return &echoHandler{fd: fd} }

func (h *echoHandler) Ready(*Loop) {
	for {
		n, _ := unix.Read(h.fd, h.buf[:])
		if n <= 0 {
			return
		}
		unix.Write(h.fd, h.buf[:n])
	}
}

// A wake-up, its dispatch and the wait for the next allocate nothing, in
// any mode.
func TestWakeupAllocatesNothing(t *testing.T) { forEachWait(t, testWakeupAllocatesNothing) }

func testWakeupAllocatesNothing(t *testing.T, cfg Config) {
	p, err := NewWith(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	unix.SetNonblock(fds[1], true)
	if _, err := p.Add(fds[1], newEchoHandler(fds[1])); err != nil {
		t.Fatal(err)
	}
	buf := []byte{0}
	allocs := testing.AllocsPerRun(200, func() {
		unix.Write(fds[0], buf)
		unix.Read(fds[0], buf) // blocks until the loop echoed
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per wake-up", allocs)
	}
}

// laterHandler hands work to next with Later, then holds its lock until
// it returns, so that the work cannot run while the handler runs.
type laterHandler struct {
	fd     int
	next   *laterWork
	detach bool
	mu     sync.Mutex
}

func (h *laterHandler) Ready(l *Loop) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var buf [8]byte
	for {
		if n, _ := unix.Read(h.fd, buf[:]); n <= 0 {
			break
		}
	}
	if h.detach {
		l.Detach()
	}
	l.Later(h.next)
}

// laterWork reports the loop it ran on, and checks that the handler that
// scheduled it had returned (unless it detached).
type laterWork struct {
	t     *testing.T
	h     *laterHandler
	ran   chan struct{}
	loops chan *Loop
}

func (w *laterWork) Ready(l *Loop) {
	if !w.h.detach {
		if !w.h.mu.TryLock() {
			w.t.Error("Later's handler ran before the handler that called Later returned")
		} else {
			w.h.mu.Unlock()
		}
	}
	w.loops <- l
	w.ran <- struct{}{}
}

// Later runs a handler on the loop after the one that called it returns,
// in the same batch, on the loop; on a loop the caller detached, on a
// goroutine of its own.
func TestLater(t *testing.T) { forEachWait(t, testLater) }

func testLater(t *testing.T, cfg Config) {
	for _, detach := range []bool{false, true} {
		t.Run(fmt.Sprintf("detach=%v", detach), func(t *testing.T) {
			p, err := NewWith(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			a, b := socketpair(t)
			h := &laterHandler{fd: b, detach: detach}
			w := &laterWork{t: t, h: h, ran: make(chan struct{}, 1), loops: make(chan *Loop, 4)}
			h.next = w
			if _, err := p.Add(b, h); err != nil {
				t.Fatal(err)
			}
			before := p.Detaches()
			for i := 0; i < 3; i++ {
				unix.Write(a, []byte("x"))
				select {
				case <-w.ran:
				case <-time.After(5 * time.Second):
					t.Fatal("the handler given to Later never ran")
				}
				l := <-w.loops
				if l.Poller() != p {
					t.Fatal("Later's handler got a loop of another poller")
				}
				if detach {
					if !l.detached {
						t.Fatal("Later on a detached loop passed a loop still attached")
					}
				} else if l.detached {
					t.Fatal("Later's handler ran on a detached loop")
				}
			}
			want := before
			if detach {
				want += 3
			}
			if got := p.Detaches(); got != want {
				t.Fatalf("Detaches = %d, want %d", got, want)
			}
		})
	}
}
