package balancer

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
)

// ErrNoBackend is what callers return when Pick finds no available backend.
var ErrNoBackend = errors.New("balancer: no available backend")

// PoolConfig configures a Pool. The zero value is an empty pool.
type PoolConfig struct {
	// Backends are the pool's members. Each one's Addr places it and its
	// Weight is read when the pool is built. Order does not matter. An
	// address listed twice counts once (its first occurrence); nil entries
	// are skipped.
	Backends []*Backend

	// Weights, when not nil, are the members' weights in this pool, one per
	// entry of Backends, used instead of each Backend's Weight. A backend
	// shared by pools with different weights (the Registry hands out one
	// per address) gets its weight here, and a reload never writes to a
	// Backend that live pools read.
	Weights []int

	// BoundedLoad is the load factor c of consistent hashing with bounded
	// loads: no backend is given a new session while it holds
	// ceil(c × (S+1) × w / W) or more, where S is the pool's live sessions,
	// w the backend's weight and W the weight of the pool's available
	// backends; the key walks on to its next backend instead. 0 (or any
	// value below 1) turns it off; typical values are 1.25 to 2.
	BoundedLoad float64
}

// Pool picks a backend for a key among its members: weighted consistent
// hashing, skipping unavailable backends and, with BoundedLoad, full ones.
// Pick and PickExcluding take no lock and do not allocate; Update builds a
// new snapshot and publishes it atomically. All methods are safe for
// concurrent use.
type Pool struct {
	mu  sync.Mutex // serialises Update
	cur atomic.Pointer[table]
	att *attachment
}

// NewPool returns a pool built from cfg (see Update for the cost).
func NewPool(cfg PoolConfig) *Pool {
	p := &Pool{att: new(attachment)}
	p.Update(cfg)
	// A pool that is dropped (a route removed by a reload) must stop
	// counting in its backends' bounded-load totals.
	runtime.AddCleanup(p, (*attachment).release, p.att)
	return p
}

// Update replaces the pool's configuration. The new snapshot is built by the
// caller's goroutine (about 40 ms for 100 backends, next to nothing when the
// addresses and weights are unchanged) while picks go on against the old
// one, then swapped in atomically. Keys whose backend stays in the pool keep
// it, except those that move to a backend being added or given more weight.
func (p *Pool) Update(cfg PoolConfig) {
	t := newTable(cfg)
	p.mu.Lock()
	defer p.mu.Unlock()
	var members []*Backend
	if t.group != nil {
		// Count in the new group before it is published, so the first
		// picks against it see the totals.
		members = make([]*Backend, len(t.backends))
		copy(members, t.backends)
		for i, b := range members {
			b.attach(t.group, t.weights[i])
		}
	}
	p.cur.Store(t)
	p.att.swap(t.group, members)
}

// Backends returns the pool's backends as configured (each address once),
// including unavailable ones.
func (p *Pool) Backends() []*Backend {
	t := p.cur.Load()
	out := make([]*Backend, len(t.backends))
	copy(out, t.backends)
	return out
}

// Pick returns the backend for key: the first backend in the key's
// preference order that is healthy, not draining, has a positive weight and,
// with BoundedLoad, is under its bound. It returns nil when no backend is
// available. key is normally Hash or HashString of the session key, or
// KeySpec.Hash; any uint64 works, as it is mixed again.
//
// Pick does not count the session: call Acquire on the backend once it is
// used. With BoundedLoad, concurrent picks read the same totals and may
// overshoot a bound by the number of picks in flight; if every available
// backend is full (only possible through such races), Pick ignores the bound
// rather than fail.
func (p *Pool) Pick(key uint64) *Backend {
	t := p.cur.Load()
	if len(t.members) == 0 {
		return nil
	}
	s := slotOf(key)
	top := (*[candidates]uint16)(t.slots[s*candidates:])
	if t.c == 0 {
		for _, i := range top {
			if b := t.members[i].b; b.usable() {
				return b
			}
		}
		return t.scan(s, nil, bound{})
	}
	bd := t.bound()
	for _, i := range top {
		m := &t.members[i]
		if m.b.usable() && bd.admits(m.b.sessions.Load(), m.weight) {
			return m.b
		}
	}
	return t.scan(s, nil, bd)
}

// PickExcluding is Pick skipping the backends in tried: the next backend in
// key's preference order, for a retry after a failed connect. It returns nil
// when every available backend has been tried.
func (p *Pool) PickExcluding(key uint64, tried []*Backend) *Backend {
	t := p.cur.Load()
	if len(t.members) == 0 {
		return nil
	}
	s := slotOf(key)
	top := (*[candidates]uint16)(t.slots[s*candidates:])
	bd := t.bound()
	for _, i := range top {
		m := &t.members[i]
		if m.b.usable() && !isTried(tried, m.b) && bd.admits(m.b.sessions.Load(), m.weight) {
			return m.b
		}
	}
	return t.scan(s, tried, bd)
}

// PickUnbounded is Pick without the load bound: the first backend in key's
// preference order that is healthy, not draining and has a positive weight,
// whatever the loads. Requests that belong to a session placed by the plain
// hash (a client's long-polls, and the upgrade that continues them) use it,
// so that a bound reached between two of them does not send the next one to
// another backend. Without BoundedLoad it is Pick.
func (p *Pool) PickUnbounded(key uint64) *Backend {
	t := p.cur.Load()
	if len(t.members) == 0 {
		return nil
	}
	s := slotOf(key)
	top := (*[candidates]uint16)(t.slots[s*candidates:])
	for _, i := range top {
		if b := t.members[i].b; b.usable() {
			return b
		}
	}
	return t.scan(s, nil, bound{})
}
