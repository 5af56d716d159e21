package proxy

import (
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// A lingering close for an answer given before the request body was read:
// a backend that could not be reached, a pool with no healthy backend, the
// proxy short of descriptors. Closing a socket that still holds unread
// bytes makes the kernel send a reset, which throws away the answer the
// client has not read yet: an uploading client sees "connection reset"
// instead of its 502 or 503. As net/http and nginx (lingering_close) do,
// the proxy sends the answer, shuts down its side of the connection, and
// reads and discards what the client still sends for a while before it
// closes.

const (
	// lingerTime and lingerBytes bound how long and how much a lingering
	// close reads before it closes anyway.
	lingerTime  = 2 * time.Second
	lingerBytes = 16 << 20
	// maxLingering caps lingering closes at once; beyond it a connection
	// is closed as fasthttp would close it.
	maxLingering = 256
	// unreadKeepAlive is what fasthttp discards by itself to keep a
	// connection alive (its maxUnreadStreamBodySize); only a longer unread
	// body, or a chunked one, needs a lingering close.
	unreadKeepAlive = 256 << 10
)

// unreadBody reports whether the client's request body is still, in large
// part, unread: cb is the reader the proxy used for it (cb.r nil when the
// proxy answered before it started).
func unreadBody(ctx *fasthttp.RequestCtx, cb *clientBody) bool {
	if !ctx.Request.IsBodyStream() || cb.err != nil {
		return false // read whole by fasthttp, or the client is gone
	}
	if cb.want < 0 {
		return !cb.eof
	}
	return cb.want-cb.n > unreadKeepAlive
}

// lingerClose has the proxy's answer in ctx written on a connection that
// then lingers, reads what the client still sends and closes.
func (s *Server) lingerClose(ctx *fasthttp.RequestCtx) {
	if s.lingering.Add(1) > maxLingering {
		s.lingering.Add(-1)
		ctx.SetConnectionClose()
		return
	}
	// fasthttp closes a Connection: close response's connection itself,
	// so the answer is written here, from a copy, on the hijacked one.
	resp := fasthttp.AcquireResponse()
	ctx.Response.CopyTo(resp)
	resp.SetConnectionClose()
	answer := []byte(resp.String())
	fasthttp.ReleaseResponse(resp)
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) { s.linger(c, answer) })
}

// linger writes answer, shuts down the write side and discards what the
// client sends until it closes, lingerTime passes or lingerBytes were
// read; then it closes c.
func (s *Server) linger(c net.Conn, answer []byte) {
	defer s.lingering.Add(-1)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(lingerTime))
	if _, err := c.Write(answer); err != nil {
		return
	}
	raw := c
	if rc, ok := c.(rawConner); ok {
		raw = rc.UnsafeConn()
	}
	if cw, ok := raw.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite() // TLS: close_notify, which clients read as the end
	}
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	for read := 0; read < lingerBytes; {
		n, err := c.Read(*bp)
		read += n
		if err != nil {
			return
		}
	}
}
