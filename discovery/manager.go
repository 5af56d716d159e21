package discovery

import (
	"context"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Config configures a Manager. Zero values mean the documented default.
type Config struct {
	// Publisher receives every pool's set when it changes. Required.
	Publisher Publisher
	// Logger receives failed lookups and changed sets; nil means no
	// logging.
	Logger *zap.Logger
	// Timeout bounds one exchange with one DNS server; zero means 2s.
	Timeout time.Duration
	// MinInterval is the shortest wait between two lookups of a name,
	// whatever its TTLs; zero means 500ms.
	MinInterval time.Duration
}

// Defaults of Config.
const (
	defaultTimeout     = 2 * time.Second
	defaultMinInterval = 500 * time.Millisecond
)

// Manager runs a watcher per discovered pool and keeps their figures.
// Its methods are safe for concurrent use.
type Manager struct {
	cfg Config
	log *zap.Logger
	ctx context.Context
	wg  sync.WaitGroup

	mu       sync.Mutex
	watchers map[string]*watcher
	// stats outlive the watchers: a pool whose settings change keeps its
	// counts.
	stats map[string]*poolStats
}

// NewManager returns a Manager with no pool; Update gives it some. Its
// watchers stop when ctx is done; Wait waits for them.
func NewManager(ctx context.Context, cfg Config) *Manager {
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = defaultMinInterval
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, ctx: ctx, watchers: map[string]*watcher{}, stats: map[string]*poolStats{}}
	if m.log == nil {
		m.log = zap.NewNop()
	}
	return m
}

// Update makes the watchers match pools (discovery settings by pool
// name). A pool whose settings are unchanged keeps its watcher and its
// set. A pool whose settings changed gets a new watcher that starts from
// the old one's set, so its backends leave only as the new answers and
// the hold say; a pool no longer listed has its watcher stopped. Update
// does not wait for stopped watchers; a Set they publish late carries
// their old Spec.
func (m *Manager) Update(pools map[string]Spec) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, w := range m.watchers {
		if spec, ok := pools[name]; !ok || spec != w.spec {
			w.cancel()
			if !ok {
				delete(m.watchers, name)
				delete(m.stats, name)
			}
		}
	}
	for name, spec := range pools {
		old := m.watchers[name]
		if old != nil && old.spec == spec {
			continue
		}
		st := m.stats[name]
		if st == nil {
			st = &poolStats{started: time.Now()}
			m.stats[name] = st
		}
		st.setSpec(spec)
		w := &watcher{
			pool:    name,
			spec:    spec,
			res:     resolver{server: spec.Resolver, timeout: m.cfg.Timeout},
			pub:     m.cfg.Publisher,
			log:     m.log,
			floor:   m.cfg.MinInterval,
			stats:   st,
			stopped: make(chan struct{}),
			first:   make(chan struct{}),
			members: map[string]member{},
		}
		if old != nil {
			old.mu.Lock()
			for a, mb := range old.members {
				w.members[a] = mb
			}
			old.mu.Unlock()
		}
		ctx, cancel := context.WithCancel(m.ctx)
		w.cancel = cancel
		m.watchers[name] = w
		m.wg.Add(1)
		go m.run(ctx, w)
	}
}

// run runs a watcher's loop and counts it out.
func (m *Manager) run(ctx context.Context, w *watcher) {
	defer m.wg.Done()
	w.watchLoop(ctx)
}

// Wait waits until every watcher has returned: after the Manager's
// context is done.
func (m *Manager) Wait() { m.wg.Wait() }

// WaitFirstLookups waits until every watcher has made its first lookup
// and published what it found, or until ctx is done.
func (m *Manager) WaitFirstLookups(ctx context.Context) {
	m.mu.Lock()
	var firsts []chan struct{}
	for _, w := range m.watchers {
		firsts = append(firsts, w.first)
	}
	m.mu.Unlock()
	for _, c := range firsts {
		select {
		case <-c:
		case <-ctx.Done():
			return
		}
	}
}

// Backends returns a pool's current set, or nil for a pool not
// discovered.
func (m *Manager) Backends(pool string) []Backend {
	m.mu.Lock()
	w := m.watchers[pool]
	m.mu.Unlock()
	if w == nil {
		return nil
	}
	return w.set()
}

// PoolStatus describes where a discovered pool's backends come from and
// how its lookups go.
type PoolStatus struct {
	Pool     string `json:"pool"`
	Type     string `json:"type"`
	Name     string `json:"name"`
	Resolver string `json:"resolver"` // "" means /etc/resolv.conf
	// Backends is the size of the discovered set.
	Backends int `json:"backends"`
	// LastSuccess is when the last answer came; zero before the first.
	LastSuccess time.Time `json:"last_success"`
	// AgeSeconds is the time since LastSuccess, or since discovery of the
	// pool started when no answer came yet.
	AgeSeconds float64 `json:"age_seconds"`
	// Lookups and Failures count lookups, and those without an answer.
	Lookups  int64 `json:"lookups"`
	Failures int64 `json:"failures"`
	// FailuresInARow is the failed lookups since the last answer, and
	// LastError the last one's reason.
	FailuresInARow int64  `json:"failures_in_a_row"`
	LastError      string `json:"last_error,omitempty"`
}

// Status returns the figures of every discovered pool, by pool name.
func (m *Manager) Status() []PoolStatus {
	m.mu.Lock()
	out := make([]PoolStatus, 0, len(m.stats))
	for name, st := range m.stats {
		out = append(out, st.status(name, time.Now()))
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Pool < out[j].Pool })
	return out
}

// poolStats are a pool's lookup figures.
type poolStats struct {
	mu             sync.Mutex
	spec           Spec
	started        time.Time
	lastSuccess    time.Time
	lookups        int64
	failures       int64
	failuresInARow int64
	lastErr        string
	lastSize       int // backends in the last answer; -1 before one
	size           int // backends in the set
}

func (s *poolStats) setSpec(spec Spec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.spec = spec
	s.lastSize = -1
}

// failed counts a failed lookup; it returns the failures in a row and
// whether this is the first of them.
func (s *poolStats) failed(err error) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lookups++
	s.failures++
	s.failuresInARow++
	s.lastErr = err.Error()
	return s.failuresInARow, s.failuresInARow == 1
}

// answered counts an answer of n backends; it returns the failures that
// came before it in a row and the size of the previous answer (-1: none).
func (s *poolStats) answered(now time.Time, n int) (int64, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lookups++
	failures, prev := s.failuresInARow, s.lastSize
	s.failuresInARow, s.lastErr, s.lastSuccess, s.lastSize = 0, "", now, n
	return failures, prev
}

func (s *poolStats) setSize(n int) {
	s.mu.Lock()
	s.size = n
	s.mu.Unlock()
}

func (s *poolStats) status(pool string, now time.Time) PoolStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	since := s.lastSuccess
	if since.IsZero() {
		since = s.started
	}
	return PoolStatus{
		Pool: pool, Type: s.spec.Type, Name: s.spec.Name, Resolver: s.spec.Resolver,
		Backends:       s.size,
		LastSuccess:    s.lastSuccess,
		AgeSeconds:     now.Sub(since).Seconds(),
		Lookups:        s.lookups,
		Failures:       s.failures,
		FailuresInARow: s.failuresInARow,
		LastError:      s.lastErr,
	}
}
