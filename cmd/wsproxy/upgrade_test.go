package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// The new process of an upgrade is the old one's child; once the old one
// exits it would be handed to init. The test process becomes a subreaper
// so that it inherits it instead, and can wait for its exit status.
var subreaperOnce sync.Once

func becomeSubreaper(t *testing.T) {
	t.Helper()
	var err error
	subreaperOnce.Do(func() { err = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })
	if err != nil {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
}

// upgradableBinary copies the test binary into a directory of its own, so
// that a test can install another build over it as an operator would.
func upgradableBinary(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile(wsproxyBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "wsproxy")
	if err := os.WriteFile(p, src, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// install builds wsproxy with version v and renames it over path, the way
// a package manager replaces a binary that is running.
func install(t *testing.T, path, v string) {
	t.Helper()
	tmp := path + ".new"
	out, err := exec.Command("go", "build", "-race", "-ldflags", "-X main.version="+v, "-o", tmp, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startUpgradable runs bin with its output in a pipe of the test's own rather
// than exec's copying goroutine: the new process of an upgrade inherits
// that output and outlives the old one, whose Wait must not wait for it.
func startUpgradable(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	becomeSubreaper(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = w, w
	p := runProcess(t, cmd)
	w.Close()
	go func() {
		io.Copy(p.stderr, r)
		r.Close()
	}()
	return p
}

// adopted is a process the test inherited as subreaper: the new process
// of an upgrade.
type adopted struct {
	pid  int
	done chan struct{}
	code int // exit code once done is closed; -1 if killed by a signal
}

// adopt waits for pid in the background; t's cleanup kills it if it is
// still running.
func adopt(t *testing.T, pid int) *adopted {
	t.Helper()
	a := &adopted{pid: pid, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				a.code = -2
				return
			}
			if ws.Exited() || ws.Signaled() {
				break
			}
		}
		a.code = ws.ExitStatus()
		if ws.Signaled() {
			a.code = -1
		}
	}()
	t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			unix.Kill(pid, unix.SIGKILL)
			<-a.done
		}
	})
	return a
}

// waitPIDFile waits until path names a PID other than not, and returns it.
//
// It also makes sure the new process does not outlive the test if the test
// fails before adopting it: at cleanup, which runs before the old
// process's, it kills the PID the file names and the old process's
// children (the new process is one until the old one exits).
func waitPIDFile(t *testing.T, path string, not int) int {
	t.Helper()
	t.Cleanup(func() {
		pids := strings.Fields(readFileString(fmt.Sprintf("/proc/%d/task/%d/children", not, not)))
		if pid := readPIDFile(path); pid != 0 && pid != not {
			pids = append(pids, strconv.Itoa(pid))
		}
		for _, f := range pids {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if pid := readPIDFile(path); pid != 0 && pid != not {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never named a process other than %d", path, not)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// seqSession is a client that sends numbered messages one at a time: the
// next goes a pause after the last one's echo, and none after a Close has
// been read. So every message it sent must come back, in order, before
// the proxy's Close, if the proxy closes between messages.
type seqSession struct {
	user           string
	backend        string
	sent, answered atomic.Int64
	// Set when the session ends:
	closeCode int
	closedAt  time.Time
	err       error
	done      chan struct{}
	// lastSent is when the last message went out, for a failure's report.
	lastSent atomic.Int64
}

func (s *seqSession) run(c *websocket.Conn, pause time.Duration) {
	defer close(s.done)
	defer c.Close()
	echoed := make(chan struct{}, 1)
	closed := make(chan struct{})
	writer := make(chan struct{})
	go s.write(c, pause, echoed, closed, writer)
	s.read(c, echoed)
	close(closed)
	<-writer
}

func (s *seqSession) write(c *websocket.Conn, pause time.Duration, echoed, closed, done chan struct{}) {
	defer close(done)
	t := time.NewTimer(pause)
	defer t.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-closed:
			return
		default:
		}
		if c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf("%s#%d", s.user, seq))) != nil {
			return // the reader sees why
		}
		s.sent.Add(1)
		s.lastSent.Store(time.Now().UnixNano())
		select {
		case <-echoed:
		case <-closed:
			return
		}
		t.Reset(pause)
		select {
		case <-t.C:
		case <-closed:
			return
		}
	}
}

func (s *seqSession) read(c *websocket.Conn, echoed chan<- struct{}) {
	for seq := 0; ; seq++ {
		_, got, err := c.ReadMessage()
		if err != nil {
			s.closedAt = time.Now()
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				s.closeCode = ce.Code
			} else {
				s.err = err
			}
			return
		}
		name, echo, _ := strings.Cut(string(got), ":")
		if want := fmt.Sprintf("%s#%d", s.user, seq); echo != want {
			s.err = fmt.Errorf("want %q back, got %q", want, got)
			return
		}
		if s.backend == "" {
			s.backend = name
		}
		s.answered.Add(1)
		echoed <- struct{}{}
	}
}

// connector opens sessions one after another without a pause, each
// exchanging one message, and records every attempt that failed: a
// refused or reset connection, a handshake answered with anything but 101,
// an exchange cut by anything but the drain's Close.
type connector struct {
	attempts, drained atomic.Int64
	mu                sync.Mutex
	failures          []string
	done              chan struct{}
}

func (k *connector) run(url string, drainCode int, stop <-chan struct{}) {
	defer close(k.done)
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		k.attempts.Add(1)
		if err := k.once(&d, fmt.Sprintf("%s?user=k%d", url, i), drainCode); err != nil {
			k.mu.Lock()
			k.failures = append(k.failures, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
			k.mu.Unlock()
		}
	}
}

func (k *connector) once(d *websocket.Dialer, url string, drainCode int) error {
	c, resp, err := d.Dial(url, nil)
	if err != nil {
		if resp != nil {
			return fmt.Errorf("handshake: %s", resp.Status)
		}
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		return err
	}
	_, got, err := c.ReadMessage()
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce) && ce.Code == drainCode:
		k.drained.Add(1) // accepted by the old process as it stopped
		return nil
	case err != nil:
		return err
	case !strings.HasSuffix(string(got), ":hello"):
		return fmt.Errorf("got %q", got)
	}
	return c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
}

func (k *connector) failed() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.failures...)
}

// countingBackend is an echo backend, like echoBackend, that records how
// many messages each user's session brought it before it ended: what the
// proxy forwarded before its Close.
type countingBackend struct {
	addr string
	mu   sync.Mutex
	got  map[string]int // user -> messages, once the session has ended
}

func newCountingBackend(t *testing.T, name string) *countingBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &countingBackend{addr: ln.Addr().String(), got: map[string]int{}}
	up := websocket.FastHTTPUpgrader{CheckOrigin: func(*fasthttp.RequestCtx) bool { return true }}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		user := string(ctx.QueryArgs().Peek("user"))
		_ = up.Upgrade(ctx, func(c *websocket.Conn) {
			defer c.Close()
			n := 0
			defer func() {
				b.mu.Lock()
				b.got[user] = n
				b.mu.Unlock()
			}()
			for {
				mt, msg, err := c.ReadMessage()
				if err != nil {
					return
				}
				n++
				if c.WriteMessage(mt, append([]byte(name+":"), msg...)) != nil {
					return
				}
			}
		})
	}}
	go srv.Serve(ln) //nolint:errcheck
	t.Cleanup(func() { srv.Shutdown() })
	return b
}

// received returns the messages user's ended session brought, and whether
// it has ended.
func (b *countingBackend) received(user string) (int, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, ok := b.got[user]
	return n, ok
}

const upgradeConfig = `
listeners: [{address: %q}]
admin: {address: %q}
pid_file: %q
upgrade_timeout: %s
log: {level: info, access_log: false}
admission: {max_sessions: 2000, max_connections: 500}
defaults: {drain_timeout: %s, drain_close_code: 1012}
routes:
  - {path: /, pool: p, hash_key: "query:user"}
pools:
  p: {backends: [%s]}
`

// backendList is the backends of upgradeConfig's pool.
func backendList(addrs ...string) string {
	var parts []string
	for _, a := range addrs {
		parts = append(parts, fmt.Sprintf("{address: %q}", a))
	}
	return strings.Join(parts, ", ")
}

// status fetches /status from the admin address.
func status(t *testing.T, admin string) statusReport {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st statusReport
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestUpgradeUnderLoad is issue 22's test: 300 sessions exchange numbered
// messages and a client connects without pause while a new build is
// installed over the binary and SIGUSR2 upgrades the process. No attempt
// fails; every old session is closed with the drain code, spread over
// drain_timeout, with every message it sent echoed first; the old process
// exits 0; pid_file names the new one, which runs the new build, says it is
// generation 2 and serves new sessions.
func TestUpgradeUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const (
		sessions = 300
		drain    = 2 * time.Second
	)
	bin := upgradableBinary(t)
	cb1, cb2 := newCountingBackend(t, "b1"), newCountingBackend(t, "b2")
	b1, b2 := cb1.addr, cb2.addr
	listen, admin := freePort(t), freePort(t)
	pidFile := filepath.Join(t.TempDir(), "wsproxy.pid")
	cfgPath := writeConfig(t, fmt.Sprintf(upgradeConfig, listen, admin, pidFile, "20s", drain, backendList(b1, b2)))
	p := startUpgradable(t, bin, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	oldPID := p.cmd.Process.Pid
	if got := readPIDFile(pidFile); got != oldPID {
		t.Fatalf("pid_file names %d, want %d", got, oldPID)
	}

	var all []*seqSession
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	for i := 0; i < sessions; i++ {
		s := &seqSession{user: fmt.Sprintf("u%d", i), done: make(chan struct{})}
		c, _, err := dialer.Dial("ws://"+listen+"/?user="+s.user, nil)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		all = append(all, s)
		go s.run(c, 300*time.Millisecond)
	}
	waitFor(t, "every session answered", func() bool {
		for _, s := range all {
			if s.answered.Load() < 1 {
				return false
			}
		}
		return true
	})
	stop := make(chan struct{})
	k := &connector{done: make(chan struct{})}
	go k.run("ws://"+listen+"/", 1012, stop)
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-k.done
	}()
	waitFor(t, "the connector's first sessions", func() bool { return k.attempts.Load() > 20 })

	install(t, bin, "v2-upgraded")
	p.cmd.Process.Signal(syscall.SIGUSR2)
	newPID := waitPIDFile(t, pidFile, oldPID)
	t.Cleanup(func() { unix.Kill(newPID, unix.SIGKILL) })
	drainAt := drainStart(t, p, sessions)
	// While the old process drains, the admin address answers from the
	// new one, which says how many sessions the old one still holds.
	// The count falls as the drain goes.
	sawPrevious := int64(-1)
	for time.Since(drainAt) < drain {
		st := status(t, admin)
		if st.PID == newPID && st.Previous != nil && st.Previous.PID == oldPID && st.Previous.Generation == 1 &&
			st.Previous.Sessions > 0 && st.Previous.Sessions < sessions {
			sawPrevious = st.Previous.Sessions
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if sawPrevious < 0 {
		t.Errorf("the new process's /status never showed the old one's sessions falling during its drain")
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("old process: %v\n%s", p.err, p.stderr.String())
		}
	case <-time.After(drain + 5*time.Second):
		t.Fatalf("old process still running %v after the drain began\n%s", time.Since(drainAt), p.stderr.String())
	}
	t.Logf("old process exited 0 %v after its drain began; the new one showed %d of its sessions left", time.Since(drainAt).Round(time.Millisecond), sawPrevious)
	np := adopt(t, newPID) // this test's child now
	// The connector goes on a little against the new process alone.
	n := k.attempts.Load()
	waitFor(t, "attempts after the old process exited", func() bool { return k.attempts.Load() > n+20 })
	close(stop)
	<-k.done
	if f := k.failed(); len(f) > 0 {
		t.Errorf("%d of %d connection attempts failed during the upgrade:\n%s", len(f), k.attempts.Load(), strings.Join(f, "\n"))
	}
	t.Logf("connector: %d attempts, none failed; %d accepted by the old process as it stopped, and drained", k.attempts.Load(), k.drained.Load())

	// No message lost: every message the backend got came back before the
	// Close. A message may only cross the proxy's Close on the wire (sent
	// after the Close left the proxy, which then must drop it, RFC 6455
	// section 5.5.1): it never reached the backend, and the Close came
	// right after it was sent.
	backends := map[string]*countingBackend{"b1": cb1, "b2": cb2}
	var tenths [10]int
	lost, crossed := 0, 0
	for _, s := range all {
		<-s.done
		if s.err != nil || s.closeCode != 1012 {
			t.Errorf("session %s: code %d, err %v", s.user, s.closeCode, s.err)
			continue
		}
		var got int
		waitFor(t, "the backend's end of session "+s.user, func() bool {
			n, ended := backends[s.backend].received(s.user)
			got = n
			return ended
		})
		sent, echoed := int(s.sent.Load()), int(s.answered.Load())
		sinceSent := s.closedAt.Sub(time.Unix(0, s.lastSent.Load()))
		switch {
		case echoed != got:
			lost += got - echoed
			t.Errorf("session %s: the backend got %d messages, %d came back before the Close, %v into the drain",
				s.user, got, echoed, s.closedAt.Sub(drainAt).Round(time.Millisecond))
		case sent == got+1 && sinceSent < 100*time.Millisecond:
			crossed++
		case sent != got:
			lost += sent - got
			t.Errorf("session %s: sent %d messages, the backend got %d; the Close came %v after the last", s.user, sent, got, sinceSent)
		}
		at := s.closedAt.Sub(drainAt)
		tenths[min(max(int(at*10/drain), 0), 9)]++
	}
	if crossed > sessions/10 {
		t.Errorf("%d of %d sessions sent a message that crossed the Close: the closes do not wait for a pause", crossed, sessions)
	}
	for i, n := range tenths {
		if n > sessions/5 {
			t.Errorf("%d of %d sessions closed in tenth %d of drain_timeout: %v", n, sessions, i, tenths)
		}
	}
	t.Logf("closes per tenth of drain_timeout: %v; messages lost: %d; sessions whose last message crossed the Close: %d", tenths, lost, crossed)

	// pid_file names the new process, which runs the new build.
	if got := readPIDFile(pidFile); got != newPID {
		t.Fatalf("pid_file names %d, want the new process %d", got, newPID)
	}
	st := status(t, admin)
	if st.PID != newPID || st.Generation != 2 || st.Version != "v2-upgraded" || st.Previous != nil {
		t.Errorf("new process /status: pid %d generation %d version %q previous %+v", st.PID, st.Generation, st.Version, st.Previous)
	}
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"wsproxy_generation 2\n", "wsproxy_previous_generation_sessions 0\n"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	c, _, err := dialer.Dial("ws://"+listen+"/?user=after", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := exchange(t, c, "x"); !strings.HasSuffix(got, ":x") {
		t.Fatalf("new process: got %q", got)
	}
	c.Close()

	unix.Kill(newPID, unix.SIGTERM)
	select {
	case <-np.done:
		if np.code != 0 {
			t.Fatalf("new process exit %d\n%s", np.code, p.stderr.String())
		}
	case <-time.After(drain + 5*time.Second):
		t.Fatal("new process still running after SIGTERM")
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid_file left after the last process stopped: %v", err)
	}
}

// checkServing checks that a session open before step still exchanges
// and that a new one opens and exchanges.
func checkServing(t *testing.T, c *websocket.Conn, listen, step string) {
	t.Helper()
	if got := exchange(t, c, step); !strings.HasSuffix(got, ":"+step) {
		t.Fatalf("%s: the old session got %q", step, got)
	}
	n, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/?user="+step, nil)
	if err != nil {
		t.Fatalf("%s: a new session: %v", step, err)
	}
	if got := exchange(t, n, step); !strings.HasSuffix(got, ":"+step) {
		t.Fatalf("%s: a new session got %q", step, got)
	}
	n.Close()
}

// metric returns the value of a metric line without labels.
func metric(t *testing.T, admin, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return ""
}

// A new process whose config is invalid exits at once, saying why; the
// old one logs that the upgrade failed and serves on untouched: its
// sessions, new sessions, a client connecting throughout, pid_file.
func TestUpgradeWithBadConfigKeepsServing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := upgradableBinary(t)
	b := newCountingBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	pidFile := filepath.Join(t.TempDir(), "wsproxy.pid")
	cfgPath := writeConfig(t, fmt.Sprintf(upgradeConfig, listen, admin, pidFile, "10s", "2s", backendList(b.addr)))
	p := startUpgradable(t, bin, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/?user=old", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkServing(t, c, listen, "before")
	stop := make(chan struct{})
	k := &connector{done: make(chan struct{})}
	go k.run("ws://"+listen+"/", 1012, stop)
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-k.done
	}()

	// Line 3 of the file names a pool that does not exist.
	if err := os.WriteFile(cfgPath, []byte("listeners: [{address: \""+listen+"\"}]\nroutes:\n  - {path: /, pool: nosuch}\npools: {p: {backends: [{address: \""+b.addr+"\"}]}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGUSR2)
	waitLog(t, p, "upgrade failed")
	out := p.stderr.String()
	if !strings.Contains(out, "exited: exit status 1") || !strings.Contains(out, "this process serves on") {
		t.Errorf("the old process's log does not say the new one exited and it serves on:\n%s", out)
	}
	if !strings.Contains(out, filepath.Base(cfgPath)+":3: ") || !strings.Contains(out, "nosuch") {
		t.Errorf("the log does not say why the new process failed (the file, line 3, the pool):\n%s", out)
	}
	checkServing(t, c, listen, "after")
	n := k.attempts.Load()
	waitFor(t, "more attempts after the failed upgrade", func() bool { return k.attempts.Load() > n+20 })
	close(stop)
	<-k.done
	if f := k.failed(); len(f) > 0 {
		t.Errorf("%d of %d connection attempts failed:\n%s", len(f), k.attempts.Load(), strings.Join(f, "\n"))
	}
	if got := readPIDFile(pidFile); got != p.cmd.Process.Pid {
		t.Errorf("pid_file names %d, want the old process %d", got, p.cmd.Process.Pid)
	}
	st := status(t, admin)
	if st.PID != p.cmd.Process.Pid || st.Generation != 1 || st.Previous != nil {
		t.Errorf("/status: pid %d generation %d previous %+v", st.PID, st.Generation, st.Previous)
	}
	if v := metric(t, admin, "wsproxy_upgrades_failed_total"); v != "1" {
		t.Errorf("wsproxy_upgrades_failed_total %s, want 1", v)
	}
	t.Logf("%d attempts, none failed", k.attempts.Load())
}

// A new binary that hangs is killed after upgrade_timeout and the old
// process serves on. Meanwhile a second SIGUSR2 is refused with a log line
// and SIGHUP still reloads. Then, with the real binary back, an upgrade
// succeeds; SIGTERM and SIGHUP sent to the old process while it drains do
// not cut the drain short, and it exits 0 once drain_timeout is over.
func TestUpgradeTimeoutAndSignals(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := upgradableBinary(t)
	real, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	b := newCountingBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	pidFile := filepath.Join(t.TempDir(), "wsproxy.pid")
	render := func(extraRoute string) string {
		cfg := fmt.Sprintf(upgradeConfig, listen, admin, pidFile, "1s", "3s", backendList(b.addr))
		return strings.Replace(cfg, "routes:\n", "routes:\n"+extraRoute, 1)
	}
	cfgPath := writeConfig(t, render(""))
	p := startUpgradable(t, bin, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	oldPID := p.cmd.Process.Pid
	c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/?user=old", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkServing(t, c, listen, "before")

	// A "binary" that never gets ready.
	hang := bin + ".hang"
	if err := os.WriteFile(hang, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(hang, bin); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGUSR2)
	waitLog(t, p, "upgrade: starting a new process")
	p.cmd.Process.Signal(syscall.SIGUSR2)
	waitLog(t, p, "SIGUSR2 ignored: an upgrade is already in progress")
	if err := os.WriteFile(cfgPath, []byte(render("  - {path: /two, pool: p}\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, p, "configuration reloaded")
	if strings.Contains(p.stderr.String(), "upgrade failed") {
		t.Fatal("the upgrade ended before upgrade_timeout; the reload was not tested during it")
	}
	two, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/two?user=two", nil)
	if err != nil {
		t.Fatalf("the route the reload added: %v", err)
	}
	two.Close()
	waitLog(t, p, "upgrade failed")
	if out := p.stderr.String(); !strings.Contains(out, "timed out") {
		t.Errorf("the log does not say the new process timed out:\n%s", out)
	}
	checkServing(t, c, listen, "after-timeout")
	if got := readPIDFile(pidFile); got != oldPID {
		t.Errorf("pid_file names %d, want %d", got, oldPID)
	}

	// The real binary back: this upgrade succeeds. Another session stops
	// reading, so the drain lasts all of drain_timeout.
	if err := os.WriteFile(bin+".real", real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(bin+".real", bin); err != nil {
		t.Fatal(err)
	}
	deaf, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/?user=deaf", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer deaf.Close()
	if got := exchange(t, deaf, "x"); !strings.HasSuffix(got, ":x") {
		t.Fatalf("got %q", got)
	}
	p.cmd.Process.Signal(syscall.SIGUSR2)
	newPID := waitPIDFile(t, pidFile, oldPID)
	t.Cleanup(func() { unix.Kill(newPID, unix.SIGKILL) })
	drainStart(t, p, 2)
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitLog(t, p, "already draining after an upgrade")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, p, "signal ignored: draining")
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1012 {
		t.Fatalf("the session that reads got %v, want the drain's Close 1012", err)
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("old process: %v\n%s", p.err, p.stderr.String())
		}
	case <-time.After(6 * time.Second):
		t.Fatalf("old process still running %v after SIGTERM", time.Since(start))
	}
	np := adopt(t, newPID)
	if got := readPIDFile(pidFile); got != newPID {
		t.Errorf("pid_file names %d, want %d", got, newPID)
	}
	// The new process reloads on SIGHUP too.
	unix.Kill(newPID, unix.SIGHUP)
	waitLogCount(t, p, "configuration reloaded", 2)
	checkServing(t, websocketDial(t, listen, "new"), listen, "new-process")
	unix.Kill(newPID, unix.SIGTERM)
	<-np.done
	if np.code != 0 {
		t.Fatalf("new process exit %d", np.code)
	}
}

func websocketDial(t *testing.T, listen, user string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/?user="+user, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// SIGHUP and SIGUSR2 during a drain are ignored, with a log line: only a
// second SIGTERM or SIGINT ends the drain at once.
func TestSignalsDuringDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	b := newCountingBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	pidFile := filepath.Join(t.TempDir(), "wsproxy.pid")
	cfgPath := writeConfig(t, fmt.Sprintf(upgradeConfig, listen, admin, pidFile, "10s", "60s", backendList(b.addr)))
	p := startUpgradable(t, wsproxyBinary(t), "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	for i := 0; i < 3; i++ {
		c := websocketDial(t, listen, fmt.Sprintf("u%d", i))
		if got := exchange(t, c, "x"); !strings.HasSuffix(got, ":x") {
			t.Fatalf("got %q", got)
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitLog(t, p, "draining sessions")
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.cmd.Process.Signal(syscall.SIGUSR2)
	waitLogCount(t, p, "signal ignored: draining", 2)
	select {
	case <-p.done:
		t.Fatalf("exited during the drain after SIGHUP and SIGUSR2: %v", p.err)
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("still running 10s after the second SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit %d after a second SIGTERM, want 1", code)
	}
}

// readFileString returns a file's contents, or "" if it cannot be read.
func readFileString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
