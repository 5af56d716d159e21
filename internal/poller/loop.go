package poller

import (
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Wait says how a poller's loop waits for events.
type Wait int

const (
	// Parked loops park their goroutine on the Go runtime's poller, which
	// watches the epoll descriptor, and then take the events with a
	// non-blocking epoll_wait: two wake-ups per batch, but the loop holds
	// no OS thread and no scheduler slot while it waits. It suits any
	// GOMAXPROCS, tests and short-lived pollers.
	Parked Wait = iota
	// Locked loops run on a goroutine locked to its OS thread that
	// blocks in epoll_wait, one wake-up per batch, as an nginx worker
	// does. The blocked thread is in a system call as far as the Go
	// scheduler knows, but its scheduler slot is only taken back by the
	// runtime's monitor, after up to milliseconds: give GOMAXPROCS room
	// beyond the number of Locked loops, or goroutines the handlers start
	// wait for it.
	Locked
)

// String names the mode as the configuration spells it.
func (w Wait) String() string {
	switch w {
	case Parked:
		return "parked"
	case Locked:
		return "locked"
	}
	return "unknown"
}

// Config says how a poller's loop runs. The zero value is a Parked loop.
type Config struct {
	// Wait is how the loop waits for events; zero means Parked.
	Wait Wait
	// Spin, for a Locked loop, is how long it goes on polling without
	// blocking once a batch is done before it blocks in epoll_wait: a
	// message arriving meanwhile costs no wake-up, at the price of the
	// CPU spent polling. Zero means no spinning.
	Spin time.Duration
}

// wakeToken marks the eventfd that wakes a Locked loop for Close. No
// registration has it: generations start at 1 and a slot index is below
// 2^32-1.
const wakeToken = ^uint64(0)

// Loop is the goroutine dispatching a poller's events.
type Loop struct {
	p        *Poller
	events   []unix.EpollEvent
	ready    []Handler
	next     int // ready[next:] are still to be dispatched
	detached bool

	// Parked loops: the callback for the runtime's poller and what it
	// took.
	take func(uintptr) bool
	n    int
	werr error
}

// Detach gives the loop to a new goroutine, which dispatches the rest of
// the batch and goes on waiting for events, while the calling goroutine,
// once its handler returns, ends. The handler may then block as long as it
// needs: on a Locked loop Detach unlocks the caller's OS thread first, so
// it goes on as an ordinary goroutine, and the new loop goroutine locks a
// thread of its own. Detach must be called from the handler, on the loop
// goroutine; calling it again does nothing.
func (l *Loop) Detach() {
	if l.detached {
		return
	}
	l.detached = true
	l.p.detaches.Add(1)
	if l.p.cfg.Wait == Locked {
		runtime.UnlockOSThread()
	}
	nl := &Loop{p: l.p, events: l.events, ready: l.ready, next: l.next}
	go l.p.run(nl)
}

// Poller is the poller whose events l dispatches.
func (l *Loop) Poller() *Poller { return l.p }

// Later has h's Ready run on the loop once the running handler has
// returned, in the same batch, as if an event for h had come with it: a
// handler hands work to another handler without a goroutine or a system
// call, and without holding its own locks while that work runs. Later
// must be called from a handler, on the loop goroutine; on a loop that
// handler detached, h runs on a goroutine of its own instead.
func (l *Loop) Later(h Handler) {
	if l.detached {
		go h.Ready(l)
		return
	}
	l.ready = append(l.ready, h)
}

// run is the loop goroutine: it dispatches what is left of l's batch,
// waits for events as the poller's Config says, hands each to its
// handler, and so on. It returns when the poller closes or a handler
// detached it.
func (p *Poller) run(l *Loop) {
	locked := p.cfg.Wait == Locked
	if locked {
		runtime.LockOSThread()
	}
	for {
		for l.next < len(l.ready) {
			h := l.ready[l.next]
			l.ready[l.next] = nil
			l.next++
			h.Ready(l)
			if l.detached {
				return // l's slices belong to the new loop now; Detach unlocked
			}
		}
		var n int
		var err error
		if locked {
			n, err = p.waitBlocking(l.events)
		} else {
			n, err = p.waitParked(l)
		}
		if err != nil || p.closed.Load() || !p.collect(l, n) {
			if locked {
				runtime.UnlockOSThread()
			}
			close(p.done)
			return
		}
	}
}

// waitParked parks on the runtime's poller until the epoll descriptor is
// readable, then takes its events.
func (p *Poller) waitParked(l *Loop) (int, error) {
	if l.take == nil {
		// Made once per loop goroutine: a closure made per wait would
		// escape to the heap, an allocation per batch.
		l.take = l.takeEvents
	}
	l.n, l.werr = 0, nil
	err := p.rc.Read(l.take)
	if err == nil {
		err = l.werr
	}
	return l.n, err
}

// takeEvents is the Parked loop's callback for the runtime's poller: it
// takes the events without blocking and reports whether there were any.
func (l *Loop) takeEvents(fd uintptr) bool {
	for {
		l.n, l.werr = epollPoll(int(fd), l.events)
		if l.werr != unix.EINTR {
			break
		}
	}
	return l.n > 0 || l.werr != nil
}

// waitBlocking takes events, spinning first if the Config says so, then
// blocking in epoll_wait on the loop's locked thread. The blocking call
// goes through unix.EpollWait (Syscall6), so the scheduler knows the
// thread is in a system call and may give its slot away.
func (p *Poller) waitBlocking(events []unix.EpollEvent) (int, error) {
	if p.cfg.Spin > 0 {
		start := time.Now()
		for {
			n, err := epollPoll(p.epfd, events)
			if n > 0 || (err != nil && err != unix.EINTR) {
				return n, err
			}
			if time.Since(start) >= p.cfg.Spin {
				break
			}
		}
	}
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// epollPoll is epoll_wait with a zero timeout as a raw system call: it
// never blocks, so the scheduler need not hear of it.
func epollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// collect turns the n events taken into l's batch of handlers. It reports
// false when the batch holds the wake-up of Close.
func (p *Poller) collect(l *Loop, n int) bool {
	l.ready, l.next = l.ready[:0], 0
	open := true
	p.mu.RLock()
	for i := 0; i < n; i++ {
		token := getToken(&l.events[i])
		if token == wakeToken {
			open = false
			continue
		}
		idx, gen := uint32(token), uint32(token>>32)
		if int(idx) < len(p.slots) && p.slots[idx].gen == gen && p.slots[idx].h != nil {
			l.ready = append(l.ready, p.slots[idx].h)
		}
	}
	p.mu.RUnlock()
	return open
}
