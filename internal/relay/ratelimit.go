package relay

import "math"

// messageLimiter is a side's message rate limit: a token bucket of burst
// messages refilled at rate per second. Only sessions with a limit carry
// one.
type messageLimiter struct {
	rate, burst, tokens float64
	at                  int64 // monotonic ns of the last refill
}

// limitRate sets x's message rate limit: perSecond messages on average,
// burst at once (0: perSecond rounded up).
func (x *side) limitRate(perSecond float64, burst int) {
	if perSecond <= 0 {
		return
	}
	l := &messageLimiter{rate: perSecond, burst: float64(burst), at: monoNow()}
	if burst <= 0 {
		l.burst = math.Ceil(perSecond)
	}
	l.tokens = l.burst
	x.lim = l
}

// allow takes a token for a new message read at now (monotonic ns).
func (l *messageLimiter) allow(now int64) bool {
	if el := now - l.at; el > 0 {
		l.tokens = min(l.burst, l.tokens+float64(el)*l.rate/1e9)
		l.at = now
	}
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// allowControl takes from the client's control-frame budget for a ping, or
// a pong that answers no relay ping, read at now (monotonic ns). The
// budget is a token bucket of MaxControlFramesPerSecond with a burst of
// twice that, kept as the generic cell rate algorithm does in one number:
// the time at which the bucket would be full again.
func (s *Session) allowControl(now int64) bool {
	rate := s.limits.MaxControlFramesPerSecond
	if rate <= 0 {
		return true
	}
	interval := int64(1e9 / rate)
	tolerance := int64(controlBurst(rate)-1) * interval
	tat := max(s.ctrlTAT, now)
	if tat-now > tolerance {
		return false
	}
	s.ctrlTAT = tat + interval
	return true
}

// controlBurst is how many control frames a client may send at once at a
// control-frame rate: twice the rate, at least one.
func controlBurst(rate float64) float64 { return max(1, math.Ceil(2*rate)) }
