package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/proxy"
)

// adminServer serves the admin listener: liveness, readiness and status.
type adminServer struct {
	in       *instance
	http     *http.Server
	notReady atomic.Bool
}

func newAdminServer(in *instance) *adminServer {
	a := &adminServer{in: in}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.HandleFunc("GET /status", a.status)
	mux.HandleFunc("POST /backends/drain", a.drain)
	mux.HandleFunc("POST /backends/undrain", a.undrain)
	a.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return a
}

func (a *adminServer) serve(ln net.Listener) error { return a.http.Serve(ln) }

func (a *adminServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = a.http.Shutdown(ctx)
}

// setNotReady turns /readyz to 503, for shutdown.
func (a *adminServer) setNotReady() { a.notReady.Store(true) }

func (a *adminServer) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Write([]byte("ok\n"))
}

func (a *adminServer) readyz(w http.ResponseWriter, _ *http.Request) {
	if a.notReady.Load() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ready\n"))
}

// status reports routes, pools, backends and counters as JSON.
func (a *adminServer) status(w http.ResponseWriter, _ *http.Request) {
	st := a.in.srv.Stats()
	out := struct {
		proxy.Status
		Ready             bool  `json:"ready"`
		SessionsStarted   int64 `json:"sessions_started"`
		HandshakesOK      int64 `json:"handshakes_ok"`
		HandshakesRefused int64 `json:"handshakes_refused"`
		BackendFailures   int64 `json:"backend_failures"`
	}{
		Status:            a.in.srv.Status(),
		Ready:             !a.notReady.Load(),
		SessionsStarted:   st.SessionsStarted.Load(),
		HandshakesOK:      st.HandshakeOK.Load(),
		HandshakesRefused: st.HandshakeBadRequest.Load() + st.HandshakeOriginRefused.Load(),
		BackendFailures:   st.HandshakeBackendRefused.Load() + st.HandshakeBackendTimeout.Load(),
	}
	writeJSON(w, http.StatusOK, out)
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

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
