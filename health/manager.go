package health

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// StatusSetter receives state changes. balancer.Registry implements it.
type StatusSetter interface {
	SetHealthy(addr string, up bool)
}

// Change is a backend's state change.
type Change struct {
	// Pool is the pool whose check or whose failure reports caused the
	// change; empty when the address left the configuration.
	Pool string
	// Addr is the backend address.
	Addr string
	// Up is the new state.
	Up bool
	// Reason says why, for humans.
	Reason string
	// At is when the change happened.
	At time.Time
}

// Config configures a Manager. Zero values mean the documented default.
type Config struct {
	// Setter receives every state change; nil means nobody does.
	Setter StatusSetter
	// Logger receives state changes (info when up, warn when down) and, at
	// debug level, failed probes; nil means no logging.
	Logger *zap.Logger
	// OnChange, when not nil, is called after Setter for every state
	// change, e.g. for metrics.
	OnChange func(Change)
}

// Manager runs the checks of every backend of the configuration and keeps
// the state of each address. Its methods are safe for concurrent use.
type Manager struct {
	log      *zap.Logger
	setter   StatusSetter
	onChange func(Change)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// snap is states, republished whole by Update, so that ReportSuccess
	// and State take no lock.
	snap atomic.Pointer[map[string]*addrState]

	mu       sync.Mutex
	closed   bool
	checkers map[checkerKey]*checker
	states   map[string]*addrState
	pending  []Change // to deliver, in order
	flushing bool     // a goroutine is delivering pending

	// probed, when set before the first Update, hears every probe result
	// before it is recorded. For tests.
	probed func(pool, addr string, err error)
}

// addrState is the state of one backend address, shared by the pools that
// list it.
type addrState struct {
	addr         string
	up           atomic.Bool  // written under Manager.mu
	passiveFails atomic.Int64 // consecutive failures reported by the proxy

	// Guarded by Manager.mu.
	passiveThreshold int // 0: off
	checkers         []*checker
}

// NewManager returns a Manager with no backend; Update gives it some. It
// stops every check when ctx is done or Close is called.
func NewManager(ctx context.Context, cfg Config) *Manager {
	m := &Manager{
		log:      cfg.Logger,
		setter:   cfg.Setter,
		onChange: cfg.OnChange,
		checkers: make(map[checkerKey]*checker),
		states:   make(map[string]*addrState),
	}
	if m.log == nil {
		m.log = zap.NewNop()
	}
	m.ctx, m.cancel = context.WithCancel(ctx)
	m.snap.Store(&map[string]*addrState{})
	return m
}

// Update makes the checks match pools. Checkers are keyed by (pool,
// backend address): a new key gets a checker, a removed one's checker is
// stopped, an unchanged one keeps running with its counters, and one whose
// Spec changed (PassiveFailures aside) is restarted with fresh counters but
// its current verdict. A new address starts healthy; an address that is
// already known keeps its state, and a new checker for it starts with that
// state. An address no pool lists any more is forgotten (reported up if it
// was down, so that the Setter holds no stale state).
//
// An invalid Spec is logged and replaced by one of TypeNone. Update returns
// once the stopped checkers have returned; it does nothing after Close.
func (m *Manager) Update(pools []PoolSpec) {
	wants, thresholds := m.wanted(pools)
	m.mu.Lock()
	if m.closed || m.ctx.Err() != nil {
		m.mu.Unlock()
		return
	}
	now := time.Now()
	stopped, verdicts, touched := m.stopChanged(wants)
	m.forgetUnlisted(thresholds, touched, now)
	for addr, t := range thresholds {
		st := m.states[addr]
		if st == nil {
			st = &addrState{addr: addr}
			st.up.Store(true)
			m.states[addr] = st
		}
		st.passiveThreshold = t
	}
	m.startMissing(wants, verdicts)
	for st, pool := range touched {
		m.recompute(st, pool, fmt.Sprintf("health check of pool %q removed", pool), now)
	}
	snap := maps.Clone(m.states)
	m.snap.Store(&snap)
	m.mu.Unlock()

	for _, c := range stopped {
		<-c.done
	}
	m.flush()
}

// wanted returns the checkers pools ask for, each Spec validated and
// defaulted, and each address's passive threshold: the lowest of its
// pools' that is on, 0 when every one is off.
func (m *Manager) wanted(pools []PoolSpec) (map[checkerKey]Spec, map[string]int) {
	wants := make(map[checkerKey]Spec)
	thresholds := make(map[string]int)
	for _, p := range pools {
		spec := p.Spec
		if err := spec.Validate(); err != nil {
			m.log.Error("invalid health check; the pool's backends get passive checks only",
				zap.String("pool", p.Pool), zap.Error(err))
			spec = Spec{TLS: spec.TLS, PassiveFailures: spec.PassiveFailures}
		}
		spec = spec.withDefaults()
		for _, addr := range p.Backends {
			wants[checkerKey{p.Pool, addr}] = spec
			t, seen := thresholds[addr]
			if n := spec.PassiveFailures; n > 0 && (!seen || t == 0 || n < t) {
				t = n
			}
			thresholds[addr] = t
		}
	}
	return wants, thresholds
}

// stopChanged stops the checkers that wants drops or changes. It returns
// them (to wait for once m.mu is released), the verdicts of those to be
// restarted, and the states that lost a checker with its pool. The caller
// holds m.mu.
func (m *Manager) stopChanged(wants map[checkerKey]Spec) ([]*checker, map[checkerKey]bool, map[*addrState]string) {
	var stopped []*checker
	verdicts := make(map[checkerKey]bool)
	touched := make(map[*addrState]string)
	for key, c := range m.checkers {
		spec, ok := wants[key]
		if ok && c.spec.sameChecker(spec) {
			continue
		}
		if ok {
			verdicts[key] = c.up
		}
		c.stopped = true
		c.cancel()
		stopped = append(stopped, c)
		delete(m.checkers, key)
		st := m.states[key.addr]
		st.checkers = slices.DeleteFunc(st.checkers, func(o *checker) bool { return o == c })
		touched[st] = key.pool
	}
	return stopped, verdicts, touched
}

// forgetUnlisted drops the addresses no pool lists any more, reporting up
// those that were down so that the Setter holds no stale state. The caller
// holds m.mu.
func (m *Manager) forgetUnlisted(listed map[string]int, touched map[*addrState]string, now time.Time) {
	for addr, st := range m.states {
		if _, ok := listed[addr]; ok {
			continue
		}
		delete(m.states, addr)
		delete(touched, st)
		if !st.up.Load() {
			st.up.Store(true)
			m.pending = append(m.pending, Change{Addr: addr, Up: true, Reason: "removed from the configuration", At: now})
		}
	}
}

// startMissing starts a checker for each key of wants that has none: a
// restarted one with its old verdict, a new one with its address's state.
// The caller holds m.mu.
func (m *Manager) startMissing(wants map[checkerKey]Spec, verdicts map[checkerKey]bool) {
	for key, spec := range wants {
		if _, ok := m.checkers[key]; ok {
			continue
		}
		st := m.states[key.addr]
		up, restarted := verdicts[key]
		if !restarted {
			up = st.up.Load()
		}
		c := newChecker(m, key, spec, up)
		var cctx context.Context
		cctx, c.cancel = context.WithCancel(m.ctx)
		m.checkers[key] = c
		st.checkers = append(st.checkers, c)
		m.wg.Add(1)
		go c.run(cctx)
	}
}

// ReportFailure tells passive checking that the proxy could not reach addr,
// a member of pool (the backend's own failure: refused, timed out, reset).
// PassiveFailures of them in a row take the backend out at once; only its
// active checks bring it back. The change names pool. Unknown addresses are
// ignored.
func (m *Manager) ReportFailure(pool, addr string, err error) {
	st := (*m.snap.Load())[addr]
	if st == nil || !st.up.Load() {
		return
	}
	m.mu.Lock()
	if m.closed || m.ctx.Err() != nil || m.states[addr] != st || st.passiveThreshold == 0 || !st.up.Load() {
		m.mu.Unlock()
		return
	}
	n := st.passiveFails.Add(1)
	if n < int64(st.passiveThreshold) {
		m.mu.Unlock()
		return
	}
	for _, c := range st.checkers {
		c.up, c.successes, c.failures = false, 0, 0
		c.wakeUp()
	}
	m.recompute(st, pool, fmt.Sprintf("%d consecutive connection failures reported by the proxy, last: %v", n, err), time.Now())
	m.mu.Unlock()
	m.flush()
}

// ReportSuccess tells passive checking that the proxy reached addr: it
// resets the count of failures in a row. It does not bring back a backend
// that is down. It takes no lock.
func (m *Manager) ReportSuccess(addr string) {
	st := (*m.snap.Load())[addr]
	if st != nil && st.passiveFails.Load() != 0 {
		st.passiveFails.Store(0)
	}
}

// State reports whether addr is up, and whether the Manager knows it. It
// takes no lock.
func (m *Manager) State(addr string) (up, ok bool) {
	st := (*m.snap.Load())[addr]
	if st == nil {
		return false, false
	}
	return st.up.Load(), true
}

// Close stops every check and returns once they have all returned. Later
// calls of Update and ReportFailure do nothing.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// verdict returns c's verdict.
func (m *Manager) verdict(c *checker) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return c.up
}

// record applies a probe outcome to c's counters and verdict.
func (m *Manager) record(c *checker, err error) {
	m.mu.Lock()
	if c.stopped {
		m.mu.Unlock()
		return
	}
	var reason string
	switch {
	case err == nil:
		c.failures = 0
		if !c.up {
			c.successes++
			if c.successes >= c.spec.HealthyThreshold {
				c.up, c.successes = true, 0
				reason = fmt.Sprintf("%d %s checks passed in a row", c.spec.HealthyThreshold, c.prober.kind)
			}
		}
	default:
		c.successes = 0
		if c.up {
			c.failures++
			if c.failures >= c.spec.UnhealthyThreshold {
				c.up, c.failures = false, 0
				reason = fmt.Sprintf("%d %s checks failed in a row, last: %v", c.spec.UnhealthyThreshold, c.prober.kind, err)
			}
		}
	}
	if reason != "" {
		st := m.states[c.key.addr]
		if !m.recompute(st, c.key.pool, reason, time.Now()) {
			m.log.Debug("health check verdict changed; another pool's check holds the backend down",
				zap.String("pool", c.key.pool), zap.String("backend", c.key.addr),
				zap.Bool("up", c.up), zap.String("reason", reason))
		}
	}
	m.mu.Unlock()
	m.flush()
}

// recompute sets st's state from its checkers' verdicts (up when all are
// up) and queues the change, if any. Called with m.mu held.
func (m *Manager) recompute(st *addrState, pool, reason string, at time.Time) bool {
	up := true
	for _, c := range st.checkers {
		up = up && c.up
	}
	if up == st.up.Load() {
		return false
	}
	st.up.Store(up)
	st.passiveFails.Store(0)
	m.pending = append(m.pending, Change{Pool: pool, Addr: st.addr, Up: up, Reason: reason, At: at})
	return true
}

// flush delivers the pending changes in order, one at a time, outside the
// lock. If another goroutine is delivering already, it delivers ours too.
func (m *Manager) flush() {
	m.mu.Lock()
	if m.flushing {
		m.mu.Unlock()
		return
	}
	m.flushing = true
	for len(m.pending) > 0 {
		batch := m.pending
		m.pending = nil
		m.mu.Unlock()
		for _, ch := range batch {
			m.deliver(ch)
		}
		m.mu.Lock()
	}
	m.flushing = false
	m.mu.Unlock()
}

// deliver logs ch and hands it to the Setter and OnChange.
func (m *Manager) deliver(ch Change) {
	from, to, level := "up", "down", zap.WarnLevel
	if ch.Up {
		from, to, level = "down", "up", zap.InfoLevel
	}
	if ce := m.log.Check(level, "backend "+to); ce != nil {
		ce.Write(zap.String("pool", ch.Pool), zap.String("backend", ch.Addr),
			zap.String("from", from), zap.String("to", to), zap.String("reason", ch.Reason))
	}
	if m.setter != nil {
		m.setter.SetHealthy(ch.Addr, ch.Up)
	}
	if m.onChange != nil {
		m.onChange(ch)
	}
}
