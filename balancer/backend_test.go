package balancer

import "testing"

func TestBackendState(t *testing.T) {
	tests := []struct {
		name      string
		weight    int
		down      bool
		draining  bool
		available bool
	}{
		{"healthy", 1, false, false, true},
		{"down", 1, true, false, false},
		{"draining", 1, false, true, false},
		{"down and draining", 1, true, true, false},
		{"weight 0", 0, false, false, false},
		{"negative weight", -3, false, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := &Backend{Addr: "192.0.2.1:80", Weight: tc.weight}
			if !b.Healthy() || b.Draining() {
				t.Fatalf("new backend: Healthy %v Draining %v, want true false", b.Healthy(), b.Draining())
			}
			b.SetHealthy(!tc.down)
			b.SetDraining(tc.draining)
			if b.Healthy() != !tc.down || b.Draining() != tc.draining {
				t.Errorf("Healthy %v Draining %v, want %v %v", b.Healthy(), b.Draining(), !tc.down, tc.draining)
			}
			if got := b.Available(); got != tc.available {
				t.Errorf("Available() = %v, want %v", got, tc.available)
			}
			b.SetHealthy(true)
			b.SetDraining(false)
			if got := b.Available(); got != (tc.weight > 0) {
				t.Errorf("after recovery Available() = %v, want %v", got, tc.weight > 0)
			}
		})
	}
}

func TestBackendSessions(t *testing.T) {
	b := &Backend{Addr: "192.0.2.1:80", Weight: 1}
	b.Release() // unmatched: ignored
	if got := b.Sessions(); got != 0 {
		t.Fatalf("Sessions() after unmatched Release = %d, want 0", got)
	}
	for range 3 {
		b.Acquire()
	}
	b.Release()
	if got := b.Sessions(); got != 2 {
		t.Errorf("Sessions() = %d, want 2", got)
	}
}

func TestClampWeight(t *testing.T) {
	tests := []struct {
		in   int
		want int64
	}{{-1, 0}, {0, 0}, {1, 1}, {maxWeight, maxWeight}, {maxWeight + 1, maxWeight}}
	for _, tc := range tests {
		if got := clampWeight(tc.in); got != tc.want {
			t.Errorf("clampWeight(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}
