package proxy

import (
	"crypto/hmac"
	crand "crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/config"
)

// Affinity cookies (routes[].affinity). The proxy names the backend that
// served a client in a cookie of its own, and sends the client's later
// requests there while that backend is available: Socket.IO, SockJS and
// Engine.IO clients poll and then upgrade on one session id, which only
// one backend knows.
//
// The cookie's value is a tag, HMAC-SHA256(key, pool, address) cut to
// tagLen bytes in unpadded base64url: it names the backend without
// showing its address, cannot be made without the key, and names it in
// one pool only, so a cookie of another route's pool reaches nothing
// here. Instances sharing a key_file agree on every tag. A tag is checked
// against every backend of the route's pool with a constant-time compare,
// none skipped.
//
// A request without a valid cookie is placed by the route's hash_key when
// it carries that key (a header, cookie, query parameter or path), and
// otherwise, the ip key among them, by a random key: behind a NAT or a
// load balancer that forwards no address every client has the same one,
// and hashing it would put them all on one backend. The cookie then
// keeps each client where the first pick put it. A client that keeps no
// cookies is placed anew by each such request.

// tagLen is the length of a tag in bytes: 128 bits.
const tagLen = 16

// affinityScope starts every tag's input, so that the key can serve
// nothing else by mistake.
const affinityScope = "wsproxy affinity v1\x00"

// processKey is the key of routes without key_file: random, made once per
// process, so that a reload keeps the cookies good.
var processKey = sync.OnceValue(func() []byte {
	k := make([]byte, 32)
	_, _ = crand.Read(k) // never fails
	return k
})

// affinity is a route's affinity cookie, built with its table.
type affinity struct {
	name    string
	entries []affinityEntry // one per backend of the route's pool
}

// affinityEntry is one backend of the pool and its cookie.
type affinityEntry struct {
	b    *balancer.Backend
	tag  [tagLen]byte
	open bool // a positive weight in this pool
	// setCookie is the Set-Cookie value: [0] without Secure, [1] with.
	setCookie [2]string
}

// affinityKeys reads the key of each route with affinity: its key_file's,
// or the process's.
func affinityKeys(routes []config.Route) ([][]byte, error) {
	keys := make([][]byte, len(routes))
	for i := range routes {
		a := routes[i].Affinity
		switch {
		case a == nil:
		case a.KeyFile == "":
			keys[i] = processKey()
		default:
			k, err := config.ReadAffinityKey(a.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("routes[%d].affinity.key_file: %w", i, err)
			}
			keys[i] = k
		}
	}
	return keys, nil
}

// newAffinity builds the affinity of a route on pool p, with key; nil when
// c is nil.
func newAffinity(c *config.Affinity, key []byte, routePath string, p *pool) *affinity {
	if c == nil {
		return nil
	}
	var attrs strings.Builder
	attrs.WriteString("; Path=")
	attrs.WriteString(routePath)
	if c.TTL > 0 {
		attrs.WriteString("; Max-Age=")
		attrs.WriteString(strconv.FormatInt(int64(c.TTL.Seconds()), 10))
	}
	if c.HTTPOnly {
		attrs.WriteString("; HttpOnly")
	}
	attrs.WriteString("; SameSite=")
	attrs.WriteString(strings.ToUpper(c.SameSite[:1]) + c.SameSite[1:])
	plain, secure := attrs.String(), attrs.String()+"; Secure"
	switch c.Secure {
	case config.SecureAlways:
		plain = secure
	case config.SecureNever:
		secure = plain
	}
	a := &affinity{name: c.Cookie}
	for _, b := range p.lb.Backends() {
		e := affinityEntry{b: b, open: p.weights[b.Addr] > 0}
		e.tag = affinityTag(key, p.name, b.Addr)
		v := c.Cookie + "=" + base64.RawURLEncoding.EncodeToString(e.tag[:])
		e.setCookie = [2]string{v + plain, v + secure}
		a.entries = append(a.entries, e)
	}
	return a
}

// affinityTag is the tag naming backend addr of pool under key.
func affinityTag(key []byte, pool, addr string) [tagLen]byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(affinityScope))
	m.Write([]byte(pool))
	m.Write([]byte{0})
	m.Write([]byte(addr))
	var tag [tagLen]byte
	copy(tag[:], m.Sum(nil))
	return tag
}

// affinityOutcome is what became of a request's affinity cookie.
type affinityOutcome int

const (
	affinityNone        affinityOutcome = iota // no cookie
	affinityHonoured                           // names an available backend of the pool
	affinityInvalid                            // malformed, forged, of another pool or of a backend no longer in it
	affinityUnavailable                        // names a backend of the pool that is down or draining
)

// affinityLabels are the outcomes' metric labels, by affinityOutcome.
var affinityLabels = [...]string{"absent", "honoured", "invalid", "unavailable"}

// lookup returns the backend a cookie value names, and the outcome.
func (a *affinity) lookup(v []byte) (*balancer.Backend, affinityOutcome) {
	if len(v) == 0 {
		return nil, affinityNone
	}
	var tag [tagLen]byte
	if len(v) != base64.RawURLEncoding.EncodedLen(tagLen) {
		return nil, affinityInvalid
	}
	if n, err := base64.RawURLEncoding.Decode(tag[:], v); err != nil || n != tagLen {
		return nil, affinityInvalid
	}
	found := -1
	for i := range a.entries {
		if subtle.ConstantTimeCompare(a.entries[i].tag[:], tag[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return nil, affinityInvalid
	}
	e := &a.entries[found]
	if !e.open || !e.b.Healthy() || e.b.Draining() {
		return nil, affinityUnavailable
	}
	return e.b, affinityHonoured
}

// choice is the backend-choice step's answer for a request: the key the
// hash picks by (and retries walk on from) and the backend a valid
// affinity cookie names.
type choice struct {
	key    uint64
	sticky *balancer.Backend // nil: no valid cookie
	aff    *affinity         // nil: the route has no affinity
}

// choose runs the backend-choice step: a valid affinity cookie first, else
// the route's hash_key; with affinity on, a request the key does not name
// (the ip key) is placed at random (see the top of this file).
func (s *Server) choose(req *fasthttp.Request, rt *route, clientIP netip.Addr) choice {
	c := choice{aff: rt.affinity}
	if c.aff == nil {
		c.key = rt.key.Hash(req, clientIP)
		return c
	}
	b, outcome := c.aff.lookup(req.Header.Cookie(c.aff.name))
	s.stats.Affinity[outcome].Add(1)
	c.sticky = b
	if rt.key.Names(req) {
		c.key = rt.key.Hash(req, clientIP)
	} else {
		c.key = rand.Uint64()
	}
	return c
}

// pickPlain is the backend of a plain request: the cookie's, else the
// unbounded hash's.
func (c *choice) pickPlain(lb *balancer.Pool) *balancer.Backend {
	if c.sticky != nil {
		return c.sticky
	}
	return lb.PickUnbounded(c.key)
}

// cookieFor returns the Set-Cookie value naming b when the client's
// cookie does not already name it, or "".
func (s *Server) cookieFor(c *choice, b *balancer.Backend, tls bool) string {
	if c.aff == nil || b == c.sticky {
		return ""
	}
	for i := range c.aff.entries {
		if e := &c.aff.entries[i]; e.b == b {
			s.stats.AffinitySet.Add(1)
			if tls {
				return e.setCookie[1]
			}
			return e.setCookie[0]
		}
	}
	return ""
}

// setAffinityCookie adds the cookie naming b to a plain response.
func (s *Server) setAffinityCookie(resp *fasthttp.ResponseHeader, c *choice, b *balancer.Backend, tls bool) {
	if v := s.cookieFor(c, b, tls); v != "" {
		resp.Add(fasthttp.HeaderSetCookie, v)
	}
}

// stampHead returns a backend's 101 head with the cookie naming b added
// before its blank line: the head is otherwise relayed as the backend
// sent it.
func (s *Server) stampHead(head []byte, c *choice, b *balancer.Backend, tls bool) []byte {
	v := s.cookieFor(c, b, tls)
	if v == "" || len(head) < 4 {
		return head
	}
	out := make([]byte, 0, len(head)+len("Set-Cookie: \r\n")+len(v))
	out = append(out, head[:len(head)-2]...)
	out = append(out, "Set-Cookie: "...)
	out = append(out, v...)
	return append(out, "\r\n\r\n"...)
}
