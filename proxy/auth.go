package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/config"
)

// Authentication runs after the route is matched and before the backend
// is chosen: the route's jwt step, then its forward-auth step. A refused
// request is answered here and reaches no backend. A passed one carries an
// identity: headers the client may not send itself (dropped from what it
// sent), the values authentication gave them (set on the request, so that
// the hash key sees them, and on what the backend gets), and the time a
// token expires, when a session must end.

// identity is what authentication made of a request.
type identity struct {
	drop   []string // header names the client may not send
	set    []header // headers for the backend
	expiry time.Time
}

type header struct{ name, value string }

// identityKey is the request's user value holding its *identity, which
// the session and the access log read.
type identityKey struct{}

// routeAuth is a route's authentication steps.
type routeAuth struct {
	jwt  *routeJWT
	fwd  *forwardAuth
	drop []string
}

// Auth outcomes, by step, as wsproxy_auth_total counts them.
const (
	authPassed = iota
	authRefused
	authCached   // forward auth: passed on a cached answer
	authDenied   // the auth service or the keys were unavailable: 503
	authAllowed  // the auth service was unavailable and on_error allowed it
	authExpired  // a session closed 1008 when its token expired
	authOutcomes = iota
)

var (
	authStepLabels    = [...]string{"jwt", "forward"}
	authOutcomeLabels = [authOutcomes]string{"passed", "refused", "cached", "unavailable_denied", "unavailable_allowed", "session_expired"}
	descAuth          = prometheus.NewDesc("wsproxy_auth_total",
		"Requests by authentication step and outcome: passed, refused (401 or the auth service's answer), cached (a forward-auth answer reused), unavailable_denied (503), unavailable_allowed (on_error: allow); session_expired counts sessions closed 1008 at their token's expiry.",
		[]string{"step", "outcome"}, nil)
)

// collectAuth sends the authentication counters.
func (c collector) collectAuth(e emitter) {
	for step, sl := range authStepLabels {
		for o, ol := range authOutcomeLabels {
			e.counter(descAuth, c.s.stats.Auth[step][o].Load(), sl, ol)
		}
	}
}

// buildAuth builds a route's authentication from its configuration, or
// nil when it has none. Verifiers reading a URL are shared by routes
// configured alike and kept across reloads (see verifiers).
func (s *Server) buildAuth(rc *config.Route, vs *verifiers) (*routeAuth, error) {
	if rc.Auth == nil && rc.JWT == nil {
		return nil, nil
	}
	ra := &routeAuth{}
	if j := rc.JWT; j != nil {
		rj, err := s.buildJWT(j, vs)
		if err != nil {
			return nil, fmt.Errorf("route %s: jwt: %w", rc.Path, err)
		}
		ra.jwt = rj
		for _, ch := range rj.claims {
			ra.drop = append(ra.drop, ch.header)
		}
	}
	if a := rc.Auth; a != nil {
		ra.fwd = newForwardAuth(a)
		ra.drop = append(ra.drop, a.CopyHeaders...)
	}
	return ra, nil
}

// authenticate runs the route's steps on a request. It answers a refused
// request itself and returns false; a passed one gets its identity set on
// the request.
func (s *Server) authenticate(ctx *fasthttp.RequestCtx, rt *route, f *forwarded) bool {
	ra := rt.auth
	if ra == nil {
		return true
	}
	h := &ctx.Request.Header
	id := &identity{drop: ra.drop}
	for _, name := range ra.drop {
		h.Del(name) // no forged identity, for the hash key either
	}
	if ra.jwt != nil && !s.checkJWT(ctx, rt, id) {
		return false
	}
	if ra.fwd != nil && !s.forwardAuth(ctx, rt, f, id) {
		return false
	}
	for _, x := range id.set {
		h.Set(x.name, x.value)
	}
	f.id = id
	ctx.SetUserValue(identityKey{}, id)
	return true
}

// requestIdentity returns the identity authentication gave a request, or
// nil.
func requestIdentity(ctx *fasthttp.RequestCtx) *identity {
	id, _ := ctx.UserValue(identityKey{}).(*identity)
	return id
}

// value returns the value authentication set for a header, or "".
func (id *identity) value(name string) string {
	if id == nil || name == "" {
		return ""
	}
	for i := len(id.set) - 1; i >= 0; i-- {
		if strings.EqualFold(id.set[i].name, name) {
			return id.set[i].value
		}
	}
	return ""
}

// dropped reports whether the client's header called name is left out of
// the backend's request.
func (id *identity) dropped(name []byte) bool {
	if id == nil {
		return false
	}
	for _, d := range id.drop {
		if bytes.EqualFold(name, []byte(d)) {
			return true
		}
	}
	return false
}

// deadline is when a session must end: its token's expiry with the
// leeway; zero for none.
func (id *identity) deadline() time.Time {
	if id == nil {
		return time.Time{}
	}
	return id.expiry
}

// identityField is the access log's identity: the value authentication
// gave the header log.access_log_identity names, or nothing when that key
// is unset or authentication set no such header (a client's own is never
// logged as an identity).
func identityField(t *table, id *identity) zap.Field {
	if v := id.value(t.accessLogIdentity); v != "" {
		return zap.String("identity", v)
	}
	return zap.Skip()
}

// appendHeaders appends the identity's header lines.
func (id *identity) appendHeaders(dst []byte) []byte {
	if id == nil {
		return dst
	}
	for _, x := range id.set {
		dst = append(dst, x.name...)
		dst = append(dst, ": "...)
		dst = append(dst, x.value...)
		dst = append(dst, "\r\n"...)
	}
	return dst
}

// forwardAuth is a route's auth block in use.
type forwardAuth struct {
	url    string
	copy   []string
	allow  bool // on_error: allow
	client *http.Client
	cache  *authCache // nil: no cache
}

// maxAuthBody bounds the body of an auth service's answer relayed to a
// client.
const maxAuthBody = 64 << 10

// Auth answers that are not relayed: a body over maxAuthBody, an
// informational status.
var (
	errAuthTooLarge = errors.New("proxy: auth answer body too large")
	errAuthStatus   = errors.New("proxy: auth answer of an informational status")
)

func newForwardAuth(a *config.Auth) *forwardAuth {
	fa := &forwardAuth{url: a.URL, copy: a.CopyHeaders, allow: a.OnError == "allow"}
	fa.client = &http.Client{
		Timeout: a.Timeout,
		Transport: &http.Transport{
			Proxy:               nil, // the auth service is asked directly
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true, // its answer goes to the client as it is
		},
		// A redirect (to a login page) is an answer for the client.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if a.CacheTTL > 0 {
		fa.cache = newAuthCache(a.CacheTTL)
	}
	return fa
}

// close closes the auth client's idle connections, when its route is gone.
func (fa *forwardAuth) close() { fa.client.CloseIdleConnections() }

// forwardAuth asks the route's auth service about a request.
func (s *Server) forwardAuth(ctx *fasthttp.RequestCtx, rt *route, f *forwarded, id *identity) bool {
	fa := rt.auth.fwd
	st := &s.stats.Auth[1]
	var ck string
	if fa.cache != nil {
		ck = cacheKey(&ctx.Request)
		if vals, ok := fa.cache.get(ck); ok {
			st[authCached].Add(1)
			id.set = append(id.set, vals...)
			return true
		}
	}
	req, err := http.NewRequestWithContext(s.ctx, http.MethodGet, fa.url, nil)
	if err != nil {
		return s.authUnavailable(ctx, rt, fa, err)
	}
	authRequestHeaders(req.Header, &ctx.Request, f, id)
	resp, err := fa.client.Do(req)
	if err != nil {
		return s.authUnavailable(ctx, rt, fa, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAuthBody)) // keep the connection
		var vals []header
		for _, name := range fa.copy {
			if vs := resp.Header.Values(name); len(vs) > 0 {
				vals = append(vals, header{name: name, value: strings.Join(vs, ", ")})
			}
		}
		if fa.cache != nil && ck != "" {
			fa.cache.put(ck, vals)
		}
		st[authPassed].Add(1)
		id.set = append(id.set, vals...)
		return true
	}
	var body []byte
	if resp.StatusCode < 200 { // a 101 would tell the client it was upgraded
		err = fmt.Errorf("%w: status %d", errAuthStatus, resp.StatusCode)
	} else if body, err = io.ReadAll(io.LimitReader(resp.Body, maxAuthBody+1)); err == nil && len(body) > maxAuthBody {
		err = errAuthTooLarge
	}
	if err != nil {
		// The answer is a refusal whatever on_error says: it only
		// could not be relayed whole.
		st[authRefused].Add(1)
		s.log.Warn("auth answer could not be relayed", zap.String("route", rt.path), zap.Int("status", resp.StatusCode), zap.Error(err))
		ctx.Error("auth: the auth service's answer could not be read", fasthttp.StatusBadGateway)
		return false
	}
	st[authRefused].Add(1)
	ctx.Response.Reset()
	ctx.Response.SetStatusCode(resp.StatusCode)
	for name, vs := range resp.Header {
		if skipHeader([]byte(name), nil) || strings.EqualFold(name, "Content-Length") {
			continue
		}
		for _, v := range vs {
			ctx.Response.Header.Add(name, v)
		}
	}
	if resp.Header.Get("Content-Type") == "" {
		ctx.Response.Header.SetNoDefaultContentType(true) // none, as the auth service sent
	}
	ctx.Response.SetBody(body)
	return false
}

// authUnavailable answers a request whose auth service could not be asked:
// 503, or through without identity when on_error allows it. Failures of
// the auth service never count against a backend.
func (s *Server) authUnavailable(ctx *fasthttp.RequestCtx, rt *route, fa *forwardAuth, err error) bool {
	st := &s.stats.Auth[1]
	if missed, ok := s.authLog.allow(); ok {
		s.log.Warn("auth service unavailable", zap.String("route", rt.path), zap.String("url", fa.url),
			zap.Bool("allowed", fa.allow), zap.Error(err), zap.Int64("missed", missed))
	}
	if fa.allow {
		st[authAllowed].Add(1)
		return true
	}
	st[authDenied].Add(1)
	refuse(ctx, fasthttp.StatusServiceUnavailable, "auth: the auth service is unavailable", 5)
	return false
}

// authRequestHeaders fills the auth service's request: the client's
// end-to-end headers but the identity's (hop-by-hop, Upgrade and the
// forwarding headers left out), the identity so far, and X-Forwarded-For,
// -Proto, -Host, -Method and -Uri.
func authRequestHeaders(out http.Header, req *fasthttp.Request, f *forwarded, id *identity) {
	h := &req.Header
	connection := h.PeekAll("Connection")
	for k, v := range h.All() {
		if skipHeader(k, connection) || id.dropped(k) || bytes.EqualFold(k, []byte("Host")) ||
			bytes.EqualFold(k, []byte("Content-Length")) {
			continue
		}
		out.Add(string(k), string(v))
	}
	for _, x := range id.set {
		out.Set(x.name, x.value)
	}
	xff := f.clientIP.Unmap().String()
	if f.trusted {
		if prior := joinedHeader(h, "X-Forwarded-For"); len(prior) > 0 {
			xff = string(prior) + ", " + xff
		}
	}
	out.Set("X-Forwarded-For", xff)
	proto := f.proto
	if v := h.Peek("X-Forwarded-Proto"); f.trusted && len(v) > 0 {
		proto = string(v)
	}
	out.Set("X-Forwarded-Proto", proto)
	out.Set("X-Forwarded-Host", string(f.host))
	out.Set("X-Forwarded-Method", string(h.Method()))
	out.Set("X-Forwarded-Uri", string(h.RequestURI()))
}
