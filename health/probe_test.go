package health

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"testing"
	"time"
)

// TestProbe runs every probe type once against real loopback servers.
func TestProbe(t *testing.T) {
	checkLeaks(t)
	srvTLS, cliTLS := testTLS(t)
	plain := newBackend(t, nil)
	secure := newBackend(t, srvTLS)
	tcp := newTCPBackend(t, nil)
	tcpTLS := newTCPBackend(t, srvTLS)
	dead := deadAddr(t)
	untrusted := &tls.Config{}

	tests := []struct {
		name   string
		b      *backend // nil: addr
		addr   string
		phase  *phase
		spec   Spec
		wantOK bool
	}{
		{"http 200", plain, "", okPhase(), Spec{Type: TypeHTTP}, true},
		{"http 204", plain, "", statusPhase(204), Spec{Type: TypeHTTP}, true},
		{"http 302", plain, "", statusPhase(302), Spec{Type: TypeHTTP}, true},
		{"http 404", plain, "", statusPhase(404), Spec{Type: TypeHTTP}, false},
		{"http 500", plain, "", statusPhase(500), Spec{Type: TypeHTTP}, false},
		{"http status list accepts 418", plain, "", statusPhase(418), Spec{Type: TypeHTTP, Statuses: []int{200, 418}}, true},
		{"http status list accepts 200", plain, "", okPhase(), Spec{Type: TypeHTTP, Statuses: []int{200, 418}}, true},
		{"http status list refuses 204", plain, "", statusPhase(204), Spec{Type: TypeHTTP, Statuses: []int{200, 418}}, false},
		{"http status list refuses 302", plain, "", statusPhase(302), Spec{Type: TypeHTTP, Statuses: []int{200}}, false},
		{"http refused", nil, dead, nil, Spec{Type: TypeHTTP}, false},
		{"http to a TLS server", secure, "", okPhase(), Spec{Type: TypeHTTP}, false},
		{"https 200", secure, "", okPhase(), Spec{Type: TypeHTTP, TLS: cliTLS}, true},
		{"https 500", secure, "", statusPhase(500), Spec{Type: TypeHTTP, TLS: cliTLS}, false},
		{"https untrusted", secure, "", okPhase(), Spec{Type: TypeHTTP, TLS: untrusted}, false},
		{"https to a plain server", plain, "", okPhase(), Spec{Type: TypeHTTP, TLS: cliTLS}, false},
		{"tcp", nil, tcp.addr, nil, Spec{Type: TypeTCP}, true},
		{"tcp refused", nil, dead, nil, Spec{Type: TypeTCP}, false},
		{"tcp tls", nil, tcpTLS.addr, nil, Spec{Type: TypeTCP, TLS: cliTLS}, true},
		{"tcp tls untrusted", nil, tcpTLS.addr, nil, Spec{Type: TypeTCP, TLS: untrusted}, false},
		{"none probes tcp", nil, tcp.addr, nil, Spec{}, true},
		{"websocket 101", plain, "", okPhase(), Spec{Type: TypeWebSocket, Path: "/ws"}, true},
		{"websocket 403", plain, "", statusPhase(403), Spec{Type: TypeWebSocket, Path: "/ws"}, false},
		{"websocket 200 is no upgrade", plain, "", statusPhase(200), Spec{Type: TypeWebSocket, Path: "/ws"}, false},
		{"websocket refused", nil, dead, nil, Spec{Type: TypeWebSocket}, false},
		{"wss 101", secure, "", okPhase(), Spec{Type: TypeWebSocket, Path: "/ws", TLS: cliTLS}, true},
		{"wss 503", secure, "", statusPhase(503), Spec{Type: TypeWebSocket, Path: "/ws", TLS: cliTLS}, false},
		{"wss untrusted", secure, "", okPhase(), Spec{Type: TypeWebSocket, Path: "/ws", TLS: untrusted}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.addr
			if tc.b != nil {
				addr = tc.b.addr
				tc.b.set(tc.phase)
			}
			p := newProber(addr, tc.spec.withDefaults())
			ctx, cancel := context.WithTimeout(t.Context(), failsafe)
			defer cancel()
			err := p.probe(ctx)
			if (err == nil) != tc.wantOK {
				t.Fatalf("probe = %v, want ok %v", err, tc.wantOK)
			}
			if tc.b != nil && tc.wantOK && tc.b.served() != 1 {
				t.Errorf("backend served %d requests, want 1", tc.b.served())
			}
		})
	}
}

// TestProbeHTTPRequest checks what an http probe sends: its path and query,
// and Host set to the backend address.
func TestProbeHTTPRequest(t *testing.T) {
	checkLeaks(t)
	b := newBackend(t, nil)
	p := newProber(b.addr, Spec{Type: TypeHTTP, Path: "/healthz?deep=1"}.withDefaults())
	if err := p.probe(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := b.pathCount("/healthz"); n != 1 {
		t.Errorf("requests on /healthz = %d, want 1", n)
	}
	if n := b.hostCount(b.addr); n != 1 {
		t.Errorf("requests with Host %s = %d, want 1", b.addr, n)
	}
}

// TestProbeWebSocketClose checks that a websocket probe sets Host to the
// backend address and ends with a clean closing handshake: the backend
// reads Close 1000.
func TestProbeWebSocketClose(t *testing.T) {
	checkLeaks(t)
	srvTLS, cliTLS := testTLS(t)
	for _, tc := range []struct {
		name string
		srv  *tls.Config
		cli  *tls.Config
	}{
		{"ws", nil, nil},
		{"wss", srvTLS, cliTLS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, tc.srv)
			p := newProber(b.addr, Spec{Type: TypeWebSocket, Path: "/ws", TLS: tc.cli}.withDefaults())
			if err := p.probe(t.Context()); err != nil {
				t.Fatal(err)
			}
			if n := b.hostCount(b.addr); n != 1 {
				t.Errorf("upgrades with Host %s = %d, want 1", b.addr, n)
			}
			select {
			case code := <-b.closes:
				if code != closeNormal {
					t.Errorf("backend read close code %d, want %d", code, closeNormal)
				}
			case <-time.After(failsafe):
				t.Fatal("backend read no Close")
			}
		})
	}
}

// TestProbeTimeout checks that a probe of a backend that does not answer
// ends at its deadline, and at once when its context is cancelled.
func TestProbeTimeout(t *testing.T) {
	checkLeaks(t)
	srvTLS, cliTLS := testTLS(t)
	plain := newBackend(t, nil)
	secure := newBackend(t, srvTLS)
	for _, tc := range []struct {
		name string
		b    *backend
		spec Spec
	}{
		{"http", plain, Spec{Type: TypeHTTP}},
		{"https", secure, Spec{Type: TypeHTTP, TLS: cliTLS}},
		{"websocket", plain, Spec{Type: TypeWebSocket}},
		{"wss", secure, Spec{Type: TypeWebSocket, TLS: cliTLS}},
	} {
		t.Run(tc.name+" deadline", func(t *testing.T) {
			tc.b.set(slowPhase())
			p := newProber(tc.b.addr, tc.spec.withDefaults())
			ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
			defer cancel()
			err := p.probe(ctx)
			if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("probe = %v, want a deadline error", err)
			}
		})
		t.Run(tc.name+" cancel", func(t *testing.T) {
			ph := tc.b.set(okPhase().holding(1))
			p := newProber(tc.b.addr, tc.spec.withDefaults())
			ctx, cancel := context.WithCancel(t.Context())
			errc := make(chan error, 1)
			go func() { errc <- p.probe(ctx) }()
			select {
			case <-ph.held:
			case err := <-errc:
				t.Fatalf("probe returned %v before reaching the backend", err)
			}
			cancel()
			select {
			case err := <-errc:
				if err == nil {
					t.Fatal("cancelled probe succeeded")
				}
			case <-time.After(failsafe):
				t.Fatal("cancelled probe did not return")
			}
		})
	}
}
