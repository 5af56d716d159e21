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
