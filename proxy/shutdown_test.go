package proxy

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// An upgrade whose backend has not answered yet when the proxy shuts down
// is given up with the server, not left to run out its handshake_timeout:
// the backend connection is closed as Shutdown returns.
func TestShutdownAbandonsHandshakeInFlight(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	yaml := strings.Replace(basicConfig, "  ping_interval: 0s\n", "  ping_interval: 0s\n  handshake_timeout: 30s\n", 1)
	p := startProxy(t, yaml, ln.Addr().String())
	client, err := net.Dial("tcp", p.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := io.WriteString(client, rawHandshake(p.ln.Addr().String(), "/")); err != nil {
		t.Fatal(err)
	}
	backend := <-accepted
	defer backend.Close()
	// The backend has the upgrade request, and does not answer.
	br := bufio.NewReader(backend)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
	}
	ctx, cancel := contextWithTimeout(500 * time.Millisecond)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
	_ = backend.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("backend connection after Shutdown: %v, want EOF (the proxy gave the handshake up)", err)
	}
}

// A backend that accepted an upgrade whose client is gone before the
// session starts gets a Close, masked with a real key as a client's must
// be.
func TestAbandonedBackendGetsMaskedClose(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	proxySide, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	backend, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	abandonBackend(proxySide)
	b, err := io.ReadAll(backend)
	if err != nil {
		t.Fatal(err)
	}
	h, n, err := wsframe.Parse(b)
	if err != nil || n == 0 || h.Opcode != wsframe.OpClose || !h.Masked {
		t.Fatalf("backend got %x, want one masked Close", b)
	}
	if h.Mask == [4]byte{} {
		t.Fatal("the Close is masked with an all-zero key")
	}
	payload := b[n:]
	wsframe.MaskBytes(h.Mask, 0, payload)
	if code, _, _ := wsframe.ParseClose(payload); code != wsframe.CloseGoingAway {
		t.Fatalf("code %d, want 1001", code)
	}
}
