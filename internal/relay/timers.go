package relay

import (
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// minTick keeps a session's timer from spinning.
const minTick = 5 * time.Millisecond

// tick runs the session's timeouts and pings. Its timer is the session's
// only one: it is set for the nearest deadline, never per frame.
func (s *Session) tick() {
	if s.done.Load() {
		return
	}
	now := monoNow()
	if s.closing.Load() {
		if now >= s.closeDeadline.Load() {
			s.finish()
			return
		}
	} else {
		s.checkTimeouts(now)
	}
	if !s.done.Load() {
		s.timer.Reset(s.nextTick(monoNow()))
	}
}

// checkTimeouts closes the session on a read or idle timeout, or pings
// the silent sides.
func (s *Session) checkTimeouts(now int64) {
	if d := s.deadline; d != nil && now >= d.at {
		s.hooks.Timeout(Deadline)
		s.Close(d.code, d.code, d.reason)
		return
	}
	l := s.limits
	for _, x := range []*side{&s.client, &s.backend} {
		if l.ReadTimeout > 0 && now-x.lastRead.Load() >= int64(l.ReadTimeout) {
			s.hooks.Timeout(ReadTimeout)
			s.Close(wsframe.CloseGoingAway, wsframe.CloseGoingAway, "read timeout: nothing from the "+x.kind.String())
			return
		}
	}
	if l.IdleTimeout > 0 && now-s.lastData.Load() >= int64(l.IdleTimeout) {
		s.hooks.Timeout(IdleTimeout)
		s.Close(wsframe.CloseGoingAway, wsframe.CloseGoingAway, "idle timeout")
		return
	}
	if l.PingInterval > 0 {
		pi := int64(l.PingInterval)
		for _, x := range []*side{&s.client, &s.backend} {
			if now-x.lastRead.Load() >= pi && now-x.lastPing.Load() >= pi {
				s.ping(x, now)
			}
		}
	}
}

// nextTick returns how long until the session's next deadline.
func (s *Session) nextTick(now int64) time.Duration {
	if s.closing.Load() {
		return max(time.Duration(s.closeDeadline.Load()-now), minTick)
	}
	next := int64(1<<62 - 1)
	if s.deadline != nil {
		next = s.deadline.at
	}
	l := s.limits
	for _, x := range []*side{&s.client, &s.backend} {
		lr := x.lastRead.Load()
		if l.ReadTimeout > 0 {
			next = min(next, lr+int64(l.ReadTimeout))
		}
		if l.PingInterval > 0 {
			next = min(next, max(lr, x.lastPing.Load())+int64(l.PingInterval))
		}
	}
	if l.IdleTimeout > 0 {
		next = min(next, s.lastData.Load()+int64(l.IdleTimeout))
	}
	return max(time.Duration(next-now), minTick)
}
