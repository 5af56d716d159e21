package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/balancer"
)

// Plain HTTP on a route (long-polling fallbacks, Server-Sent Events, pages,
// downloads, uploads) goes to the backend the plain hash picks, without
// load bounds, so that a client's polls and its WebSocket land on one
// backend. Both bodies stream: neither is held whole in memory.
//
// Timeouts: the connect (and TLS handshake) is bounded by the route's
// handshake_timeout; read_timeout bounds the silence between two reads from
// the backend, the wait for the response head included, never a whole
// response; write_timeout bounds a write to the backend that makes no
// progress. A request sent on a pooled connection that fails before any
// answer byte is sent again once on a fresh connection when its method is
// idempotent or its body was not sent (as Go's net/http does).

// maxReplayBody is the largest request body read whole before it is sent,
// so that the request can be sent again on a fresh connection. Longer
// bodies stream and are sent once.
const maxReplayBody = 64 << 10

// earlyAnswerWait is how long a backend that stopped taking a request's
// body has to show the answer it sent first; such an answer is already in
// the socket, so this only needs to cover scheduling.
const earlyAnswerWait = 100 * time.Millisecond

// copyBufPool holds the buffers request bodies stream through.
var copyBufPool = sync.Pool{New: func() any {
	b := make([]byte, 32<<10)
	return &b
}}

// serveProxyHTTP proxies a plain HTTP request. The response streams
// through: a body of unknown length (Server-Sent Events, chunked) is passed
// on chunk by chunk, never buffered whole.
func (s *Server) serveProxyHTTP(ctx *fasthttp.RequestCtx, rt *route) {
	start := time.Now()
	var backend string
	h := &ctx.Request.Header
	pr := &plainRequest{ctx: ctx, rt: rt}
	pr.cb = clientBody{ctx: ctx, timeout: rt.limits.ReadTimeout, want: int64(h.ContentLength())}
	defer func() {
		// An answer of the proxy's own given before the upload was read.
		if !ctx.Response.IsBodyStream() && !ctx.Hijacked() && unreadBody(ctx, &pr.cb) {
			s.lingerClose(ctx)
		}
		s.requestEnded(ctx, rt, backend, start)
	}()
	if s.stopping.Load() {
		ctx.SetConnectionClose()
	}
	peer := clientAddr(ctx)
	t := s.table.Load()
	clientIP := balancer.ClientIP(peer, joinedHeader(h, "X-Forwarded-For"), t.trusted)
	f := forwarded{clientIP: clientIP, trusted: t.isTrusted(peer), host: h.Host(), proto: "http"}
	if ctx.IsTLS() {
		f.proto = "https"
	}
	if !s.authenticate(ctx, rt, &f) {
		return
	}
	pr.choice = s.choose(&ctx.Request, rt, clientIP)
	b := pr.choice.pickPlain(rt.pool.lb)
	if b == nil {
		refuse(ctx, noBackend.status, noBackend.reason, noBackend.retryAfter)
		return
	}
	backend = b.Addr
	pr.b, pr.hc = b, rt.pool.clients[b.Addr]
	bp := reqPool.Get().(*[]byte)
	defer reqPool.Put(bp)
	err := pr.build((*bp)[:0], &f, peer)
	*bp = pr.msg[:0]
	if err != nil {
		s.httpFailed(ctx, rt, b, err, exchange{client: err})
		return
	}
	s.sendPlain(pr)
	backend = pr.b.Addr
}

// plainRequest is a plain HTTP request on its way to a backend.
type plainRequest struct {
	ctx    *fasthttp.RequestCtx
	rt     *route
	choice choice            // the backend choice's key and affinity
	b      *balancer.Backend // the backend it goes to
	hc     *httpClient       // b's
	// msg is the request as the backend gets it, its body too unless it
	// is streamed.
	msg     []byte
	stream  io.Reader // a body sent as it arrives, once
	chunked bool
	bodyLen int
	cb      clientBody
}

// build writes the request for the backend into dst: its head, and the
// body unless it is to be streamed. A client that fails to send its body
// whole gets an error.
func (pr *plainRequest) build(dst []byte, f *forwarded, peer netip.Addr) error {
	ctx, h := pr.ctx, &pr.ctx.Request.Header
	if ctx.Request.IsBodyStream() {
		pr.cb.r = ctx.RequestBodyStream()
		pr.bodyLen = h.ContentLength()
		if pr.bodyLen < 0 || pr.bodyLen > maxReplayBody {
			pr.stream, pr.chunked = &pr.cb, pr.bodyLen < 0
		}
	} else {
		pr.bodyLen = len(ctx.Request.Body())
	}
	pr.msg = appendProxyRequest(dst, &ctx.Request, &proxyRequest{
		forwarded: *f, peer: peer, backend: pr.b.Addr, bodyLen: pr.bodyLen, keepAlive: pr.hc.idleTimeout > 0,
	})
	switch {
	case pr.stream != nil:
	case ctx.Request.IsBodyStream():
		n := len(pr.msg)
		pr.msg = slices.Grow(pr.msg, pr.bodyLen)[:n+pr.bodyLen]
		if _, err := io.ReadFull(&pr.cb, pr.msg[n:]); err != nil {
			return err
		}
	default:
		pr.msg = append(pr.msg, ctx.Request.Body()...)
	}
	return nil
}

// sendPlain sends the request and relays the answer. A connect refused
// goes to the next backend the hash offers, as an upgrade's does; a
// pooled connection the backend had closed is replaced once when sending
// again cannot repeat the request's effect. Anything else is the client's
// error answer.
func (s *Server) sendPlain(pr *plainRequest) {
	ctx, rt := pr.ctx, pr.rt
	idempotent := isIdempotent(ctx.Method(), &ctx.Request.Header)
	var tried []*balancer.Backend
	for attempt := 0; ; attempt++ {
		var bc *backendConn
		if attempt == 0 {
			bc = pr.hc.get()
		}
		if bc == nil {
			var err error
			bc, err = pr.hc.dial(rt.limits.HandshakeTimeout, rt.pool.tls[pr.b.Addr])
			if err != nil {
				// A connect that timed out has used its time already.
				v := classify(err, exchange{})
				tried = append(tried, pr.b)
				var next *balancer.Backend
				if v.kind == failUnreachable && len(tried) < s.attempts {
					next = rt.pool.lb.PickExcluding(pr.choice.key, tried)
				}
				if next == nil {
					s.httpFailed(ctx, rt, pr.b, err, exchange{})
					return
				}
				s.stats.HTTPBackendErrors.Add(1)
				s.backendFailed(rt.pool.name, pr.b, err, v, "backend unreachable; trying the next one")
				pr.b, pr.hc = next, rt.pool.clients[next.Addr]
				attempt = -1 // the next backend's pooled connections first
				continue
			}
		}
		err := s.exchangePlain(pr, bc)
		if err == nil {
			return
		}
		_ = bc.Close()
		x := exchange{dialed: true, reused: bc.reused, client: pr.cb.err, heard: bc.heard}
		// A pooled connection the backend closed while idle: nothing
		// was heard, so the request may go again if sending it again
		// cannot repeat its effect.
		bodyNotSent := pr.bodyLen == 0 || (pr.stream != nil && pr.cb.n == 0)
		if attempt == 0 && x.reused && !x.heard && x.client == nil && !isTimeout(err) &&
			(pr.stream == nil || pr.cb.n == 0) && (idempotent || bodyNotSent) {
			s.stats.HTTPRetries.Add(1)
			continue
		}
		ctx.Response.Reset()
		s.httpFailed(ctx, rt, pr.b, err, x)
		return
	}
}

// exchangePlain sends the request on bc and, once the answer's head is
// read, relays the answer. A backend that stopped reading the body may
// have said why first (413, 401): that answer is the client's.
func (s *Server) exchangePlain(pr *plainRequest, bc *backendConn) error {
	ctx, rt := pr.ctx, pr.rt
	bc.begin(rt.limits.ReadTimeout, rt.limits.WriteTimeout)
	err := sendRequest(bc, pr.msg, pr.stream, pr.chunked)
	early := false
	if err != nil && pr.cb.err == nil {
		bc.readTimeout = earlyAnswerWait
		if readResponseHead(bc, &ctx.Response) == nil {
			err, early = nil, true
		}
	} else if err == nil {
		err = readResponseHead(bc, &ctx.Response)
	}
	if err != nil {
		return err
	}
	if s.health != nil {
		s.health.ReportSuccess(pr.b.Addr)
	}
	s.setAffinityCookie(&ctx.Response.Header, &pr.choice, pr.b, ctx.IsTLS())
	if early {
		bc.readTimeout = rt.limits.ReadTimeout
		ctx.SetConnectionClose() // the rest of the upload goes unread
	}
	s.relayResponse(ctx, pr.hc, bc, !early)
	return nil
}

// httpFailed answers, counts and logs a plain request that got no answer.
func (s *Server) httpFailed(ctx *fasthttp.RequestCtx, rt *route, b *balancer.Backend, err error, x exchange) {
	v := classify(err, x)
	switch v.kind {
	case failClient:
		s.stats.HTTPClientAborts.Add(1)
		ctx.SetConnectionClose()
	case failLocal:
		s.stats.HTTPLocalResources.Add(1)
		s.stats.HTTPBackendErrors.Add(1)
	default:
		s.stats.HTTPBackendErrors.Add(1)
	}
	s.backendFailed(rt.pool.name, b, err, v, "backend request failed")
	refuse(ctx, v.status, v.reason, v.retryAfter)
}

// isIdempotent reports whether sending a request twice has the effect of
// sending it once: RFC 9110 section 9.2.2, or an Idempotency-Key header.
func isIdempotent(method []byte, h *fasthttp.RequestHeader) bool {
	switch string(method) {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return len(h.Peek("Idempotency-Key")) > 0
}

// proxyRequest is what the head sent to the backend needs besides the
// client's request.
type proxyRequest struct {
	forwarded
	peer      netip.Addr
	backend   string // the Host of a request that had none (HTTP/1.0)
	bodyLen   int    // -1: chunked
	keepAlive bool
}

// appendProxyRequest writes the head of the request sent to the backend:
// the client's method and request target unchanged, its end-to-end
// headers (names and order kept), the forwarding headers and the framing
// of the body as the proxy sends it.
func appendProxyRequest(dst []byte, req *fasthttp.Request, pr *proxyRequest) []byte {
	h := &req.Header
	dst = append(dst, h.Method()...)
	dst = append(dst, ' ')
	dst = append(dst, h.RequestURI()...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	if len(pr.host) > 0 {
		dst = append(dst, pr.host...)
	} else {
		dst = append(dst, pr.backend...)
	}
	dst = append(dst, "\r\n"...)
	dst = appendEndToEnd(dst, h, true, pr.id)
	dst = appendForwarded(dst, h, &pr.forwarded, pr.peer)
	dst = pr.id.appendHeaders(dst)
	switch {
	case pr.bodyLen < 0:
		dst = append(dst, "Transfer-Encoding: chunked\r\n"...)
	case pr.bodyLen > 0 || !(h.IsGet() || h.IsHead() || h.IsDelete() || h.IsOptions() || h.IsTrace()):
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, int64(pr.bodyLen), 10)
		dst = append(dst, "\r\n"...)
	}
	if !pr.keepAlive {
		dst = append(dst, "Connection: close\r\n"...)
	}
	return append(dst, "\r\n"...)
}

// clientBody reads the client's request body, keeping the error that
// tells a client gone from a backend gone. Each read pushes the client's
// read deadline read_timeout ahead (fasthttp's would bound the whole
// upload by handshake_timeout from the request's start), so that an upload
// may last as long as it keeps moving.
type clientBody struct {
	ctx     *fasthttp.RequestCtx
	r       io.Reader
	timeout time.Duration
	want    int64 // Content-Length; -1 for chunked
	n       int64
	eof     bool // the body was read to its end
	err     error
}

func (b *clientBody) Read(p []byte) (int, error) {
	switch {
	case b.timeout > 0:
		_ = b.ctx.SetReadDeadline(time.Now().Add(b.timeout))
	case b.n == 0:
		// read_timeout 0: no bound, not even the request's own.
		_ = b.ctx.SetReadDeadline(time.Time{})
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	if err == io.EOF && b.want >= 0 && b.n < b.want {
		err = io.ErrUnexpectedEOF
	}
	if err == io.EOF {
		b.eof = true
	}
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// sendRequest writes the head (with a replayable body) and streams any
// body that is sent as it arrives.
func sendRequest(bc *backendConn, msg []byte, stream io.Reader, chunked bool) error {
	if _, err := bc.Write(msg); err != nil {
		return err
	}
	if stream == nil {
		return nil
	}
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	if !chunked {
		_, err := io.CopyBuffer(bc, stream, *bp)
		return err
	}
	cw := httputil.NewChunkedWriter(bc)
	if _, err := io.CopyBuffer(cw, stream, *bp); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return err
	}
	_, err := bc.Write([]byte("\r\n"))
	return err
}

// readResponseHead reads the backend's status line and headers into
// resp, skipping interim (1xx) answers.
func readResponseHead(bc *backendConn, resp *fasthttp.Response) error {
	resp.Header.DisableNormalizing()
	for {
		if err := resp.Header.Read(bc.br); err != nil {
			if bc.readErr != nil {
				return bc.readErr // the connection's own error says more
			}
			return fmt.Errorf("%w: %v", errProtocol, err)
		}
		switch sc := resp.Header.StatusCode(); {
		case sc == fasthttp.StatusSwitchingProtocols:
			return fmt.Errorf("%w: 101 to a request that asked for no upgrade", errProtocol)
		case sc >= 100 && sc < 200:
			continue
		}
		return nil
	}
}

// relayResponse hands the backend's response to the client: its head now,
// its body as a stream that gives the connection back to the pool once
// read to its end.
func (s *Server) relayResponse(ctx *fasthttp.RequestCtx, hc *httpClient, bc *backendConn, reusable bool) {
	resp := &ctx.Response
	status := resp.StatusCode()
	cl := resp.Header.ContentLength()
	keep := reusable && !resp.Header.ConnectionClose() // the client's Connection is its own hop's
	for _, name := range hopHeaders {
		resp.Header.Del(name)
	}
	if s.stopping.Load() {
		ctx.SetConnectionClose() // reading the head reset it
	}
	body := &backendBody{hc: hc, bc: bc, keep: keep, left: int64(cl)}
	switch {
	case ctx.Request.Header.IsHead() || status == fasthttp.StatusNoContent || status == fasthttp.StatusNotModified:
		resp.SkipBody = true
		if cl >= 0 {
			resp.Header.SetContentLength(cl)
		}
		body.done = true
		_ = body.Close()
		return
	case cl == 0:
		body.done = true
		_ = body.Close()
		return
	case cl == -1:
		body.chunked = httputil.NewChunkedReader(bc.br)
	case cl < 0: // until the backend closes
		body.keep = false
	}
	resp.SetBodyStream(body, max(cl, -1))
	resp.ImmediateHeaderFlush = true
}

// backendBody streams a response body from a backend connection: a fixed
// length, chunked (de-chunked here, chunked again by the server as it
// sends), or until the backend closes. Closed once read to its end, it
// puts the connection back in the pool; closed earlier, it closes it.
type backendBody struct {
	hc      *httpClient
	bc      *backendConn
	chunked io.Reader
	left    int64 // fixed length: bytes left; -2 until close
	keep    bool
	done    bool
}

func (b *backendBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	switch {
	case b.chunked != nil:
		n, err := b.chunked.Read(p)
		if err == io.EOF {
			if err := skipTrailer(b.bc.br); err != nil {
				return n, err
			}
			b.done = true
		}
		return n, err
	case b.left >= 0:
		if int64(len(p)) > b.left {
			p = p[:b.left]
		}
		n, err := b.bc.br.Read(p)
		b.left -= int64(n)
		if b.left == 0 {
			b.done = true
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	n, err := b.bc.br.Read(p)
	if err == io.EOF {
		b.done = true
	}
	return n, err
}

// Close gives the connection back or closes it; fasthttp calls it once
// the response is written or abandoned.
func (b *backendBody) Close() error {
	bc := b.bc
	if bc == nil {
		return nil
	}
	b.bc = nil
	if b.done && b.keep {
		b.hc.put(bc)
		return nil
	}
	return bc.Close()
}

// skipTrailer reads the trailer section that ends a chunked body, through
// its blank line; trailers are not passed on.
func skipTrailer(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return nil
		}
	}
}
