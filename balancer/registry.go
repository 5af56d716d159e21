package balancer

import "sync"

// Registry keeps one *Backend per address across configuration generations,
// so health, draining and live-session counts survive reloads: every pool
// that lists an address gets the same Backend. The zero Registry is ready to
// use; it is safe for concurrent use.
//
// On reload: Get every address of the new configuration, Update (or create)
// the pools with their weights in PoolConfig.Weights, then Retain the new
// addresses. Backends handed out here are shared, so their Weight field is
// left at 1 and never written.
type Registry struct {
	mu       sync.Mutex
	backends map[string]*Backend
	// retired holds the backends Retain forgot while sessions still ran
	// on them, so that an address added back gets the Backend those
	// sessions Release.
	retired map[string]*Backend
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{} }

// Get returns the backend for addr, creating it (healthy, not draining, no
// session, Weight 1) if the registry has none. An address Retain forgot
// while sessions still ran on it gets its Backend back, healthy and not
// draining as a new one, but still counting those sessions.
func (r *Registry) Get(addr string) *Backend {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b, ok := r.backends[addr]; ok {
		return b
	}
	if r.backends == nil {
		r.backends = make(map[string]*Backend)
	}
	b, ok := r.retired[addr]
	if ok {
		delete(r.retired, addr)
		b.setState(0, stateDown|stateDraining)
	} else {
		b = &Backend{Addr: addr, Weight: 1}
	}
	r.backends[addr] = b
	return b
}

// SetHealthy records a health-check outcome for addr. Addresses the registry
// does not know (a check that finished after a reload removed them) are
// ignored.
func (r *Registry) SetHealthy(addr string, up bool) {
	r.mu.Lock()
	b := r.backends[addr]
	r.mu.Unlock()
	if b != nil {
		b.SetHealthy(up)
	}
}

// Retain forgets every backend whose address is not in addrs (the addresses
// of all pools of the new configuration). A forgotten address that comes
// back later starts afresh, healthy and not draining; but while sessions
// still run on a forgotten backend (they Release it when they end), Get
// hands that Backend back, so its live-session count goes on counting them.
func (r *Registry) Retain(addrs []string) {
	keep := make(map[string]struct{}, len(addrs))
	for _, a := range addrs {
		keep[a] = struct{}{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for a, b := range r.retired {
		if b.Sessions() == 0 {
			delete(r.retired, a)
		}
	}
	for a, b := range r.backends {
		if _, ok := keep[a]; ok {
			continue
		}
		delete(r.backends, a)
		if b.Sessions() > 0 {
			if r.retired == nil {
				r.retired = make(map[string]*Backend)
			}
			r.retired[a] = b
		}
	}
}
