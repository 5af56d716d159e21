package proxy

import (
	"context"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// Draining closes live sessions gracefully, spread over a window so that
// thousands of clients do not reconnect in the same second.
//
// Closing each session at a uniformly random moment is not even enough:
// with tens of sessions, one tenth of the window often holds more than a
// fifth of the closes. Instead the sessions, in random order, each get
// their own slot of the window and close at a random moment inside it. A
// rate limit widens the slots; whatever is left when the window ends is
// closed then.

// drainPlan is a batch of sessions to close.
type drainPlan struct {
	sessions []*session
	window   time.Duration
	rate     float64 // closes per second at most; 0 means no limit
	code     int     // Close code for the clients
	reason   string
}

// offsets returns when, after the start, each session of a plan of n
// closes: one per slot, jittered inside it, in order.
func (d *drainPlan) offsets(n int) []time.Duration {
	if n == 0 {
		return nil
	}
	slot := d.window / time.Duration(n)
	if d.rate > 0 {
		if minSlot := time.Duration(float64(time.Second) / d.rate); slot < minSlot {
			slot = minSlot
		}
	}
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(i)*slot + time.Duration(rand.Int64N(int64(max(slot, 1))))
		if out[i] > d.window {
			out[i] = d.window
		}
	}
	return out
}

// drain runs a plan: it closes each session at its moment, and the rest
// when the window ends or ctx is done. It returns when every close has
// been started.
func (s *Server) drain(ctx context.Context, d drainPlan) {
	if len(d.sessions) == 0 {
		return
	}
	rand.Shuffle(len(d.sessions), func(i, j int) { d.sessions[i], d.sessions[j] = d.sessions[j], d.sessions[i] })
	for _, ss := range d.sessions {
		ss.draining.Store(true)
	}
	s.stats.SessionsDraining.Add(int64(len(d.sessions)))
	defer s.stats.SessionsDraining.Add(-int64(len(d.sessions)))
	s.log.Info("draining sessions", zap.Int("sessions", len(d.sessions)),
		zap.Duration("window", d.window), zap.Float64("rate", d.rate), zap.String("reason", d.reason))
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for i, at := range d.offsets(len(d.sessions)) {
		if wait := time.Until(start.Add(at)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				for _, ss := range d.sessions[i:] {
					ss.drainClose(d.code, d.reason)
				}
				return
			}
		}
		d.sessions[i].drainClose(d.code, d.reason)
	}
}

// drainClose starts the closing handshake of a drained session: the
// client gets code (1001 going away, or 1012 service restart), the backend
// 1001. Messages already read are written before the Close frames.
func (ss *session) drainClose(code int, reason string) {
	if code == 0 {
		code = wsframe.CloseGoingAway
	}
	ss.closeWith(code, wsframe.CloseGoingAway, reason)
}
