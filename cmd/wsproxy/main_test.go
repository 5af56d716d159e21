package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
	"gopkg.in/yaml.v3"
)

// binary is the wsproxy command built once for the process tests.
var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func wsproxyBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "wsproxy-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "wsproxy")
		out, err := exec.Command("go", "build", "-race", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

func runCmd(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestCheckExampleConfig(t *testing.T) {
	code, out, errOut := runCmd("check", "-config", "../../config.example.yaml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	// The effective config has the defaults filled in.
	for _, want := range []string{"handshake_timeout", "idle_timeout", "max_message_bytes", "drain_timeout"} {
		if !strings.Contains(out, want) {
			t.Errorf("effective config lacks %s:\n%s", want, out)
		}
	}
}

func TestCheckBadConfigs(t *testing.T) {
	files, err := filepath.Glob("../../testdata/config/bad-*.yaml")
	if err != nil || len(files) < 12 {
		t.Fatalf("%d bad configs (%v), want at least 12", len(files), err)
	}
	lineRef := regexp.MustCompile(`bad-[a-z0-9-]+\.yaml:\d+: `)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			code, out, errOut := runCmd("check", "-config", f)
			if code != 1 {
				t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
			}
			if !lineRef.MatchString(errOut) {
				t.Fatalf("error does not name file and line:\n%s", errOut)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	if code, _, _ := runCmd("frobnicate"); code != 2 {
		t.Fatalf("unknown command: exit %d, want 2", code)
	}
	t.Setenv("WSPROXY_CONFIG", "")
	if code, _, e := runCmd("check"); code != 2 || !strings.Contains(e, "-config") {
		t.Fatalf("check without config: exit %d %q", code, e)
	}
	if code, out, _ := runCmd("version"); code != 0 || !strings.HasPrefix(out, "wsproxy ") {
		t.Fatalf("version: %d %q", code, out)
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	t.Setenv("WSPROXY_CONFIG", "../../config.example.yaml")
	if code, _, e := runCmd("check"); code != 0 {
		t.Fatalf("exit %d: %s", code, e)
	}
}

// freePort returns a loopback address nobody listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestPortInUseIsOneLine(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := writeConfig(t, fmt.Sprintf(`
listeners: [{address: %q}]
admin: {address: ""}
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: "127.0.0.1:1"}]}}
`, ln.Addr().String()))
	code, _, errOut := runCmd("-config", cfg)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if lines := strings.Count(strings.TrimSpace(errOut), "\n"); lines != 0 || !strings.Contains(errOut, "address already in use") {
		t.Fatalf("want one line naming the busy address, got:\n%s", errOut)
	}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// echoBackend is a WebSocket echo server on loopback that names itself in
// every answer.
func echoBackend(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := websocket.FastHTTPUpgrader{CheckOrigin: func(*fasthttp.RequestCtx) bool { return true }}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if !websocket.FastHTTPIsWebSocketUpgrade(ctx) {
			ctx.SetBodyString(name)
			return
		}
		_ = up.Upgrade(ctx, func(c *websocket.Conn) {
			defer c.Close()
			for {
				mt, msg, err := c.ReadMessage()
				if err != nil {
					return
				}
				if c.WriteMessage(mt, append([]byte(name+":"), msg...)) != nil {
					return
				}
			}
		})
	}}
	go srv.Serve(ln) //nolint:errcheck
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

// process is a running wsproxy binary.
type process struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{} // closed when the process has exited
	err    error         // its exit status, once done is closed
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startProcess(t *testing.T, args ...string) *process {
	t.Helper()
	return runProcess(t, exec.Command(wsproxyBinary(t), args...))
}

// runProcess starts cmd, its output collected in the process's buffer
// unless cmd already has a place for it, and kills it at the end of the
// test if it is still running.
func runProcess(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	if cmd.Stderr == nil {
		cmd.Stderr = p.stderr
		cmd.Stdout = p.stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// waitHTTP polls url until it answers want, or fails.
func waitHTTP(t *testing.T, p *process, url string, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return
			}
		}
		select {
		case <-p.done:
			t.Fatalf("process exited (%v):\n%s", p.err, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %d:\n%s", url, want, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func exchange(t *testing.T, c *websocket.Conn, msg string) string {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	_, got, err := c.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	return string(got)
}

const lifecycleConfig = `
listeners: [{address: %q}]
admin: {address: %q}
log: {level: info, format: json}
defaults: {drain_timeout: 5s}
routes:
  - {path: /one, pool: p}
  - {path: %s, pool: p}
pools:
  p: {backends: [{address: %q}]}
`

func TestProcessReloadAndDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	cfgPath := writeConfig(t, fmt.Sprintf(lifecycleConfig, listen, admin, "/spare", backend))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)

	c1, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/one", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if got := exchange(t, c1, "hi"); got != "b1:hi" {
		t.Fatalf("got %q", got)
	}

	// A valid reload: the new route works at once, the session in flight
	// on the route that stays keeps running.
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(lifecycleConfig, listen, admin, "/two", backend)), 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c2, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/two", nil)
		if err == nil {
			c2.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new route never served: %v\n%s", err, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := exchange(t, c1, "still there"); got != "b1:still there" {
		t.Fatalf("session after reload: %q", got)
	}

	// An invalid reload changes nothing.
	os.WriteFile(cfgPath, []byte("listeners: [{address: 5}]\nbogus: 1\n"), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, p, "reload failed")
	c3, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/two", nil)
	if err != nil {
		t.Fatalf("after a bad reload: %v", err)
	}
	c3.Close()

	// SIGTERM: readiness drops, the session gets a Close 1001, exit 0.
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	_, _, err = c1.ReadMessage()
	var ce *websocket.CloseError
	if !errorsAs(err, &ce) || ce.Code != 1001 {
		t.Fatalf("session got %v, want close 1001", err)
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("exit: %v\n%s", p.err, p.stderr.String())
		}
	case <-time.After(6 * time.Second):
		t.Fatalf("still running %v after SIGTERM (drain_timeout 5s)", time.Since(start))
	}
}

func errorsAs(err error, target **websocket.CloseError) bool {
	ce, ok := err.(*websocket.CloseError)
	if ok {
		*target = ce
	}
	return ok
}

// waitLog waits until the process logged s.
func waitLog(t *testing.T, p *process, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.stderr.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("never logged %q:\n%s", s, p.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	listen, admin := freePort(t), freePort(t)
	p := startProcess(t, "demo", "-listen", listen, "-admin", admin)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	// The page comes through the proxy.
	resp, err := http.Get("http://" + listen + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(page, []byte("wsproxy demo")) || !bytes.Contains(page, []byte("new WebSocket")) {
		t.Fatalf("page: %.200s", page)
	}
	// Only the page is a page: a browser's favicon request gets 404.
	if resp, err := http.Get("http://" + listen + "/favicon.ico"); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != 404 {
		t.Fatalf("/favicon.ico: %s, want 404", resp.Status)
	}
	// The banner points to the status page, and names two users that the
	// proxy does send to different backends; so does the page.
	out := p.stderr.String()
	if want := "status   http://" + admin + "/  (JSON at /status"; !strings.Contains(out, want) {
		t.Fatalf("banner lacks %q:\n%s", want, out)
	}
	m := regexp.MustCompile(`users +(\w+) \((backend-\d)\) and (\w+) \((backend-\d)\)`).FindStringSubmatch(out)
	if m == nil || m[2] == m[4] {
		t.Fatalf("banner does not name users on both backends:\n%s", out)
	}
	for _, u := range [][2]string{{m[1], m[2]}, {m[3], m[4]}} {
		if want := fmt.Sprintf(`data-user="%s">%s</a> lands on %s`, u[0], u[0], u[1]); !bytes.Contains(page, []byte(want)) {
			t.Errorf("page lacks %q", want)
		}
		c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/ws?user="+u[0], nil)
		if err != nil {
			t.Fatal(err)
		}
		_, hello, err := c.ReadMessage()
		c.Close()
		if err != nil || !bytes.Contains(hello, []byte(`"backend":"`+u[1]+`"`)) {
			t.Fatalf("%s: hello %s (%v), want it from %s", u[0], hello, err, u[1])
		}
	}
	// Users land on both backends, each always on the same one.
	seen := map[string]bool{}
	for i := 0; i < 16; i++ {
		c, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s/ws?user=u%d", listen, i), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, hello, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		var backend string
		if m := regexp.MustCompile(`"backend":"([^"]+)"`).FindSubmatch(hello); m != nil {
			backend = string(m[1])
		}
		c.WriteMessage(websocket.TextMessage, []byte("ping"))
		_, echo, err := c.ReadMessage()
		if err != nil || !bytes.Contains(echo, []byte(`"echo":"ping"`)) || !bytes.Contains(echo, []byte(backend)) {
			t.Fatalf("echo %s (%v)", echo, err)
		}
		seen[backend] = true
		c.Close()
	}
	if len(seen) != 2 {
		t.Fatalf("16 users all went to %v", seen)
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	<-p.done
	if p.err != nil {
		t.Fatalf("demo exit: %v", p.err)
	}
	sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "panic") {
			t.Fatalf("demo log: %s", sc.Text())
		}
	}
}

// TestTwoInstancesAgree runs two proxies with the same pool, listed in a
// different order and started one after the other, and checks that every
// key reaches the same backend through either: the property that lets
// wsproxy scale out behind an L4 balancer with no shared state.
func TestTwoInstancesAgree(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	var backends []string
	for i := 0; i < 5; i++ {
		backends = append(backends, echoBackend(t, fmt.Sprintf("b%d", i)))
	}
	instance := func(order []int) string {
		listen, admin := freePort(t), freePort(t)
		var list strings.Builder
		for _, i := range order {
			fmt.Fprintf(&list, "      - {address: %q}\n", backends[i])
		}
		cfg := writeConfig(t, fmt.Sprintf(`
listeners: [{address: %q}]
admin: {address: %q}
log: {level: warn}
routes:
  - {path: /, pool: p, hash_key: "header:X-User-Id"}
pools:
  p:
    backends:
%s`, listen, admin, list.String()))
		p := startProcess(t, "-config", cfg)
		waitHTTP(t, p, "http://"+admin+"/readyz", 200)
		return listen
	}
	a := instance([]int{0, 1, 2, 3, 4})
	b := instance([]int{3, 1, 4, 0, 2})
	land := func(addr, user string) string {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/", http.Header{"X-User-Id": {user}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := exchange(t, c, "x")
		return strings.TrimSuffix(got, ":x")
	}
	spread := map[string]int{}
	for i := 0; i < 60; i++ {
		user := fmt.Sprintf("user-%d", i)
		ba, bb := land(a, user), land(b, user)
		if ba != bb {
			t.Fatalf("%s: instance A sent it to %s, instance B to %s", user, ba, bb)
		}
		spread[ba]++
	}
	if len(spread) != 5 {
		t.Fatalf("60 keys reached only %v", spread)
	}
}

// TestExampleNamesEveryKey: config.example.yaml shows every key the
// effective configuration has, so that a key added to the config package
// cannot be missing from the example that claims to list them all.
func TestExampleNamesEveryKey(t *testing.T) {
	example, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCmd("check", "-config", "../../config.example.yaml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(out), &root); err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	var walk func(n *yaml.Node, inPools bool)
	walk = func(n *yaml.Node, inPools bool) {
		switch n.Kind {
		case yaml.DocumentNode, yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c, false)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if !inPools { // pool names are not keys
					keys[n.Content[i].Value] = true
				}
				walk(n.Content[i+1], n.Content[i].Value == "pools" && !inPools)
			}
		}
	}
	walk(&root, false)
	for k := range keys {
		if !regexp.MustCompile(`(?m)^[\s#-]*(- )?\{?.*\b` + regexp.QuoteMeta(k) + `:`).Match(example) {
			t.Errorf("config.example.yaml does not show %s", k)
		}
	}
}
