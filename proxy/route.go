package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/internal/relay"
	"github.com/wsproxy/wsproxy/tlsconf"
)

// table is one configuration generation in the form the hot path reads:
// built whole off the hot path and published with an atomic pointer.
type table struct {
	routes    []*route // longest path first
	pools     map[string]*pool
	trusted   []netip.Prefix
	accessLog bool
	// accessLogSample is the fraction of sessions and requests logged.
	accessLogSample float64
	// drainCloseCode is the Close code clients get at shutdown.
	drainCloseCode int
	admission      admissionLimits
	// verifiers run the routes' jwt key-set fetches.
	verifiers *verifiers
	// accessLogIdentity names the header whose authenticated value
	// access-log lines carry; "" for none.
	accessLogIdentity string
}

// route is one entry of the routing table.
type route struct {
	path    string
	exact   bool
	pool    *pool
	key     balancer.KeySpec
	origins [][]byte // lower case; empty means any origin
	limits  Limits
	relay   relay.Limits // the relay's part of limits
	metrics *routeMetrics
	// maxSessions caps the route's tickets (metrics.admitted); 0: none.
	maxSessions int64
	// auth is the route's authentication; nil for none.
	auth     *routeAuth
	affinity *affinity // nil: none (see affinity.go)
}

// pool is a backend pool: the balancer and, for plain HTTP, one client per
// backend.
type pool struct {
	name    string
	lb      *balancer.Pool
	clients map[string]*httpClient
	// tls is the client TLS configuration per backend address, with the
	// server name filled in; nil for a plain pool.
	tls map[string]*tls.Config
	// weights by backend address; 0 means draining.
	weights   map[string]int
	drainRate float64
	// tlsBase is the pool's client TLS configuration before a backend's
	// server name is filled in, and tlsFrom what it was built from.
	tlsBase *tls.Config
	tlsFrom tlsSource
}

// tlsSource is what a pool's client TLS configuration is built from: its
// settings and the size and modification time of each file they name. An
// Update that changes neither (a backend found in DNS, a reload of other
// keys) keeps the configurations, and with them the plain HTTP clients'
// keep-alive connections; a rewritten file builds them anew.
type tlsSource struct {
	settings config.PoolTLS
	files    string
}

func newTLSSource(t config.PoolTLS) tlsSource {
	var b strings.Builder
	for _, f := range []string{t.CAFile, t.CertFile, t.KeyFile} {
		if f == "" {
			continue
		}
		if st, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%d/%d;", st.Size(), st.ModTime().UnixNano())
		} else {
			b.WriteString("?;")
		}
	}
	return tlsSource{settings: t, files: b.String()}
}

// buildTable builds the routing table for c, reusing plain HTTP clients of
// old for backends that stay.
func (s *Server) buildTable(c *config.Config, old *table) (*table, error) {
	t := &table{
		pools:           make(map[string]*pool, len(c.Pools)),
		trusted:         c.TrustedProxies,
		accessLog:       c.Log.AccessLog,
		accessLogSample: c.Log.AccessLogSample,
		drainCloseCode:  c.Defaults.DrainCloseCode,
		admission:       newAdmissionLimits(c.Admission, s.budget),

		verifiers:         &verifiers{byConf: map[string]*runningVerifier{}},
		accessLogIdentity: c.Log.AccessLogIdentity,
	}
	lbConfigs := make(map[string]balancer.PoolConfig, len(c.Pools))
	for _, name := range c.PoolNames() {
		var oldPool *pool
		if old != nil {
			oldPool = old.pools[name]
		}
		p, lc, err := s.buildPool(name, c.Pools[name], oldPool)
		if err != nil {
			return nil, err
		}
		lbConfigs[name] = lc
		t.pools[name] = p
	}
	keys, err := affinityKeys(c.Routes)
	if err != nil {
		return nil, err
	}
	auths := make([]*routeAuth, len(c.Routes))
	for i := range c.Routes {
		var err error
		if auths[i], err = s.buildAuth(&c.Routes[i], t.verifiers); err != nil {
			retireAuth(t, old) // the key-set fetches this table started
			return nil, err
		}
	}
	// Nothing can fail from here on, so the balancers of pools that stay
	// are updated in place (an unchanged pool costs next to nothing, and
	// the old snapshot leaves the backends' load totals at once).
	for name, lc := range lbConfigs {
		if old != nil && old.pools[name] != nil {
			t.pools[name].lb = old.pools[name].lb
			t.pools[name].lb.Update(lc)
		} else {
			t.pools[name].lb = balancer.NewPool(lc)
		}
	}
	for i := range c.Routes {
		r := s.buildRoute(&c.Routes[i], t)
		r.auth = auths[i]
		r.affinity = newAffinity(c.Routes[i].Affinity, keys[i], r.path, r.pool)
		t.routes = append(t.routes, r)
	}
	sort.SliceStable(t.routes, func(i, j int) bool {
		if len(t.routes[i].path) != len(t.routes[j].path) {
			return len(t.routes[i].path) > len(t.routes[j].path)
		}
		return t.routes[i].exact && !t.routes[j].exact
	})
	return t, nil
}

// buildPool builds a pool and the configuration of its balancer, reusing
// from old (the pool of the same name in the table being replaced, or
// nil) the TLS configurations and plain HTTP clients that are still good.
func (s *Server) buildPool(name string, pc *config.Pool, old *pool) (*pool, balancer.PoolConfig, error) {
	p := &pool{
		name:      name,
		clients:   make(map[string]*httpClient, len(pc.Backends)),
		weights:   make(map[string]int, len(pc.Backends)),
		drainRate: pc.DrainRate,
	}
	var base *tls.Config
	var prev *pool // the old pool, when its TLS configurations are still good
	if pc.TLS.Enabled {
		p.tlsFrom = newTLSSource(pc.TLS)
		if old != nil && old.tlsBase != nil && old.tlsFrom == p.tlsFrom {
			prev, base = old, old.tlsBase
		}
	}
	if pc.TLS.Enabled && base == nil {
		var err error
		base, err = tlsconf.NewClient(tlsconf.ClientOptions{
			ServerName:         pc.TLS.ServerName,
			CAFile:             pc.TLS.CAFile,
			CertFile:           pc.TLS.CertFile,
			KeyFile:            pc.TLS.KeyFile,
			InsecureSkipVerify: pc.TLS.InsecureSkipVerify,
		})
		if err != nil {
			return nil, balancer.PoolConfig{}, fmt.Errorf("pool %s: %w", name, err)
		}
		if pc.TLS.InsecureSkipVerify {
			s.log.Warn("TLS to backends without certificate verification", zap.String("pool", name))
		}
	}
	if base != nil {
		p.tlsBase = base
		p.tls = make(map[string]*tls.Config, len(pc.Backends))
	}
	members := make([]*balancer.Backend, 0, len(pc.Backends))
	weights := make([]int, 0, len(pc.Backends))
	for _, bc := range pc.Backends {
		members = append(members, s.backends.Get(bc.Address))
		weights = append(weights, bc.Weight)
		p.weights[bc.Address] = bc.Weight
		var hc *httpClient
		if old != nil {
			hc = old.clients[bc.Address]
		}
		if hc != nil && hc.idleTimeout != pc.IdleConnTimeout {
			hc = nil
		}
		var bt *tls.Config
		if prev != nil {
			bt = prev.tls[bc.Address]
		}
		if bt == nil && base != nil {
			bt = base.Clone()
			if bt.ServerName == "" {
				bt.ServerName, _, _ = net.SplitHostPort(bc.Address)
			}
			hc = nil // new certificates, or a backend new to the pool
		}
		if bt != nil {
			p.tls[bc.Address] = bt
		}
		if hc == nil {
			hc = newHTTPClient(bc.Address, pc.IdleConnTimeout)
		}
		p.clients[bc.Address] = hc
	}
	return p, balancer.PoolConfig{Backends: members, Weights: weights, BoundedLoad: pc.BoundedLoad}, nil
}

// buildRoute builds the table entry of a configured route.
func (s *Server) buildRoute(rc *config.Route, t *table) *route {
	r := &route{
		path:    rc.Path,
		exact:   rc.Exact,
		pool:    t.pools[rc.Pool],
		key:     keySpec(rc.HashKey),
		limits:  rc.Limits,
		relay:   relayLimits(&rc.Limits, s.closeTimeout),
		metrics: s.metrics.route(rc.Path),

		maxSessions: int64(rc.MaxSessions),
	}
	for _, o := range rc.AllowedOrigins {
		r.origins = append(r.origins, []byte(strings.ToLower(o)))
	}
	return r
}

// keySpec converts the configured hash key.
func keySpec(k config.HashKey) balancer.KeySpec {
	switch k.Kind {
	case config.HashHeader:
		return balancer.KeySpec{Kind: balancer.KeyHeader, Name: k.Name}
	case config.HashCookie:
		return balancer.KeySpec{Kind: balancer.KeyCookie, Name: k.Name}
	case config.HashQuery:
		return balancer.KeySpec{Kind: balancer.KeyQuery, Name: k.Name}
	case config.HashPath:
		return balancer.KeySpec{Kind: balancer.KeyPath}
	}
	return balancer.KeySpec{Kind: balancer.KeyIP}
}

// match returns the route for path: an exact route equal to it, else the
// longest prefix route that covers it at a segment boundary ("/chat"
// covers "/chat" and "/chat/room", not "/chatroom").
func (t *table) match(path []byte) *route {
	for _, r := range t.routes {
		if r.exact {
			if string(path) == r.path {
				return r
			}
			continue
		}
		if !bytes.HasPrefix(path, []byte(r.path)) {
			continue
		}
		if len(path) == len(r.path) || strings.HasSuffix(r.path, "/") || path[len(r.path)] == '/' {
			return r
		}
	}
	return nil
}

// isTrusted reports whether peer is a trusted proxy.
func (t *table) isTrusted(peer netip.Addr) bool {
	for _, p := range t.trusted {
		if p.Contains(peer) {
			return true
		}
	}
	return false
}

// originAllowed checks an Origin header against the route's list. A
// request without Origin comes from a non-browser client, which the check
// cannot concern, and passes.
func (r *route) originAllowed(origin []byte) bool {
	if len(r.origins) == 0 || len(origin) == 0 {
		return true
	}
	for _, o := range r.origins {
		if bytes.EqualFold(o, origin) || (len(o) == 1 && o[0] == '*') {
			return true
		}
	}
	return false
}

// relayLimits are the limits a route's sessions relay with.
func relayLimits(l *Limits, closeTimeout time.Duration) relay.Limits {
	return relay.Limits{
		ReadTimeout:               l.ReadTimeout,
		IdleTimeout:               l.IdleTimeout,
		WriteTimeout:              l.WriteTimeout,
		PingInterval:              l.PingInterval,
		MaxMessageBytes:           l.MaxMessageBytes,
		MaxMessagesPerSecond:      l.MaxMessagesPerSecond,
		MessageBurst:              l.MessageBurst,
		MaxControlFramesPerSecond: l.MaxControlFramesPerSecond,
		BackendGoneCloseCode:      l.BackendGoneCloseCode,
		CloseTimeout:              closeTimeout,
	}
}
