package health

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// Fast checks for tests: transitions are asserted in probe counts, the
// interval only sets the pace.
const (
	testInterval  = 10 * time.Millisecond
	testTimeout   = failsafe
	slowTimeout   = 100 * time.Millisecond
	testHealthy   = 2
	testUnhealthy = 3
)

func testSpec(typ Type, path string, tlsConf *tls.Config) Spec {
	return Spec{
		Type:               typ,
		Path:               path,
		Interval:           testInterval,
		Timeout:            testTimeout,
		HealthyThreshold:   testHealthy,
		UnhealthyThreshold: testUnhealthy,
		TLS:                tlsConf,
		PassiveFailures:    PassiveOff,
	}
}

// TestThresholds takes a backend down and back up for every check type and
// failure, and checks that it went down exactly at the
// UnhealthyThreshold-th failed probe and came back exactly at the
// HealthyThreshold-th successful one, counted both by the Manager's probe
// results and, when the backend can see them, by the backend.
func TestThresholds(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	tests := []struct {
		name string
		typ  Type
		path string
		tls  bool
		fail string // "500", "slow" or "stop"
	}{
		{"http 500", TypeHTTP, "/healthz", false, "500"},
		{"http slow", TypeHTTP, "/healthz", false, "slow"},
		{"https 500", TypeHTTP, "/healthz", true, "500"},
		{"https slow", TypeHTTP, "/healthz", true, "slow"},
		{"websocket refused", TypeWebSocket, "/ws", false, "500"},
		{"websocket slow", TypeWebSocket, "/ws", false, "slow"},
		{"wss refused", TypeWebSocket, "/ws", true, "500"},
		{"wss slow", TypeWebSocket, "/ws", true, "slow"},
		{"tcp stopped", TypeTCP, "", false, "stop"},
		{"tcp tls stopped", TypeTCP, "", true, "stop"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			var srv, cli *tls.Config
			if tc.tls {
				srv, cli = srvTLS, cliTLS
			}
			m, rec := newManager(t)
			spec := testSpec(tc.typ, tc.path, cli)
			if tc.fail == "slow" {
				spec.Timeout = slowTimeout
			}

			var addr string
			var fail, recover func()
			var b *backend
			if tc.fail == "stop" {
				tb := newTCPBackend(t, srv)
				addr = tb.addr
				fail = tb.stop
				recover = func() { tb.start(t) }
				rec.watch(addr, tb.accepts.Load)
			} else {
				b = newBackend(t, srv)
				addr = b.addr
				fail = func() {
					if tc.fail == "slow" {
						b.set(slowPhase())
					} else {
						b.set(statusPhase(500))
					}
				}
				recover = func() { b.set(okPhase()) }
				rec.watch(addr, b.served)
			}

			m.Update([]PoolSpec{{Pool: "p", Backends: []string{addr}, Spec: spec}})
			if up, ok := m.State(addr); !up || !ok {
				t.Fatalf("State after Update = %v, %v; want a healthy start", up, ok)
			}
			for _, err := range rec.waitProbes(t, "p", addr, 2) {
				if err != nil {
					t.Fatalf("probe of a healthy backend: %v", err)
				}
			}

			fail()
			down := rec.waitChange(t, addr, 0, false)
			if down.run != testUnhealthy {
				t.Errorf("down after %d failed probes in a row, want %d (%s)", down.run, testUnhealthy, down.Reason)
			}
			if b != nil && down.served != testUnhealthy {
				t.Errorf("down after the backend received %d failing probes, want %d", down.served, testUnhealthy)
			}
			if up, _ := m.State(addr); up {
				t.Error("State says up after the down change")
			}

			var before int64
			if b == nil {
				before = down.served // accepts so far
			}
			recover()
			up := rec.waitChange(t, addr, 1, true)
			if up.run != testHealthy {
				t.Errorf("up after %d successful probes in a row, want %d (%s)", up.run, testHealthy, up.Reason)
			}
			// A plain TCP probe succeeds once the kernel completed the
			// connection, maybe before the listener's Accept returned: the
			// backend's count may lag.
			serverSees := tc.fail != "stop" || tc.tls
			if got := up.served - before; serverSees && got != testHealthy {
				t.Errorf("up after the backend received %d healthy probes, want %d", got, testHealthy)
			}
			if up, _ := m.State(addr); !up {
				t.Error("State says down after the up change")
			}

			m.Close()
			rec.mu.Lock()
			defer rec.mu.Unlock()
			want := []Change{{Addr: addr, Up: false}, {Addr: addr, Up: true}}
			if len(rec.sets) != len(want) || rec.sets[0] != want[0] || rec.sets[1] != want[1] {
				t.Errorf("SetHealthy calls = %v, want %v", rec.sets, want)
			}
		})
	}
}

// TestStartsHealthy checks that a dead backend is healthy until its
// UnhealthyThreshold-th failed probe.
func TestStartsHealthy(t *testing.T) {
	checkLeaks(t)
	m, rec := newManager(t)
	addr := deadAddr(t)
	spec := testSpec(TypeTCP, "", nil)
	spec.Interval = time.Hour // one probe, at start
	m.Update([]PoolSpec{{Pool: "p", Backends: []string{addr}, Spec: spec}})
	if up, ok := m.State(addr); !up || !ok {
		t.Fatalf("State before any probe = %v, %v; want true, true", up, ok)
	}
	if errs := rec.waitProbes(t, "p", addr, 1); errs[0] == nil {
		t.Fatal("probe of a dead backend succeeded")
	}
	if up, _ := m.State(addr); !up {
		t.Fatal("down after one failed probe")
	}
	if ch := rec.changesOf(addr); len(ch) != 0 {
		t.Fatalf("changes = %v, want none", ch)
	}
}

// TestStatusList checks that Statuses replace 2xx/3xx as what is healthy.
func TestStatusList(t *testing.T) {
	checkLeaks(t)
	m, rec := newManager(t)
	b := newBackend(t, nil)
	rec.watch(b.addr, b.served)
	b.set(statusPhase(418))
	spec := testSpec(TypeHTTP, "/", nil)
	spec.Statuses = []int{418}
	m.Update([]PoolSpec{{Pool: "p", Backends: []string{b.addr}, Spec: spec}})
	for _, err := range rec.waitProbes(t, "p", b.addr, 2) {
		if err != nil {
			t.Fatalf("418 is listed but the probe failed: %v", err)
		}
	}
	b.set(okPhase())
	if ev := rec.waitChange(t, b.addr, 0, false); ev.served != testUnhealthy {
		t.Errorf("down after %d unlisted 200s, want %d", ev.served, testUnhealthy)
	}
}

// TestJitter checks that intervals spread over ±10% and no further.
func TestJitter(t *testing.T) {
	const d = time.Second
	lo, hi := d, d
	for range 10000 {
		j := jitter(d)
		lo, hi = min(lo, j), max(hi, j)
	}
	if lo < 900*time.Millisecond || hi > 1100*time.Millisecond {
		t.Errorf("jitter in [%v, %v], want within [900ms, 1.1s]", lo, hi)
	}
	if lo > 920*time.Millisecond || hi < 1080*time.Millisecond {
		t.Errorf("jitter in [%v, %v] over 10000 draws: not spread over ±10%%", lo, hi)
	}
}

// TestLocalShortage: the errors that give no verdict, as the probes
// wrap them.
func TestLocalShortage(t *testing.T) {
	dial := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", errno)}
	}
	tests := []struct {
		err  error
		want bool
	}{
		{dial(syscall.EMFILE), true},
		{fmt.Errorf("upgrade /ws: %w", dial(syscall.ENFILE)), true},
		{dial(syscall.ENOBUFS), true},
		{dial(syscall.EADDRNOTAVAIL), true},
		{dial(syscall.ECONNREFUSED), false},
		{fmt.Errorf("upgrade /ws: %w", context.DeadlineExceeded), false},
		{nil, false},
	}
	for _, tc := range tests {
		if got := localShortage(tc.err); got != tc.want {
			t.Errorf("localShortage(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
