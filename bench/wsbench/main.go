// Command wsbench is the benchmark kit's load generator. It speaks just
// enough WebSocket over plain sockets to cost as little CPU as possible
// next to the proxy it measures: client frames are masked with a fixed key
// and built once, pings are answered with masked pongs, and echoes are
// checked for length (and content, up to 4 KiB).
//
// Modes (-mode):
//
//	rtt         -conns connections each send a -size message and wait for
//	            its echo, repeatedly; round trips/s, p50 and p99 latency
//	throughput  -conns connections each keep -inflight messages of -size
//	            bytes in flight; MiB/s echoed (counted one way)
//	sessions    -conns workers each connect, upgrade, send Close, wait for
//	            the Close and close the socket, repeatedly; sessions/s and
//	            handshake (connect to 101) p50 and p99
//	idle        open -conns sessions, answer the proxy's pings, print
//	            "wsbench: N sessions open" on stderr when all are open, and
//	            hold them for -hold; proxy RSS per session above the
//	            baseline taken before the first session, 2 s after the
//	            last one opened and at the end of the hold
//
// The load runs -warmup before the measured window of -duration. With
// -pid (comma-separated, e.g. a master and its workers) the proxy's CPU
// time (utime+stime from /proc/P/stat) and resident memory (VmRSS from
// /proc/P/status), summed over the processes, are read at the start and
// the end of the window.
//
// A wss:// URL makes every connection TLS 1.3 with a full handshake: the
// client keeps no session cache, so it never resumes. It verifies the
// server's certificate against -ca (the system roots without it) and
// offers only the key exchange groups of -curves (X25519 by default), so
// that every server negotiates the same one whatever it supports; the
// version, suite and group the first connection got are in the output's
// "tls" field.
//
// Output: one JSON line on stdout per run; progress and errors on stderr.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type result struct {
	Mode        string  `json:"mode"`
	Target      string  `json:"target"`
	URL         string  `json:"url"`
	TLS         string  `json:"tls,omitempty"` // version, suite, group of the first connection
	Conns       int     `json:"conns"`
	ConnsOpen   int     `json:"conns_open"`
	Size        int     `json:"size"`
	Op          string  `json:"op"` // what one operation is
	Ops         int64   `json:"ops"`
	WindowS     float64 `json:"window_s"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	P50us       float64 `json:"p50_us"`
	P99us       float64 `json:"p99_us"`
	MaxUs       float64 `json:"max_us"`
	MiBPerSec   float64 `json:"mib_per_sec"`
	ProxyCPUms  float64 `json:"proxy_cpu_ms"`
	CPUmsPerOp  float64 `json:"cpu_ms_per_op"` // proxy CPU per op (per MiB in throughput mode)
	CPUmsPerMiB float64 `json:"cpu_ms_per_mib,omitempty"`
	RSSKiB      int64   `json:"rss_kib"`
	RSSBaseKiB  int64   `json:"rss_base_kib,omitempty"`
	RSSOpenKiB  int64   `json:"rss_open_kib,omitempty"`
	RSSPerSessB float64 `json:"rss_per_session_bytes"`    // at the end of the hold
	RSSPerSess2 float64 `json:"rss_per_session_2s_bytes"` // 2 s after the sessions opened
	Pings       int64   `json:"pings"`
	BackendCPU  float64 `json:"backend_cpu_ms,omitempty"`
	ClientCPU   float64 `json:"client_cpu_ms"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
}

func main() {
	mode := flag.String("mode", "rtt", "rtt | throughput | sessions | idle")
	target := flag.String("url", "ws://127.0.0.1:8080/", "WebSocket URL, ws:// or wss://")
	name := flag.String("name", "", "label for the target in the output (default: the URL's host)")
	conns := flag.Int("conns", 0, "connections, workers or sessions (default 100; 16 for throughput)")
	size := flag.Int("size", 0, "message size in bytes (default 128; 1 MiB for throughput)")
	inflight := flag.Int("inflight", 1, "throughput: messages in flight per connection")
	duration := flag.Duration("duration", 10*time.Second, "measured window")
	warmup := flag.Duration("warmup", 2*time.Second, "load before the measured window")
	hold := flag.Duration("hold", 0, "idle: how long to hold the sessions once open (default -duration)")
	dialers := flag.Int("dialers", 32, "connections opened in parallel while setting up")
	pids := flag.String("pid", "", "proxy process ids, comma separated, for CPU and RSS")
	backendPids := flag.String("backend-pid", "", "backend process ids, comma separated, for its CPU")
	caFile := flag.String("ca", "", "wss: CA certificates (PEM) to verify the server with (default: the system roots)")
	curves := flag.String("curves", "X25519", "wss: key exchange groups to offer, comma separated: X25519, P256, P384, X25519MLKEM768")
	sources := flag.String("source", "", "local addresses to connect from, comma separated, taken in turn (default: the kernel's choice)")
	flag.Parse()
	raiseFileLimit()

	u, err := url.Parse(*target)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		fatal(fmt.Errorf("bad -url %q: want ws://host:port/path or wss://host:port/path", *target))
	}
	var tlsConf *tls.Config
	if u.Scheme == "wss" {
		if tlsConf, err = clientTLS(u.Hostname(), *caFile, *curves); err != nil {
			fatal(err)
		}
	}
	if *conns <= 0 {
		*conns = 100
		if *mode == "throughput" {
			*conns = 16
		}
	}
	if *size <= 0 {
		*size = 128
		if *mode == "throughput" {
			*size = 1 << 20
		}
	}
	if *hold <= 0 {
		*hold = *duration
	}
	if *inflight < 1 {
		*inflight = 1
	}
	b := &bench{
		host: u.Host, path: u.RequestURI(), size: *size, dialers: max(*dialers, 1),
		pids: parsePids(*pids), backendPids: parsePids(*backendPids), tls: tlsConf,
		sources: parseSources(*sources),
	}
	b.prepare()

	r := result{Mode: *mode, Target: *name, URL: *target, Conns: *conns, Size: *size}
	if r.Target == "" {
		r.Target = u.Host
	}
	// A bounded run: whatever happens, stop well after the planned end.
	limit := *warmup + *duration + 90*time.Second
	if *mode == "idle" {
		limit = *hold + 180*time.Second
	}
	time.AfterFunc(limit, func() {
		b.fail(fmt.Errorf("watchdog: run exceeded %v", limit))
		r.Errors = b.errors.Load()
		r.FirstError = b.firstError()
		out, _ := json.Marshal(r)
		fmt.Println(string(out))
		os.Exit(3)
	})

	switch *mode {
	case "rtt":
		b.rtt(&r, *conns, *warmup, *duration)
	case "throughput":
		b.throughput(&r, *conns, *inflight, *warmup, *duration)
	case "sessions":
		b.sessions(&r, *conns, *warmup, *duration)
	case "idle":
		b.idle(&r, *conns, *hold)
	default:
		fatal(fmt.Errorf("unknown -mode %q", *mode))
	}
	r.Pings = b.pings.Load()
	r.Errors = b.errors.Load()
	r.FirstError = b.firstError()
	if p := b.tlsInfo.Load(); p != nil {
		r.TLS = *p
	}
	r.round()
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
	if r.ConnsOpen == 0 {
		os.Exit(1)
	}
}

// round keeps the figures to a sensible precision for the JSON line.
func (r *result) round() {
	for _, f := range []*float64{&r.P50us, &r.P99us, &r.MaxUs, &r.ProxyCPUms, &r.BackendCPU, &r.ClientCPU} {
		*f = math.Round(*f*10) / 10
	}
	for _, f := range []*float64{&r.WindowS, &r.OpsPerSec, &r.MiBPerSec} {
		*f = math.Round(*f*1000) / 1000
	}
	for _, f := range []*float64{&r.CPUmsPerOp, &r.CPUmsPerMiB} {
		*f = roundSig(*f, 4)
	}
	r.RSSPerSessB = math.Round(r.RSSPerSessB)
	r.RSSPerSess2 = math.Round(r.RSSPerSess2)
}

func roundSig(v float64, digits int) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	p := math.Pow(10, float64(digits-1)-math.Floor(math.Log10(math.Abs(v))))
	return math.Round(v*p) / p
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "wsbench:", err)
	os.Exit(2)
}

// clientTLS is the configuration of every wss connection: TLS 1.3 only,
// no session cache (a nil ClientSessionCache: tickets are dropped, every
// handshake is full), the certificate verified against caFile's CAs, and
// only the groups named in curves offered.
func clientTLS(host, caFile, curves string) (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName: host,
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{"http/1.1"}, // a WebSocket upgrade is HTTP/1.1
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-ca %s: no PEM certificate in it", caFile)
		}
	}
	names := map[string]tls.CurveID{
		"x25519": tls.X25519, "p256": tls.CurveP256, "p384": tls.CurveP384,
		"x25519mlkem768": tls.X25519MLKEM768,
	}
	for _, f := range strings.Split(curves, ",") {
		id, ok := names[strings.ToLower(strings.TrimSpace(f))]
		if !ok {
			return nil, fmt.Errorf("-curves: unknown group %q: want X25519, P256, P384 or X25519MLKEM768", f)
		}
		cfg.CurvePreferences = append(cfg.CurvePreferences, id)
	}
	return cfg, nil
}

func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			fmt.Fprintln(os.Stderr, "wsbench: raising the open files limit:", err)
		}
	}
}

type bench struct {
	host, path  string
	size        int
	dialers     int
	pids        []int
	backendPids []int
	tls         *tls.Config // nil for ws://
	tlsInfo     atomic.Pointer[string]
	sources     []*net.TCPAddr // local addresses, taken in turn
	nextSource  atomic.Uint64

	request []byte // the upgrade request
	accept  string // the Sec-WebSocket-Accept it must get back
	payload []byte // the message, unmasked: what the echo must be
	frame   []byte // the message as a masked binary frame, built once
	closeFr []byte // a masked Close frame, code 1000

	errors   atomic.Int64
	pings    atomic.Int64
	errMu    sync.Mutex
	firstErr string
}

func (b *bench) fail(err error) {
	if b.errors.Add(1) == 1 {
		b.errMu.Lock()
		b.firstErr = err.Error()
		b.errMu.Unlock()
		fmt.Fprintln(os.Stderr, "wsbench: first error:", err)
	}
}

func (b *bench) firstError() string {
	b.errMu.Lock()
	defer b.errMu.Unlock()
	return b.firstErr
}

const handshakeKey = "d3NiZW5jaC1rZXktMDAwMQ=="

// maskKey is the fixed masking key of every client frame.
var maskKey = [4]byte{0x37, 0xfa, 0x21, 0x3d}

func (b *bench) prepare() {
	b.request = []byte("GET " + b.path + " HTTP/1.1\r\nHost: " + b.host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + handshakeKey +
		"\r\nSec-WebSocket-Version: 13\r\nUser-Agent: wsbench\r\n\r\n")
	h := sha1.Sum([]byte(handshakeKey + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	b.accept = base64.StdEncoding.EncodeToString(h[:])
	b.payload = make([]byte, b.size)
	for i := range b.payload {
		b.payload[i] = byte(i*31 + i>>8)
	}
	b.frame = appendFrame(nil, 0x2, b.payload)
	b.closeFr = appendFrame(nil, 0x8, []byte{0x03, 0xe8})
}

// appendFrame appends a final client frame with a masked payload.
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
	dst = append(dst, maskKey[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	for i := range dst[start:] {
		dst[start+i] ^= maskKey[i&3]
	}
	return dst
}

// conn is a client WebSocket connection.
type conn struct {
	b       *bench
	nc      net.Conn // what frames go through: the TCP socket, or TLS over it
	raw     net.Conn // the TCP socket: closing it sends no TLS alert
	br      *bufio.Reader
	wmu     sync.Mutex // whole frames: a pong must not land inside a message
	scratch []byte
	closing atomic.Bool
}

var errClosed = errors.New("close frame received")

// dial connects and upgrades; the read buffer is sized for the workload.
func (b *bench) dial(readBuf int) (*conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if len(b.sources) > 0 {
		d.LocalAddr = b.sources[(b.nextSource.Add(1)-1)%uint64(len(b.sources))]
		d.Control = bindAddressNoPort
	}
	nc, err := d.Dial("tcp", b.host)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	raw := nc
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if b.tls != nil {
		tc := tls.Client(raw, b.tls)
		if err := tc.Handshake(); err != nil {
			raw.Close()
			return nil, fmt.Errorf("handshake: %w", err)
		}
		if b.tlsInfo.Load() == nil {
			st := tc.ConnectionState()
			info := tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite) + " " + st.CurveID.String()
			b.tlsInfo.CompareAndSwap(nil, &info)
		}
		nc = tc
	}
	if _, err := nc.Write(b.request); err != nil {
		raw.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(nc, readBuf)
	if err := b.readUpgrade(br); err != nil {
		raw.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return &conn{b: b, nc: nc, raw: raw, br: br}, nil
}

func (b *bench) readUpgrade(br *bufio.Reader) error {
	status, err := br.ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 101 ")) {
		return fmt.Errorf("handshake: %q", strings.TrimSpace(string(status)))
	}
	upgrade, accept := false, false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
		if len(line) <= 2 {
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Upgrade")):
			upgrade = bytes.EqualFold(v, []byte("websocket"))
		case bytes.EqualFold(k, []byte("Sec-WebSocket-Accept")):
			accept = string(v) == b.accept
		}
	}
	if !upgrade || !accept {
		return errors.New("handshake: 101 without a valid Upgrade and Sec-WebSocket-Accept")
	}
	return nil
}

func (c *conn) write(p []byte) error {
	c.wmu.Lock()
	_, err := c.nc.Write(p)
	c.wmu.Unlock()
	return err
}

// readMessage reads one data message, answering pings and skipping pongs
// on the way, and checks it against want: its length, and its content
// when want is short. It returns errClosed on a Close frame.
func (c *conn) readMessage(want []byte) error {
	total, first := 0, true
	check := want != nil && len(want) <= 4<<10
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		if hdr[1]&0x80 != 0 {
			return errors.New("masked frame from the server")
		}
		n := int(hdr[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			if _, err := io.ReadFull(c.br, l[:]); err != nil {
				return err
			}
			n = int(binary.BigEndian.Uint16(l[:]))
		case 127:
			var l [8]byte
			if _, err := io.ReadFull(c.br, l[:]); err != nil {
				return err
			}
			v := binary.BigEndian.Uint64(l[:])
			if v > 1<<40 {
				return fmt.Errorf("frame of %d bytes", v)
			}
			n = int(v)
		}
		op := hdr[0] & 0x0f
		if op >= 0x8 { // control frame
			if n > 125 {
				return fmt.Errorf("control frame of %d bytes", n)
			}
			var p [125]byte
			if _, err := io.ReadFull(c.br, p[:n]); err != nil {
				return err
			}
			switch op {
			case 0x8:
				return errClosed
			case 0x9:
				c.b.pings.Add(1)
				pong := appendFrame(make([]byte, 0, 6+n+2), 0xA, p[:n])
				if err := c.write(pong); err != nil {
					return err
				}
			}
			continue
		}
		if first != (op != 0) {
			return fmt.Errorf("unexpected opcode %d", op)
		}
		first = false
		if check {
			if total+n > len(want) {
				return fmt.Errorf("echo longer than the %d bytes sent", len(want))
			}
			if cap(c.scratch) < n {
				c.scratch = make([]byte, len(want))
			}
			buf := c.scratch[:n]
			if _, err := io.ReadFull(c.br, buf); err != nil {
				return err
			}
			if !bytes.Equal(buf, want[total:total+n]) {
				return errors.New("echo differs from the message sent")
			}
		} else if _, err := c.br.Discard(n); err != nil {
			return err
		}
		total += n
		if hdr[0]&0x80 != 0 {
			break
		}
	}
	if want != nil && total != len(want) {
		return fmt.Errorf("echo of %d bytes for a message of %d", total, len(want))
	}
	return nil
}

// closeHandshake sends a Close frame, waits for the server's Close (at
// most 5 s), and closes the socket.
func (c *conn) closeHandshake() error {
	defer c.raw.Close()
	c.closing.Store(true)
	if err := c.write(c.b.closeFr); err != nil {
		return err
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		err := c.readMessage(nil)
		if err == errClosed {
			return nil
		}
		if err != nil {
			return fmt.Errorf("close handshake: %w", err)
		}
	}
}

// dialAll opens n connections, dialers at a time. Failures are counted and
// skipped.
// dialAll opens n connections, dialers at a time; opened, when set, runs
// on each as soon as it is open.
func (b *bench) dialAll(n, readBuf int, opened func(*conn)) []*conn {
	out := make([]*conn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(b.dialers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := b.dial(readBuf)
				if err != nil {
					b.fail(fmt.Errorf("connection %d: %w", i, err))
					continue
				}
				out[i] = c
				if opened != nil {
					opened(c)
				}
			}
		}()
	}
	wg.Wait()
	live := out[:0]
	for _, c := range out {
		if c != nil {
			live = append(live, c)
		}
	}
	return live
}

// procStat returns the CPU time (ms) and RSS (KiB) summed over pids.
func procStat(pids []int) (cpuMs float64, rssKiB int64) {
	const msPerTick = 1000 / 100 // sysconf(_SC_CLK_TCK) is 100 on Linux
	for _, pid := range pids {
		if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			s := string(data)
			if i := strings.LastIndexByte(s, ')'); i > 0 && i+2 < len(s) {
				f := strings.Fields(s[i+2:]) // f[0] is field 3, state
				if len(f) > 12 {
					ut, _ := strconv.ParseFloat(f[11], 64)
					st, _ := strconv.ParseFloat(f[12], 64)
					cpuMs += (ut + st) * msPerTick
				}
			}
		}
		if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
					if f := strings.Fields(rest); len(f) > 0 {
						v, _ := strconv.ParseInt(f[0], 10, 64)
						rssKiB += v
					}
				}
			}
		}
	}
	return cpuMs, rssKiB
}

func clientCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e6
}

// parseSources reads -source: addresses without ports.
func parseSources(s string) []*net.TCPAddr {
	var out []*net.TCPAddr
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		ip := net.ParseIP(f)
		if ip == nil {
			fatal(fmt.Errorf("bad -source address %q", f))
		}
		out = append(out, &net.TCPAddr{IP: ip})
	}
	return out
}

// bindAddressNoPort lets the kernel choose the local port at connect,
// for the whole 4-tuple, rather than at bind: a port bound to one source
// address would otherwise be taken for every destination, and many
// clients on one address would run out of ports at ~28,000.
func bindAddressNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (Linux 4.2), which the
// syscall package does not name.
const ipBindAddressNoPort = 24

func parsePids(s string) []int {
	var out []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			fatal(fmt.Errorf("bad pid %q", f))
		}
		out = append(out, n)
	}
	return out
}

// worker is one connection's (or session loop's) tally. Only its
// goroutine writes it, and only while the window is open; it is read
// after the goroutine has ended.
type worker struct {
	ops  int64
	hist *histogram
}

// window is the measured part of a run.
type window struct {
	measuring atomic.Bool
	stop      atomic.Bool
	wg        sync.WaitGroup
	workers   []*worker
}

func (w *window) newWorker(latency bool) *worker {
	wk := &worker{}
	if latency {
		wk.hist = &histogram{}
	}
	w.workers = append(w.workers, wk)
	return wk
}

// record counts one operation that ended now, if the window is open.
func (w *window) record(wk *worker, d time.Duration) {
	if w.measuring.Load() {
		wk.ops++
		if wk.hist != nil {
			wk.hist.record(d)
		}
	}
}

// measure sleeps through the warmup, opens the window for d, then stops
// the workers (unblock closes their connections after a grace period) and
// fills r.
func (b *bench) measure(r *result, w *window, warmup, d time.Duration, unblock func()) {
	time.Sleep(warmup)
	cpu0, _ := procStat(b.pids)
	bcpu0, _ := procStat(b.backendPids)
	ccpu0 := clientCPU()
	start := time.Now()
	w.measuring.Store(true)
	time.Sleep(d)
	w.measuring.Store(false)
	el := time.Since(start).Seconds()
	cpu1, rss := procStat(b.pids)
	bcpu1, _ := procStat(b.backendPids)
	r.ClientCPU = clientCPU() - ccpu0
	w.stop.Store(true)
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		unblock()
		<-done
	}

	var h histogram64
	for _, wk := range w.workers {
		r.Ops += wk.ops
		if wk.hist != nil {
			h.add(wk.hist)
		}
	}
	r.WindowS = el
	r.OpsPerSec = float64(r.Ops) / el
	r.RSSKiB = rss
	if h.n > 0 {
		r.P50us = h.quantile(0.50) / 1e3
		r.P99us = h.quantile(0.99) / 1e3
		r.MaxUs = h.max() / 1e3
	}
	if len(b.pids) > 0 {
		r.ProxyCPUms = cpu1 - cpu0
		if r.Ops > 0 {
			r.CPUmsPerOp = r.ProxyCPUms / float64(r.Ops)
		}
	}
	if len(b.backendPids) > 0 {
		r.BackendCPU = bcpu1 - bcpu0
	}
}

func closeAll(cs []*conn) func() {
	return func() {
		for _, c := range cs {
			c.closing.Store(true)
			c.raw.Close()
		}
	}
}

func (b *bench) rtt(r *result, n int, warmup, d time.Duration) {
	r.Op = "round trip"
	cs := b.dialAll(n, 4<<10, nil)
	r.ConnsOpen = len(cs)
	if len(cs) == 0 {
		return
	}
	var w window
	for _, c := range cs {
		wk := w.newWorker(true)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for !w.stop.Load() {
				t := time.Now()
				if err := c.write(b.frame); err != nil {
					b.connError(c, err)
					return
				}
				if err := c.readMessage(b.payload); err != nil {
					b.connError(c, err)
					return
				}
				w.record(wk, time.Since(t))
			}
		}()
	}
	b.measure(r, &w, warmup, d, closeAll(cs))
	closeAll(cs)()
}

// connError counts an error unless the connection is being closed on
// purpose.
func (b *bench) connError(c *conn, err error) {
	if !c.closing.Load() {
		b.fail(err)
	}
}

func (b *bench) throughput(r *result, n, inflight int, warmup, d time.Duration) {
	r.Op = "MiB"
	cs := b.dialAll(n, 64<<10, nil)
	r.ConnsOpen = len(cs)
	if len(cs) == 0 {
		return
	}
	var w window
	for _, c := range cs {
		wk := w.newWorker(true)
		sent := make(chan time.Time, inflight) // send times, oldest first
		done := make(chan struct{})            // the reader has ended
		w.wg.Add(2)
		go func() { // writer
			defer w.wg.Done()
			for !w.stop.Load() {
				select {
				case sent <- time.Now(): // blocks while inflight messages are out
				case <-done:
					return
				}
				if err := c.write(b.frame); err != nil {
					b.connError(c, err)
					return
				}
			}
		}()
		go func() { // reader
			defer w.wg.Done()
			defer close(done)
			for {
				if err := c.readMessage(b.payload); err != nil {
					b.connError(c, err)
					return
				}
				w.record(wk, time.Since(<-sent))
				if w.stop.Load() {
					c.closing.Store(true)
					c.raw.Close() // ends the writer's write, if any
					return
				}
			}
		}()
	}
	b.measure(r, &w, warmup, d, closeAll(cs))
	closeAll(cs)()
	mib := float64(r.Ops) * float64(b.size) / (1 << 20)
	r.MiBPerSec = mib / r.WindowS
	r.Ops = int64(mib) // one op is one MiB
	r.OpsPerSec = r.MiBPerSec
	r.CPUmsPerOp = 0
	if len(b.pids) > 0 && mib > 0 {
		r.CPUmsPerMiB = r.ProxyCPUms / mib
		r.CPUmsPerOp = r.CPUmsPerMiB
	}
}

func (b *bench) sessions(r *result, n int, warmup, d time.Duration) {
	r.Op = "session"
	r.ConnsOpen = n
	var w window
	for range n {
		wk := w.newWorker(true)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for !w.stop.Load() {
				t := time.Now()
				c, err := b.dial(1 << 10)
				if err != nil {
					b.fail(err)
					time.Sleep(20 * time.Millisecond)
					continue
				}
				hs := time.Since(t)
				if err := c.closeHandshake(); err != nil {
					b.fail(err)
					continue
				}
				w.record(wk, hs)
			}
		}()
	}
	b.measure(r, &w, warmup, d, func() {})
}

// idle opens n sessions and holds them, answering pings, and reports the
// proxy's resident memory per session above its baseline.
func (b *bench) idle(r *result, n int, hold time.Duration) {
	r.Op = "session"
	_, r.RSSBaseKiB = procStat(b.pids)
	t0 := time.Now()
	// Each session answers pings from the moment it is open: opening
	// thousands can take longer than a proxy's read_timeout.
	cs := b.dialAll(n, 1<<10, func(c *conn) { go b.idleRead(c) })
	r.ConnsOpen = len(cs)
	if len(cs) == 0 {
		return
	}
	fmt.Fprintf(os.Stderr, "wsbench: %d sessions open in %.1fs\n", len(cs), time.Since(t0).Seconds())
	settle := min(2*time.Second, hold)
	time.Sleep(settle)
	cpu0, rssOpen := procStat(b.pids)
	r.RSSOpenKiB = rssOpen
	ccpu0 := clientCPU()
	start := time.Now()
	time.Sleep(hold - settle)
	cpu1, rss := procStat(b.pids)
	r.WindowS = time.Since(start).Seconds()
	r.ClientCPU = clientCPU() - ccpu0
	r.RSSKiB = rss
	if len(b.pids) > 0 {
		r.ProxyCPUms = cpu1 - cpu0
		r.CPUmsPerOp = r.ProxyCPUms / float64(len(cs)) // CPU per held session over the hold
		r.RSSPerSessB = float64(rss-r.RSSBaseKiB) * 1024 / float64(len(cs))
		r.RSSPerSess2 = float64(rssOpen-r.RSSBaseKiB) * 1024 / float64(len(cs))
	}
	r.Ops = int64(len(cs))
	for _, c := range cs {
		c.closing.Store(true)
		_ = c.write(b.closeFr)
	}
	time.Sleep(200 * time.Millisecond)
	for _, c := range cs {
		c.raw.Close()
	}
}

// idleRead reads an idle session, answering pings, until it ends.
func (b *bench) idleRead(c *conn) {
	for {
		err := c.readMessage(nil)
		if err == nil {
			continue // an idle session gets no data: count it, go on
		}
		b.connError(c, fmt.Errorf("idle session: %w", err))
		return
	}
}

// histogram is a log-linear latency histogram in nanoseconds: 32 buckets
// per power of two (about 3% resolution), constant memory.
const (
	subBits  = 5
	nBuckets = (64 - subBits + 1) << subBits
)

type histogram struct{ c [nBuckets]uint32 }

type histogram64 struct {
	c [nBuckets]uint64
	n uint64
}

func bucket(v uint64) int {
	if v < 1<<subBits {
		return int(v)
	}
	l := bits.Len64(v)
	shift := l - subBits - 1
	return (l-subBits)<<subBits + int(v>>shift) - 1<<subBits
}

// bucketMid is the middle of bucket i's range of values.
func bucketMid(i int) float64 {
	if i < 1<<subBits {
		return float64(i)
	}
	k := i >> subBits
	m := uint64(i&(1<<subBits-1)) + 1<<subBits
	lo := m << (k - 1)
	hi := (m+1)<<(k-1) - 1
	return (float64(lo) + float64(hi)) / 2
}

func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.c[bucket(uint64(d))]++
}

func (h *histogram64) add(o *histogram) {
	for i, v := range o.c {
		h.c[i] += uint64(v)
		h.n += uint64(v)
	}
}

func (h *histogram64) quantile(q float64) float64 {
	rank := uint64(q*float64(h.n) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, v := range h.c {
		seen += v
		if seen >= rank {
			return bucketMid(i)
		}
	}
	return 0
}

func (h *histogram64) max() float64 {
	for i := len(h.c) - 1; i >= 0; i-- {
		if h.c[i] > 0 {
			return bucketMid(i)
		}
	}
	return 0
}
