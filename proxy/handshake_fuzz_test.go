package proxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"net/netip"
	"testing"

	"github.com/valyala/fasthttp"
)

// FuzzHandshake feeds the handshake validator arbitrary requests. A
// request it accepts must really be a valid RFC 6455 upgrade, and the
// handshake the proxy would send the backend for it must parse back with
// the same key, its own upgrade headers, and none of the client's
// hop-by-hop or forged forwarding headers. A refused one gets 400 or 426.
func FuzzHandshake(f *testing.F) {
	valid := "GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://app.example.com\r\n" +
		"Sec-WebSocket-Protocol: chat, superchat\r\nCookie: a=b\r\n\r\n"
	f.Add([]byte(valid))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 8\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Secret\r\nX-Secret: 1\r\nX-Forwarded-For: 6.6.6.6\r\nSec-WebSocket-Key: short\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Secret\r\nX-Secret: 1\r\nProxy-Authorization: basic x\r\nForwarded: for=6.6.6.6\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13\r\n\r\n"))
	peer := netip.MustParseAddr("192.0.2.7")
	f.Fuzz(func(t *testing.T, data []byte) {
		var req fasthttp.Request
		if err := req.Read(bufio.NewReader(bytes.NewReader(data))); err != nil {
			return // fasthttp refuses it before the validator sees it
		}
		h := &req.Header
		isUpgradeAttempt(h)
		if e := checkUpgrade(h); e != nil {
			if e.status != fasthttp.StatusBadRequest && e.status != fasthttp.StatusUpgradeRequired {
				t.Fatalf("refused with %d", e.status)
			}
			return
		}
		key := bytes.TrimSpace(h.Peek("Sec-WebSocket-Key"))
		if k, err := base64.StdEncoding.DecodeString(string(key)); err != nil || len(k) != 16 || !h.IsGet() || !h.IsHTTP11() {
			t.Fatalf("accepted a bad handshake: key %q, GET %v, HTTP/1.1 %v", key, h.IsGet(), h.IsHTTP11())
		}
		fw := forwarded{clientIP: peer, proto: "http", host: h.Host()}
		out := appendUpgradeRequest(nil, &req, &fw, peer)
		var back fasthttp.Request
		if err := back.Read(bufio.NewReader(bytes.NewReader(out))); err != nil {
			t.Fatalf("backend handshake does not parse: %v\n%q", err, out)
		}
		bh := &back.Header
		if string(bytes.TrimSpace(bh.Peek("Sec-WebSocket-Key"))) != string(key) {
			t.Fatalf("key changed: %q", out)
		}
		if string(bh.Peek("Upgrade")) != "websocket" || string(bh.Peek("Connection")) != "Upgrade" {
			t.Fatalf("upgrade headers: %q", out)
		}
		if len(bh.PeekAll("Connection")) != 1 || len(bh.PeekAll("Upgrade")) != 1 {
			t.Fatalf("client's hop-by-hop headers reached the backend: %q", out)
		}
		for _, name := range []string{"Proxy-Authorization", "Keep-Alive", "Te", "Transfer-Encoding"} {
			if len(bh.Peek(name)) > 0 {
				t.Fatalf("%s reached the backend: %q", name, out)
			}
		}
		if xff := bh.PeekAll("X-Forwarded-For"); len(xff) != 1 || string(xff[0]) != "192.0.2.7" {
			t.Fatalf("X-Forwarded-For from an untrusted client kept: %q", out)
		}
		for _, v := range h.PeekAll("Connection") {
			for _, tok := range bytes.Split(v, []byte(",")) {
				tok = bytes.TrimSpace(tok)
				if len(tok) == 0 || bytes.EqualFold(tok, []byte("upgrade")) {
					continue
				}
				if len(bh.Peek(string(tok))) > 0 && !isProxyHeader(tok) {
					t.Fatalf("header %q named in Connection reached the backend: %q", tok, out)
				}
			}
		}
	})
}

// isProxyHeader reports whether the proxy writes the header itself.
func isProxyHeader(name []byte) bool {
	for _, h := range append(forwardingHeaders, "Sec-WebSocket-Key") {
		if bytes.EqualFold(name, []byte(h)) {
			return true
		}
	}
	return false
}
