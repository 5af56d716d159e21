package health

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

var errDial = errors.New("dial: connection refused")

// waitHeld waits until p holds a request.
func waitHeld(t *testing.T, p *phase) {
	t.Helper()
	select {
	case <-p.held:
	case <-time.After(failsafe):
		t.Fatal("timed out waiting for the held request")
	}
}

// TestUpdate checks the diff of Update: unchanged checkers keep their
// counters, changed ones restart, removed ones stop, added ones start.
func TestUpdate(t *testing.T) {
	t.Run("unchanged keeps counters, added starts", func(t *testing.T) {
		checkLeaks(t)
		m, rec := newManager(t)
		a, c := newBackend(t, nil), newBackend(t, nil)
		rec.watch(a.addr, a.served)
		spec := testSpec(TypeHTTP, "/healthz", nil)
		ph := a.set(statusPhase(500).holding(testUnhealthy))
		m.Update([]PoolSpec{{Pool: "p", Backends: []string{a.addr}, Spec: spec}})
		waitHeld(t, ph) // two failures recorded, the third in flight

		m.Update([]PoolSpec{{Pool: "p", Backends: []string{a.addr, c.addr}, Spec: spec}})
		close(ph.release)
		down := rec.waitChange(t, a.addr, 0, false)
		if down.served != testUnhealthy || down.probes != testUnhealthy {
			t.Errorf("down after %d requests and %d probe results, want %d: the counters were reset", down.served, down.probes, testUnhealthy)
		}
		rec.waitProbes(t, "p", c.addr, 1)
	})

	t.Run("changed spec restarts counters", func(t *testing.T) {
		checkLeaks(t)
		m, rec := newManager(t)
		a := newBackend(t, nil)
		rec.watch(a.addr, func() int64 { return a.pathCount("/other") })
		spec := testSpec(TypeHTTP, "/healthz", nil)
		ph := a.set(statusPhase(500).holding(testUnhealthy))
		m.Update([]PoolSpec{{Pool: "p", Backends: []string{a.addr}, Spec: spec}})
		waitHeld(t, ph)

		spec.Path = "/other"
		m.Update([]PoolSpec{{Pool: "p", Backends: []string{a.addr}, Spec: spec}})
		// Update returned: the old checker is gone, its held probe
		// aborted and not counted. Had the counters been kept, the first
		// failure on the new path would take the backend down.
		down := rec.waitChange(t, a.addr, 0, false)
		if down.served != testUnhealthy {
			t.Errorf("down after %d failed probes of the new spec, want %d", down.served, testUnhealthy)
		}
		if n := a.pathCount("/healthz"); n != testUnhealthy {
			t.Errorf("old spec probed %d times, want %d", n, testUnhealthy)
		}
	})

	t.Run("restarted checker keeps its verdict", func(t *testing.T) {
		checkLeaks(t)
		m, rec := newManager(t)
		a := newBackend(t, nil)
		spec := testSpec(TypeHTTP, "/healthz", nil)
		a.set(statusPhase(500))
		m.Update([]PoolSpec{{Pool: "p", Backends: []string{a.addr}, Spec: spec}})
		rec.waitChange(t, a.addr, 0, false)

		spec.Path = "/other"
		ph := a.set(okPhase().holding(1))
		rec.watch(a.addr, a.served)
		m.Update([]PoolSpec{{Pool: "p", Backends: []string{a.addr}, Spec: spec}})
		waitHeld(t, ph)
		if up, _ := m.State(a.addr); up {
			t.Fatal("a restarted checker brought a down backend up")
		}
		close(ph.release)
		if up := rec.waitChange(t, a.addr, 1, true); up.served != testHealthy {
			t.Errorf("up after %d healthy probes, want %d", up.served, testHealthy)
		}
	})

	t.Run("removed stops", func(t *testing.T) {
		checkLeaks(t)
		m, rec := newManager(t)
		a, b := newBackend(t, nil), newBackend(t, nil)
		spec := testSpec(TypeHTTP, "/healthz", nil)
		m.Update([]PoolSpec{{Pool: "p", Backends: []string{a.addr, b.addr}, Spec: spec}})
		rec.waitProbes(t, "p", b.addr, 1)

		m.Update([]PoolSpec{{Pool: "p", Backends: []string{a.addr}, Spec: spec}})
		served := b.served()
		results := rec.probeCount("p", b.addr)
		if _, ok := m.State(b.addr); ok {
			t.Error("State knows a removed backend")
		}
		// While a is probed three more times, b is not probed at all.
		rec.waitProbes(t, "p", a.addr, rec.probeCount("p", a.addr)+3)
		if b.served() != served || rec.probeCount("p", b.addr) != results {
			t.Errorf("removed backend still probed: %d -> %d requests", served, b.served())
		}
	})

	t.Run("removed while down is reported up", func(t *testing.T) {
		checkLeaks(t)
		m, rec := newManager(t)
		a, b := newBackend(t, nil), newBackend(t, nil)
		a.set(statusPhase(500))
		spec := testSpec(TypeHTTP, "/healthz", nil)
		m.Update([]PoolSpec{{Pool: "p", Backends: []string{a.addr, b.addr}, Spec: spec}})
		rec.waitChange(t, a.addr, 0, false)

		m.Update([]PoolSpec{{Pool: "p", Backends: []string{b.addr}, Spec: spec}})
		ev := rec.waitChange(t, a.addr, 1, true)
		if ev.Pool != "" || !strings.Contains(ev.Reason, "removed") {
			t.Errorf("change = %+v, want a removal", ev.Change)
		}
		rec.mu.Lock()
		last := rec.sets[len(rec.sets)-1]
		rec.mu.Unlock()
		if last != (Change{Addr: a.addr, Up: true}) {
			t.Errorf("last SetHealthy = %+v, want %s up", last, a.addr)
		}
	})
}

// TestTwoPools checks an address listed by two pools: both pools' checks
// run, and the address is up only when both say so.
func TestTwoPools(t *testing.T) {
	checkLeaks(t)
	m, rec := newManager(t)
	b := newBackend(t, nil)
	rec.watch(b.addr, b.served)
	b.set(statusPhase(500)) // fails http, passes tcp
	m.Update([]PoolSpec{
		{Pool: "web", Backends: []string{b.addr}, Spec: testSpec(TypeHTTP, "/healthz", nil)},
		{Pool: "raw", Backends: []string{b.addr}, Spec: testSpec(TypeTCP, "", nil)},
	})
	down := rec.waitChange(t, b.addr, 0, false)
	if down.Pool != "web" || down.run != testUnhealthy {
		t.Errorf("down = %+v after %d failures, want pool web after %d", down.Change, down.run, testUnhealthy)
	}
	for _, err := range rec.waitProbes(t, "raw", b.addr, 2) {
		if err != nil {
			t.Fatalf("tcp probe failed: %v", err)
		}
	}
	if up, _ := m.State(b.addr); up {
		t.Fatal("up while one pool's check fails")
	}
	b.set(okPhase())
	if up := rec.waitChange(t, b.addr, 1, true); up.Pool != "web" || up.served != testHealthy {
		t.Errorf("up = %+v after %d requests, want pool web after %d", up.Change, up.served, testHealthy)
	}

	// Removing the pool whose check holds the address down brings it up.
	b.set(statusPhase(500))
	rec.waitChange(t, b.addr, 2, false)
	m.Update([]PoolSpec{{Pool: "raw", Backends: []string{b.addr}, Spec: testSpec(TypeTCP, "", nil)}})
	if up := rec.waitChange(t, b.addr, 3, true); up.Pool != "web" || !strings.Contains(up.Reason, "removed") {
		t.Errorf("up = %+v, want the removal of pool web", up.Change)
	}
}

// TestPassive checks that consecutive reported failures take a backend out
// at once, and that only active probes bring it back.
func TestPassive(t *testing.T) {
	checkLeaks(t)
	m, rec := newManager(t)
	b := newBackend(t, nil)
	spec := testSpec(TypeHTTP, "/healthz", nil)
	spec.PassiveFailures = 0 // default: 3
	ph := b.set(okPhase().holding(2))
	m.Update([]PoolSpec{{Pool: "p", Backends: []string{b.addr}, Spec: spec}})
	waitHeld(t, ph) // no probe is in flight but the held one

	m.ReportFailure("p", b.addr, errDial)
	m.ReportFailure("p", b.addr, errDial)
	m.ReportSuccess(b.addr) // resets the count
	m.ReportFailure("p", b.addr, errDial)
	m.ReportFailure("p", b.addr, errDial)
	if up, _ := m.State(b.addr); !up {
		t.Fatal("down before 3 failures in a row")
	}
	m.ReportFailure("p", b.addr, errDial)
	if up, _ := m.State(b.addr); up {
		t.Fatal("still up after 3 failures in a row")
	}
	down := rec.waitChange(t, b.addr, 0, false)
	if down.Pool != "p" || !strings.Contains(down.Reason, "reported by the proxy") {
		t.Errorf("down = %+v, want a passive change", down.Change)
	}
	m.ReportSuccess(b.addr)
	m.ReportSuccess(b.addr)
	if up, _ := m.State(b.addr); up {
		t.Fatal("reported successes brought the backend back")
	}

	// The probe held across the trip is the first success that counts.
	close(ph.release)
	up := rec.waitChange(t, b.addr, 1, true)
	if got := up.probes - down.probes; got != testHealthy {
		t.Errorf("up after %d probes since the trip, want %d", got, testHealthy)
	}
	if got := len(rec.changesOf(b.addr)); got != 2 {
		t.Errorf("%d changes, want 2", got)
	}
}

// TestPassiveThreshold checks PassiveFailures: its default, off, and the
// smallest of two pools' thresholds for a shared address.
func TestPassiveThreshold(t *testing.T) {
	tests := []struct {
		name  string
		pools []int // PassiveFailures of each pool listing the address
		want  int   // failures that take it down; 0: never
	}{
		{"default", []int{0}, DefaultPassiveFailures},
		{"one", []int{1}, 1},
		{"off", []int{PassiveOff}, 0},
		{"smallest of two", []int{5, 2}, 2},
		{"off in one pool", []int{PassiveOff, 4}, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			m, rec := newManager(t)
			b := newBackend(t, nil)
			var pools []PoolSpec
			for i, n := range tc.pools {
				spec := testSpec(TypeHTTP, "/", nil)
				spec.Interval = time.Hour // one probe at start, then none
				spec.PassiveFailures = n
				pools = append(pools, PoolSpec{Pool: string(rune('a' + i)), Backends: []string{b.addr}, Spec: spec})
			}
			m.Update(pools)
			for i := range 10 {
				if up, _ := m.State(b.addr); !up {
					if i != tc.want {
						t.Fatalf("down after %d failures, want %d", i, tc.want)
					}
					return
				}
				m.ReportFailure("p", b.addr, errDial)
			}
			if tc.want != 0 {
				t.Fatalf("up after 10 failures, want down after %d", tc.want)
			}
			if ch := rec.changesOf(b.addr); len(ch) != 0 {
				t.Errorf("changes = %v, want none", ch)
			}
		})
	}
}

// TestPassiveWithoutActiveCheck checks a pool with no active check: no
// probe while the backend is up; after a passive trip, tcp probes until
// HealthyThreshold of them succeed.
func TestPassiveWithoutActiveCheck(t *testing.T) {
	checkLeaks(t)
	m, rec := newManager(t)
	tb := newTCPBackend(t, nil)
	rec.watch(tb.addr, tb.accepts.Load)
	spec := Spec{Interval: testInterval, HealthyThreshold: testHealthy, PassiveFailures: 2}
	m.Update([]PoolSpec{{Pool: "p", Backends: []string{tb.addr}, Spec: spec}})

	tb.stop()
	m.ReportFailure("p", tb.addr, errDial)
	m.ReportFailure("p", tb.addr, errDial)
	down := rec.waitChange(t, tb.addr, 0, false)
	if down.served != 0 || down.probes != 0 {
		t.Errorf("%d probes before the trip, want none", down.probes)
	}
	for _, err := range rec.waitProbes(t, "p", tb.addr, 2) {
		if err == nil {
			t.Fatal("probe of a stopped backend succeeded")
		}
	}
	tb.start(t)
	up := rec.waitChange(t, tb.addr, 1, true)
	if up.run != testHealthy {
		t.Errorf("up after %d successful probes, want %d", up.run, testHealthy)
	}

	// Up again: the checker idles until the next trip.
	m.ReportFailure("p", tb.addr, errDial)
	m.ReportFailure("p", tb.addr, errDial)
	if again := rec.waitChange(t, tb.addr, 2, false); again.probes != up.probes {
		t.Errorf("%d probes while up, want none", again.probes-up.probes)
	}
	rec.waitChange(t, tb.addr, 3, true)
}

// TestInvalidSpec checks that an invalid spec leaves passive checks only.
func TestInvalidSpec(t *testing.T) {
	checkLeaks(t)
	core, logs := observer.New(zapcore.InfoLevel)
	m := NewManager(t.Context(), Config{Logger: zap.New(core)})
	defer m.Close()
	addr := deadAddr(t)
	m.Update([]PoolSpec{{Pool: "p", Backends: []string{addr}, Spec: Spec{Type: "icmp", PassiveFailures: 1}}})
	if logs.FilterMessageSnippet("invalid health check").Len() != 1 {
		t.Errorf("logs = %v, want the invalid spec logged", logs.All())
	}
	if up, ok := m.State(addr); !up || !ok {
		t.Fatalf("State = %v, %v; want up", up, ok)
	}
	m.ReportFailure("p", addr, errDial)
	if up, _ := m.State(addr); up {
		t.Fatal("passive check off after an invalid spec")
	}
}

// TestChangeLog checks that a change is logged with its backend, states
// and reason, down at warn and up at info.
func TestChangeLog(t *testing.T) {
	checkLeaks(t)
	core, logs := observer.New(zapcore.InfoLevel)
	m := NewManager(t.Context(), Config{Logger: zap.New(core)})
	defer m.Close()
	b := newBackend(t, nil)
	spec := testSpec(TypeHTTP, "/", nil)
	spec.Interval = time.Hour
	spec.PassiveFailures = 1
	m.Update([]PoolSpec{{Pool: "p", Backends: []string{b.addr}, Spec: spec}})
	m.ReportFailure("p", b.addr, errDial)
	m.Update(nil) // forgets it: up

	entries := logs.All()
	if len(entries) != 2 {
		t.Fatalf("logs = %v, want 2 entries", entries)
	}
	for i, want := range []struct {
		level    zapcore.Level
		from, to string
	}{{zapcore.WarnLevel, "up", "down"}, {zapcore.InfoLevel, "down", "up"}} {
		e := entries[i]
		f := e.ContextMap()
		if e.Level != want.level || f["backend"] != b.addr || f["from"] != want.from || f["to"] != want.to || f["reason"] == "" {
			t.Errorf("entry %d = %s %q %v, want %s %s -> %s with a reason", i, e.Level, e.Message, f, want.level, want.from, want.to)
		}
	}
}

// TestClose checks that Close and the Manager's context stop every
// checker, an in-flight probe included, and that Close is final.
func TestClose(t *testing.T) {
	for _, how := range []string{"Close", "context"} {
		t.Run(how, func(t *testing.T) {
			checkLeaks(t)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			rec := newRecorder()
			m := NewManager(ctx, Config{Setter: rec, OnChange: rec.onChange})
			m.probed = rec.probed
			b := newBackend(t, nil)
			ph := b.set(okPhase().holding(1))
			spec := testSpec(TypeWebSocket, "/ws", nil) // Timeout: failsafe
			idle := newBackend(t, nil)
			m.Update([]PoolSpec{
				{Pool: "p", Backends: []string{b.addr, idle.addr}, Spec: spec},
				{Pool: "q", Backends: []string{idle.addr}, Spec: Spec{}},
			})
			waitHeld(t, ph)

			done := make(chan struct{})
			go func() {
				if how == "context" {
					cancel()
				}
				m.Close()
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(failsafe / 2):
				t.Fatal("Close did not return while a probe was in flight")
			}
			m.Update([]PoolSpec{{Pool: "p", Backends: []string{"127.0.0.1:1"}, Spec: spec}})
			if _, ok := m.State("127.0.0.1:1"); ok {
				t.Error("Update after Close added a backend")
			}
			m.ReportFailure("p", b.addr, errDial)
			m.Close()
		})
	}
}

// TestCallbacksMayReport checks that OnChange may call back into the
// Manager without deadlock, and that changes are delivered in order.
func TestCallbacksMayReport(t *testing.T) {
	checkLeaks(t)
	addrs := []string{deadAddr(t), deadAddr(t)}
	var got []Change
	var m *Manager
	m = NewManager(t.Context(), Config{OnChange: func(ch Change) {
		got = append(got, ch)
		if !ch.Up && ch.Addr == addrs[0] {
			m.ReportFailure("p", addrs[1], errDial) // delivered after this one
		}
		m.State(ch.Addr)
	}})
	defer m.Close()
	spec := Spec{Interval: time.Hour, PassiveFailures: 1}
	m.Update([]PoolSpec{{Pool: "p", Backends: addrs, Spec: spec}})
	m.ReportFailure("p", addrs[0], errDial)
	var order []string
	for _, ch := range got {
		order = append(order, ch.Addr)
	}
	if !slices.Equal(order, addrs) {
		t.Errorf("changes of %v, want %v", order, addrs)
	}
}

// TestHotPathAllocs checks that ReportSuccess and State allocate nothing.
func TestHotPathAllocs(t *testing.T) {
	checkLeaks(t)
	m := NewManager(t.Context(), Config{})
	defer m.Close()
	addr := deadAddr(t)
	m.Update([]PoolSpec{{Pool: "p", Backends: []string{addr}, Spec: Spec{Interval: time.Hour}}})
	if n := testing.AllocsPerRun(100, func() { m.ReportSuccess(addr) }); n != 0 {
		t.Errorf("ReportSuccess: %v allocs, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { m.State(addr) }); n != 0 {
		t.Errorf("State: %v allocs, want 0", n)
	}
}

// TestValidate checks Spec.Validate.
func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		ok   bool
	}{
		{"zero", Spec{}, true},
		{"full", Spec{Type: TypeHTTP, Path: "/healthz?x=1", Interval: time.Second, Timeout: time.Second,
			HealthyThreshold: 1, UnhealthyThreshold: 1, Statuses: []int{100, 599}, PassiveFailures: PassiveOff}, true},
		{"every type", Spec{Type: TypeWebSocket}, true},
		{"unknown type", Spec{Type: "icmp"}, false},
		{"negative interval", Spec{Interval: -1}, false},
		{"negative timeout", Spec{Timeout: -1}, false},
		{"negative healthy", Spec{HealthyThreshold: -1}, false},
		{"negative unhealthy", Spec{UnhealthyThreshold: -1}, false},
		{"status 99", Spec{Statuses: []int{99}}, false},
		{"status 600", Spec{Statuses: []int{600}}, false},
		{"relative path", Spec{Path: "healthz"}, false},
		{"path with space", Spec{Path: "/a b"}, false},
		{"path with CRLF", Spec{Path: "/a\r\nX-Evil: 1"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.spec.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidSpec) {
				t.Errorf("error %v does not wrap ErrInvalidSpec", err)
			}
		})
	}
}
