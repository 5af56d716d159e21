package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/wsproxy/wsproxy/config"
)

// Record types a pool may be found by.
const (
	TypeSRV = "srv"
	TypeA   = "a" // A and AAAA records
)

// resolvConf is the system's resolver configuration, read at every lookup
// so that an edited file applies without a restart.
var resolvConf = "/etc/resolv.conf"

// ednsSize is the UDP payload size the queries announce (RFC 6891
// section 6.2.5), so that an SRV answer of a few dozen pods fits without
// a retry over TCP.
const ednsSize = 4096

// errNoServer is a lookup that had no server to ask.
var errNoServer = errors.New("discovery: no DNS server configured")

// answer is what one successful lookup found.
type answer struct {
	backends []Backend // by address
	// ttl is the smallest TTL of the records used; -1 when there were
	// none.
	ttl time.Duration
}

// resolver looks names up with miekg/dns, from the servers of one
// resolver address or of /etc/resolv.conf.
type resolver struct {
	server  string        // host:port; "" means /etc/resolv.conf
	timeout time.Duration // per exchange with one server
}

// lookup resolves spec once. An error means no answer: every server
// failed, timed out or refused, for one of the names it had to ask.
func (r *resolver) lookup(ctx context.Context, spec Spec) (answer, error) {
	servers, names, err := r.config(spec.Name)
	if err != nil {
		return answer{}, err
	}
	q := &querier{ctx: ctx, servers: servers, timeout: r.timeout, ttl: -1}
	var found []Backend
	switch spec.Type {
	case TypeA:
		for _, name := range names {
			addrs, err := q.addresses(name)
			if err != nil {
				return answer{}, err
			}
			if len(addrs) == 0 {
				continue // NXDOMAIN or no records: the next search name
			}
			for _, a := range addrs {
				found = append(found, Backend{Address: net.JoinHostPort(a.String(), strconv.Itoa(spec.Port)), Weight: 1})
			}
			break
		}
	default:
		for _, name := range names {
			bs, ok, err := q.srv(name)
			if err != nil {
				return answer{}, err
			}
			if ok {
				found = bs
				break
			}
		}
	}
	return answer{backends: normalise(found), ttl: q.ttl}, nil
}

// config returns the servers to ask and the names to try for name.
func (r *resolver) config(name string) (servers, names []string, err error) {
	if r.server != "" {
		return []string{r.server}, []string{dns.Fqdn(name)}, nil
	}
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil, nil, fmt.Errorf("discovery: reading the system's resolver configuration: %w", err)
	}
	for _, s := range cc.Servers {
		servers = append(servers, net.JoinHostPort(s, cc.Port))
	}
	if len(servers) == 0 {
		return nil, nil, fmt.Errorf("%w (%s lists no nameserver)", errNoServer, resolvConf)
	}
	return servers, cc.NameList(name), nil
}

// normalise sorts backends by address and adds up the weights of an
// address listed twice, capped at config.MaxWeight.
func normalise(bs []Backend) []Backend {
	slices.SortFunc(bs, func(a, b Backend) int { return strings.Compare(a.Address, b.Address) })
	out := bs[:0]
	for _, b := range bs {
		if n := len(out); n > 0 && out[n-1].Address == b.Address {
			out[n-1].Weight = min(out[n-1].Weight+b.Weight, config.MaxWeight)
			continue
		}
		out = append(out, b)
	}
	return out
}

// querier asks one lookup's questions and keeps the smallest TTL seen.
type querier struct {
	ctx     context.Context
	servers []string
	timeout time.Duration
	ttl     time.Duration
}

// seen records the TTL of a record used.
func (q *querier) seen(rr dns.RR) {
	ttl := time.Duration(rr.Header().Ttl) * time.Second
	if q.ttl < 0 || ttl < q.ttl {
		q.ttl = ttl
	}
}

// srv returns the backends of name's SRV records of the lowest priority
// value (RFC 2782: the ones to try first; the proxy does not fail over
// to the others), and whether the name had any SRV record.
func (q *querier) srv(name string) ([]Backend, bool, error) {
	m, err := q.ask(name, dns.TypeSRV)
	if err != nil {
		return nil, false, err
	}
	var recs []*dns.SRV
	for _, rr := range m.Answer {
		if s, ok := rr.(*dns.SRV); ok {
			recs = append(recs, s)
		}
	}
	if len(recs) == 0 {
		return nil, false, nil
	}
	best := recs[0].Priority
	for _, s := range recs {
		best = min(best, s.Priority)
	}
	var out []Backend
	for _, s := range recs {
		if s.Priority != best || s.Target == "." { // "." : the service is decidedly not available here
			continue
		}
		q.seen(s)
		addrs := additional(m, s.Target, q)
		if len(addrs) == 0 {
			if addrs, err = q.addresses(s.Target); err != nil {
				return nil, false, err
			}
		}
		// RFC 2782 gives weight 0 "a very small chance" of being
		// picked: the smallest share a backend can have, 1. Taking a
		// backend out is leaving it out of the answers.
		w := max(int(s.Weight), 1)
		for _, a := range addrs {
			out = append(out, Backend{Address: net.JoinHostPort(a.String(), strconv.Itoa(int(s.Port))), Weight: w})
		}
	}
	return out, true, nil
}

// additional returns the addresses m's additional section gives target.
func additional(m *dns.Msg, target string, q *querier) []netip.Addr {
	var out []netip.Addr
	for _, rr := range m.Extra {
		if !strings.EqualFold(rr.Header().Name, target) {
			continue
		}
		if a, ok := rrAddr(rr); ok {
			q.seen(rr)
			out = append(out, a)
		}
	}
	return out
}

// addresses returns name's A and AAAA addresses; none for NXDOMAIN or no
// records. Both questions must be answered.
func (q *querier) addresses(name string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
		m, err := q.ask(name, t)
		if err != nil {
			return nil, err
		}
		for _, rr := range m.Answer {
			if a, ok := rrAddr(rr); ok && rr.Header().Rrtype == t {
				q.seen(rr)
				out = append(out, a)
			}
		}
	}
	return out, nil
}

func rrAddr(rr dns.RR) (netip.Addr, bool) {
	switch r := rr.(type) {
	case *dns.A:
		a, ok := netip.AddrFromSlice(r.A.To4())
		return a, ok
	case *dns.AAAA:
		a, ok := netip.AddrFromSlice(r.AAAA.To16())
		return a.Unmap(), ok
	}
	return netip.Addr{}, false
}

// ask sends one question to the servers in turn until one answers with
// NOERROR or NXDOMAIN, retrying a truncated UDP answer over TCP.
func (q *querier) ask(name string, qtype uint16) (*dns.Msg, error) {
	req := new(dns.Msg)
	req.SetQuestion(dns.Fqdn(name), qtype)
	req.RecursionDesired = true
	req.SetEdns0(ednsSize, false)
	var errs []string
	for _, server := range q.servers {
		m, err := q.exchange(req, server, "udp")
		if err == nil && m.Truncated {
			m, err = q.exchange(req, server, "tcp")
		}
		if err != nil {
			if q.ctx.Err() != nil {
				return nil, q.ctx.Err()
			}
			errs = append(errs, fmt.Sprintf("%s: %v", server, err))
			continue
		}
		switch m.Rcode {
		case dns.RcodeSuccess, dns.RcodeNameError:
			return m, nil
		}
		errs = append(errs, fmt.Sprintf("%s: %s", server, dns.RcodeToString[m.Rcode]))
	}
	return nil, fmt.Errorf("discovery: %s %s: %s", dns.TypeToString[qtype], name, strings.Join(errs, "; "))
}

func (q *querier) exchange(req *dns.Msg, server, network string) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: q.timeout}
	m, _, err := c.ExchangeContext(q.ctx, req, server)
	return m, err
}
