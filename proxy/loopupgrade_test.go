package proxy

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// loopUpgrade sends a handshake in one write, then a frame once the 101
// is read, and checks the echo.
func loopUpgradeEcho(t *testing.T, p *testProxy) {
	t.Helper()
	conn, err := net.Dial("tcp", p.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(rawHandshake(p.ln.Addr().String(), "/"))); err != nil {
		t.Fatal(err)
	}
	rc := &rawClient{t: t, conn: conn, br: bufio.NewReader(conn)}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("answer %v %v", resp, err)
	}
	rc.send(clientFrame(true, wsframe.OpText, []byte("hi")))
	f, err := rc.next()
	if err != nil || string(f.payload) != "hi" {
		t.Fatalf("echo %q %v", f.payload, err)
	}
}

// An upgrade with nothing behind its head completes on the loop: the
// session relays, and the loop, not fasthttp, answered it.
func TestLoopUpgradePlain(t *testing.T) {
	b := startBackend(t, "b0")
	p := startEngine(t, "loops", b.addr())
	for i := 0; i < 3; i++ {
		loopUpgradeEcho(t, p)
	}
	if n := p.srv.stats.LoopUpgrades.Load(); n != 3 {
		t.Fatalf("%d upgrades on the loops, want 3", n)
	}
	if n := p.srv.stats.HandshakeOK.Load(); n != 3 {
		t.Fatalf("HandshakeOK %d, want 3", n)
	}
	p.waitSessions(t, 0)
	waitFor(t, "no connections", func() bool { return p.srv.conns.connections() == 0 })
	waitFor(t, "no tickets", func() bool { return p.srv.admission.total.Load() == 0 })
}
