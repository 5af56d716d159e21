// Command echo is the benchmark kit's WebSocket backend: it echoes every
// message with its opcode, on fasthttp and fasthttp/websocket, so that all
// proxies under test sit in front of the same server.
package main

import (
	"flag"
	"io"
	"log"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9001", "listen address")
	flag.Parse()
	up := websocket.FastHTTPUpgrader{
		ReadBufferSize:  32 << 10,
		WriteBufferSize: 32 << 10,
		CheckOrigin:     func(*fasthttp.RequestCtx) bool { return true },
	}
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			if !websocket.FastHTTPIsWebSocketUpgrade(ctx) {
				ctx.SetBodyString("echo\n")
				return
			}
			_ = up.Upgrade(ctx, func(c *websocket.Conn) {
				defer c.Close()
				c.SetReadLimit(64 << 20)
				for {
					op, r, err := c.NextReader()
					if err != nil {
						return
					}
					w, err := c.NextWriter(op)
					if err != nil {
						return
					}
					if _, err := io.Copy(w, r); err != nil {
						return
					}
					if w.Close() != nil {
						return
					}
				}
			})
		},
		Concurrency: 1 << 20,
	}
	log.Printf("echo listening on %s", *addr)
	log.Fatal(srv.ListenAndServe(*addr))
}
