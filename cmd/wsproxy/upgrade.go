package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/proxy"
)

// A binary upgrade, on SIGUSR2, as nginx, HAProxy and Envoy replace their
// own binary: the running process starts the binary at the path it was
// started from and hands it every listening socket, the admin listener's
// included (tableflip passes them as inherited descriptors). The new
// process loads and validates the same config file, listens on the
// sockets it inherited (a listener the new file no longer names is
// closed, a new one is opened), writes pid_file and says it is ready; only
// then does the old process stop accepting, drain its sessions exactly as
// on SIGTERM and exit 0. The sockets never close, so the kernel queues
// every connection for whichever process accepts next and none is
// refused. A new process that exits, or is not ready within
// upgrade_timeout and is killed, leaves the old one serving as before.
//
// The old process tells the new one its generation and, while it drains,
// how many sessions it still holds, one JSON line every 250 ms through a
// pipe handed over with the sockets; the pipe ends when the old process
// exits.

// previousPipe is the name the pipe to the new process is handed over as.
const previousPipe = "wsproxy-previous"

// reportEvery is how often a draining old process reports its sessions.
const reportEvery = 250 * time.Millisecond

// upgrader is a process's part in binary upgrades: the one it may start,
// and the one that started it.
type upgrader struct {
	tf         *tableflip.Upgrader
	exe        string // the binary a new process starts from
	generation int    // 1 for a process started by hand; +1 per upgrade
	busy       atomic.Bool
	failed     atomic.Int64 // upgrades whose new process never got ready
	previous   previousProcess
}

// previousProcess is the process this one replaced, as it reports itself.
type previousProcess struct {
	pid, generation int // 0 when this process was started by hand
	sessions        atomic.Int64
	running         atomic.Bool // until its pipe ends: it has exited
}

// upgradeReport is one line through the pipe: the first one says who the
// old process is, the next ones how many sessions it still holds.
type upgradeReport struct {
	Generation int   `json:"generation,omitempty"`
	PID        int   `json:"pid,omitempty"`
	Sessions   int64 `json:"sessions"`
}

// upgradeResult is how an upgrade ended: err, or the pipe to the new
// process, which is ready.
type upgradeResult struct {
	pipe *os.File
	err  error
}

var (
	upgraderOnce sync.Once
	processUp    *upgrader
	processUpErr error
)

// processUpgrader returns the process's upgrader, made at the first call:
// tableflip allows one per process. timeout is the first config's
// upgrade_timeout. In a process started by an upgrade it reads who the old
// process is before anything listens.
func processUpgrader(timeout time.Duration) (*upgrader, error) {
	upgraderOnce.Do(func() {
		exe := upgradeExecutable()
		// tableflip starts os.Args[0]: make it the path resolved now, so
		// that a working directory or PATH changed since cannot move it.
		os.Args[0] = exe
		tf, err := tableflip.New(tableflip.Options{UpgradeTimeout: timeout})
		if err != nil {
			processUpErr = fmt.Errorf("binary upgrades: %w", err)
			return
		}
		u := &upgrader{tf: tf, exe: exe, generation: 1}
		if tf.HasParent() {
			u.generation = 2 // unless the old process says more
			f, err := tf.File(previousPipe)
			if err == nil && f != nil {
				u.readPrevious(f)
			}
		}
		processUp = u
	})
	return processUp, processUpErr
}

// upgradeExecutable is the binary an upgrade starts: the path this process
// was started as, made absolute, so that a symlink switched to a new
// version is followed; else the file the kernel ran.
func upgradeExecutable() string {
	p := os.Args[0]
	if !strings.ContainsRune(p, '/') {
		if lp, err := exec.LookPath(p); err == nil {
			p = lp
		}
	}
	if abs, err := filepath.Abs(p); err == nil {
		if fi, err := os.Stat(abs); err == nil && fi.Mode().IsRegular() {
			return abs
		}
	}
	if exe, err := os.Executable(); err == nil {
		return exe
	}
	return os.Args[0]
}

// readPrevious reads the old process's first report, which it wrote before
// starting this one, and follows the rest in the background.
func (u *upgrader) readPrevious(f *os.File) {
	r := bufio.NewReader(f)
	line, err := r.ReadBytes('\n')
	var hello upgradeReport
	if err != nil || json.Unmarshal(line, &hello) != nil {
		f.Close()
		return
	}
	u.previous.pid, u.previous.generation = hello.PID, hello.Generation
	u.generation = hello.Generation + 1
	u.previous.sessions.Store(hello.Sessions)
	u.previous.running.Store(true)
	go u.followPrevious(f, r)
}

// followPrevious keeps the old process's session count until it exits,
// which ends the pipe.
func (u *upgrader) followPrevious(f *os.File, r *bufio.Reader) {
	defer f.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var rep upgradeReport
		if json.Unmarshal(sc.Bytes(), &rep) == nil {
			u.previous.sessions.Store(rep.Sessions)
		}
	}
	u.previous.sessions.Store(0)
	u.previous.running.Store(false)
}

// listen opens a listener on addr, or takes over the one the old process
// handed down for the same address as written in the config.
func (u *upgrader) listen(addr string, lc *net.ListenConfig) (net.Listener, error) {
	if u == nil {
		return lc.Listen(context.Background(), "tcp", addr)
	}
	var listenErr error
	ln, err := u.tf.ListenWithCallback("tcp", addr, func(network, addr string) (net.Listener, error) {
		ln, err := lc.Listen(context.Background(), network, addr)
		listenErr = err
		return ln, err
	})
	if listenErr != nil {
		return nil, listenErr // the net error's own line, as without an upgrader
	}
	return ln, err
}

// upgrade starts the new process and waits until it is ready or has
// failed. It runs in its own goroutine; the signal loop gets the result.
func (u *upgrader) upgrade(sessions int, done chan<- upgradeResult) {
	r, w, err := os.Pipe()
	if err != nil {
		done <- upgradeResult{err: err}
		return
	}
	hello := upgradeReport{Generation: u.generation, PID: os.Getpid(), Sessions: int64(sessions)}
	err = json.NewEncoder(w).Encode(hello) // fits the pipe's buffer: never blocks
	if err == nil {
		err = u.tf.AddFile(previousPipe, r)
	}
	r.Close()
	if err == nil {
		err = u.tf.Upgrade()
	}
	if err != nil {
		w.Close()
		done <- upgradeResult{err: err}
		return
	}
	done <- upgradeResult{pipe: w}
}

// reportLoop tells the new process how many sessions this one still
// holds, until ctx ends.
func reportLoop(ctx context.Context, w *os.File, srv *proxy.Server) {
	defer w.Close()
	enc := json.NewEncoder(w)
	t := time.NewTicker(reportEvery)
	defer t.Stop()
	for {
		if enc.Encode(upgradeReport{Sessions: int64(srv.Sessions())}) != nil {
			return // the new process is gone
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// stop ends upgrades: one in progress is killed.
func (u *upgrader) stop() {
	if u != nil {
		u.tf.Stop()
	}
}

// ready tells the old process, if any, that this one serves.
func (u *upgrader) ready() error {
	if u == nil {
		return nil
	}
	return u.tf.Ready()
}

// startUpgrade begins an upgrade on SIGUSR2 unless one cannot begin now,
// which it logs. Only the signal loop calls it.
func (in *instance) startUpgrade() {
	u := in.up
	switch {
	case u == nil:
		in.log.Warn("SIGUSR2 ignored: binary upgrades need wsproxy run with a config file")
	case u.previous.running.Load():
		in.log.Warn("SIGUSR2 ignored: the process this one replaced is still draining; upgrade again once it has exited",
			zap.Int("previous_pid", u.previous.pid), zap.Int64("previous_sessions", u.previous.sessions.Load()))
	case !u.busy.CompareAndSwap(false, true):
		in.log.Warn("SIGUSR2 ignored: an upgrade is already in progress")
	default:
		in.log.Info("upgrade: starting a new process", zap.String("executable", u.exe),
			zap.Duration("upgrade_timeout", in.started.UpgradeTimeout))
		go u.upgrade(in.srv.Sessions(), in.upgrades)
	}
}

// upgradeEnded handles an upgrade's result and reports whether this
// process is to drain and exit, the new one serving.
func (in *instance) upgradeEnded(res upgradeResult) bool {
	in.up.busy.Store(false)
	if res.err != nil {
		in.up.failed.Add(1)
		in.log.Error("upgrade failed: this process serves on as before", zap.Error(res.err))
		// The new process may have written its PID before it failed.
		if p := in.started.PIDFile; p != "" {
			if err := writePIDFile(p); err != nil {
				in.log.Error("pid_file not rewritten", zap.String("pid_file", p), zap.Error(err))
			}
		}
		return false
	}
	in.handoff = res.pipe
	fields := []zap.Field{zap.Int("sessions", in.srv.Sessions())}
	if pid := readPIDFile(in.started.PIDFile); pid != 0 && pid != os.Getpid() {
		fields = append(fields, zap.Int("new_pid", pid))
	}
	in.log.Info("upgrade: the new process is ready; this one stops accepting and drains", fields...)
	return true
}

// writePIDFile writes this process's PID to path whole: to a temporary
// file renamed over it, so that a reader never sees a partial one.
func writePIDFile(path string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a failure; renamed away otherwise
	_, err = f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	return err
}

// readPIDFile returns the PID path names, or 0.
func readPIDFile(path string) int {
	if path == "" {
		return 0
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// removePIDFile removes path if it still names this process: after an
// upgrade it names the new one, which keeps it.
func removePIDFile(path string) {
	if path != "" && readPIDFile(path) == os.Getpid() {
		os.Remove(path)
	}
}

// previousStatus is the process this one replaced, on /status while it
// runs.
type previousStatus struct {
	PID        int   `json:"pid"`
	Generation int   `json:"generation"`
	Sessions   int64 `json:"sessions"`
}

// generation returns this process's generation, 1 without an upgrader.
func (u *upgrader) gen() int {
	if u == nil {
		return 1
	}
	return u.generation
}

// previousReport returns the replaced process while it still runs, or nil.
func (u *upgrader) previousReport() *previousStatus {
	if u == nil || !u.previous.running.Load() {
		return nil
	}
	return &previousStatus{PID: u.previous.pid, Generation: u.previous.generation, Sessions: u.previous.sessions.Load()}
}

var (
	descGeneration = prometheus.NewDesc("wsproxy_generation",
		"This process's generation: 1 when started by hand, one more at each binary upgrade (SIGUSR2).", nil, nil)
	descPreviousSessions = prometheus.NewDesc("wsproxy_previous_generation_sessions",
		"WebSocket sessions the process this one replaced still holds while it drains, as it last reported them (every 250 ms); 0 once it has exited or when there is none.", nil, nil)
	descUpgradesFailed = prometheus.NewDesc("wsproxy_upgrades_failed_total",
		"Binary upgrades (SIGUSR2) whose new process exited or was not ready within upgrade_timeout; this process served on.", nil, nil)
)

// upgradeCollector exposes a process's generation and its predecessor.
type upgradeCollector struct{ u *upgrader }

// Describe implements prometheus.Collector.
func (c upgradeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descGeneration
	ch <- descPreviousSessions
	ch <- descUpgradesFailed
}

// Collect implements prometheus.Collector.
func (c upgradeCollector) Collect(ch chan<- prometheus.Metric) {
	var prev, failed int64
	if c.u != nil {
		prev, failed = c.u.previous.sessions.Load(), c.u.failed.Load()
	}
	ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(c.u.gen()))
	ch <- prometheus.MustNewConstMetric(descPreviousSessions, prometheus.GaugeValue, float64(prev))
	ch <- prometheus.MustNewConstMetric(descUpgradesFailed, prometheus.CounterValue, float64(failed))
}
