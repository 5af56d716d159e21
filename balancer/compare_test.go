package balancer

// The candidate schemes measured for the package documentation: run
//
//	go test -run TestSchemeComparison -v ./balancer/
//	go test -run '^$' -bench BenchmarkSchemes ./balancer/
//
// The chosen one, the rendezvous table, is the Pool itself; the others are
// minimal implementations kept here only to be measured against it.

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// picker maps a key to a backend address.
type picker interface{ pick(key uint64) string }

type schemeCandidate struct {
	name  string
	build func(bs []*Backend) picker
	size  func(n int) int // bytes of lookup state for n equal backends
}

var schemeCandidates = []schemeCandidate{
	{"rendezvous table (chosen)", func(bs []*Backend) picker { return poolPicker{NewPool(PoolConfig{Backends: bs})} },
		func(int) int { return slotCount * candidates * 2 }},
	{"rendezvous, per key", newPlainHRW, func(n int) int { return n * 16 }},
	{"ring, 160 points/weight", func(bs []*Backend) picker { return newRing(bs, 160) }, func(n int) int { return n * 160 * 16 }},
	{"ring, 1000 points/weight", func(bs []*Backend) picker { return newRing(bs, 1000) }, func(n int) int { return n * 1000 * 16 }},
	{"maglev, M=65537", newMaglev, func(int) int { return maglevSize * 2 }},
}

type poolPicker struct{ p *Pool }

func (p poolPicker) pick(key uint64) string { return p.p.Pick(key).Addr }

// plainHRW is weighted rendezvous hashing scoring every backend per key.
type plainHRW struct{ t *table }

func newPlainHRW(bs []*Backend) picker {
	t := &table{}
	for _, b := range bs {
		t.members = append(t.members, member{b: b, h: HashString(b.Addr), weight: clampWeight(b.Weight)})
	}
	t.weighted = slices.ContainsFunc(t.members, func(m member) bool { return m.weight != t.members[0].weight })
	return plainHRW{t}
}

func (h plainHRW) pick(key uint64) string {
	seed := mix64(key)
	best := &h.t.members[0]
	bestScore := h.t.score(seed, best)
	for i := 1; i < len(h.t.members); i++ {
		if s := h.t.score(seed, &h.t.members[i]); s.before(bestScore) {
			best, bestScore = &h.t.members[i], s
		}
	}
	return best.b.Addr
}

// ring is a hash ring with points per unit of weight (ketama-like).
type ring struct {
	points []uint64
	owners []*Backend
}

func newRing(bs []*Backend, perWeight int) picker {
	type point struct {
		h uint64
		b *Backend
	}
	var pts []point
	for _, b := range bs {
		for i := range perWeight * b.Weight {
			pts = append(pts, point{HashString(b.Addr + "#" + strconv.Itoa(i)), b})
		}
	}
	slices.SortFunc(pts, func(x, y point) int {
		return cmp.Or(cmp.Compare(x.h, y.h), cmp.Compare(x.b.Addr, y.b.Addr))
	})
	r := &ring{}
	for _, p := range pts {
		r.points = append(r.points, p.h)
		r.owners = append(r.owners, p.b)
	}
	return r
}

func (r *ring) pick(key uint64) string {
	h := mix64(key)
	i := sort.Search(len(r.points), func(i int) bool { return r.points[i] >= h })
	for n := 0; n < len(r.points); n++ { // walk on past unusable backends
		b := r.owners[(i+n)%len(r.points)]
		if b.usable() {
			return b.Addr
		}
	}
	return ""
}

// maglev is Maglev hashing (Eisenbud et al., NSDI 2016) with weighted turns.
const maglevSize = 65537

type maglev struct{ entry []*Backend }

func newMaglev(in []*Backend) picker {
	bs := slices.SortedFunc(slices.Values(in), func(x, y *Backend) int { return cmp.Compare(x.Addr, y.Addr) })
	offset, skip, next := make([]uint64, len(bs)), make([]uint64, len(bs)), make([]uint64, len(bs))
	credit := make([]int, len(bs))
	maxW := 0
	for i, b := range bs {
		h := HashString(b.Addr)
		offset[i], skip[i] = h%maglevSize, mix64(h)%(maglevSize-1)+1
		maxW = max(maxW, b.Weight)
	}
	m := &maglev{entry: make([]*Backend, maglevSize)}
	for filled := 0; filled < maglevSize; {
		for i, b := range bs {
			credit[i] += b.Weight
			if credit[i] < maxW {
				continue
			}
			credit[i] -= maxW
			c := (offset[i] + next[i]*skip[i]) % maglevSize
			for m.entry[c] != nil {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % maglevSize
			}
			m.entry[c] = b
			next[i]++
			if filled++; filled == maglevSize {
				break
			}
		}
	}
	return m
}

func (m *maglev) pick(key uint64) string { return m.entry[mix64(key)%maglevSize].Addr }

// worstDeviation returns the largest |share / (weight share) - 1| over bs.
func worstDeviation(p picker, bs []*Backend, keys []uint64) float64 {
	counts := make(map[string]int)
	for _, k := range keys {
		counts[p.pick(k)]++
	}
	total := 0
	for _, b := range bs {
		total += b.Weight
	}
	worst := 0.0
	for _, b := range bs {
		want := float64(len(keys)) * float64(b.Weight) / float64(total)
		worst = max(worst, math.Abs(float64(counts[b.Addr])/want-1))
	}
	return worst
}

// moved returns the fraction of keys mapped differently by a and b, and the
// fraction that moved between two backends both in before and after (the
// excess over minimal disruption).
func moved(a, b picker, keys []uint64, changed string) (frac, excess float64) {
	var n, x int
	for _, k := range keys {
		pa, pb := a.pick(k), b.pick(k)
		if pa != pb {
			n++
			if pa != changed && pb != changed {
				x++
			}
		}
	}
	return float64(n) / float64(len(keys)), float64(x) / float64(len(keys))
}

func TestSchemeComparison(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("a measurement, too slow under -race or -short")
	}
	keys := keys100k()
	keys200k := testKeys(200_000)
	var out strings.Builder
	fmt.Fprintf(&out, "\n| scheme | dev. 10 equal | dev. weights 1,2,3,4 | dev. 100 equal | remove 1 of 10: moved (excess) | add 11th: moved (excess) | build, 100 | lookup state, 100 |\n")
	fmt.Fprintf(&out, "|---|---|---|---|---|---|---|---|\n")
	for _, c := range schemeCandidates {
		ten := testBackends(11)
		dev10 := worstDeviation(c.build(ten[:10]), ten[:10], keys)
		w := testBackends(4, 1, 2, 3, 4)
		devW := worstDeviation(c.build(w), w, keys)
		hundred := testBackends(100)
		start := time.Now()
		p100 := c.build(hundred)
		build := time.Since(start)
		dev100 := worstDeviation(p100, hundred, keys200k)
		base := c.build(ten[:10])
		rm, rmX := moved(base, c.build(append(slices.Clone(ten[:3]), ten[4:10]...)), keys, ten[3].Addr)
		add, addX := moved(base, c.build(ten), keys, ten[10].Addr)
		fmt.Fprintf(&out, "| %s | %.1f%% | %.1f%% | %.1f%% | %.2f%% (%.2f%%) | %.2f%% (%.2f%%) | %v | %d KiB |\n",
			c.name, 100*dev10, 100*devW, 100*dev100, 100*rm, 100*rmX, 100*add, 100*addX,
			build.Round(100*time.Microsecond), c.size(100)/1024)
		if c.name == schemeCandidates[0].name {
			// What the package documentation claims of the chosen
			// scheme: minimal disruption, and balance within the slot
			// quantisation.
			if rmX != 0 || addX != 0 {
				t.Errorf("%s: %.2f%% and %.2f%% of keys moved between backends that did not change", c.name, 100*rmX, 100*addX)
			}
			if math.Abs(rm-0.1) > 0.02 || math.Abs(add-1.0/11) > 0.02 {
				t.Errorf("%s: removing 1 of 10 moved %.2f%%, adding an 11th %.2f%%; want about 10%% and 9.1%%", c.name, 100*rm, 100*add)
			}
			if dev10 > 0.06 || devW > 0.03 || dev100 > 0.2 {
				t.Errorf("%s: deviations %.1f%%, %.1f%%, %.1f%% over the documented bounds", c.name, 100*dev10, 100*devW, 100*dev100)
			}
		}
	}
	t.Log(out.String())
}

func BenchmarkSchemes(b *testing.B) {
	keys := testKeys(1 << 16)
	bs := testBackends(100)
	for _, c := range schemeCandidates {
		p := c.build(bs)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p.pick(keys[i&(len(keys)-1)])
				i++
			}
		})
	}
}
