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
//
// A drain can be called off for some of its sessions: a reload that puts
// their backend back in their pool, or an undrain of their backend,
// clears their mark before their moment comes, and the plan passes them
// by. Each session records the plan that is to close it (drainedBy), so a
// session reprieved and then drained again by a newer plan is closed by
// that one only. Server.drainMu serialises marking and reprieving.

// drainClosing is session.drainedBy once its drain close has begun: it
// can no longer be reprieved.
const drainClosing = ^uint32(0)

// drainPlan is a batch of sessions to close.
type drainPlan struct {
	id       uint32 // set by claim; what drainedBy holds for its sessions
	sessions []*session
	window   time.Duration
	rate     float64 // closes per second at most; 0 means no limit
	code     int     // Close code for the clients
	reason   string
}

// claim marks the sessions of d as d's to close, and leaves out those
// already closing and, unless takeOver (shutdown), those another plan
// will close. The caller holds s.drainMu.
func (s *Server) claim(d *drainPlan, takeOver bool) {
	d.id = s.drainSeq.Add(1)
	for d.id == 0 || d.id == drainClosing {
		d.id = s.drainSeq.Add(1)
	}
	kept := d.sessions[:0]
	for _, ss := range d.sessions {
		for {
			cur := ss.drainedBy.Load()
			if cur == drainClosing || cur != 0 && !takeOver {
				break
			}
			if ss.drainedBy.CompareAndSwap(cur, d.id) {
				if cur == 0 {
					s.stats.SessionsDraining.Add(1)
				}
				kept = append(kept, ss)
				break
			}
		}
	}
	d.sessions = kept
}

// reprieve calls off the drain of ss if its close has not begun, and
// reports whether it did. The caller holds s.drainMu.
func (s *Server) reprieve(ss *session) bool {
	cur := ss.drainedBy.Load()
	if cur == 0 || cur == drainClosing || !ss.drainedBy.CompareAndSwap(cur, 0) {
		return false
	}
	s.stats.SessionsDraining.Add(-1)
	return true
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

// drain runs a plan that claim marked: it closes each session still
// marked for it at its moment, and the rest when the window ends or ctx is
// done. Sessions reprieved, taken over by another plan or ended on their
// own are passed by without a wait. It returns when every close has been
// started.
func (s *Server) drain(ctx context.Context, d drainPlan) {
	if len(d.sessions) == 0 {
		return
	}
	rand.Shuffle(len(d.sessions), func(i, j int) { d.sessions[i], d.sessions[j] = d.sessions[j], d.sessions[i] })
	s.log.Info("draining sessions", zap.Int("sessions", len(d.sessions)),
		zap.Duration("window", d.window), zap.Float64("rate", d.rate), zap.String("reason", d.reason))
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for i, at := range d.offsets(len(d.sessions)) {
		ss := d.sessions[i]
		if ss.drainedBy.Load() != d.id {
			continue
		}
		if wait := time.Until(start.Add(at)); wait > 0 && !ss.Done() {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				for _, ss := range d.sessions[i:] {
					s.drainOne(&d, ss)
				}
				return
			}
		}
		s.drainOne(&d, ss)
	}
}

// drainIfRemoved drains a session that has just registered if a reload
// took its backend, route or pool away while its handshake was in flight:
// that reload looked at the live sessions before this one was among them.
// The common case costs one table lookup and takes no lock.
func (s *Server) drainIfRemoved(ss *session) {
	if s.table.Load().keeps(ss) {
		return
	}
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	if s.stopping.Load() || ss.drainedBy.Load() != 0 || s.table.Load().keeps(ss) {
		return
	}
	d := &drainPlan{sessions: []*session{ss}, window: ss.limits.DrainTimeout, code: ss.limits.DrainCloseCode, reason: "backend removed"}
	s.claim(d, false)
	s.drains.Add(1)
	go s.drainInBackground(*d)
}

// drainOne closes ss unless it is no longer d's to close.
func (s *Server) drainOne(d *drainPlan, ss *session) {
	if !ss.drainedBy.CompareAndSwap(d.id, drainClosing) {
		return
	}
	s.stats.SessionsDraining.Add(-1)
	ss.drainClose(d.code, d.reason)
}

// drainClose starts the closing handshake of a drained session: the
// client gets code (1001 going away, or 1012 service restart), the backend
// 1001. Messages already read are written before the Close frames.
func (ss *session) drainClose(code int, reason string) {
	if code == 0 {
		code = wsframe.CloseGoingAway
	}
	ss.Close(code, wsframe.CloseGoingAway, reason)
}
