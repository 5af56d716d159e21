package balancer

import (
	"math/rand/v2"
	"sync"
	"testing"
)

// Picks, session counting, health flips and rebuilds all at once; run with
// -race. Afterwards the pool's running totals must match the backends.
func TestConcurrentPickUpdateHealth(t *testing.T) {
	reg := NewRegistry()
	addrs := make([]string, 16)
	for i := range addrs {
		addrs[i] = testAddr(i)
		reg.Get(addrs[i]).Weight = 1 + i%3
	}
	config := func(rng *rand.Rand) PoolConfig {
		bs := make([]*Backend, 0, len(addrs))
		for _, i := range rng.Perm(len(addrs))[:8+rng.IntN(8)] {
			bs = append(bs, reg.Get(addrs[i]))
		}
		return PoolConfig{Backends: bs, BoundedLoad: 1.25}
	}
	p := NewPool(config(rand.New(rand.NewPCG(1, 1))))
	keys := testKeys(4096)

	const pickers = 4
	var writers, readers sync.WaitGroup
	stop := make(chan struct{})
	writers.Add(2)
	go func() { // reloads
		defer writers.Done()
		rng := rand.New(rand.NewPCG(2, 2))
		for range underRace(12, 6) {
			p.Update(config(rng))
		}
	}()
	go func() { // health checker
		defer writers.Done()
		rng := rand.New(rand.NewPCG(3, 3))
		for range underRace(20_000, 5_000) {
			reg.SetHealthy(addrs[rng.IntN(len(addrs))], rng.IntN(4) != 0)
		}
	}()
	for g := range pickers {
		readers.Add(1)
		go func() {
			defer readers.Done()
			var held []*Backend
			for i := g; ; i++ {
				select {
				case <-stop:
					for _, b := range held {
						b.Release()
					}
					return
				default:
				}
				k := keys[i%len(keys)]
				b := p.Pick(k)
				if b == nil {
					continue
				}
				b.Acquire()
				held = append(held, b)
				if len(held) > 64 {
					held[0].Release()
					held = held[1:]
				}
				if next := p.PickExcluding(k, []*Backend{b}); next == b {
					t.Error("PickExcluding returned the excluded backend")
				}
				_ = p.Backends()
			}
		}()
	}
	writers.Wait()
	close(stop)
	readers.Wait()

	tab := p.cur.Load()
	var avail int64
	for _, b := range tab.backends {
		if b.Sessions() != 0 {
			t.Errorf("%s holds %d sessions after all were released", b.Addr, b.Sessions())
		}
		if b.usable() {
			avail += clampWeight(b.Weight)
		}
	}
	if s, w := tab.group.sessions.Load(), tab.group.availWeight.Load(); s != 0 || w != avail {
		t.Errorf("group totals: %d sessions, %d weight; want 0, %d", s, w, avail)
	}
}
