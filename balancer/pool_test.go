package balancer

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
)

// testAddr returns the address of the i-th test backend.
func testAddr(i int) string {
	return fmt.Sprintf("10.%d.%d.%d:8080", i>>16&255, i>>8&255, i&255)
}

// testBackends returns n backends; their weights cycle through weights (1 if
// none).
func testBackends(n int, weights ...int) []*Backend {
	if len(weights) == 0 {
		weights = []int{1}
	}
	bs := make([]*Backend, n)
	for i := range bs {
		bs[i] = &Backend{Addr: testAddr(i), Weight: weights[i%len(weights)]}
	}
	return bs
}

// testKeys returns n fixed keys, hashed as the proxy would.
func testKeys(n int) []uint64 {
	keys := make([]uint64, n)
	for i := range keys {
		keys[i] = HashString(fmt.Sprintf("session-%d", i))
	}
	return keys
}

// keys100k returns the 100k keys the distribution and disruption figures are
// asserted on (25k under -race, which only looks for data races).
var keys100k = sync.OnceValue(func() []uint64 { return testKeys(underRace(100_000, 25_000)) })

// assign returns the address each key is picked to ("" for nil).
func assign(p *Pool, keys []uint64) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		if b := p.Pick(k); b != nil {
			out[i] = b.Addr
		}
	}
	return out
}

func countByAddr(addrs []string) map[string]int {
	n := make(map[string]int)
	for _, a := range addrs {
		n[a]++
	}
	return n
}

func TestPickDistribution(t *testing.T) {
	tests := []struct {
		name    string
		n       int
		weights []int
		tol     float64 // max |share/expected - 1|
	}{
		{"equal 10", 10, nil, 0.10},
		{"weights 1,2,3,4", 4, []int{1, 2, 3, 4}, 0.10},
		{"weights 1..4 over 12", 12, []int{1, 2, 3, 4}, 0.10},
		{"weights 1,100", 2, []int{1, 100}, 0.10},
	}
	keys := keys100k()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bs := testBackends(tc.n, tc.weights...)
			p := NewPool(PoolConfig{Backends: bs})
			counts := countByAddr(assign(p, keys))
			var total int
			for _, b := range bs {
				total += b.Weight
			}
			worst := 0.0
			for _, b := range bs {
				want := float64(len(keys)) * float64(b.Weight) / float64(total)
				dev := float64(counts[b.Addr])/want - 1
				worst = max(worst, math.Abs(dev))
				if math.Abs(dev) > tc.tol {
					t.Errorf("%s (weight %d): %d keys, want %.0f ±%.0f%%", b.Addr, b.Weight, counts[b.Addr], want, tc.tol*100)
				}
			}
			t.Logf("worst deviation from proportional: %.2f%%", worst*100)
		})
	}
}

func TestPickDisruption(t *testing.T) {
	const n = 10
	keys := keys100k()
	bs := testBackends(n + 1)
	base := assign(NewPool(PoolConfig{Backends: bs[:n]}), keys)

	checkMoved := func(t *testing.T, before, after []string, changed string, want float64) {
		t.Helper()
		moved := 0
		for i := range keys {
			if before[i] == after[i] {
				continue
			}
			moved++
			if before[i] != changed && after[i] != changed {
				t.Fatalf("key %d moved %s -> %s, not involving %s", i, before[i], after[i], changed)
			}
		}
		frac := float64(moved) / float64(len(keys))
		if frac < want*0.8 || frac > want*1.2 {
			t.Errorf("moved %.4f of keys, want %.4f ±20%%", frac, want)
		}
		t.Logf("moved %.4f of keys (ideal %.4f)", frac, want)
	}

	t.Run("remove", func(t *testing.T) {
		for i := 0; i < n; i += underRace(1, 4) {
			rest := slices.Delete(slices.Clone(bs[:n]), i, i+1)
			after := assign(NewPool(PoolConfig{Backends: rest}), keys)
			checkMoved(t, base, after, bs[i].Addr, 1.0/n)
		}
	})
	t.Run("add", func(t *testing.T) {
		after := assign(NewPool(PoolConfig{Backends: bs}), keys)
		checkMoved(t, base, after, bs[n].Addr, 1.0/(n+1))
	})
	t.Run("reweight", func(t *testing.T) {
		// Doubling one weight moves keys only onto that backend: about
		// 2/11 - 1/10 of them.
		ws := testBackends(n)
		ws[3].Weight = 2
		after := assign(NewPool(PoolConfig{Backends: ws}), keys)
		checkMoved(t, base, after, ws[3].Addr, 2.0/11-1.0/10)
	})
}

func TestPickHealthAware(t *testing.T) {
	keys := keys100k()
	for _, state := range []struct {
		name      string
		off, back func(*Backend)
	}{
		{"unhealthy", func(b *Backend) { b.SetHealthy(false) }, func(b *Backend) { b.SetHealthy(true) }},
		{"draining", func(b *Backend) { b.SetDraining(true) }, func(b *Backend) { b.SetDraining(false) }},
	} {
		t.Run(state.name, func(t *testing.T) {
			bs := testBackends(10, 1, 2)
			p := NewPool(PoolConfig{Backends: bs})
			before := assign(p, keys)
			state.off(bs[4])
			during := assign(p, keys)
			moved := 0
			for i := range keys {
				switch {
				case before[i] == bs[4].Addr:
					moved++
					if during[i] == bs[4].Addr {
						t.Fatalf("key %d still on the unavailable backend", i)
					}
				case during[i] != before[i]:
					t.Fatalf("key %d moved %s -> %s though its backend is available", i, before[i], during[i])
				}
			}
			if moved == 0 {
				t.Fatal("no key was on the backend taken out")
			}
			state.back(bs[4])
			if after := assign(p, keys); !slices.Equal(before, after) {
				t.Error("keys did not all return when the backend came back")
			}
		})
	}
}

func TestPickUnavailable(t *testing.T) {
	keys := testKeys(1000)
	tests := []struct {
		name    string
		backend []*Backend
		prepare func([]*Backend)
	}{
		{"empty pool", nil, func([]*Backend) {}},
		{"all unhealthy", testBackends(30), func(bs []*Backend) {
			for _, b := range bs {
				b.SetHealthy(false)
			}
		}},
		{"all draining", testBackends(5), func(bs []*Backend) {
			for _, b := range bs {
				b.SetDraining(true)
			}
		}},
		{"all weight 0", testBackends(5, 0), func([]*Backend) {}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.prepare(tc.backend)
			for _, c := range []float64{0, 1.25} {
				p := NewPool(PoolConfig{Backends: tc.backend, BoundedLoad: c})
				for _, k := range keys {
					if b := p.Pick(k); b != nil {
						t.Fatalf("BoundedLoad %v: Pick = %s, want nil", c, b.Addr)
					}
					if b := p.PickExcluding(k, nil); b != nil {
						t.Fatalf("BoundedLoad %v: PickExcluding = %s, want nil", c, b.Addr)
					}
				}
			}
		})
	}
}

func TestPickMostUnavailable(t *testing.T) {
	// With only one backend left, every key finds it through the scan.
	bs := testBackends(50)
	p := NewPool(PoolConfig{Backends: bs})
	for _, b := range bs[1:] {
		b.SetHealthy(false)
	}
	for _, k := range testKeys(1000) {
		if b := p.Pick(k); b != bs[0] {
			t.Fatalf("Pick = %v, want the one healthy backend", b)
		}
	}
}

func TestPickExcludingOrder(t *testing.T) {
	bs := testBackends(12, 1, 3)
	p := NewPool(PoolConfig{Backends: bs})
	tab := p.cur.Load()
	for _, k := range testKeys(200) {
		want := tab.order(slotOf(k))
		var tried []*Backend
		for b := p.Pick(k); b != nil; b = p.PickExcluding(k, tried) {
			tried = append(tried, b)
		}
		if !slices.Equal(tried, want) {
			t.Fatalf("key %#x: retries went %v, want the preference order %v", k, addrs(tried), addrs(want))
		}
	}
	// Unavailable backends are skipped, the rest keep their order.
	bs[0].SetHealthy(false)
	bs[5].SetDraining(true)
	for _, k := range testKeys(200) {
		want := slices.DeleteFunc(tab.order(slotOf(k)), func(b *Backend) bool { return b == bs[0] || b == bs[5] })
		var tried []*Backend
		for b := p.Pick(k); b != nil; b = p.PickExcluding(k, tried) {
			tried = append(tried, b)
		}
		if !slices.Equal(tried, want) {
			t.Fatalf("key %#x: retries went %v, want %v", k, addrs(tried), addrs(want))
		}
	}
}

func addrs(bs []*Backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Addr
	}
	return out
}

func TestPickDeterministic(t *testing.T) {
	keys := keys100k()
	const n = 12
	refPool := NewPool(PoolConfig{Backends: testBackends(n, 1, 2, 5)})
	ref, refSlots := assign(refPool, keys), refPool.cur.Load().slots
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range underRace(6, 2) {
		// Fresh backends (another process), listed in another order.
		bs := testBackends(n, 1, 2, 5)
		rng.Shuffle(len(bs), func(i, j int) { bs[i], bs[j] = bs[j], bs[i] })
		// A reload history: start from a subset, grow, shrink, duplicate.
		resetSlotCache()
		p := NewPool(PoolConfig{Backends: bs[:i%n+1]})
		p.Update(PoolConfig{Backends: append(testBackends(n+3), bs...)})
		p.Update(PoolConfig{Backends: append(slices.Clone(bs), bs[0], bs[1])})
		// Equal slot tables map every possible key alike.
		if !slices.Equal(p.cur.Load().slots, refSlots) {
			t.Fatalf("round %d: slot table differs from the reference", i)
		}
		if got := assign(p, keys); !slices.Equal(got, ref) {
			t.Fatalf("round %d: mapping differs from the reference", i)
		}
	}
}

func TestPoolBackends(t *testing.T) {
	bs := testBackends(3, 1, 0)
	dup := &Backend{Addr: bs[1].Addr, Weight: 7}
	p := NewPool(PoolConfig{Backends: []*Backend{bs[0], nil, bs[1], dup, bs[2]}})
	if got := p.Backends(); !slices.Equal(got, bs) {
		t.Errorf("Backends() = %v, want %v", addrs(got), addrs(bs))
	}
	got := p.Backends()
	got[0] = nil
	if p.Backends()[0] != bs[0] {
		t.Error("Backends() returned the pool's own slice")
	}
	// A repeated address counts once: its first occurrence's weight.
	if w := p.cur.Load().members; len(w) != 2 || w[0].weight != 1 {
		t.Errorf("members = %+v, want 2 with weight 1", w)
	}
}

func TestPickAllocs(t *testing.T) {
	keys := testKeys(1024)
	bs := testBackends(100)
	for i := 0; i < len(bs); i += 10 {
		bs[i].SetHealthy(false)
	}
	tried := []*Backend{bs[1], bs[2]}
	for _, c := range []float64{0, 1.25} {
		p := NewPool(PoolConfig{Backends: bs, BoundedLoad: c})
		i := 0
		if n := testing.AllocsPerRun(1000, func() {
			p.Pick(keys[i%len(keys)])
			p.PickExcluding(keys[i%len(keys)], tried)
			i++
		}); n != 0 {
			t.Errorf("BoundedLoad %v: %v allocations per pick, want 0", c, n)
		}
	}
}

func TestPoolCleanup(t *testing.T) {
	// A dropped bounded pool stops counting in its backends' totals.
	bs := testBackends(3)
	p := NewPool(PoolConfig{Backends: bs, BoundedLoad: 1.5})
	if got := bs[0].groupCount(); got != 1 {
		t.Fatalf("groupCount = %d, want 1", got)
	}
	p.Update(PoolConfig{Backends: bs, BoundedLoad: 2})
	if got := bs[0].groupCount(); got != 1 {
		t.Fatalf("after Update groupCount = %d, want 1", got)
	}
	p.Update(PoolConfig{Backends: bs})
	if got := bs[0].groupCount(); got != 0 {
		t.Fatalf("after turning bounds off groupCount = %d, want 0", got)
	}
	NewPool(PoolConfig{Backends: bs, BoundedLoad: 1.5})
	for i := 0; bs[0].groupCount() != 0; i++ {
		if i == 1000 {
			t.Fatal("the dropped pool's group was never detached")
		}
		runtime.GC()
		runtime.Gosched()
	}
}

func benchPool(b *testing.B, n int, c float64, down float64) (*Pool, []*Backend) {
	bs := testBackends(n)
	rng := rand.New(rand.NewPCG(3, 4))
	for _, i := range rng.Perm(n)[:int(float64(n)*down)] {
		bs[i].SetHealthy(false)
	}
	return NewPool(PoolConfig{Backends: bs, BoundedLoad: c}), bs
}

func BenchmarkPick(b *testing.B) {
	keys := testKeys(1 << 16)
	for _, bc := range []struct {
		name string
		n    int
		c    float64
		down float64
	}{
		{"100/healthy", 100, 0, 0},
		{"100/10pct-down", 100, 0, 0.1},
		{"100/50pct-down", 100, 0, 0.5},
		{"100/bounded-1.25", 100, 1.25, 0},
		{"100/bounded-1.25/10pct-down", 100, 1.25, 0.1},
		{"1000/healthy", 1000, 0, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p, bs := benchPool(b, bc.n, bc.c, bc.down)
			if bc.c != 0 {
				// Load the pool so that some picks find backends full.
				for _, k := range keys[:10*bc.n] {
					p.Pick(k).Acquire()
				}
				defer func() {
					for _, b := range bs {
						for b.Sessions() > 0 {
							b.Release()
						}
					}
				}()
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p.Pick(keys[i&(len(keys)-1)])
				i++
			}
		})
	}
}

func BenchmarkPickExcluding(b *testing.B) {
	keys := testKeys(1 << 16)
	p, _ := benchPool(b, 100, 0, 0.1)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := keys[i&(len(keys)-1)]
		first := p.Pick(k)
		p.PickExcluding(k, []*Backend{first})
		i++
	}
}

// BenchmarkBuild measures a snapshot build: what Update costs when the
// members or their weights change.
func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		for _, weighted := range []bool{false, true} {
			weights := []int{1}
			if weighted {
				weights = []int{1, 2, 3, 4}
			}
			cfg := PoolConfig{Backends: testBackends(n, weights...)}
			b.Run(fmt.Sprintf("%d/weighted=%v", n, weighted), func(b *testing.B) {
				for b.Loop() {
					resetSlotCache()
					newTable(cfg)
				}
			})
		}
	}
}

// BenchmarkUpdateUnchanged measures a reload that leaves the pool as it was
// (the same with NewPool while the old pool is alive).
func BenchmarkUpdateUnchanged(b *testing.B) {
	cfg := PoolConfig{Backends: testBackends(100, 1, 2)}
	p := NewPool(cfg)
	b.ReportAllocs()
	for b.Loop() {
		p.Update(cfg)
	}
}

func TestPoolWeightsOverrideSharedBackend(t *testing.T) {
	r := NewRegistry()
	a, b := r.Get("10.0.0.1:80"), r.Get("10.0.0.2:80")
	// The same two backends, weighted 1:3 in one pool and 0:1 in another.
	p1 := NewPool(PoolConfig{Backends: []*Backend{a, b}, Weights: []int{1, 3}})
	p2 := NewPool(PoolConfig{Backends: []*Backend{a, b}, Weights: []int{0, 1}})
	var n1 [2]int
	for k := uint64(0); k < 40000; k++ {
		if p1.Pick(Hash([]byte{byte(k), byte(k >> 8), byte(k >> 16)})) == a {
			n1[0]++
		} else {
			n1[1]++
		}
		if p2.Pick(k) != b {
			t.Fatal("weight 0 in pool 2 still takes keys")
		}
	}
	if share := float64(n1[0]) / 40000; share < 0.225 || share > 0.275 {
		t.Fatalf("weight 1 of 4 took %.3f of the keys", share)
	}
	if a.Weight != 1 || b.Weight != 1 {
		t.Fatal("pools wrote to shared backends")
	}
}

// TestPickUnbounded checks that PickUnbounded follows the key's plain hash
// while the bounded Pick walks past full backends: a client's long-polls
// keep their backend however the loads move, and health still counts.
func TestPickUnbounded(t *testing.T) {
	bs := testBackends(5)
	bounded := NewPool(PoolConfig{Backends: bs, BoundedLoad: 1.25})
	plain := NewPool(PoolConfig{Backends: testBackends(5)})
	keys := testKeys(2000)
	want := assign(plain, keys) // the plain hash
	// Load the first key's backend far over its bound.
	full := bounded.PickUnbounded(keys[0])
	for range 50 {
		full.Acquire()
	}
	defer func() {
		for full.Sessions() > 0 {
			full.Release()
		}
	}()
	moved := 0
	for i, k := range keys {
		got := bounded.PickUnbounded(k)
		if got == nil || got.Addr != want[i] {
			t.Fatalf("key %d: PickUnbounded = %v, want the plain hash's %s", i, got, want[i])
		}
		if b := bounded.Pick(k); b.Addr != want[i] {
			moved++
			if b == full {
				t.Fatalf("key %d: Pick chose the full backend", i)
			}
		}
	}
	if moved == 0 {
		t.Fatal("no bounded pick moved: the bound never applied and the test shows nothing")
	}
	// An unhealthy backend is skipped, as by Pick.
	full.SetHealthy(false)
	defer full.SetHealthy(true)
	if b := bounded.PickUnbounded(keys[0]); b == nil || b == full {
		t.Fatalf("PickUnbounded = %v, want a healthy backend other than %s", b, full.Addr)
	}
	if n := testing.AllocsPerRun(100, func() { bounded.PickUnbounded(keys[1]) }); n != 0 {
		t.Errorf("PickUnbounded: %v allocations, want 0", n)
	}
	if p := NewPool(PoolConfig{}); p.PickUnbounded(1) != nil {
		t.Fatal("empty pool picked a backend")
	}
}
