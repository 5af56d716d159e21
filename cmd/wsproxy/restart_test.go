package main

import (
	"encoding/json"
	"fmt"
	"html"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsproxy/wsproxy/config"
)

const restartConfig = `
listeners: [{address: %q}]
admin: {address: %q}
log: {level: info, format: json}
admission: {max_header_bytes: %s}
routes:
  - {path: /, pool: p}
%s
pools:
  p: {backends: [{address: %q}]}
`

// statusOf fetches /status.
func statusOf(t *testing.T, admin string) statusReport {
	t.Helper()
	code, body := get(t, "http://"+admin+"/status")
	if code != 200 {
		t.Fatalf("/status: %d %s", code, body)
	}
	var st statusReport
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, body)
	}
	return st
}

// waitReloads waits until /status counts n good reloads.
func waitReloads(t *testing.T, p *process, admin string, n int64) statusReport {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := statusOf(t, admin)
		if st.ReloadsOK >= n {
			return st
		}
		if st.ReloadsFailed > 0 || time.Now().After(deadline) {
			t.Fatalf("reloads: %d ok, %d failed; want %d ok:\n%s", st.ReloadsOK, st.ReloadsFailed, n, p.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReloadNeedsRestart: a reload that changes the listener and admin
// addresses and the request head limit applies the rest, warns naming each
// key, keeps serving on the old addresses, and /status and the status page
// say a restart is pending, and why, until the process restarts.
func TestReloadNeedsRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	newListen, newAdmin := freePort(t), freePort(t)
	cfgPath := writeConfig(t, fmt.Sprintf(restartConfig, listen, admin, "8KiB", "", backend))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	if st := statusOf(t, admin); st.RestartPending == nil || len(st.RestartPending) != 0 {
		t.Fatalf("restart_pending at start: %#v, want []", st.RestartPending)
	}

	write := func(extraRoute string) {
		t.Helper()
		text := fmt.Sprintf(restartConfig, newListen, newAdmin, "16KiB", extraRoute, backend)
		if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		p.cmd.Process.Signal(syscall.SIGHUP)
	}
	write("")
	st := waitReloads(t, p, admin, 1)
	if _, body := get(t, "http://"+admin+"/status"); !strings.Contains(body, " -> ") {
		t.Errorf("/status escapes the arrows:\n%s", body)
	}
	want := []string{
		fmt.Sprintf("listeners[0].address: %s -> %s", listen, newListen),
		fmt.Sprintf("admin.address: %s -> %s", admin, newAdmin),
		"admission.max_header_bytes: 8192 -> 16384",
	}
	if !slices.Equal(st.RestartPending, want) {
		t.Fatalf("restart_pending: %q\nwant %q", st.RestartPending, want)
	}
	for _, key := range []string{"listeners[0].address", "admin.address"} {
		warned := false
		for _, line := range strings.Split(p.stderr.String(), "\n") {
			if strings.Contains(line, `"level":"warn"`) && strings.Contains(line, `"key":"`+key+`"`) {
				warned = true
			}
		}
		if !warned {
			t.Errorf("no warning names %s:\n%s", key, p.stderr.String())
		}
	}
	code, page := get(t, "http://"+admin+"/")
	if code != 200 || !strings.Contains(page, "Restart pending") {
		t.Fatalf("status page (%d) does not say a restart is pending:\n%s", code, page)
	}
	for _, w := range want {
		if !strings.Contains(html.UnescapeString(page), w) {
			t.Errorf("status page lacks %q", w)
		}
	}

	// The old addresses still serve; nothing listens on the new ones.
	c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/", nil)
	if err != nil {
		t.Fatalf("old listener after the reload: %v", err)
	}
	if got := exchange(t, c, "hi"); got != "b1:hi" {
		t.Fatalf("got %q", got)
	}
	c.Close()
	if c, _, err := websocket.DefaultDialer.Dial("ws://"+newListen+"/", nil); err == nil {
		c.Close()
		t.Fatalf("something answers on %s before a restart", newListen)
	}

	// A later reload that changes something else keeps the mark: the
	// process still runs the old addresses.
	write("  - {path: /two, pool: p}")
	if st := waitReloads(t, p, admin, 2); !slices.Equal(st.RestartPending, want) {
		t.Fatalf("restart_pending after a second reload: %q\nwant %q", st.RestartPending, want)
	}

	// A restart applies the file and clears the mark.
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	p2 := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p2, "http://"+newAdmin+"/readyz", 200)
	if st := statusOf(t, newAdmin); len(st.RestartPending) != 0 {
		t.Fatalf("restart_pending after a restart: %q", st.RestartPending)
	}
}

func TestRestartChanges(t *testing.T) {
	base := func() string {
		return `
listeners: [{address: "127.0.0.1:8080"}, {address: "127.0.0.1:8081"}]
admin: {address: "127.0.0.1:9090"}
log: {format: json}
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: "127.0.0.1:1"}]}}
`
	}
	parse := func(text string) *config.Config {
		t.Helper()
		c, err := config.Parse("x.yaml", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	started := parse(base())
	for _, tc := range []struct {
		name string
		from string
		to   string
		want []string
	}{
		{"nothing", "", "", nil},
		{"route only", "routes: [{path: /, pool: p}]", "routes: [{path: /x, pool: p}]", nil},
		{"second listener", `{address: "127.0.0.1:8081"}`, `{address: ":8082"}`,
			[]string{"listeners[1].address: 127.0.0.1:8081 -> :8082"}},
		{"reuse_port", `{address: "127.0.0.1:8081"}`, `{address: "127.0.0.1:8081", reuse_port: true}`,
			[]string{"listeners[1].reuse_port: false -> true"}},
		{"admin off", `admin: {address: "127.0.0.1:9090"}`, `admin: {address: ""}`,
			[]string{`admin.address: 127.0.0.1:9090 -> ""`}},
		{"log format", "log: {format: json}", "log: {format: console}",
			[]string{"log.format: json -> console"}},
		{"request read timeout", "log: {format: json}", "log: {format: json}\ndefaults: {handshake_timeout: 3s}",
			[]string{"defaults.handshake_timeout: 10s -> 3s (as the time to read a request)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, c := range restartChanges(started, parse(strings.Replace(base(), tc.from, tc.to, 1))) {
				got = append(got, c.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestShutdownAfterReloadedDrainTimeout: SIGTERM drains over the
// drain_timeout of the configuration running now, not the one the process
// started with.
func TestShutdownAfterReloadedDrainTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const conf = `
listeners: [{address: %q}]
admin: {address: %q}
log: {level: info, format: json}
defaults: {drain_timeout: %s}
routes: [{path: /, pool: p}]
pools:
  p: {backends: [{address: %q}]}
`
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	cfgPath := writeConfig(t, fmt.Sprintf(conf, listen, admin, "30s", backend))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(conf, listen, admin, "1s", backend)), 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitReloads(t, p, admin, 1)

	// Ten sessions: over a 30 s window (24 s of closes) all ten closing in
	// the first few seconds would be a one in 10^9 chance.
	var conns []*websocket.Conn
	for range 10 {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Fatalf("after %v: %v, want a Close 1001 within the reloaded drain_timeout of 1s", time.Since(start), err)
		}
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("exit: %v\n%s", p.err, p.stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("still running %v after SIGTERM with drain_timeout 1s", time.Since(start))
	}
}
