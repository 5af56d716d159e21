package discovery

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dnsServer is an in-process DNS server on a loopback UDP port, with
// records and misbehaviour a test sets while it runs.
type dnsServer struct {
	addr    string
	queries atomic.Int64
	asked   chan string // "TYPE name" of each query, if anyone listens

	mu      sync.Mutex
	records map[string][]dns.RR // by lower-case FQDN
	extra   map[string][]dns.RR // additional section by query name
	mode    string              // "", "drop", "servfail", "refused", "truncate"
	tcp     bool                // the server answers over TCP too
	overTCP atomic.Int64        // queries that came over TCP
}

// newDNSServer starts a server on 127.0.0.1:0 (or at addr) and stops it
// when the test ends.
func newDNSServer(t *testing.T, addr string) *dnsServer {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{addr: pc.LocalAddr().String(), asked: make(chan string, 1000),
		records: map[string][]dns.RR{}, extra: map[string][]dns.RR{}}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: s, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe() //nolint:errcheck
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("DNS server did not start")
	}
	t.Cleanup(func() { _ = srv.Shutdown() })
	// The same port over TCP, for answers too long for UDP.
	if tl, err := net.Listen("tcp", s.addr); err == nil {
		tstarted := make(chan struct{})
		tsrv := &dns.Server{Listener: tl, Handler: s, NotifyStartedFunc: func() { close(tstarted) }}
		go tsrv.ActivateAndServe() //nolint:errcheck
		<-tstarted
		t.Cleanup(func() { _ = tsrv.Shutdown() })
		s.tcp = true
	}
	return s
}

// set replaces the records of the names of rrs (text form, as in a zone
// file); a name given with no record ("name.") answers NOERROR with none.
func (s *dnsServer) set(t *testing.T, name string, rrs ...string) {
	t.Helper()
	var parsed []dns.RR
	for _, text := range rrs {
		rr, err := dns.NewRR(text)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, rr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[strings.ToLower(dns.Fqdn(name))] = parsed
}

// setExtra sets the additional section of answers about name.
func (s *dnsServer) setExtra(t *testing.T, name string, rrs ...string) {
	t.Helper()
	var parsed []dns.RR
	for _, text := range rrs {
		rr, err := dns.NewRR(text)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, rr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.extra[strings.ToLower(dns.Fqdn(name))] = parsed
}

// remove makes name NXDOMAIN.
func (s *dnsServer) remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, strings.ToLower(dns.Fqdn(name)))
}

// setMode makes the server drop queries, or answer SERVFAIL or REFUSED;
// "" makes it answer again.
func (s *dnsServer) setMode(mode string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mode = mode
}

// ServeDNS implements dns.Handler.
func (s *dnsServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	s.queries.Add(1)
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	if !udp {
		s.overTCP.Add(1)
	}
	q := r.Question[0]
	select {
	case s.asked <- dns.TypeToString[q.Qtype] + " " + q.Name:
	default:
	}
	s.mu.Lock()
	mode := s.mode
	rrs, known := s.records[strings.ToLower(q.Name)]
	extra := s.extra[strings.ToLower(q.Name)]
	s.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	switch {
	case mode == "drop":
		return
	case mode == "servfail":
		m.Rcode = dns.RcodeServerFailure
	case mode == "refused":
		m.Rcode = dns.RcodeRefused
	case mode == "truncate" && udp:
		m.Truncated = true // "too long for UDP": ask again over TCP
	case !known:
		m.Rcode = dns.RcodeNameError
	default:
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
		if q.Qtype == dns.TypeSRV {
			m.Extra = append(m.Extra, extra...)
		}
	}
	_ = w.WriteMsg(m)
}
