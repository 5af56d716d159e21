package proxy

import (
	"io"
	"net"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/internal/poller"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (dialed, accepted net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	a := <-acc
	if a == nil {
		tb.Fatal("accept failed")
	}
	return d, a
}

// bareSession relays between two loopback pairs without a listener or a
// handshake: client -> [proxy] -> backend, for the relay's own costs.
func bareSession(tb testing.TB) (client, backend net.Conn, ss *session) {
	tb.Helper()
	return bareSessionWith(tb, &Limits{MaxMessageBytes: 1 << 20})
}

// bareSessionWith is bareSession with the given limits.
func bareSessionWith(tb testing.TB, limits *Limits) (client, backend net.Conn, ss *session) {
	tb.Helper()
	srv := &Server{log: zap.NewNop(), closeTimeout: time.Second}
	srv.table.Store(&table{})
	srv.sessions.init()
	p, err := poller.New()
	if err != nil {
		tb.Fatal(err)
	}
	client, proxyClient := tcpPair(tb)
	proxyBackend, backend := tcpPair(tb)
	ss, err = newSession(srv, proxyClient, proxyBackend)
	if err != nil {
		tb.Fatal(err)
	}
	ss.limits = limits
	ss.upstream = &balancer.Backend{Addr: "bench"}
	ss.closeTimeout = time.Second
	if err := ss.run(p); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ss.finish()
		client.Close()
		backend.Close()
		p.Close()
	})
	return client, backend, ss
}

// relayer feeds batches into the client end of a bare session from one
// goroutine, and reads them at the backend end.
type relayer struct {
	client, backend net.Conn
	batches         chan []byte
	errs            chan error
	sink            []byte
}

func newRelayer(tb testing.TB, client, backend net.Conn, max int) *relayer {
	r := &relayer{client: client, backend: backend, batches: make(chan []byte), errs: make(chan error, 1), sink: make([]byte, max)}
	go r.writeLoop()
	tb.Cleanup(func() { close(r.batches) })
	return r
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

func framesBatch(n, size int) []byte {
	return opBatch(n, wsframe.OpBinary, size)
}

func opBatch(n int, op byte, size int) []byte {
	var batch []byte
	for i := 0; i < n; i++ {
		batch = append(batch, clientFrame(true, op, make([]byte, size))...)
	}
	return batch
}

func TestRelayAllocatesNothingPerFrame(t *testing.T) {
	client, backend, _ := bareSession(t)
	small, large := framesBatch(10, 128), framesBatch(1000, 128)
	r := newRelayer(t, client, backend, len(large))
	r.relay(t, large) // warm the pools
	// A pump activation may cost an allocation (a goroutine, a pooled
	// buffer after a GC); a frame must cost none. Relaying 100 times the
	// frames must not cost more allocations.
	a1 := testing.AllocsPerRun(50, func() { r.relay(t, small) })
	a2 := testing.AllocsPerRun(50, func() { r.relay(t, large) })
	if perFrame := (a2 - a1) / 990; perFrame > 0.01 {
		t.Fatalf("%.4f allocations per relayed frame (%.1f per 10 frames, %.1f per 1000)", perFrame, a1, a2)
	}
}

// A client's ping costs a step of its control-frame budget, and no
// allocation either.
func TestRelayAllocatesNothingPerControlFrame(t *testing.T) {
	client, backend, _ := bareSessionWith(t, &Limits{MaxMessageBytes: 1 << 20, MaxControlFramesPerSecond: 1e9})
	small, large := opBatch(10, wsframe.OpPing, 125), opBatch(1000, wsframe.OpPing, 125)
	r := newRelayer(t, client, backend, len(large))
	r.relay(t, large)
	a1 := testing.AllocsPerRun(50, func() { r.relay(t, small) })
	a2 := testing.AllocsPerRun(50, func() { r.relay(t, large) })
	if perFrame := (a2 - a1) / 990; perFrame > 0.01 {
		t.Fatalf("%.4f allocations per relayed ping (%.1f per 10 pings, %.1f per 1000)", perFrame, a1, a2)
	}
}

func benchmarkRelay(b *testing.B, size int) {
	client, backend, _ := bareSession(b)
	const frames = 64
	batch := framesBatch(frames, size)
	r := newRelayer(b, client, backend, len(batch))
	b.SetBytes(int64(len(batch)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.relay(b, batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
}

func BenchmarkRelay128B(b *testing.B)  { benchmarkRelay(b, 128) }
func BenchmarkRelay16KiB(b *testing.B) { benchmarkRelay(b, 16<<10) }

// TestSessionSize keeps a session within the 1024-byte allocation size
// class: it is most of what an idle session holds, and the heap grows to
// twice what is live, so every byte over counts about twice in resident
// memory per idle session. The next class is 1152 bytes.
func TestSessionSize(t *testing.T) {
	if n := unsafe.Sizeof(session{}); n > 1024 {
		t.Fatalf("a session is %d bytes, over the 1024-byte size class: move what few sessions use behind a pointer", n)
	}
}
