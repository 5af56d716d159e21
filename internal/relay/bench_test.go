package relay

import (
	"io"
	"net"
	"testing"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// relayer feeds batches into the client end of a rig from one goroutine,
// and reads them at the backend end.
type relayer struct {
	client, backend net.Conn
	batches         chan []byte
	errs            chan error
	sink            []byte
}

func newRelayer(tb testing.TB, r *rig, max int) *relayer {
	rl := &relayer{client: r.client.conn, backend: r.backend.conn, batches: make(chan []byte), errs: make(chan error, 1), sink: make([]byte, max)}
	go rl.writeLoop()
	tb.Cleanup(func() { close(rl.batches) })
	return rl
}

func (r *relayer) writeLoop() {
	for b := range r.batches {
		_, err := r.client.Write(b)
		r.errs <- err
	}
}

func (r *relayer) relay(tb testing.TB, batch []byte) {
	r.batches <- batch
	if _, err := io.ReadFull(r.backend, r.sink[:len(batch)]); err != nil {
		tb.Fatal(err)
	}
	if err := <-r.errs; err != nil {
		tb.Fatal(err)
	}
}

func opBatch(r *rig, n int, op byte, size int) []byte {
	var batch []byte
	for i := 0; i < n; i++ {
		batch = append(batch, r.client.frame(true, op, make([]byte, size))...)
	}
	return batch
}

func TestRelayAllocatesNothingPerFrame(t *testing.T) {
	r := newRig(t, &Limits{MaxMessageBytes: 1 << 20}, rigOpts{})
	small, large := opBatch(r, 10, wsframe.OpBinary, 128), opBatch(r, 1000, wsframe.OpBinary, 128)
	rl := newRelayer(t, r, len(large))
	rl.relay(t, large) // warm the pools
	// A pump activation may cost an allocation (a goroutine, a pooled
	// buffer after a GC); a frame must cost none. Relaying 100 times the
	// frames must not cost more allocations.
	a1 := testing.AllocsPerRun(50, func() { rl.relay(t, small) })
	a2 := testing.AllocsPerRun(50, func() { rl.relay(t, large) })
	if perFrame := (a2 - a1) / 990; perFrame > 0.01 {
		t.Fatalf("%.4f allocations per relayed frame (%.1f per 10 frames, %.1f per 1000)", perFrame, a1, a2)
	}
}

// A client's ping costs a step of its control-frame budget, and no
// allocation either.
func TestRelayAllocatesNothingPerControlFrame(t *testing.T) {
	r := newRig(t, &Limits{MaxMessageBytes: 1 << 20, MaxControlFramesPerSecond: 1e9}, rigOpts{})
	small, large := opBatch(r, 10, wsframe.OpPing, 125), opBatch(r, 1000, wsframe.OpPing, 125)
	rl := newRelayer(t, r, len(large))
	rl.relay(t, large)
	a1 := testing.AllocsPerRun(50, func() { rl.relay(t, small) })
	a2 := testing.AllocsPerRun(50, func() { rl.relay(t, large) })
	if perFrame := (a2 - a1) / 990; perFrame > 0.01 {
		t.Fatalf("%.4f allocations per relayed ping (%.1f per 10 pings, %.1f per 1000)", perFrame, a1, a2)
	}
}

func benchmarkRelay(b *testing.B, size int) {
	r := newRig(b, &Limits{MaxMessageBytes: 1 << 20}, rigOpts{})
	const frames = 64
	batch := opBatch(r, frames, wsframe.OpBinary, size)
	rl := newRelayer(b, r, len(batch))
	b.SetBytes(int64(len(batch)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rl.relay(b, batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
}

func BenchmarkRelay128B(b *testing.B)  { benchmarkRelay(b, 128) }
func BenchmarkRelay16KiB(b *testing.B) { benchmarkRelay(b, 16<<10) }
