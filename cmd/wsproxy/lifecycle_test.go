package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// churnSession is one client of TestReloadChurn: it sends numbered
// messages and checks that each comes back, in order, until the proxy
// closes it. Reading never pauses, so a Close is seen when it arrives.
type churnSession struct {
	user     string
	backend  string // the backend that answered first
	answered atomic.Int64
	// Set when the session ends:
	closeCode int
	closedAt  time.Time
	err       error // anything but a Close frame from the proxy
	done      chan struct{}
}

func (s *churnSession) run(c *websocket.Conn, stop <-chan struct{}, every time.Duration) {
	defer close(s.done)
	defer c.Close()
	quit := make(chan struct{})
	writer := make(chan struct{})
	go func() {
		defer close(writer)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for seq := 0; ; seq++ {
			if c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf("%s#%d", s.user, seq))) != nil {
				return // the reader sees why
			}
			select {
			case <-tick.C:
			case <-stop:
				return // stay open, idle, until the proxy closes it
			case <-quit:
				return
			}
		}
	}()
	defer func() {
		close(quit)
		<-writer
	}()
	for seq := 0; ; seq++ {
		_, got, err := c.ReadMessage()
		if err != nil {
			s.end(c, err)
			return
		}
		want := fmt.Sprintf("%s#%d", s.user, seq)
		name, echoed, _ := strings.Cut(string(got), ":")
		if echoed != want {
			s.err = fmt.Errorf("want %q back, got %q", want, got)
			return
		}
		if s.backend == "" {
			s.backend = name
		} else if name != s.backend {
			s.err = fmt.Errorf("moved from %s to %s", s.backend, name)
			return
		}
		s.answered.Add(1)
	}
}

// end records how the session ended: a Close frame (with its code) or an
// error.
func (s *churnSession) end(c *websocket.Conn, err error) {
	s.closedAt = time.Now()
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		s.closeCode = ce.Code
		return
	}
	s.err = err
}

const churnConfig = `
listeners: [{address: %q}]
admin: {address: %q}
log: {level: info, access_log: false}
defaults: {drain_timeout: %s, ping_interval: 20s}
routes:
  - {path: /, pool: p, hash_key: "query:user"}
pools:
  p:
    backends:
%s`

// TestReloadChurn runs 1,000 sessions exchanging numbered messages while
// the proxy process is reloaded 20 times with backends added and removed:
// only sessions on removed backends end, each with a Close 1001, at moments
// spread over the drain window; no message is lost or answered twice; an
// invalid reload changes nothing; SIGTERM closes the rest with 1001 and
// the process exits 0 within drain_timeout + 1 s.
func TestReloadChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 sessions through the binary")
	}
	const (
		sessions = 1000
		drain    = 3 * time.Second
		reloads  = 20
	)
	names := []string{"a", "b", "c"}
	addrs := map[string]string{}
	for _, n := range names {
		addrs[n] = echoBackend(t, n)
	}
	extra := make([]string, reloads)
	for i := range extra {
		extra[i] = echoBackend(t, fmt.Sprintf("x%d", i))
	}
	listen, admin := freePort(t), freePort(t)
	render := func(backends ...string) string {
		var b strings.Builder
		for _, a := range backends {
			fmt.Fprintf(&b, "      - {address: %q}\n", a)
		}
		return fmt.Sprintf(churnConfig, listen, admin, drain, b.String())
	}
	cfgPath := writeConfig(t, render(addrs["a"], addrs["b"], addrs["c"]))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	t0 := time.Now()

	stop := make(chan struct{})
	var all []*churnSession
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	open := func(user string) *churnSession {
		t.Helper()
		s := &churnSession{user: user, done: make(chan struct{})}
		c, _, err := dialer.Dial("ws://"+listen+"/?user="+s.user, nil)
		if err != nil {
			t.Fatalf("session %s: %v", user, err)
		}
		all = append(all, s)
		go s.run(c, stop, 400*time.Millisecond)
		return s
	}
	for i := 0; i < sessions; i++ {
		open(fmt.Sprintf("u%d", i))
	}
	// Every session has been answered once, so it knows its backend.
	waitFor(t, "every session answered", func() bool {
		for _, s := range all {
			if s.answered.Load() < 1 {
				return false
			}
		}
		return true
	})

	t.Logf("%v: %d sessions open", time.Since(t0), len(all))
	reloaded := 0
	reload := func(text string) {
		t.Helper()
		if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		p.cmd.Process.Signal(syscall.SIGHUP)
		reloaded++
		waitLogCount(t, p, "configuration reloaded", reloaded)
	}
	// Twenty reloads: each odd one adds a backend (which takes only new
	// sessions), the next removes it again; the tenth also removes c, whose
	// sessions are drained while the reloads go on.
	base := []string{addrs["a"], addrs["b"], addrs["c"]}
	var cRemoved time.Time
	landed := 0 // new sessions that landed on an added backend
	for i := 0; i < reloads; i++ {
		list := append([]string(nil), base...)
		if i%2 == 0 {
			list = append(list, extra[i])
		}
		if i == 9 {
			base = []string{addrs["a"], addrs["b"]}
			list = base
		}
		reload(render(list...))
		if i == 9 {
			cRemoved = drainStart(t, p, sessions/6)
		}
		if i%2 == 0 && i != 9 {
			// Scale-up: some new sessions land on the added backend
			// (and are drained by the next reload); old ones stay put.
			var fresh []*churnSession
			for j := 0; j < 8; j++ {
				fresh = append(fresh, open(fmt.Sprintf("n%d-%d", i, j)))
			}
			for _, s := range fresh {
				waitFor(t, "a new session's answer", func() bool { return s.answered.Load() >= 1 })
				if s.backend == fmt.Sprintf("x%d", i) {
					landed++
				}
			}
		}
		if i == 12 {
			// An invalid file changes nothing.
			os.WriteFile(cfgPath, []byte("listeners: [{address: 5}]\n"), 0o644)
			p.cmd.Process.Signal(syscall.SIGHUP)
			waitLogCount(t, p, "reload failed", 1)
		}
		time.Sleep(150 * time.Millisecond)
	}
	// The sessions on c and on the last added backend have all been
	// drained by now.
	t.Logf("%v: reloads done", time.Since(t0))
	time.Sleep(drain + time.Second)

	removed := func(backend string) bool { return backend == "c" || strings.HasPrefix(backend, "x") }
	var onC []*churnSession
	for _, s := range all {
		select {
		case <-s.done:
			if !removed(s.backend) {
				t.Errorf("session %s on %s ended: code %d, err %v", s.user, s.backend, s.closeCode, s.err)
			} else if s.err != nil || s.closeCode != 1001 {
				t.Errorf("session %s on the removed backend %s: code %d, err %v", s.user, s.backend, s.closeCode, s.err)
			}
		default:
			if removed(s.backend) {
				t.Errorf("session %s on the removed backend %s is still open", s.user, s.backend)
			}
		}
		if s.backend == "c" {
			onC = append(onC, s)
		}
	}
	if len(onC) < sessions/6 {
		t.Fatalf("only %d of %d sessions landed on c", len(onC), sessions)
	}
	var tenths [10]int
	for _, s := range onC {
		<-s.done
		if s.err != nil || s.closeCode != 1001 {
			t.Fatalf("drained session %s: code %d, err %v", s.user, s.closeCode, s.err)
		}
		at := s.closedAt.Sub(cRemoved)
		tenths[min(max(int(at*10/drain), 0), 9)]++
	}
	for i, n := range tenths {
		if n > len(onC)/5 {
			t.Errorf("%d of %d drained sessions closed in tenth %d of the window: %v", n, len(onC), i, tenths)
		}
	}
	t.Logf("%d sessions drained from c; closes per tenth of the window: %v", len(onC), tenths)

	// SIGTERM: every session left gets a Close 1001; exit 0 in time.
	close(stop)
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("exit: %v", p.err)
		}
	case <-time.After(drain + time.Second):
		t.Fatalf("still running %v after SIGTERM", time.Since(start))
	}
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-s.done
			if !removed(s.backend) && (s.err != nil || s.closeCode != 1001) {
				t.Errorf("session %s at shutdown: code %d, err %v", s.user, s.closeCode, s.err)
			}
		}()
	}
	wg.Wait()
	if landed == 0 {
		t.Error("no new session landed on an added backend")
	}
}

// drainStart waits until the process logs that it began draining at
// least min sessions, and returns the time of that log line. The drain
// runs in its own goroutine, so its line may follow the reload's.
func drainStart(t *testing.T, p *process, min int) time.Time {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, line := range strings.Split(p.stderr.String(), "\n") {
			var entry struct {
				Msg      string `json:"msg"`
				TS       string `json:"ts"`
				Sessions int    `json:"sessions"`
			}
			if json.Unmarshal([]byte(line), &entry) != nil || entry.Msg != "draining sessions" || entry.Sessions < min {
				continue
			}
			ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", entry.TS)
			if err != nil {
				t.Fatalf("log time %q: %v", entry.TS, err)
			}
			return ts
		}
		if time.Now().After(deadline) {
			t.Fatalf("the process never logged a drain of %d sessions or more", min)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitLogCount waits until the process has logged s n times.
func waitLogCount(t *testing.T, p *process, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for strings.Count(p.stderr.String(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("logged %q %d times, want %d", s, strings.Count(p.stderr.String(), s), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitFor polls cond for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
