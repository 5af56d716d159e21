package balancer

import (
	"sync"
	"sync/atomic"
)

// Bits of Backend.state. The zero state is healthy and not draining.
const (
	stateDown     uint32 = 1 << iota // failed its health check
	stateDraining                    // takes no new sessions, keeps its live ones
)

// maxWeight caps Backend.Weight so that bounded-load arithmetic cannot
// overflow; larger weights are treated as maxWeight. It matches the
// largest weight the configuration accepts (config.MaxWeight), which
// this package does not import.
const maxWeight = 1_000_000

// Backend is one upstream server. Its runtime state (health, draining, live
// sessions) is kept in atomics and survives configuration reloads when the
// Backend is obtained from a Registry. A Backend must not be copied after
// first use.
//
// The zero Backend (with Addr and Weight set) is healthy, not draining and
// has no live session.
type Backend struct {
	// Addr identifies the backend ("host:port"). Pools hash it to place the
	// backend and a Registry keys by it. It must not change once the
	// Backend is in use.
	Addr string

	// Weight is the backend's share of new sessions relative to the other
	// backends of its pool. 0 or less means draining by configuration: the
	// backend takes no new session. Values above 1,000,000 count as
	// 1,000,000.
	//
	// Weight is configuration, not runtime state: a pool reads it when
	// built (NewPool, Update) and keeps its own copy, so a change takes
	// effect at the next Update, and Pick never reads the field. Write it
	// from the goroutine that then calls Update, while no other goroutine
	// calls Available.
	Weight int

	state    atomic.Uint32
	sessions atomic.Int64

	// mu serialises the session count and availability with the load
	// accounting of the bounded-load pools holding this backend, so that
	// a pool's totals never drift (see load.go).
	mu     sync.Mutex
	groups []membership
}

// usable reports whether b is healthy and not draining: what pools check on
// every pick (the weight being part of the pool's snapshot).
func (b *Backend) usable() bool { return b.state.Load() == 0 }

// Available reports whether b may take new sessions: healthy, not draining
// and with a positive Weight.
func (b *Backend) Available() bool { return b.usable() && b.Weight > 0 }

// Healthy reports the last health state set; a new Backend is healthy.
func (b *Backend) Healthy() bool { return b.state.Load()&stateDown == 0 }

// SetHealthy records the outcome of a health check. An unhealthy backend
// takes no new sessions; the keys that preferred it go to their next
// backend and come back when it is healthy again.
func (b *Backend) SetHealthy(up bool) {
	if up {
		b.setState(0, stateDown)
	} else {
		b.setState(stateDown, 0)
	}
}

// Draining reports whether b is draining.
func (b *Backend) Draining() bool { return b.state.Load()&stateDraining != 0 }

// SetDraining marks b as draining (it keeps its live sessions but takes no
// new one) or not.
func (b *Backend) SetDraining(draining bool) {
	if draining {
		b.setState(stateDraining, 0)
	} else {
		b.setState(0, stateDraining)
	}
}

// setState sets then clears state bits, and moves b's weight in or out of the
// available weight of its bounded-load pools when its availability changes.
func (b *Backend) setState(set, clear uint32) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.state.Load()
	next := (old | set) &^ clear
	if next == old {
		return
	}
	b.state.Store(next)
	if (old == 0) == (next == 0) {
		return
	}
	for _, m := range b.groups {
		if next == 0 {
			m.g.availWeight.Add(m.weight)
		} else {
			m.g.availWeight.Add(-m.weight)
		}
	}
}

// Sessions returns the number of live sessions on b.
func (b *Backend) Sessions() int64 { return b.sessions.Load() }

// Acquire counts one more live session on b. Call it once a session is
// placed on b (after Pick), and Release exactly once when it ends.
func (b *Backend) Acquire() {
	b.mu.Lock()
	b.sessions.Add(1)
	for _, m := range b.groups {
		m.g.sessions.Add(1)
	}
	b.mu.Unlock()
}

// Release counts one live session less on b. A Release without a matching
// Acquire (the count is already 0) is ignored.
func (b *Backend) Release() {
	b.mu.Lock()
	if b.sessions.Load() > 0 {
		b.sessions.Add(-1)
		for _, m := range b.groups {
			m.g.sessions.Add(-1)
		}
	}
	b.mu.Unlock()
}

// clampWeight returns the weight a pool uses for w.
func clampWeight(w int) int64 {
	switch {
	case w <= 0:
		return 0
	case w > maxWeight:
		return maxWeight
	}
	return int64(w)
}
