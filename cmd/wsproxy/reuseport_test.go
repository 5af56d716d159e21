package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

const reusePortConfig = `
listeners: [{address: %q, reuse_port: %t}]
admin: {address: %q}
log: {level: warn}
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: %q}]}}
`

// routeSessions reads the live sessions on route / from a process's
// /status.
func routeSessions(t *testing.T, admin string) int64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		RouteSessions map[string]int64 `json:"route_sessions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.RouteSessions["/"]
}

// TestReusePortProcesses: several processes with reuse_port listen on one
// port, the kernel spreads sessions over all of them, and killing one
// leaves the others serving their sessions and new ones.
func TestReusePortProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b")
	listen := freePort(t)
	type proxyProc struct {
		p     *process
		admin string
	}
	var procs []proxyProc
	for range 3 {
		admin := freePort(t)
		p := startProcess(t, "-config", writeConfig(t, fmt.Sprintf(reusePortConfig, listen, true, admin, backend)))
		procs = append(procs, proxyProc{p, admin})
	}
	for _, pp := range procs {
		waitHTTP(t, pp.p, "http://"+pp.admin+"/readyz", 200)
	}

	dial := func() *websocket.Conn {
		t.Helper()
		c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if got := exchange(t, c, "x"); got != "b:x" {
			t.Fatalf("echo %q, want b:x", got)
		}
		return c
	}
	// Each connection's source port picks its process; 60 of them miss
	// one of three processes with probability 3*(2/3)^60, about 1e-10.
	const first = 60
	var conns []*websocket.Conn
	for range first {
		conns = append(conns, dial())
	}
	var total int64
	for i, pp := range procs {
		n := routeSessions(t, pp.admin)
		if n == 0 {
			t.Errorf("process %d holds no session of %d", i, first)
		}
		total += n
	}
	if total != first {
		t.Fatalf("the processes hold %d sessions, want %d", total, first)
	}

	// Kill one: its sessions end, the others' go on, and every new
	// connection lands on a process still listening.
	killed := procs[0]
	if err := killed.p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-killed.p.done
	survived := 0
	for _, c := range conns {
		if c.WriteMessage(websocket.TextMessage, []byte("y")) != nil {
			continue
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, msg, err := c.ReadMessage(); err == nil {
			if string(msg) != "b:y" {
				t.Fatalf("echo %q, want b:y", msg)
			}
			survived++
		}
	}
	if want := int(routeSessions(t, procs[1].admin) + routeSessions(t, procs[2].admin)); survived != want {
		t.Fatalf("%d sessions still answer after the kill, want the %d the other processes hold", survived, want)
	}
	const second = 30
	for range second {
		dial()
	}
	if got := int(routeSessions(t, procs[1].admin) + routeSessions(t, procs[2].admin)); got != survived+second {
		t.Fatalf("the two processes left hold %d sessions, want %d", got, survived+second)
	}
}

// TestReusePortRefused: a port is shared only between processes that all
// set reuse_port; the one that cannot bind says so on one line and exits.
func TestReusePortRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b")
	for _, tc := range []struct {
		name          string
		first, second bool // their reuse_port
		want          string
	}{
		{"neither", false, false, "set reuse_port: true on listeners[0] in every one of them"},
		{"only the second", false, true, "listeners[0] has reuse_port, so the socket there is another user's, or was opened without reuse_port"},
		{"only the first", true, false, "set reuse_port: true on listeners[0] in every one of them"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listen, admin := freePort(t), freePort(t)
			p := startProcess(t, "-config", writeConfig(t, fmt.Sprintf(reusePortConfig, listen, tc.first, admin, backend)))
			waitHTTP(t, p, "http://"+admin+"/readyz", 200)

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, wsproxyBinary(t), "-config",
				writeConfig(t, fmt.Sprintf(reusePortConfig, listen, tc.second, freePort(t), backend)))
			out, err := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Fatalf("second process: exit %d (%v), want 1:\n%s", code, err, out)
			}
			msg := strings.TrimSpace(string(out))
			if strings.Contains(msg, "\n") || !strings.Contains(msg, "address already in use") || !strings.Contains(msg, tc.want) {
				t.Fatalf("want one line saying the address is in use and %q, got:\n%s", tc.want, out)
			}
			// The first one serves on.
			c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := exchange(t, c, "x"); got != "b:x" {
				t.Fatalf("echo %q, want b:x", got)
			}
		})
	}
}

// TestReusePortAfterUpgrade: the new process of a binary upgrade takes the
// old one's socket with its SO_REUSEPORT, and says so when its file asks
// for reuse_port off; another process with reuse_port then still joins the
// port, and the kernel spreads sessions over both.
func TestReusePortAfterUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b")
	listen, admin := freePort(t), freePort(t)
	pidFile := filepath.Join(t.TempDir(), "wsproxy.pid")
	const conf = `
listeners: [{address: %q, reuse_port: %t}]
admin: {address: %q}
pid_file: %q
log: {level: info, access_log: false}
defaults: {drain_timeout: 1s}
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: %q}]}}
`
	cfgPath := writeConfig(t, fmt.Sprintf(conf, listen, true, admin, pidFile, backend))
	old := startUpgradable(t, upgradableBinary(t), "-config", cfgPath)
	waitHTTP(t, old, "http://"+admin+"/readyz", 200)

	// The upgrade reads the file again, which now says reuse_port: false.
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(conf, listen, false, admin, pidFile, backend)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := old.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			select {
			case <-old.done:
				t.Logf("the old process exited: %v", old.err)
			default:
				t.Logf("the old process runs")
			}
			t.Logf("log:\n%s", old.stderr.String())
		}
	})
	newPID := waitPIDFile(t, pidFile, old.cmd.Process.Pid)
	adopt(t, newPID)
	waitLog(t, old, "the listener taken over from the old process keeps its reuse_port")
	waitFor(t, "the new process on the admin address", func() bool { return status(t, admin).PID == newPID })

	other := freePort(t)
	p := startProcess(t, "-config", writeConfig(t, fmt.Sprintf(reusePortConfig, listen, true, other, backend)))
	waitHTTP(t, p, "http://"+other+"/readyz", 200)
	for range 40 {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := exchange(t, c, "x"); got != "b:x" {
			t.Fatalf("echo %q, want b:x", got)
		}
	}
	upgraded, joined := routeSessions(t, admin), routeSessions(t, other)
	if upgraded == 0 || joined == 0 || upgraded+joined != 40 {
		t.Fatalf("40 sessions: %d on the upgraded process, %d on the one that joined", upgraded, joined)
	}
}
