package balancer

import (
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
)

func TestLoadFactor(t *testing.T) {
	tests := []struct {
		in   float64
		want uint64
	}{
		{0, 0},
		{-1, 0},
		{0.99, 0},
		{math.NaN(), 0},
		{1, 1 << 32},
		{1.25, 5 << 30},
		{2, 2 << 32},
		{math.Inf(1), maxLoadFactor << 32},
	}
	for _, tc := range tests {
		if got := loadFactor(tc.in); got != tc.want {
			t.Errorf("loadFactor(%v) = %#x, want %#x", tc.in, got, tc.want)
		}
	}
}

// exactCap is ceil(num/den × sessions × w / availWeight), in integers.
func exactCap(num, den, sessions, w, availWeight int64) int64 {
	n, d := num*sessions*w, den*availWeight
	return (n + d - 1) / d
}

func TestBoundAdmits(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, c := range []struct{ num, den int64 }{{1, 1}, {5, 4}, {3, 2}, {2, 1}, {11, 10}} {
		f := loadFactor(float64(c.num) / float64(c.den))
		for range 20_000 {
			s := rng.Int64N(1000)       // live sessions in the pool
			w := 1 + rng.Int64N(5)      // the backend's weight
			avail := w + rng.Int64N(50) // weight of the available backends
			load := rng.Int64N(s + 1)
			bd := bound{c: f, sessions: uint64(s + 1), weight: uint64(avail)}
			want := load < exactCap(c.num, c.den, s+1, w, avail)
			if got := bd.admits(load, w); got != want {
				t.Fatalf("c=%d/%d S=%d w=%d W=%d load=%d: admits %v, want %v (cap %d)",
					c.num, c.den, s, w, avail, load, got, want, exactCap(c.num, c.den, s+1, w, avail))
			}
		}
	}
	if !(bound{}).admits(1<<40, 1) {
		t.Error("the zero bound (bounded loads off) refused")
	}
}

// Consistent hashing with bounded loads: place 100k sessions (and end some of
// them along the way); no placement may leave a backend above
// ceil(c × (S+1) × w / W).
func TestBoundedLoad(t *testing.T) {
	tests := []struct {
		name     string
		n        int
		weights  []int
		num, den int64 // c = num/den
		down     []int // backends marked unhealthy halfway
		churn    float64
		distinct int // distinct keys (0: all); few means hot keys
	}{
		{"equal c=1.25", 10, nil, 5, 4, nil, 0, 0},
		{"equal c=1.25 churn", 10, nil, 5, 4, nil, 0.3, 0},
		{"weighted c=1.5 churn", 12, []int{1, 2, 3, 4}, 3, 2, nil, 0.3, 0},
		{"equal c=1.1 two down", 10, nil, 11, 10, []int{2, 7}, 0.2, 0},
		{"equal c=1", 10, nil, 1, 1, nil, 0.2, 0},
		{"hot keys c=1.25", 10, nil, 5, 4, nil, 0.1, 40},
		{"hot keys weighted c=1.5", 12, []int{1, 2, 3, 4}, 3, 2, []int{0}, 0.1, 40},
	}
	keys := keys100k()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bs := testBackends(tc.n, tc.weights...)
			p := NewPool(PoolConfig{Backends: bs, BoundedLoad: float64(tc.num) / float64(tc.den)})
			rng := rand.New(rand.NewPCG(9, 10))
			var live []*Backend
			walked := 0
			for i, k := range keys {
				if tc.distinct > 0 {
					k = keys[i%tc.distinct]
				}
				if i == len(keys)/2 {
					for _, d := range tc.down {
						bs[d].SetHealthy(false)
					}
				}
				if len(live) > 0 && rng.Float64() < tc.churn {
					j := rng.IntN(len(live))
					live[j].Release()
					live[j] = live[len(live)-1]
					live = live[:len(live)-1]
				}
				var s, avail int64
				for _, b := range bs {
					s += b.Sessions()
					if b.Available() {
						avail += int64(b.Weight)
					}
				}
				b := p.Pick(k)
				if !b.Available() {
					t.Fatalf("key %d: picked unavailable %s", i, b.Addr)
				}
				if limit := exactCap(tc.num, tc.den, s+1, int64(b.Weight), avail); b.Sessions()+1 > limit {
					t.Fatalf("key %d: %s would hold %d sessions, bound %d", i, b.Addr, b.Sessions()+1, limit)
				}
				if b != p.PickExcluding(k, nil) {
					t.Fatalf("key %d: Pick and PickExcluding(nil) differ", i)
				}
				if tab := p.cur.Load(); b != tab.members[tab.slots[slotOf(k)*candidates]].b {
					walked++
				}
				b.Acquire()
				live = append(live, b)
			}
			t.Logf("%.1f%% of placements walked past their first choice", 100*float64(walked)/float64(len(keys)))
			// The pool's running totals match the backends' counts.
			g := p.cur.Load().group
			var s, avail int64
			for _, b := range bs {
				s += b.Sessions()
				if b.Available() {
					avail += int64(b.Weight)
				}
			}
			if g.sessions.Load() != s || g.availWeight.Load() != avail {
				t.Errorf("group totals %d sessions, %d weight; backends hold %d, %d", g.sessions.Load(), g.availWeight.Load(), s, avail)
			}
			for _, b := range live {
				b.Release()
			}
			if g.sessions.Load() != 0 {
				t.Errorf("group holds %d sessions after all were released", g.sessions.Load())
			}
		})
	}
}

// Without load, a bounded pool picks what an unbounded one does.
func TestBoundedLoadIdleMatchesUnbounded(t *testing.T) {
	bs := testBackends(10, 1, 2)
	keys := testKeys(10_000)
	got := assign(NewPool(PoolConfig{Backends: bs, BoundedLoad: 1.25}), keys)
	want := assign(NewPool(PoolConfig{Backends: bs}), keys)
	for i := range keys {
		if got[i] != want[i] {
			t.Fatalf("key %d: bounded %s, unbounded %s", i, got[i], want[i])
		}
	}
}

// A backend in two bounded pools counts in both; each pool's totals follow
// its own members, and Update moves them between generations.
func TestLoadGroupsShared(t *testing.T) {
	bs := testBackends(4, 1, 3)
	a := NewPool(PoolConfig{Backends: bs[:3], BoundedLoad: 2})
	b := NewPool(PoolConfig{Backends: bs[1:], BoundedLoad: 2})
	for _, x := range bs {
		x.Acquire()
		x.Acquire()
	}
	bs[1].SetHealthy(false)
	bs[2].SetDraining(true)
	bs[2].SetDraining(true) // no change: counted once
	check := func(name string, p *Pool, sessions, weight int64) {
		t.Helper()
		g := p.cur.Load().group
		if g.sessions.Load() != sessions || g.availWeight.Load() != weight {
			t.Errorf("%s: totals %d sessions %d weight, want %d %d", name, g.sessions.Load(), g.availWeight.Load(), sessions, weight)
		}
	}
	check("a", a, 6, 1) // bs0 (w1) available; bs1 down; bs2 draining
	check("b", b, 6, 3) // bs3 (w3) available
	bs[1].SetHealthy(true)
	bs[3].Release()
	check("a", a, 6, 4)
	check("b", b, 5, 6)
	a.Update(PoolConfig{Backends: bs[2:], BoundedLoad: 2})
	check("a after Update", a, 3, 3)
	if got := bs[0].groupCount(); got != 0 {
		t.Errorf("backend dropped from a still counts in %d groups", got)
	}
	if got := bs[2].groupCount(); got != 2 {
		t.Errorf("backend in both pools counts in %d groups, want 2", got)
	}
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
}

// groupCount returns how many bounded-load groups b counts in.
func (b *Backend) groupCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.groups)
}
