package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// The cases of TestDeploymentMatrix: what a client does to one deployment.

// get fetches path and returns its status and body, reporting a transport
// error on t.
func (d *deployment) get(t *testing.T, path string) (int, string, http.Header) {
	t.Helper()
	resp, err := d.client.Get(d.base + path)
	if err != nil {
		t.Errorf("GET %s: %v", path, err)
		return 0, "", nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("GET %s: body: %v", path, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func casePages(t *testing.T, d *deployment) {
	for i := 0; i < 10; i++ {
		code, body, h := d.get(t, "/")
		if code != 200 || body != pageBody {
			t.Errorf("page %d: %d %.200q", i+1, code, body)
			continue
		}
		if ka := h.Get("Keep-Alive"); ka != "" {
			t.Errorf("page %d: the backend's hop-by-hop Keep-Alive %q reached the client", i+1, ka)
		}
	}
}

func caseWebSocket(t *testing.T, d *deployment) {
	before := metricSum(d.metrics(t), "wsproxy_bytes_total", `direction="client_to_backend"`)
	c, resp, err := d.dialer.Dial(d.wsBase+"/ws", nil)
	if err != nil {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		t.Fatalf("dial: %v %s", err, status)
	}
	defer c.Close()
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != wsSubprotocol || c.Subprotocol() != wsSubprotocol {
		t.Errorf("subprotocol: header %q, conn %q; want %q", got, c.Subprotocol(), wsSubprotocol)
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") {
		t.Errorf("Sec-WebSocket-Extensions %q, want permessage-deflate", ext)
	}
	random := make([]byte, 1000)
	io.ReadFull(newStream(), random) //nolint:errcheck
	big := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog; "), 512<<10/45)
	msgs := []struct {
		typ  int
		data []byte
	}{
		{websocket.TextMessage, []byte("hello")},
		{websocket.BinaryMessage, random},
		{websocket.TextMessage, big},
		{websocket.TextMessage, []byte("")},
	}
	sent := 0
	for i, m := range msgs {
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if err := c.WriteMessage(m.typ, m.data); err != nil {
			t.Fatalf("message %d: write: %v", i, err)
		}
		sent += len(m.data)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		typ, got, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("message %d: read: %v", i, err)
		}
		if typ != m.typ || !bytes.Equal(got, m.data) {
			t.Errorf("message %d: echo type %d, %d bytes; sent type %d, %d bytes", i, typ, len(got), m.typ, len(m.data))
		}
	}
	// Compression happened end to end: far fewer bytes crossed the proxy
	// than the messages held.
	wire := metricSum(d.metrics(t), "wsproxy_bytes_total", `direction="client_to_backend"`) - before
	if wire <= 0 || wire > float64(sent)/8 {
		t.Errorf("%d bytes of messages took %v bytes on the wire: not compressed", sent, wire)
	}
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")) //nolint:errcheck
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Errorf("closing handshake: %v, want close 1000", err)
	}
}

// caseSpaced lets the backend close every pooled connection it sat idle
// on, then sends a request at once: the proxy must not answer it with the
// error a dead connection gave (nor count one). A POST follows the first
// gap, since a POST cannot be retried blindly, a GET the second.
func caseSpaced(t *testing.T, d *deployment) {
	for i := 0; i <= d.cell.gaps(); i++ {
		if i%2 == 1 {
			d.upload(t, 64<<10, false)
		} else if code, body, _ := d.get(t, "/"); code != 200 || body != pageBody {
			t.Errorf("request %d: GET / %d %.200q", i, code, body)
		}
		if i == d.cell.gaps() {
			break
		}
		closed := d.backend.waitIdleGone(t, d.cell.keepAlive+2*time.Second)
		t.Logf("gap %d: %d idle connection(s) closed, %d by the backend's keep-alive timeout", i+1, closed.all, closed.byBackend)
		if i == 0 && d.cell.idleConnTimeout != "" && closed.byBackend == 0 {
			// The pool keeps connections longer than the backend: if the
			// backend closed none, the proxy met no stale connection and
			// the case proved nothing.
			t.Errorf("gap 1: the backend closed no idle connection (idle_conn_timeout %s, backend keep-alive %v)", d.cell.idleConnTimeout, d.cell.keepAlive)
		}
	}
}

// gaps is how many times caseSpaced lets the connections go idle: twice
// when the keep-alive timeout is short, once with Node's 5 s.
func (c matrixCell) gaps() int {
	if c.keepAlive > 2*time.Second {
		return 1
	}
	return 2
}

// upload POSTs n bytes of the stream, chunked or with a Content-Length,
// and checks that the backend saw exactly them.
func (d *deployment) upload(t *testing.T, n int64, chunked bool) {
	t.Helper()
	h := sha256.New()
	var body io.Reader = io.TeeReader(io.LimitReader(newStream(), n), h)
	if chunked {
		body = &oddReader{r: body}
	}
	req, err := http.NewRequest("POST", d.base+"/upload", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = n
	if chunked {
		req.ContentLength = -1
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	start := time.Now()
	resp, err := d.client.Do(req)
	if err != nil {
		t.Errorf("POST %d bytes: %v", n, err)
		return
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	want := fmt.Sprintf("%s %d", hex.EncodeToString(h.Sum(nil)), n)
	if resp.StatusCode != 200 || string(got) != want {
		t.Errorf("POST %d bytes (chunked %v): %d %.300q; want 200 %q", n, chunked, resp.StatusCode, got, want)
		return
	}
	if sum := streamSum(n); !strings.HasPrefix(want, sum) {
		t.Errorf("POST %d bytes: sent %s, the stream's sum is %s", n, want, sum)
	}
	if n >= 1<<20 {
		t.Logf("POST %d MiB (chunked %v): %v", n>>20, chunked, time.Since(start).Round(time.Millisecond))
	}
}

// oddReader returns the bytes of r in reads of odd, changing sizes, so
// that a chunked body has chunks of every kind of length.
type oddReader struct {
	r io.Reader
	i int
}

var oddSizes = [...]int{1, 7, 125, 4096, 65537, 3, 1 << 20, 333}

func (o *oddReader) Read(p []byte) (int, error) {
	n := oddSizes[o.i%len(oddSizes)]
	o.i++
	if len(p) > n {
		p = p[:n]
	}
	return o.r.Read(p)
}

// caseAbortedUpload twice sends half of a 32 MiB body and hangs up. That
// is the client's doing: the proxy must not count it against the backend
// (two such failures in a row would take it out), and the next requests
// must go through.
func caseAbortedUpload(t *testing.T, d *deployment) {
	cut := d.backend.uploadsCut.Load()
	for i := 0; i < 2; i++ {
		d.abortUpload(t)
	}
	t.Logf("the backend has seen %d of the 2 uploads cut so far (the rest never reached it, or it has not read their end yet)", d.backend.uploadsCut.Load()-cut)
	if code, body, _ := d.get(t, "/"); code != 200 || body != pageBody {
		t.Errorf("GET / after the abandoned uploads: %d %.200q", code, body)
	}
	d.upload(t, 1<<20, false)
}

func (d *deployment) abortUpload(t *testing.T) {
	t.Helper()
	const length, sent = 32 << 20, 16 << 20
	requestsBefore := metricSum(d.metrics(t), "wsproxy_http_requests_total")
	cutBefore := d.backend.uploadsCut.Load()
	var conn net.Conn
	var err error
	if d.tlsConf != nil {
		conn, err = tls.Dial("tcp", d.listen, d.tlsConf)
	} else {
		conn, err = net.Dial("tcp", d.listen)
	}
	if err != nil {
		t.Fatal(err)
	}
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", d.listen, length)
	if _, err := io.CopyBuffer(conn, io.LimitReader(newStream(), sent), make([]byte, 1<<20)); err != nil {
		t.Errorf("writing the first half: %v", err)
	}
	conn.Close()
	// The proxy is done with the request once it counted it.
	deadline := time.Now().Add(10 * time.Second)
	for metricSum(d.metrics(t), "wsproxy_http_requests_total") == requestsBefore {
		if time.Now().After(deadline) {
			t.Errorf("the proxy never finished the abandoned request (backend saw %d cut uploads)", d.backend.uploadsCut.Load()-cutBefore)
			break
		}
		select {
		case <-d.backend.uploadEvents:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func caseDownload(t *testing.T, d *deployment) {
	want := streamSum(downloadBytes)
	start := time.Now()
	resp, err := d.client.Get(fmt.Sprintf("%s/download?n=%d&over=%s", d.base, downloadBytes, downloadOver))
	if err != nil {
		t.Fatalf("GET /download: %v", err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	got, err := io.CopyBuffer(h, resp.Body, make([]byte, 1<<20))
	elapsed := time.Since(start)
	sum := hex.EncodeToString(h.Sum(nil))
	if resp.StatusCode != 200 || err != nil || got != downloadBytes || sum != want {
		t.Errorf("download: status %d, %d of %d bytes after %v (read_timeout %v), err %v, sha256 match %v",
			resp.StatusCode, got, downloadBytes, elapsed.Round(time.Millisecond), matrixReadTimeout, err, sum == want)
		return
	}
	t.Logf("%d MiB in %v", downloadBytes>>20, elapsed.Round(time.Millisecond))
}

func caseSSE(t *testing.T, d *deployment) {
	start := time.Now()
	resp, err := d.client.Get(fmt.Sprintf("%s/sse?n=%d&every=%s", d.base, sseEvents, sseEvery))
	if err != nil {
		t.Fatalf("GET /sse: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Errorf("GET /sse: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	var got []string
	var firstAt time.Duration
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			if got = append(got, data); len(got) == 1 {
				firstAt = time.Since(start)
			}
		}
	}
	elapsed := time.Since(start)
	if len(got) != sseEvents || sc.Err() != nil {
		t.Errorf("SSE: %d of %d events in %v (read_timeout %v), then %v; last %q",
			len(got), sseEvents, elapsed.Round(time.Millisecond), matrixReadTimeout, sc.Err(), last(got))
		return
	}
	for i, e := range got {
		if e != fmt.Sprintf("event %d", i) {
			t.Errorf("event %d: %q", i, e)
		}
	}
	// The events streamed: the first came long before the stream ended.
	if firstAt > elapsed/2 {
		t.Errorf("first event after %v of %v: buffered, not streamed", firstAt, elapsed)
	}
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

func casePollUnder(t *testing.T, d *deployment) {
	start := time.Now()
	code, body, _ := d.get(t, "/poll?hold="+pollUnder.String())
	if want := "held " + pollUnder.String(); code != 200 || body != want {
		t.Errorf("long-poll of %v (read_timeout %v): %d %.200q after %v; want 200 %q",
			pollUnder, matrixReadTimeout, code, body, time.Since(start).Round(time.Millisecond), want)
	}
}

func casePollOver(t *testing.T, d *deployment) {
	start := time.Now()
	code, body, h := d.get(t, "/poll?hold="+pollOver.String())
	elapsed := time.Since(start)
	if code != 504 {
		t.Errorf("long-poll of %v (read_timeout %v): %d %.200q after %v; want 504", pollOver, matrixReadTimeout, code, body, elapsed.Round(time.Millisecond))
	}
	if elapsed >= pollOver {
		t.Errorf("the 504 came after %v, once the backend had answered (hold %v)", elapsed, pollOver)
	}
	_ = h
}

func caseHealth(t *testing.T, d *deployment) {
	if code, _, _ := getAdmin(t, d.admin, "/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	code, body, _ := getAdmin(t, d.admin, "/status")
	var st struct {
		Pools []struct {
			Backends []struct {
				Address string `json:"address"`
				Healthy bool   `json:"healthy"`
			} `json:"backends"`
		} `json:"pools"`
	}
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil || len(st.Pools) != 1 || len(st.Pools[0].Backends) != 1 {
		t.Fatalf("/status: %d %v %.300s", code, err, body)
	}
	if b := st.Pools[0].Backends[0]; !b.Healthy {
		t.Errorf("/status: backend %s unhealthy", b.Address)
	}
	if len(d.downs) > 0 {
		t.Errorf("the backend went down during the cell, after %s (the proxy was restarted each time); the proxy's warnings:\n%s",
			strings.Join(d.downs, ", "), warnLines(d.earlier.String()+d.proc.stderr.String()))
	} else if log := d.proc.stderr.String(); strings.Contains(log, `"msg":"backend down"`) {
		t.Errorf("the backend went down during the cell:\n%s", d.warnings(0))
	}
}

func getAdmin(t *testing.T, admin, path string) (int, string, error) {
	t.Helper()
	resp, err := http.Get("http://" + admin + path)
	if err != nil {
		t.Errorf("GET %s: %v", path, err)
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
