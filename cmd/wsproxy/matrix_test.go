package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsproxy/wsproxy/internal/testpki"
)

// TestDeploymentMatrix runs the wsproxy binary as it is deployed, in front
// of a backend that behaves like Node's http server, for every
// combination of a plain or TLS listener and a plain or TLS pool, and
// walks each through what a web application sends: pages, a WebSocket
// with a subprotocol and permessage-deflate, requests spaced past the
// backend's keep-alive timeout, large and chunked uploads, an upload the
// client abandons, a large download, Server-Sent Events and long-polls
// around read_timeout. The backend must stay healthy throughout, and no
// connection failure may be blamed on it.
//
// In the four matrix cells the backend closes idle connections after 1 s
// while the pool keeps them for 3 s, so the proxy meets connections the
// backend already closed. A fifth cell runs Node's own 5 s keep-alive
// against the pool's default idle_conn_timeout.
//
// The data volumes (about 350 MiB per cell) go through a binary built
// without the race detector.
func TestDeploymentMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary, moves about 1.5 GiB")
	}
	bin := buildPlainBinary(t)
	ca := testpki.NewCA(t)
	leaf := ca.Issue(t, "loopback", testpki.Options{Names: []string{"127.0.0.1", "localhost"}})

	cells := []matrixCell{
		{name: "listener=plain/backend=plain", keepAlive: time.Second, idleConnTimeout: "3s", cases: fullCases},
		{name: "listener=plain/backend=tls", backendTLS: true, keepAlive: time.Second, idleConnTimeout: "3s", cases: fullCases},
		{name: "listener=tls/backend=plain", listenerTLS: true, keepAlive: time.Second, idleConnTimeout: "3s", cases: fullCases},
		{name: "listener=tls/backend=tls", listenerTLS: true, backendTLS: true, keepAlive: time.Second, idleConnTimeout: "3s", cases: fullCases},
		// Node's default keepAliveTimeout against the pool's default
		// idle_conn_timeout.
		{name: "defaults/node-5s", keepAlive: 5 * time.Second, cases: defaultsCases},
	}
	start := time.Now()
	for _, c := range cells {
		t.Run(c.name, func(t *testing.T) {
			cellStart := time.Now()
			d := deploy(t, bin, ca, leaf, c)
			for _, mc := range c.cases {
				if len(mc.group) > 0 {
					d.runGroup(t, mc)
					continue
				}
				d.runCase(t, mc)
			}
			t.Logf("cell %s: %v", c.name, time.Since(cellStart).Round(time.Millisecond))
		})
	}
	t.Logf("matrix: %v", time.Since(start).Round(time.Millisecond))
}

// matrixCell is one deployment: listener and pool TLS, and how the
// backend and the pool keep connections alive.
type matrixCell struct {
	name                    string
	listenerTLS, backendTLS bool
	keepAlive               time.Duration // the backend's idle keep-alive timeout
	idleConnTimeout         string        // the pool's idle_conn_timeout; "" = default
	cases                   []matrixCase
}

// matrixCase is one thing a client does to a deployment. A case with a
// group runs its members at once (they are slow on purpose); blame is
// then judged for the group, allowing what its members may cost.
type matrixCase struct {
	name string
	run  func(t *testing.T, d *deployment)
	// backendErrors is how many requests the proxy may count in
	// wsproxy_http_backend_errors_total during the case.
	backendErrors int
	group         []matrixCase
}

var fullCases = []matrixCase{
	{name: "page-x10", run: casePages},
	{name: "websocket-deflate-subprotocol", run: caseWebSocket},
	{name: "spaced-past-keepalive", run: caseSpaced},
	{name: "post-10MiB", run: func(t *testing.T, d *deployment) { d.upload(t, 10<<20, false) }},
	{name: "post-64MiB", run: func(t *testing.T, d *deployment) { d.upload(t, 64<<20, false) }},
	{name: "chunked-upload", run: func(t *testing.T, d *deployment) { d.upload(t, 8<<20+3, true) }},
	{name: "aborted-upload", run: caseAbortedUpload},
	{name: "around-read-timeout", backendErrors: 1, group: []matrixCase{
		{name: "download-256MiB-past-read-timeout", run: caseDownload},
		{name: "sse-past-read-timeout", run: caseSSE},
		{name: "long-poll-under-read-timeout", run: casePollUnder},
		{name: "long-poll-over-read-timeout", run: casePollOver},
	}},
	{name: "health", run: caseHealth},
}

var defaultsCases = []matrixCase{
	{name: "page-x10", run: casePages},
	{name: "websocket-deflate-subprotocol", run: caseWebSocket},
	{name: "spaced-past-keepalive", run: caseSpaced},
	{name: "health", run: caseHealth},
}

// The proxy's read_timeout in the cells, and the SSE and long-poll timing
// around it.
const (
	matrixReadTimeout = 2 * time.Second
	sseEvents         = 9
	sseEvery          = 300 * time.Millisecond // 9 events: 2.7 s, past read_timeout
	pollUnder         = 1500 * time.Millisecond
	pollOver          = 3 * time.Second
	downloadBytes     = 256 << 20
	downloadOver      = 2500 * time.Millisecond // a steady 100 MiB/s, past read_timeout
)

// buildPlainBinary builds wsproxy without the race detector into the
// test's temporary directory.
func buildPlainBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "wsproxy")
	start := time.Now()
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built %s in %v", filepath.Base(bin), time.Since(start).Round(time.Millisecond))
	return bin
}

const matrixConfig = `
listeners:
  - address: %q
%s
admin: {address: %q}
log: {level: info, format: json}
defaults:
  read_timeout: %s
  ping_interval: 1s
routes:
  - {path: /, pool: p}
pools:
  p:
%s
    backends: [{address: %q}]
    health: {type: none, passive_failures: 2}
%s
`

// deployment is a running proxy in front of one backend, and clients for
// it.
type deployment struct {
	cell    matrixCell
	proc    *process
	backend *nodeBackend
	listen  string // host:port of the public listener
	admin   string
	base    string // http://listen or https://listen
	wsBase  string
	client  *http.Client
	dialer  *websocket.Dialer
	tlsConf *tls.Config // the clients' view of the listener, nil if plain
	bin     string
	cfgPath string
	// earlier holds the logs of proxies restarted because a case took the
	// backend down, and downs the names of those cases.
	earlier strings.Builder
	downs   []string
}

func deploy(t *testing.T, bin string, ca *testpki.CA, leaf testpki.Leaf, c matrixCell) *deployment {
	t.Helper()
	var backendLeaf *testpki.Leaf
	if c.backendTLS {
		backendLeaf = &leaf
	}
	d := &deployment{cell: c, backend: startNodeBackend(t, c.keepAlive, backendLeaf)}
	d.listen, d.admin = freePort(t), freePort(t)
	listenerTLS, poolTLS, idle := "", "", ""
	d.base, d.wsBase = "http://"+d.listen, "ws://"+d.listen
	if c.listenerTLS {
		listenerTLS = fmt.Sprintf("    tls: {certificates: [{cert_file: %q, key_file: %q}]}", leaf.CertFile, leaf.KeyFile)
		d.base, d.wsBase = "https://"+d.listen, "wss://"+d.listen
		d.tlsConf = &tls.Config{RootCAs: ca.Pool()}
	}
	if c.backendTLS {
		poolTLS = fmt.Sprintf("    tls: {enabled: true, ca_file: %q}", ca.File)
	}
	if c.idleConnTimeout != "" {
		idle = "    idle_conn_timeout: " + c.idleConnTimeout
	}
	d.bin = bin
	d.cfgPath = writeConfig(t, fmt.Sprintf(matrixConfig, d.listen, listenerTLS, d.admin, matrixReadTimeout, idle, d.backend.addr, poolTLS))
	d.proc = startBinary(t, bin, "-config", d.cfgPath)
	waitHTTP(t, d.proc, "http://"+d.admin+"/readyz", 200)
	tr := &http.Transport{
		TLSClientConfig:     d.tlsConf,
		MaxIdleConnsPerHost: 4,
		DisableCompression:  true,
		WriteBufferSize:     64 << 10,
		ReadBufferSize:      64 << 10,
	}
	d.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	d.dialer = &websocket.Dialer{
		TLSClientConfig:   d.tlsConf,
		HandshakeTimeout:  5 * time.Second,
		EnableCompression: true,
		Subprotocols:      []string{wsSubprotocol},
	}
	return d
}

// startBinary runs bin like startProcess runs the race-built binary.
func startBinary(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	return runProcess(t, exec.Command(bin, args...))
}

// runCase runs one case and then judges whether the backend was blamed.
func (d *deployment) runCase(t *testing.T, mc matrixCase) {
	t.Run(mc.name, func(t *testing.T) {
		before := d.snapshot(t)
		start := time.Now()
		mc.run(t, d)
		t.Logf("%s: %v", mc.name, time.Since(start).Round(time.Millisecond))
		d.judge(t, before, mc.backendErrors)
	})
	d.recover(t, mc.name)
}

// recover restarts the proxy if the case left the backend down, so that
// the next cases are judged on their own; with passive checks only, the
// backend would otherwise stay out until a recovery probe brings it back.
// The health case reports every such restart.
func (d *deployment) recover(t *testing.T, after string) {
	t.Helper()
	if metricSum(d.metrics(t), "wsproxy_backend_healthy", `backend="`+d.backend.addr+`"`) == 1 {
		return
	}
	t.Logf("%s took the backend down: restarting the proxy", after)
	d.downs = append(d.downs, after)
	d.proc.cmd.Process.Kill()
	<-d.proc.done
	d.earlier.WriteString(d.proc.stderr.String())
	d.client.Transport.(*http.Transport).CloseIdleConnections()
	d.proc = startBinary(t, d.bin, "-config", d.cfgPath)
	waitHTTP(t, d.proc, "http://"+d.admin+"/readyz", 200)
}

// runGroup runs the members of mc at once, each its own subtest.
func (d *deployment) runGroup(t *testing.T, mc matrixCase) {
	t.Run(mc.name, func(t *testing.T) {
		before := d.snapshot(t)
		start := time.Now()
		var wg sync.WaitGroup
		for _, m := range mc.group {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t.Run(m.name, func(t *testing.T) { m.run(t, d) })
			}()
		}
		wg.Wait()
		t.Logf("%s: %v", mc.name, time.Since(start).Round(time.Millisecond))
		d.judge(t, before, mc.backendErrors)
	})
	d.recover(t, mc.name)
}

// snap is what judge compares: counters and the log position.
type snap struct {
	backendErrors float64
	logAt         int
}

func (d *deployment) snapshot(t *testing.T) snap {
	return snap{backendErrors: metricSum(d.metrics(t), "wsproxy_http_backend_errors_total"), logAt: len(d.proc.stderr.String())}
}

// judge fails t if the proxy counted more backend errors than allowed
// since before, or took the backend out. It quotes the proxy's warnings.
func (d *deployment) judge(t *testing.T, before snap, allowed int) {
	t.Helper()
	m := d.metrics(t)
	errs := metricSum(m, "wsproxy_http_backend_errors_total") - before.backendErrors
	healthy := metricSum(m, "wsproxy_backend_healthy", `backend="`+d.backend.addr+`"`)
	if int(errs) > allowed || healthy != 1 {
		t.Errorf("blame: wsproxy_http_backend_errors_total +%v (allowed %d), wsproxy_backend_healthy %v; proxy warnings:\n%s",
			errs, allowed, healthy, d.warnings(before.logAt))
	}
}

// warnings returns the warn and error lines of the running proxy's log
// from offset on.
func (d *deployment) warnings(offset int) string {
	return warnLines(d.proc.stderr.String()[offset:])
}

func warnLines(log string) string {
	var b strings.Builder
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) {
			b.WriteString("    " + l + "\n")
		}
	}
	if b.Len() == 0 {
		return "    (none)\n"
	}
	return b.String()
}

func (d *deployment) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + d.admin + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	return string(b)
}

// metricSum sums the samples of the metric called name whose labels
// contain every one of labels (`key="value"`).
func metricSum(text, name string, labels ...string) float64 {
	var sum float64
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, name) || len(l) == len(name) || (l[len(name)] != ' ' && l[len(name)] != '{') {
			continue
		}
		ok := true
		for _, lb := range labels {
			if !strings.Contains(l, lb) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64); err == nil {
			sum += v
		}
	}
	return sum
}
