package proxy

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/config"
)

// TestServeRacingShutdown: a Serve that starts as Shutdown runs returns,
// whichever of the two goes first: its listener is closed even when
// fasthttp's Shutdown ran before fasthttp knew of it.
func TestServeRacingShutdown(t *testing.T) {
	cfg, err := config.Parse("t.yaml", []byte(`
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: "127.0.0.1:1"}]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		srv, err := New(Config{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		started := make(chan struct{})
		go func() {
			close(started)
			served <- srv.Serve(ln)
		}()
		<-started
		// Shutdown a little later each round, so that some rounds land
		// between Serve's own registration and fasthttp's.
		for j := 0; j < i*20; j++ {
			runtime.Gosched()
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = srv.Shutdown(ctx)
		cancel()
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			ln.Close()
			t.Fatalf("round %d: Serve still accepting after Shutdown returned", i)
		}
	}
}
