package relay

import (
	"testing"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// BenchmarkRelayParse walks 64 masked 128-byte client frames toward a gone
// backend: the parse, checks and bookkeeping of each frame, no syscall.
func BenchmarkRelayParse(b *testing.B) {
	s := &Session{limits: &Limits{MaxMessageBytes: 1 << 20}, hooks: noHooks{}}
	s.client = side{s: s, kind: Client, peer: &s.backend}
	s.backend = side{s: s, kind: Backend, peer: &s.client}
	s.backend.close.set(sideGone)
	buf := make([]byte, headroom, headroom+readSize)
	mask := [4]byte{1, 2, 3, 4}
	for i := 0; i < 64; i++ {
		buf = wsframe.AppendHeader(buf, true, wsframe.OpBinary, &mask, 128)
		buf = append(buf, make([]byte, 128)...)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		s.client.relay(buf, headroom, len(buf))
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/frame")
}
