package relay

import (
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/poller"
	"golang.org/x/sys/unix"

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

// benchmarkRelay relays batches of frames of size bytes from the client
// to the backend, over Conn and over bare sides.
func benchmarkRelay(b *testing.B, frames, size int) {
	for _, sd := range []sides{connSides, fdSides} {
		b.Run(sd.String(), func(b *testing.B) {
			r := newRig(b, &Limits{MaxMessageBytes: 1 << 20}, rigOpts{sides: sd})
			batch := opBatch(r, frames, wsframe.OpBinary, size)
			rl := newRelayer(b, r, len(batch))
			b.SetBytes(int64(len(batch)))
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime(b)
			for i := 0; i < b.N; i++ {
				rl.relay(b, batch)
			}
			// The process's CPU time, the test's ends included, tells
			// less of the machine's other load than the elapsed time.
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N*frames), "cpu-ns/frame")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
		})
	}
}

func BenchmarkRelay128B(b *testing.B)  { benchmarkRelay(b, 64, 128) }
func BenchmarkRelay16KiB(b *testing.B) { benchmarkRelay(b, 64, 16<<10) }

// BenchmarkRelayMessage128B relays one frame at a time: a read and a
// write on the relay's side per frame, as for interactive traffic.
func BenchmarkRelayMessage128B(b *testing.B) { benchmarkRelay(b, 1, 128) }

// idleSessions is how many sessions BenchmarkIdleSessionMemory opens: four
// descriptors each, under this machine's open-files cap of 20,000.
const idleSessions = 4000

// BenchmarkIdleSessionMemory reports what an idle session costs the Go
// heap (live after a GC, and in use before it) and the process's RSS, 2 s
// after idleSessions sessions opened, over Conn and over bare sides. The
// test's ends are bare descriptors, which cost the heap nothing. It runs
// once whatever b.N: use -benchtime=1x.
func BenchmarkIdleSessionMemory(b *testing.B) {
	for _, sd := range []sides{connSides, fdSides} {
		b.Run(sd.String(), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				measureIdleSessions(b, sd)
			}
		})
	}
}

func measureIdleSessions(b *testing.B, sd sides) {
	p, err := poller.New()
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	ln, port := rawListener(b)
	defer unix.Close(ln)
	limits := &Limits{MaxMessageBytes: 1 << 20, PingInterval: time.Hour}
	hooks := make([]*recorder, 0, idleSessions)
	sessions := make([]*Session, 0, idleSessions)
	peers := make([]int, 0, 2*idleSessions)
	defer func() {
		for _, s := range sessions {
			s.Finish()
		}
		for _, h := range hooks {
			<-h.ended
		}
		for _, fd := range peers {
			unix.Close(fd)
		}
	}()
	runtime.GC()
	before, rssBefore := heapStats(), rss(b)
	for i := 0; i < idleSessions; i++ {
		var eps [2]Endpoint
		for k := range eps {
			fd, peer := rawTCPPair(b, ln, port)
			peers = append(peers, peer)
			eps[k] = Endpoint{FD: fd}
			if sd == connSides {
				f := os.NewFile(uintptr(fd), "")
				c, err := net.FileConn(f) // a dup of fd
				f.Close()
				if err != nil {
					b.Fatal(err)
				}
				eps[k] = Endpoint{Conn: c}
			}
		}
		h := newRecorder()
		s := new(Session)
		if err := s.InitEndpoints(eps[0], eps[1], &Options{Limits: limits, Hooks: h}); err != nil {
			b.Fatal(err)
		}
		if err := s.Start(p); err != nil {
			b.Fatal(err)
		}
		sessions, hooks = append(sessions, s), append(hooks, h)
	}
	time.Sleep(2 * time.Second) // what is measured: memory 2 s after opening
	inUse, rssAfter := heapStats(), rss(b)
	runtime.GC()
	live := heapStats()
	n := float64(idleSessions)
	b.ReportMetric(float64(live.HeapAlloc-before.HeapAlloc)/n, "live-B/session")
	b.ReportMetric(float64(inUse.HeapInuse-before.HeapInuse)/n, "inuse-B/session")
	b.ReportMetric(float64(rssAfter-rssBefore)/n, "rss-B/session")
	b.ReportMetric(float64(runtime.NumGoroutine()), "goroutines")
}

// cpuTime is the process's user and system CPU time so far, in ns.
func cpuTime(tb testing.TB) int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func heapStats() runtime.MemStats {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

// rss is the process's resident set in bytes.
func rss(tb testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(b))
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// rawListener is a listening TCP socket on loopback, and its port.
func rawListener(tb testing.TB) (fd, port int) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		tb.Fatal(err)
	}
	if err := unix.Listen(fd, 1024); err != nil {
		tb.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		tb.Fatal(err)
	}
	return fd, sa.(*unix.SockaddrInet4).Port
}

// rawTCPPair connects to ln: the accepted end is non-blocking, for the
// relay; the dialed end is the test's.
func rawTCPPair(tb testing.TB, ln, port int) (relayEnd, testEnd int) {
	testEnd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Connect(testEnd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		tb.Fatal(err)
	}
	relayEnd, _, err = unix.Accept4(ln, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		tb.Fatal(err)
	}
	return relayEnd, testEnd
}
