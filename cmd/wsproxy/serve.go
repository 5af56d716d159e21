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
	inst := &instance{path: path, stderr: stderr}
	return inst.serve(cfg, nil)
}

// instance is one running proxy: listeners, the admin server, health
// checks and the lifecycle that ties them to signals.
type instance struct {
	path   string // config file, re-read on SIGHUP; empty for the demo
	stderr io.Writer
	level  zap.AtomicLevel
	log    *zap.Logger

	srv *proxy.Server
	tls []*tlsconf.Server // per listener; nil for plain ones
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

	// ready is closed once every listener is up; for tests and the demo.
	ready     chan struct{}
	addrs     []net.Addr
	adminAddr net.Addr
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

	// Certificates are checked before anything listens.
	in.tls = make([]*tlsconf.Server, len(cfg.Listeners))
	for i, l := range cfg.Listeners {
		if l.TLS == nil {
			continue
		}
		ts, errs := listenerTLS(i, l.TLS)
		for _, err := range errs {
			fmt.Fprintf(in.stderr, "wsproxy: %v\n", err)
		}
		if errs != nil {
			return 1
		}
		in.tls[i] = ts
	}

	// Listen first, so a port in use is a one-line error before anything
	// else starts.
	var listeners []net.Listener
	closeAll := func() {
		for _, ln := range listeners {
			ln.Close()
		}
	}
	for i, l := range cfg.Listeners {
		// No TCP keep-alive on client connections: WebSocket sessions
		// have the proxy's pings and read timeout, plain HTTP its idle
		// timeout, and keep-alive costs four setsockopt calls per
		// connection.
		ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", l.Address)
		if err != nil {
			closeAll()
			fmt.Fprintf(in.stderr, "wsproxy: %v\n", err)
			return 1
		}
		in.addrs = append(in.addrs, ln.Addr())
		if in.tls[i] != nil {
			ln = proxy.WrapListener(ln, in.tls[i].Config())
		}
		listeners = append(listeners, ln)
	}
	var adminLn net.Listener
	if cfg.Admin.Address != "" {
		ln, err := net.Listen("tcp", cfg.Admin.Address)
		if err != nil {
			closeAll()
			fmt.Fprintf(in.stderr, "wsproxy: admin: %v\n", err)
			return 1
		}
		adminLn = ln
		in.adminAddr = ln.Addr()
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in.backends = balancer.NewRegistry()
	in.health = health.NewManager(ctx, health.Config{Setter: in.backends, Logger: in.log.Named("health")})
	defer in.health.Close()

	srv, err := proxy.New(proxy.Config{
		Config:   cfg,
		Logger:   in.log,
		Backends: in.backends,
		Health:   in.health,
	})
	if err != nil {
		closeAll()
		if adminLn != nil {
			adminLn.Close()
		}
		fmt.Fprintf(in.stderr, "wsproxy: %v\n", err)
		return 1
	}
	in.srv = srv
	in.started = cfg
	in.running = cfg
	go trimMemory(ctx, in.log)
	// Checks start once the registry knows every backend, so no early
	// verdict is lost.
	in.health.Update(in.healthSpecs(cfg))

	var wg sync.WaitGroup
	serveErr := make(chan error, len(listeners)+1)
	for _, ln := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, proxy.ErrServerClosed) {
				serveErr <- err
			}
		}()
	}
	if adminLn != nil {
		in.admin = newAdminServer(in)
		in.admin.pprof.Store(cfg.Admin.Pprof)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = in.admin.serve(adminLn)
		}()
	}
	in.log.Info("wsproxy started", zap.String("version", versionString()),
		zap.Stringers("listeners", in.addrs), zap.Stringer("admin", in.adminAddr))
	close(in.ready)
	if in.admin != nil {
		in.admin.setReady()
	}
	if onReady != nil {
		onReady()
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	code := 0
loop:
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				in.reload()
				continue
			}
			in.log.Info("shutting down", zap.Stringer("signal", sig))
			break loop
		case err := <-serveErr:
			in.log.Error("listener failed", zap.Error(err))
			code = 1
			break loop
		}
	}
	code = max(code, in.shutdown(in.running.Defaults.DrainTimeout, sigs))
	if in.admin != nil {
		in.admin.close()
	}
	wg.Wait()
	return code
}

// shutdown drains sessions for up to timeout; a second signal ends at once,
// closing the sessions left without their closing handshake (each is logged
// with what its client saw), and a third does not wait for that.
func (in *instance) shutdown(timeout time.Duration, sigs <-chan os.Signal) int {
	if in.admin != nil {
		in.admin.setNotReady()
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- in.srv.Shutdown(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			in.log.Warn("drain deadline passed; closed the sessions left", zap.Error(err))
		}
		in.log.Info("stopped")
		return 0
	case sig := <-sigs:
		in.log.Warn("second signal: exiting at once", zap.Stringer("signal", sig))
		cancel()
		select {
		case <-done:
		case <-sigs:
		}
		return 1
	}
}

// reload re-reads the config file. An invalid file changes nothing.
func (in *instance) reload() {
	if in.path == "" {
		in.log.Warn("reload ignored: no config file")
		return
	}
	ok := false
	defer func() { in.reloads.count(ok) }()
	cfg, err := config.Load(in.path)
	if err != nil {
		in.log.Error("reload failed; keeping the running configuration", zap.Error(err))
		return
	}
	// Listeners are fixed at start; their certificates reload. Every
	// certificate is checked before anything changes.
	if len(cfg.Listeners) != len(in.tls) {
		in.log.Error("reload failed; keeping the running configuration",
			zap.String("reason", "listeners cannot be added or removed by a reload; restart instead"))
		return
	}
	for i, l := range cfg.Listeners {
		if (l.TLS == nil) != (in.tls[i] == nil) {
			in.log.Error("reload failed; keeping the running configuration",
				zap.String("reason", fmt.Sprintf("listeners[%d]: TLS cannot be turned on or off by a reload; restart instead", i)))
			return
		}
	}
	if errs := tlsProblems(cfg); errs != nil {
		in.log.Error("reload failed; keeping the running configuration", zap.Errors("errors", errs))
		return
	}
	if err := in.srv.Update(cfg); err != nil {
		in.log.Error("reload failed; keeping the running configuration", zap.Error(err))
		return
	}
	for i, l := range cfg.Listeners {
		if l.TLS != nil {
			_ = in.tls[i].Reload(serverOptions(l.TLS))
		}
	}
	in.health.Update(in.healthSpecs(cfg))
	in.level.SetLevel(parseLevel(cfg.Log.Level))
	if in.admin != nil {
		in.admin.pprof.Store(cfg.Admin.Pprof)
	}
	ok = true
	var pending []string
	for _, c := range restartChanges(in.started, cfg) {
		pending = append(pending, c.String())
		if !c.warned {
			in.log.Warn("a reload cannot change this setting; the running value stays until a restart",
				zap.String("key", c.key), zap.String("running", c.running), zap.String("file", c.file))
		}
	}
	in.restartPending.Store(&pending)
	in.running = cfg
	in.log.Info("configuration reloaded", zap.String("file", in.path), zap.Strings("restart_pending", pending))
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
