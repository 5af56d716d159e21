package balancer

import (
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
)

// Bounded-load accounting.
//
// A bounded-load pick compares a backend's live sessions with
// ceil(c × (S+1) × w / W), where S is the pool's total of live sessions and W
// the weight of its available backends. Summing those over the pool on every
// pick would cost O(backends), so each bounded pool keeps a loadGroup with
// both totals, and every member Backend adds to the groups it belongs to when
// its session count or availability changes. The Backend's mutex makes "join
// a group and add my current count to it" atomic with respect to Acquire and
// Release, so totals never drift.

// loadGroup holds the running totals of one published pool snapshot.
type loadGroup struct {
	sessions    atomic.Int64 // live sessions on all members
	availWeight atomic.Int64 // weights of the members that are usable
}

// membership is one group a Backend counts in, with its weight in that pool.
type membership struct {
	g      *loadGroup
	weight int64
}

// attach adds b to g with weight w, counting b's current sessions and, if it
// is usable, its weight.
func (b *Backend) attach(g *loadGroup, w int64) {
	b.mu.Lock()
	b.groups = append(b.groups, membership{g: g, weight: w})
	g.sessions.Add(b.sessions.Load())
	if b.state.Load() == 0 {
		g.availWeight.Add(w)
	}
	b.mu.Unlock()
}

// detach removes b from g, taking back what attach counted.
func (b *Backend) detach(g *loadGroup) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, m := range b.groups {
		if m.g != g {
			continue
		}
		g.sessions.Add(-b.sessions.Load())
		if b.state.Load() == 0 {
			g.availWeight.Add(-m.weight)
		}
		last := len(b.groups) - 1
		b.groups[i] = b.groups[last]
		b.groups[last] = membership{}
		b.groups = b.groups[:last]
		return
	}
}

// attachment records which group a pool's current snapshot uses and on which
// backends, so that Update and the pool's cleanup can detach it.
type attachment struct {
	mu      sync.Mutex
	g       *loadGroup
	members []*Backend
}

// swap records g on members as current and detaches the previous group.
func (a *attachment) swap(g *loadGroup, members []*Backend) {
	a.mu.Lock()
	oldG, oldMembers := a.g, a.members
	a.g, a.members = g, members
	a.mu.Unlock()
	if oldG == nil {
		return
	}
	for _, b := range oldMembers {
		b.detach(oldG)
	}
}

// release detaches the current group; it runs when its Pool is collected.
func (a *attachment) release() { a.swap(nil, nil) }

// fixedOne is 1.0 in the 32.32 fixed point used for the load factor.
const fixedOne = 1 << 32

// maxLoadFactor caps BoundedLoad: anything larger bounds nothing in practice,
// and the cap keeps the fixed-point arithmetic within 128 bits.
const maxLoadFactor = 1 << 20

// loadFactor converts BoundedLoad to 32.32 fixed point, rounding down so that
// the bound enforced is never looser than the one configured. It returns 0
// (bounded loads off) for c < 1 and NaN.
func loadFactor(c float64) uint64 {
	if !(c >= 1) {
		return 0
	}
	if c > maxLoadFactor {
		c = maxLoadFactor
	}
	return uint64(math.Floor(c * fixedOne))
}

// bound is the load bound of one pick, read once from the group.
type bound struct {
	c        uint64 // load factor, 32.32 fixed point; 0 means unbounded
	sessions uint64 // S + 1: live sessions in the pool, with the new one
	weight   uint64 // W: weight of the available backends
}

func (t *table) bound() bound {
	if t.c == 0 {
		return bound{}
	}
	s := t.group.sessions.Load()
	if s < 0 {
		s = 0
	}
	w := t.group.availWeight.Load()
	if w < 0 {
		w = 0
	}
	return bound{c: t.c, sessions: uint64(s) + 1, weight: uint64(w)}
}

// admits reports whether a backend with weight w and load live sessions may
// take one more: load < ceil(c × (S+1) × w / W), which for an integer load is
// load × W < c × (S+1) × w, evaluated exactly in 128 bits.
func (bd bound) admits(load int64, w int64) bool {
	if bd.c == 0 || load <= 0 || bd.weight == 0 {
		return true
	}
	lhi, llo := bits.Mul64(uint64(load)*bd.weight, fixedOne)
	rhi, rlo := bits.Mul64(bd.c, bd.sessions*uint64(w))
	return lhi < rhi || lhi == rhi && llo < rlo
}
