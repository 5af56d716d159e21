package main

import (
	"runtime"
	"runtime/metrics"
	"testing"
)

var sink [][]byte

// TestTrimAfterSurge checks that a surge of allocations is not trimmed
// while it happens, and is returned to the OS in the quiet interval after.
func TestTrimAfterSurge(t *testing.T) {
	runtime.GC()
	tr := newTrimmer()
	// A surge: 64 MiB allocated, half of it kept for a while.
	for i := 0; i < 4096; i++ {
		b := make([]byte, 16<<10)
		if i%2 == 0 {
			sink = append(sink, b)
		}
	}
	sink = nil // the surge is over: all of it is garbage now
	if r, recent, ok := tr.check(); ok {
		t.Fatalf("trimmed during the surge (reclaimable %d, allocated %d)", r, recent)
	}
	r, recent, ok := tr.check()
	if !ok {
		t.Fatalf("not trimmed in the quiet interval after the surge (reclaimable %d, allocated %d)", r, recent)
	}
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	if free := s[0].Value.Uint64(); free >= minTrim {
		t.Fatalf("%d bytes of free heap kept after the trim", free)
	}
	// Nothing new to give back: the next interval does nothing.
	if r, recent, ok := tr.check(); ok {
		t.Fatalf("trimmed again with nothing to give back (reclaimable %d, allocated %d)", r, recent)
	}
}
