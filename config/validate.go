package config

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// MaxWeight is the largest backend weight accepted, from the file or from
// DNS.
const MaxWeight = 1_000_000

// validate checks the decoded config as a whole: the mistakes a single key
// cannot show. Every problem is reported, each at its key's line.
func (d *decoder) validate() {
	c := d.cfg
	d.validateListeners()
	d.validateAdmin()
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		d.failAt("log.level", "unknown level %q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		d.failAt("log.format", "unknown format %q: want json or console", c.Log.Format)
	}
	if !(c.Log.AccessLogSample >= 0 && c.Log.AccessLogSample <= 1) { // also refuses NaN
		d.failAt("log.access_log_sample", "%v is not a fraction: want a number from 0 to 1", c.Log.AccessLogSample)
	}
	if n := c.Log.AccessLogIdentity; n != "" && !isTokenName(n) {
		d.failAt("log.access_log_identity", "%q is not a header name", n)
	}
	d.validateAdmission()
	if c.ShutdownDelay > 10*time.Minute {
		d.failAt("shutdown_delay", "%v is longer than 10m: load balancers stop sending within seconds", c.ShutdownDelay)
	}
	switch c.Engine {
	case EngineGoroutines, EngineLoops:
	default:
		d.failAt("engine", "unknown engine %q: want goroutines or loops", c.Engine)
	}
	if c.UpgradeTimeout <= 0 || c.UpgradeTimeout > 10*time.Minute {
		d.failAt("upgrade_timeout", "%v: want more than 0 and at most 10m", c.UpgradeTimeout)
	}
	if c.PIDFile != "" {
		if fi, err := os.Stat(filepath.Dir(c.PIDFile)); err != nil || !fi.IsDir() {
			d.failAt("pid_file", "%s: its directory %s does not exist", c.PIDFile, filepath.Dir(c.PIDFile))
		}
	}
	d.validateLimits("defaults", c.Defaults)
	d.validateRoutes()
	for _, name := range c.PoolNames() {
		d.validatePool("pools."+name, c.Pools[name])
	}
}

// checkAddress reports whether addr is host:port with a port in 1-65535,
// or 0 for a listen address (any free port). The host may be empty (every
// interface).
func checkAddress(addr string, listen bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("bad address %q: want host:port, like 127.0.0.1:9001 or :8080", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !listen) {
		return fmt.Errorf("bad address %q: the port must be a number from 1 to 65535", addr)
	}
	if strings.ContainsAny(host, " /\t") {
		return fmt.Errorf("bad address %q: bad host %q", addr, host)
	}
	return nil
}

// sameSocket reports whether two listen addresses would bind the same port
// on overlapping interfaces: equal, or either is a wildcard with the same
// port.
func sameSocket(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	if wild(ha) || wild(hb) {
		return true
	}
	if ia, err := netip.ParseAddr(ha); err == nil {
		if ib, err := netip.ParseAddr(hb); err == nil {
			return ia.Unmap() == ib.Unmap()
		}
	}
	return strings.EqualFold(ha, hb)
}

func (d *decoder) validateListeners() {
	c := d.cfg
	acmeDomains := map[string]int{} // listener of each ACME domain
	if len(c.Listeners) == 0 {
		d.failAt("listeners", "at least one listener is needed, like listeners: [{address: \":8080\"}]")
	}
	for i, l := range c.Listeners {
		path := fmt.Sprintf("listeners[%d]", i)
		if l.Address == "" {
			d.failAt(path+".address", "missing: every listener needs an address")
		} else if err := checkAddress(l.Address, true); err != nil {
			d.failAt(path+".address", "%v", err)
		} else if _, port, _ := net.SplitHostPort(l.Address); l.ReusePort && port == "0" {
			d.failAt(path+".reuse_port", "%q has port 0, which gives every process a port of its own: name the port the processes share", l.Address)
		}
		for j := 0; j < i; j++ {
			if l.Address != "" && sameSocket(l.Address, c.Listeners[j].Address) {
				d.failAt(path+".address", "%q clashes with listeners[%d] (%q)", l.Address, j, c.Listeners[j].Address)
				break
			}
		}
		if l.TLS != nil {
			d.validateListenerTLS(path+".tls", l.TLS)
			if a := l.TLS.ACME; a != nil {
				for k, name := range a.Domains {
					name = strings.ToLower(strings.TrimSuffix(name, "."))
					if j, dup := acmeDomains[name]; dup && j != i {
						d.failAt(fmt.Sprintf("%s.tls.acme.domains[%d]", path, k), "%q is already an ACME domain of listeners[%d]: list it in one acme block", name, j)
					}
					acmeDomains[name] = i
				}
			}
		}
	}
}

func (d *decoder) validateListenerTLS(path string, t *ListenerTLS) {
	if len(t.Certificates) == 0 && t.ACME == nil {
		d.failAt(path+".certificates", "a TLS listener needs at least one certificate ({cert_file, key_file}) or an acme block")
	}
	if t.ACME != nil {
		d.validateACME(path+".acme", t.ACME)
	}
	for i, cert := range t.Certificates {
		cpath := fmt.Sprintf("%s.certificates[%d]", path, i)
		d.needFile(cpath+".cert_file", cert.CertFile, true)
		d.needFile(cpath+".key_file", cert.KeyFile, true)
	}
	switch t.MinVersion {
	case "1.2", "1.3":
	default:
		d.failAt(path+".min_version", "unknown TLS version %q: want \"1.2\" or \"1.3\"", t.MinVersion)
	}
	switch t.ClientAuth {
	case "require", "request":
	default:
		d.failAt(path+".client_auth", "unknown mode %q: want require or request", t.ClientAuth)
	}
	d.needFile(path+".client_ca_file", t.ClientCAFile, false)
}

// validateACME checks an acme block without contacting the CA; cmd's
// check also tries the storage for writing.
func (d *decoder) validateACME(path string, a *ACME) {
	if len(a.Domains) == 0 {
		d.failAt(path+".domains", "at least one domain is needed, like domains: [ws.example.com]")
	}
	seen := map[string]bool{}
	for i, name := range a.Domains {
		key := fmt.Sprintf("%s.domains[%d]", path, i)
		if err := checkACMEDomain(name); err != nil {
			d.failAt(key, "%q: %v", name, err)
			continue
		}
		if seen[strings.ToLower(name)] {
			d.failAt(key, "%q is listed twice", name)
		}
		seen[strings.ToLower(name)] = true
	}
	if a.Email != "" && !strings.Contains(a.Email, "@") {
		d.failAt(path+".email", "%q is not an email address", a.Email)
	}
	if u, err := url.Parse(a.DirectoryURL); err != nil || u.Scheme != "https" || u.Host == "" {
		d.failAt(path+".directory_url", "%q: want an https URL, like %s", a.DirectoryURL, DefaultACMEDirectory)
	}
	if a.Storage == "" && !d.unexpanded[path+".storage"] {
		d.failAt(path+".storage", "missing: a directory for the account key and certificates, like /var/lib/wsproxy/acme")
	}
	d.needFile(path+".ca_file", a.CAFile, false)
	if a.RenewBefore < 0 {
		d.failAt(path+".renew_before", "must not be negative (0 means a third of the certificate's lifetime)")
	}
}

// checkACMEDomain accepts a DNS name a CA can validate over TLS-ALPN-01 or
// HTTP-01: no wildcard (those need DNS-01), no IP address, at least two
// labels of letters, digits and hyphens.
func checkACMEDomain(name string) error {
	if strings.HasPrefix(name, "*.") {
		return fmt.Errorf("a wildcard needs the DNS-01 challenge, which wsproxy does not answer")
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return fmt.Errorf("an IP address, not a domain name")
	}
	labels := strings.Split(strings.TrimSuffix(name, "."), ".")
	if len(labels) < 2 || len(name) > 253 {
		return fmt.Errorf("not a fully qualified domain name")
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("bad label %q", l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("bad character %q (write internationalised names in punycode)", c)
			}
		}
	}
	return nil
}

// needFile checks that a configured file exists. required reports a
// missing setting too.
func (d *decoder) needFile(path, file string, required bool) {
	if d.unexpanded[path] {
		return
	}
	if file == "" {
		if required {
			d.failAt(path, "missing: a file name is needed")
		}
		return
	}
	if st, err := os.Stat(file); err != nil {
		d.failAt(path, "cannot read %s: %v", file, unwrapPathError(err))
	} else if st.IsDir() {
		d.failAt(path, "%s is a directory, not a file", file)
	}
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

func (d *decoder) validateAdmin() {
	a := d.cfg.Admin
	if a.Address == "" {
		return
	}
	if err := checkAddress(a.Address, true); err != nil {
		d.failAt("admin.address", "%v", err)
		return
	}
	for i, l := range d.cfg.Listeners {
		if sameSocket(a.Address, l.Address) {
			d.failAt("admin.address", "%q clashes with listeners[%d] (%q): the admin listener needs its own port", a.Address, i, l.Address)
		}
	}
}

// Bounds of admission.max_header_bytes: a browser's handshake with a few
// cookies needs about 1 KiB; fasthttp holds a buffer this size per
// connection while it reads a request.
const (
	minHeaderBytes = 1 << 10
	maxHeaderBytes = 1 << 20
)

func (d *decoder) validateAdmission() {
	a := d.cfg.Admission
	if a.MaxSessions < 0 {
		d.failAt("admission.max_sessions", "must not be negative (0 means what the open-files limit allows)")
	}
	if a.MaxSessionsPerIP < 0 {
		d.failAt("admission.max_sessions_per_ip", "must not be negative (0 turns the cap off)")
	}
	if !(a.HandshakesPerSecondPerIP >= 0) {
		d.failAt("admission.handshakes_per_second_per_ip", "must not be negative (0 turns the limit off)")
	}
	if a.HandshakeBurstPerIP < 0 {
		d.failAt("admission.handshake_burst_per_ip", "must not be negative (0 means the rate, rounded up)")
	}
	if a.MaxHeaderBytes < minHeaderBytes || a.MaxHeaderBytes > maxHeaderBytes {
		d.failAt("admission.max_header_bytes", "%d is out of range: want 1KiB to 1MiB", a.MaxHeaderBytes)
	}
	if a.MaxConnections < 0 {
		d.failAt("admission.max_connections", "must not be negative (0 means what the open-files limit leaves after max_sessions)")
	}
	if a.RetryAfter < time.Second {
		d.failAt("admission.retry_after", "%v is too short: Retry-After counts whole seconds, want at least 1s", a.RetryAfter)
	}
}

func (d *decoder) validateLimits(path string, l Limits) {
	if l.HandshakeTimeout <= 0 {
		d.failAt(join(path, "handshake_timeout"), "must be above 0")
	}
	if l.WriteTimeout <= 0 {
		d.failAt(join(path, "write_timeout"), "must be above 0")
	}
	if l.MaxMessageBytes <= 0 {
		d.failAt(join(path, "max_message_bytes"), "must be above 0")
	}
	if l.MaxMessagesPerSecond < 0 {
		d.failAt(join(path, "max_messages_per_second"), "must not be negative (0 turns the limit off)")
	}
	if l.MessageBurst < 0 {
		d.failAt(join(path, "message_burst"), "must not be negative (0 means the rate, rounded up)")
	}
	if l.PingInterval > 0 && l.ReadTimeout > 0 && l.PingInterval >= l.ReadTimeout {
		d.failAt(join(path, "ping_interval"), "%v is not below read_timeout (%v): a silent but live peer would be cut off before it is pinged", l.PingInterval, l.ReadTimeout)
	}
	switch l.DrainCloseCode {
	case 1001, 1012:
	default:
		d.failAt(join(path, "drain_close_code"), "%d is not allowed: want 1001 (going away) or 1012 (service restart)", l.DrainCloseCode)
	}
	switch l.BackendGoneCloseCode {
	case 1014, 1011, 1001:
	default:
		d.failAt(join(path, "backend_gone_close_code"), "%d is not allowed: want 1014 (bad gateway), 1011 (internal error) or 1001 (going away)", l.BackendGoneCloseCode)
	}
	if !(l.MaxControlFramesPerSecond >= 0) {
		d.failAt(join(path, "max_control_frames_per_second"), "must not be negative (0 turns the limit off)")
	}
}

func (d *decoder) validateRoutes() {
	c := d.cfg
	if len(c.Routes) == 0 {
		d.failAt("routes", "at least one route is needed, like routes: [{path: /, pool: NAME}]")
	}
	type routeKey struct {
		path  string
		exact bool
	}
	seen := map[routeKey]int{}
	for i, r := range c.Routes {
		path := fmt.Sprintf("routes[%d]", i)
		switch {
		case r.Path == "":
			d.failAt(path+".path", "missing: every route needs a path, like /chat")
		case !strings.HasPrefix(r.Path, "/"):
			d.failAt(path+".path", "%q must start with /", r.Path)
		case strings.ContainsAny(r.Path, "?# \t"):
			d.failAt(path+".path", "%q must be a plain path, without query, fragment or spaces", r.Path)
		default:
			k := routeKey{r.Path, r.Exact}
			if j, dup := seen[k]; dup {
				d.failAt(path+".path", "%q is also the path of routes[%d]", r.Path, j)
			} else {
				seen[k] = i
			}
		}
		switch {
		case r.Pool == "":
			d.failAt(path+".pool", "missing: every route needs a pool")
		case c.Pools[r.Pool] == nil:
			d.failAt(path+".pool", "no pool named %q%s", r.Pool, poolHint(c))
		}
		for j, o := range r.AllowedOrigins {
			if err := checkOrigin(o); err != nil {
				d.failAt(fmt.Sprintf("%s.allowed_origins[%d]", path, j), "%v", err)
			}
		}
		if r.MaxSessions < 0 {
			d.failAt(path+".max_sessions", "must not be negative (0 means no cap of its own)")
		}
		d.validateIdentity(path, &c.Routes[i])
		if r.Affinity != nil {
			d.validateAffinity(path, &r)
		}
		d.validateRouteLimits(path, r.Limits)
	}
}

// validateAffinity validates a route's affinity block.
func (d *decoder) validateAffinity(route string, r *Route) {
	path, a := route+".affinity", r.Affinity
	switch {
	case a.Cookie == "":
		d.failAt(path+".cookie", "missing: the cookie needs a name, like wsp_backend")
	case !isCookieName(a.Cookie):
		d.failAt(path+".cookie", "%q is not a cookie name: want letters, digits and !#$%%&'*+-.^_`|~", a.Cookie)
	case r.HashKey.Kind == HashCookie && r.HashKey.Name == a.Cookie:
		d.failAt(path+".cookie", "%q is also the route's hash_key: the hash places clients without a valid affinity cookie, so it cannot read that cookie", a.Cookie)
	}
	switch {
	case a.TTL < 0:
		d.failAt(path+".ttl", "must not be negative (0 means a browser-session cookie)")
	case a.TTL > 0 && a.TTL < time.Second:
		d.failAt(path+".ttl", "%v is shorter than a second, the unit of a cookie's Max-Age (0 means a browser-session cookie)", a.TTL)
	}
	switch a.SameSite {
	case "lax", "strict":
	case "none":
		if a.Secure == SecureNever {
			d.failAt(path+".same_site", "none needs secure auto or true: browsers drop a SameSite=None cookie that is not Secure")
		}
	default:
		d.failAt(path+".same_site", "unknown value %q: want lax, strict or none", a.SameSite)
	}
	if a.KeyFile == "" || d.unexpanded[path+".key_file"] {
		return
	}
	key, err := ReadAffinityKey(a.KeyFile)
	if err != nil {
		d.failAt(path+".key_file", "%v", err)
		return
	}
	clear(key)
}

// ReadAffinityKey reads an affinity key_file: its bytes without a trailing
// newline, at least MinAffinityKeyBytes of them.
func ReadAffinityKey(file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v", file, unwrapPathError(err))
	}
	key := bytes.TrimRight(data, "\r\n")
	if len(key) < MinAffinityKeyBytes {
		return nil, fmt.Errorf("%s holds %d bytes: want at least %d, like the output of openssl rand -base64 32", file, len(key), MinAffinityKeyBytes)
	}
	return key, nil
}

// isCookieName reports whether s is an RFC 6265 cookie-name (a token).
func isCookieName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return s != ""
}

// validateRouteLimits validates a route's limits. They start from the
// defaults section, so only mistakes in keys the route set itself are
// reported here; the defaults' own are reported there.
func (d *decoder) validateRouteLimits(path string, l Limits) {
	before := len(d.errs)
	d.validateLimits(path, l)
	kept := d.errs[:before]
	for _, e := range d.errs[before:] {
		key := strings.TrimPrefix(e.Key, path+".")
		if _, own := d.lines[e.Key]; own || (key == "ping_interval" && d.ownsAny(path, "read_timeout")) {
			kept = append(kept, e)
		}
	}
	d.errs = kept
}

func (d *decoder) ownsAny(path string, keys ...string) bool {
	for _, k := range keys {
		if _, ok := d.lines[path+"."+k]; ok {
			return true
		}
	}
	return false
}

func poolHint(c *Config) string {
	names := c.PoolNames()
	if len(names) == 0 {
		return " (no pools are defined)"
	}
	return " (pools: " + strings.Join(names, ", ") + ")"
}

// checkOrigin accepts scheme://host[:port], as browsers send it.
func checkOrigin(o string) error {
	u, err := url.Parse(o)
	if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return fmt.Errorf("bad origin %q: want scheme://host[:port], like https://app.example.com", o)
	}
	return nil
}

func (d *decoder) validatePool(path string, p *Pool) {
	if p.BoundedLoad != 0 && (p.BoundedLoad < 1 || p.BoundedLoad > 100) {
		d.failAt(path+".bounded_load", "%v is out of range: want 0 (off) or a factor from 1 to 100, like 1.25", p.BoundedLoad)
	}
	if p.DrainRate < 0 {
		d.failAt(path+".drain_rate", "must not be negative (0 means no cap)")
	}
	if p.IdleConnTimeout < 0 {
		d.failAt(path+".idle_conn_timeout", "must not be negative (0 turns keep-alive to backends off)")
	}
	if len(p.Backends) == 0 && p.Discovery == nil {
		d.failAt(path+".backends", "the pool has no backends (list some, or find them with discovery)")
	}
	if p.Discovery != nil {
		d.validateDiscovery(path+".discovery", p.Discovery)
	}
	seen := map[string]int{}
	for i, b := range p.Backends {
		bpath := fmt.Sprintf("%s.backends[%d]", path, i)
		if b.Address == "" {
			d.failAt(bpath+".address", "missing: every backend needs an address")
		} else if err := checkAddress(b.Address, false); err != nil {
			d.failAt(bpath+".address", "%v", err)
		} else if host, _, _ := net.SplitHostPort(b.Address); host == "" {
			d.failAt(bpath+".address", "bad address %q: a backend needs a host", b.Address)
		} else if j, dup := seen[b.Address]; dup {
			d.failAt(bpath+".address", "%q is listed twice (also backends[%d]); raise its weight instead", b.Address, j)
		} else {
			seen[b.Address] = i
		}
		if b.Weight < 0 || b.Weight > MaxWeight {
			d.failAt(bpath+".weight", "%d is out of range: want 0 (drain) to %d", b.Weight, MaxWeight)
		}
	}
	t := p.TLS
	if t.Enabled {
		d.needFile(path+".tls.ca_file", t.CAFile, false)
		if (t.CertFile == "") != (t.KeyFile == "") {
			d.failAt(path+".tls.cert_file", "cert_file and key_file go together")
		}
		d.needFile(path+".tls.cert_file", t.CertFile, false)
		d.needFile(path+".tls.key_file", t.KeyFile, false)
		if t.CertFile != "" && t.KeyFile != "" {
			if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil && fileExists(t.CertFile) && fileExists(t.KeyFile) {
				d.failAt(path+".tls.cert_file", "cannot load the client certificate: %v", err)
			}
		}
	}
	h := p.Health
	hpath := path + ".health"
	switch h.Type {
	case "none", "http", "tcp", "websocket":
	default:
		d.failAt(hpath+".type", "unknown type %q: want none, http, tcp or websocket", h.Type)
	}
	if !strings.HasPrefix(h.Path, "/") {
		d.failAt(hpath+".path", "%q must start with /", h.Path)
	}
	if h.Interval <= 0 {
		d.failAt(hpath+".interval", "must be above 0")
	}
	if h.Timeout <= 0 {
		d.failAt(hpath+".timeout", "must be above 0")
	}
	if h.HealthyThreshold < 1 {
		d.failAt(hpath+".healthy_threshold", "must be at least 1")
	}
	if h.UnhealthyThreshold < 1 {
		d.failAt(hpath+".unhealthy_threshold", "must be at least 1")
	}
	if h.PassiveFailures < 0 {
		d.failAt(hpath+".passive_failures", "must not be negative (0 turns passive checks off)")
	}
	for i, s := range h.Statuses {
		if s < 100 || s > 599 {
			d.failAt(fmt.Sprintf("%s.statuses[%d]", hpath, i), "%d is not an HTTP status", s)
		}
	}
}

func fileExists(name string) bool {
	_, err := os.Stat(name)
	return err == nil
}

// MinDiscoveryInterval is the shortest time between two lookups of a
// pool's name, whatever its interval and its records' TTLs say.
const MinDiscoveryInterval = 500 * time.Millisecond

func (d *decoder) validateDiscovery(path string, x *Discovery) {
	switch {
	case x.DNS == "":
		d.failAt(path+".dns", "missing: the name to resolve, like _ws._tcp.chat.default.svc.cluster.local")
	case isAddress(x.DNS):
		d.failAt(path+".dns", "%q is an address, not a name: list it under backends instead", x.DNS)
	case !isDomainName(x.DNS):
		d.failAt(path+".dns", "bad name %q: want a DNS name, like chat.default.svc.cluster.local", x.DNS)
	}
	switch x.Type {
	case "srv":
		if x.Port != 0 {
			d.failAt(path+".port", "not used with type srv, whose records carry their ports: remove it, or use type a")
		}
	case "a":
		if x.Port < 1 || x.Port > 65535 {
			if _, set := d.lines[path+".port"]; set {
				d.failAt(path+".port", "%d is out of range: want 1 to 65535", x.Port)
			} else {
				d.failAt(path+".port", "missing: type a needs the backends' port, like port: 8080")
			}
		}
	default:
		d.failAt(path+".type", "unknown type %q: want srv or a (A and AAAA records)", x.Type)
	}
	if x.Resolver != "" {
		if err := checkAddress(x.Resolver, false); err != nil {
			d.failAt(path+".resolver", "%v (a DNS server is usually at port 53; empty means /etc/resolv.conf)", err)
		} else if host, _, _ := net.SplitHostPort(x.Resolver); host == "" {
			d.failAt(path+".resolver", "bad address %q: the DNS server needs a host", x.Resolver)
		}
	}
	if x.Interval < MinDiscoveryInterval {
		d.failAt(path+".interval", "%v is too short: want at least %v", x.Interval, MinDiscoveryInterval)
	}
}

// isDomainName reports whether s is a DNS name: dot-separated labels of 1
// to 63 bytes, 253 at most in all, a trailing dot allowed. Labels may
// start with an underscore (SRV names) and hold letters, digits, '-' and
// '_'.
func isDomainName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// isAddress reports whether s is an IP address, or an address and port.
func isAddress(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	_, err := netip.ParseAddrPort(s)
	return err == nil
}
