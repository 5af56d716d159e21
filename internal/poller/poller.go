// Package poller tells when idle sockets become readable, so that a
// WebSocket session waiting for data holds neither a goroutine nor a buffer.
//
// A Poller owns one epoll instance in edge-triggered mode and one goroutine
// at a time that waits on it: its event loop. Sockets stay owned by the Go
// runtime (their net.Conn keeps working as usual, including blocking writes
// through the runtime's poller); this package only watches their file
// descriptors. On readiness it calls the registered Handler's Ready method
// on the loop goroutine.
//
// Ready may do its work right there, as an event loop does: that saves a
// goroutine start and a scheduler hand-off per event, which is most of what
// a relay spends outside the kernel. Work that may block must not hold up
// the other descriptors of the poller, so before blocking a handler calls
// Loop.Detach: a new goroutine takes over the loop at once, with the rest
// of the batch, and the detached one finishes the handler's work and ends.
//
// Add, Remove and Close are safe for concurrent use. Ready may be called
// after Remove returned for events already taken from the kernel, never for
// a registration whose slot has been reused (each registration carries a
// generation).
package poller

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Handler receives readiness notifications.
type Handler interface {
	// Ready is called on the loop goroutine l when the descriptor may have
	// become readable, or has hung up or failed. It must call l.Detach
	// before anything that may block, and must not keep l once it returns.
	Ready(l *Loop)
}

// Loop is the goroutine dispatching a poller's events.
type Loop struct {
	p        *Poller
	events   []unix.EpollEvent
	ready    []Handler
	next     int // ready[next:] are still to be dispatched
	detached bool
}

// Detach gives the loop to a new goroutine, which dispatches the rest of
// the batch and goes on waiting for events, while the calling goroutine,
// once its handler returns, ends. The handler may then block as long as it
// needs. Detach must be called from the handler, on the loop goroutine;
// calling it again does nothing.
func (l *Loop) Detach() {
	if l.detached {
		return
	}
	l.detached = true
	l.p.detaches.Add(1)
	nl := &Loop{p: l.p, events: l.events, ready: l.ready, next: l.next}
	go l.p.run(nl)
}

// ErrClosed is returned by Add after Close.
var ErrClosed = errors.New("poller: closed")

// Registration identifies one watched descriptor.
type Registration struct {
	p     *Poller
	fd    int
	token uint64
}

type slot struct {
	h   Handler
	gen uint32
}

// Poller watches descriptors with one epoll instance.
type Poller struct {
	epfd int
	file *os.File // epfd, registered with the Go runtime's poller
	rc   syscall.RawConn

	mu       sync.RWMutex
	slots    []slot
	free     []uint32
	closed   atomic.Bool
	done     chan struct{}
	detaches atomic.Int64
}

// New creates a poller and starts its goroutine.
//
// The epoll descriptor is itself watched by the Go runtime's poller, so
// the poller goroutine parks like any goroutine waiting on a socket rather
// than blocking a thread in epoll_wait: a blocked thread would keep its
// scheduler slot, and goroutines the poller starts could wait for the
// runtime's monitor to take that slot back.
func New() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("poller: epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("poller: set nonblock: %w", err)
	}
	f := os.NewFile(uintptr(epfd), "epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("poller: %w", err)
	}
	p := &Poller{epfd: epfd, file: f, rc: rc, done: make(chan struct{})}
	go p.run(&Loop{p: p, events: make([]unix.EpollEvent, 256), ready: make([]Handler, 0, 256)})
	return p, nil
}

// Flags choose what a registration reports beyond readability and
// hang-ups.
type Flags uint32

const (
	// Writable also reports when the socket can take more bytes: a
	// non-blocking connect that completed or failed, or room in a send
	// buffer that was full.
	Writable Flags = 1 << iota
	// Exclusive wakes only one of the pollers watching the same
	// descriptor (EPOLLEXCLUSIVE): for a listening socket every loop
	// accepts from. An Exclusive registration cannot be modified.
	Exclusive
)

func (f Flags) events() uint32 {
	ev := uint32(unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET)
	if f&Writable != 0 {
		ev |= unix.EPOLLOUT
	}
	if f&Exclusive != 0 {
		// The kernel takes no EPOLLRDHUP beside EPOLLEXCLUSIVE; a
		// listening socket has no peer to hang up anyway.
		ev = ev&^unix.EPOLLRDHUP | unix.EPOLLEXCLUSIVE
	}
	return ev
}

// Add starts watching fd for readability and hang-ups, edge-triggered: h is
// told when new data arrives, so its reader must read until the socket has
// nothing more (a short read counts) before it can count on another call.
func (p *Poller) Add(fd int, h Handler) (Registration, error) {
	return p.AddFlags(fd, 0, h)
}

// AddFlags is Add with more to report, as f says.
func (p *Poller) AddFlags(fd int, f Flags, h Handler) (Registration, error) {
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		return Registration{}, ErrClosed
	}
	var idx uint32
	if n := len(p.free); n > 0 {
		idx = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		idx = uint32(len(p.slots))
		p.slots = append(p.slots, slot{})
	}
	s := &p.slots[idx]
	s.gen++
	s.h = h
	token := uint64(s.gen)<<32 | uint64(idx)
	p.mu.Unlock()

	ev := unix.EpollEvent{Events: f.events()}
	putToken(&ev, token)
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		p.release(token)
		return Registration{}, fmt.Errorf("poller: epoll_ctl add: %w", err)
	}
	return Registration{p: p, fd: fd, token: token}, nil
}

// Modify changes what the registration reports, keeping its handler: for
// instance a connect that completed no longer needs Writable. Edge
// triggering starts over, so the handler hears of data already waiting.
func (r Registration) Modify(f Flags) error {
	if r.p == nil {
		return ErrClosed
	}
	ev := unix.EpollEvent{Events: f.events()}
	putToken(&ev, r.token)
	if err := unix.EpollCtl(r.p.epfd, unix.EPOLL_CTL_MOD, r.fd, &ev); err != nil {
		return fmt.Errorf("poller: epoll_ctl mod: %w", err)
	}
	return nil
}

// Rebind makes h the registration's handler from the next batch of events
// on, without a system call: a connection whose handshake was driven by
// one handler goes on with another (its relay). Events of the current
// batch may still reach the old handler. It reports false if the
// registration was removed.
func (r Registration) Rebind(h Handler) bool {
	if r.p == nil {
		return false
	}
	idx, gen := uint32(r.token), uint32(r.token>>32)
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	if int(idx) >= len(r.p.slots) || r.p.slots[idx].gen != gen || r.p.slots[idx].h == nil {
		return false
	}
	r.p.slots[idx].h = h
	return true
}

// Poller reports the poller the registration belongs to.
func (r Registration) Poller() *Poller { return r.p }

// FD reports the watched descriptor.
func (r Registration) FD() int { return r.fd }

// Remove stops calling the handler. It must be called before the
// descriptor is closed, and the descriptor must then be closed: the kernel
// drops the registration itself when the socket is released, which saves
// an epoll_ctl call per socket. Until then its events are ignored, since
// they carry the old registration's generation, and a reused descriptor
// number is a new registration of its own.
func (r Registration) Remove() {
	if r.p == nil {
		return
	}
	r.p.release(r.token)
}

func (p *Poller) release(token uint64) {
	idx, gen := uint32(token), uint32(token>>32)
	p.mu.Lock()
	if int(idx) < len(p.slots) && p.slots[idx].gen == gen && p.slots[idx].h != nil {
		p.slots[idx].h = nil
		p.free = append(p.free, idx)
	}
	p.mu.Unlock()
}

// Len reports how many descriptors are watched.
func (p *Poller) Len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.slots) - len(p.free)
}

// Close stops the poller goroutine and releases the epoll instance. Watched
// descriptors are not closed.
func (p *Poller) Close() error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := p.file.Close() // wakes the parked poller goroutine
	<-p.done
	return err
}

// Detaches reports how many times a handler gave the loop away before
// blocking.
func (p *Poller) Detaches() int64 { return p.detaches.Load() }

// run is the loop goroutine: it dispatches what is left of l's batch, then
// takes events without blocking, hands each to its handler, and parks on
// the runtime's poller when there are none. It returns when the poller
// closes or a handler detached it.
func (p *Poller) run(l *Loop) {
	for {
		for l.next < len(l.ready) {
			h := l.ready[l.next]
			l.ready[l.next] = nil
			l.next++
			h.Ready(l)
			if l.detached {
				return // l's slices belong to the new loop now
			}
		}
		var n int
		var werr error
		err := p.rc.Read(func(fd uintptr) bool {
			for {
				n, werr = unix.EpollWait(int(fd), l.events, 0)
				if werr != unix.EINTR {
					break
				}
			}
			return n > 0 || werr != nil
		})
		if err != nil || werr != nil || p.closed.Load() {
			close(p.done)
			return
		}
		l.ready, l.next = l.ready[:0], 0
		p.mu.RLock()
		for i := 0; i < n; i++ {
			token := getToken(&l.events[i])
			idx, gen := uint32(token), uint32(token>>32)
			if int(idx) < len(p.slots) && p.slots[idx].gen == gen && p.slots[idx].h != nil {
				l.ready = append(l.ready, p.slots[idx].h)
			}
		}
		p.mu.RUnlock()
	}
}

// Group spreads registrations over several pollers.
type Group struct {
	pollers []*Poller
	next    atomic.Uint32
}

// NewGroup starts n pollers; n <= 0 means one per CPU the Go scheduler uses.
func NewGroup(n int) (*Group, error) {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	g := &Group{}
	for i := 0; i < n; i++ {
		p, err := New()
		if err != nil {
			g.Close()
			return nil, err
		}
		g.pollers = append(g.pollers, p)
	}
	return g, nil
}

// Pick returns the next poller in turn.
func (g *Group) Pick() *Poller {
	return g.pollers[int(g.next.Add(1))%len(g.pollers)]
}

// Pollers returns the group's pollers, for a descriptor every one of them
// watches (a listening socket added with Exclusive).
func (g *Group) Pollers() []*Poller { return g.pollers }

// Len reports how many descriptors the group watches.
func (g *Group) Len() int {
	n := 0
	for _, p := range g.pollers {
		n += p.Len()
	}
	return n
}

// Close closes every poller.
func (g *Group) Close() {
	for _, p := range g.pollers {
		p.Close()
	}
}
