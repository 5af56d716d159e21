package proxy

import (
	"errors"
	"sort"

	"go.uber.org/zap"
)

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

// ErrUnknownBackend is returned for an address no pool lists.
var ErrUnknownBackend = errors.New("no pool lists this backend")

// DrainBackend takes the backend at addr out of every pool that lists it
// without a config change: it gets no new sessions, and its live sessions
// are drained as on scale-down (spread over their drain timeout, at most
// their pool's drain rate). The mark survives reloads until
// UndrainBackend. It returns the number of sessions being drained.
func (s *Server) DrainBackend(addr string) (int, error) {
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	t := s.table.Load()
	if !t.lists(addr) {
		return 0, ErrUnknownBackend
	}
	s.backends.Get(addr).SetDraining(true)
	plans := map[string]*drainPlan{}
	s.sessions.each(func(ss *session) {
		if ss.upstream.Addr != addr || ss.drainedBy.Load() != 0 {
			return
		}
		d := plans[ss.pool]
		if d == nil {
			d = &drainPlan{window: ss.limits.DrainTimeout, code: ss.limits.DrainCloseCode, reason: "backend drained"}
			if p := t.pools[ss.pool]; p != nil {
				d.rate = p.drainRate
			}
			plans[ss.pool] = d
		}
		d.sessions = append(d.sessions, ss)
	})
	n := 0
	for _, d := range plans {
		s.claim(d, false)
		n += len(d.sessions)
		s.drains.Add(1)
		go s.drainInBackground(*d)
	}
	return n, nil
}

// UndrainBackend lets the backend at addr take new sessions again. Its
// sessions still waiting for their drain close stay open (unless a reload
// drains them too); those already closed stay closed.
func (s *Server) UndrainBackend(addr string) error {
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	t := s.table.Load()
	if !t.lists(addr) {
		return ErrUnknownBackend
	}
	s.backends.Get(addr).SetDraining(false)
	reprieved := 0
	s.sessions.each(func(ss *session) {
		if ss.upstream.Addr == addr && !s.stopping.Load() && t.keeps(ss) && s.reprieve(ss) {
			reprieved++
		}
	})
	if reprieved > 0 {
		s.log.Info("drain called off: backend undrained", zap.String("backend", addr), zap.Int("sessions", reprieved))
	}
	return nil
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
