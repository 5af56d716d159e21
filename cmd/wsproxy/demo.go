package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/balancer"
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
	var (
		backends []string
		lns      []net.Listener
	)
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintf(stderr, "wsproxy demo: %v\n", err)
			return 1
		}
		lns = append(lns, ln)
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
	names := demoBackendNames(backends)
	users := demoUsers(backends, demoCandidates)
	page := demoPageFor(users, names)
	for i, ln := range lns {
		b := &demoBackend{name: names[backends[i]], page: page}
		srv := &fasthttp.Server{Handler: b.serve, Name: b.name}
		go srv.Serve(ln) //nolint:errcheck // ends with the process
	}
	in := &instance{stderr: stderr}
	in.level = zap.NewAtomicLevelAt(parseLevel(cfg.Log.Level))
	in.log = newLogger(cfg.Log, in.level, os.Stderr)
	return in.serve(cfg, func() {
		fmt.Fprintf(stdout, "\nwsproxy demo is running.\n"+
			"  open     http://%s/  in a browser\n"+
			"  users    %s\n"+
			"  status   http://%s/  (JSON at /status, metrics at /metrics)\n"+
			"  Ctrl-C stops it.\n\n",
			displayAddr(in.addrs[0]), demoUserList(users, names, " and "), displayAddr(in.adminAddr))
	})
}

// demoCandidates are the user names the demo tries, in order; the first is
// the page's default.
var demoCandidates = []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
	"ivan", "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil"}

// demoBackendNames names the backends backend-1 and backend-2 by address.
func demoBackendNames(backends []string) map[string]string {
	names := make(map[string]string, len(backends))
	for i, a := range backends {
		names[a] = fmt.Sprintf("backend-%d", i+1)
	}
	return names
}

// demoUser is a user name and the backend the proxy sends it to.
type demoUser struct{ name, backend string }

// demoUsers finds, for each backend, the first candidate name that the
// /ws route (hash_key: query:user) sends to it, with the same hashing the
// proxy does, so that the page can name users that land on different
// backends: the backends listen on ports picked at random, so which names
// differ changes from run to run. It returns them in candidate order,
// the default name first.
func demoUsers(backends, candidates []string) []demoUser {
	reg := balancer.NewRegistry()
	var members []*balancer.Backend
	for _, a := range backends {
		members = append(members, reg.Get(a))
	}
	pool := balancer.NewPool(balancer.PoolConfig{Backends: members})
	var users []demoUser
	seen := map[string]bool{}
	for _, n := range candidates {
		b := pool.Pick(balancer.HashString(n))
		if b == nil || seen[b.Addr] {
			continue
		}
		seen[b.Addr] = true
		users = append(users, demoUser{name: n, backend: b.Addr})
		if len(seen) == len(backends) {
			break
		}
	}
	return users
}

// demoUserList writes users as "alice (backend-1) and bob (backend-2)".
func demoUserList(users []demoUser, names map[string]string, and string) string {
	var parts []string
	for _, u := range users {
		parts = append(parts, fmt.Sprintf("%s (%s)", u.name, names[u.backend]))
	}
	return strings.Join(parts, and)
}

// demoPageFor fills the page's user hint and default name.
func demoPageFor(users []demoUser, names map[string]string) []byte {
	var hint strings.Builder
	for i, u := range users {
		if i > 0 {
			hint.WriteString(" and ")
		}
		fmt.Fprintf(&hint, `<a href="#" class="user" data-user="%s">%s</a> lands on %s`,
			html.EscapeString(u.name), html.EscapeString(u.name), html.EscapeString(names[u.backend]))
	}
	def := demoCandidates[0]
	if len(users) > 0 {
		def = users[0].name
	}
	return []byte(strings.NewReplacer(
		"{{USERS}}", hint.String(),
		"{{DEFAULT_USER}}", html.EscapeString(def),
	).Replace(string(demoPage)))
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
	page []byte
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
	case "/", "/index.html":
		ctx.SetContentType("text/html; charset=utf-8")
		ctx.Response.Header.Set("X-Backend", b.name)
		ctx.SetBody(b.page)
	default:
		// /favicon.ico and every other path: the demo has only its page.
		ctx.Error("not found", fasthttp.StatusNotFound)
	}
}
