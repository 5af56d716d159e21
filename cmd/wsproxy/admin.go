package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"sync/atomic"
	"time"
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

// status reports sessions and counters as JSON.
func (a *adminServer) status(w http.ResponseWriter, _ *http.Request) {
	st := a.in.srv.Stats()
	out := map[string]any{
		"sessions":           a.in.srv.Sessions(),
		"sessions_started":   st.SessionsStarted.Load(),
		"handshakes_ok":      st.HandshakeOK.Load(),
		"handshakes_refused": st.HandshakeBadRequest.Load() + st.HandshakeOriginRefused.Load(),
		"backend_failures":   st.HandshakeBackendRefused.Load() + st.HandshakeBackendTimeout.Load(),
		"ready":              !a.notReady.Load(),
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}
