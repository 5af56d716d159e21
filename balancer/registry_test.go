package balancer

import "testing"

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	a := r.Get("192.0.2.1:80")
	if a != r.Get("192.0.2.1:80") {
		t.Fatal("Get returned a different Backend for the same address")
	}
	if !a.Healthy() || a.Draining() || a.Sessions() != 0 {
		t.Fatal("new Backend is not healthy, idle and serving")
	}

	r.SetHealthy("192.0.2.1:80", false)
	if a.Healthy() {
		t.Error("SetHealthy(addr, false) did not reach the Backend")
	}
	r.SetHealthy("192.0.2.9:80", false) // unknown: ignored, not created
	if n := len(r.backends); n != 1 {
		t.Errorf("SetHealthy on an unknown address created it: %d backends", n)
	}

	// A reload keeps what is still configured, with its state.
	a.Acquire()
	b := r.Get("192.0.2.2:80")
	r.Retain([]string{"192.0.2.1:80"})
	if got := r.Get("192.0.2.1:80"); got != a || got.Healthy() || got.Sessions() != 1 {
		t.Errorf("retained backend lost its state: same %v healthy %v sessions %d", got == a, got.Healthy(), got.Sessions())
	}
	if got := r.Get("192.0.2.2:80"); got == b {
		t.Error("Retain kept a backend not in the list")
	}
}

// TestRegistryReadded removes an address whose backend still holds
// sessions and adds it back: the same Backend returns, counting them, but
// healthy and not draining as a new one; once its sessions end, a removal
// forgets it for good.
func TestRegistryReadded(t *testing.T) {
	r := NewRegistry()
	a := r.Get("192.0.2.1:80")
	a.Acquire()
	a.Acquire()
	a.SetHealthy(false)
	a.SetDraining(true)
	r.Retain(nil)
	r.SetHealthy("192.0.2.1:80", false) // forgotten: ignored
	a.Release()
	r.Retain(nil) // still one session: kept aside
	got := r.Get("192.0.2.1:80")
	if got != a || got.Sessions() != 1 {
		t.Fatalf("re-added backend: same %v, %d sessions; want the same Backend with 1", got == a, got.Sessions())
	}
	if !got.Healthy() || got.Draining() {
		t.Fatalf("re-added backend: healthy %v draining %v; want it afresh", got.Healthy(), got.Draining())
	}
	got.Release()
	r.Retain(nil)
	r.Retain(nil)
	if b := r.Get("192.0.2.1:80"); b == a {
		t.Fatal("a forgotten backend with no session left came back")
	}
}

// TestRegistryReaddedCountsInPool re-adds a backend whose sessions ran on
// while it was out of its pool: bounded loads see them again.
func TestRegistryReaddedCountsInPool(t *testing.T) {
	r := NewRegistry()
	a, b := r.Get("192.0.2.1:80"), r.Get("192.0.2.2:80")
	cfg := PoolConfig{Backends: []*Backend{a, b}, BoundedLoad: 1.25}
	p := NewPool(cfg)
	for range 8 {
		a.Acquire()
	}
	p.Update(PoolConfig{Backends: []*Backend{b}, BoundedLoad: 1.25})
	r.Retain([]string{b.Addr})
	cfg.Backends = []*Backend{r.Get(a.Addr), r.Get(b.Addr)}
	p.Update(cfg)
	// a holds 8 of 8: the bound ceil(1.25 × 9 / 2) = 6 sends every key
	// to b.
	for k := range uint64(1000) {
		if got := p.Pick(k); got != b {
			t.Fatalf("key %d went to %s, which holds %d sessions", k, got.Addr, got.Sessions())
		}
	}
}

func TestRegistryZero(t *testing.T) {
	var r Registry
	r.SetHealthy("192.0.2.1:80", true)
	r.Retain(nil)
	if r.Get("192.0.2.1:80") == nil {
		t.Fatal("zero Registry: Get returned nil")
	}
}

// Registry satisfies the one-method interface the health checker reports to.
var _ interface{ SetHealthy(addr string, up bool) } = (*Registry)(nil)
