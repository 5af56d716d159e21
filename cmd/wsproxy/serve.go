package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/wsproxy/wsproxy/acmecert"
	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/health"
	"github.com/wsproxy/wsproxy/proxy"
	"github.com/wsproxy/wsproxy/tlsconf"
)

// cmdRun runs the proxy from a config file until SIGTERM or SIGINT.
func cmdRun(args []string, stdout, stderr io.Writer) int {
	path, code := configFlag("run", "Run the proxy until SIGTERM or SIGINT; SIGHUP reloads the file.\nOther commands: wsproxy help.", args, stdout, stderr)
	if code >= 0 {
		return code
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if errs := tlsProblems(cfg); errs != nil {
		for _, err := range errs {
			fmt.Fprintf(stderr, "%s: %v\n", path, err)
		}
		return 1
	}
	up, err := processUpgrader(cfg.UpgradeTimeout)
	if err != nil {
		fmt.Fprintf(stderr, "wsproxy: %v\n", err)
		return 1
	}
	loops, err := processLoops()
	if err != nil {
		fmt.Fprintf(stderr, "wsproxy: %v\n", err)
		return 2
	}
	inst := &instance{path: path, stderr: stderr, up: up, loops: loops}
	return inst.serve(cfg, nil)
}

// instance is one running proxy: listeners, the admin server, health
// checks and the lifecycle that ties them to signals.
type instance struct {
	path   string // config file, re-read on SIGHUP; empty for the demo
	stderr io.Writer
	loops  loopPlan // the zero value: Parked loops, one per CPU
	level  zap.AtomicLevel
	log    *zap.Logger

	srv  *proxy.Server
	tls  []*tlsconf.Server   // per listener; nil for plain ones
	acme []*acmecert.Manager // per listener; nil without an acme block
	// healthTLS keeps each pool's probe TLS config across reloads.
	healthTLS map[config.PoolTLS]*tls.Config
	health    *health.Manager
	backends  *balancer.Registry
	admin     *adminServer
	reloads   reloadStats
	// started is the configuration the process started with: what a
	// reload cannot change stays as it says. restartPending lists the
	// differences the last good reload found, for /status.
	started        *config.Config
	restartPending atomic.Pointer[[]string]
	// running is the configuration last applied: the start one, then each
	// good reload's. Only the signal loop reads and writes it.
	running *config.Config

	// reloadReqs carries POST /reload to the signal loop, which owns
	// reloads; changed, the watcher's news that a file changed. stopped
	// is closed when the loop ends.
	reloadReqs chan reloadRequest
	changed    chan struct{}
	stopped    chan struct{}

	// up starts binary upgrades on SIGUSR2; nil for the demo. upgrades
	// carries an upgrade's result to the signal loop; handoff is the pipe
	// to the new process once it serves.
	up       *upgrader
	upgrades chan upgradeResult
	handoff  *os.File

	// ready is closed once every listener is up; for tests and the demo.
	ready     chan struct{}
	addrs     []net.Addr
	adminAddr net.Addr

	// discovered applies the backends DNS finds; serve starts it.
	discovered *discovered
}

// newLogger builds the zap logger the config asks for. The console format
// colours levels only when w is a terminal, so that a file or journald
// gets no escape codes.
func newLogger(c config.Log, level zap.AtomicLevel, w io.Writer) *zap.Logger {
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "ts"
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if c.Format == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		if isTerminal(w) {
			encCfg.EncodeLevel = zapcore.CapitalColorLevelEncoder
		}
		encCfg.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), level))
}

func parseLevel(s string) zapcore.Level {
	var l zapcore.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return zapcore.InfoLevel
	}
	return l
}

// serve starts everything cfg describes and blocks until shutdown. onReady,
// when set, runs once the listeners accept.
func (in *instance) serve(cfg *config.Config, onReady func()) int {
	in.level = zap.NewAtomicLevelAt(parseLevel(cfg.Log.Level))
	if in.log == nil {
		in.log = newLogger(cfg.Log, in.level, os.Stderr)
	}
	defer in.log.Sync() //nolint:errcheck
	if in.ready == nil {
		in.ready = make(chan struct{})
	}
	in.reloadReqs = make(chan reloadRequest)
	in.changed = make(chan struct{}, 1)
	in.stopped = make(chan struct{})
	in.upgrades = make(chan upgradeResult, 1)
	// An upgrade in progress is killed when this process stops.
	defer in.up.stop()

	token, errs := in.prepare(cfg)
	for _, err := range errs {
		fmt.Fprintf(in.stderr, "wsproxy: %v\n", err)
	}
	if errs != nil {
		return 1
	}
	ls, err := in.listen(cfg)
	if err != nil {
		fmt.Fprintf(in.stderr, "wsproxy: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in.backends = balancer.NewRegistry()
	in.health = health.NewManager(ctx, health.Config{Setter: in.backends, Logger: in.log.Named("health")})
	defer in.health.Close()
	if err := in.startProxy(cfg); err != nil {
		ls.close()
		fmt.Fprintf(in.stderr, "wsproxy: %v\n", err)
		return 1
	}
	if cfg.PIDFile != "" {
		defer removePIDFile(cfg.PIDFile)
	}
	go trimMemory(ctx, in.log)
	for _, m := range in.acmeManagers() {
		m.Start(ctx)
		defer m.Close()
	}
	// Checks start once the registry knows every backend, so no early
	// verdict is lost.
	in.health.Update(in.healthSpecs(cfg))
	in.startDiscovery(ctx, cfg)

	// Signals are caught before anything says the process is ready: Go
	// drops a SIGUSR2 that comes before Notify, and a SIGHUP ends the
	// process. Those sent early wait for the loop.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	var wg sync.WaitGroup
	serveErr := in.startServing(ctx, cfg, ls, token, &wg)
	in.announceReady(onReady)

	code, hurried := in.signalLoop(ctx, cfg, sigs, serveErr)
	close(in.stopped)    // POST /reload answers 503 from now on
	in.discovered.stop() // no set is applied while sessions drain
	in.up.stop()
	if in.handoff != nil {
		// The new process answers the admin address from now on; this
		// one tells it how many sessions it still holds.
		if in.admin != nil {
			in.admin.close()
		}
		go reportLoop(ctx, in.handoff, in.srv)
	}
	if !hurried {
		code = max(code, in.shutdown(in.running.Defaults.DrainTimeout, sigs, in.handoff != nil))
	}
	if in.admin != nil {
		in.admin.close()
	}
	wg.Wait()
	return code
}

// prepare checks what must be right before anything listens: every
// listener's certificates and the admin token. It returns the token, or
// every problem found.
func (in *instance) prepare(cfg *config.Config) ([]byte, []error) {
	// ACME certificates are loaded or obtained in the background once the
	// listeners are up.
	acme, err := newACME(cfg, in.log)
	if err != nil {
		return nil, []error{err}
	}
	in.acme = acme
	in.tls = make([]*tlsconf.Server, len(cfg.Listeners))
	for i, l := range cfg.Listeners {
		if l.TLS == nil {
			continue
		}
		var src tlsconf.CertSource
		if acme[i] != nil {
			src = acme[i]
		}
		ts, errs := listenerTLS(i, l.TLS, src)
		if errs != nil {
			return nil, errs
		}
		in.tls[i] = ts
	}
	token, err := readToken(cfg.Admin)
	if err != nil {
		return nil, []error{err}
	}
	return token, nil
}

// sockets are the listeners serve opened: the clients' (wrapped for TLS)
// and the admin one, nil when off.
type sockets struct {
	clients []net.Listener
	admin   net.Listener
}

func (ls *sockets) close() {
	for _, ln := range ls.clients {
		ln.Close()
	}
	if ls.admin != nil {
		ls.admin.Close()
	}
}

// listen opens every listener first, so a port in use is a one-line error
// before anything else starts. After a binary upgrade the sockets are the
// old process's.
func (in *instance) listen(cfg *config.Config) (*sockets, error) {
	ls := &sockets{}
	for i, l := range cfg.Listeners {
		ln, err := in.up.listen(l.Address, clientListenConfig(l))
		if err != nil {
			ls.close()
			return nil, listenError(i, l, err)
		}
		if on, ok := reusePortOf(ln); ok && on != l.ReusePort {
			in.log.Warn("the listener taken over from the old process keeps its reuse_port; a restart applies the new value",
				zap.String("key", fmt.Sprintf("listeners[%d].reuse_port", i)), zap.Bool("running", on), zap.Bool("file", l.ReusePort))
		}
		in.addrs = append(in.addrs, ln.Addr())
		if in.tls[i] != nil {
			ln = proxy.WrapListener(ln, in.tls[i].Config())
		}
		ls.clients = append(ls.clients, ln)
	}
	if cfg.Admin.Address != "" {
		ln, err := in.up.listen(cfg.Admin.Address, &net.ListenConfig{})
		if err != nil {
			ls.close()
			return nil, fmt.Errorf("admin: %w", err)
		}
		ls.admin = ln
		in.adminAddr = ln.Addr()
	}
	return ls, nil
}

// startProxy builds the proxy for cfg and writes pid_file.
func (in *instance) startProxy(cfg *config.Config) error {
	srv, err := proxy.New(proxy.Config{
		Config:   cfg,
		Logger:   in.log,
		Backends: in.backends,
		Health:   in.health,
		Preroute: in.acmePreroute(cfg),
		Loops:    in.loops.loops,
		Loop:     in.loops.poller,
	})
	if err != nil {
		return err
	}
	in.srv = srv
	in.started = cfg
	in.running = cfg
	if cfg.PIDFile != "" {
		if err := writePIDFile(cfg.PIDFile); err != nil {
			return fmt.Errorf("pid_file: %w", err)
		}
	}
	return nil
}

// startServing serves every listener and the admin one on goroutines
// counted in wg. The channel returned carries a listener's failure.
func (in *instance) startServing(ctx context.Context, cfg *config.Config, ls *sockets, token []byte, wg *sync.WaitGroup) <-chan error {
	serveErr := make(chan error, len(ls.clients)+1)
	for _, ln := range ls.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := in.srv.Serve(ln); err != nil && !errors.Is(err, proxy.ErrServerClosed) {
				serveErr <- err
			}
		}()
	}
	if ls.admin != nil {
		in.admin = newAdminServer(in)
		in.admin.pprof.Store(cfg.Admin.Pprof)
		in.admin.setToken(token)
		go in.admin.history.sampleLoop(ctx)
		if w := adminWarning(cfg.Admin); w != "" {
			in.log.Warn(w)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = in.admin.serve(ls.admin)
		}()
	}
	return serveErr
}

// announceReady logs the start, turns /readyz to 200, tells an old process
// this one replaces to stop accepting, and runs onReady.
func (in *instance) announceReady(onReady func()) {
	in.log.Info("wsproxy started", zap.String("version", versionString()),
		zap.Stringers("listeners", in.addrs), zap.Stringer("admin", in.adminAddr),
		zap.Int("pid", os.Getpid()), zap.Int("generation", in.up.gen()))
	close(in.ready)
	if in.admin != nil {
		in.admin.setReady()
	}
	if err := in.up.ready(); err != nil {
		in.log.Error("upgrade: could not tell the old process that this one is ready", zap.Error(err))
	}
	if onReady != nil {
		onReady()
	}
}

// signalLoop serves signals, reload requests, the config watcher and
// upgrades until the process is to stop. It returns the exit code so far,
// and hurried when a second signal during shutdown_delay means no drain.
func (in *instance) signalLoop(ctx context.Context, cfg *config.Config, sigs <-chan os.Signal, serveErr <-chan error) (code int, hurried bool) {
	watch := in.watchConfig(ctx, cfg, nil)
	defer func() { watch.stop() }()
	// delay fires once shutdown_delay has passed after SIGTERM; until then
	// the loop serves reloads as before, with /readyz at 503.
	var delay <-chan time.Time
	for {
		select {
		case sig := <-sigs:
			switch {
			case sig == syscall.SIGHUP:
				in.reload("signal")
				watch = in.watchConfig(ctx, in.running, watch)
			case sig == syscall.SIGUSR2 && delay != nil:
				in.log.Warn("SIGUSR2 ignored: shutting down")
			case sig == syscall.SIGUSR2:
				in.startUpgrade()
			case delay != nil:
				in.log.Warn("second signal: exiting at once", zap.Stringer("signal", sig))
				in.stopNow()
				return 1, true
			default:
				in.log.Info("shutting down", zap.Stringer("signal", sig))
				if delay = in.delayShutdown(); delay == nil {
					return 0, false
				}
			}
		case <-delay:
			return 0, false
		case res := <-in.upgrades:
			if in.upgradeEnded(res) {
				return 0, false
			}
		case req := <-in.reloadReqs:
			req.reply <- in.reload(req.source)
			watch = in.watchConfig(ctx, in.running, watch)
		case <-in.changed:
			in.reload("watch")
			watch = in.watchConfig(ctx, in.running, watch)
		case err := <-serveErr:
			in.log.Error("listener failed", zap.Error(err))
			return 1, false
		}
	}
}

// delayShutdown starts shutdown_delay: /readyz answers 503 while the
// listeners keep serving. It returns when the delay ends, nil for none.
func (in *instance) delayShutdown() <-chan time.Time {
	d := in.running.ShutdownDelay
	if d <= 0 {
		return nil
	}
	if in.admin != nil {
		in.admin.setNotReady()
	}
	in.log.Info("not ready; serving for shutdown_delay before the drain", zap.Duration("shutdown_delay", d))
	return time.After(d)
}

// stopNow closes every session at once, without the drain, for a second
// signal during shutdown_delay.
func (in *instance) stopNow() {
	if in.admin != nil {
		in.admin.setNotReady()
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = in.srv.Shutdown(ctx)
	in.log.Info("stopped")
}

// shutdown drains sessions for up to timeout; a second signal ends at once,
// closing the sessions left without their closing handshake (each is logged
// with what its client saw), and a third does not wait for that. After an
// upgrade (handover) no signal asked for the drain, so the first SIGTERM
// or SIGINT changes nothing and the second ends it. SIGHUP and SIGUSR2
// are ignored.
func (in *instance) shutdown(timeout time.Duration, sigs <-chan os.Signal, handover bool) int {
	if in.admin != nil {
		in.admin.setNotReady()
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	drain := in.srv.Shutdown
	if handover {
		drain = in.srv.Handover
	}
	go func() { done <- drain(ctx) }()
	for {
		select {
		case err := <-done:
			if err != nil {
				in.log.Warn("drain deadline passed; closed the sessions left", zap.Error(err))
			}
			in.log.Info("stopped")
			return 0
		case sig := <-sigs:
			if sig == syscall.SIGHUP || sig == syscall.SIGUSR2 {
				in.log.Warn("signal ignored: draining", zap.Stringer("signal", sig))
				continue
			}
			if handover {
				handover = false
				in.log.Info("already draining after an upgrade; a second signal ends the drain at once", zap.Stringer("signal", sig))
				continue
			}
			in.log.Warn("second signal: exiting at once", zap.Stringer("signal", sig))
			cancel()
			select {
			case <-done:
			case <-sigs:
			}
			return 1
		}
	}
}

// healthSpecs turns the config's pools into health check specs. The TLS
// configuration of a pool is reused while its settings do not change, so
// a reload does not restart its checkers.
func (in *instance) healthSpecs(cfg *config.Config) []health.PoolSpec {
	var specs []health.PoolSpec
	tlsCache := make(map[config.PoolTLS]*tls.Config)
	for _, name := range cfg.PoolNames() {
		p := cfg.Pools[name]
		var addrs []string
		for _, b := range p.Backends {
			addrs = append(addrs, b.Address)
		}
		h := p.Health
		spec := health.Spec{
			Type:               health.Type(h.Type),
			Path:               h.Path,
			Interval:           h.Interval,
			Timeout:            h.Timeout,
			HealthyThreshold:   h.HealthyThreshold,
			UnhealthyThreshold: h.UnhealthyThreshold,
			Statuses:           h.Statuses,
			PassiveFailures:    h.PassiveFailures,
		}
		if h.PassiveFailures == 0 {
			spec.PassiveFailures = health.PassiveOff // 0 in the config means off
		}
		if p.TLS.Enabled {
			tc := in.healthTLS[p.TLS]
			if tc == nil {
				var err error
				tc, err = tlsconf.NewClient(clientOptions(p.TLS))
				if err != nil {
					in.log.Error("health checks without TLS settings", zap.String("pool", name), zap.Error(err))
				}
			}
			tlsCache[p.TLS] = tc
			spec.TLS = tc
		}
		specs = append(specs, health.PoolSpec{Pool: name, Backends: addrs, Spec: spec})
	}
	in.healthTLS = tlsCache
	return specs
}
