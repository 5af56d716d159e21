package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A backend that refuses an upgrade and then stalls in the middle of its
// refusal's body does not hold the request: the body must come within
// handshake_timeout, or the client gets 504. A body cut short is 502.
func TestRefusalBodyWithinHandshakeTimeout(t *testing.T) {
	checkGoroutines(t)
	for _, tc := range []struct {
		name   string
		after  func(net.Conn) // once the head and part of the body are out
		status int
	}{
		{"stalls", func(c net.Conn) { _, _ = io.Copy(io.Discard, c) }, 504},
		{"cut short", func(c net.Conn) { c.Close() }, 502},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				_, _ = io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\nnot all of")
				tc.after(c)
			}()
			yaml := strings.Replace(basicConfig, "  ping_interval: 0s\n", "  ping_interval: 0s\n  handshake_timeout: 300ms\n", 1)
			p := startProxy(t, yaml, ln.Addr().String())
			conn, err := net.Dial("tcp", p.ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, rawHandshake(p.ln.Addr().String(), "/")); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
}
