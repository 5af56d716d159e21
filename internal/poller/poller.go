// Package poller tells when idle sockets become readable, so that a
// WebSocket session waiting for data holds neither a goroutine nor a buffer.
//
// A Poller owns one epoll instance in edge-triggered mode and one goroutine
// at a time that waits on it: its event loop. Sockets stay owned by their
// users (a net.Conn keeps working as usual, including blocking writes
// through the runtime's poller); this package only watches their file
// descriptors. On readiness it calls the registered Handler's Ready method
// on the loop goroutine.
//
// How the loop waits is the Poller's Config: Parked on the Go runtime's
// poller (the default), or Locked to an OS thread blocking in epoll_wait,
// which saves a wake-up per batch of events but wants GOMAXPROCS above
// the number of such loops (see Locked).
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
	cfg  Config
	epfd int
	// Parked loops: the epoll descriptor, registered with the Go
	// runtime's poller.
	file *os.File
	rc   syscall.RawConn
	// Locked loops: an eventfd in the epoll set, written by Close to wake
	// a loop blocked in epoll_wait (closing the epoll descriptor does not).
	wakefd int

	mu       sync.RWMutex
	slots    []slot
	free     []uint32
	closed   atomic.Bool
	done     chan struct{}
	detaches atomic.Int64
}

// New creates a poller with the default Config and starts its loop.
func New() (*Poller, error) { return NewWith(Config{}) }

// NewWith creates a poller whose loop waits as cfg says, and starts it.
func NewWith(cfg Config) (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("poller: epoll_create1: %w", err)
	}
	p := &Poller{cfg: cfg, epfd: epfd, wakefd: -1, done: make(chan struct{})}
	l := &Loop{p: p, events: make([]unix.EpollEvent, 256), ready: make([]Handler, 0, 256)}
	switch cfg.Wait {
	case Parked:
		if err := unix.SetNonblock(epfd, true); err != nil {
			unix.Close(epfd)
			return nil, fmt.Errorf("poller: set nonblock: %w", err)
		}
		p.file = os.NewFile(uintptr(epfd), "epoll")
		if p.rc, err = p.file.SyscallConn(); err != nil {
			p.file.Close()
			return nil, fmt.Errorf("poller: %w", err)
		}
	case Locked:
		if p.wakefd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			unix.Close(epfd)
			return nil, fmt.Errorf("poller: eventfd: %w", err)
		}
		// Level-triggered: whichever goroutine holds the loop when Close
		// writes, or later, sees it.
		ev := unix.EpollEvent{Events: unix.EPOLLIN}
		putToken(&ev, wakeToken)
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, p.wakefd, &ev); err != nil {
			unix.Close(p.wakefd)
			unix.Close(epfd)
			return nil, fmt.Errorf("poller: epoll_ctl add eventfd: %w", err)
		}
	default:
		unix.Close(epfd)
		return nil, fmt.Errorf("poller: unknown wait mode %d", cfg.Wait)
	}
	go p.run(l)
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

// Delete stops watching the descriptor, in the kernel too, and stops
// calling the handler: for a descriptor that stays open under another
// owner (duplicated into a net.Conn), whose events Remove would leave
// waking the loop.
func (r Registration) Delete() error {
	if r.p == nil {
		return ErrClosed
	}
	err := unix.EpollCtl(r.p.epfd, unix.EPOLL_CTL_DEL, r.fd, nil)
	r.p.release(r.token)
	if err != nil {
		return fmt.Errorf("poller: epoll_ctl del: %w", err)
	}
	return nil
}

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

// Close stops the poller's loop and releases the epoll instance. Watched
// descriptors are not closed. A handler that detached may still be
// running: Close does not wait for it.
func (p *Poller) Close() error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	if p.cfg.Wait == Parked {
		err := p.file.Close() // wakes the parked loop goroutine
		<-p.done
		return err
	}
	var one = [8]byte{1}
	if _, err := unix.Write(p.wakefd, one[:]); err != nil {
		return fmt.Errorf("poller: wake: %w", err)
	}
	<-p.done
	err := unix.Close(p.epfd)
	if cerr := unix.Close(p.wakefd); err == nil {
		err = cerr
	}
	return err
}

// Detaches reports how many times a handler gave the loop away before
// blocking.
func (p *Poller) Detaches() int64 { return p.detaches.Load() }

// Group spreads registrations over several pollers.
type Group struct {
	pollers []*Poller
	next    atomic.Uint32
}

// NewGroup starts n pollers with the default Config; n <= 0 means one per
// CPU (see NewGroupWith).
func NewGroup(n int) (*Group, error) { return NewGroupWith(n, Config{}) }

// NewGroupWith starts n pollers configured by cfg; n <= 0 means one per
// CPU the process may use: GOMAXPROCS, or the number of CPUs if that is
// lower, since GOMAXPROCS may have been raised above it to leave the Go
// scheduler room beside Locked loops.
func NewGroupWith(n int, cfg Config) (*Group, error) {
	if n <= 0 {
		n = min(runtime.GOMAXPROCS(0), runtime.NumCPU())
	}
	g := &Group{}
	for i := 0; i < n; i++ {
		p, err := NewWith(cfg)
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
