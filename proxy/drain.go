package proxy

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
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

// Between messages. Neither peer may send data after a Close (RFC 6455
// section 5.5.1), so a Close sent while a request or its answer is on its
// way loses it. A session that moved data in the last drainQuiet when its
// moment comes is closed at its first pause that long instead, at most
// drainQuietMax later. Past the window's end it waits only while ctx
// leaves twice as long for the closing handshakes.
const (
	drainQuiet    = 100 * time.Millisecond
	drainQuietMax = time.Second
)

// drain runs a plan that claim marked: it closes each session still
// marked for it at its moment (or at its next pause, see drainQuiet), and
// the rest when the window ends or ctx is done. Sessions reprieved, taken
// over by another plan or ended on their own are passed by without a
// wait. It returns when every close has been started.
func (s *Server) drain(ctx context.Context, d drainPlan) {
	if len(d.sessions) == 0 {
		return
	}
	rand.Shuffle(len(d.sessions), func(i, j int) { d.sessions[i], d.sessions[j] = d.sessions[j], d.sessions[i] })
	s.log.Info("draining sessions", zap.Int("sessions", len(d.sessions)),
		zap.Duration("window", d.window), zap.Float64("rate", d.rate), zap.String("reason", d.reason))
	start := time.Now()
	end := start.Add(d.window + drainQuietMax)
	if deadline, ok := ctx.Deadline(); ok {
		end = start.Add(d.window)
		if slack := deadline.Sub(end) / 2; slack > 0 {
			end = end.Add(min(slack, drainQuietMax))
		}
	}
	var busy sync.WaitGroup // sessions waiting for a pause
	defer busy.Wait()
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
		if !ss.Done() && ss.SinceData() < drainQuiet {
			until := time.Now().Add(drainQuietMax)
			if until.After(end) {
				until = end
			}
			busy.Add(1)
			go s.drainAtPause(ctx, &d, ss, until, &busy)
			continue
		}
		s.drainOne(&d, ss)
	}
}

// drainAtPause closes ss once no data has moved either way for
// drainQuiet, or at until, or when ctx is done.
func (s *Server) drainAtPause(ctx context.Context, d *drainPlan, ss *session, until time.Time, wg *sync.WaitGroup) {
	defer wg.Done()
	timer := time.NewTimer(drainQuiet)
	defer timer.Stop()
	for {
		quiet := ss.SinceData()
		left := time.Until(until)
		if quiet >= drainQuiet || left <= 0 || ss.Done() {
			break
		}
		timer.Reset(min(drainQuiet-quiet, left))
		select {
		case <-timer.C:
		case <-ctx.Done():
			s.drainOne(d, ss)
			return
		}
	}
	s.drainOne(d, ss)
}

// drainPlans are the plans of one drain decision, one per pool, so that
// each keeps to its pool's drain rate.
type drainPlans map[string]*drainPlan

// add puts ss in the plan of its pool, paced by that pool's drain rate in
// t (the table the decision was made against).
func (p drainPlans) add(ss *session, t *table, reason string) {
	d := p[ss.pool]
	if d == nil {
		d = &drainPlan{window: ss.limits.DrainTimeout, code: ss.limits.DrainCloseCode, reason: reason}
		if pl := t.pools[ss.pool]; pl != nil {
			d.rate = pl.drainRate
		}
		p[ss.pool] = d
	}
	d.sessions = append(d.sessions, ss)
}

// startDrains claims the sessions of each plan and runs the plans in the
// background. It returns how many sessions they drain. The caller holds
// s.drainMu.
func (s *Server) startDrains(plans drainPlans) int {
	n := 0
	for _, d := range plans {
		s.claim(d, false)
		n += len(d.sessions)
		s.drains.Add(1)
		go s.drainInBackground(*d)
	}
	return n
}

// ErrUnknownBackend is returned for an address no pool lists.
var ErrUnknownBackend = errors.New("no pool lists this backend")

// DrainBackend takes the backend at addr out of every pool that lists it
// without a config change: it gets no new sessions, and its live sessions
// are drained as on scale-down (spread over their drain timeout, at most
// their pool's drain rate). The mark survives reloads until
// UndrainBackend. It returns the number of sessions being drained.
func (s *Server) DrainBackend(addr string) (int, error) {
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	t := s.table.Load()
	if !t.lists(addr) {
		return 0, ErrUnknownBackend
	}
	s.backends.Get(addr).SetDraining(true)
	plans := drainPlans{}
	s.sessions.each(func(ss *session) {
		if ss.upstream.Addr == addr && ss.drainedBy.Load() == 0 {
			plans.add(ss, t, "backend drained")
		}
	})
	return s.startDrains(plans), nil
}

// UndrainBackend lets the backend at addr take new sessions again. Its
// sessions still waiting for their drain close stay open (unless a reload
// drains them too); those already closed stay closed.
func (s *Server) UndrainBackend(addr string) error {
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	t := s.table.Load()
	if !t.lists(addr) {
		return ErrUnknownBackend
	}
	s.backends.Get(addr).SetDraining(false)
	reprieved := 0
	s.sessions.each(func(ss *session) {
		if ss.upstream.Addr == addr && !s.stopping.Load() && t.keeps(ss) && s.reprieve(ss) {
			reprieved++
		}
	})
	if reprieved > 0 {
		s.log.Info("drain called off: backend undrained", zap.String("backend", addr), zap.Int("sessions", reprieved))
	}
	return nil
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
