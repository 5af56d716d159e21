package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsproxy/wsproxy/internal/testpki"
)

// nodeBackend is an HTTP and WebSocket backend that behaves like a Node.js
// http server in the ways a proxy in front of one meets: it closes a
// keep-alive connection silently once it sat idle for keepAlive (Node's
// server.keepAliveTimeout, 5 s by default) and says so in a Keep-Alive
// response header, speaks HTTP/1.1 only, and its WebSocket endpoint
// negotiates a subprotocol and permessage-deflate.
//
//	GET /             a small page
//	POST /upload      reads the body; answers "<sha256 hex> <length>"
//	GET /download?n=&over=  n bytes of the stream, spread over `over`
//	GET /sse?n=&every= n Server-Sent Events, one every `every`
//	GET /poll?hold=   silent for hold, then "held <hold>"
//	GET /ws           WebSocket echo, subprotocol chat.v1, permessage-deflate
type nodeBackend struct {
	addr string
	srv  *http.Server

	open         atomic.Int64 // HTTP connections open and not hijacked
	idleNow      atomic.Int64 // keep-alive connections idle right now
	idleClosed   atomic.Int64 // keep-alive connections closed while idle, by either side
	idleTimedOut atomic.Int64 // of which idle for the keep-alive timeout: closed by the backend
	connEvents   chan struct{}
	uploadsOK    atomic.Int64
	uploadsCut   atomic.Int64 // uploads whose body ended before its length
	uploadEvents chan struct{}
}

// wsSubprotocol is the subprotocol the backend's WebSocket endpoint speaks.
const wsSubprotocol = "chat.v1"

// startNodeBackend starts the backend on loopback, over TLS when leaf is
// not nil.
func startNodeBackend(t *testing.T, keepAlive time.Duration, leaf *testpki.Leaf) *nodeBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &nodeBackend{addr: ln.Addr().String(), uploadEvents: make(chan struct{}, 1), connEvents: make(chan struct{}, 1)}
	var idle sync.Map // net.Conn -> time.Time it went idle
	b.srv = &http.Server{
		Handler:     b.routes(keepAlive),
		IdleTimeout: keepAlive,
		// Node does not speak h2 on http.createServer/https.createServer.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ConnState: func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				b.open.Add(1)
			case http.StateHijacked:
				b.open.Add(-1)
			case http.StateIdle:
				idle.Store(c, time.Now())
				b.idleNow.Add(1)
			case http.StateActive:
				if _, was := idle.LoadAndDelete(c); was {
					b.idleNow.Add(-1)
				}
			case http.StateClosed:
				if since, was := idle.LoadAndDelete(c); was {
					if time.Since(since.(time.Time)) >= keepAlive-keepAlive/10 {
						b.idleTimedOut.Add(1)
					}
					b.idleClosed.Add(1)
					b.idleNow.Add(-1)
				}
				b.open.Add(-1)
			}
			notify(b.connEvents)
		},
		ErrorLog: nil,
	}
	if leaf != nil {
		cert, err := tls.LoadX509KeyPair(leaf.CertFile, leaf.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		b.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
		ln = tls.NewListener(ln, b.srv.TLSConfig)
	}
	go b.srv.Serve(ln) //nolint:errcheck
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func (b *nodeBackend) routes(keepAlive time.Duration) http.Handler {
	mux := http.NewServeMux()
	ka := fmt.Sprintf("timeout=%d", int(keepAlive.Seconds()+0.5))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Keep-Alive", ka)
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, pageBody)
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		buf := make([]byte, 1<<20)
		n, err := io.CopyBuffer(h, r.Body, buf)
		if err == nil && r.ContentLength >= 0 && n != r.ContentLength {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			b.uploadsCut.Add(1)
			notify(b.uploadEvents)
			http.Error(w, fmt.Sprintf("body cut after %d bytes: %v", n, err), http.StatusBadRequest)
			return
		}
		b.uploadsOK.Add(1)
		notify(b.uploadEvents)
		w.Header().Set("Keep-Alive", ka)
		fmt.Fprintf(w, "%s %d", hex.EncodeToString(h.Sum(nil)), n)
	})
	mux.HandleFunc("GET /download", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		over, _ := time.ParseDuration(r.URL.Query().Get("over"))
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		// The bytes flow evenly over `over`: a steady stream, never a
		// pause, that lasts as long as a slow network would make it.
		buf := make([]byte, 1<<20)
		src := io.LimitReader(newStream(), n)
		start := time.Now()
		for sent := int64(0); sent < n; {
			if over > 0 {
				time.Sleep(time.Until(start.Add(time.Duration(float64(over) * float64(sent) / float64(n)))))
			}
			k, _ := io.ReadFull(src, buf)
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			sent += int64(k)
		}
	})
	mux.HandleFunc("GET /sse", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		every, _ := time.ParseDuration(r.URL.Query().Get("every"))
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		fl := w.(http.Flusher)
		fl.Flush()
		tk := time.NewTicker(every)
		defer tk.Stop()
		for i := 0; i < n; i++ {
			select {
			case <-r.Context().Done():
				return
			case <-tk.C:
			}
			fmt.Fprintf(w, "id: %d\ndata: event %d\n\n", i, i)
			fl.Flush()
		}
	})
	mux.HandleFunc("GET /poll", func(w http.ResponseWriter, r *http.Request) {
		hold, err := time.ParseDuration(r.URL.Query().Get("hold"))
		if err != nil {
			http.Error(w, "bad hold", http.StatusBadRequest)
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(hold):
		}
		fmt.Fprintf(w, "held %s", hold)
	})
	up := websocket.Upgrader{
		EnableCompression: true,
		Subprotocols:      []string{wsSubprotocol},
		CheckOrigin:       func(*http.Request) bool { return true },
	}
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		go echoLoop(c)
	})
	return mux
}

// notify wakes a waiter on ch without blocking.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// idleCloses counts idle keep-alive connections closed: in all, and by
// the backend's keep-alive timeout.
type idleCloses struct{ all, byBackend int64 }

// waitIdleGone waits until the backend holds no HTTP connection open, or
// until timeout, and says how many idle ones were closed meanwhile.
func (b *nodeBackend) waitIdleGone(t *testing.T, timeout time.Duration) idleCloses {
	t.Helper()
	all, timedOut := b.idleClosed.Load(), b.idleTimedOut.Load()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for b.open.Load() > 0 {
		select {
		case <-b.connEvents:
		case <-deadline.C:
			t.Errorf("after %v the backend still holds %d connection(s), %d idle", timeout, b.open.Load(), b.idleNow.Load())
			return idleCloses{b.idleClosed.Load() - all, b.idleTimedOut.Load() - timedOut}
		}
	}
	return idleCloses{b.idleClosed.Load() - all, b.idleTimedOut.Load() - timedOut}
}

// echoLoop sends every message back until the peer closes.
func echoLoop(c *websocket.Conn) {
	defer c.Close()
	for {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(ce.Code, ""), time.Now().Add(time.Second)) //nolint:errcheck
			}
			return
		}
		if c.WriteMessage(mt, msg) != nil {
			return
		}
	}
}

const pageBody = "<!doctype html><title>node</title><p>hello from the backend</p>\n"

// streamSeed makes streamBytes: the same bytes on both ends of a transfer.
var streamSeed = [32]byte{'w', 's', 'p', 'r', 'o', 'x', 'y'}

// newStream returns an endless deterministic byte stream, cheap to make
// (ChaCha8 runs at several GB/s).
func newStream() io.Reader { return mrand.NewChaCha8(streamSeed) }

// streamSum returns the sha256 of the first n bytes of the stream,
// computed once per n.
var streamSums sync.Map // int64 -> string

func streamSum(n int64) string {
	if s, ok := streamSums.Load(n); ok {
		return s.(string)
	}
	h := sha256.New()
	io.CopyBuffer(h, io.LimitReader(newStream(), n), make([]byte, 1<<20)) //nolint:errcheck
	s := hex.EncodeToString(h.Sum(nil))
	streamSums.Store(n, s)
	return s
}
