package balancer

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// Golden vectors: a fixed pool and fixed keys give fixed preference orders.
// A change here changes which backend every deployed key goes to: make it
// only on purpose, and say so in the release notes.
func TestPreferenceGolden(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		want    [][2]string // key, last octets of 10.0.0.N:80 in preference order
	}{
		{"equal", []int{1, 1, 1, 1, 1, 1, 1, 1}, [][2]string{
			{"key-0", "8 6 3 7 2 5 4 1"},
			{"key-1", "3 7 2 1 6 4 8 5"},
			{"key-2", "8 6 2 1 4 5 7 3"},
			{"key-3", "4 1 3 7 6 2 8 5"},
			{"key-4", "3 4 2 1 7 8 5 6"},
			{"key-5", "1 7 3 4 5 2 6 8"},
			{"key-6", "5 3 6 1 2 8 4 7"},
			{"key-7", "4 6 7 3 1 8 5 2"},
			{"key-8", "6 2 8 1 7 3 5 4"},
			{"key-9", "6 8 5 4 2 1 3 7"},
			{"key-10", "7 4 3 2 5 6 1 8"},
			{"key-11", "3 4 2 5 1 6 8 7"},
		}},
		{"weighted", []int{1, 2, 3, 4, 5, 6, 7, 8}, [][2]string{
			{"key-0", "8 6 7 3 5 2 4 1"},
			{"key-1", "3 7 6 2 4 8 1 5"},
			{"key-2", "8 6 2 4 1 5 7 3"},
			{"key-3", "4 7 3 6 8 1 5 2"},
			{"key-4", "3 4 8 7 2 5 1 6"},
			{"key-5", "1 7 3 4 5 6 8 2"},
			{"key-6", "5 6 3 8 4 2 7 1"},
			{"key-7", "6 4 7 8 3 5 1 2"},
			{"key-8", "6 8 2 7 5 3 4 1"},
			{"key-9", "6 8 5 4 2 7 3 1"},
			{"key-10", "7 4 3 5 2 6 8 1"},
			{"key-11", "4 3 5 6 8 2 7 1"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var bs []*Backend
			for i, w := range tc.weights {
				bs = append(bs, &Backend{Addr: fmt.Sprintf("10.0.0.%d:80", i+1), Weight: w})
			}
			p := NewPool(PoolConfig{Backends: bs})
			for _, kv := range tc.want {
				key := HashString(kv[0])
				var got []string
				var tried []*Backend
				for b := p.Pick(key); b != nil; b = p.PickExcluding(key, tried) {
					tried = append(tried, b)
					got = append(got, strings.TrimSuffix(strings.TrimPrefix(b.Addr, "10.0.0."), ":80"))
				}
				if g := strings.Join(got, " "); g != kv[1] {
					t.Errorf("%s: preference order %q, want %q", kv[0], g, kv[1])
				}
			}
		})
	}
}

// The cached candidates of every slot are the head of its full order, with
// the last member repeated when there are fewer than candidates.
func TestTableMatchesOrder(t *testing.T) {
	tests := []struct {
		name    string
		n       int
		weights []int
	}{
		{"one", 1, nil},
		{"three", 3, nil},
		{"equal 10", 10, nil},
		{"weighted 10", 10, []int{1, 2, 3, 4}},
		{"weighted 2", 2, []int{1, 1000}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tab := newTable(PoolConfig{Backends: testBackends(tc.n, tc.weights...)})
			for s := uint32(0); s < slotCount; s += uint32(underRace(1, 17)) {
				order := tab.order(s)
				for j := range candidates {
					got := tab.members[tab.slots[s*candidates+uint32(j)]].b
					want := order[min(j, len(order)-1)]
					if got != want {
						t.Fatalf("slot %d candidate %d = %s, want %s", s, j, got.Addr, want.Addr)
					}
				}
			}
		})
	}
}

// Equal weights skip the logarithm; the order must be the one the
// logarithmic scores give, or changing one weight would reshuffle the pool.
func TestEqualWeightsMatchWeighted(t *testing.T) {
	bs := testBackends(10)
	plain := newTable(PoolConfig{Backends: bs})
	logs := &table{members: plain.members, weighted: true}
	differ := 0
	for s := uint32(0); s < slotCount; s += uint32(underRace(1, 17)) {
		if !slices.Equal(plain.order(s), logs.order(s)) {
			differ++
		}
	}
	if differ != 0 {
		t.Errorf("%d of %d slots order differently", differ, slotCount)
	}
}

func TestTableShared(t *testing.T) {
	resetSlotCache()
	bs := testBackends(5, 1, 2)
	a := NewPool(PoolConfig{Backends: bs})
	// Other Backend values with the same addresses and weights, listed in
	// another order: same slots.
	other := testBackends(5, 1, 2)
	slices.Reverse(other)
	b := NewPool(PoolConfig{Backends: other, BoundedLoad: 2})
	ta, tb := a.cur.Load(), b.cur.Load()
	if &ta.slots[0] != &tb.slots[0] {
		t.Error("identical members: slots rebuilt, want shared")
	}
	if tb.members[0].b != other[4] {
		t.Error("shared slots, but the table kept the other pool's Backends")
	}
	other[0].Weight = 3
	b.Update(PoolConfig{Backends: other})
	if &b.cur.Load().slots[0] == &ta.slots[0] {
		t.Error("changed weight: slots shared, want rebuilt")
	}
}

// resetSlotCache makes the next builds compute their slots afresh, so that
// tests comparing builds compare computations, not a shared table.
func resetSlotCache() {
	slotCache.mu.Lock()
	slotCache.m = nil
	slotCache.mu.Unlock()
}
