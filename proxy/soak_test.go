package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

const soakConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults:
  handshake_timeout: 2s
  read_timeout: 5s
  write_timeout: 2s
  ping_interval: 1s
  max_message_bytes: 64KiB
  idle_timeout: 30s
routes:
  - {path: /, pool: p}
pools:
  p:
    backends: [{address: "{{B0}}"}]
`

// TestSoak mixes hostile clients with normal ones for a while and checks
// that the proxy neither crashes, leaks goroutines nor grows, and that
// every normal session's messages come back intact. It runs only when
// WSPROXY_SOAK is set to a duration (e.g. WSPROXY_SOAK=3m).
func TestSoak(t *testing.T) {
	v := os.Getenv("WSPROXY_SOAK")
	if v == "" {
		t.Skip("set WSPROXY_SOAK to a duration to run the soak test")
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 10*time.Second {
		t.Fatalf("WSPROXY_SOAK=%q: want a duration of at least 10s", v)
	}
	b := startBackend(t, "b0", func(b *testBackend) { b.forget = true })
	p := startProxy(t, soakConfig, b.addr())
	addr := p.ln.Addr().String()

	// Warm up, then take the baseline.
	if err := sequencedSession(p.url("/"), 0, 10); err != nil {
		t.Fatal(err)
	}
	p.waitSessions(t, 0)
	goroutinesBefore := countGoroutines()

	var (
		mu       sync.Mutex
		failures []string
		outcomes = map[string]*atomic.Int64{}
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
		mu.Unlock()
	}
	count := func(kind string) {
		mu.Lock()
		c := outcomes[kind]
		if c == nil {
			c = new(atomic.Int64)
			outcomes[kind] = c
		}
		mu.Unlock()
		c.Add(1)
	}

	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	loop := func(workers int, kind string, one func() error) {
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					if err := one(); err != nil {
						fail("%s: %v", kind, err)
						time.Sleep(100 * time.Millisecond)
						continue
					}
					count(kind)
				}
			}()
		}
	}

	var messages atomic.Int64
	var ids atomic.Int64
	loop(40, "normal", func() error {
		n := 1 + rand.IntN(50)
		if err := sequencedSession(p.url("/"), int(ids.Add(1)), n); err != nil {
			return err
		}
		messages.Add(int64(n))
		return nil
	})
	loop(2, "unmasked frame -> 1002", func() error {
		return hostile(addr, wantClose(wsframe.CloseProtocolError), func(c net.Conn) error {
			_, err := c.Write(wsframe.AppendHeader(nil, true, wsframe.OpText, nil, 3))
			if err == nil {
				_, err = c.Write([]byte("abc"))
			}
			return err
		})
	})
	loop(2, "reserved opcode -> 1002", func() error {
		return hostile(addr, wantClose(wsframe.CloseProtocolError), func(c net.Conn) error {
			_, err := c.Write(clientFrame(true, 0x3, []byte("x")))
			return err
		})
	})
	loop(2, "oversized message -> 1009", func() error {
		return hostile(addr, wantClose(wsframe.CloseTooBig), func(c net.Conn) error {
			_, err := c.Write(clientFrame(true, wsframe.OpBinary, make([]byte, 65<<10)))
			return err
		})
	})
	loop(2, "garbage -> 1002", func() error {
		return hostile(addr, wantClose(wsframe.CloseProtocolError), func(c net.Conn) error {
			g := make([]byte, 256)
			for i := range g {
				g[i] = byte(rand.IntN(256))
			}
			g[0] = 0x80 | 0x0f // a reserved opcode first: never valid
			_, err := c.Write(g)
			return err
		})
	})
	loop(2, "vanishing mid-frame", func() error {
		return hostile(addr, nil, func(c net.Conn) error {
			f := clientFrame(true, wsframe.OpBinary, make([]byte, 1000))
			_, err := c.Write(f[:500])
			return err
		})
	})
	loop(2, "bad handshake -> 400", func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		req := strings.Replace(rawHandshake(addr, "/"), "Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short", 1)
		if _, err := c.Write([]byte(req)); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusBadRequest {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	loop(4, "slowloris cut off", func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		req := []byte(rawHandshake(addr, "/"))
		start := time.Now()
		for _, ch := range req[:len(req)-2] { // never finishes
			if _, err := c.Write([]byte{ch}); err != nil {
				break // cut off
			}
			if time.Since(start) > 10*time.Second {
				return errors.New("not cut off after 10s")
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
			return err
		}
		return nil
	})
	loop(1, "non-reader reset", func() error {
		c, _, err := rawSession(addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.(*net.TCPConn).SetReadBuffer(4096)
		// Ask for echoes and never read them: the write timeout ends it.
		msg := clientFrame(true, wsframe.OpBinary, make([]byte, 32<<10))
		_ = c.SetWriteDeadline(time.Now().Add(15 * time.Second))
		// Loopback socket buffers on the four sockets of the path can
		// take some 30 MiB before anything pushes back.
		for i := 0; i < 4096; i++ {
			if _, err := c.Write(msg); err != nil {
				return nil // the proxy gave up on us
			}
		}
		return errors.New("128 MiB written to a session that reads nothing")
	})

	// Sample the proxy's footprint while it runs.
	type sample struct {
		rss, heap uint64
		sessions  int
	}
	var samples []sample
	tick := time.NewTicker(d / 20)
	for time.Now().Before(deadline) {
		<-tick.C
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		samples = append(samples, sample{rss: rssBytes(), heap: ms.HeapInuse, sessions: p.srv.Sessions()})
	}
	tick.Stop()
	if f := os.Getenv("WSPROXY_SOAK_HEAP"); f != "" {
		if w, err := os.Create(f); err == nil {
			runtime.GC()
			_ = pprof.WriteHeapProfile(w)
			w.Close()
		}
	}
	wg.Wait()
	p.waitSessions(t, 0)

	var names []string
	for k, c := range outcomes {
		names = append(names, fmt.Sprintf("%s: %d", k, c.Load()))
	}
	t.Logf("soak %v: %d normal messages echoed intact; outcomes: %s", d, messages.Load(), strings.Join(names, ", "))
	for i, s := range samples {
		t.Logf("sample %2d: rss %5.1f MiB, heap in use %5.1f MiB, %d live sessions", i, float64(s.rss)/(1<<20), float64(s.heap)/(1<<20), s.sessions)
	}
	for _, f := range failures {
		t.Error(f)
	}
	if len(samples) >= 6 {
		// Flat: the last third's peak within 25% (plus 8 MiB of slack for
		// the allocator) of the first third's peak after the warm-up.
		third := len(samples) / 3
		peak := func(ss []sample) (rss, heap uint64) {
			for _, s := range ss {
				rss, heap = max(rss, s.rss), max(heap, s.heap)
			}
			return
		}
		r1, h1 := peak(samples[1:third])
		r3, h3 := peak(samples[len(samples)-third:])
		if r3 > r1+r1/4+8<<20 || h3 > h1+h1/4+8<<20 {
			t.Errorf("memory grows: rss %d -> %d, heap %d -> %d", r1, r3, h1, h3)
		}
	}
	deadlineG := time.Now().Add(20 * time.Second)
	after := countGoroutines()
	for after > goroutinesBefore && time.Now().Before(deadlineG) {
		time.Sleep(50 * time.Millisecond)
		after = countGoroutines()
	}
	t.Logf("goroutines: %d before, %d after", goroutinesBefore, after)
	if after > goroutinesBefore {
		t.Errorf("goroutine leak: %d before, %d after", goroutinesBefore, after)
	}
}

// rssBytes reads this process's resident set size.
func rssBytes() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// rawSession opens a WebSocket session by hand.
func rawSession(addr string) (net.Conn, *bufio.Reader, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	if _, err := c.Write([]byte(rawHandshake(addr, "/"))); err != nil {
		c.Close()
		return nil, nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	return c, br, nil
}

// wantClose returns a check that the proxy answers with a Close of code.
func wantClose(code int) func(net.Conn, *bufio.Reader) error {
	return func(c net.Conn, br *bufio.Reader) error {
		rc := &rawClient{conn: c, br: br}
		for {
			f, err := rc.next()
			if err != nil {
				return fmt.Errorf("no Close %d: %w", code, err)
			}
			if f.op != wsframe.OpClose {
				continue
			}
			got, _, _ := wsframe.ParseClose(f.payload)
			if got != code {
				return fmt.Errorf("close %d, want %d", got, code)
			}
			var m [4]byte
			binary.LittleEndian.PutUint32(m[:], rand.Uint32())
			_, _ = c.Write(wsframe.AppendClose(nil, &m, code, ""))
			return nil
		}
	}
}

// hostile opens a session, misbehaves with act, and checks the answer.
func hostile(addr string, check func(net.Conn, *bufio.Reader) error, act func(net.Conn) error) error {
	c, br, err := rawSession(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := act(c); err != nil {
		return err
	}
	if check == nil {
		return nil
	}
	return check(c, br)
}
