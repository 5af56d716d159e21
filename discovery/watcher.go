package discovery

import (
	"context"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Spec is what a pool's backends are found by: its discovery settings.
type Spec struct {
	// Name is the DNS name to resolve.
	Name string
	// Type is TypeSRV or TypeA.
	Type string
	// Port is the backends' port with TypeA.
	Port int
	// Resolver is the DNS server's host:port; empty means those of
	// /etc/resolv.conf, with its search domains.
	Resolver string
	// Interval is the time between lookups, which an answer's TTL may
	// shorten down to the Manager's minimum.
	Interval time.Duration
	// Hold is how long a backend missing from the answers stays in the
	// set.
	Hold time.Duration
}

// Backend is a discovered backend.
type Backend struct {
	Address string // host:port, the host an IP address
	Weight  int    // at least 1
}

// Set is a pool's discovered backends, as published.
type Set struct {
	Pool string
	// Spec is the settings that found the set. A Publisher whose pool has
	// other settings by now ignores it: it comes from a watcher that is
	// stopping.
	Spec Spec
	// Backends are sorted by address.
	Backends []Backend
}

// Publisher receives a pool's set each time it changes. The proxy's
// implementation applies it as a reload would.
type Publisher interface {
	Publish(Set)
}

// member is a backend in a watcher's set.
type member struct {
	weight int
	// missingSince is the first answer without it since the last one
	// that had it; zero while the answers have it.
	missingSince time.Time
}

// watcher resolves one pool's name until its context ends.
type watcher struct {
	pool    string
	spec    Spec
	res     resolver
	pub     Publisher
	log     *zap.Logger
	floor   time.Duration // shortest wait between lookups
	stats   *poolStats    // shared by the pool's successive watchers
	cancel  context.CancelFunc
	stopped chan struct{}
	first   chan struct{} // closed once the first lookup is applied

	mu      sync.Mutex
	members map[string]member // by address
}

// watchLoop looks the name up at once, then every interval (or the
// answer's TTL, if shorter, but not below the floor), until ctx is done.
func (w *watcher) watchLoop(ctx context.Context) {
	defer close(w.stopped)
	timer := time.NewTimer(0)
	defer timer.Stop()
	first := w.first
	defer func() {
		if first != nil {
			close(first)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		wait := w.spec.Interval
		ans, err := w.res.lookup(ctx, w.spec)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			w.failed(err)
		} else {
			if ans.ttl >= 0 && ans.ttl < wait {
				wait = ans.ttl
			}
			w.answered(ans, time.Now())
		}
		if first != nil {
			close(first)
			first = nil
		}
		timer.Reset(max(wait, w.floor))
	}
}

// failed records a lookup without an answer: the set stays as it is.
func (w *watcher) failed(err error) {
	n, first := w.stats.failed(err)
	if first {
		w.log.Warn("DNS lookup failed; keeping the backends of the last answer",
			zap.String("pool", w.pool), zap.String("name", w.spec.Name), zap.Error(err))
	} else if ce := w.log.Check(zap.DebugLevel, "DNS lookup failed again"); ce != nil {
		ce.Write(zap.String("pool", w.pool), zap.Int64("failures_in_a_row", n), zap.Error(err))
	}
}

// answered applies an answer: its backends are in the set with their
// weights, and a backend it lacks leaves once the answers have lacked it
// for hold. The set is published if it changed.
func (w *watcher) answered(ans answer, now time.Time) {
	failures, prevSize := w.stats.answered(now, len(ans.backends))
	if failures > 0 {
		w.log.Info("DNS lookups answer again", zap.String("pool", w.pool), zap.Int64("failures", failures))
	}
	w.mu.Lock()
	before := w.setLocked()
	inAnswer := make(map[string]bool, len(ans.backends))
	var added []string
	for _, b := range ans.backends {
		inAnswer[b.Address] = true
		if _, ok := w.members[b.Address]; !ok {
			added = append(added, b.Address)
		}
		w.members[b.Address] = member{weight: b.Weight}
	}
	var gone []string
	for addr, m := range w.members {
		if inAnswer[addr] {
			continue
		}
		if m.missingSince.IsZero() {
			m.missingSince = now
			w.members[addr] = m
		}
		if now.Sub(m.missingSince) >= w.spec.Hold {
			delete(w.members, addr)
			gone = append(gone, addr)
		}
	}
	after := w.setLocked()
	w.mu.Unlock()
	if len(ans.backends) == 0 && prevSize != 0 {
		w.log.Warn("DNS answer without backends", zap.String("pool", w.pool), zap.String("name", w.spec.Name),
			zap.Int("held", len(after)), zap.Duration("hold", w.spec.Hold))
	}
	if slices.Equal(before, after) {
		return
	}
	slices.Sort(gone)
	w.log.Info("discovered backends changed", zap.String("pool", w.pool), zap.String("name", w.spec.Name),
		zap.Int("backends", len(after)), zap.Strings("added", added), zap.Strings("taken_out", gone))
	w.stats.setSize(len(after))
	w.pub.Publish(Set{Pool: w.pool, Spec: w.spec, Backends: after})
}

// set returns the current set, sorted by address.
func (w *watcher) set() []Backend {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.setLocked()
}

func (w *watcher) setLocked() []Backend {
	out := make([]Backend, 0, len(w.members))
	for addr, m := range w.members {
		out = append(out, Backend{Address: addr, Weight: m.weight})
	}
	return normalise(out)
}
