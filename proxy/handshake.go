package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/internal/relay"
)

// The opening handshake, RFC 6455 section 4.

// websocketVersion is the only version RFC 6455 defines (section 4.1).
const websocketVersion = "13"

// maxResponseHead bounds a backend's 101 answer (status line and headers).
const maxResponseHead = 16 << 10

// maxErrorBody bounds the body of a backend's non-101 answer relayed to the
// client.
const maxErrorBody = 1 << 20

// upgradeError is a refused client handshake: an HTTP status and the
// one-line reason sent as its body.
type upgradeError struct {
	status int
	reason string
}

// isUpgradeAttempt reports whether the request asks for a WebSocket: it
// names websocket in Upgrade or carries a Sec-WebSocket-Key. Such a request
// is held to RFC 6455; any other request is plain HTTP.
func isUpgradeAttempt(h *fasthttp.RequestHeader) bool {
	for _, v := range h.PeekAll("Upgrade") {
		if hasToken(v, "websocket") {
			return true
		}
	}
	return len(h.Peek("Sec-WebSocket-Key")) > 0
}

// checkUpgrade validates a client's opening handshake (RFC 6455 section
// 4.2.1). It returns nil when the request is a valid upgrade.
func checkUpgrade(h *fasthttp.RequestHeader) *upgradeError {
	if !h.IsGet() {
		return &upgradeError{fasthttp.StatusBadRequest, "websocket: the upgrade request must use GET"}
	}
	if !h.IsHTTP11() {
		return &upgradeError{fasthttp.StatusBadRequest, "websocket: the upgrade request must use HTTP/1.1"}
	}
	if !anyHasToken(h.PeekAll("Upgrade"), "websocket") {
		return &upgradeError{fasthttp.StatusBadRequest, "websocket: the Upgrade header must name websocket"}
	}
	if !anyHasToken(h.PeekAll("Connection"), "upgrade") {
		return &upgradeError{fasthttp.StatusBadRequest, "websocket: the Connection header must contain the upgrade token"}
	}
	keys := h.PeekAll("Sec-WebSocket-Key")
	if len(keys) > 1 {
		// RFC 6455 section 11.3.1: it must not appear more than once; a
		// proxy and its backend could otherwise read different keys.
		return &upgradeError{fasthttp.StatusBadRequest, "websocket: Sec-WebSocket-Key must appear once"}
	}
	key := bytes.TrimSpace(h.Peek("Sec-WebSocket-Key"))
	var decoded [18]byte
	if len(key) != 24 {
		return &upgradeError{fasthttp.StatusBadRequest, "websocket: Sec-WebSocket-Key must be 16 bytes in base64"}
	}
	if n, err := base64.StdEncoding.Decode(decoded[:], key); err != nil || n != 16 {
		return &upgradeError{fasthttp.StatusBadRequest, "websocket: Sec-WebSocket-Key must be 16 bytes in base64"}
	}
	if v := h.PeekAll("Sec-WebSocket-Version"); len(v) != 1 || string(bytes.TrimSpace(v[0])) != websocketVersion {
		return &upgradeError{fasthttp.StatusUpgradeRequired, "websocket: unsupported Sec-WebSocket-Version; this proxy speaks version 13"}
	}
	return nil
}

// hasToken reports whether a comma-separated header value holds token,
// compared case-insensitively (RFC 9110 section 5.6.1).
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var part []byte
		if i < 0 {
			part, v = v, nil
		} else {
			part, v = v[:i], v[i+1:]
		}
		if bytes.EqualFold(bytes.TrimSpace(part), []byte(token)) {
			return true
		}
	}
	return false
}

func anyHasToken(vs [][]byte, token string) bool {
	for _, v := range vs {
		if hasToken(v, token) {
			return true
		}
	}
	return false
}

// hopHeaders are the hop-by-hop headers (RFC 9110 section 7.6.1) a proxy
// must not forward, plus the forwarding headers the proxy writes itself.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// forwardingHeaders are replaced by the proxy's own.
var forwardingHeaders = []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded", "Host"}

// skipHeader reports whether a client header must not reach the backend:
// a hop-by-hop header, one the Connection header names, or one the proxy
// writes itself.
func skipHeader(name []byte, connection [][]byte) bool {
	for _, h := range hopHeaders {
		if bytes.EqualFold(name, []byte(h)) {
			return true
		}
	}
	for _, h := range forwardingHeaders {
		if bytes.EqualFold(name, []byte(h)) {
			return true
		}
	}
	for _, v := range connection {
		if hasToken(v, string(name)) {
			return true
		}
	}
	return false
}

// forwarded describes the client for the forwarding headers.
type forwarded struct {
	clientIP netip.Addr
	trusted  bool // the peer is a trusted proxy: extend its headers
	proto    string
	host     []byte
	id       *identity // what authentication set; nil for none
}

// appendForwarded appends X-Forwarded-For, X-Forwarded-Proto,
// X-Forwarded-Host and Forwarded (RFC 7239). Headers from a trusted peer are
// extended; from anyone else they are replaced, so clients cannot forge
// them.
func appendForwarded(dst []byte, h *fasthttp.RequestHeader, f *forwarded, peer netip.Addr) []byte {
	ip := peer.Unmap().String()
	dst = append(dst, "X-Forwarded-For: "...)
	if f.trusted {
		for _, v := range h.PeekAll("X-Forwarded-For") {
			dst = append(dst, v...)
			dst = append(dst, ", "...)
		}
	}
	dst = append(dst, ip...)
	dst = append(dst, "\r\nX-Forwarded-Proto: "...)
	if f.trusted {
		if v := h.Peek("X-Forwarded-Proto"); len(v) > 0 {
			dst = append(dst, v...)
		} else {
			dst = append(dst, f.proto...)
		}
	} else {
		dst = append(dst, f.proto...)
	}
	dst = append(dst, "\r\nX-Forwarded-Host: "...)
	if v := h.Peek("X-Forwarded-Host"); f.trusted && len(v) > 0 {
		dst = append(dst, v...)
	} else {
		dst = append(dst, f.host...)
	}
	dst = append(dst, "\r\nForwarded: "...)
	if f.trusted {
		for _, v := range h.PeekAll("Forwarded") {
			dst = append(dst, v...)
			dst = append(dst, ", "...)
		}
	}
	dst = append(dst, "for="...)
	if peer.Unmap().Is6() {
		dst = append(dst, `"[`...)
		dst = append(dst, ip...)
		dst = append(dst, `]"`...)
	} else {
		dst = append(dst, ip...)
	}
	dst = append(dst, ";proto="...)
	dst = append(dst, f.proto...)
	if len(f.host) > 0 {
		dst = append(dst, ";host="...)
		dst = strconv.AppendQuote(dst, string(f.host))
	}
	return append(dst, "\r\n"...)
}

// appendUpgradeRequest writes the backend's opening handshake: the
// client's request line and end-to-end headers (keys, subprotocols,
// extensions, cookies, Origin and the rest, names and order kept), the
// upgrade headers and the forwarding headers.
func appendUpgradeRequest(dst []byte, req *fasthttp.Request, f *forwarded, peer netip.Addr) []byte {
	h := &req.Header
	dst = append(dst, "GET "...)
	dst = append(dst, req.RequestURI()...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, f.host...)
	dst = append(dst, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"...)
	dst = appendEndToEnd(dst, h, false, f.id)
	dst = appendForwarded(dst, h, f, peer)
	dst = f.id.appendHeaders(dst)
	return append(dst, "\r\n"...)
}

// appendEndToEnd appends the client's end-to-end header lines, names and
// order kept: hop-by-hop headers and those Connection names are left out,
// and with framing so are Content-Length and Expect, which the proxy sets
// itself for the body it sends.
//
// Lines may end in a bare LF, which fasthttp accepts: they are split on LF
// so that no header rides inside another and escapes the filter, and a
// folded line, a name that is not a token or a bare CR, any of which would
// read differently at the backend, is never passed on.
//
// Headers that authentication sets (id) are the proxy's: the client's own
// of those names are left out.
func appendEndToEnd(dst []byte, h *fasthttp.RequestHeader, framing bool, id *identity) []byte {
	connection := h.PeekAll("Connection")
	raw := h.RawHeaders()
	for len(raw) > 0 {
		i := bytes.IndexByte(raw, '\n')
		var line []byte
		if i < 0 {
			line, raw = raw, nil
		} else {
			line, raw = raw[:i], raw[i+1:]
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) || bytes.IndexByte(line, '\r') >= 0 {
			continue
		}
		name := line[:colon]
		if skipHeader(name, connection) || id.dropped(name) || framing &&
			(bytes.EqualFold(name, []byte("Content-Length")) || bytes.EqualFold(name, []byte("Expect"))) {
			continue
		}
		dst = append(dst, line...)
		dst = append(dst, "\r\n"...)
	}
	return dst
}

// isToken reports whether b is an RFC 9110 token, as a header name must be.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c >= 0x80 || !tokenChars[c] {
			return false
		}
	}
	return true
}

var tokenChars = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// backendAnswer is what a backend said to the opening handshake.
type backendAnswer struct {
	status int
	head   []byte // status line and headers, through the blank line
	early  []byte // bytes the backend sent behind its 101
	br     *bufio.Reader
}

var headPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 4096)
	return &b
}}

var (
	errHeadTooLarge = errors.New("proxy: backend response head too large")
	errBadStatus    = errors.New("proxy: malformed backend status line")
)

// readAnswer reads the backend's answer head. For a 101 it keeps the raw
// head and any bytes behind it; otherwise it leaves a reader positioned at
// the start of the answer, to be parsed whole.
func readAnswer(conn net.Conn) (*backendAnswer, error) {
	bp := headPool.Get().(*[]byte)
	defer headPool.Put(bp)
	buf := (*bp)[:0]
	searched := 0
	for {
		if len(buf) == cap(buf) {
			if cap(buf) >= maxResponseHead {
				return nil, errHeadTooLarge
			}
			nb := make([]byte, len(buf), 2*cap(buf))
			copy(nb, buf)
			buf = nb
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if a, perr := answerHead(buf, searched); a != nil || perr != nil {
			if perr != nil {
				return nil, perr
			}
			if a.status != fasthttp.StatusSwitchingProtocols {
				a.br = bufio.NewReader(io.MultiReader(bytes.NewReader(bytes.Clone(buf)), conn))
			}
			if cap(buf) <= 64<<10 {
				*bp = buf[:0]
			}
			return a, nil
		}
		searched = len(buf)
		if err != nil {
			if err == io.EOF && len(buf) == 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// answerHead parses the answer head at the start of buf, whose first
// searched bytes hold no blank line: nil and no error while the head is
// not whole. For a 101 it keeps the raw head and the bytes behind it.
func answerHead(buf []byte, searched int) (*backendAnswer, error) {
	i := bytes.Index(buf[max(searched-3, 0):], []byte("\r\n\r\n"))
	if i < 0 {
		return nil, nil
	}
	end := max(searched-3, 0) + i + 4
	status, err := parseStatus(buf)
	if err != nil {
		return nil, err
	}
	a := &backendAnswer{status: status}
	if status == fasthttp.StatusSwitchingProtocols {
		a.head = bytes.Clone(buf[:end])
		if end < len(buf) {
			a.early = bytes.Clone(buf[end:])
		}
	}
	return a, nil
}

// parseStatus parses "HTTP/1.x NNN ..." at the start of b.
func parseStatus(b []byte) (int, error) {
	if len(b) < 12 || !bytes.HasPrefix(b, []byte("HTTP/1.")) || b[8] != ' ' {
		return 0, errBadStatus
	}
	code, err := strconv.Atoi(string(b[9:12]))
	if err != nil || code < 100 || code > 999 {
		return 0, errBadStatus
	}
	return code, nil
}

// headerValue returns the value of the first header called name in a raw
// response head, and whether there was one.
func headerValue(head []byte, name string) ([]byte, bool) {
	lines := head
	if i := bytes.Index(lines, []byte("\r\n")); i >= 0 {
		lines = lines[i+2:]
	}
	for len(lines) > 0 {
		i := bytes.Index(lines, []byte("\r\n"))
		if i <= 0 {
			break
		}
		line := lines[:i]
		lines = lines[i+2:]
		colon := bytes.IndexByte(line, ':')
		if colon > 0 && bytes.EqualFold(bytes.TrimSpace(line[:colon]), []byte(name)) {
			return bytes.TrimSpace(line[colon+1:]), true
		}
	}
	return nil, false
}

// dialError tells a backend that could not be reached from one that failed
// after accepting the connection.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// backendDialer dials backends without TCP keep-alive: the relay's own
// pings and read timeout find a dead backend, and keep-alive would cost four
// setsockopt calls per session.
var backendDialer = net.Dialer{KeepAlive: -1}

// handshakeBackend connects to addr and sends the opening handshake. It
// returns the connection and the backend's answer.
// With tlsConfig it speaks TLS (wss) to the backend.
func handshakeBackend(ctx context.Context, addr string, tlsConfig *tls.Config, request []byte) (net.Conn, *backendAnswer, error) {
	conn, err := backendDialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, &dialError{err}
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	// A context done early (the server stopping) cuts the exchange short
	// too: reads and writes follow deadlines, not contexts.
	raw := conn
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if tlsConfig != nil {
		sock, err := relay.NewSocket(conn.(*net.TCPConn))
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		tc := tls.Client(sock, tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("proxy: TLS to backend: %w", err)
		}
		conn = tc
	}
	if _, err := conn.Write(request); err != nil {
		conn.Close()
		return nil, nil, err
	}
	a, err := readAnswer(conn)
	if !stop() && err == nil {
		err = ctx.Err() // the deadline is cut already
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if a.status == fasthttp.StatusSwitchingProtocols {
		_ = conn.SetDeadline(time.Time{})
	} // a refusal's body is read within the handshake's deadline too
	return conn, a, nil
}
