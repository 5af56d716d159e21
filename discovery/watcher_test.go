package discovery

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// recorder is a Publisher that hands each Set to the test.
type recorder struct{ sets chan Set }

func newRecorder() *recorder { return &recorder{sets: make(chan Set, 100)} }

func (r *recorder) Publish(s Set) { r.sets <- s }

// next waits for the next published set.
func (r *recorder) next(t *testing.T, within time.Duration) Set {
	t.Helper()
	select {
	case s := <-r.sets:
		return s
	case <-time.After(within):
		t.Fatalf("no set published within %v", within)
		return Set{}
	}
}

// none checks that nothing is published while cond is false, waiting
// until it is true.
func (r *recorder) none(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		select {
		case s := <-r.sets:
			t.Fatalf("%s: published %v", what, s.Backends)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out", what)
		}
	}
}

func addrs(bs []Backend) string {
	var out []string
	for _, b := range bs {
		out = append(out, fmt.Sprintf("%s/%d", b.Address, b.Weight))
	}
	return strings.Join(out, " ")
}

func newTestManager(t *testing.T, pub Publisher) *Manager {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m := NewManager(ctx, Config{Publisher: pub, Timeout: 100 * time.Millisecond, MinInterval: 20 * time.Millisecond})
	t.Cleanup(func() {
		cancel()
		m.Wait()
	})
	return m
}

func statusOf(m *Manager, pool string) PoolStatus {
	for _, st := range m.Status() {
		if st.Pool == pool {
			return st
		}
	}
	return PoolStatus{}
}

// TestFailedLookupsChangeNothing: while the server times out, answers
// SERVFAIL or REFUSED, the set stays as the last answer made it, however
// long (well past hold); the failures are counted; the next answer
// applies.
func TestFailedLookupsChangeNothing(t *testing.T) {
	s := newDNSServer(t, "")
	const name = "_ws._tcp.chat.svc."
	srv := func(ports ...int) []string {
		var rrs []string
		for _, p := range ports {
			rrs = append(rrs, fmt.Sprintf("%s 1 IN SRV 0 %d %d a.chat.", name, p-9000, p))
		}
		return rrs
	}
	s.set(t, name, srv(9001, 9002)...)
	s.set(t, "a.chat.", "a.chat. 1 IN A 127.0.0.1")
	rec := newRecorder()
	m := newTestManager(t, rec)
	spec := Spec{Name: name, Type: TypeSRV, Resolver: s.addr, Interval: 50 * time.Millisecond, Hold: 150 * time.Millisecond}
	m.Update(map[string]Spec{"chat": spec})
	first := rec.next(t, 5*time.Second)
	if got := addrs(first.Backends); got != "127.0.0.1:9001/1 127.0.0.1:9002/2" || first.Pool != "chat" || first.Spec != spec {
		t.Fatalf("first set %q (pool %q)", got, first.Pool)
	}
	// The records change while the server fails: nothing changes.
	s.set(t, name, srv(9001)...)
	for _, mode := range []string{"drop", "servfail", "refused"} {
		s.setMode(mode)
		base := statusOf(m, "chat").Failures
		rec.none(t, mode, func() bool { return statusOf(m, "chat").Failures >= base+4 })
	}
	st := statusOf(m, "chat")
	if st.Backends != 2 || st.FailuresInARow < 12 || st.LastError == "" || time.Since(st.LastSuccess) < spec.Hold {
		t.Errorf("status while failing: %+v", st)
	}
	if got := addrs(m.Backends("chat")); got != "127.0.0.1:9001/1 127.0.0.1:9002/2" {
		t.Errorf("set while failing: %s", got)
	}
	if v := testutil.ToFloat64(collectorFor(m, "wsproxy_discovery_lookups_total", "failed")); v < 12 {
		t.Errorf("wsproxy_discovery_lookups_total{result=failed} = %v", v)
	}
	// An answer again: 9002 is missing from it, and goes after hold
	// (counted from this answer: the failures did not count against it).
	s.setMode("")
	answeredAt := time.Now()
	next := rec.next(t, 5*time.Second)
	if got := addrs(next.Backends); got != "127.0.0.1:9001/1" {
		t.Fatalf("after the server answers again: %s", got)
	}
	if d := time.Since(answeredAt); d < spec.Hold {
		t.Errorf("9002 taken out %v after the first answer without it, before its hold (%v)", d, spec.Hold)
	}
	if st := statusOf(m, "chat"); st.FailuresInARow != 0 || st.LastError != "" || st.Backends != 1 {
		t.Errorf("status after the answer: %+v", st)
	}
}

// collectorFor returns the one metric of m named name whose label
// values include value.
func collectorFor(m *Manager, name, value string) prometheus.Collector {
	return collectorFunc(func(ch chan<- prometheus.Metric) {
		all := make(chan prometheus.Metric, 100)
		m.Collect(all)
		close(all)
		for metric := range all {
			d := metric.Desc().String()
			if strings.Contains(d, `"`+name+`"`) && strings.Contains(fmt.Sprint(metricLabels(metric)), value) {
				ch <- metric
			}
		}
	})
}

type collectorFunc func(chan<- prometheus.Metric)

func (f collectorFunc) Describe(chan<- *prometheus.Desc)    {}
func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f(ch) }

// TestHold: a backend missing from the answers leaves once they have
// lacked it for hold, not before; one that comes back within hold never
// left; a new one joins at once.
func TestHold(t *testing.T) {
	s := newDNSServer(t, "")
	s.set(t, "chat.svc.", "chat.svc. 1 IN A 10.0.0.1", "chat.svc. 1 IN A 10.0.0.2")
	rec := newRecorder()
	m := newTestManager(t, rec)
	spec := Spec{Name: "chat.svc", Type: TypeA, Port: 80, Resolver: s.addr, Interval: 30 * time.Millisecond, Hold: 300 * time.Millisecond}
	m.Update(map[string]Spec{"p": spec})
	if got := addrs(rec.next(t, 5*time.Second).Backends); got != "10.0.0.1:80/1 10.0.0.2:80/1" {
		t.Fatalf("first set: %s", got)
	}
	// .2 flaps: out of the answers for less than hold, then back.
	s.set(t, "chat.svc.", "chat.svc. 1 IN A 10.0.0.1")
	n := s.queries.Load()
	rec.none(t, "a flap shorter than hold", func() bool { return s.queries.Load() >= n+8 }) // >= 3 lookups
	s.set(t, "chat.svc.", "chat.svc. 1 IN A 10.0.0.1", "chat.svc. 1 IN A 10.0.0.2", "chat.svc. 1 IN A 10.0.0.3")
	if got := addrs(rec.next(t, 5*time.Second).Backends); got != "10.0.0.1:80/1 10.0.0.2:80/1 10.0.0.3:80/1" {
		t.Fatalf("after the flap and an addition: %s", got)
	}
	// .1 leaves for good.
	s.set(t, "chat.svc.", "chat.svc. 1 IN A 10.0.0.2", "chat.svc. 1 IN A 10.0.0.3")
	left := time.Now()
	got := rec.next(t, 5*time.Second)
	if d := time.Since(left); d < spec.Hold {
		t.Errorf(".1 taken out %v after it left the records, hold is %v", d, spec.Hold)
	}
	if addrs(got.Backends) != "10.0.0.2:80/1 10.0.0.3:80/1" {
		t.Fatalf("after .1 left: %s", addrs(got.Backends))
	}
	// NXDOMAIN is an answer too: everyone leaves after hold.
	s.remove("chat.svc.")
	if got := rec.next(t, 5*time.Second); len(got.Backends) != 0 {
		t.Fatalf("after NXDOMAIN: %s", addrs(got.Backends))
	}
}

// TestTTL: an answer's TTL shortens the interval, but never below the
// minimum (500ms by default).
func TestTTL(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ttl      int
		min, max time.Duration // between the first two lookups
	}{
		{"TTL 1s under interval 1m", 1, 900 * time.Millisecond, 2500 * time.Millisecond},
		{"TTL 0 held to 500ms", 0, 480 * time.Millisecond, 1500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newDNSServer(t, "")
			s.set(t, "chat.svc.", fmt.Sprintf("chat.svc. %d IN A 10.0.0.1", tc.ttl))
			ctx, cancel := context.WithCancel(context.Background())
			m := NewManager(ctx, Config{Publisher: newRecorder(), Timeout: time.Second})
			defer m.Wait()
			defer cancel()
			m.Update(map[string]Spec{"p": {Name: "chat.svc", Type: TypeA, Port: 80, Resolver: s.addr, Interval: time.Minute, Hold: time.Minute}})
			var at []time.Time
			for len(at) < 4 { // A and AAAA, twice
				select {
				case <-s.asked:
					at = append(at, time.Now())
				case <-time.After(5 * time.Second):
					t.Fatalf("%d queries in 5s", len(at))
				}
			}
			if d := at[2].Sub(at[0]); d < tc.min || d > tc.max {
				t.Errorf("second lookup %v after the first, want %v to %v", d, tc.min, tc.max)
			}
		})
	}
}

// TestUpdate: a reload that keeps a pool's settings keeps its watcher and
// set (nothing published, no lookup restarted); new settings start from
// the old set, whose backends the new answers keep or, after hold, take
// out; a pool no longer discovered has its watcher stopped.
func TestUpdate(t *testing.T) {
	s := newDNSServer(t, "")
	s.set(t, "old.svc.", "old.svc. 1 IN A 10.0.0.1", "old.svc. 1 IN A 10.0.0.2")
	s.set(t, "new.svc.", "new.svc. 1 IN A 10.0.0.2", "new.svc. 1 IN A 10.0.0.3")
	rec := newRecorder()
	m := newTestManager(t, rec)
	spec := Spec{Name: "old.svc", Type: TypeA, Port: 80, Resolver: s.addr, Interval: 30 * time.Millisecond, Hold: 200 * time.Millisecond}
	m.Update(map[string]Spec{"p": spec})
	rec.next(t, 5*time.Second)
	w := m.watchers["p"]
	m.Update(map[string]Spec{"p": spec})
	if m.watchers["p"] != w {
		t.Fatal("unchanged settings got a new watcher")
	}
	n := s.queries.Load()
	rec.none(t, "unchanged settings", func() bool { return s.queries.Load() >= n+6 })

	moved := spec
	moved.Name = "new.svc"
	m.Update(map[string]Spec{"p": moved})
	<-w.stopped
	first := rec.next(t, 5*time.Second) // .3 joins at once, .1 is held
	if got := addrs(first.Backends); got != "10.0.0.1:80/1 10.0.0.2:80/1 10.0.0.3:80/1" || first.Spec != moved {
		t.Fatalf("first set of the new name: %s", got)
	}
	if got := addrs(rec.next(t, 5*time.Second).Backends); got != "10.0.0.2:80/1 10.0.0.3:80/1" {
		t.Fatalf("after hold: %s", got)
	}
	if !reflect.DeepEqual(statusOf(m, "p").Name, "new.svc") {
		t.Errorf("status name %q", statusOf(m, "p").Name)
	}
	w = m.watchers["p"]
	m.Update(nil)
	<-w.stopped
	if len(m.Status()) != 0 || m.Backends("p") != nil {
		t.Errorf("after discovery was removed: %v", m.Status())
	}
}

// metricLabels returns a metric's label values.
func metricLabels(m prometheus.Metric) []string {
	var pb dto.Metric
	_ = m.Write(&pb)
	var out []string
	for _, l := range pb.GetLabel() {
		out = append(out, l.GetValue())
	}
	return out
}
