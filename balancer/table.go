package balancer

import (
	"cmp"
	"encoding/binary"
	"slices"
	"sync"
	"weak"

	"github.com/cespare/xxhash/v2"
)

// The scheme: weighted rendezvous hashing (highest random weight) over a fixed
// set of slots, with each slot's first preferences precomputed.
//
// A key falls in one of slotCount slots (the top bits of mix64(key)). Each
// slot ranks every backend by a score that depends only on the slot number
// and the backend's address hash; the backend with the best score owns the
// slot, the runner-up is the slot's second choice, and so on. Because the
// score of a (slot, backend) pair never depends on the other backends,
// adding or removing a backend only moves the slots it wins or held, and the
// order in which backends were listed does not matter. Weights use the
// logarithmic method (Schindelhauer and Schomaker): the score is -log(u)/w,
// lowest first, with u uniform in (0, 1), so a backend wins a slot with
// probability w/Σw. The logarithm is computed in integer fixed point (see
// neglog2), so every architecture ranks alike.
//
// The table caches, per slot, the first `candidates` backends of that order,
// so a pick reads a few bytes; when all of them are unusable (or full, or
// already tried) the pick computes the slot's full order on the fly.

const (
	slotBits  = 16
	slotCount = 1 << slotBits
	// candidates is how many preferences are cached per slot: with 10% of
	// the backends down, 1 pick in 10,000 falls through to a scan.
	candidates = 4
	// maxMembers is the most backends with a positive weight a pool ranks
	// (indexes are uint16); the ones with the greatest addresses beyond it
	// are left out.
	maxMembers = 1<<16 - 1
)

// member is a backend a pool may pick, with what ranking it needs.
type member struct {
	b      *Backend
	h      uint64 // hash of the address
	weight int64  // clamped weight, > 0
}

// table is one immutable snapshot of a pool, published whole.
type table struct {
	backends []*Backend   // as configured, first occurrence of each address
	members  []member     // backends with a positive weight, by address
	weights  []int64      // the weight of each of backends in this pool
	slots    []uint16     // slotCount × candidates indexes into members
	ranked   *rankedSlots // owns slots (possibly shared with other tables)
	weighted bool         // weights differ (else scores skip the logarithm)
	c        uint64       // bounded-load factor (32.32 fixed point), 0 = off
	group    *loadGroup   // load totals when c != 0
}

// newTable builds the snapshot for cfg. It is the expensive part of NewPool
// and Update: slotCount × len(members) scores, unless a live snapshot has
// the same members and weights (a reload that left the pool as it was),
// whose slots are then shared.
func newTable(cfg PoolConfig) *table {
	t := &table{c: loadFactor(cfg.BoundedLoad)}
	seen := make(map[string]struct{}, len(cfg.Backends))
	for i, b := range cfg.Backends {
		if b == nil {
			continue
		}
		if _, dup := seen[b.Addr]; dup {
			continue
		}
		seen[b.Addr] = struct{}{}
		w := clampWeight(b.Weight)
		if cfg.Weights != nil && i < len(cfg.Weights) {
			w = clampWeight(cfg.Weights[i])
		}
		t.backends = append(t.backends, b)
		t.weights = append(t.weights, w)
		if w > 0 {
			t.members = append(t.members, member{b: b, h: HashString(b.Addr), weight: w})
		}
	}
	slices.SortFunc(t.members, func(x, y member) int { return cmp.Compare(x.b.Addr, y.b.Addr) })
	if len(t.members) > maxMembers {
		t.members = t.members[:maxMembers]
	}
	for _, m := range t.members {
		if m.weight != t.members[0].weight {
			t.weighted = true
			break
		}
	}
	if t.c != 0 {
		t.group = new(loadGroup)
	}
	if len(t.members) > 0 {
		t.ranked = slotsFor(t)
		t.slots = t.ranked.slots
	}
	return t
}

// rankedSlots is the slot table of one set of members and weights, shared by
// every snapshot of that set.
type rankedSlots struct {
	addrs   []string // members' addresses, sorted
	weights []int64
	slots   []uint16
}

// slotCache finds the rankedSlots of a member set still in use, so that
// reloads rebuilding unchanged pools (with NewPool or Update) skip the work.
// It holds them weakly: a set no snapshot uses any more is collected.
var slotCache struct {
	mu sync.Mutex
	m  map[uint64]weak.Pointer[rankedSlots]
}

// slotsFor returns the slot table for t's members, from the cache or built.
func slotsFor(t *table) *rankedSlots {
	var d xxhash.Digest
	d.Reset()
	var w [8]byte
	for _, m := range t.members {
		d.WriteString(m.b.Addr)
		binary.LittleEndian.PutUint64(w[:], uint64(m.weight))
		d.Write(w[:])
	}
	key := d.Sum64()
	same := func(rs *rankedSlots) bool {
		if rs == nil || len(rs.addrs) != len(t.members) {
			return false
		}
		for i, m := range t.members {
			if rs.addrs[i] != m.b.Addr || rs.weights[i] != m.weight {
				return false
			}
		}
		return true
	}
	slotCache.mu.Lock()
	rs := slotCache.m[key].Value()
	slotCache.mu.Unlock()
	if same(rs) {
		return rs
	}

	rs = &rankedSlots{slots: make([]uint16, slotCount*candidates)}
	for _, m := range t.members {
		rs.addrs = append(rs.addrs, m.b.Addr)
		rs.weights = append(rs.weights, m.weight)
	}
	for s := range uint32(slotCount) {
		t.rankSlot(s, (*[candidates]uint16)(rs.slots[s*candidates:]))
	}

	slotCache.mu.Lock()
	defer slotCache.mu.Unlock()
	if slotCache.m == nil {
		slotCache.m = make(map[uint64]weak.Pointer[rankedSlots])
	}
	for k, p := range slotCache.m {
		if p.Value() == nil {
			delete(slotCache.m, k)
		}
	}
	slotCache.m[key] = weak.Make(rs)
	return rs
}

// rankSlot fills top with the first preferences of slot s, best first. With
// fewer members than candidates, the last one repeats.
func (t *table) rankSlot(s uint32, top *[candidates]uint16) {
	seed := slotSeed(s)
	n := 0
	if t.weighted {
		var best [candidates]score
		for i := range t.members {
			m := &t.members[i]
			if n == candidates {
				// Skip the logarithm when even the lowest cost of
				// the hash's bucket cannot beat the last candidate.
				h := mix64(seed ^ m.h)
				floor := score{neglog2Floor[h>>(64-floorBits)], uint64(m.weight)}
				if !floor.before(best[candidates-1]) {
					continue
				}
			}
			r := t.score(seed, m)
			if n == candidates && !r.before(best[candidates-1]) {
				continue
			}
			n = insert(&best, top, n, r, uint16(i), score.before)
		}
	} else {
		// score, inlined: the highest mixed hash first.
		var best [candidates]uint64
		for i := range t.members {
			h := mix64(seed ^ t.members[i].h)
			if n == candidates && h <= best[candidates-1] {
				continue
			}
			n = insert(&best, top, n, h, uint16(i), func(a, b uint64) bool { return a > b })
		}
	}
	for j := n; j < candidates; j++ {
		top[j] = top[n-1]
	}
}

// insert puts r, the score of member i, into best and top, sorted lists of
// n entries, and returns their new length. Strictly better moves up: on a
// tie the lower index, that is the lower address, keeps the better place.
func insert[S any](best *[candidates]S, top *[candidates]uint16, n int, r S, i uint16, before func(a, b S) bool) int {
	p := n
	if n < candidates {
		n++
	} else {
		p = candidates - 1
	}
	for p > 0 && before(r, best[p-1]) {
		best[p], top[p] = best[p-1], top[p-1]
		p--
	}
	best[p], top[p] = r, i
	return n
}

// slotOf returns the slot of key. Keys are mixed first so that callers may
// pass any uint64 (a session number, say), not only Hash outputs.
func slotOf(key uint64) uint32 { return uint32(mix64(key) >> (64 - slotBits)) }

// slotSeed returns the value slot s combines with address hashes.
func slotSeed(s uint32) uint64 { return mix64(uint64(s) + 0x9e3779b97f4a7c15) }

// score is a rendezvous score, cost/weight: lower is preferred.
type score struct{ cost, weight uint64 }

// before reports whether a is preferred to b. Weighted, cost < 2^39 and
// weight < 2^20, so the cross products are exact; unweighted, weight is 1.
func (a score) before(b score) bool { return a.cost*b.weight < b.cost*a.weight }

// score returns m's score in the slot with the given seed: -log2(u)/w with
// u = mix64(seed ^ address hash) / 2^64. When all weights are equal, the
// mixed hash alone orders the members (highest first), the same order
// save for ties of the fixed-point logarithm, so going from equal to unequal
// weights does not reshuffle the backends whose weight is unchanged.
func (t *table) score(seed uint64, m *member) score {
	h := mix64(seed ^ m.h)
	if !t.weighted {
		return score{cost: ^h, weight: 1}
	}
	return score{cost: neglog2(h | 1), weight: uint64(m.weight)}
}

// scan ranks every member for slot s and returns the best usable one not in
// tried that the bound admits, or failing that the best usable one not in
// tried (a bound can be overshot by concurrent picks), or nil. It is the
// slow path of a pick: O(members).
func (t *table) scan(s uint32, tried []*Backend, bd bound) *Backend {
	seed := slotSeed(s)
	var admitted, usable *member
	var admittedScore, usableScore score
	for i := range t.members {
		m := &t.members[i]
		if !m.b.usable() || isTried(tried, m.b) {
			continue
		}
		r := t.score(seed, m)
		if usable == nil || r.before(usableScore) {
			usable, usableScore = m, r
		}
		if (admitted == nil || r.before(admittedScore)) && bd.admits(m.b.sessions.Load(), m.weight) {
			admitted, admittedScore = m, r
		}
	}
	switch {
	case admitted != nil:
		return admitted.b
	case usable != nil:
		return usable.b
	}
	return nil
}

// order returns every member for slot s, best first: the full preference
// order (for tests and tools; O(members log members)).
func (t *table) order(s uint32) []*Backend {
	seed := slotSeed(s)
	idx := make([]int, len(t.members))
	scores := make([]score, len(t.members))
	for i := range t.members {
		idx[i] = i
		scores[i] = t.score(seed, &t.members[i])
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case scores[a].before(scores[b]):
			return -1
		case scores[b].before(scores[a]):
			return 1
		}
		return 0
	})
	out := make([]*Backend, len(idx))
	for i, j := range idx {
		out[i] = t.members[j].b
	}
	return out
}

func isTried(tried []*Backend, b *Backend) bool {
	for _, x := range tried {
		if x == b {
			return true
		}
	}
	return false
}
