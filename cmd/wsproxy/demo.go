package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/config"
)

//go:embed demo/index.html
var demoPage []byte

//go:embed demo/config.yaml
var demoConfig string

// cmdDemo runs the proxy on an embedded config in front of two built-in
// echo backends that also serve a page to try it from a browser.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", "demo [-listen ADDR] [-admin ADDR]",
		"Run the proxy in front of two built-in echo backends that serve a page to try it\nfrom a browser. Ctrl-C stops it.")
	listen := fs.String("listen", "127.0.0.1:8080", "address the proxy listens on")
	admin := fs.String("admin", "127.0.0.1:9090", "admin address (/healthz /readyz /status)")
	if code := parseFlags(fs, args, stdout, stderr); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wsproxy demo: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var backends []string
	for i := 1; i <= 2; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintf(stderr, "wsproxy demo: %v\n", err)
			return 1
		}
		b := &demoBackend{name: fmt.Sprintf("backend-%d", i)}
		srv := &fasthttp.Server{Handler: b.serve, Name: b.name}
		go srv.Serve(ln) //nolint:errcheck // ends with the process
		backends = append(backends, ln.Addr().String())
	}
	text := strings.NewReplacer(
		"{{LISTEN}}", *listen,
		"{{ADMIN}}", *admin,
		"{{BACKEND1}}", backends[0],
		"{{BACKEND2}}", backends[1],
	).Replace(demoConfig)
	cfg, err := config.Parse("demo.yaml", []byte(text))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	in := &instance{stderr: stderr}
	in.level = zap.NewAtomicLevelAt(parseLevel(cfg.Log.Level))
	in.log = newLogger(cfg.Log, in.level, os.Stderr)
	return in.serve(cfg, func() {
		fmt.Fprintf(stdout, "\nwsproxy demo is running.\n  open  http://%s/  in a browser\n  echo backends: %s\n  admin: http://%s/status\n  Ctrl-C stops it.\n\n",
			displayAddr(in.addrs[0]), strings.Join(backends, ", "), displayAddr(in.adminAddr))
	})
}

// displayAddr makes a listen address clickable.
func displayAddr(a net.Addr) string {
	if a == nil {
		return ""
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if host == "" || host == "::" || host == "0.0.0.0" {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

// demoBackend is a built-in echo backend: it serves the page, a health
// endpoint and a WebSocket that answers each message with its own name.
type demoBackend struct {
	name string
}

var demoUpgrader = websocket.FastHTTPUpgrader{
	CheckOrigin: func(*fasthttp.RequestCtx) bool { return true },
}

func (b *demoBackend) serve(ctx *fasthttp.RequestCtx) {
	switch string(ctx.Path()) {
	case "/healthz":
		ctx.SetBodyString("ok")
	case "/ws":
		user := string(ctx.QueryArgs().Peek("user"))
		err := demoUpgrader.Upgrade(ctx, func(c *websocket.Conn) {
			defer c.Close()
			hello, _ := json.Marshal(map[string]any{"backend": b.name, "hello": user})
			if c.WriteMessage(websocket.TextMessage, hello) != nil {
				return
			}
			for {
				mt, msg, err := c.ReadMessage()
				if err != nil {
					return
				}
				reply, _ := json.Marshal(map[string]any{
					"backend": b.name, "echo": string(msg), "at": time.Now().UnixMilli(),
				})
				if c.WriteMessage(mt, reply) != nil {
					return
				}
			}
		})
		if err != nil {
			return
		}
	default:
		ctx.SetContentType("text/html; charset=utf-8")
		ctx.Response.Header.Set("X-Backend", b.name)
		ctx.SetBody(demoPage)
	}
}
