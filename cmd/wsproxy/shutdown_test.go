package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// A second SIGTERM ends the drain at once: the sessions left are closed
// without their closing handshake, and the access log says, for each, what
// its client saw (1006 when no Close reached it).
func TestSecondSignalLogsWhatClientsSaw(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b1")
	listen := freePort(t)
	// The drain spreads five closes over most of a minute: the second
	// signal comes long before it is done.
	cfgPath := writeConfig(t, fmt.Sprintf(`
listeners: [{address: %q}]
log: {level: info, format: json}
defaults: {drain_timeout: 60s}
routes: [{path: /, pool: p}]
pools:
  p: {backends: [{address: %q}]}
`, listen, backend))
	p := startProcess(t, "-config", cfgPath)
	waitLog(t, p, "wsproxy started")

	conns := map[string]*websocket.Conn{}
	for i := 0; i < 5; i++ {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := exchange(t, c, "hi"); got != "b1:hi" {
			t.Fatalf("got %q", got)
		}
		conns[c.LocalAddr().String()] = c
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitLog(t, p, "draining sessions")
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10s after the second signal:\n%s", p.stderr.String())
	}
	if p.cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("exit %v after a second signal, want 1", p.err)
	}

	saw := map[string]int{}
	for addr, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.ReadMessage()
		ce, ok := err.(*websocket.CloseError)
		if !ok {
			t.Fatalf("client %s: %v", addr, err)
		}
		saw[addr] = ce.Code // 1006 when no Close frame came
	}
	logged := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
	for sc.Scan() {
		var line struct {
			Msg       string `json:"msg"`
			Client    string `json:"client"`
			CloseCode int    `json:"close_code"`
			ClosedBy  string `json:"closed_by"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Msg != "session" {
			continue
		}
		if line.ClosedBy != "proxy" {
			t.Errorf("session of %s logged as closed by %q, want proxy", line.Client, line.ClosedBy)
		}
		logged[line.Client] = line.CloseCode
	}
	for addr, code := range saw {
		got, ok := logged[addr]
		if !ok {
			t.Errorf("no access-log line for the session of %s (it saw %d)", addr, code)
			continue
		}
		if got != code {
			t.Errorf("session of %s logged with close code %d, its client saw %d", addr, got, code)
		}
	}
	t.Logf("clients saw %v", saw)
	if t.Failed() {
		t.Logf("log:\n%s", p.stderr.String())
	}
}
