package balancer

import (
	"bytes"
	"fmt"
	"net/netip"
	"unsafe"

	"github.com/valyala/fasthttp"
)

// KeyKind says which part of a request the balancing key is taken from.
type KeyKind int

const (
	// KeyIP keys on the client address (see ClientIP). It is the zero
	// KeyKind, and every other kind falls back to it.
	KeyIP KeyKind = iota
	// KeyHeader keys on the value of the request header Name.
	KeyHeader
	// KeyCookie keys on the value of the cookie Name.
	KeyCookie
	// KeyQuery keys on the value of the query parameter Name.
	KeyQuery
	// KeyPath keys on the request path, without the query.
	KeyPath
)

var keyKindNames = [...]string{KeyIP: "ip", KeyHeader: "header", KeyCookie: "cookie", KeyQuery: "query", KeyPath: "path"}

// String returns the kind's configuration name: "ip", "header", "cookie",
// "query" or "path".
func (k KeyKind) String() string {
	if k >= 0 && int(k) < len(keyKindNames) {
		return keyKindNames[k]
	}
	return fmt.Sprintf("KeyKind(%d)", int(k))
}

// ParseKeyKind returns the KeyKind whose String is s.
func ParseKeyKind(s string) (KeyKind, error) {
	for k, name := range keyKindNames {
		if s == name {
			return KeyKind(k), nil
		}
	}
	return 0, fmt.Errorf("balancer: unknown key kind %q", s)
}

// KeySpec says how to derive a request's balancing key. The zero KeySpec keys
// on the client address.
type KeySpec struct {
	Kind KeyKind
	// Name is the header, cookie or query parameter name; unused for
	// KeyIP and KeyPath.
	Name string
}

// String returns the key in its configuration form: "ip", "path",
// "header:NAME", "cookie:NAME" or "query:NAME".
func (k KeySpec) String() string {
	if k.Kind == KeyIP || k.Kind == KeyPath {
		return k.Kind.String()
	}
	return k.Kind.String() + ":" + k.Name
}

// Hash returns the balancing key of req, to pass to Pool.Pick: the hash of
// the header, cookie or query parameter value, or of the path. A request
// without the key (a missing or empty value) falls back to the hash of
// clientIP, so it still sticks to one backend.
//
// The path is req.URI().Path(): decoded and normalised ("/a/./b%2Fc" and
// "/a/b/c" are one key), without the query string.
//
// Hash does not allocate once the request is parsed; it may parse lazily
// (cookies, URI) into req's own buffers, so call it from the goroutine that
// owns req.
func (k KeySpec) Hash(req *fasthttp.Request, clientIP netip.Addr) uint64 {
	var v []byte
	switch k.Kind {
	case KeyHeader:
		v = req.Header.Peek(k.Name)
	case KeyCookie:
		v = req.Header.Cookie(k.Name)
	case KeyQuery:
		v = req.URI().QueryArgs().Peek(k.Name)
	case KeyPath:
		v = req.URI().Path()
	}
	if len(v) == 0 {
		return hashAddr(clientIP)
	}
	return Hash(v)
}

// Names reports whether req carries what k reads (a non-empty header,
// cookie, query parameter or path), that is whether Hash hashes that
// rather than falling back to the client address. KeyIP never does.
func (k KeySpec) Names(req *fasthttp.Request) bool {
	switch k.Kind {
	case KeyHeader:
		return len(req.Header.Peek(k.Name)) > 0
	case KeyCookie:
		return len(req.Header.Cookie(k.Name)) > 0
	case KeyQuery:
		return len(req.URI().QueryArgs().Peek(k.Name)) > 0
	case KeyPath:
		return len(req.URI().Path()) > 0
	}
	return false
}

// hashAddr hashes the 16-byte form of a (IPv4 as IPv4-mapped IPv6, so that
// 192.0.2.1 and ::ffff:192.0.2.1 are one key), without its zone.
func hashAddr(a netip.Addr) uint64 {
	b := a.As16()
	return Hash(b[:])
}

// ClientIP returns the client's address. When peer (the socket's remote
// address) is not in trusted, that is peer. When it is, the client is the
// right-most address of the X-Forwarded-For list xff that is not itself in
// trusted: the list is walked from the right, each trusted hop vouching for
// the address to its left. If every address is trusted, it is the left-most.
// The walk stops at the first entry that is not an IP address (such as
// "unknown"), returning the last trusted address before it, since nothing
// to its left is vouched for.
//
// xff may hold several header values joined by ","; entries may carry a port
// ("192.0.2.1:1234", "[2001:db8::1]:443"). IPv4-mapped IPv6 addresses are
// unmapped, so trusted should list plain IPv4 prefixes. ClientIP does not
// allocate for well-formed input.
func ClientIP(peer netip.Addr, xff []byte, trusted []netip.Prefix) netip.Addr {
	client := peer.Unmap()
	if !isTrusted(client, trusted) {
		return client
	}
	for len(xff) > 0 {
		var field []byte
		if i := bytes.LastIndexByte(xff, ','); i >= 0 {
			field, xff = xff[i+1:], xff[:i]
		} else {
			field, xff = xff, nil
		}
		field = bytes.Trim(field, " \t")
		if len(field) == 0 {
			continue
		}
		a, ok := parseHop(field)
		if !ok {
			return client
		}
		client = a
		if !isTrusted(a, trusted) {
			return a
		}
	}
	return client
}

// parseHop parses one X-Forwarded-For entry: an address, optionally with a
// port.
func parseHop(field []byte) (netip.Addr, bool) {
	// ParseAddr and ParseAddrPort keep their input only in the error they
	// return, which is dropped here, so the bytes need not be copied.
	s := unsafe.String(unsafe.SliceData(field), len(field))
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
