package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/internal/poller"
	"github.com/wsproxy/wsproxy/internal/relay"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

var reqPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 2048)
	return &b
}}

// earlyPool holds buffers for the bytes fasthttp read behind a handshake:
// at most its read buffer, 4 KiB unless configured larger.
var earlyPool = sync.Pool{New: func() any {
	b := make([]byte, 4<<10)
	return &b
}}

// serveWebSocket proxies one upgrade request: it validates it, opens the
// backend's handshake, and either relays the backend's refusal or hijacks
// the connection and starts a session.
func (s *Server) serveWebSocket(ctx *fasthttp.RequestCtx, rt *route) {
	n := takeLoopNote(ctx) // a loop admitted it, or began its upgrade
	if n == nil && !s.acceptUpgrade(ctx, rt) {
		return
	}
	h := &ctx.Request.Header
	peer := clientAddr(ctx)
	t := s.table.Load()
	clientIP := balancer.ClientIP(peer, joinedHeader(h, "X-Forwarded-For"), t.trusted)
	var tk ticket
	var r *refusal
	if n != nil {
		tk, r = n.tk, n.refusal
	} else {
		tk, r = s.admit(&t.admission, rt, clientIP)
	}
	if r != nil {
		s.stats.Limited[r.limit].Add(1)
		if ce := s.log.Check(zap.DebugLevel, "upgrade refused by a limit"); ce != nil {
			ce.Write(zap.String("limit", limitLabels[r.limit]), zap.String("route", rt.path), zap.Stringer("client", clientIP))
		}
		refuse(ctx, r.status, r.reason, r.retryAfter)
		return
	}
	// The ticket goes to the session; until then it is given back on
	// every way out.
	defer s.admission.release(&tk)
	f := forwarded{clientIP: clientIP, trusted: t.isTrusted(peer), host: h.Host(), proto: "http"}
	if ctx.IsTLS() {
		f.proto = "https"
	}
	if !s.authenticate(ctx, rt, &f) {
		return
	}
	bp := reqPool.Get().(*[]byte)
	request := appendUpgradeRequest((*bp)[:0], &ctx.Request, &f, peer)
	defer func() {
		*bp = request[:0]
		reqPool.Put(bp)
	}()
	if n != nil && n.chosen {
		s.upgrade(ctx, rt, n.ch, request, &tk, n)
		return
	}
	s.upgrade(ctx, rt, s.choose(&ctx.Request, rt, clientIP), request, &tk, n)
}

// acceptUpgrade refuses an upgrade request that is malformed, from an
// origin the route does not allow, or arrives while the proxy shuts down.
func (s *Server) acceptUpgrade(ctx *fasthttp.RequestCtx, rt *route) bool {
	h := &ctx.Request.Header
	if e := checkUpgrade(h); e != nil {
		s.stats.HandshakeBadRequest.Add(1)
		ctx.Error(e.reason, e.status)
		if e.status == fasthttp.StatusUpgradeRequired {
			ctx.Response.Header.Set("Sec-WebSocket-Version", websocketVersion)
		}
		return false
	}
	if !rt.originAllowed(h.Peek("Origin")) {
		s.stats.HandshakeOriginRefused.Add(1)
		ctx.Error("websocket: origin not allowed", fasthttp.StatusForbidden)
		return false
	}
	if s.stopping.Load() && !s.handover.Load() {
		s.stats.HandshakeShuttingDown.Add(1)
		refuse(ctx, fasthttp.StatusServiceUnavailable, "proxy is shutting down", 5)
		return false
	}
	return true
}

// upgrade sends the upgrade request to the backend the choice names (an
// affinity cookie's, else the hash's), the next one only when nothing
// reached the last, and relays the first answer: a refusal as it is, a
// 101 as a session, which takes the ticket.
// The handshakes end with the server's lifetime or the route's
// handshake_timeout. n, if set, is how far a loop got: upgrade goes on
// from there.
func (s *Server) upgrade(ctx *fasthttp.RequestCtx, rt *route, c choice, request []byte, tk *ticket, n *loopNote) {
	s.upgrading.Add(1)
	started := false // then the hijack handler counts it out
	defer func() {
		if !started {
			s.upgrading.Add(-1)
		}
	}()
	hsCtx, cancel := context.WithTimeout(s.ctx, rt.limits.HandshakeTimeout)
	defer cancel()
	var tried []*balancer.Backend
	var last verdict
	first := 0
	if n != nil {
		if n.conn != nil {
			s.relayRefusal(ctx, n.conn, n.answer)
			return
		}
		tried, last, first = n.tried, n.last, n.attempt
	}
	for attempt := first; attempt < s.attempts; attempt++ {
		var b *balancer.Backend
		switch {
		case attempt == 0 && c.sticky != nil:
			b = c.sticky // a valid affinity cookie holds whatever the loads
		case attempt == 0 && continuesSession(&ctx.Request):
			b = rt.pool.lb.PickUnbounded(c.key)
		default:
			b = rt.pool.lb.PickExcluding(c.key, tried)
		}
		if b == nil {
			break
		}
		tried = append(tried, b)
		conn, answer, err := handshakeBackend(hsCtx, b.Addr, rt.pool.tls[b.Addr], request)
		if err != nil {
			last = classify(err, exchange{dialed: !isDialError(err), upgrade: true, aborted: errors.Is(hsCtx.Err(), context.Canceled)})
			s.backendFailed(rt.pool.name, b, err, last, "backend handshake failed")
			if isDialError(err) && last.kind != failLocal && hsCtx.Err() == nil {
				continue // nothing reached the backend: try the next one
			}
			break
		}
		if s.health != nil {
			s.health.ReportSuccess(b.Addr)
		}
		if answer.status != fasthttp.StatusSwitchingProtocols {
			s.relayRefusal(ctx, conn, answer)
			return
		}
		answer.head = s.stampHead(answer.head, &c, b, ctx.IsTLS())
		s.startSession(ctx, rt, b, conn, answer, *tk)
		started = true
		*tk = ticket{} // the session holds it now
		return
	}
	switch {
	case len(tried) == 0:
		s.stats.HandshakeNoBackend.Add(1)
		last = noBackend
	case last.kind == failShutdown:
		s.stats.HandshakeShuttingDown.Add(1)
	case last.kind == failTimeout:
		s.stats.HandshakeBackendTimeout.Add(1)
	case last.kind == failLocal:
		s.stats.HandshakeLocalResources.Add(1)
	default:
		s.stats.HandshakeBackendRefused.Add(1)
	}
	refuse(ctx, last.status, last.reason, last.retryAfter)
}

// continuesSession reports whether an upgrade carries the id of a session
// that long-polling started (engine.io's sid query parameter): it belongs
// on the backend holding that session, which the plain hash chose, not on
// the one a load bound would prefer.
func continuesSession(req *fasthttp.Request) bool {
	return len(req.URI().QueryArgs().Peek("sid")) > 0
}

// refuse answers with status, a one-line reason and Retry-After.
func refuse(ctx *fasthttp.RequestCtx, status int, reason string, retryAfter int) {
	ctx.Error(reason, status) // resets the response: headers go after
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfter))
}

// joinedHeader returns every value of a header joined by commas.
func joinedHeader(h *fasthttp.RequestHeader, name string) []byte {
	vs := h.PeekAll(name)
	switch len(vs) {
	case 0:
		return nil
	case 1:
		return vs[0]
	}
	var out []byte
	for i, v := range vs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, v...)
	}
	return out
}

// relayRefusal passes a backend's non-101 answer to the client with its
// status, headers and body.
func (s *Server) relayRefusal(ctx *fasthttp.RequestCtx, conn net.Conn, a *backendAnswer) {
	defer conn.Close()
	s.stats.HandshakeBackendNon101.Add(1)
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	if err := resp.ReadLimitBody(a.br, maxErrorBody); err != nil {
		v := classify(fmt.Errorf("%w: refusal body: %w", errProtocol, err), exchange{dialed: true, upgrade: true, heard: true})
		refuse(ctx, v.status, v.reason, v.retryAfter)
		return
	}
	resp.CopyTo(&ctx.Response)
	for _, name := range hopHeaders {
		ctx.Response.Header.Del(name)
	}
}

// startSession answers the client with the backend's 101 and starts the
// relay on the hijacked connection.
func (s *Server) startSession(ctx *fasthttp.RequestCtx, rt *route, b *balancer.Backend, backendConn net.Conn, a *backendAnswer, tk ticket) {
	s.stats.HandshakeOK.Add(1)
	peer := ctx.RemoteAddr().String()
	limits, relayLimits := &rt.limits, &rt.relay // tables are never changed once published
	routePath, exact, poolName := rt.path, rt.exact, rt.pool.name
	rm, bm := rt.metrics, s.metrics.backend(b.Addr)
	id := requestIdentity(ctx)
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		s.hijacked(c, hijackInfo{
			route: routePath, exact: exact, pool: poolName, limits: limits, relayLimits: relayLimits, upstream: b,
			rm: rm, bm: bm,
			backend: backendConn, answer: a, peer: peer, handshakeTimeout: limits.HandshakeTimeout,
			ticket: tk, identity: id,
		})
	})
}

// hijackInfo is what a session needs from its handshake: copied out of the
// request, which fasthttp reuses.
type hijackInfo struct {
	route            string
	exact            bool
	pool             string
	limits           *Limits
	relayLimits      *relay.Limits
	upstream         *balancer.Backend
	rm               *routeMetrics
	bm               *backendMetrics
	backend          net.Conn
	answer           *backendAnswer
	peer             string
	handshakeTimeout time.Duration
	ticket           ticket
	identity         *identity // nil: the route authenticates nobody
}

// rawConner is fasthttp's hijacked connection, which reads through the
// server's buffer.
type rawConner interface{ UnsafeConn() net.Conn }

// hijacked runs on fasthttp's hijack goroutine: it writes the 101, takes
// the bytes the client sent behind its handshake out of fasthttp's buffer,
// detaches the connection and hands both sockets to a session.
func (s *Server) hijacked(c net.Conn, hi hijackInfo) {
	defer s.upgrading.Add(-1) // its session runs, or it failed
	fail := func(err error) {
		s.log.Debug("session setup failed", zap.String("client", hi.peer), zap.Error(err))
		_ = c.Close()
		abandonBackend(hi.backend)
		s.admission.release(&hi.ticket)
	}
	_ = c.SetWriteDeadline(time.Now().Add(hi.handshakeTimeout))
	if _, err := c.Write(hi.answer.head); err != nil {
		fail(err)
		return
	}
	_ = c.SetWriteDeadline(time.Time{})
	early, err := drainBuffered(c)
	if err != nil {
		fail(err)
		return
	}
	raw := c
	if rc, ok := c.(rawConner); ok {
		raw = rc.UnsafeConn()
	}
	if rc, ok := raw.(*replayConn); ok { // handed over by the loops
		var rest []byte
		raw, rest = rc.unwrap()
		early = append(early, rest...)
	}
	s.runSession(relay.Endpoint{Conn: raw}, relay.Endpoint{Conn: hi.backend}, s.pollers.Pick(), nil, early, &hi, fail)
}

// runSession starts the session of a handshake done, the 101 written:
// hijacked's and the loops' (loopupgrade.go) second half. Its sockets are
// added to p, unless l is set: the loop whose handler calls it, where the
// session starts (relay.Session.StartOn). fail is called if the relay will
// not take the endpoints.
func (s *Server) runSession(client, backend relay.Endpoint, p *poller.Poller, l *poller.Loop, early []byte, hi *hijackInfo, fail func(error)) {
	ss := &session{srv: s, start: time.Now(), route: hi.route, exact: hi.exact, pool: hi.pool,
		limits: hi.limits, upstream: hi.upstream, rm: hi.rm, bm: hi.bm, peer: hi.peer}
	ext, _ := headerValue(hi.answer.head, "Sec-WebSocket-Extensions")
	err := ss.InitEndpoints(client, backend, &relay.Options{
		Limits:       hi.relayLimits,
		ClientEarly:  early,
		BackendEarly: hi.answer.early,
		Extensions:   relay.ExtensionRule(ext),
		Hooks:        ss,
		Deadline:     hi.identity.deadline(), DeadlineReason: "token expired",
	})
	if err != nil {
		fail(err)
		return
	}
	if v, ok := headerValue(hi.answer.head, "Sec-WebSocket-Protocol"); ok || hi.identity != nil {
		ss.about = &sessionAbout{proto: string(v), identity: hi.identity}
	}
	ss.ticket = hi.ticket
	hi.upstream.Acquire()
	ss.unregister = s.sessions.add(ss)
	s.metrics.started(ss)
	s.stats.SessionsStarted.Add(1)
	if s.stopping.Load() {
		ss.drainClose(s.table.Load().drainCloseCode, "proxy shutting down")
	}
	if l != nil {
		err = ss.StartOn(l)
	} else {
		err = ss.Start(p)
	}
	if err != nil {
		s.log.Error("session could not start", zap.Error(err))
		ss.Finish()
		return
	}
	s.drainIfRemoved(ss)
}

// abandonBackend closes a backend connection that accepted an upgrade
// whose session could not start: with a Close as a client sends it,
// masked with a fresh key (RFC 6455 section 5.3).
func abandonBackend(conn net.Conn) {
	var mask [4]byte
	binary.LittleEndian.PutUint32(mask[:], rand.Uint32()|1)
	_, _ = conn.Write(wsframe.AppendClose(nil, &mask, wsframe.CloseGoingAway, "client went away"))
	_ = conn.Close()
}

// drainBuffered returns the bytes fasthttp read past the handshake: a read
// with a deadline already past returns what is buffered without a syscall
// and then times out, which does not stick.
func drainBuffered(c net.Conn) ([]byte, error) {
	if _, ok := c.(rawConner); !ok {
		return nil, nil
	}
	if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return nil, err
	}
	var early []byte
	bp := earlyPool.Get().(*[]byte) // a stack array would escape through Read
	defer earlyPool.Put(bp)
	buf := *bp
	for {
		n, err := c.Read(buf)
		if n > 0 {
			early = append(early, buf[:n]...)
		}
		if err != nil {
			if !isTimeout(err) {
				return nil, err
			}
			break
		}
	}
	return early, c.SetReadDeadline(time.Time{})
}
