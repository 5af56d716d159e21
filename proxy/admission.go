package proxy

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsproxy/wsproxy/config"
)

// Admission: which upgrade requests may become sessions.
//
// Every upgrade that passes validation takes a ticket before the proxy
// dials a backend, and gives it back when the handshake fails or the
// session ends. A ticket counts against the total (an atomic), the
// route's total (an atomic that survives reloads with the route's
// metrics) and, while a per-address cap is set, its client address's
// live sessions. The per-address handshake rate is a token bucket.
//
// Per-address state lives in a sharded table. An address's entry goes
// when it has no live session and its bucket has refilled; so the table
// holds at most the addresses with live sessions (bounded by the total
// cap) plus those that asked for upgrades within the last burst ÷ rate
// seconds, and rate-only entries beyond maxTrackedPerShard are not
// made: such addresses pass the rate check (counted in Stats), because
// refusing them would let a flood from many addresses lock everyone
// out.

// ipShards is the number of shards of the per-address table.
const ipShards = 64

// maxTrackedPerShard bounds the rate-only entries of a shard: about a
// million addresses in all, some 60 MiB at worst.
const maxTrackedPerShard = 1 << 20 / ipShards

// minSweep is the size below which a shard is not swept.
const minSweep = 256

// admissionLimits are one configuration's admission limits, in the form
// the handshake path reads.
type admissionLimits struct {
	maxSessions int64 // never 0
	// maxConnections caps client connections that are not sessions;
	// never 0.
	maxConnections int64
	perIP          int32   // 0: no cap
	rate           float64 // handshakes per second per address; 0: no limit
	burst          float64
	retryAfter     time.Duration
}

func newAdmissionLimits(a config.Admission, b fileBudget) admissionLimits {
	l := admissionLimits{
		perIP:      int32(min(a.MaxSessionsPerIP, math.MaxInt32)),
		rate:       a.HandshakesPerSecondPerIP,
		burst:      float64(a.HandshakeBurstPerIP),
		retryAfter: a.RetryAfter,
	}
	l.maxSessions, l.maxConnections = b.caps(a)
	if l.rate > 0 && l.burst == 0 {
		l.burst = math.Ceil(l.rate)
	}
	return l
}

// admission is the server's admission state, shared by every
// configuration generation.
type admission struct {
	total  atomic.Int64 // tickets out: live sessions and handshakes
	shards [ipShards]ipShard
}

type ipShard struct {
	mu      sync.Mutex
	m       map[netip.Addr]ipState
	sweepAt int
	_       [40]byte // one shard per cache line
}

// ipState is one client address's entry.
type ipState struct {
	sessions int32   // live tickets counted against max_sessions_per_ip
	tokens   float64 // the handshake bucket, as of last
	last     int64   // monoNow of the last bucket update; 0 if none
}

// idle reports whether the entry carries nothing: no counted session and
// a bucket that has refilled by now.
func (st *ipState) idle(l *admissionLimits, now int64) bool {
	if st.sessions > 0 {
		return false
	}
	return st.last == 0 || l.rate <= 0 || st.tokens+float64(now-st.last)*l.rate/1e9 >= l.burst
}

// ticket is an admitted upgrade's place under the caps. The zero ticket
// holds nothing.
type ticket struct {
	route *atomic.Int64 // the route's count; nil: no ticket
	ip    netip.Addr    // the address counted against max_sessions_per_ip, if valid
}

// refusal is an upgrade turned away by a limit.
type refusal struct {
	limit      limitKind
	status     int
	reason     string
	retryAfter int // seconds
}

// limitKind names the limit that refused an upgrade.
type limitKind int

const (
	limitSessions   limitKind = iota // admission.max_sessions
	limitRoute                       // a route's max_sessions
	limitIPSessions                  // admission.max_sessions_per_ip
	limitIPRate                      // admission.handshakes_per_second_per_ip
)

// limitLabels name the limits in metrics and logs.
var limitLabels = [...]string{"max_sessions", "route_max_sessions", "max_sessions_per_ip", "handshakes_per_second_per_ip"}

// ipKey is the address a client is counted under: IPv4, or the /64 of an
// IPv6 address, which a single host can fill with addresses.
func ipKey(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

func (a *admission) shard(key netip.Addr) *ipShard {
	b := key.As16()
	// The /64 network part varies most in the last bytes kept.
	h := uint(b[7]) ^ uint(b[15]) ^ uint(b[14])<<3 ^ uint(b[6])<<5
	return &a.shards[h%ipShards]
}

// admit takes a ticket for an upgrade of route rt from client, or
// returns why not.
func (s *Server) admit(l *admissionLimits, rt *route, client netip.Addr) (ticket, *refusal) {
	a := &s.admission
	var tk ticket
	if l.rate > 0 || l.perIP > 0 {
		key := ipKey(client)
		r, tracked := a.admitIP(l, key, monoNow())
		if r != nil {
			return ticket{}, r
		}
		if !tracked {
			s.stats.Untracked.Add(1)
		}
		if l.perIP > 0 {
			tk.ip = key
		}
	}
	if a.total.Add(1) > l.maxSessions {
		a.total.Add(-1)
		a.releaseIP(tk.ip)
		return ticket{}, &refusal{limitSessions, fasthttp.StatusServiceUnavailable, "proxy at its session limit", l.jitteredRetry()}
	}
	tk.route = &rt.metrics.admitted
	if n := tk.route.Add(1); rt.maxSessions > 0 && n > rt.maxSessions {
		a.release(&tk)
		return ticket{}, &refusal{limitRoute, fasthttp.StatusServiceUnavailable, "route at its session limit", l.jitteredRetry()}
	}
	return tk, nil
}

// admitIP applies the per-address rate and cap, counting a session
// against the cap when one is set. tracked is false when the table was
// too full to hold the address.
func (a *admission) admitIP(l *admissionLimits, key netip.Addr, now int64) (r *refusal, tracked bool) {
	sh := a.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m == nil {
		sh.m = make(map[netip.Addr]ipState)
		sh.sweepAt = minSweep
	}
	e, ok := sh.m[key]
	if !ok {
		if len(sh.m) >= sh.sweepAt {
			sh.sweep(l, now)
		}
		if l.perIP == 0 && len(sh.m) >= maxTrackedPerShard {
			return nil, false // see the comment at the top: it passes
		}
	}
	if l.rate > 0 {
		if e.last == 0 {
			e.tokens = l.burst
		} else {
			e.tokens = min(l.burst, e.tokens+float64(now-e.last)*l.rate/1e9)
		}
		e.last = now
		if e.tokens < 1 {
			sh.m[key] = e
			wait := int(math.Ceil((1 - e.tokens) / l.rate))
			return &refusal{limitIPRate, fasthttp.StatusTooManyRequests, "too many handshakes from this address", max(wait, 1)}, true
		}
		e.tokens--
	}
	if l.perIP > 0 {
		if e.sessions >= l.perIP {
			sh.m[key] = e
			return &refusal{limitIPSessions, fasthttp.StatusTooManyRequests, "too many sessions from this address", l.jitteredRetry()}, true
		}
		e.sessions++
	}
	sh.m[key] = e
	return nil, true
}

// sweep drops the entries that carry nothing and sets the next sweep at
// twice what is left, so sweeps cost O(1) per insert.
func (sh *ipShard) sweep(l *admissionLimits, now int64) {
	for k, e := range sh.m {
		if e.idle(l, now) {
			delete(sh.m, k)
		}
	}
	sh.sweepAt = max(minSweep, 2*len(sh.m))
}

// release gives a ticket back. It is safe to call on a ticket not held.
func (a *admission) release(tk *ticket) {
	if tk.route == nil {
		return
	}
	a.total.Add(-1)
	tk.route.Add(-1)
	a.releaseIP(tk.ip)
	*tk = ticket{}
}

// releaseIP gives back a session counted against key, if key is valid.
func (a *admission) releaseIP(key netip.Addr) {
	if !key.IsValid() {
		return
	}
	sh := a.shard(key)
	sh.mu.Lock()
	if e, ok := sh.m[key]; ok {
		e.sessions--
		if e.sessions <= 0 && e.last == 0 {
			delete(sh.m, key) // no bucket: nothing left to keep
		} else {
			sh.m[key] = e
		}
	}
	sh.mu.Unlock()
}

// tracked returns the number of addresses in the per-address table.
func (a *admission) tracked() int {
	n := 0
	for i := range a.shards {
		sh := &a.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// jitteredRetry is the Retry-After for a full cap, in seconds: between
// retry_after and twice that, so that refused clients spread out.
func (l *admissionLimits) jitteredRetry() int {
	base := l.retryAfter.Seconds()
	return int(math.Ceil(base * (1 + rand.Float64())))
}

// epoch anchors monoNow.
var epoch = time.Now()

// monoNow returns monotonic nanoseconds since process start, the clock of
// the admission buckets.
func monoNow() int64 { return int64(time.Since(epoch)) }
