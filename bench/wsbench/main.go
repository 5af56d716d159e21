// Command wsbench is the benchmark kit's load generator. It speaks just
// enough WebSocket over plain sockets (masked client frames, pongs for
// pings) to cost as little CPU as possible next to the proxy it measures,
// and reads the proxy's CPU time and memory from /proc around the window.
//
// Modes:
//
//	rtt         -conns clients each send a -size message and wait for its echo
//	throughput  -conns clients each keep one -size message in flight
//	sessions    -conns workers each connect, upgrade and close, repeatedly
//	idle        open -conns sessions and hold them; report proxy RSS per session
//
// Output is one JSON line per run.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type result struct {
	Mode         string  `json:"mode"`
	Target       string  `json:"target"`
	Conns        int     `json:"conns"`
	Size         int     `json:"size"`
	Ops          int64   `json:"ops"`
	OpsPerSec    float64 `json:"ops_per_sec"`
	MiBPerSec    float64 `json:"mib_per_sec,omitempty"`
	P50us        float64 `json:"p50_us,omitempty"`
	P99us        float64 `json:"p99_us,omitempty"`
	CPUmsPerKop  float64 `json:"cpu_ms_per_kop,omitempty"` // proxy CPU per 1,000 operations
	CPUmsPerMiB  float64 `json:"cpu_ms_per_mib,omitempty"`
	RSSKiB       int64   `json:"rss_kib,omitempty"`
	RSSPerSessB  float64 `json:"rss_per_session_bytes,omitempty"`
	Errors       int64   `json:"errors"`
	ProxyCPUms   float64 `json:"proxy_cpu_ms,omitempty"`
	WindowSecond float64 `json:"window_s"`
}

func main() {
	mode := flag.String("mode", "rtt", "rtt | throughput | sessions | idle")
	target := flag.String("url", "ws://127.0.0.1:8080/", "WebSocket URL")
	name := flag.String("name", "", "label for the target in the output")
	conns := flag.Int("conns", 100, "connections (or workers)")
	size := flag.Int("size", 128, "message size in bytes")
	duration := flag.Duration("duration", 10*time.Second, "measured window")
	warmup := flag.Duration("warmup", 2*time.Second, "load before the window")
	pids := flag.String("pid", "", "proxy process ids, comma separated, for CPU and RSS")
	flag.Parse()
	raiseFileLimit()
	u, err := url.Parse(*target)
	if err != nil {
		fatal(err)
	}
	b := &bench{host: u.Host, path: u.RequestURI(), size: *size, pids: parsePids(*pids)}
	var r result
	switch *mode {
	case "rtt":
		r = b.rtt(*conns, *warmup, *duration)
	case "throughput":
		r = b.throughput(*conns, *warmup, *duration)
	case "sessions":
		r = b.sessions(*conns, *warmup, *duration)
	case "idle":
		r = b.idle(*conns, *duration)
	default:
		fatal(fmt.Errorf("unknown mode %q", *mode))
	}
	r.Mode, r.Target, r.Conns, r.Size = *mode, *name, *conns, *size
	if r.Target == "" {
		r.Target = u.Host
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "wsbench:", err)
	os.Exit(1)
}

func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

type bench struct {
	host, path string
	size       int
	pids       []int
	errors     atomic.Int64
}

// conn is a client WebSocket connection.
type conn struct {
	c   net.Conn
	br  *bufio.Reader
	out []byte
}

var handshakeKey = "dGhlIHNhbXBsZSBub25jZQ=="

func (b *bench) dial() (*conn, error) {
	c, err := net.DialTimeout("tcp", b.host, 10*time.Second)
	if err != nil {
		return nil, err
	}
	req := "GET " + b.path + " HTTP/1.1\r\nHost: " + b.host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + handshakeKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, 64<<10)
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, " 101 ") {
		c.Close()
		return nil, fmt.Errorf("handshake: %q %v", status, err)
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, err
		}
		if line == "\r\n" {
			break
		}
	}
	c.SetDeadline(time.Time{})
	return &conn{c: c, br: br}, nil
}

// frame appends a masked client frame. The mask is zero, so the payload
// is sent as it is: legal, and no CPU spent masking.
func appendFrame(dst []byte, op byte, payload []byte) []byte {
	dst = append(dst, 0x80|op)
	n := len(payload)
	switch {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n < 1<<16:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, 0, 0, 0, 0)
	return append(dst, payload...)
}

func (c *conn) send(op byte, payload []byte) error {
	c.out = appendFrame(c.out[:0], op, payload)
	_, err := c.c.Write(c.out)
	return err
}

// readMessage reads one data message (answering pings, skipping pongs)
// and returns its length. Payloads are discarded.
func (c *conn) readMessage() (int, error) {
	total := 0
	for {
		h0, err := c.br.ReadByte()
		if err != nil {
			return 0, err
		}
		h1, err := c.br.ReadByte()
		if err != nil {
			return 0, err
		}
		n := int64(h1 & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(c.br, b[:]); err != nil {
				return 0, err
			}
			n = int64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(c.br, b[:]); err != nil {
				return 0, err
			}
			n = int64(binary.BigEndian.Uint64(b[:]))
		}
		op := h0 & 0x0f
		switch op {
		case 0x9: // ping: answer with its payload
			p := make([]byte, n)
			if _, err := io.ReadFull(c.br, p); err != nil {
				return 0, err
			}
			if err := c.send(0xA, p); err != nil {
				return 0, err
			}
			continue
		case 0x8:
			return 0, io.EOF
		}
		if _, err := c.br.Discard(int(n)); err != nil {
			return 0, err
		}
		if op == 0xA {
			continue
		}
		total += int(n)
		if h0&0x80 != 0 {
			return total, nil
		}
	}
}

func (c *conn) close() {
	_ = c.send(0x8, []byte{0x03, 0xe8})
	c.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, err := c.readMessage(); err != nil {
			break
		}
	}
	c.c.Close()
}

// procStat returns the CPU time (ms) and RSS (KiB) summed over pids.
func procStat(pids []int) (cpuMs float64, rssKiB int64) {
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err == nil {
			s := string(data)
			fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
			ut, _ := strconv.ParseFloat(fields[11], 64)
			st, _ := strconv.ParseFloat(fields[12], 64)
			cpuMs += (ut + st) * 10 // clock ticks of 10 ms
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err == nil {
			for _, line := range strings.Split(string(status), "\n") {
				if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
					v, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
					rssKiB += v
				}
			}
		}
	}
	return
}

func parsePids(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// window runs load for warmup, then measures ops over d.
type window struct {
	ops       atomic.Int64
	measuring atomic.Bool
	mu        sync.Mutex
	lat       []time.Duration
}

func (w *window) record(d time.Duration, keep bool) {
	if !w.measuring.Load() {
		return
	}
	w.ops.Add(1)
	if keep {
		w.mu.Lock()
		if len(w.lat) < 2_000_000 {
			w.lat = append(w.lat, d)
		}
		w.mu.Unlock()
	}
}

func (b *bench) measure(r *result, w *window, warmup, d time.Duration, perMiB bool) {
	time.Sleep(warmup)
	cpu0, _ := procStat(b.pids)
	start := time.Now()
	w.measuring.Store(true)
	time.Sleep(d)
	w.measuring.Store(false)
	el := time.Since(start).Seconds()
	cpu1, rss := procStat(b.pids)
	r.Ops = w.ops.Load()
	r.OpsPerSec = float64(r.Ops) / el
	r.WindowSecond = el
	r.RSSKiB = rss
	if len(b.pids) > 0 && r.Ops > 0 {
		r.ProxyCPUms = cpu1 - cpu0
		r.CPUmsPerKop = r.ProxyCPUms / float64(r.Ops) * 1000
	}
	if perMiB {
		mib := float64(r.Ops) * float64(b.size) / (1 << 20)
		r.MiBPerSec = mib / el
		if len(b.pids) > 0 && mib > 0 {
			r.CPUmsPerMiB = r.ProxyCPUms / mib
		}
	}
	w.mu.Lock()
	sort.Slice(w.lat, func(i, j int) bool { return w.lat[i] < w.lat[j] })
	if n := len(w.lat); n > 0 {
		r.P50us = float64(w.lat[n/2].Microseconds())
		r.P99us = float64(w.lat[n*99/100].Microseconds())
	}
	w.mu.Unlock()
	r.Errors = b.errors.Load()
}

// loop runs f on conns connections until stop.
func (b *bench) loop(n int, f func(c *conn) error, stop *atomic.Bool) {
	for i := 0; i < n; i++ {
		c, err := b.dial()
		if err != nil {
			fatal(err)
		}
		go func() {
			defer c.c.Close()
			for !stop.Load() {
				if err := f(c); err != nil {
					b.errors.Add(1)
					return
				}
			}
		}()
	}
}

func (b *bench) rtt(n int, warmup, d time.Duration) result {
	var w window
	var stop atomic.Bool
	payload := make([]byte, b.size)
	b.loop(n, func(c *conn) error {
		t := time.Now()
		if err := c.send(0x2, payload); err != nil {
			return err
		}
		if _, err := c.readMessage(); err != nil {
			return err
		}
		w.record(time.Since(t), true)
		return nil
	}, &stop)
	var r result
	b.measure(&r, &w, warmup, d, false)
	stop.Store(true)
	return r
}

func (b *bench) throughput(n int, warmup, d time.Duration) result {
	var w window
	var stop atomic.Bool
	payload := make([]byte, b.size)
	b.loop(n, func(c *conn) error {
		if err := c.send(0x2, payload); err != nil {
			return err
		}
		if _, err := c.readMessage(); err != nil {
			return err
		}
		w.record(0, false)
		return nil
	}, &stop)
	var r result
	b.measure(&r, &w, warmup, d, true)
	stop.Store(true)
	return r
}

func (b *bench) sessions(n int, warmup, d time.Duration) result {
	var w window
	var stop atomic.Bool
	for i := 0; i < n; i++ {
		go func() {
			for !stop.Load() {
				t := time.Now()
				c, err := b.dial()
				if err != nil {
					b.errors.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				hs := time.Since(t)
				c.close()
				w.record(hs, true)
			}
		}()
	}
	var r result
	b.measure(&r, &w, warmup, d, false)
	stop.Store(true)
	return r
}

// idle opens n sessions, waits for the proxy to settle, and reports its
// resident memory per session above the baseline taken before.
func (b *bench) idle(n int, hold time.Duration) result {
	_, base := procStat(b.pids)
	cs := make([]*conn, 0, n)
	for i := 0; i < n; i++ {
		c, err := b.dial()
		if err != nil {
			fatal(fmt.Errorf("session %d: %w", i, err))
		}
		cs = append(cs, c)
		go func() { // answer the proxy's pings while idle
			for {
				if _, err := c.readMessage(); err != nil {
					if !errors.Is(err, net.ErrClosed) {
						b.errors.Add(1)
					}
					return
				}
			}
		}()
	}
	time.Sleep(hold)
	_, rss := procStat(b.pids)
	r := result{Ops: int64(n), RSSKiB: rss, Errors: b.errors.Load(), WindowSecond: hold.Seconds()}
	r.RSSPerSessB = float64(rss-base) * 1024 / float64(n)
	for _, c := range cs {
		c.c.Close()
	}
	return r
}
