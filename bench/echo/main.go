// Command echo is the benchmark kit's WebSocket backend: it echoes every
// message with its opcode, on fasthttp and fasthttp/websocket, so that all
// proxies under test sit in front of the same server.
//
//	echo -addr 127.0.0.1:9001 [-max-message 16MiB]
//	     [-tls-addr 127.0.0.1:9443 -cert cert.pem -key key.pem]
//
// With -tls-addr it also serves wss (TLS 1.3, no session tickets) there,
// so that the load client can reach it over TLS directly: the limit of the
// machine for the TLS rounds.
//
// Each message is read whole into a buffer the connection keeps and sent
// back as a single frame, so a 1 MiB message costs one copy and no
// allocation once the buffer has grown. Write buffers come from a pool, so
// an idle session holds only its read buffer. Pings are answered by the
// library.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9001", "listen address")
	maxMsg := flag.Int64("max-message", 16<<20, "largest message accepted, in bytes")
	readBuf := flag.Int("read-buffer", 8<<10, "read buffer per connection, in bytes")
	writeBuf := flag.Int("write-buffer", 8<<10, "pooled write buffer, in bytes")
	tlsAddr := flag.String("tls-addr", "", "also serve wss on this address (needs -cert and -key)")
	certFile := flag.String("cert", "", "with -tls-addr: certificate (PEM)")
	keyFile := flag.String("key", "", "with -tls-addr: private key (PEM)")
	flag.Parse()
	raiseFileLimit()

	up := websocket.FastHTTPUpgrader{
		ReadBufferSize:  *readBuf,
		WriteBufferSize: *writeBuf,
		WriteBufferPool: &sync.Pool{},
		CheckOrigin:     func(*fasthttp.RequestCtx) bool { return true },
	}
	handler := func(c *websocket.Conn) {
		defer c.Close()
		c.SetReadLimit(*maxMsg)
		var buf []byte
		for {
			op, r, err := c.NextReader()
			if err != nil {
				return
			}
			buf, err = readAll(r, buf[:0])
			if err != nil {
				return
			}
			if err := c.WriteMessage(op, buf); err != nil {
				return
			}
			if cap(buf) > 4<<20 { // do not keep a huge buffer after a huge message
				buf = nil
			}
		}
	}
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			if !websocket.FastHTTPIsWebSocketUpgrade(ctx) {
				ctx.SetBodyString("echo\n")
				return
			}
			_ = up.Upgrade(ctx, handler)
		},
		Name:                  "echo",
		Concurrency:           1 << 20,
		ReadBufferSize:        4 << 10,
		WriteBufferSize:       4 << 10,
		NoDefaultDate:         true,
		NoDefaultServerHeader: true,
		CloseOnShutdown:       true,
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
		<-ch
		os.Exit(0)
	}()
	if *tlsAddr != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			log.Fatal(err)
		}
		tln, err := net.Listen("tcp", *tlsAddr)
		if err != nil {
			log.Fatal(err)
		}
		tln = tls.NewListener(tln, &tls.Config{
			Certificates:           []tls.Certificate{cert},
			MinVersion:             tls.VersionTLS13,
			SessionTicketsDisabled: true,
		})
		log.Printf("echo listening on %s (TLS)", tln.Addr())
		go serveTLS(srv, tln)
	}
	log.Printf("echo listening on %s", ln.Addr())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
		log.Fatal(err)
	}
}

// serveTLS serves the TLS listener beside the plain one.
func serveTLS(srv *fasthttp.Server, ln net.Listener) {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
		log.Fatal(err)
	}
}

// readAll appends r's content to buf, growing it as needed.
func readAll(r io.Reader, buf []byte) ([]byte, error) {
	if cap(buf) == 0 {
		buf = make([]byte, 0, 4<<10)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
