package proxy

import (
	"crypto/tls"
	"errors"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/balancer"
)

// Plain HTTP on a route (long-polling fallbacks, Server-Sent Events, pages)
// goes to the backend the same hash picks, so that a client's polls and its
// WebSocket land on one backend.

// newHostClient returns the plain HTTP client for one backend, over TLS
// when tlsConfig is set.
func newHostClient(addr string, tlsConfig *tls.Config) *fasthttp.HostClient {
	return &fasthttp.HostClient{
		Addr:                          addr,
		IsTLS:                         tlsConfig != nil,
		TLSConfig:                     tlsConfig,
		NoDefaultUserAgentHeader:      true,
		DisablePathNormalizing:        true,
		DisableHeaderNamesNormalizing: true,
		MaxConns:                      4096,
		MaxConnWaitTimeout:            5 * time.Second,
		MaxIdleConnDuration:           30 * time.Second,
		StreamResponseBody:            true,
		RetryIfErr:                    func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}
}

// serveProxyHTTP proxies a plain HTTP request. The response streams
// through: a body of unknown length (Server-Sent Events, chunked) is passed
// on chunk by chunk, never buffered whole.
func (s *Server) serveProxyHTTP(ctx *fasthttp.RequestCtx, rt *route) {
	s.stats.HTTPRequests.Add(1)
	start := time.Now()
	var backend string
	defer func() { s.requestEnded(ctx, rt, backend, start) }()
	if s.stopping.Load() {
		ctx.SetConnectionClose()
	}
	h := &ctx.Request.Header
	peer := clientAddr(ctx)
	t := s.table.Load()
	clientIP := balancer.ClientIP(peer, joinedHeader(h, "X-Forwarded-For"), t.trusted)
	key := rt.key.Hash(&ctx.Request, clientIP)
	b := rt.pool.lb.Pick(key)
	if b == nil {
		refuse(ctx, fasthttp.StatusServiceUnavailable, "no healthy backend", 5)
		return
	}
	backend = b.Addr
	hc := rt.pool.clients[b.Addr]
	f := forwarded{clientIP: clientIP, trusted: t.isTrusted(peer), host: append([]byte(nil), h.Host()...), proto: "http"}
	if ctx.IsTLS() {
		f.proto = "https"
	}
	var fw []byte
	fw = appendForwarded(fw, h, &f, peer)
	connection := h.PeekAll("Connection")
	var drop [][]byte
	h.VisitAll(func(k, v []byte) {
		if skipHeader(k, connection) && string(k) != "Host" {
			drop = append(drop, append([]byte(nil), k...))
		}
	})
	for _, k := range drop {
		h.DelBytes(k)
	}
	setRawHeaders(h, fw)

	deadline := time.Now().Add(rt.limits.ReadTimeout)
	if rt.limits.ReadTimeout <= 0 {
		deadline = time.Now().Add(24 * time.Hour)
	}
	err := hc.DoDeadline(&ctx.Request, &ctx.Response, deadline)
	if err != nil {
		s.stats.HTTPBackendErrors.Add(1)
		s.log.Warn("backend request failed", zap.String("backend", b.Addr), zap.Error(err))
		ctx.Response.Reset()
		switch {
		case errors.Is(err, fasthttp.ErrNoFreeConns):
			refuse(ctx, fasthttp.StatusServiceUnavailable, "backend busy", 1)
		case isTimeout(err):
			refuse(ctx, fasthttp.StatusGatewayTimeout, "backend timed out", 1)
		default:
			if s.health != nil {
				s.health.ReportFailure(b.Addr, err)
			}
			refuse(ctx, fasthttp.StatusBadGateway, "backend unreachable", 1)
		}
		return
	}
	for _, name := range hopHeaders {
		ctx.Response.Header.Del(name)
	}
	if ctx.Response.IsBodyStream() {
		ctx.Response.ImmediateHeaderFlush = true
	}
}

// setRawHeaders sets the "Name: value\r\n" lines of raw on h.
func setRawHeaders(h *fasthttp.RequestHeader, raw []byte) {
	for len(raw) > 0 {
		i := 0
		for i+1 < len(raw) && !(raw[i] == '\r' && raw[i+1] == '\n') {
			i++
		}
		line := raw[:i]
		raw = raw[min(i+2, len(raw)):]
		for j := 0; j+1 < len(line); j++ {
			if line[j] == ':' && line[j+1] == ' ' {
				h.SetBytesKV(line[:j], line[j+2:])
				break
			}
		}
	}
}
