package proxy

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

const pauseConfig = `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {ping_interval: 0s, drain_close_code: 1012}
routes:
  - {path: /, pool: p}
pools:
  p:
    backends: [{address: "{{B0}}"}]
`

// pacedClient sends a message, waits for its echo, pauses, and so on,
// and sends nothing once it has read a Close: the traffic of a chat or a
// request/response protocol.
type pacedClient struct {
	user           string
	sent, answered atomic.Int64
	lastSent       atomic.Int64 // unix ns
	code           int
	closedAt       time.Time
	done           chan struct{}
}

func (pc *pacedClient) run(c *websocket.Conn, pause time.Duration) {
	defer close(pc.done)
	defer c.Close()
	echoed, closed, wrote := make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(wrote)
		for seq := 0; ; seq++ {
			select {
			case <-closed:
				return
			default:
			}
			if c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf("%s#%d", pc.user, seq))) != nil {
				return
			}
			pc.sent.Add(1)
			pc.lastSent.Store(time.Now().UnixNano())
			select {
			case <-echoed:
			case <-closed:
				return
			}
			select {
			case <-time.After(pause):
			case <-closed:
				return
			}
		}
	}()
	for {
		_, _, err := c.ReadMessage()
		if err != nil {
			pc.closedAt = time.Now()
			pc.code, _ = closeCode(err)
			close(closed)
			<-wrote
			return
		}
		pc.answered.Add(1)
		echoed <- struct{}{}
	}
}

// A drained session is closed at a pause in its traffic: every message
// the backend got from a paced client comes back before the Close, where
// a Close sent at a random moment loses the answer of an exchange in
// flight (here a tenth of the time: the backend takes 20 ms to answer). A session that never pauses is still closed within the window
// and a second.
func TestDrainClosesAtPauses(t *testing.T) {
	const clients = 60
	var mu sync.Mutex
	got := map[string]int{} // messages the backend read, by user
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onConn = func(c *websocket.Conn, _ *fasthttp.RequestCtx) {
			for {
				mt, msg, err := c.ReadMessage()
				if err != nil {
					return
				}
				user, _, _ := strings.Cut(string(msg), "#")
				mu.Lock()
				got[user]++
				mu.Unlock()
				if user != "stream" {
					time.Sleep(20 * time.Millisecond) // the backend's think time: an answer is on its way this long
				}
				if c.WriteMessage(mt, msg) != nil {
					return
				}
			}
		}
	})
	p := startProxy(t, pauseConfig, b.addr())
	var all []*pacedClient
	for i := 0; i < clients; i++ {
		pc := &pacedClient{user: fmt.Sprintf("u%d", i), done: make(chan struct{})}
		all = append(all, pc)
		go pc.run(dial(t, p.url("/"), nil), 200*time.Millisecond)
	}
	// One session streams without a pause.
	stream := dial(t, p.url("/"), nil)
	streamDone := make(chan struct{})
	var streamCode int
	go func() {
		defer close(streamDone)
		for {
			if _, _, err := stream.ReadMessage(); err != nil {
				streamCode, _ = closeCode(err)
				return
			}
		}
	}()
	stopStream := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopStream:
				return
			default:
			}
			if stream.WriteMessage(websocket.TextMessage, []byte("stream#x")) != nil {
				return
			}
			time.Sleep(2 * time.Millisecond) // the pace of the stream, not a synchronisation
		}
	}()
	defer close(stopStream)
	p.waitSessions(t, clients+1)
	waitFor(t, "every client answered", func() bool {
		for _, pc := range all {
			if pc.answered.Load() < 1 {
				return false
			}
		}
		return true
	})

	const drain = 2 * time.Second
	ctx, cancel := contextWithTimeout(drain)
	defer cancel()
	start := time.Now()
	go p.srv.Shutdown(ctx)
	select {
	case <-streamDone:
	case <-time.After(drain + time.Second):
		t.Fatal("the streaming session was not closed")
	}
	if streamCode != 1012 || time.Since(start) > drain {
		t.Errorf("streaming session: Close %d after %v, want 1012 within %v", streamCode, time.Since(start), drain)
	}
	lost, crossed := 0, 0
	for _, pc := range all {
		<-pc.done
		mu.Lock()
		n := int(got[pc.user])
		mu.Unlock()
		sent, echoed := int(pc.sent.Load()), int(pc.answered.Load())
		sinceSent := pc.closedAt.Sub(time.Unix(0, pc.lastSent.Load()))
		switch {
		case pc.code != 1012:
			t.Errorf("%s: Close %d, want 1012", pc.user, pc.code)
		case echoed < n:
			lost += n - echoed
			t.Errorf("%s: the backend got %d messages, %d came back before the Close", pc.user, n, echoed)
		case sent == n+1 && sinceSent < 100*time.Millisecond:
			crossed++ // sent as the Close was on its way: the proxy must drop it
		case sent != n:
			t.Errorf("%s: sent %d, the backend got %d", pc.user, sent, n)
		}
	}
	t.Logf("%d paced sessions drained, %d messages lost, %d crossed the Close", clients, lost, crossed)
	<-p.done
}
