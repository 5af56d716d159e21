package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// configMapDir lays out a directory as the kubelet mounts a ConfigMap:
// config.yaml -> ..data/config.yaml, ..data -> ..<version>/.
type configMapDir struct {
	t       *testing.T
	dir     string
	version int
	current string // the versioned directory ..data points at
}

func newConfigMapDir(t *testing.T, text string) *configMapDir {
	m := &configMapDir{t: t, dir: t.TempDir()}
	m.update(text)
	if err := os.Symlink(filepath.Join("..data", "config.yaml"), m.path()); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *configMapDir) path() string { return filepath.Join(m.dir, "config.yaml") }

// update writes text as the kubelet does: a new versioned directory, a
// temporary symlink to it renamed over ..data, the old directory removed.
func (m *configMapDir) update(text string) {
	t := m.t
	m.version++
	name := fmt.Sprintf("..2026_12_02_00_00_%02d.%d", m.version, 1000+m.version)
	if err := os.Mkdir(filepath.Join(m.dir, name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.dir, name, "config.yaml"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(m.dir, "..data_tmp")
	if err := os.Symlink(name, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(m.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if m.current != "" {
		if err := os.RemoveAll(filepath.Join(m.dir, m.current)); err != nil {
			t.Fatal(err)
		}
	}
	m.current = name
}

const watchConfigText = `
watch_config: true
listeners: [{address: %q}]
admin: {address: %q}
log: {level: info}
routes:
  - {path: %s, pool: p}
pools:
  p: {backends: [{address: %q}]}
`

// dialOK reports whether a WebSocket on path reaches the backend.
func dialOK(listen, path string) bool {
	c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+path, nil)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// A ConfigMap update, a ..data symlink swapped and no file written, is
// applied without a signal; a bad one changes nothing and is counted; the
// watcher follows the swaps, so the next good one applies too.
func TestWatchConfigMapSwap(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	cm := newConfigMapDir(t, fmt.Sprintf(watchConfigText, listen, admin, "/one", backend))
	p := startProcess(t, "-config", cm.path())
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	waitLog(t, p, "watching the configuration")
	if !dialOK(listen, "/one") || dialOK(listen, "/two") {
		t.Fatal("routes before the update are not /one alone")
	}

	cm.update(fmt.Sprintf(watchConfigText, listen, admin, "/two", backend))
	st := waitReloadsDone(t, p, admin, 1)
	if st.ReloadsOK != 1 || !dialOK(listen, "/two") || dialOK(listen, "/one") {
		t.Fatalf("after the swap: %d good reloads, want /two routed and /one gone:\n%s", st.ReloadsOK, p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), `"source":"watch"`) {
		t.Errorf("the reload was not logged as the watcher's:\n%s", p.stderr.String())
	}

	cm.update("listeners: [{address: 5}]\n")
	st = waitReloadsDone(t, p, admin, 2)
	if st.ReloadsFailed != 1 || !dialOK(listen, "/two") {
		t.Fatalf("a bad update: %d failed reloads, /two routed %v", st.ReloadsFailed, dialOK(listen, "/two"))
	}

	cm.update(fmt.Sprintf(watchConfigText, listen, admin, "/three", backend))
	st = waitReloadsDone(t, p, admin, 3)
	if st.ReloadsOK != 2 || !dialOK(listen, "/three") {
		t.Fatalf("the update after a bad one: %d good reloads, /three routed %v:\n%s", st.ReloadsOK, dialOK(listen, "/three"), p.stderr.String())
	}
}

// A file in place of the ConfigMap, edited as an editor saves (a new file
// renamed over it), reloads too; rewriting the same content does not.
func TestWatchConfigFileEdit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	text := strings.Replace(fmt.Sprintf(watchConfigText, listen, admin, "/one", backend), "level: info", "level: debug", 1)
	path := writeConfig(t, text)
	p := startProcess(t, "-config", path)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	waitLog(t, p, "watching the configuration")

	save := func(text string) {
		tmp := path + ".swp"
		if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	save(text) // same content: no reload
	waitLog(t, p, "no content changed")
	save(fmt.Sprintf(watchConfigText, listen, admin, "/two", backend))
	st := waitReloadsDone(t, p, admin, 1)
	if st.ReloadsOK != 1 || !dialOK(listen, "/two") {
		t.Fatalf("after the edit: %+v", st)
	}
	if n := strings.Count(p.stderr.String(), "configuration reloaded"); n != 1 {
		t.Fatalf("%d reloads, want 1 (saving the same content is no change):\n%s", n, p.stderr.String())
	}
}

// post sends a POST with an optional bearer token.
func post(t *testing.T, url, token string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

const tokenConfigText = `
listeners: [{address: %q}]
admin: {address: %q, token_file: %q}
routes: [{path: /, pool: p}]
pools:
  p: {backends: [{address: %q}]}
`

// With admin.token_file the state-changing endpoints need the token (401
// otherwise) and read-only pages stay open; without it they answer only
// on loopback (403 elsewhere), and check warns.
func TestAdminToken(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b1")

	t.Run("token", func(t *testing.T) {
		listen, admin := freePort(t), freePort(t)
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfgPath := writeConfig(t, fmt.Sprintf(tokenConfigText, listen, admin, tokenFile, backend))
		p := startProcess(t, "-config", cfgPath)
		waitHTTP(t, p, "http://"+admin+"/readyz", 200)
		base := "http://" + admin
		drain := base + "/backends/drain?address=" + backend
		for _, tc := range []struct {
			name, url, token string
			want             int
		}{
			{"drain without a token", drain, "", 401},
			{"drain with a wrong token", drain, "s3cret-tokeN", 401},
			{"drain with a longer token", drain, "s3cret-token-and-more", 401},
			{"undrain without a token", base + "/backends/undrain?address=" + backend, "", 401},
			{"reload without a token", base + "/reload", "", 401},
			{"drain with the token", drain, "s3cret-token", 200},
			{"undrain with the token", base + "/backends/undrain?address=" + backend, "s3cret-token", 200},
			{"reload with the token", base + "/reload", "s3cret-token", 200},
		} {
			code, h, body := post(t, tc.url, tc.token)
			if code != tc.want {
				t.Errorf("%s: %d %s, want %d", tc.name, code, body, tc.want)
			}
			if code == 401 && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s: 401 without WWW-Authenticate: Bearer", tc.name)
			}
		}
		for _, path := range []string{"/status", "/metrics", "/readyz", "/healthz", "/", "/status/history"} {
			if code, _ := get(t, base+path); code != 200 {
				t.Errorf("GET %s: %d without a token, want 200", path, code)
			}
		}

		// A rotated token applies with the next reload; an emptied file
		// fails the reload and the old token stays.
		if err := os.WriteFile(tokenFile, []byte("rotated"), 0o600); err != nil {
			t.Fatal(err)
		}
		if code, _, body := post(t, base+"/reload", "s3cret-token"); code != 200 {
			t.Fatalf("reload: %d %s", code, body)
		}
		if code, _, _ := post(t, base+"/reload", "s3cret-token"); code != 401 {
			t.Errorf("the old token after rotation: %d, want 401", code)
		}
		os.WriteFile(tokenFile, nil, 0o600)
		code, _, body := post(t, base+"/reload", "rotated")
		if code != 422 || !strings.Contains(body, "admin.token_file") || !strings.Contains(body, "is empty") {
			t.Errorf("reload with an empty token file: %d %s", code, body)
		}
		if code, _, _ := post(t, base+"/reload", "rotated"); code != 422 {
			t.Errorf("the token after a failed reload: %d, want 422 (accepted, the file is still bad)", code)
		}
	})

	t.Run("no token", func(t *testing.T) {
		ip := nonLoopbackIP(t)
		listen := freePort(t)
		ln, err := net.Listen("tcp", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		cfgPath := writeConfig(t, fmt.Sprintf(`
listeners: [{address: %q}]
admin: {address: "0.0.0.0:%d"}
routes: [{path: /, pool: p}]
pools:
  p: {backends: [{address: %q}]}
`, listen, port, backend))
		code, _, errOut := runCmd("check", "-config", cfgPath)
		if code != 0 || !strings.Contains(errOut, "warning: admin.address") || !strings.Contains(errOut, "admin.token_file is not set") {
			t.Errorf("check: exit %d, want 0 and a warning:\n%s", code, errOut)
		}
		p := startProcess(t, "-config", cfgPath)
		loop := fmt.Sprintf("http://127.0.0.1:%d", port)
		waitHTTP(t, p, loop+"/readyz", 200)
		if ip != "" {
			remote := "http://" + net.JoinHostPort(ip, fmt.Sprint(port))
			for _, path := range []string{"/reload", "/backends/drain?address=" + backend, "/backends/undrain?address=" + backend} {
				if code, _, body := post(t, remote+path, ""); code != 403 || !strings.Contains(body, "loopback") {
					t.Errorf("POST %s on %s: %d %s, want 403", path, ip, code, body)
				}
			}
			if code, _ := get(t, remote+"/status"); code != 200 {
				t.Errorf("GET /status on %s: %d, want 200", ip, code)
			}
		}
		if code, _, body := post(t, loop+"/reload", ""); code != 200 {
			t.Errorf("POST /reload on loopback: %d %s, want 200", code, body)
		}
		if code, _, body := post(t, loop+"/backends/drain?address="+backend, ""); code != 200 {
			t.Errorf("POST /backends/drain on loopback: %d %s, want 200", code, body)
		}
	})
}

// nonLoopbackIP returns an address of this host other than loopback, or
// "" (the 403 half of the test is then skipped, and said so).
func nonLoopbackIP(t *testing.T) string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Log("no non-loopback IPv4 address: the 403 from another address is not checked")
	return ""
}

// POST /reload applies the file as SIGHUP does and answers with the
// result: every error of a bad file with its line, and nothing changed.
func TestReloadEndpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	cfgPath := writeConfig(t, fmt.Sprintf(lifecycleConfig, listen, admin, "/spare", backend))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)

	bad := fmt.Sprintf(`listeners: [{address: %q}]
admin: {address: %q}
defaults: {drain_timeout: 5s, idle_timout: 1m}
routes:
  - {path: /two, pool: nope}
pools:
  p: {backends: [{address: %q}]}
`, listen, admin, backend)
	if err := os.WriteFile(cfgPath, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, body := post(t, "http://"+admin+"/reload", "")
	var res reloadResult
	if err := json.Unmarshal([]byte(body), &res); err != nil {
		t.Fatalf("%d %s: %v", code, body, err)
	}
	if code != 422 || res.OK || len(res.Errors) != 2 {
		t.Fatalf("bad file: %d %s, want 422 and two errors", code, body)
	}
	for i, want := range []struct {
		line int
		key  string
		msg  string
	}{
		{3, "defaults.idle_timout", "did you mean idle_timeout?"},
		{5, "routes[0].pool", `no pool named "nope"`},
	} {
		e := res.Errors[i]
		if e.Line != want.line || e.Key != want.key || !strings.Contains(e.Message, want.msg) || e.File != cfgPath {
			t.Errorf("error %d: %+v, want line %d key %s %q", i, e, want.line, want.key, want.msg)
		}
	}
	if !dialOK(listen, "/spare") || dialOK(listen, "/two") {
		t.Fatal("a bad reload changed the routes")
	}
	if st := statusOf(t, admin); st.ReloadsFailed != 1 || st.ReloadsOK != 0 {
		t.Errorf("reloads %d ok %d failed, want 0 and 1", st.ReloadsOK, st.ReloadsFailed)
	}

	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(lifecycleConfig, listen, admin, "/two", backend)), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, body = post(t, "http://"+admin+"/reload", "")
	if code != 200 || !strings.Contains(body, `"ok": true`) {
		t.Fatalf("good file: %d %s", code, body)
	}
	if !dialOK(listen, "/two") || dialOK(listen, "/spare") {
		t.Fatal("the answer came before the routes changed")
	}
	if code, _, _ := post(t, "http://"+admin+"/reload?x", ""); code != 200 {
		t.Errorf("reload again: %d", code)
	}
	if code, _ := get(t, "http://"+admin+"/reload"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /reload: %d, want 405", code)
	}
}

// shutdown_delay: on SIGTERM /readyz answers 503 at once while the
// listeners go on accepting and serving, WebSockets and plain HTTP alike;
// only after the delay does the drain close the sessions (1001), and the
// process exits 0.
func TestShutdownDelay(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const delay = 2 * time.Second
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	cfgPath := writeConfig(t, fmt.Sprintf(`
shutdown_delay: %s
listeners: [{address: %q}]
admin: {address: %q}
defaults: {drain_timeout: 2s}
routes: [{path: /, pool: p}]
pools:
  p: {backends: [{address: %q}]}
`, delay, listen, admin, backend))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	before, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	sigterm := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitLog(t, p, "serving for shutdown_delay")
	if code, _ := get(t, "http://"+admin+"/readyz"); code != 503 {
		t.Fatalf("/readyz %d during the delay, want 503", code)
	}
	// Still accepting: a new session and a plain request, both served.
	during, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/", nil)
	if err != nil {
		t.Fatalf("a new session during the delay: %v", err)
	}
	defer during.Close()
	if got := exchange(t, during, "late"); got != "b1:late" {
		t.Fatalf("got %q", got)
	}
	if got := exchange(t, before, "still"); got != "b1:still" {
		t.Fatalf("got %q", got)
	}
	if code, body := get(t, "http://"+listen+"/"); code != 200 || body != "b1" {
		t.Fatalf("plain HTTP during the delay: %d %q", code, body)
	}
	if code, _, body := post(t, "http://"+admin+"/reload", ""); code != 200 {
		t.Fatalf("POST /reload during the delay: %d %s, want 200 (reloads go on)", code, body)
	}
	served := time.Since(sigterm)
	if served >= delay {
		t.Fatalf("the checks took %v, longer than the delay: they prove nothing", served)
	}
	if strings.Contains(p.stderr.String(), "draining sessions") {
		t.Fatalf("drained before the delay ended:\n%s", p.stderr.String())
	}

	// Then the drain: a reload is refused at once rather than left
	// waiting, and both sessions get 1001, not before the delay.
	waitLog(t, p, "draining sessions")
	quick := &http.Client{Timeout: time.Second}
	if resp, err := quick.Post("http://"+admin+"/reload", "", nil); err != nil {
		t.Errorf("POST /reload during the drain: %v, want 503 at once", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Errorf("POST /reload during the drain: %d, want 503", resp.StatusCode)
		}
	}
	for _, c := range []*websocket.Conn{before, during} {
		_ = c.SetReadDeadline(time.Now().Add(delay + 6*time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errorsAs(err, &ce) || ce.Code != 1001 {
			t.Fatalf("session got %v, want close 1001", err)
		}
		if at := time.Since(sigterm); at < delay {
			t.Fatalf("closed %v after SIGTERM, before shutdown_delay %v", at, delay)
		}
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("exit: %v\n%s", p.err, p.stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("still running %v after SIGTERM:\n%s", time.Since(sigterm), p.stderr.String())
	}
}

// waitReloadsDone waits until /status counts n reloads, good or failed.
func waitReloadsDone(t *testing.T, p *process, admin string, n int64) statusReport {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := statusOf(t, admin)
		if st.ReloadsOK+st.ReloadsFailed >= n {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("reloads: %d ok, %d failed; want %d in all:\n%s", st.ReloadsOK, st.ReloadsFailed, n, p.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A second signal during shutdown_delay does not wait for it: the sessions
// are closed at once and the process exits 1, as a second signal during
// the drain does.
func TestShutdownDelaySecondSignal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	cfgPath := writeConfig(t, fmt.Sprintf(`
shutdown_delay: 1m
listeners: [{address: %q}]
admin: {address: %q}
routes: [{path: /, pool: p}]
pools:
  p: {backends: [{address: %q}]}
`, listen, admin, backend))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitLog(t, p, "serving for shutdown_delay")
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10s after the second signal (shutdown_delay 1m):\n%s", p.stderr.String())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit %d after a second signal, want 1:\n%s", code, p.stderr.String())
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.ReadMessage(); err == nil {
		t.Fatal("the session is still open after the process exited")
	}
}

// check and run refuse a token file that cannot give a token, naming the
// key: the proxy never starts with its admin endpoints unguarded by
// mistake.
func TestTokenFileProblems(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file, want string
	}{
		{"missing", filepath.Join(dir, "nope"), "admin.token_file: cannot read " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{"empty", empty, "admin.token_file: " + empty + " is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeConfig(t, fmt.Sprintf(tokenConfigText, "127.0.0.1:0", "127.0.0.1:0", tc.file, "127.0.0.1:1"))
			for _, cmd := range []string{"check", "run"} {
				code, _, errOut := runCmd(cmd, "-config", cfg)
				if code != 1 || !strings.Contains(errOut, tc.want) {
					t.Errorf("%s: exit %d, want 1 and %q:\n%s", cmd, code, tc.want, errOut)
				}
			}
		})
	}
}
