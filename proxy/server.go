package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/internal/poller"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// Limits are a route's effective timeouts and limits.
type Limits = config.Limits

// FailureReporter hears about backends the proxy could not reach, so that
// passive health checking can take them out: only the backend's own
// failures (see classify), each with the pool it was picked from. A
// success resets the count. health.Manager implements it.
type FailureReporter interface {
	ReportFailure(pool, addr string, err error)
	ReportSuccess(addr string)
}

// Config configures a Server. Zero values mean the documented default.
type Config struct {
	// Config is the loaded configuration. Required.
	Config *config.Config
	// Logger receives logs; nil means no logging.
	Logger *zap.Logger
	// Backends holds backend runtime state across reloads; nil means a new
	// registry.
	Backends *balancer.Registry
	// Health hears about unreachable backends; nil means nobody does.
	Health FailureReporter
	// CloseTimeout bounds the wait for a peer's Close reply; zero means 5s.
	CloseTimeout time.Duration
	// MaxConnectAttempts bounds the backends tried for one handshake; zero
	// means 3.
	MaxConnectAttempts int
	// Preroute, when set, sees every request before routing and answers
	// those it returns true for (ACME HTTP-01 challenges).
	Preroute func(*fasthttp.RequestCtx) bool
	// Loops is how many event loops sessions run on; zero means one per
	// CPU. Loop says how they wait; the zero value is poller.Parked.
	Loops int
	Loop  poller.Config
}

// keepAliveTimeout closes plain HTTP keep-alive connections idle this long.
const keepAliveTimeout = 75 * time.Second

// Server is the proxy: it serves listeners, routes requests and relays
// WebSocket sessions. Its methods are safe for concurrent use.
type Server struct {
	log          *zap.Logger
	backends     *balancer.Registry
	health       FailureReporter
	closeTimeout time.Duration
	attempts     int
	preroute     func(*fasthttp.RequestCtx) bool

	table     atomic.Pointer[table]
	pollers   *poller.Group
	http      *fasthttp.Server
	sessions  registry
	admission admission
	stats     Stats
	metrics   metrics
	// budget is the open-files limit, which sets admission.max_sessions
	// and admission.max_connections when they are 0.
	budget fileBudget
	// conns counts client connections that are not sessions (see
	// listener.go).
	conns             connGate
	acceptLog, capLog logLimiter
	authLog           logLimiter // auth services unavailable
	// headerBytes and readTimeout are fixed at start: fasthttp reads them
	// per connection.
	headerBytes int64
	readTimeout time.Duration
	// loops: plain listeners are accepted on the pollers' loops
	// (loopfront.go), their heads read into headBufs.
	loops    bool
	headBufs headBufPool

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	stopping  atomic.Bool
	// lingering counts lingering closes in progress (linger.go).
	lingering atomic.Int64
	// handover: another process accepts on the same sockets (Handover).
	handover atomic.Bool
	// upgrading counts upgrade handshakes from their first backend dial
	// until their session has started or they failed.
	upgrading atomic.Int64

	ctx    context.Context // ends at Shutdown; drains stop with it
	cancel context.CancelFunc
	drains sync.WaitGroup
	// drainMu serialises deciding which sessions drain and which are
	// reprieved (Update, DrainBackend, UndrainBackend, Shutdown).
	drainMu  sync.Mutex
	drainSeq atomic.Uint32 // drain plan ids
}

// New builds a Server for cfg.Config. It starts the pollers; Shutdown
// stops them.
func New(cfg Config) (*Server, error) {
	if cfg.Config == nil {
		return nil, errors.New("proxy: no configuration")
	}
	s := &Server{
		log:          cfg.Logger,
		backends:     cfg.Backends,
		health:       cfg.Health,
		closeTimeout: cfg.CloseTimeout,
		attempts:     cfg.MaxConnectAttempts,
		preroute:     cfg.Preroute,
		listeners:    make(map[net.Listener]struct{}),
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.backends == nil {
		s.backends = balancer.NewRegistry()
	}
	if s.closeTimeout <= 0 {
		s.closeTimeout = defaultCloseTimeout
	}
	if s.attempts <= 0 {
		s.attempts = 3
	}
	s.sessions.init()
	s.metrics.init()
	s.budget = processFileBudget()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	t, err := s.buildTable(cfg.Config, nil)
	if err != nil {
		return nil, err
	}
	s.table.Store(t)
	s.metrics.retain(t)
	s.applyBudget(nil, t)
	g, err := poller.NewGroupWith(cfg.Loops, cfg.Loop)
	if err != nil {
		return nil, err
	}
	s.pollers = g
	s.headerBytes = cfg.Config.Admission.MaxHeaderBytes
	s.readTimeout = cfg.Config.Defaults.HandshakeTimeout
	s.loops = loopEngine(cfg.Config)
	s.headBufs.size = int(s.headerBytes)
	s.http = &fasthttp.Server{
		Handler: s.serveHTTP,
		Name:    "wsproxy",
		// The request head must fit the read buffer; a longer one is
		// answered 431.
		ReadBufferSize: int(s.headerBytes),
		// A client that sends its request slowly is cut off (408) after
		// handshake_timeout.
		ReadTimeout:                   s.readTimeout,
		ErrorHandler:                  s.badRequest,
		WriteTimeout:                  0,
		IdleTimeout:                   keepAliveTimeout,
		KeepHijackedConns:             true,
		DisablePreParseMultipartForm:  true,
		NoDefaultServerHeader:         true,
		NoDefaultDate:                 false,
		DisableHeaderNamesNormalizing: false,
		StreamRequestBody:             true,
		CloseOnShutdown:               true,
		Logger:                        zapPrintf{s.log},
		ConnState:                     s.conns.connState,
	}
	return s, nil
}

// Serve accepts connections on ln until Shutdown, or until ln fails with
// an error that does not pass: accept errors such as EMFILE are retried
// (see listener.go). TLS listeners are passed in already wrapped.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.stopping.Load() {
		s.mu.Unlock()
		return ErrServerClosed
	}
	served, err := s.listenerFor(ln)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	s.listeners[served] = struct{}{}
	s.mu.Unlock()
	err = s.http.Serve(served)
	if s.stopping.Load() {
		return ErrServerClosed
	}
	return err
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Update swaps in a new configuration. Sessions in flight keep the limits
// they started with; new sessions see the new routes at once.
//
// Sessions whose backend left its pool or was given weight 0, and sessions
// of a route or pool that is gone, are drained: closed gracefully, spread
// over the drain timeout of their route and never faster than their
// pool's drain rate. Every other session is left alone, and a session
// still waiting for its drain close whose backend is back in its pool
// (a removal undone by the next reload) stays open.
func (s *Server) Update(c *config.Config) error {
	old := s.table.Load()
	t, err := s.buildTable(c, old)
	if err != nil {
		return err
	}
	s.table.Store(t)
	retireAuth(old, t)
	closeDropped(old, t)
	s.applyBudget(old, t)
	if c.Admission.MaxHeaderBytes != s.headerBytes || c.Defaults.HandshakeTimeout != s.readTimeout {
		s.log.Warn("admission.max_header_bytes and defaults.handshake_timeout apply to reading requests from a restart on; until then the values the proxy started with stay",
			zap.Int64("max_header_bytes", s.headerBytes), zap.Duration("handshake_timeout", s.readTimeout))
	}
	// Forget backends no pool lists any more; sessions on them keep their
	// own reference until they end.
	var addrs []string
	for _, p := range t.pools {
		for a := range p.weights {
			addrs = append(addrs, a)
		}
	}
	s.backends.Retain(addrs)
	s.metrics.retain(t)
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	plans := drainPlans{}
	reprieved := 0
	s.sessions.each(func(ss *session) {
		if t.keeps(ss) {
			if !ss.upstream.Draining() && !s.stopping.Load() && s.reprieve(ss) {
				reprieved++
			}
			return
		}
		if ss.drainedBy.Load() == 0 {
			plans.add(ss, old, "backend removed")
		}
	})
	if reprieved > 0 {
		s.log.Info("drain called off: backend back in its pool", zap.Int("sessions", reprieved))
	}
	s.startDrains(plans)
	return nil
}

// drainInBackground runs a drain plan until done or shutdown. The caller
// has added it to s.drains.
func (s *Server) drainInBackground(d drainPlan) {
	defer s.drains.Done()
	s.drain(s.ctx, d)
}

// keeps reports whether a live session still belongs in t: its route
// still leads to its pool, which still holds its backend with a weight.
func (t *table) keeps(ss *session) bool {
	var rt *route
	for _, r := range t.routes {
		if r.path == ss.route && r.exact == ss.exact {
			rt = r
			break
		}
	}
	if rt == nil || rt.pool.name != ss.pool {
		return false
	}
	return rt.pool.weights[ss.upstream.Addr] > 0
}

// Sessions reports the number of live WebSocket sessions.
func (s *Server) Sessions() int { return s.sessions.len() }

// Stats returns the server's counters.
func (s *Server) Stats() *Stats { return &s.stats }

// Shutdown stops accepting, lets plain HTTP requests finish, closes every
// WebSocket session with 1001 and waits for them until ctx is done; then
// it closes what is left.
//
// The closes are spread over the first 80% of the time ctx leaves (the
// rest is for closing handshakes), so that clients do not all reconnect
// elsewhere in the same second.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopping.Store(true)
	httpDone := make(chan error, 1)
	go func() { httpDone <- s.http.ShutdownWithContext(ctx) }()
	window := time.Duration(0)
	if deadline, ok := ctx.Deadline(); ok {
		window = time.Until(deadline) * 8 / 10
	}
	code := wsframe.CloseGoingAway
	if t := s.table.Load(); t.drainCloseCode != 0 {
		code = t.drainCloseCode
	}
	d := drainPlan{window: window, code: code, reason: "proxy shutting down"}
	s.drainMu.Lock()
	s.sessions.each(func(ss *session) { d.sessions = append(d.sessions, ss) })
	s.claim(&d, true)
	s.drainMu.Unlock()
	s.drain(ctx, d)
	err := s.sessions.wait(ctx)
	var herr error
	httpWaited := false
	if err == nil && s.handover.Load() {
		// Handover serves the handshakes read from connections accepted
		// before the listeners closed: fasthttp waits for their
		// handlers, and they, and the sessions they start (closed at
		// once), end before the backends' context does.
		herr, httpWaited = <-httpDone, true
		if err = s.waitUpgrades(ctx); err == nil {
			err = s.sessions.wait(ctx)
		}
	}
	if err != nil {
		s.sessions.each(func(ss *session) { ss.Finish() })
	}
	s.cancel()
	s.abortLoopUpgrades()
	retireAuth(s.table.Load(), nil)
	closeDropped(s.table.Load(), &table{}) // idle backend connections
	s.drains.Wait()
	if !httpWaited {
		herr = <-httpDone
	}
	if err == nil {
		err = herr
	}
	// A Serve that raced this call may have handed fasthttp its listener
	// after fasthttp's Shutdown closed the ones it knew of.
	s.mu.Lock()
	for ln := range s.listeners {
		_ = ln.Close()
	}
	s.mu.Unlock()
	s.pollers.Close()
	return err
}

// waitUpgrades waits until no upgrade handshake is in flight, or ctx is
// done. It polls: it runs once, at shutdown, and only when one is.
func (s *Server) waitUpgrades(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for s.upgrading.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Handover is Shutdown for a binary upgrade: another process accepts on
// the same listening sockets now, so an upgrade request read from a
// connection this one had already accepted is proxied, and its session
// closed at once with the drain code, rather than refused with 503; the
// backends' context lasts until such handshakes are done.
func (s *Server) Handover(ctx context.Context) error {
	s.handover.Store(true)
	return s.Shutdown(ctx)
}

// serveHTTP routes one request.
func (s *Server) serveHTTP(ctx *fasthttp.RequestCtx) {
	if s.preroute != nil && s.preroute(ctx) {
		return
	}
	t := s.table.Load()
	rt := t.match(ctx.Path())
	if rt == nil {
		s.stats.HTTPNoRoute.Add(1)
		ctx.Error("no route for this path", fasthttp.StatusNotFound)
		return
	}
	if isUpgradeAttempt(&ctx.Request.Header) {
		s.serveWebSocket(ctx, rt)
		return
	}
	s.serveProxyHTTP(ctx, rt)
}

// badRequest answers a request fasthttp could not read, and counts it.
func (s *Server) badRequest(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	switch {
	case errors.As(err, &small):
		s.stats.RequestHeadTooLarge.Add(1)
		ctx.Error("request head too large", fasthttp.StatusRequestHeaderFieldsTooLarge)
	case errors.As(err, &ne) && ne.Timeout():
		s.stats.RequestTimeouts.Add(1)
		ctx.Error("request not received in time", fasthttp.StatusRequestTimeout)
	default:
		s.stats.RequestMalformed.Add(1)
		ctx.Error("malformed request", fasthttp.StatusBadRequest)
	}
	s.log.Debug("request refused", zap.String("client", ctx.RemoteAddr().String()), zap.Error(err))
}

// clientAddr returns the socket peer of ctx.
func clientAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	if a, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.IPv4Unspecified()
}

// zapPrintf adapts a zap.Logger to fasthttp's Logger.
type zapPrintf struct{ l *zap.Logger }

func (z zapPrintf) Printf(format string, args ...any) { z.l.Sugar().Debugf(format, args...) }
