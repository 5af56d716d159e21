// Command scale holds many idle WebSocket sessions across several wsproxy
// processes that share one port with reuse_port, and reports what each
// session costs: the proxies' memory, the kernel's, and the proxies' CPU
// for the pings that keep idle sessions alive.
//
//	scale -bin DIR [-sessions 36000] [-proxies 4] [-backends 4] [-clients 4]
//
// DIR holds the wsproxy, echo and wsbench binaries (bench/scale.sh builds
// them). Everything runs on loopback: the echo backends on ports of their
// own, the proxies on one shared port, and the wsbench clients in idle
// mode, each connecting from addresses of its own in 127.0.0.0/8 (bound
// before connect, the port chosen at connect), so that no pair of
// addresses needs more than the ~28,000 ephemeral ports one pair has.
// The proxies hash on the client address, so the many source addresses
// also spread the sessions over the backends.
//
// Each proxy's admission caps are set from its open-files limit N so that
// 2 × max_sessions + 2 × max_connections + max(64, N/20) ≤ N holds with
// room for the kernel's uneven spread over the processes (four standard
// deviations); the run refuses
// to start when the sessions asked for do not fit.
//
// Figures: each proxy's RSS and Go heap before any client and 2 s after
// the last session opened (the proxy trims its heap only after 10 s
// quiet), /proc/meminfo's Slab and /proc/net/sockstat over the same
// span, and the proxies' CPU over a window of pings at -ping with the
// pongs they counted. The run stops by itself after -timeout whatever
// happens, and every process it started dies with it.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	bin := flag.String("bin", "", "directory with the wsproxy, echo and wsbench binaries")
	sessions := flag.Int("sessions", 36000, "idle sessions to hold in all")
	proxies := flag.Int("proxies", 4, "wsproxy processes sharing the port")
	backends := flag.Int("backends", 4, "echo backend processes")
	clients := flag.Int("clients", 4, "wsbench client processes")
	sources := flag.Int("sources", 16, "source addresses per client")
	ping := flag.Duration("ping", 5*time.Second, "the proxies' ping_interval")
	window := flag.Duration("window", 20*time.Second, "CPU measuring window, with pings on")
	timeout := flag.Duration("timeout", 5*time.Minute, "stop everything after this long, whatever happens")
	flag.Parse()
	if *bin == "" {
		fatal(errors.New("-bin is required (bench/scale.sh sets it)"))
	}
	r := &run{bin: *bin, sessions: *sessions, ping: *ping, window: *window}
	var err error
	if r.dir, err = os.MkdirTemp("", "wsproxy-scale"); err != nil {
		fatal(err)
	}
	stop := func(code int) {
		r.stopAll()
		os.RemoveAll(r.dir)
		os.Exit(code)
	}
	time.AfterFunc(*timeout, func() {
		fmt.Fprintf(os.Stderr, "scale: stopped after -timeout %v\n", *timeout)
		stop(3)
	})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		stop(130)
	}()
	if err := r.do(*proxies, *backends, *clients, *sources); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		stop(1)
	}
	stop(0)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "scale:", err)
	os.Exit(2)
}

type run struct {
	bin, dir string
	sessions int
	ping     time.Duration
	window   time.Duration

	mu    sync.Mutex
	procs []*proc
}

// proc is a process the run started; it is killed with the run, and by
// the kernel should the run die first (Pdeathsig).
type proc struct {
	name  string
	cmd   *exec.Cmd
	done  chan struct{}
	log   string
	admin string // proxies: the admin address
}

func (r *run) start(name string, args ...string) (*proc, error) {
	logPath := filepath.Join(r.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		cmd.Wait() //nolint:errcheck
		f.Close()
		close(p.done)
	}()
	r.mu.Lock()
	r.procs = append(r.procs, p)
	r.mu.Unlock()
	return p, nil
}

// stopAll kills every process, clients first, and waits for them.
func (r *run) stopAll() {
	r.mu.Lock()
	procs := r.procs
	r.procs = nil
	r.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].cmd.Process.Kill() //nolint:errcheck
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(30 * time.Second): // closing 9,000 sockets on a loaded host takes a while
			fmt.Fprintf(os.Stderr, "scale: %s (pid %d) did not exit\n", p.name, p.cmd.Process.Pid)
		}
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], "\n")
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// caps returns max_sessions and max_connections for a proxy with an
// open-files limit of n that should hold about share sessions.
func caps(n int64, total, procs int) (sessions, conns int64, err error) {
	share := (total + procs - 1) / procs
	p := 1 / float64(procs)
	reserve := max(64, n/20)
	conns = 100 // handshakes in progress: the clients dial 32 at a time each
	sessions = (n - reserve - 2*conns) / 2
	// The kernel spreads connections by a hash of their addresses, about
	// binomially: allow four standard deviations above the mean share.
	if need := float64(share) + 4*math.Sqrt(float64(total)*p*(1-p)); int64(need) > sessions {
		return 0, 0, fmt.Errorf("%d sessions per proxy do not fit an open-files limit of %d (at most %d with room for the uneven spread): use more -proxies", share, n, sessions)
	}
	return sessions, conns, nil
}

const proxyConfig = `listeners: [{address: "127.0.0.1:%d", reuse_port: true}]
admin: {address: %q}
log: {level: warn, access_log: false}
defaults: {ping_interval: %s, read_timeout: %s, idle_timeout: 0s, handshake_timeout: 30s}
admission: {max_sessions: %d, max_connections: %d}
routes: [{path: /, pool: p}]
pools:
  p:
    backends:
%s`

func (r *run) do(nProxies, nBackends, nClients, nSources int) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	maxSess, maxConns, err := caps(int64(rl.Max), r.sessions, nProxies)
	if err != nil {
		return err
	}
	if perBackend := r.sessions / nBackends * 3 / 2; int64(perBackend) > int64(rl.Max)-200 {
		return fmt.Errorf("about %d sessions per backend at worst do not fit an open-files limit of %d: use more -backends", perBackend, rl.Max)
	}
	if per := r.sessions / nClients; int64(per) > int64(rl.Max)-200 {
		return fmt.Errorf("%d sessions per client do not fit an open-files limit of %d: use more -clients", per, rl.Max)
	}

	var list strings.Builder
	var backendProcs []*proc
	for i := range nBackends {
		port, err := freePort()
		if err != nil {
			return err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		p, err := r.start(fmt.Sprintf("echo%d", i), filepath.Join(r.bin, "echo"), "-addr", addr, "-read-buffer", "1024", "-write-buffer", "1024")
		if err != nil {
			return err
		}
		backendProcs = append(backendProcs, p)
		fmt.Fprintf(&list, "      - {address: %q}\n", addr)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	var proxies []*proc
	for i := range nProxies {
		ap, err := freePort()
		if err != nil {
			return err
		}
		admin := fmt.Sprintf("127.0.0.1:%d", ap)
		cfg := filepath.Join(r.dir, fmt.Sprintf("wsproxy%d.yaml", i))
		text := fmt.Sprintf(proxyConfig, port, admin, r.ping, max(60*time.Second, 6*r.ping), maxSess, maxConns, list.String())
		if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
			return err
		}
		p, err := r.start(fmt.Sprintf("wsproxy%d", i), filepath.Join(r.bin, "wsproxy"), "-config", cfg)
		if err != nil {
			return err
		}
		p.admin = admin
		proxies = append(proxies, p)
	}
	for _, p := range append(proxies, backendProcs...) {
		if err := waitReady(p); err != nil {
			return err
		}
	}
	fmt.Printf("%d proxies on 127.0.0.1:%d (reuse_port), each max_sessions %d, max_connections %d (open-files limit %d); %d echo backends; ping_interval %v; load average %s\n",
		nProxies, port, maxSess, maxConns, rl.Max, nBackends, r.ping, loadavg())

	before := make([]memSample, len(proxies))
	for i, p := range proxies {
		if before[i], err = sampleMem(p); err != nil {
			return err
		}
	}
	kBefore := sampleKernel()

	t0 := time.Now()
	var clientProcs []*proc
	for c := range nClients {
		n := r.sessions / nClients
		if c < r.sessions%nClients {
			n++
		}
		var srcs []string
		for s := range nSources {
			srcs = append(srcs, fmt.Sprintf("127.0.%d.%d", c+1, s+1))
		}
		p, err := r.start(fmt.Sprintf("wsbench%d", c), filepath.Join(r.bin, "wsbench"), "-mode", "idle",
			"-url", fmt.Sprintf("ws://127.0.0.1:%d/", port), "-conns", strconv.Itoa(n),
			"-source", strings.Join(srcs, ","), "-hold", "10m")
		if err != nil {
			return err
		}
		clientProcs = append(clientProcs, p)
	}
	open, err := waitSessions(proxies, clientProcs, r.sessions)
	if err != nil {
		return err
	}
	opened := time.Since(t0)
	fmt.Printf("%d of %d sessions open in %.1fs\n", open, r.sessions, opened.Seconds())
	time.Sleep(2 * time.Second)

	after := make([]memSample, len(proxies))
	per := make([]int64, len(proxies))
	for i, p := range proxies {
		if after[i], err = sampleMem(p); err != nil {
			return err
		}
		per[i] = after[i].sessions
	}
	kAfter := sampleKernel()

	// Pings: the proxies' CPU over a window of whole ping intervals.
	cpu0 := make([]float64, len(proxies))
	sent0 := make([]float64, len(proxies))
	pongs0 := make([]float64, len(proxies))
	for i, p := range proxies {
		cpu0[i] = cpuSeconds(p.cmd.Process.Pid)
		sent0[i], pongs0[i] = pings(p)
	}
	w0 := time.Now()
	time.Sleep(r.window)
	wall := time.Since(w0).Seconds()
	var cpu, sent, pong float64
	for i, p := range proxies {
		cpu += cpuSeconds(p.cmd.Process.Pid) - cpu0[i]
		s, a := pings(p)
		sent += s - sent0[i]
		pong += a - pongs0[i]
	}
	fmt.Printf("load average at the end of the window %s\n", loadavg())
	var still int64
	for _, p := range proxies {
		s, _ := sampleMem(p)
		still += s.sessions
	}

	fmt.Println()
	fmt.Println("| proxy | sessions | RSS KiB/session | Go heap KiB/session | stacks KiB/session | RSS MiB |")
	fmt.Println("|---|---|---|---|---|---|")
	var tot, totAfter memSample
	for i := range proxies {
		d := after[i].minus(before[i])
		tot, totAfter = tot.plus(d), totAfter.plus(after[i])
		fmt.Printf("| wsproxy%d | %d | %.2f | %.2f | %.2f | %.0f |\n", i, per[i],
			perSess(d.rss, per[i]), perSess(d.heap, per[i]), perSess(d.stack, per[i]), float64(after[i].rss)/(1<<20))
	}
	fmt.Printf("| all | %d | %.2f | %.2f | %.2f | %.0f |\n", open,
		perSess(tot.rss, open), perSess(tot.heap, open), perSess(tot.stack, open), float64(totAfter.rss)/(1<<20))
	fmt.Println()
	sockets := kAfter.tcpInuse - kBefore.tcpInuse
	fmt.Printf("kernel, whole host, 4 sockets per session (client, proxy's two, backend): slab %+.2f KiB/session, TCP buffers %+.3f KiB/session (sockstat mem %d -> %d pages), TCP sockets in use %+d\n",
		perSess(kAfter.slab-kBefore.slab, open), perSess((kAfter.tcpMemPages-kBefore.tcpMemPages)*4096, open),
		kBefore.tcpMemPages, kAfter.tcpMemPages, sockets)
	if kAfter.caches != nil {
		fmt.Printf("slab caches per session: %s\n", slabDelta(kBefore, kAfter, open))
	}
	fmt.Printf("pings over %.1fs: %.0f sent/s, %.0f pongs/s (%d sessions x 2 sides / %v = %.0f expected); proxy CPU %.3f s per s (%.1f%% of a core), %.2f us per ping (sent) with its pong; %d sessions still open at the end\n",
		wall, sent/wall, pong/wall, still, r.ping, float64(2*still)/r.ping.Seconds(), cpu/wall, 100*cpu/wall, 1e6*cpu/max(sent, 1), still)
	res := map[string]any{
		"sessions": open, "proxies": len(proxies), "open_s": round(opened.Seconds()),
		"rss_kib_per_session": round(perSess(tot.rss, open)), "heap_kib_per_session": round(perSess(tot.heap, open)),
		"stack_kib_per_session":       round(perSess(tot.stack, open)),
		"kernel_slab_kib_per_session": round(perSess(kAfter.slab-kBefore.slab, open)),
		"tcp_mem_kib_per_session":     round(perSess((kAfter.tcpMemPages-kBefore.tcpMemPages)*4096, open)),
		"ping_interval_s":             r.ping.Seconds(), "pings_per_s": round(sent / wall), "pongs_per_s": round(pong / wall),
		"proxy_cpu_s_per_s": round(cpu / wall), "proxy_cpu_us_per_ping": round(1e6 * cpu / max(sent, 1)),
		"sessions_at_end": still,
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	if open < int64(r.sessions) || still < open {
		for _, p := range proxies {
			for _, prefix := range []string{"wsproxy_session_closes_total", "wsproxy_session_timeouts_total", "wsproxy_handshakes_total", "wsproxy_backend_sessions_live", "wsproxy_local_resource_errors_total"} {
				for _, l := range seriesLines(p, prefix) {
					fmt.Fprintf(os.Stderr, "%s: %s\n", p.name, l)
				}
			}
		}
		return fmt.Errorf("held %d sessions of %d, %d at the end", open, r.sessions, still)
	}
	return nil
}

// loadavg is the host's 1-minute load average: the figures of a run on a
// loaded host are the host's as much as the proxies'.
func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

func round(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }

func perSess(bytes, n int64) float64 {
	if n == 0 {
		return 0
	}
	return float64(bytes) / 1024 / float64(n)
}

// waitReady waits until a proxy's /readyz answers 200, or an echo
// backend accepts connections.
func waitReady(p *proc) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p.exited() {
			return fmt.Errorf("%s exited:\n%s", p.name, p.tail())
		}
		if p.admin != "" {
			if resp, err := http.Get("http://" + p.admin + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return nil
				}
			}
		} else {
			for i, a := range p.cmd.Args {
				if a == "-addr" && i+1 < len(p.cmd.Args) {
					if c, err := net.Dial("tcp", p.cmd.Args[i+1]); err == nil {
						c.Close()
						return nil
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after 30s:\n%s", p.name, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitSessions waits until the proxies hold want sessions, or until no
// session opens for 20 s (then it reports what it has).
func waitSessions(proxies, clients []*proc, want int) (int64, error) {
	var last int64
	lastChange := time.Now()
	for {
		var n int64
		for _, p := range proxies {
			if p.exited() {
				return 0, fmt.Errorf("%s exited:\n%s", p.name, p.tail())
			}
			s, err := sampleMem(p)
			if err != nil {
				return 0, err
			}
			n += s.sessions
		}
		if n >= int64(want) {
			return n, nil
		}
		if n != last {
			last, lastChange = n, time.Now()
		}
		if time.Since(lastChange) > 20*time.Second {
			var why []string
			for _, c := range append(clients, proxies...) {
				why = append(why, c.name+": "+c.tail())
			}
			fmt.Fprintf(os.Stderr, "scale: stuck at %d sessions of %d:\n%s\n", n, want, strings.Join(why, "\n"))
			return n, nil
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// memSample is a proxy's memory and live sessions.
type memSample struct {
	rss, heap, stack int64
	sessions         int64
}

func (a memSample) minus(b memSample) memSample {
	return memSample{a.rss - b.rss, a.heap - b.heap, a.stack - b.stack, a.sessions - b.sessions}
}

func (a memSample) plus(b memSample) memSample {
	return memSample{a.rss + b.rss, a.heap + b.heap, a.stack + b.stack, a.sessions + b.sessions}
}

func sampleMem(p *proc) (memSample, error) {
	var s memSample
	s.rss = procStatusKiB(p.cmd.Process.Pid, "VmRSS:") * 1024
	m, err := metrics(p)
	if err != nil {
		return s, err
	}
	s.heap = int64(m["go_memstats_heap_inuse_bytes"])
	s.stack = int64(m["go_memstats_stack_inuse_bytes"])
	s.sessions = int64(m["wsproxy_route_sessions_live"])
	return s, nil
}

// metrics reads a proxy's /metrics, summing the series of each name.
func metrics(p *proc) (map[string]float64, error) {
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.name, err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		name := line[:sp]
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err == nil {
			m[name] += v
		}
	}
	return m, sc.Err()
}

// seriesLines returns a proxy's /metrics lines of the series named, for
// a failed run's post-mortem.
func seriesLines(p *proc, name string) []string {
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
			out = append(out, l)
		}
	}
	return out
}

// pings is how many pings the proxy has sent and pongs it has received,
// both sides together.
func pings(p *proc) (sent, answered float64) {
	m, err := metrics(p)
	if err != nil {
		return 0, 0
	}
	return m["wsproxy_pings_sent_total"], m["wsproxy_pongs_received_total"]
}

func procStatusKiB(pid int, key string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

// cpuSeconds is a process's user and system time.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return 0
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// kernelSample is the host's slab and TCP socket memory.
type kernelSample struct {
	slab        int64 // bytes
	tcpMemPages int64
	tcpInuse    int64
	caches      map[string][2]int64 // slab caches a socket uses: objects, object size
}

// socketCaches are the slab caches each TCP socket of a session adds to:
// the socket, its inode, its file and dentry, and its epoll entries.
var socketCaches = []string{"TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq"}

// slabDelta prints what each socket cache grew by, per session.
func slabDelta(a, b kernelSample, sessions int64) string {
	var parts []string
	for _, c := range socketCaches {
		x, y := a.caches[c], b.caches[c]
		if y[1] == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %+.2f objects (%d B each)", c, float64(y[0]-x[0])/float64(max(sessions, 1)), y[1]))
	}
	return strings.Join(parts, ", ")
}

func sampleKernel() kernelSample {
	var k kernelSample
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "Slab:"); ok {
				f := strings.Fields(rest)
				if len(f) > 0 {
					v, _ := strconv.ParseInt(f[0], 10, 64)
					k.slab = v * 1024
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/slabinfo"); err == nil { // root only
		k.caches = map[string][2]int64{}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 4 && slices.Contains(socketCaches, f[0]) {
				objs, _ := strconv.ParseInt(f[1], 10, 64)
				size, _ := strconv.ParseInt(f[3], 10, 64)
				k.caches[f[0]] = [2]int64{objs, size}
			}
		}
	}
	if b, err := os.ReadFile("/proc/net/sockstat"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			rest, ok := strings.CutPrefix(line, "TCP: ")
			if !ok {
				continue
			}
			f := strings.Fields(rest)
			for i := 0; i+1 < len(f); i += 2 {
				v, _ := strconv.ParseInt(f[i+1], 10, 64)
				switch f[i] {
				case "inuse":
					k.tcpInuse = v
				case "mem":
					k.tcpMemPages = v
				}
			}
		}
	}
	return k
}
