package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// connCounter is a net/http backend that counts its connections opened
// and closed.
type connCounter struct {
	srv            *http.Server
	ln             net.Listener
	opened, closed atomic.Int64
}

func startCountingBackend(t *testing.T, srv *http.Server) *connCounter {
	t.Helper()
	cc := &connCounter{srv: srv}
	srv.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			cc.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			cc.closed.Add(1)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cc.ln = ln
	go srv.Serve(ln) //nolint:errcheck
	t.Cleanup(func() { srv.Close() })
	return cc
}

func (cc *connCounter) addr() string { return cc.ln.Addr().String() }

// TestStalePooledConnectionIsRetried runs requests on pooled connections
// that the backend closes as the next request arrives, the race a
// keep-alive timeout leaves open. Idempotent requests and requests whose
// body was not sent go again on a fresh connection and succeed; a POST
// whose body went out gets 502. None of it counts against the backend.
func TestStalePooledConnectionIsRetried(t *testing.T) {
	rb := startRawBackend(t, func(c net.Conn, _, nth int, req *http.Request) bool {
		if nth > 0 {
			return false // closed as the second request arrives
		}
		return answerOK(c, req, "fresh")
	})
	hp := startHealthProxy(t, fmt.Sprintf(passiveConfig, "2s", "10s"), rb.addr())
	st := hp.srv.Stats()
	post := func(body string) (int, string) {
		t.Helper()
		resp, err := http.Post(hp.base()+"/post", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(t, hp.base()+"/"); code != 200 || body != "fresh" {
		t.Fatalf("first GET: %d %q", code, body)
	}
	for i := 0; i < 3; i++ {
		// A GET on the pooled connection: retried on a fresh one.
		if code, body := get(t, hp.base()+"/"); code != 200 || body != "fresh" {
			t.Fatalf("GET %d on a stale connection: %d %q", i, code, body)
		}
		// A POST whose body was sent: not sent twice.
		if code, _ := post("x"); code != 502 {
			t.Fatalf("POST %d with a body on a stale connection: %d, want 502", i, code)
		}
		if !hp.up(t, rb.addr()) {
			t.Fatalf("stale pooled connections took the backend down (round %d)", i)
		}
		// Pool a connection again for the next round.
		if code, _ := get(t, hp.base()+"/"); code != 200 {
			t.Fatalf("GET after the POST: %d", code)
		}
	}
	// A POST without a body sent nothing that could take effect.
	if code, body := post(""); code != 200 || body != "fresh" {
		t.Fatalf("POST without body on a stale connection: %d %q", code, body)
	}
	if n := st.HTTPRetries.Load(); n != 4 {
		t.Errorf("HTTPRetries = %d, want 4", n)
	}
	if !hp.up(t, rb.addr()) {
		t.Fatal("backend down")
	}
}

// TestIdleConnTimeout checks that the proxy closes pooled backend
// connections after idle_conn_timeout, and that 0 turns keep-alive to the
// backend off.
func TestIdleConnTimeout(t *testing.T) {
	var closeHeader atomic.Int64
	cc := startCountingBackend(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Close {
			closeHeader.Add(1)
		}
		io.WriteString(w, "ok")
	})}) // no IdleTimeout: only the proxy closes idle connections
	p := startProxy(t, `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
routes:
  - {path: /, pool: p}
  - {path: /noka, pool: noka}
pools:
  p: {idle_conn_timeout: 200ms, backends: [{address: "{{B0}}"}]}
  noka: {idle_conn_timeout: 0s, backends: [{address: "{{B0}}"}]}
`, cc.addr())
	base := "http://" + p.ln.Addr().String()
	for i := 0; i < 3; i++ {
		if code, _ := get(t, base+"/"); code != 200 {
			t.Fatal(code)
		}
	}
	if cc.opened.Load() != 1 {
		t.Fatalf("%d backend connections for 3 requests in a row, want 1 kept alive", cc.opened.Load())
	}
	waitFor(t, "the idle backend connection closed by the proxy", func() bool { return cc.closed.Load() == 1 })
	if closeHeader.Load() != 0 {
		t.Fatal("Connection: close sent with keep-alive on")
	}

	for i := 0; i < 3; i++ {
		if code, _ := get(t, base+"/noka/x"); code != 200 {
			t.Fatal(code)
		}
	}
	if n := closeHeader.Load(); n != 3 {
		t.Fatalf("%d of 3 requests said Connection: close with idle_conn_timeout 0", n)
	}
	waitFor(t, "a connection per request", func() bool { return cc.opened.Load() == 4 && cc.closed.Load() == 4 })
}

// TestBackendClosesIdleConnections is Node's keep-alive against the
// proxy's: the backend closes idle connections first (here after 300ms,
// the proxy keeps them 4s). A wave of clients after the backend closed the
// previous wave's connections must not see a single error.
func TestBackendClosesIdleConnections(t *testing.T) {
	cc := startCountingBackend(t, &http.Server{
		Handler:     http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		IdleTimeout: 300 * time.Millisecond,
	})
	hp := startHealthProxy(t, fmt.Sprintf(passiveConfig, "2s", "4s"), cc.addr())
	for wave := 0; wave < 3; wave++ {
		var wg sync.WaitGroup
		errs := make(chan string, 20)
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := http.Get(hp.base() + "/poll")
				if err != nil {
					errs <- err.Error()
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "ok" {
					errs <- fmt.Sprintf("%d %q", resp.StatusCode, body)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatalf("wave %d: %s", wave, e)
		}
		// The next wave comes once the backend closed every connection.
		waitFor(t, "the backend to close its idle connections", func() bool { return cc.closed.Load() == cc.opened.Load() })
	}
	if n := hp.srv.Stats().HTTPBackendErrors.Load(); n != 0 {
		t.Fatalf("%d backend errors", n)
	}
	if !hp.up(t, cc.addr()) {
		t.Fatal("backend down")
	}
}
