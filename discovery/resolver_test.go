package discovery

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func lookupOnce(t *testing.T, r resolver, spec Spec) (answer, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return r.lookup(ctx, spec)
}

// TestLookupSRV: SRV weights become backend weights (0 becomes 1), only
// the lowest priority value counts, a target "." gives nothing, targets
// resolve from the additional section or by A and AAAA questions to the
// same server, and the TTL is the smallest of the records used.
func TestLookupSRV(t *testing.T) {
	s := newDNSServer(t, "")
	const name = "_ws._tcp.chat.default.svc.cluster.local."
	s.set(t, name,
		name+" 30 IN SRV 0 10 9001 pod-a.chat.",
		name+" 30 IN SRV 0 30 9002 pod-b.chat.",
		name+" 20 IN SRV 0 0 9003 pod-c.chat.",
		name+" 30 IN SRV 0 5 9004 .",
		name+" 30 IN SRV 1 50 9005 backup.chat.",
	)
	s.setExtra(t, name, "pod-a.chat. 12 IN A 10.1.0.1")
	s.set(t, "pod-b.chat.", "pod-b.chat. 40 IN A 10.1.0.2", "pod-b.chat. 40 IN AAAA fd00::2")
	s.set(t, "pod-c.chat.", "pod-c.chat. 40 IN A 10.1.0.3")
	s.set(t, "backup.chat.", "backup.chat. 40 IN A 10.1.0.9")
	ans, err := lookupOnce(t, resolver{server: s.addr, timeout: time.Second}, Spec{Name: name, Type: TypeSRV})
	if err != nil {
		t.Fatal(err)
	}
	want := []Backend{
		{"10.1.0.1:9001", 10},
		{"10.1.0.2:9002", 30},
		{"10.1.0.3:9003", 1},
		{"[fd00::2]:9002", 30},
	}
	if !reflect.DeepEqual(ans.backends, want) {
		t.Errorf("backends = %v, want %v", ans.backends, want)
	}
	if ans.ttl != 12*time.Second {
		t.Errorf("ttl = %v, want 12s (pod-a's additional A record)", ans.ttl)
	}
}

// TestLookupA: type a gives one backend per A and AAAA address, at the
// configured port, weight 1.
func TestLookupA(t *testing.T) {
	s := newDNSServer(t, "")
	s.set(t, "chat.svc.", "chat.svc. 7 IN A 10.2.0.1", "chat.svc. 9 IN A 10.2.0.2", "chat.svc. 3 IN AAAA 2001:db8::1")
	ans, err := lookupOnce(t, resolver{server: s.addr, timeout: time.Second}, Spec{Name: "chat.svc", Type: TypeA, Port: 8080})
	if err != nil {
		t.Fatal(err)
	}
	want := []Backend{{"10.2.0.1:8080", 1}, {"10.2.0.2:8080", 1}, {"[2001:db8::1]:8080", 1}}
	if !reflect.DeepEqual(ans.backends, want) || ans.ttl != 3*time.Second {
		t.Errorf("backends = %v ttl %v, want %v ttl 3s", ans.backends, ans.ttl, want)
	}
}

// TestLookupFailures: a timeout, SERVFAIL, REFUSED and a port nobody
// serves are failures, not answers; NXDOMAIN and NOERROR without records
// are answers without backends; a failing server is passed over for the
// next.
func TestLookupFailures(t *testing.T) {
	s := newDNSServer(t, "")
	s.set(t, "chat.svc.", "chat.svc. 5 IN A 10.3.0.1")
	s.set(t, "empty.svc.")
	// A UDP port nobody listens on: the query gets ICMP port unreachable.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().String()
	pc.Close()
	a := Spec{Name: "chat.svc", Type: TypeA, Port: 80}
	for _, tc := range []struct {
		name, mode, server, dns string
		fails                   string // part of the error; "" for an answer
		backends                int
	}{
		{"answer", "", s.addr, "chat.svc", "", 1},
		{"timeout", "drop", s.addr, "chat.svc", "timeout", 0},
		{"SERVFAIL", "servfail", s.addr, "chat.svc", "SERVFAIL", 0},
		{"REFUSED", "refused", s.addr, "chat.svc", "REFUSED", 0},
		{"no server", "", dead, "chat.svc", "refused", 0},
		{"NXDOMAIN", "", s.addr, "nowhere.svc", "", 0},
		{"no records", "", s.addr, "empty.svc", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.setMode(tc.mode)
			defer s.setMode("")
			spec := a
			spec.Name = tc.dns
			start := time.Now()
			ans, err := lookupOnce(t, resolver{server: tc.server, timeout: 200 * time.Millisecond}, spec)
			if tc.fails == "" {
				if err != nil || len(ans.backends) != tc.backends {
					t.Fatalf("got %v, %v; want %d backends", ans.backends, err, tc.backends)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.fails) {
				t.Fatalf("got %v, %v; want an error containing %q", ans.backends, err, tc.fails)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("a failed lookup took %v", d)
			}
		})
	}
	// The system's configuration: the first server fails, the second
	// answers.
	bad := newDNSServer(t, "")
	bad.setMode("servfail")
	q := &querier{ctx: context.Background(), servers: []string{bad.addr, s.addr}, timeout: time.Second, ttl: -1}
	addrs, err := q.addresses("chat.svc.")
	if err != nil || len(addrs) != 1 {
		t.Fatalf("with a failing first server: %v, %v", addrs, err)
	}
}

// TestSystemResolver: resolver "" reads /etc/resolv.conf at each lookup,
// with its search domains. resolv.conf has no port, so the server binds
// port 53 on a loopback address of its own (root only).
func TestSystemResolver(t *testing.T) {
	var s *dnsServer
	for _, host := range []string{"127.53.0.1", "127.53.0.2"} {
		if pc, err := net.ListenPacket("udp", host+":53"); err == nil {
			pc.Close()
			s = newDNSServer(t, host+":53")
			break
		}
	}
	if s == nil {
		t.Skip("cannot bind port 53 on loopback (not root?)")
	}
	s.set(t, "chat.default.svc.cluster.local.", "chat.default.svc.cluster.local. 5 IN A 10.4.0.1")
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	host, _, _ := net.SplitHostPort(s.addr)
	if err := os.WriteFile(conf, []byte("nameserver "+host+"\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := resolvConf
	resolvConf = conf
	t.Cleanup(func() { resolvConf = old })
	ans, err := lookupOnce(t, resolver{timeout: time.Second}, Spec{Name: "chat", Type: TypeA, Port: 80})
	if err != nil || len(ans.backends) != 1 || ans.backends[0].Address != "10.4.0.1:80" {
		t.Fatalf("short name through the search list: %v, %v", ans.backends, err)
	}
	if err := os.WriteFile(conf, []byte("# no server\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := lookupOnce(t, resolver{timeout: time.Second}, Spec{Name: "chat", Type: TypeA, Port: 80}); err == nil || !strings.Contains(err.Error(), "no DNS server") {
		t.Fatalf("without a nameserver: %v", err)
	}
}

// TestLookupTruncated: an answer truncated over UDP is asked again over
// TCP, and the TCP answer is the one used.
func TestLookupTruncated(t *testing.T) {
	s := newDNSServer(t, "")
	if !s.tcp {
		t.Skip("the DNS server's port is taken over TCP")
	}
	s.set(t, "chat.svc.", "chat.svc. 5 IN A 10.5.0.1", "chat.svc. 5 IN A 10.5.0.2")
	s.setMode("truncate")
	ans, err := lookupOnce(t, resolver{server: s.addr, timeout: time.Second}, Spec{Name: "chat.svc", Type: TypeA, Port: 80})
	if err != nil || len(ans.backends) != 2 {
		t.Fatalf("got %v, %v; want 2 backends", ans.backends, err)
	}
	if n := s.overTCP.Load(); n != 2 { // A and AAAA
		t.Errorf("%d queries over TCP, want 2", n)
	}
}
