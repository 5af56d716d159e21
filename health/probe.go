package health

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/fasthttp/websocket"
)

// userAgent identifies probes in backend logs.
const userAgent = "wsproxy-health"

// closeWait bounds the wait for the peer's Close frame after a websocket
// probe sent its own (RFC 6455, section 7.1.1: the client waits for the
// server to close first).
const closeWait = time.Second

// closeReadLimit bounds the data messages a websocket probe reads (and
// discards) while it waits for the peer's Close.
const closeReadLimit = 64 << 10

// closeNormal is the status code of a clean close (RFC 6455, section 7.4.1).
const closeNormal = 1000

// aLongTimeAgo is a deadline in the past, set to abort blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// prober runs one kind of probe against one backend.
type prober struct {
	addr     string
	kind     Type // TypeHTTP, TypeTCP or TypeWebSocket
	path     string
	statuses []int
	tls      *tls.Config // nil for plain; for http and websocket, limited to HTTP/1.1
}

// newProber returns the prober of a normalised spec. TypeNone probes with
// tcp: it is only used to bring back a backend taken out passively.
func newProber(addr string, s Spec) *prober {
	p := &prober{addr: addr, kind: s.Type, path: s.Path, statuses: s.Statuses, tls: s.TLS}
	if p.kind == TypeNone {
		p.kind = TypeTCP
	}
	if p.tls != nil && p.kind != TypeTCP {
		// The probes speak HTTP/1.1 only: do not let ALPN pick h2.
		p.tls = p.tls.Clone()
		p.tls.NextProtos = []string{"http/1.1"}
	}
	return p
}

// probe runs one probe, bounded by ctx; nil means healthy.
func (p *prober) probe(ctx context.Context) error {
	switch p.kind {
	case TypeHTTP:
		return p.probeHTTP(ctx)
	case TypeWebSocket:
		return p.probeWebSocket(ctx)
	default:
		return p.probeTCP(ctx)
	}
}

// dial connects to the backend, with a TLS handshake when configured.
func (p *prober) dial(ctx context.Context) (net.Conn, error) {
	d := &net.Dialer{}
	if p.tls == nil {
		return d.DialContext(ctx, "tcp", p.addr)
	}
	td := &tls.Dialer{NetDialer: d, Config: p.tls}
	return td.DialContext(ctx, "tcp", p.addr)
}

// bound makes blocking I/O on c end by ctx's deadline, or at once when ctx
// is cancelled. Call the returned func when done with c.
func bound(ctx context.Context, c net.Conn) (stop func() bool) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
}

func (p *prober) probeTCP(ctx context.Context) error {
	c, err := p.dial(ctx)
	if err != nil {
		return err
	}
	// Connected (and, with TLS, handshaken): healthy, whatever Close says.
	c.Close()
	return nil
}

func (p *prober) probeHTTP(ctx context.Context) error {
	c, err := p.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := bound(ctx, c)
	defer stop()

	// Path was validated (no space or control character), addr comes from
	// the configuration: the request line and Host cannot be split.
	req := "GET " + p.path + " HTTP/1.1\r\n" +
		"Host: " + p.addr + "\r\n" +
		"User-Agent: " + userAgent + "\r\n" +
		"Accept: */*\r\n" +
		"Connection: close\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return fmt.Errorf("GET %s: %w", p.path, err)
	}
	// The body is not read: the connection is closed right after.
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", p.path, err)
	}
	if !p.statusOK(resp.StatusCode) {
		return fmt.Errorf("GET %s: unexpected status %d", p.path, resp.StatusCode)
	}
	return nil
}

// statusOK reports whether an http check accepts status.
func (p *prober) statusOK(status int) bool {
	if len(p.statuses) > 0 {
		return slices.Contains(p.statuses, status)
	}
	return status >= 200 && status < 400
}

func (p *prober) probeWebSocket(ctx context.Context) error {
	var stop func() bool
	d := &websocket.Dialer{
		// Proxy is nil: probes go straight to the backend, whatever the
		// environment says.
		TLSClientConfig: p.tls,
		NetDialContext: func(dctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(dctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The Dialer bounds the handshake by ctx's deadline only;
			// closing the connection also ends it on cancellation.
			stop = context.AfterFunc(ctx, func() { c.Close() })
			return c, nil
		},
	}
	scheme := "ws://"
	if p.tls != nil {
		scheme = "wss://"
	}
	hdr := http.Header{"User-Agent": {userAgent}}
	conn, resp, err := d.DialContext(ctx, scheme+p.addr+p.path, hdr)
	if stop != nil {
		defer stop()
	}
	if err != nil {
		if errors.Is(err, websocket.ErrBadHandshake) && resp != nil {
			return fmt.Errorf("upgrade %s: unexpected status %d", p.path, resp.StatusCode)
		}
		if ctx.Err() != nil {
			// Our AfterFunc closed the connection: say why, not how.
			return fmt.Errorf("upgrade %s: %w", p.path, ctx.Err())
		}
		return fmt.Errorf("upgrade %s: %w", p.path, err)
	}
	defer conn.Close()

	// Healthy on 101; then close cleanly so the backend does not log an
	// abnormal closure: send Close 1000 and wait briefly for the peer's.
	deadline := time.Now().Add(closeWait)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	msg := websocket.FormatCloseMessage(closeNormal, "")
	if err := conn.WriteControl(websocket.CloseMessage, msg, deadline); err != nil {
		return nil
	}
	conn.SetReadDeadline(deadline)
	conn.SetReadLimit(closeReadLimit)
	for {
		if _, _, err := conn.ReadMessage(); err != nil {
			return nil
		}
	}
}
