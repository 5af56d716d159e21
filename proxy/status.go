package proxy

import "sort"

// Status is a snapshot of the routing table and its backends, for the
// admin listener.
type Status struct {
	Routes []RouteStatus `json:"routes"`
	Pools  []PoolStatus  `json:"pools"`
	// Sessions is the number of live WebSocket sessions.
	Sessions int `json:"sessions"`
	// Draining is the number of sessions waiting for their drain close.
	Draining int64 `json:"draining"`
}

// RouteStatus describes one route.
type RouteStatus struct {
	Path    string `json:"path"`
	Exact   bool   `json:"exact"`
	Pool    string `json:"pool"`
	HashKey string `json:"hash_key"`
}

// PoolStatus describes one pool and its backends.
type PoolStatus struct {
	Name     string          `json:"name"`
	Backends []BackendStatus `json:"backends"`
}

// BackendStatus describes one backend of a pool. Sessions counts the live
// sessions on the backend from every pool that lists it.
type BackendStatus struct {
	Address  string `json:"address"`
	Weight   int    `json:"weight"`
	Healthy  bool   `json:"healthy"`
	Draining bool   `json:"draining"`
	Sessions int64  `json:"sessions"`
}

// Status returns a snapshot of the current configuration's routes, pools
// and backends.
func (s *Server) Status() Status {
	t := s.table.Load()
	st := Status{Sessions: s.sessions.len(), Draining: s.stats.SessionsDraining.Load()}
	for _, r := range t.routes {
		st.Routes = append(st.Routes, RouteStatus{Path: r.path, Exact: r.exact, Pool: r.pool.name, HashKey: r.key.String()})
	}
	sort.Slice(st.Routes, func(i, j int) bool { return st.Routes[i].Path < st.Routes[j].Path })
	for _, p := range t.pools {
		ps := PoolStatus{Name: p.name}
		for _, b := range p.lb.Backends() {
			ps.Backends = append(ps.Backends, BackendStatus{
				Address:  b.Addr,
				Weight:   p.weights[b.Addr],
				Healthy:  b.Healthy(),
				Draining: b.Draining() || p.weights[b.Addr] == 0,
				Sessions: b.Sessions(),
			})
		}
		sort.Slice(ps.Backends, func(i, j int) bool { return ps.Backends[i].Address < ps.Backends[j].Address })
		st.Pools = append(st.Pools, ps)
	}
	sort.Slice(st.Pools, func(i, j int) bool { return st.Pools[i].Name < st.Pools[j].Name })
	return st
}

// lists reports whether a pool of t has a backend at addr.
func (t *table) lists(addr string) bool {
	for _, p := range t.pools {
		if _, ok := p.weights[addr]; ok {
			return true
		}
	}
	return false
}
