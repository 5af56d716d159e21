package discovery

import "github.com/wsproxy/wsproxy/config"

// Specs returns the discovery settings of cfg's pools, by pool name.
func Specs(cfg *config.Config) map[string]Spec {
	out := map[string]Spec{}
	for name, p := range cfg.Pools {
		if d := p.Discovery; d != nil {
			out[name] = Spec{Name: d.DNS, Type: d.Type, Port: d.Port, Resolver: d.Resolver, Interval: d.Interval, Hold: d.Hold}
		}
	}
	return out
}

// Merge returns cfg with the discovered backends of each pool (sets, by
// pool name) added to the backends it lists: the configuration the proxy
// runs, so that a discovered backend is added, reweighted and drained by
// the same code as a listed one. A listed address keeps its listed weight
// whether or not DNS finds it too. cfg is not modified; pools without a
// set are shared with it.
func Merge(cfg *config.Config, sets map[string][]Backend) *config.Config {
	out := *cfg
	out.Pools = make(map[string]*config.Pool, len(cfg.Pools))
	for name, p := range cfg.Pools {
		found := sets[name]
		if p.Discovery == nil || len(found) == 0 {
			out.Pools[name] = p
			continue
		}
		listed := make(map[string]bool, len(p.Backends))
		for _, b := range p.Backends {
			listed[b.Address] = true
		}
		mp := *p
		mp.Backends = make([]config.Backend, 0, len(p.Backends)+len(found))
		mp.Backends = append(mp.Backends, p.Backends...)
		for _, b := range found {
			if !listed[b.Address] {
				mp.Backends = append(mp.Backends, config.Backend{Address: b.Address, Weight: b.Weight})
			}
		}
		out.Pools[name] = &mp
	}
	return &out
}
