package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"golang.org/x/net/html"
)

// chromium returns the path of a Chromium binary, or skips the test.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium is not installed (Debian: apt-get install chromium): the status page's charts are not checked")
	return ""
}

// renderPage loads url in headless Chromium, lets the page's timers run for
// budget of virtual time (its fetches complete meanwhile) and returns the
// DOM as its script left it.
func renderPage(t *testing.T, url string, budget time.Duration) *html.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium(t),
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(),
		fmt.Sprintf("--virtual-time-budget=%d", budget.Milliseconds()),
		"--dump-dom", url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	doc, err := html.Parse(strings.NewReader(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// byID finds the element with id.
func byID(n *html.Node, id string) *html.Node {
	if n.Type == html.ElementNode && attr(n, "id") == id {
		return n
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if f := byID(c, id); f != nil {
			return f
		}
	}
	return nil
}

// elements lists the descendants of n named tag.
func elements(n *html.Node, tag string) []*html.Node {
	var out []*html.Node
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode && c.Data == tag {
			out = append(out, c)
		}
		out = append(out, elements(c, tag)...)
	}
	return out
}

// points parses a polyline's points.
func points(t *testing.T, pl *html.Node) [][2]float64 {
	t.Helper()
	var out [][2]float64
	for _, p := range strings.Fields(attr(pl, "points")) {
		xs, ys, ok := strings.Cut(p, ",")
		x, err1 := strconv.ParseFloat(xs, 64)
		y, err2 := strconv.ParseFloat(ys, 64)
		if !ok || err1 != nil || err2 != nil {
			t.Fatalf("bad point %q in %q", p, attr(pl, "points"))
		}
		out = append(out, [2]float64{x, y})
	}
	return out
}

// The status page charts live sessions, messages/s, handshakes/s and close
// codes from the history it fetches, and redraws them as it refreshes:
// loaded in a real browser, each chart has drawn what the proxy did.
func TestStatusPageCharts(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary and a browser")
	}
	chromium(t)
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	cfgPath := writeConfig(t, fmt.Sprintf(`
listeners: [{address: %q}]
admin: {address: %q}
routes: [{path: /, pool: p}]
pools:
  p: {backends: [{address: %q}]}
`, listen, admin, backend))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)

	// Five sessions, twenty messages; two end with 1000.
	var conns []*websocket.Conn
	for i := 0; i < 5; i++ {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for j := 0; j < 4; j++ {
			exchange(t, c, "m")
		}
		conns = append(conns, c)
	}
	for _, c := range conns[:2] {
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"), time.Now().Add(time.Second))
		_, _, _ = c.ReadMessage() // the close comes back
	}
	waitFor(t, "two closes in the history", func() bool {
		_, body := get(t, "http://"+admin+"/status/history")
		var h historyReport
		return json.Unmarshal([]byte(body), &h) == nil && len(h.CloseCodes) == 1 &&
			h.CloseCodes[0].Code == "1000" && h.CloseCodes[0].Count == 2 &&
			h.Samples[len(h.Samples)-1].Sessions == 3
	})

	doc := renderPage(t, "http://"+admin+"/", 5*time.Second)
	charts := byID(doc, "charts")
	if charts == nil {
		t.Fatal("no #charts on the page")
	}
	if n, _ := strconv.Atoi(attr(charts, "data-refreshes")); n < 2 {
		t.Errorf("charts drawn %d times in 5s of page time, want at least 2 (they refresh every 2s)", n)
	}
	if n := byID(doc, "last-sessions"); n == nil || text(n) != "now 3" {
		got := "(missing)"
		if n != nil {
			got = text(n)
		}
		t.Errorf("live sessions caption %q, want \"now 3\"", got)
	}
	// Each line chart has a line, and it rises above the baseline
	// (y = 90, the bottom of the viewBox) where the proxy was busy.
	for _, id := range []string{"chart-sessions", "chart-messages", "chart-handshakes"} {
		svg := byID(doc, id)
		if svg == nil {
			t.Errorf("no #%s", id)
			continue
		}
		lines := elements(svg, "polyline")
		if len(lines) == 0 {
			t.Errorf("#%s drew no line", id)
			continue
		}
		pts := points(t, lines[0])
		rises := false
		for _, pt := range pts {
			rises = rises || pt[1] < 89
		}
		if len(pts) < 2 || !rises {
			t.Errorf("#%s: points %v, want a line that rises above the baseline", id, pts)
		}
	}
	bars := elements(byID(doc, "chart-closes"), "rect")
	if len(bars) != 1 || attr(bars[0], "data-code") != "1000" {
		t.Errorf("close codes chart: %d bars, want one for 1000", len(bars))
	}
}
