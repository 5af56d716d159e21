package health

import (
	"context"
	"errors"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// checkerKey identifies a checker: one per backend of each pool.
type checkerKey struct{ pool, addr string }

// checker runs the active checks of one backend of one pool and keeps its
// verdict. Its address is up when every checker of the address says so.
type checker struct {
	m      *Manager
	key    checkerKey
	spec   Spec // defaults applied
	prober *prober
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine returned
	wake   chan struct{} // passive trip, for TypeNone checkers; capacity 1

	// Guarded by m.mu.
	up        bool
	successes int  // in a row, counted while down
	failures  int  // in a row, counted while up
	stopped   bool // removed by Update: results are dropped
}

func newChecker(m *Manager, key checkerKey, spec Spec, up bool) *checker {
	return &checker{
		m:      m,
		key:    key,
		spec:   spec,
		prober: newProber(key.addr, spec),
		done:   make(chan struct{}),
		wake:   make(chan struct{}, 1),
		up:     up,
	}
}

// run is the checker's goroutine.
func (c *checker) run(ctx context.Context) {
	defer c.m.wg.Done()
	defer close(c.done)
	if c.spec.Type == TypeNone {
		c.recoveryLoop(ctx)
	} else {
		c.checkLoop(ctx)
	}
}

// checkLoop probes at once, then every jittered interval after the end of
// the previous probe, until ctx is done.
func (c *checker) checkLoop(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.probeOnce(ctx)
		t.Reset(jitter(c.spec.Interval))
	}
}

// recoveryLoop serves backends with no active check: idle while the
// backend is up; once a passive trip took it down, a tcp probe every
// jittered interval until HealthyThreshold of them succeed in a row.
func (c *checker) recoveryLoop(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		select { // a trip seen below makes an older wake-up stale
		case <-c.wake:
		default:
		}
		if c.m.verdict(c) {
			select {
			case <-ctx.Done():
				return
			case <-c.wake:
			}
		}
		t.Reset(jitter(c.spec.Interval))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.probeOnce(ctx)
	}
}

// probeOnce runs one probe and records its outcome, unless ctx ended
// meanwhile.
func (c *checker) probeOnce(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, c.spec.Timeout)
	err := c.prober.probe(pctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	if localShortage(err) {
		// The probe could not open a connection: that says nothing
		// about the backend, so it is no verdict.
		if ce := c.m.log.Check(zap.DebugLevel, "health probe skipped: out of local descriptors, memory or ports"); ce != nil {
			ce.Write(zap.String("pool", c.key.pool), zap.String("backend", c.key.addr), zap.Error(err))
		}
		return
	}
	if err != nil {
		if ce := c.m.log.Check(zap.DebugLevel, "health probe failed"); ce != nil {
			ce.Write(zap.String("pool", c.key.pool), zap.String("backend", c.key.addr),
				zap.String("check", string(c.prober.kind)), zap.Error(err))
		}
	}
	if h := c.m.probed; h != nil {
		h(c.key.pool, c.key.addr, err)
	}
	c.m.record(c, err)
}

// wakeUp tells a TypeNone checker that its backend was taken out.
func (c *checker) wakeUp() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// localShortage reports whether err is the proxy's own lack of
// descriptors, kernel memory or local ports rather than anything the
// backend did: the errors the proxy does not hold against a backend
// either.
func localShortage(err error) bool {
	for _, e := range [...]syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
