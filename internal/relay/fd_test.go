package relay

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/poller"
	"github.com/wsproxy/wsproxy/internal/wsframe"
	"golang.org/x/sys/unix"
)

// rigTests are the tests built on newRig: runOverSides runs them
// again over each other kind of sides.
var rigTests = []struct {
	name string
	f    func(*testing.T)
}{
	{"BothWays", TestRelayBothWays},
	{"SplitAtEveryOffset", TestRelaySplitAtEveryOffset},
	{"EarlyBytesFirst", TestRelayEarlyBytesFirst},
	{"DataBeforeStart", TestRelayDataBeforeStart},
	{"ClosePaths", TestRelayClosePaths},
	{"IdleSessionHoldsNoGoroutine", TestRelayIdleSessionHoldsNoGoroutine},
	{"Deadline", TestRelayDeadline},
	{"Violations", TestRelayViolations},
	{"PingBetweenFragments", TestRelayPingBetweenFragments},
	{"BackPressure", TestRelayBackPressure},
	{"RoomWakesWriter", TestRelayRoomWakesWriter},
	{"WriteAfterWaitedWrite", TestRelayWriteAfterWaitedWrite},
	{"CloseTimeout", TestRelayCloseTimeout},
	{"FinishMidFrame", TestRelayFinishMidFrame},
	{"AllocatesNothingPerFrame", TestRelayAllocatesNothingPerFrame},
	{"AllocatesNothingPerControlFrame", TestRelayAllocatesNothingPerControlFrame},
}

// Every rig test passes with the relay's ends on bare descriptors, added
// by Start (fd) or registered already on pollers of their own (reg), and
// on a bare client with a TLS backend (mixed): the same close paths,
// violations, timers, pings, back-pressure and closing handshake as over
// net.Conn.
func TestRelayOverFDSides(t *testing.T)    { runOverSides(t, fdSides) }
func TestRelayOverRegSides(t *testing.T)   { runOverSides(t, regSides) }
func TestRelayOverMixedSides(t *testing.T) { runOverSides(t, mixedSides) }

func runOverSides(t *testing.T, sd sides) {
	rigSides = sd
	defer func() { rigSides = connSides }()
	for _, tc := range rigTests {
		t.Run(tc.name, tc.f)
	}
}

// fdOpen reports whether fd is an open descriptor.
func fdOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return !errors.Is(err, unix.EBADF)
}

// closeCounter counts closeFD calls per descriptor, and checks at each
// that the session is finished and both its pumps have stopped for good.
type closeCounter struct {
	t  *testing.T
	mu sync.Mutex
	s  *Session
	n  map[int]int
}

// countCloses installs a closeCounter for the test; call it before
// newRig, so that it is uninstalled after the rig's goroutines are gone.
func countCloses(t *testing.T) *closeCounter {
	c := &closeCounter{t: t, n: map[int]int{}}
	orig := closeFn.Load().(func(int) error)
	closeFn.Store(func(fd int) error {
		c.mu.Lock()
		c.n[fd]++
		if s := c.s; s != nil && (!s.done.Load() || s.client.state.Load() != pumpDead || s.backend.state.Load() != pumpDead) {
			c.t.Errorf("descriptor %d closed with done=%v, pumps %d and %d", fd, s.done.Load(), s.client.state.Load(), s.backend.state.Load())
		}
		c.mu.Unlock()
		return orig(fd)
	})
	t.Cleanup(func() { closeFn.Store(orig) })
	return c
}

func (c *closeCounter) count(fd int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[fd]
}

// holdViolation blocks the pump that reports a violation until released.
type holdViolation struct {
	*recorder
	held, release chan struct{}
}

func (h *holdViolation) Violation(from Side, reason string) {
	h.recorder.Violation(from, reason)
	close(h.held)
	<-h.release
}

// A bare descriptor is closed once, and only after both pumps stopped:
// a session finished while its client's pump is still at work keeps the
// descriptors open until that pump is done.
func TestRelayFDClosedOnceAfterPumps(t *testing.T) {
	for _, sd := range []sides{fdSides, regSides, mixedSides} {
		t.Run(sd.String(), func(t *testing.T) {
			closes := countCloses(t)
			hv := &holdViolation{held: make(chan struct{}), release: make(chan struct{})}
			r := newRig(t, plain(), rigOpts{sides: sd, hooks: func(rec *recorder) Hooks { hv.recorder = rec; return hv }})
			closes.mu.Lock()
			closes.s = r.s
			closes.mu.Unlock()
			r.client.send(r.client.frame(true, 0x3, nil)) // a reserved opcode
			select {
			case <-hv.held:
			case <-time.After(10 * time.Second):
				t.Fatal("no violation reported")
			}
			r.s.Finish()
			r.waitEnded()
			for _, fd := range r.fds {
				if fd >= 0 && (!fdOpen(fd) || closes.count(fd) != 0) {
					t.Fatalf("descriptor %d closed while the client's pump runs", fd)
				}
			}
			close(hv.release)
			for _, fd := range r.fds {
				if fd < 0 {
					continue
				}
				waitFor(t, "the descriptors closed", func() bool { return closes.count(fd) > 0 })
				if fdOpen(fd) {
					t.Fatalf("descriptor %d still open", fd)
				}
			}
			r.client.expectEOF()
			// Later events find the session finished and close nothing.
			r.s.Finish()
			r.s.client.schedule()
			r.s.backend.Ready(nil)
			for _, fd := range r.fds {
				if n := closes.count(fd); fd >= 0 && n != 1 {
					t.Fatalf("descriptor %d closed %d times", fd, n)
				}
			}
		})
	}
}

// Finishing a session wakes a pump blocked writing to a side that reads
// nothing, with no write timeout to end the wait: the writer parked on a
// bare descriptor's poller is woken and fails, a net.Conn is closed.
func TestRelayFinishWakesBlockedWriter(t *testing.T) {
	for _, sd := range []sides{connSides, fdSides, regSides} {
		t.Run(sd.String(), func(t *testing.T) {
			r := newRig(t, plain(), rigOpts{sides: sd})
			_ = r.client.tcp.SetReadBuffer(4 << 10)
			msg := r.backend.frame(true, wsframe.OpBinary, make([]byte, 64<<10))
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					_ = r.backend.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
					if _, err := r.backend.conn.Write(msg); err != nil {
						return
					}
				}
			}()
			blocked := "relay.(*side).waitRoom"
			if sd == connSides {
				blocked = "internal/poll.(*pollDesc).waitWrite"
			}
			buf := make([]byte, 1<<20)
			waitFor(t, "the backend's pump blocked on the client", func() bool {
				return strings.Contains(string(buf[:runtime.Stack(buf, true)]), blocked)
			})
			r.s.Finish()
			r.waitEnded()
			waitFor(t, "both pumps stopped", func() bool {
				return r.s.client.state.Load() == pumpDead && r.s.backend.state.Load() == pumpDead
			})
			r.backend.conn.Close()
			<-done
		})
	}
}

// An endpoint InitEndpoints refuses costs nothing: a bare descriptor given
// to a session that could not be set up is closed, its registration
// removed first; a Conn is left to the caller.
func TestInitEndpointsErrorClosesFD(t *testing.T) {
	p, err := poller.New()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	tc, tcPeer := tcpPair(t)
	defer tc.Close()
	defer tcPeer.Close()
	for _, tc := range []struct {
		name    string
		backend func(fd int, reg poller.Registration) Endpoint
		err     error
	}{
		{"backend not a socket", func(int, poller.Registration) Endpoint { return Endpoint{Conn: c1} }, ErrNotSocket},
		{"registration beside a Conn", func(_ int, reg poller.Registration) Endpoint { return Endpoint{Conn: tc, Reg: reg} }, errRegNeedsFD},
		{"no backend", func(int, poller.Registration) Endpoint { return connEndpoint(nil) }, ErrNotSocket},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd, peer := rawPair(t)
			defer peer.Close()
			reg, err := p.AddFlags(fd, poller.Writable, ignore{})
			if err != nil {
				t.Fatal(err)
			}
			err = new(Session).InitEndpoints(Endpoint{FD: fd, Reg: reg, Writable: true}, tc.backend(fd, reg), &Options{Limits: plain()})
			if err != tc.err {
				t.Fatalf("InitEndpoints: %v, want %v", err, tc.err)
			}
			if fdOpen(fd) {
				t.Fatal("the client's descriptor is still open")
			}
			if p.Len() != 0 {
				t.Fatalf("%d registrations left", p.Len())
			}
			_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := peer.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Fatalf("the client read %d, %v; want the connection closed", n, err)
			}
		})
	}
	// The Conns were left alone.
	if _, err := tcPeer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Read(make([]byte, 1)); err != nil {
		t.Fatalf("the caller's Conn: %v", err)
	}
}

// Start without a poller for a side that needs one fails, and so does
// Start with a registration removed before it could be taken over; Finish
// then closes the descriptors and leaves no registration behind.
func TestStartFails(t *testing.T) {
	closes := countCloses(t)
	p, err := poller.New()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, tc := range []struct {
		name   string
		remove bool           // the client's registration before Start
		start  *poller.Poller // for the backend, which has none
		err    error
	}{
		{"no poller", false, nil, errNoPoller},
		{"registration removed", true, p, errRegRemoved},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfd, cpeer := rawPair(t)
			defer cpeer.Close()
			bfd, bpeer := rawPair(t)
			defer bpeer.Close()
			creg, err := p.Add(cfd, ignore{})
			if err != nil {
				t.Fatal(err)
			}
			// Descriptor numbers come back from one subtest to the next.
			c0, b0 := closes.count(cfd), closes.count(bfd)
			rec := newRecorder()
			s := new(Session)
			if err := s.InitEndpoints(Endpoint{FD: cfd, Reg: creg}, Endpoint{FD: bfd}, &Options{Limits: plain(), Hooks: rec}); err != nil {
				t.Fatal(err)
			}
			if tc.remove {
				creg.Remove()
			}
			if err := s.Start(tc.start); err != tc.err {
				t.Fatalf("Start: %v, want %v", err, tc.err)
			}
			s.Finish()
			<-rec.ended
			if closes.count(cfd)-c0 != 1 || closes.count(bfd)-b0 != 1 || fdOpen(cfd) || fdOpen(bfd) {
				t.Fatalf("closed %d and %d times", closes.count(cfd)-c0, closes.count(bfd)-b0)
			}
			if p.Len() != 0 {
				t.Fatalf("%d registrations left", p.Len())
			}
		})
	}
}

// osThreads is how many threads the process has.
func osThreads(tb testing.TB) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	tb.Fatal("no thread count")
	return 0
}

// A writer waiting for room in a bare side parks its goroutine on the
// side's poller and holds no thread: many peers that stopped reading
// cost no more threads than a few.
func TestRelayStalledWritersHoldNoThread(t *testing.T) {
	checkGoroutines(t)
	p, err := poller.New()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const n = 64
	msg := (&peer{}).frame(true, wsframe.OpBinary, make([]byte, 1<<20))
	var ended []chan struct{}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var sessions []*Session
	for i := 0; i < n; i++ {
		cfd, client := rawPair(t)
		bfd, backend := rawPair(t)
		conns = append(conns, client, backend)
		_ = client.SetReadBuffer(4 << 10)
		rec := newRecorder()
		s := new(Session)
		if err := s.InitEndpoints(Endpoint{FD: cfd}, Endpoint{FD: bfd}, &Options{Limits: &Limits{MaxMessageBytes: 4 << 20, WriteTimeout: time.Minute}, Hooks: rec}); err != nil {
			t.Fatal(err)
		}
		if err := s.Start(p); err != nil {
			t.Fatal(err)
		}
		sessions, ended = append(sessions, s), append(ended, rec.ended)
		go func() {
			// Until the relay stops taking more, and the end.
			for {
				if _, err := backend.Write(msg); err != nil {
					return
				}
			}
		}()
	}
	buf := make([]byte, 4<<20)
	waitFor(t, fmt.Sprintf("%d writers waiting for room", n), func() bool {
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "relay.(*side).waitRoom") == n
	})
	th := osThreads(t)
	if th >= n/2 {
		t.Fatalf("%d threads with %d writers waiting", th, n)
	}
	t.Logf("%d threads with %d writers waiting", th, n)
	for i, s := range sessions {
		s.Finish()
		<-ended[i]
	}
}
