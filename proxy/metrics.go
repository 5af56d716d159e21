package proxy

import (
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsproxy/wsproxy/internal/relay"
)

// How the proxy's figures reach Prometheus without costing the relay
// anything.
//
// The relay counts into atomics it owns already: each side of a session
// counts the messages and bytes it sent (relay.Session.Counts, one
// uncontended add per read), and Stats holds the global counters, counted
// by the relay's hooks for rare events. Nothing on the path of a frame
// touches a Prometheus type or a label; the one Prometheus type the relay
// reaches is the ping round-trip histogram, through the Pong hook, once
// per ping interval of a silent session at most.
//
// Per-route and per-backend totals are folded in when a session ends
// (retire), and a scrape adds the counters of the live sessions to them.
// A scrape excludes session ends (endMu), so that every session is counted
// exactly once, either live or folded, and a counter never goes backwards.
// Counting every frame into per-backend atomics instead was rejected:
// each read would write a cache line shared by every core relaying for
// that backend.
//
// Label values are bounded by the configuration: route paths, backend
// addresses and pool names, and fixed sets (close codes, outcomes). Series
// of a route or backend the configuration dropped go away at the reload
// that drops it, or, while sessions still use it, at the first reload
// after the last one ended.

// closeCodes are the Close codes counted by name (RFC 6455 section 7.4.1
// and the IANA registry); any other code counts as "other".
var closeCodes = [...]int{1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015}

// closeOther is the bucket of codes not in closeCodes.
const closeOther = len(closeCodes)

// closeBucket returns the metrics bucket of a Close code.
func closeBucket(code int32) int {
	for i, c := range closeCodes {
		if int32(c) == code {
			return i
		}
	}
	return closeOther
}

// closeCodeLabels are the label values of the close buckets.
var closeCodeLabels = func() []string {
	out := make([]string, 0, len(closeCodes)+1)
	for _, c := range closeCodes {
		out = append(out, strconv.Itoa(c))
	}
	return append(out, "other")
}()

// parties is how many values relay.Party has, the closed_by label
// (relay.Party.String).
const parties = int(relay.PartyProxy) + 1

// directionLabels name a side's traffic by where it goes, indexed by the
// relay.Side that sent it.
var directionLabels = [...]string{"client_to_backend", "backend_to_client"}

// statusClassLabels are the HTTP status classes, indexed by status/100-1.
var statusClassLabels = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// flowCounters are messages and bytes by the side that sent them.
type flowCounters struct {
	msgs  [2]atomic.Int64
	bytes [2]atomic.Int64
}

// fold adds a session's counters.
func (f *flowCounters) fold(ss *session) {
	for _, k := range [...]relay.Side{relay.Client, relay.Backend} {
		msgs, bytes := ss.Counts(k)
		f.msgs[k].Add(msgs)
		f.bytes[k].Add(bytes)
	}
}

// routeMetrics are the totals of one route path. A route's plain HTTP
// requests count here directly: there is one add per request.
type routeMetrics struct {
	path string
	live atomic.Int64 // sessions started and not yet retired
	// admitted counts the route's admission tickets: live sessions and
	// handshakes in progress.
	admitted atomic.Int64
	started  atomic.Int64
	flowCounters
	closes [closeOther + 1][parties]atomic.Int64
	http   [len(statusClassLabels)]atomic.Int64
}

// countHTTP counts a plain HTTP response of the route.
func (r *routeMetrics) countHTTP(status int) {
	c := status/100 - 1
	if c < 0 || c >= len(r.http) {
		c = len(r.http) - 1 // nonsense from a backend: a server error
	}
	r.http[c].Add(1)
}

// backendMetrics are the totals of one backend address, shared by every
// pool that lists it.
type backendMetrics struct {
	addr string
	live atomic.Int64
	flowCounters
	// rtt observes the round trips of the proxy's pings to the backend:
	// one observation per ping interval of a silent session at most.
	rtt prometheus.Observer
}

// metrics holds the per-route and per-backend totals. Entries are made
// for the configured routes and backends and for sessions that start; an
// entry neither configured nor used by a live session is dropped at the
// next reload.
type metrics struct {
	// endMu is held shared by ending sessions while they move from the
	// registry to the totals, and exclusively by a scrape.
	endMu sync.RWMutex

	mu       sync.Mutex
	routes   map[string]*routeMetrics
	backends map[string]*backendMetrics

	backendRTT *prometheus.HistogramVec
	clientRTT  prometheus.Histogram
}

// pingBuckets span a LAN round trip to a congested mobile one.
var pingBuckets = prometheus.ExponentialBuckets(0.0005, 2, 15) // 0.5ms .. 8.2s

func (m *metrics) init() {
	m.routes = make(map[string]*routeMetrics)
	m.backends = make(map[string]*backendMetrics)
	m.backendRTT = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "wsproxy",
		Name:      "backend_ping_rtt_seconds",
		Help:      "Round trip of the proxy's pings to a backend, from Ping sent to its Pong read.",
		Buckets:   pingBuckets,
	}, []string{"backend"})
	m.clientRTT = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "wsproxy",
		Name:      "client_ping_rtt_seconds",
		Help:      "Round trip of the proxy's pings to clients, from Ping sent to its Pong read.",
		Buckets:   pingBuckets,
	})
}

// route returns the totals of a route path, making them if needed.
func (m *metrics) route(path string) *routeMetrics {
	if m.routes == nil {
		return &routeMetrics{path: path} // a bare Server in tests: counted nowhere
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.routes[path]
	if r == nil {
		r = &routeMetrics{path: path}
		m.routes[path] = r
	}
	return r
}

// backend returns the totals of a backend address, making them if needed.
func (m *metrics) backend(addr string) *backendMetrics {
	if m.backends == nil {
		return &backendMetrics{addr: addr, rtt: noObserver{}}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b := m.backends[addr]
	if b == nil {
		b = &backendMetrics{addr: addr, rtt: m.backendRTT.WithLabelValues(addr)}
		m.backends[addr] = b
	}
	return b
}

type noObserver struct{}

func (noObserver) Observe(float64) {}

// retain makes entries for everything t configures and drops the entries
// t does not configure and no live session uses.
func (m *metrics) retain(t *table) {
	if m.routes == nil {
		return
	}
	routes := make(map[string]bool, len(t.routes))
	for _, r := range t.routes {
		routes[r.path] = true
	}
	addrs := make(map[string]bool)
	for _, p := range t.pools {
		for a := range p.weights {
			addrs[a] = true
			m.backend(a)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for path, r := range m.routes {
		if !routes[path] && r.live.Load() == 0 {
			delete(m.routes, path)
		}
	}
	for addr, b := range m.backends {
		if !addrs[addr] && b.live.Load() == 0 {
			delete(m.backends, addr)
			m.backendRTT.DeleteLabelValues(addr)
		}
	}
}

// started counts a session that was just registered.
func (m *metrics) started(ss *session) {
	ss.rm.live.Add(1)
	ss.rm.started.Add(1)
	ss.bm.live.Add(1)
}

// retire runs leave, which takes an ending session out of the registry,
// and folds the session's counters into the totals, as one step for
// scrapes.
func (m *metrics) retire(ss *session, leave func()) {
	m.endMu.RLock()
	defer m.endMu.RUnlock()
	if leave != nil {
		leave()
	}
	if ss.rm == nil || ss.bm == nil {
		return // never started
	}
	ss.rm.fold(ss)
	ss.rm.closes[closeBucket(int32(ss.CloseCode()))][ss.ClosedBy()].Add(1)
	ss.rm.live.Add(-1)
	ss.bm.fold(ss)
	ss.bm.live.Add(-1)
}

// Metric descriptors. Every name is prefixed wsproxy_.
var (
	descRouteLive = prometheus.NewDesc("wsproxy_route_sessions_live",
		"Live WebSocket sessions by route.", []string{"route"}, nil)
	descRouteSessions = prometheus.NewDesc("wsproxy_route_sessions_total",
		"WebSocket sessions started, by route.", []string{"route"}, nil)
	descBackendLive = prometheus.NewDesc("wsproxy_backend_sessions_live",
		"Live WebSocket sessions by backend.", []string{"backend"}, nil)
	descDraining = prometheus.NewDesc("wsproxy_sessions_draining",
		"Sessions waiting for their drain close (scale-down, removed routes, drained backends, shutdown).", nil, nil)
	descHandshakes = prometheus.NewDesc("wsproxy_handshakes_total",
		"WebSocket upgrade requests by outcome.", []string{"outcome"}, nil)
	descLimited = prometheus.NewDesc("wsproxy_handshakes_limited_total",
		"Upgrades refused by an admission limit (503 or 429 with Retry-After), by limit.", []string{"limit"}, nil)
	descSessionLimit = prometheus.NewDesc("wsproxy_session_limit",
		"Live sessions the proxy admits: admission.max_sessions, or what the open-files limit allows.", nil, nil)
	descAdmitted = prometheus.NewDesc("wsproxy_sessions_admitted",
		"Sessions counted against the session limit: live ones and handshakes in progress.", nil, nil)
	descTracked = prometheus.NewDesc("wsproxy_admission_tracked_addresses",
		"Client addresses in the per-address admission table.", nil, nil)
	descUntracked = prometheus.NewDesc("wsproxy_admission_untracked_total",
		"Upgrades that skipped the per-address handshake rate because the address table was full.", nil, nil)
	descUnreadable = prometheus.NewDesc("wsproxy_requests_unreadable_total",
		"Requests refused before routing: head over admission.max_header_bytes (431), not received within handshake_timeout (408), or malformed (400).", []string{"reason"}, nil)
	descMessages = prometheus.NewDesc("wsproxy_messages_total",
		"Data messages relayed, by route and direction.", []string{"route", "direction"}, nil)
	descBytes = prometheus.NewDesc("wsproxy_bytes_total",
		"Bytes read from one peer of a session for the other (frames whole, control frames included), by route and direction.", []string{"route", "direction"}, nil)
	descBackendMessages = prometheus.NewDesc("wsproxy_backend_messages_total",
		"Data messages relayed, by backend and direction.", []string{"backend", "direction"}, nil)
	descBackendBytes = prometheus.NewDesc("wsproxy_backend_bytes_total",
		"Bytes read from one peer of a session for the other, by backend and direction.", []string{"backend", "direction"}, nil)
	descCloses = prometheus.NewDesc("wsproxy_session_closes_total",
		"Ended sessions by route, first Close code (known codes, else \"other\"; 1006 when a peer vanished or the proxy's Close never reached the client) and who closed first.", []string{"route", "code", "closed_by"}, nil)
	descPings = prometheus.NewDesc("wsproxy_pings_sent_total",
		"Pings the proxy sent to silent peers, by peer.", []string{"peer"}, nil)
	descPongs = prometheus.NewDesc("wsproxy_pongs_received_total",
		"Answers to the proxy's pings, by peer.", []string{"peer"}, nil)
	descViolations = prometheus.NewDesc("wsproxy_protocol_violations_total",
		"Sessions failed because a peer broke RFC 6455 or a limit, by peer.", []string{"peer"}, nil)
	descRateLimited = prometheus.NewDesc("wsproxy_message_rate_limited_total",
		"Sessions closed (1008) because the client sent messages above its route's max_messages_per_second.", nil, nil)
	descControlRateLimited = prometheus.NewDesc("wsproxy_control_frame_rate_limited_total",
		"Sessions closed (1008) because the client sent pings, or pongs answering no proxy ping, above its route's max_control_frames_per_second.", nil, nil)
	descTimeouts = prometheus.NewDesc("wsproxy_session_timeouts_total",
		"Sessions closed by the read, idle or write timeout.", []string{"timeout"}, nil)
	descHealthy = prometheus.NewDesc("wsproxy_backend_healthy",
		"1 if the backend passes its health checks, else 0.", []string{"backend"}, nil)
	descWeight = prometheus.NewDesc("wsproxy_backend_weight",
		"Configured weight of a backend in a pool.", []string{"pool", "backend"}, nil)
	descBackendDraining = prometheus.NewDesc("wsproxy_backend_draining",
		"1 if the backend takes no new sessions of the pool (drained from the admin listener or weight 0), else 0.", []string{"pool", "backend"}, nil)
	descHTTP = prometheus.NewDesc("wsproxy_http_requests_total",
		"Plain HTTP requests proxied, by route and status class.", []string{"route", "class"}, nil)
	descHTTPBackendErrors = prometheus.NewDesc("wsproxy_http_backend_errors_total",
		"Plain HTTP requests the backend did not answer (answered 502, 503 or 504).", nil, nil)
	descLocalResources = prometheus.NewDesc("wsproxy_local_resource_errors_total",
		"Backend connections the proxy could not open for want of its own resources (EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL), answered 503 and not held against the backend, by request kind.", []string{"request"}, nil)
	descHTTPClientAborts = prometheus.NewDesc("wsproxy_http_client_aborts_total",
		"Plain HTTP requests whose client went away before sending its body whole.", nil, nil)
	descHTTPRetries = prometheus.NewDesc("wsproxy_http_retries_total",
		"Plain HTTP requests sent again on a fresh connection after a pooled one failed before any answer.", nil, nil)
	descNoRoute = prometheus.NewDesc("wsproxy_unrouted_requests_total",
		"Requests that matched no route (answered 404).", nil, nil)
	descConnections = prometheus.NewDesc("wsproxy_connections_open",
		"Client connections open that are not WebSocket sessions: requests being read or served, plain HTTP keep-alive, handshakes.", nil, nil)
	descConnectionLimit = prometheus.NewDesc("wsproxy_connection_limit",
		"Client connections the proxy holds open besides sessions before it stops accepting: admission.max_connections, or what the open-files limit leaves.", nil, nil)
	descAcceptPaused = prometheus.NewDesc("wsproxy_accept_paused_total",
		"Times a listener stopped accepting because the client connections were at the connection limit.", nil, nil)
	descEvicted = prometheus.NewDesc("wsproxy_connections_evicted_total",
		"Idle keep-alive connections closed to make room at the connection limit or when out of descriptors.", nil, nil)
	descAffinity = prometheus.NewDesc("wsproxy_affinity_cookies_total",
		"Requests on routes with an affinity cookie by what became of it: absent, honoured, invalid (malformed, forged, of another pool, of a backend no longer in the pool), unavailable (its backend down or draining); set counts the cookies set.", []string{"outcome"}, nil)
	descAcceptErrors = prometheus.NewDesc("wsproxy_accept_errors_total",
		"Accepts that failed and were retried, by reason: emfile, enfile (out of descriptors), enobufs, enomem (out of kernel memory), other (a connection that died in the backlog).", []string{"reason"}, nil)
)

// Collector returns a prometheus.Collector of the server's metrics. It
// reads the counters when scraped.
func (s *Server) Collector() prometheus.Collector { return collector{s} }

type collector struct{ s *Server }

// Describe implements prometheus.Collector.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descRouteLive, descRouteSessions, descBackendLive, descDraining, descHandshakes,
		descLimited, descUnreadable, descSessionLimit, descAdmitted, descTracked, descUntracked,
		descMessages, descBytes, descBackendMessages, descBackendBytes, descCloses,
		descPings, descPongs, descViolations, descRateLimited, descControlRateLimited, descTimeouts, descHealthy, descWeight,
		descBackendDraining, descHTTP, descHTTPBackendErrors, descNoRoute,
		descLocalResources, descHTTPClientAborts, descHTTPRetries,
		descConnections, descConnectionLimit, descAcceptPaused, descEvicted, descAcceptErrors,
		descAuth,
		descAffinity,
	} {
		ch <- d
	}
	c.s.metrics.backendRTT.Describe(ch)
	c.s.metrics.clientRTT.Describe(ch)
}

// flowSnapshot is a copy of flowCounters.
type flowSnapshot struct{ msgs, bytes [2]int64 }

func (f *flowSnapshot) add(ss *session) {
	for _, k := range [...]relay.Side{relay.Client, relay.Backend} {
		msgs, bytes := ss.Counts(k)
		f.msgs[k] += msgs
		f.bytes[k] += bytes
	}
}

func (f *flowSnapshot) load(c *flowCounters) {
	for k := range f.msgs {
		f.msgs[k] = c.msgs[k].Load()
		f.bytes[k] = c.bytes[k].Load()
	}
}

// Collect implements prometheus.Collector.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	e := emitter{ch}
	c.collectFlows(e)
	c.collectStats(e)
	c.collectBackends(e)
	c.collectAuth(e)
	c.s.metrics.backendRTT.Collect(ch)
	c.s.metrics.clientRTT.Collect(ch)
}

// emitter sends constant metrics to a scrape.
type emitter struct{ ch chan<- prometheus.Metric }

func (e emitter) counter(d *prometheus.Desc, v int64, labels ...string) {
	e.ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func (e emitter) gauge(d *prometheus.Desc, v int64, labels ...string) {
	e.ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
}

// snapshotFlows copies the route and backend totals and adds the live
// sessions' counters, while no session moves from one to the other.
func (m *metrics) snapshotFlows(sessions *registry) (map[*routeMetrics]*flowSnapshot, map[*backendMetrics]*flowSnapshot) {
	m.endMu.Lock()
	defer m.endMu.Unlock()
	m.mu.Lock()
	routes := make(map[*routeMetrics]*flowSnapshot, len(m.routes))
	for _, r := range m.routes {
		f := &flowSnapshot{}
		f.load(&r.flowCounters)
		routes[r] = f
	}
	backends := make(map[*backendMetrics]*flowSnapshot, len(m.backends))
	for _, b := range m.backends {
		f := &flowSnapshot{}
		f.load(&b.flowCounters)
		backends[b] = f
	}
	m.mu.Unlock()
	sessions.each(func(ss *session) {
		if f := routes[ss.rm]; f != nil {
			f.add(ss)
		}
		if f := backends[ss.bm]; f != nil {
			f.add(ss)
		}
	})
	return routes, backends
}

// collectFlows sends the per-route and per-backend series.
func (c collector) collectFlows(e emitter) {
	routes, backends := c.s.metrics.snapshotFlows(&c.s.sessions)
	for r, f := range routes {
		e.gauge(descRouteLive, r.live.Load(), r.path)
		e.counter(descRouteSessions, r.started.Load(), r.path)
		for k, dir := range directionLabels {
			e.counter(descMessages, f.msgs[k], r.path, dir)
			e.counter(descBytes, f.bytes[k], r.path, dir)
		}
		for code := range r.closes {
			for by := range r.closes[code] {
				if n := r.closes[code][by].Load(); n > 0 {
					e.counter(descCloses, n, r.path, closeCodeLabels[code], relay.Party(by).String())
				}
			}
		}
		for class, label := range statusClassLabels {
			e.counter(descHTTP, r.http[class].Load(), r.path, label)
		}
	}
	for b, f := range backends {
		e.gauge(descBackendLive, b.live.Load(), b.addr)
		for k, dir := range directionLabels {
			e.counter(descBackendMessages, f.msgs[k], b.addr, dir)
			e.counter(descBackendBytes, f.bytes[k], b.addr, dir)
		}
	}
}

// collectStats sends the global counters and gauges.
func (c collector) collectStats(e emitter) {
	s := c.s
	st := &s.stats
	counter, gauge := e.counter, e.gauge
	gauge(descDraining, st.SessionsDraining.Load())
	for _, o := range []struct {
		name string
		v    *atomic.Int64
	}{
		{"ok", &st.HandshakeOK},
		{"bad_request", &st.HandshakeBadRequest},
		{"origin_refused", &st.HandshakeOriginRefused},
		{"shutting_down", &st.HandshakeShuttingDown},
		{"no_backend", &st.HandshakeNoBackend},
		{"backend_refused", &st.HandshakeBackendRefused},
		{"backend_timeout", &st.HandshakeBackendTimeout},
		{"backend_non_101", &st.HandshakeBackendNon101},
		{"local_resources", &st.HandshakeLocalResources},
	} {
		counter(descHandshakes, o.v.Load(), o.name)
	}
	counter(descHandshakes, st.HandshakeLimited(), "limited")
	for k, label := range limitLabels {
		counter(descLimited, st.Limited[k].Load(), label)
	}
	counter(descUnreadable, st.RequestHeadTooLarge.Load(), "head_too_large")
	counter(descUnreadable, st.RequestTimeouts.Load(), "timeout")
	counter(descUnreadable, st.RequestMalformed.Load(), "malformed")
	gauge(descSessionLimit, s.table.Load().admission.maxSessions)
	gauge(descAdmitted, s.admission.total.Load())
	gauge(descTracked, int64(s.admission.tracked()))
	counter(descUntracked, st.Untracked.Load())
	counter(descPings, st.PingsClient.Load(), "client")
	counter(descPings, st.PingsBackend.Load(), "backend")
	counter(descPongs, st.PongsClient.Load(), "client")
	counter(descPongs, st.PongsBackend.Load(), "backend")
	counter(descViolations, st.ViolationsClient.Load(), "client")
	counter(descViolations, st.ViolationsBackend.Load(), "backend")
	counter(descRateLimited, st.MessageRateLimited.Load())
	counter(descControlRateLimited, st.ControlRateLimited.Load())
	counter(descTimeouts, st.ReadTimeouts.Load(), "read")
	counter(descTimeouts, st.IdleTimeouts.Load(), "idle")
	counter(descTimeouts, st.WriteTimeouts.Load(), "write")
	counter(descHTTPBackendErrors, st.HTTPBackendErrors.Load())
	counter(descNoRoute, st.HTTPNoRoute.Load())
	counter(descLocalResources, st.HandshakeLocalResources.Load(), "upgrade")
	counter(descLocalResources, st.HTTPLocalResources.Load(), "http")
	counter(descHTTPClientAborts, st.HTTPClientAborts.Load())
	counter(descHTTPRetries, st.HTTPRetries.Load())
	gauge(descConnections, s.conns.connections())
	gauge(descConnectionLimit, s.table.Load().admission.maxConnections)
	counter(descAcceptPaused, st.AcceptPaused.Load())
	counter(descEvicted, st.ConnectionsEvicted.Load())
	for k, label := range acceptErrLabels {
		counter(descAcceptErrors, st.AcceptErrors[k].Load(), label)
	}
	for k, label := range affinityLabels {
		counter(descAffinity, st.Affinity[k].Load(), label)
	}
	counter(descAffinity, st.AffinitySet.Load(), "set")
}

// collectBackends sends each backend's weight, drain mark and health.
func (c collector) collectBackends(e emitter) {
	status := c.s.Status()
	seen := make(map[string]bool)
	for _, p := range status.Pools {
		for _, b := range p.Backends {
			e.gauge(descWeight, int64(b.Weight), p.Name, b.Address)
			e.gauge(descBackendDraining, boolValue(b.Draining), p.Name, b.Address)
			if !seen[b.Address] {
				seen[b.Address] = true
				e.gauge(descHealthy, boolValue(b.Healthy), b.Address)
			}
		}
	}
}

func boolValue(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// RouteSessions returns the live sessions of each configured route path,
// for the admin status page.
func (s *Server) RouteSessions() map[string]int64 {
	out := make(map[string]int64)
	for _, r := range s.table.Load().routes {
		out[r.path] = r.metrics.live.Load()
	}
	return out
}
