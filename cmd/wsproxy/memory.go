package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"go.uber.org/zap"
)

// Returning memory after a surge.
//
// Go's collector lets the heap grow to twice its live data before it runs
// (GOGC=100), and its scavenger keeps free heap up to that goal. After a
// surge of new sessions that settle into idle ones, the process so keeps
// about as much free heap as the sessions hold, and nothing allocates
// enough to reuse it, nor to trigger the collection that would free the
// surge's garbage. trimMemory gives both back once the proxy is quiet: a
// full collection and release (about 25 ms of one core with 9,000 idle
// sessions), at most once per trimInterval, and only when what it would
// free is larger than what the last interval allocated (so it would not
// be reused soon) and worth the work.

// trimInterval is how often the heap is looked at.
const trimInterval = 10 * time.Second

// minTrim is what must be reclaimable for a trim to be worth it.
const minTrim = 4 << 20

// trimmer decides, one interval at a time, whether to trim.
type trimmer struct {
	samples    []metrics.Sample
	lastAllocs uint64
}

func newTrimmer() *trimmer {
	t := &trimmer{samples: []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/heap/live:bytes"},
	}}
	metrics.Read(t.samples)
	t.lastAllocs = t.samples[0].Value.Uint64()
	return t
}

// check ends an interval: it trims if the heap holds at least minTrim
// that a collection would give back and the interval allocated less. It
// returns what it found reclaimable, and whether it trimmed.
func (t *trimmer) check() (reclaimable, recent uint64, trimmed bool) {
	metrics.Read(t.samples)
	allocs, free := t.samples[0].Value.Uint64(), t.samples[1].Value.Uint64()
	objects, live := t.samples[2].Value.Uint64(), t.samples[3].Value.Uint64()
	recent = allocs - t.lastAllocs
	t.lastAllocs = allocs
	// The free heap, and the garbage among the objects since the last
	// collection.
	reclaimable = free
	if objects > live {
		reclaimable += objects - live
	}
	if reclaimable < minTrim || recent >= reclaimable {
		return reclaimable, recent, false
	}
	debug.FreeOSMemory()
	metrics.Read(t.samples)
	t.lastAllocs = t.samples[0].Value.Uint64()
	return reclaimable, recent, true
}

// trimMemory runs until ctx ends.
func trimMemory(ctx context.Context, log *zap.Logger) {
	t := newTrimmer()
	tick := time.NewTicker(trimInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		start := time.Now()
		if reclaimable, recent, ok := t.check(); ok {
			log.Debug("returned free heap to the OS", zap.Uint64("reclaimable_bytes", reclaimable),
				zap.Uint64("allocated_last_interval", recent), zap.Duration("took", time.Since(start)))
		}
	}
}
