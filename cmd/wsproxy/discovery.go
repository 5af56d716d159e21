package main

import (
	"context"
	"maps"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/discovery"
)

// discoveryStartWait bounds the wait at start for the first lookups of
// discovered pools, so that the proxy is ready with their backends; a DNS
// server that does not answer does not hold the start up longer.
const discoveryStartWait = 5 * time.Second

// discovered applies the backends DNS finds: it merges each pool's set
// into the configuration the file gives and applies the result as a
// reload does (proxy.Server.Update, health.Manager.Update), so that a
// discovered backend is added, reweighted and drained by the same code as
// a listed one. It is the discovery.Publisher of the instance.
type discovered struct {
	in     *instance
	mgr    *discovery.Manager
	cancel context.CancelFunc

	// mu serialises applying: a set published, a reload.
	mu   sync.Mutex
	file *config.Config                 // the file's configuration, as last applied
	sets map[string][]discovery.Backend // by pool
}

// startDiscovery starts resolving the discovered pools of cfg, which the
// proxy already runs, and waits a little for their first lookups.
func (in *instance) startDiscovery(ctx context.Context, cfg *config.Config) {
	ctx, cancel := context.WithCancel(ctx)
	d := &discovered{in: in, cancel: cancel, file: cfg, sets: map[string][]discovery.Backend{}}
	d.mgr = discovery.NewManager(ctx, discovery.Config{Publisher: d, Logger: in.log.Named("discovery")})
	in.discovered = d
	d.mgr.Update(discovery.Specs(cfg))
	wait, done := context.WithTimeout(ctx, discoveryStartWait)
	defer done()
	d.mgr.WaitFirstLookups(wait)
}

// stop stops the lookups and waits for the watchers: at shutdown, so that
// no set is applied while sessions drain.
func (d *discovered) stop() {
	d.cancel()
	d.mgr.Wait()
}

// Publish applies a pool's new set, unless it comes from settings the
// running configuration no longer has.
func (d *discovered) Publish(s discovery.Set) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if spec, ok := discovery.Specs(d.file)[s.Pool]; !ok || spec != s.Spec {
		return
	}
	d.sets[s.Pool] = s.Backends
	merged := discovery.Merge(d.file, d.sets)
	if err := d.in.srv.Update(merged); err != nil {
		d.in.log.Error("discovered backends not applied", zap.String("pool", s.Pool), zap.Error(err))
		return
	}
	d.in.health.Update(d.in.healthSpecs(merged))
}

// apply applies a reloaded file: the sets of pools that are still
// discovered stay (a pool whose settings changed keeps its set until the
// new name's answers and the hold change it), and the watchers follow
// the new settings.
func (d *discovered) apply(cfg *config.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	specs := discovery.Specs(cfg)
	sets := maps.Clone(d.sets)
	for pool := range sets {
		if _, ok := specs[pool]; !ok {
			delete(sets, pool)
		}
	}
	merged := discovery.Merge(cfg, sets)
	if err := d.in.srv.Update(merged); err != nil {
		return err
	}
	d.file, d.sets = cfg, sets
	d.mgr.Update(specs)
	d.in.health.Update(d.in.healthSpecs(merged))
	return nil
}

// DiscoveryOf returns the discovery figures of a pool, or nil for a pool
// whose backends are all listed in the file. For the status page.
func (r statusReport) DiscoveryOf(pool string) *discovery.PoolStatus {
	for i := range r.Discovery {
		if r.Discovery[i].Pool == pool {
			return &r.Discovery[i]
		}
	}
	return nil
}
