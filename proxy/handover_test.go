package proxy

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

const handoverConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {ping_interval: 0s, drain_close_code: 1012}
routes:
  - {path: /, pool: p}
pools:
  p:
    backends: [{address: "{{B0}}"}]
`

// A binary upgrade's old process stops accepting once the new one serves
// the same sockets, but a client it had accepted just before may send its
// handshake after: Handover proxies it and closes the session at once with
// the drain code, where Shutdown answers 503, a refusal the client would
// not have met had the new process accepted it.
func TestHandoverServesAcceptedHandshakes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		handover bool
	}{{"handover", true}, {"shutdown", false}} {
		t.Run(tc.name, func(t *testing.T) {
			b := startBackend(t, "b0")
			p := startProxy(t, handoverConfig, b.addr())
			conn, err := net.Dial("tcp", p.ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			waitFor(t, "the connection accepted", func() bool { return p.srv.conns.connections() == 1 })
			ctx, cancel := contextWithTimeout(3 * time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				if tc.handover {
					done <- p.srv.Handover(ctx)
				} else {
					done <- p.srv.Shutdown(ctx)
				}
			}()
			waitFor(t, "the listener closed", func() bool {
				c, err := net.Dial("tcp", p.ln.Addr().String())
				if err == nil {
					c.Close()
				}
				return err != nil
			})
			if _, err := conn.Write([]byte(rawHandshake(p.ln.Addr().String(), "/"))); err != nil {
				t.Fatal(err)
			}
			rc := &rawClient{t: t, conn: conn, br: bufio.NewReader(conn)}
			resp, err := http.ReadResponse(rc.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if !tc.handover {
				if resp.StatusCode != http.StatusServiceUnavailable {
					t.Fatalf("during Shutdown: status %d, want 503", resp.StatusCode)
				}
				return
			}
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("during Handover: status %d, want 101", resp.StatusCode)
			}
			code, reason := rc.expectClose()
			if code != 1012 || !strings.Contains(reason, "shutting down") {
				t.Fatalf("Close %d %q, want 1012, the drain code", code, reason)
			}
			rc.send(clientCloseFrame(1012))
			if err := <-done; err != nil {
				t.Fatalf("Handover: %v", err)
			}
		})
	}
}

// clientCloseFrame is a client's masked Close with code.
func clientCloseFrame(code int) []byte {
	return clientFrame(true, wsframe.OpClose, []byte{byte(code >> 8), byte(code)})
}
