package balancer

import (
	"bufio"
	"net/netip"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

func TestClientIP(t *testing.T) {
	trusted := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("2001:db8:ffff::/48"),
	}
	proxy := netip.MustParseAddr("10.1.2.3")
	tests := []struct {
		name string
		peer netip.Addr
		xff  string
		want string
	}{
		{"untrusted peer ignores header", netip.MustParseAddr("198.51.100.7"), "203.0.113.9", "198.51.100.7"},
		{"trusted peer no header", proxy, "", "10.1.2.3"},
		{"one hop", proxy, "203.0.113.9", "203.0.113.9"},
		{"right-most untrusted", proxy, "192.0.2.66, 203.0.113.9, 10.9.9.9", "203.0.113.9"},
		{"spoofed left entries ignored", proxy, "1.1.1.1,203.0.113.9", "203.0.113.9"},
		{"all trusted: left-most", proxy, "10.0.0.1, 10.0.0.2", "10.0.0.1"},
		{"joined header values", proxy, "192.0.2.1, 10.0.0.5,10.0.0.6", "192.0.2.1"},
		{"spaces tabs empties", proxy, " ,\t203.0.113.9 , ,", "203.0.113.9"},
		{"ports", proxy, "203.0.113.9:5555, 10.0.0.1:80", "203.0.113.9"},
		{"ipv6 with port", proxy, "[2001:db8::1]:443", "2001:db8::1"},
		{"ipv6 trusted hop", proxy, "2001:db8::1, 2001:db8:ffff::2", "2001:db8::1"},
		{"mapped peer", netip.MustParseAddr("::ffff:10.1.2.3"), "203.0.113.9", "203.0.113.9"},
		{"mapped entry", proxy, "::ffff:203.0.113.9", "203.0.113.9"},
		{"garbage stops the walk", proxy, "203.0.113.9, unknown, 10.0.0.7", "10.0.0.7"},
		{"garbage right after peer", proxy, "203.0.113.9, unknown", "10.1.2.3"},
		{"mapped untrusted peer unmapped", netip.MustParseAddr("::ffff:198.51.100.7"), "", "198.51.100.7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ClientIP(tc.peer, []byte(tc.xff), trusted)
			if got != netip.MustParseAddr(tc.want) {
				t.Errorf("ClientIP(%v, %q) = %v, want %v", tc.peer, tc.xff, got, tc.want)
			}
		})
	}
}

func newRequest(t testing.TB, raw string) *fasthttp.Request {
	t.Helper()
	req := new(fasthttp.Request)
	if err := req.Read(bufioReader(raw)); err != nil {
		t.Fatalf("parse request: %v", err)
	}
	return req
}

func TestKeySpecHash(t *testing.T) {
	const raw = "GET /chat/room%2F1/../lobby?room=blue&empty= HTTP/1.1\r\n" +
		"Host: example.com\r\n" +
		"X-Tenant: acme\r\n" +
		"X-Empty:\r\n" +
		"Cookie: sid=abc123; other=x\r\n\r\n"
	client := netip.MustParseAddr("203.0.113.9")
	ipHash := hashAddr(client)
	tests := []struct {
		name string
		spec KeySpec
		want uint64
	}{
		{"ip", KeySpec{}, ipHash},
		{"header", KeySpec{Kind: KeyHeader, Name: "X-Tenant"}, HashString("acme")},
		{"header case-insensitive", KeySpec{Kind: KeyHeader, Name: "x-tenant"}, HashString("acme")},
		{"header missing", KeySpec{Kind: KeyHeader, Name: "X-None"}, ipHash},
		{"header empty", KeySpec{Kind: KeyHeader, Name: "X-Empty"}, ipHash},
		{"cookie", KeySpec{Kind: KeyCookie, Name: "sid"}, HashString("abc123")},
		{"cookie missing", KeySpec{Kind: KeyCookie, Name: "nope"}, ipHash},
		{"query", KeySpec{Kind: KeyQuery, Name: "room"}, HashString("blue")},
		{"query empty", KeySpec{Kind: KeyQuery, Name: "empty"}, ipHash},
		{"query missing", KeySpec{Kind: KeyQuery, Name: "nope"}, ipHash},
		// fasthttp decodes %2F before resolving "..".
		{"path normalised, no query", KeySpec{Kind: KeyPath}, HashString("/chat/room/lobby")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := newRequest(t, raw)
			if got := tc.spec.Hash(req, client); got != tc.want {
				t.Errorf("Hash = %#x, want %#x", got, tc.want)
			}
		})
	}
}

func TestKeyAllocs(t *testing.T) {
	const raw = "GET /ws/chat?room=blue HTTP/1.1\r\nHost: example.com\r\nX-Tenant: acme\r\nCookie: sid=abc123\r\n" +
		"X-Forwarded-For: 192.0.2.1, 203.0.113.9, 10.0.0.2\r\n\r\n"
	req := newRequest(t, raw)
	peer := netip.MustParseAddr("10.1.2.3")
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, spec := range []KeySpec{{}, {KeyHeader, "X-Tenant"}, {KeyCookie, "sid"}, {KeyQuery, "room"}, {KeyPath, ""}, {KeyCookie, "missing"}} {
		if n := testing.AllocsPerRun(100, func() {
			ip := ClientIP(peer, req.Header.Peek("X-Forwarded-For"), trusted)
			spec.Hash(req, ip)
		}); n != 0 {
			t.Errorf("%v %q: %v allocations per call, want 0", spec.Kind, spec.Name, n)
		}
	}
}

func TestKeyKindString(t *testing.T) {
	for k := KeyIP; k <= KeyPath; k++ {
		got, err := ParseKeyKind(k.String())
		if err != nil || got != k {
			t.Errorf("ParseKeyKind(%q) = %v, %v; want %v", k.String(), got, err, k)
		}
	}
	if _, err := ParseKeyKind("body"); err == nil {
		t.Error(`ParseKeyKind("body") succeeded`)
	}
	if got := KeyKind(42).String(); got != "KeyKind(42)" {
		t.Errorf("KeyKind(42).String() = %q", got)
	}
}

func BenchmarkKeySpecHash(b *testing.B) {
	req := newRequest(b, "GET /ws/chat?room=blue HTTP/1.1\r\nHost: example.com\r\nCookie: a=1; sid=0123456789abcdef0123456789abcdef\r\n"+
		"X-Forwarded-For: 192.0.2.1, 203.0.113.9\r\n\r\n")
	peer := netip.MustParseAddr("10.1.2.3")
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, spec := range []KeySpec{{}, {KeyCookie, "sid"}, {KeyQuery, "room"}, {KeyPath, ""}} {
		b.Run(spec.Kind.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				spec.Hash(req, ClientIP(peer, req.Header.Peek("X-Forwarded-For"), trusted))
			}
		})
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// TestKeySpecNames: Names reports whether a request carries what the key
// reads, so that Hash does not fall back to the address.
func TestKeySpecNames(t *testing.T) {
	var req fasthttp.Request
	req.SetRequestURI("/room/1?sid=abc&empty=")
	req.Header.Set("X-User", "u1")
	req.Header.Set("Cookie", "io=s1; blank=")
	for _, tc := range []struct {
		k    KeySpec
		want bool
	}{
		{KeySpec{Kind: KeyIP}, false},
		{KeySpec{Kind: KeyHeader, Name: "X-User"}, true},
		{KeySpec{Kind: KeyHeader, Name: "X-Other"}, false},
		{KeySpec{Kind: KeyCookie, Name: "io"}, true},
		{KeySpec{Kind: KeyCookie, Name: "blank"}, false},
		{KeySpec{Kind: KeyQuery, Name: "sid"}, true},
		{KeySpec{Kind: KeyQuery, Name: "empty"}, false},
		{KeySpec{Kind: KeyPath}, true},
	} {
		if got := tc.k.Names(&req); got != tc.want {
			t.Errorf("%v: Names %v, want %v", tc.k, got, tc.want)
		}
		addr := netip.MustParseAddr("192.0.2.1")
		if fell := tc.k.Hash(&req, addr) == hashAddr(addr); fell == tc.want {
			t.Errorf("%v: Names %v but Hash fell back to the address: %v", tc.k, tc.want, fell)
		}
	}
}
