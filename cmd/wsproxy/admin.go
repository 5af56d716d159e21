package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/acmecert"
	"github.com/wsproxy/wsproxy/discovery"
	"github.com/wsproxy/wsproxy/proxy"
)

// adminServer serves the admin listener, never a public one: liveness,
// readiness, status (JSON and a page), Prometheus metrics, backend drains
// and, when the config allows it, pprof.
type adminServer struct {
	in       *instance
	http     *http.Server
	reg      *prometheus.Registry
	ready    atomic.Bool // the listeners accept and the config is loaded
	notReady atomic.Bool // shutting down
	pprof    atomic.Bool // admin.pprof, which a reload may change
	// token is the SHA-256 of admin.token_file's token; nil without one.
	token atomic.Pointer[[sha256.Size]byte]
	// history samples the counters the status page charts.
	history *history
}

func newAdminServer(in *instance) *adminServer {
	a := &adminServer{in: in, reg: prometheus.NewRegistry(), history: newHistory(in.srv.Collector())}
	a.reg.MustRegister(in.collectors()...)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.page)
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.HandleFunc("GET /status", a.status)
	mux.HandleFunc("GET /status/history", a.statusHistory)
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{
		ErrorLog:      zap.NewStdLog(in.log.Named("metrics")),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("POST /backends/drain", a.guarded(a.drain))
	mux.HandleFunc("POST /backends/undrain", a.guarded(a.undrain))
	mux.HandleFunc("POST /reload", a.guarded(a.reload))
	// pprof is always routed and answers 404 while admin.pprof is off, so
	// that a reload can turn it on or off.
	mux.Handle("/debug/pprof/", a.pprofOnly(http.HandlerFunc(pprof.Index)))
	mux.Handle("/debug/pprof/cmdline", a.pprofOnly(http.HandlerFunc(pprof.Cmdline)))
	mux.Handle("/debug/pprof/profile", a.pprofOnly(http.HandlerFunc(pprof.Profile)))
	mux.Handle("/debug/pprof/symbol", a.pprofOnly(http.HandlerFunc(pprof.Symbol)))
	mux.Handle("/debug/pprof/trace", a.pprofOnly(http.HandlerFunc(pprof.Trace)))
	a.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return a
}

// collectors are the metrics /metrics serves.
func (in *instance) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		in.srv.Collector(),
		in.discovered.mgr,
		&in.reloads,
		upgradeCollector{in.up},
		acmecert.Collector(in.acmeManagers()...),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "wsproxy_build_info",
			Help:        "Always 1; the version is a label.",
			ConstLabels: prometheus.Labels{"version": versionString()},
		}, func() float64 { return 1 }),
	}
}

func (a *adminServer) serve(ln net.Listener) error { return a.http.Serve(ln) }

func (a *adminServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = a.http.Shutdown(ctx)
}

// setReady turns /readyz to 200 once every listener accepts.
func (a *adminServer) setReady() { a.ready.Store(true) }

// setNotReady turns /readyz to 503, for shutdown.
func (a *adminServer) setNotReady() { a.notReady.Store(true) }

// isReady reports whether the instance takes traffic: listening, config
// loaded, not shutting down.
func (a *adminServer) isReady() bool { return a.ready.Load() && !a.notReady.Load() }

func (a *adminServer) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Write([]byte("ok\n"))
}

func (a *adminServer) readyz(w http.ResponseWriter, _ *http.Request) {
	switch {
	case a.notReady.Load():
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
	case !a.ready.Load():
		http.Error(w, "starting", http.StatusServiceUnavailable)
	default:
		w.Write([]byte("ready\n"))
	}
}

// pprofOnly serves h while admin.pprof is on, else 404.
func (a *adminServer) pprofOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.pprof.Load() {
			http.Error(w, "pprof is off: set admin.pprof: true", http.StatusNotFound)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// statusReport is the /status document and the data of the status page.
type statusReport struct {
	proxy.Status
	Version string `json:"version"`
	Ready   bool   `json:"ready"`
	// RouteSessions are the live sessions by route path.
	RouteSessions     map[string]int64 `json:"route_sessions"`
	SessionsStarted   int64            `json:"sessions_started"`
	HandshakesOK      int64            `json:"handshakes_ok"`
	HandshakesRefused int64            `json:"handshakes_refused"`
	BackendFailures   int64            `json:"backend_failures"`
	ReloadsOK         int64            `json:"reloads_ok"`
	ReloadsFailed     int64            `json:"reloads_failed"`
	// RestartPending lists the settings a reload changed in the file but
	// only a restart applies, as "key: running -> file"; empty when the
	// process runs what its file says.
	RestartPending []string `json:"restart_pending"`
	// Discovery describes the pools whose backends come from DNS: the
	// name, the last answer, its age and the failed lookups. The other
	// pools' backends are the ones the file lists.
	Discovery []discovery.PoolStatus `json:"discovery"`
	// PID and Generation are this process's: generation 1 when started by
	// hand, one more at each binary upgrade. Previous is the process this
	// one replaced while it still drains, else null.
	PID        int             `json:"pid"`
	Generation int             `json:"generation"`
	Previous   *previousStatus `json:"previous"`
}

func (a *adminServer) report() statusReport {
	st := a.in.srv.Stats()
	return statusReport{
		Status:            a.in.srv.Status(),
		Version:           versionString(),
		Ready:             a.isReady(),
		RouteSessions:     a.in.srv.RouteSessions(),
		SessionsStarted:   st.SessionsStarted.Load(),
		HandshakesOK:      st.HandshakeOK.Load(),
		HandshakesRefused: st.HandshakeBadRequest.Load() + st.HandshakeOriginRefused.Load(),
		BackendFailures:   st.HandshakeBackendRefused.Load() + st.HandshakeBackendTimeout.Load(),
		ReloadsOK:         a.in.reloads.ok.Load(),
		ReloadsFailed:     a.in.reloads.failed.Load(),
		RestartPending:    a.in.pendingRestart(),
		Discovery:         a.in.discovered.mgr.Status(),
		PID:               os.Getpid(),
		Generation:        a.in.up.gen(),
		Previous:          a.in.up.previousReport(),
	}
}

// pendingRestart returns the restart-only changes of the last good reload,
// never nil.
func (in *instance) pendingRestart() []string {
	if p := in.restartPending.Load(); p != nil && *p != nil {
		return *p
	}
	return []string{}
}

// status reports routes, pools, backends and counters as JSON.
func (a *adminServer) status(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.report())
}

// drain takes one backend out of rotation without a config change:
// POST /backends/drain?address=HOST:PORT. Its live sessions are drained as
// on scale-down.
func (a *adminServer) drain(w http.ResponseWriter, r *http.Request) {
	addr := r.URL.Query().Get("address")
	n, err := a.in.srv.DrainBackend(addr)
	if err != nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("%s: %v", addr, err)})
		return
	}
	a.in.log.Info("backend drained by the admin listener", zap.String("backend", addr), zap.Int("sessions", n))
	writeJSON(w, http.StatusOK, map[string]any{"address": addr, "draining": true, "sessions_drained": n})
}

// undrain puts a drained backend back: POST /backends/undrain?address=HOST:PORT.
func (a *adminServer) undrain(w http.ResponseWriter, r *http.Request) {
	addr := r.URL.Query().Get("address")
	if err := a.in.srv.UndrainBackend(addr); err != nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("%s: %v", addr, err)})
		return
	}
	a.in.log.Info("backend undrained by the admin listener", zap.String("backend", addr))
	writeJSON(w, http.StatusOK, map[string]any{"address": addr, "draining": false})
}

// reload re-reads the config file as SIGHUP does and answers with the
// result: 200 and what waits for a restart, or 422 and every error of the
// file, each with its line.
func (a *adminServer) reload(w http.ResponseWriter, r *http.Request) {
	res, err := a.in.requestReload(r.Context(), "admin")
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	code := http.StatusOK
	switch {
	case res.OK:
	case a.in.path == "":
		code = http.StatusConflict
	default:
		code = http.StatusUnprocessableEntity
	}
	writeJSON(w, code, res)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // "a -> b", not "a -\u003e b"
	_ = enc.Encode(v)
}

// reloadStats count reloads (SIGHUP, POST /reload, watch_config); they are a prometheus.Collector.
type reloadStats struct {
	ok, failed atomic.Int64
	lastFailed atomic.Bool
}

var (
	descReloads = prometheus.NewDesc("wsproxy_reloads_total",
		"Configuration reloads (SIGHUP, POST /reload, watch_config) by result.", []string{"result"}, nil)
	descLastReload = prometheus.NewDesc("wsproxy_config_last_reload_successful",
		"1 unless the last reload failed (the running configuration is then older than the file).", nil, nil)
)

// count records the result of a reload.
func (r *reloadStats) count(ok bool) {
	if ok {
		r.ok.Add(1)
	} else {
		r.failed.Add(1)
	}
	r.lastFailed.Store(!ok)
}

// Describe implements prometheus.Collector.
func (r *reloadStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- descReloads
	ch <- descLastReload
}

// Collect implements prometheus.Collector.
func (r *reloadStats) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(r.ok.Load()), "ok")
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(r.failed.Load()), "failed")
	last := 1.0
	if r.lastFailed.Load() {
		last = 0
	}
	ch <- prometheus.MustNewConstMetric(descLastReload, prometheus.GaugeValue, last)
}
