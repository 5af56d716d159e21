// Package config loads wsproxy's YAML configuration: strict decoding,
// defaults applied in one place, and validation that reports every mistake
// at once, each with its file, line and key.
//
// A loaded Config is immutable by convention: the proxy builds its routing
// table from it and a reload loads a new one. Load and Parse are safe for
// concurrent use.
package config

import (
	"net/netip"
	"sort"
	"time"
)

// Config is a whole configuration with every default filled in.
type Config struct {
	// Listeners accept client connections. At least one.
	Listeners []Listener `yaml:"listeners"`
	// Admin is the admin listener (/healthz, /readyz, /status).
	Admin Admin `yaml:"admin"`
	// Log configures logging.
	Log Log `yaml:"log"`
	// TrustedProxies are the peers whose X-Forwarded-For and Forwarded
	// headers are believed, as CIDRs or single addresses. Default none.
	TrustedProxies []netip.Prefix `yaml:"trusted_proxies"`
	// Admission caps sessions and handshakes server-wide.
	Admission Admission `yaml:"admission"`
	// Defaults are the limits of every route that does not override them.
	Defaults Limits `yaml:"defaults"`
	// Routes map request paths to pools.
	Routes []Route `yaml:"routes"`
	// Pools are the backend pools, by name.
	Pools map[string]*Pool `yaml:"pools"`
	// WatchConfig reloads the configuration, as SIGHUP does, when the file
	// or a file it names (certificates, keys, CAs, the admin token, JWKS files)
	// changes, including through a symlink swapped as Kubernetes updates a
	// mounted ConfigMap or Secret. Default false.
	WatchConfig bool `yaml:"watch_config"`
	// ShutdownDelay is how long the proxy keeps accepting and serving
	// after SIGTERM, with /readyz already answering 503, before it drains:
	// load balancers take that long to stop sending new connections.
	// Default 0.
	ShutdownDelay time.Duration `yaml:"shutdown_delay"`
	// PIDFile, when set, is where the process writes its PID once it
	// serves (written whole, by rename); the new process of a binary
	// upgrade (SIGUSR2) rewrites it. Relative to the config file. Default
	// "" (none).
	PIDFile string `yaml:"pid_file"`
	// UpgradeTimeout bounds a binary upgrade (SIGUSR2): a new process not
	// ready this long after its start is killed, and the old one serves
	// on. Default 30s.
	UpgradeTimeout time.Duration `yaml:"upgrade_timeout"`
	// Engine is how plain listeners take connections: "goroutines"
	// (fasthttp's accept loop and a goroutine per connection) or "loops"
	// (accept and WebSocket handshakes on the event loops, anything else
	// handed to fasthttp). Read at start. Default "loops".
	Engine string `yaml:"engine"`
}

// The engines (Config.Engine).
const (
	EngineGoroutines = "goroutines"
	EngineLoops      = "loops"
)

// Listener is an address the proxy accepts clients on.
type Listener struct {
	// Address is host:port; ":8080" listens on every interface.
	Address string `yaml:"address"`
	// TLS, when set, terminates TLS on this listener.
	TLS *ListenerTLS `yaml:"tls"`
	// ReusePort sets SO_REUSEPORT on the listening socket, so that
	// several processes (each with its own descriptor budget) can listen
	// on the same address and the kernel spreads new connections over
	// them. Every process sharing the port must set it. Default false:
	// a second process fails to bind. Read at start.
	ReusePort bool `yaml:"reuse_port"`
}

// ListenerTLS configures TLS termination.
type ListenerTLS struct {
	// Certificates are chosen by SNI: exact name, then an ACME domain,
	// then wildcard, then the first. At least one unless ACME is set.
	// Relative paths are relative to the config file.
	Certificates []Certificate `yaml:"certificates"`
	// ACME, when set, obtains and renews certificates for its domains.
	ACME *ACME `yaml:"acme"`
	// MinVersion is "1.2" (default) or "1.3".
	MinVersion string `yaml:"min_version"`
	// ClientCAFile, when set, asks clients for certificates signed by
	// these CAs.
	ClientCAFile string `yaml:"client_ca_file"`
	// ClientAuth is "require" (default) or "request" (verify if given).
	ClientAuth string `yaml:"client_auth"`
}

// ACME obtains certificates from an ACME CA (Let's Encrypt by default),
// answering TLS-ALPN-01 on the listener and HTTP-01 on a plain listener on
// port 80 when there is one.
type ACME struct {
	// Domains are the names to obtain certificates for; at least one. A
	// TLS name outside them never triggers an order.
	Domains []string `yaml:"domains"`
	// Email is the account's contact, for the CA's expiry notices.
	// Optional.
	Email string `yaml:"email"`
	// DirectoryURL is the CA's directory. Default Let's Encrypt's
	// production one.
	DirectoryURL string `yaml:"directory_url"`
	// CAFile holds extra CAs to trust for the ACME server itself (test
	// CAs). Optional.
	CAFile string `yaml:"ca_file"`
	// Storage is a directory for the account key and certificates
	// (created 0700, files 0600). Required.
	Storage string `yaml:"storage"`
	// RenewBefore renews a certificate this long before it expires; 0
	// means a third of its lifetime.
	RenewBefore time.Duration `yaml:"renew_before"`
}

// DefaultACMEDirectory is Let's Encrypt's production directory.
const DefaultACMEDirectory = "https://acme-v02.api.letsencrypt.org/directory"

// Certificate is a PEM certificate chain and its key.
type Certificate struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Admin configures the admin listener.
type Admin struct {
	// Address is host:port. Default "127.0.0.1:9090"; empty turns the admin
	// listener off.
	Address string `yaml:"address"`
	// Pprof serves /debug/pprof/ on the admin listener. Default false.
	Pprof bool `yaml:"pprof"`
	// TokenFile holds the bearer token that the state-changing endpoints
	// (drain, undrain, reload) require. Empty (default): they answer only
	// on connections to a loopback address.
	TokenFile string `yaml:"token_file"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
	// Format is json (default) or console.
	Format string `yaml:"format"`
	// AccessLog writes a line per WebSocket session and per plain HTTP
	// request. Default true.
	AccessLog bool `yaml:"access_log"`
	// AccessLogSample is the fraction of sessions and requests that get
	// an access-log line, from 0 to 1. Default 1 (every one).
	AccessLogSample float64 `yaml:"access_log_sample"`
	// AccessLogIdentity names a request header (one that auth or jwt
	// sets, like X-User-Id) whose value access-log lines carry as
	// identity. Default empty: lines name no identity.
	AccessLogIdentity string `yaml:"access_log_identity"`
}

// Admission caps who gets in: live sessions and handshake rates, counted
// server-wide. A client address is an IPv4 address or an IPv6 /64 (one
// host's share of a network); behind trusted_proxies it is the address
// they forward.
type Admission struct {
	// MaxSessions caps live WebSocket sessions, handshakes in progress
	// included; beyond it an upgrade gets 503 with Retry-After. 0
	// (default) means what the open-files limit allows after
	// MaxConnections: each session holds two descriptors, and a
	// twentieth of the limit is kept for everything else.
	MaxSessions int `yaml:"max_sessions"`
	// MaxSessionsPerIP caps the live sessions of one client address;
	// beyond it an upgrade gets 429 with Retry-After. 0 (default) turns it
	// off.
	MaxSessionsPerIP int `yaml:"max_sessions_per_ip"`
	// HandshakesPerSecondPerIP is how many upgrade requests one client
	// address may make per second on average; above it they get 429 with
	// Retry-After. 0 (default) turns it off.
	HandshakesPerSecondPerIP float64 `yaml:"handshakes_per_second_per_ip"`
	// HandshakeBurstPerIP is how many upgrades a client address may make
	// at once on top of the rate. Default 0: the rate, rounded up.
	HandshakeBurstPerIP int `yaml:"handshake_burst_per_ip"`
	// MaxHeaderBytes bounds a request's line and headers together; a
	// longer head gets 431. Accepts sizes like 8KiB. Default 8KiB. Read
	// at start: a reload does not change it.
	MaxHeaderBytes int64 `yaml:"max_header_bytes"`
	// RetryAfter is what a client refused by max_sessions or a route's
	// max_sessions is told to wait, spread at random up to twice as long
	// so that refused clients do not come back together. Default 5s.
	RetryAfter time.Duration `yaml:"retry_after"`
	// MaxConnections caps client connections that are open but not (yet)
	// WebSocket sessions: requests being read, plain HTTP keep-alive
	// connections, handshakes before their ticket. At the cap the proxy
	// stops accepting until one closes, so the kernel's backlog holds the
	// rest instead of the process running out of descriptors. 0 (default)
	// means what the open-files limit leaves after max_sessions: each such
	// connection may hold a backend connection too.
	MaxConnections int `yaml:"max_connections"`
}

// Limits are the timeouts and limits of a route.
type Limits struct {
	// HandshakeTimeout bounds connecting to a backend and, for an
	// upgrade, reading its answer; for plain HTTP only the connect and TLS
	// handshake. The defaults value also bounds reading a client's request
	// head (408), fixed at start. Default 10s.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// IdleTimeout closes a session (1001) after no data message in either
	// direction for this long; 0 turns it off. Default 10m.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// ReadTimeout closes a session (1001) when one peer sent no frame at
	// all (pongs count) for this long; for plain HTTP it is the longest
	// silence between two reads from the backend (504 before the response
	// head) or of a client's upload, never a bound on a whole response. 0
	// turns it off. Default 60s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout closes a session whose peer accepts no bytes for this
	// long (back-pressure on the sender meanwhile); for plain HTTP a write
	// to the backend that makes no progress this long fails the request.
	// Default 10s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// PingInterval is how often the proxy pings a silent peer; 0 turns
	// pings off. Default 20s.
	PingInterval time.Duration `yaml:"ping_interval"`
	// MaxMessageBytes closes a session (1009) whose peer sends a longer
	// message, counted over its fragments. Accepts sizes like 64KiB, 1MiB.
	// Default 1MiB.
	MaxMessageBytes int64 `yaml:"max_message_bytes"`
	// MaxMessagesPerSecond closes a session (1008) whose client sends
	// data messages faster than this on average; 0 turns it off.
	// Default 0.
	MaxMessagesPerSecond float64 `yaml:"max_messages_per_second"`
	// MessageBurst is how many messages a client may send at once on top
	// of the rate. Default 0: the rate, rounded up.
	MessageBurst int `yaml:"message_burst"`
	// DrainTimeout is the window over which drained sessions are closed
	// (scale-down, removed routes, shutdown). Default 30s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// DrainCloseCode is the Close code drained clients get: 1001 "going
	// away" (default) or 1012 "service restart".
	DrainCloseCode int `yaml:"drain_close_code"`
	// BackendGoneCloseCode is the Close code a client gets when its
	// backend vanished without a Close or broke the protocol: 1014 "bad
	// gateway" (default, RFC 6455 registry; some client libraries reject
	// it as invalid), 1011 "internal error" or 1001 "going away".
	BackendGoneCloseCode int `yaml:"backend_gone_close_code"`
	// MaxControlFramesPerSecond closes a session (1008) whose client sends
	// pings, and pongs that do not answer the proxy's own, faster than this
	// on average, with a burst of twice the rate. 0 turns it off. Default
	// 10.
	MaxControlFramesPerSecond float64 `yaml:"max_control_frames_per_second"`
}

// Route maps a request path to a pool.
type Route struct {
	// Path is matched by longest prefix at a segment boundary, or exactly
	// with Exact. Required; starts with "/".
	Path  string `yaml:"path"`
	Exact bool   `yaml:"exact"`
	// Pool names the pool. Required.
	Pool string `yaml:"pool"`
	// HashKey picks the backend: ip (default), header:NAME, cookie:NAME,
	// query:NAME or path. A request without the key falls back to ip.
	HashKey HashKey `yaml:"hash_key"`
	// AllowedOrigins are the origins (scheme://host[:port]) browsers may
	// open WebSockets from; empty allows any.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// MaxSessions caps the route's live sessions, handshakes in progress
	// included; beyond it an upgrade gets 503 with Retry-After. 0
	// (default) means no cap of its own.
	MaxSessions int `yaml:"max_sessions"`
	// Auth, when set, asks a forward-auth service about each request
	// before it reaches a backend. Nil (default): no such check.
	Auth *Auth `yaml:"auth"`
	// JWT, when set, requires each request to carry a valid JSON Web
	// Token. Nil (default): no token is needed.
	JWT *JWT `yaml:"jwt"`
	// Affinity, when set, keeps a client on one backend with a cookie the
	// proxy sets itself; nil (default) means the hash alone places every
	// request.
	Affinity *Affinity `yaml:"affinity"`
	// Limits are the defaults with this route's overrides: any key of
	// defaults may appear on a route.
	Limits Limits `yaml:",inline"`
}

// Auth is a route's forward authentication: a GET to URL with the client's
// headers decides whether a request goes on.
type Auth struct {
	// URL is the auth service's http or https URL. Required.
	URL string `yaml:"url"`
	// Timeout bounds one call to it. Default 2s.
	Timeout time.Duration `yaml:"timeout"`
	// CopyHeaders are copied from a 2xx answer onto the backend request;
	// the client's own headers of these names are dropped.
	CopyHeaders []string `yaml:"copy_headers"`
	// CacheTTL keeps a 2xx answer this long, keyed on the request's
	// credentials (Authorization, Cookie, Sec-WebSocket-Protocol and the
	// query string). Default 0: no cache.
	CacheTTL time.Duration `yaml:"cache_ttl"`
	// OnError is what a request gets when the auth service cannot be
	// reached or fails to answer: deny (default, 503) or allow.
	OnError string `yaml:"on_error"`
}

// JWT is a route's token validation.
type JWT struct {
	// JWKSFile or JWKSURL holds the keys tokens are signed with: exactly
	// one of them. A file is read at load and reload; a URL is fetched in
	// the background every 5 minutes and, on a token with an unknown key
	// id, at most every 30s, the last good keys kept.
	JWKSFile string `yaml:"jwks_file"`
	JWKSURL  string `yaml:"jwks_url"`
	// Issuer, when set, must be the tokens' iss.
	Issuer string `yaml:"issuer"`
	// Audiences, when set, must include one of the tokens' aud.
	Audiences []string `yaml:"audiences"`
	// From is where the token is: header:NAME (a Bearer token; default
	// header:Authorization), query:NAME or cookie:NAME.
	From string `yaml:"from"`
	// ClaimsToHeaders sets a header from a claim on the backend request,
	// like {sub: X-User-Id}; the client's own headers of these names are
	// dropped.
	ClaimsToHeaders map[string]string `yaml:"claims_to_headers"`
	// Leeway is the clock skew allowed on exp, nbf and iat; a session
	// is closed (1008 "token expired") when exp plus Leeway passes.
	// Default 30s.
	Leeway time.Duration `yaml:"leeway"`
}

// Affinity configures a route's affinity cookie: it names the backend
// that served a client (opaquely, under an HMAC), and the client's next
// requests go there while it is available.
type Affinity struct {
	// Cookie is the cookie's name, an RFC 6265 token. Default
	// wsp_backend.
	Cookie string `yaml:"cookie"`
	// TTL is the cookie's Max-Age, in whole seconds; 0 (default) makes it
	// a browser-session cookie.
	TTL time.Duration `yaml:"ttl"`
	// Secure marks the cookie Secure: auto (default) on TLS listeners,
	// true always, false never.
	Secure Secure `yaml:"secure"`
	// HTTPOnly hides the cookie from scripts. Default true.
	HTTPOnly bool `yaml:"http_only"`
	// SameSite is lax (default), strict or none; none needs secure auto
	// or true, as browsers drop a SameSite=None cookie without Secure.
	SameSite string `yaml:"same_site"`
	// KeyFile holds the HMAC key (at least 32 bytes, a trailing newline
	// not counted) that instances of a fleet share so that each honours
	// the others' cookies. Empty (default): a random key per process, so
	// cookies last as long as the process (a reload keeps it).
	KeyFile string `yaml:"key_file"`
}

// Secure is an affinity cookie's Secure setting: "auto", "true" or
// "false". It decodes from a boolean or the string auto.
type Secure string

// Secure settings.
const (
	SecureAuto   Secure = "auto"
	SecureAlways Secure = "true"
	SecureNever  Secure = "false"
)

// MinAffinityKeyBytes is the shortest affinity key_file accepted.
const MinAffinityKeyBytes = 32

// HashKind is what a hash key reads.
type HashKind int

// Hash key kinds.
const (
	HashIP HashKind = iota
	HashHeader
	HashCookie
	HashQuery
	HashPath
)

// HashKey is a parsed hash_key.
type HashKey struct {
	Kind HashKind
	Name string // the header, cookie or query parameter
}

// String returns the key in its config form.
func (k HashKey) String() string {
	switch k.Kind {
	case HashHeader:
		return "header:" + k.Name
	case HashCookie:
		return "cookie:" + k.Name
	case HashQuery:
		return "query:" + k.Name
	case HashPath:
		return "path"
	}
	return "ip"
}

// Pool is a pool of backends.
type Pool struct {
	// Name is the pool's key in pools.
	Name string `yaml:"-"`
	// BoundedLoad is the load factor of consistent hashing with bounded
	// loads: no backend holds more than ceil(c × average) sessions. 0
	// (default) turns it off; otherwise at least 1.
	BoundedLoad float64 `yaml:"bounded_load"`
	// DrainRate caps drained closes per second for this pool; 0 (default)
	// means no cap beyond spreading them over drain_timeout.
	DrainRate float64 `yaml:"drain_rate"`
	// IdleConnTimeout closes pooled plain HTTP connections to a backend
	// after they sat idle this long. Keep it below the backend's own
	// keep-alive timeout (Node's http server: 5s, gunicorn: 2s); a request
	// that meets a connection the backend closed anyway is retried once on
	// a fresh one. Default 4s; 0 turns keep-alive to backends off.
	IdleConnTimeout time.Duration `yaml:"idle_conn_timeout"`
	// Backends are the pool's members. At least one, unless Discovery
	// finds them.
	Backends []Backend `yaml:"backends"`
	// Discovery, when set, finds (more of) the pool's backends in DNS;
	// nil means the list above is all there is.
	Discovery *Discovery `yaml:"discovery"`
	// TLS makes the proxy speak wss (and https) to the backends.
	TLS PoolTLS `yaml:"tls"`
	// Health configures health checks.
	Health Health `yaml:"health"`
}

// Backend is one member of a pool.
type Backend struct {
	// Address is host:port. Required.
	Address string `yaml:"address"`
	// Weight is the backend's share of new sessions. Default 1; 0 drains
	// it (no new sessions, live ones closed gracefully).
	Weight int `yaml:"weight"`
}

// Discovery names a pool's backends by DNS. The lookups run while the
// proxy runs, not at load: `check` validates without resolving.
type Discovery struct {
	// DNS is the name to resolve, like _ws._tcp.chat.default.svc.cluster.local
	// (SRV) or chat.default.svc.cluster.local (A). Required.
	DNS string `yaml:"dns"`
	// Type is srv (default: each record's target and port is a backend,
	// its weight the backend's weight) or a (A and AAAA records: one
	// backend per address, all of weight 1, at Port).
	Type string `yaml:"type"`
	// Port is the backends' port with type a. Required then; not allowed
	// with srv, whose records carry their ports.
	Port int `yaml:"port"`
	// Resolver is the DNS server's host:port; empty (default) means the
	// servers, search domains and ndots of /etc/resolv.conf.
	Resolver string `yaml:"resolver"`
	// Interval is how often the name is resolved. A shorter TTL in the
	// answer shortens it, never below 500ms. Default 5s; at least 500ms.
	Interval time.Duration `yaml:"interval"`
	// Hold is how long a backend missing from the answers stays, from the
	// first answer without it, before it is taken out (drained as a
	// reload that removes it would). Failed lookups never take one out.
	// Default 30s; 0 takes it out at the first answer without it.
	Hold time.Duration `yaml:"hold"`
}

// PoolTLS configures TLS to a pool's backends.
type PoolTLS struct {
	Enabled bool `yaml:"enabled"`
	// ServerName is verified against the backends' certificates; empty
	// means each backend's host.
	ServerName string `yaml:"server_name"`
	// CAFile holds the CAs of the backends' certificates; empty means the
	// system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate to present.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// InsecureSkipVerify accepts any certificate (logged as a warning).
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Health configures a pool's health checks.
type Health struct {
	// Type is none (default: passive checks only), http, tcp or websocket.
	Type string `yaml:"type"`
	// Path is requested by http and websocket checks. Default /healthz.
	Path string `yaml:"path"`
	// Interval between probes (jittered). Default 5s.
	Interval time.Duration `yaml:"interval"`
	// Timeout of one probe. Default 2s.
	Timeout time.Duration `yaml:"timeout"`
	// HealthyThreshold successes in a row bring a backend back. Default 2.
	HealthyThreshold int `yaml:"healthy_threshold"`
	// UnhealthyThreshold failures in a row take it out. Default 3.
	UnhealthyThreshold int `yaml:"unhealthy_threshold"`
	// Statuses are the HTTP statuses that count as healthy; empty means
	// any 2xx or 3xx.
	Statuses []int `yaml:"statuses"`
	// PassiveFailures consecutive failures of the backend's own seen by
	// the proxy (connect refused or timed out, reset or EOF before any
	// answer byte on a fresh connection, no 101 in time) take it out at
	// once; an answer resets the count; the proxy's and the client's own
	// failures never count. 0 turns this off. Default 3.
	PassiveFailures int `yaml:"passive_failures"`
}

// defaults returns a Config holding every default: the one place they are
// set.
func defaults() *Config {
	return &Config{
		Admin:          Admin{Address: "127.0.0.1:9090"},
		UpgradeTimeout: 30 * time.Second,
		Engine:         EngineLoops,
		Log:            Log{Level: "info", Format: "json", AccessLog: true, AccessLogSample: 1},
		Admission: Admission{
			MaxHeaderBytes: 8 << 10,
			RetryAfter:     5 * time.Second,
		},
		Defaults: Limits{
			HandshakeTimeout: 10 * time.Second,
			IdleTimeout:      10 * time.Minute,
			ReadTimeout:      60 * time.Second,
			WriteTimeout:     10 * time.Second,
			PingInterval:     20 * time.Second,
			MaxMessageBytes:  1 << 20,
			DrainTimeout:     30 * time.Second,
			DrainCloseCode:   1001,

			BackendGoneCloseCode:      1014,
			MaxControlFramesPerSecond: 10,
		},
		Pools: map[string]*Pool{},
	}
}

// defaultBackend is a backend before its keys are read.
func defaultBackend() Backend { return Backend{Weight: 1} }

// defaultPool is a pool before its keys are read.
func defaultPool() Pool {
	return Pool{IdleConnTimeout: 4 * time.Second, Health: defaultHealth()}
}

// defaultDiscovery is a pool's discovery block before its keys are read.
func defaultDiscovery() Discovery {
	return Discovery{Type: "srv", Interval: 5 * time.Second, Hold: 30 * time.Second}
}

// defaultAuth is a route's auth block before its keys are read.
func defaultAuth() Auth { return Auth{Timeout: 2 * time.Second, OnError: "deny"} }

// defaultJWT is a route's jwt block before its keys are read.
func defaultJWT() JWT { return JWT{From: "header:Authorization", Leeway: 30 * time.Second} }

// defaultHealth is a pool's health block before its keys are read.
func defaultHealth() Health {
	return Health{
		Type:               "none",
		Path:               "/healthz",
		Interval:           5 * time.Second,
		Timeout:            2 * time.Second,
		HealthyThreshold:   2,
		UnhealthyThreshold: 3,
		PassiveFailures:    3,
	}
}

// defaultAffinity is a route's affinity block before its keys are read.
func defaultAffinity() Affinity {
	return Affinity{Cookie: "wsp_backend", Secure: SecureAuto, HTTPOnly: true, SameSite: "lax"}
}

// defaultListenerTLS is a listener's TLS block before its keys are read.
func defaultListenerTLS() ListenerTLS {
	return ListenerTLS{MinVersion: "1.2", ClientAuth: "require"}
}

// PoolNames returns the pool names, sorted.
func (c *Config) PoolNames() []string {
	names := make([]string, 0, len(c.Pools))
	for n := range c.Pools {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
