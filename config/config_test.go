package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/wsproxy/wsproxy/internal/testpki"
)

const testdata = "../testdata/config/"

// TestBadFiles checks that each file with one mistake is refused with
// exactly one error, at the right line and key.
func TestBadFiles(t *testing.T) {
	cases := []struct {
		file string
		line int
		key  string
		msg  string
	}{
		{"bad-unknown-key.yaml", 7, "defaults.idle_timout", "did you mean idle_timeout?"},
		{"bad-wrong-type.yaml", 15, "pools.chat.bounded_load", `want a number, got "high"`},
		{"bad-duration.yaml", 8, "defaults.read_timeout", `bad duration "60"`},
		{"bad-size.yaml", 9, "defaults.max_message_bytes", `bad size "1 megabyte"`},
		{"bad-missing-pool.yaml", 11, "routes[0].pool", `no pool named "chats"`},
		{"bad-duplicate-route.yaml", 13, "routes[1].path", "also the path of routes[0]"},
		{"bad-no-backends.yaml", 16, "pools.chat.backends", "no backends"},
		{"bad-backend-address.yaml", 18, "pools.chat.backends[1].address", "port must be a number from 1 to 65535"},
		{"bad-duplicate-backend.yaml", 18, "pools.chat.backends[1].address", "listed twice"},
		{"bad-hash-key.yaml", 12, "routes[0].hash_key", `bad hash key "user-id"`},
		{"bad-negative-weight.yaml", 18, "pools.chat.backends[1].weight", "-1 is out of range"},
		{"bad-zero-interval.yaml", 19, "pools.chat.health.interval", "must be above 0"},
		{"bad-tls-no-certs.yaml", 5, "listeners[1].tls.certificates", "needs at least one certificate"},
		{"bad-admin-clash.yaml", 5, "admin.address", "clashes with listeners[0]"},
		{"bad-drain-close-code.yaml", 9, "defaults.drain_close_code", "1000 is not allowed"},
		{"bad-message-rate.yaml", 9, "routes[0].max_messages_per_second", "must not be negative"},
		{"bad-trusted-proxy.yaml", 6, "trusted_proxies[0]", `bad CIDR "10.0.0.0/33"`},
		{"bad-health-type.yaml", 19, "pools.chat.health.type", `unknown type "grpc"`},
		{"bad-yaml-syntax.yaml", 18, "", "invalid YAML"},
		{"bad-access-log-sample.yaml", 4, "log.access_log_sample", "1.5 is not a fraction"},
		{"bad-header-bytes.yaml", 6, "admission.max_header_bytes", "512 is out of range"},
		{"bad-pool-setting-indent.yaml", 10, "pools.backends", "looks like a pool setting: check its indentation"},
		{"bad-route-setting-indent.yaml", 6, "pool", "looks like a route setting: check its indentation"},
		{"bad-yaml-list-indent.yaml", 12, "", "invalid YAML: did not find expected key"},
		{"bad-yaml-tab.yaml", 10, "", "invalid YAML: found a tab character"},
		{"bad-discovery-port.yaml", 9, "pools.chat.discovery.port", "missing: type a needs the backends' port"},
	}
	files, _ := filepath.Glob(testdata + "bad-*.yaml")
	if len(files) != len(cases) {
		t.Errorf("%d bad-*.yaml files but %d cases: keep them in step", len(files), len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			_, err := Load(testdata + tc.file)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load = %v, want Errors", err)
			}
			if len(errs) != 1 {
				t.Fatalf("want one error, got %d:\n%v", len(errs), err)
			}
			e := errs[0]
			if e.Line != tc.line || e.Key != tc.key || !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("got %v\nwant line %d, key %q, message containing %q", e, tc.line, tc.key, tc.msg)
			}
			if !strings.HasPrefix(e.Error(), testdata+tc.file+":") {
				t.Errorf("error %q does not start with the file name", e.Error())
			}
		})
	}
}

// TestEveryErrorReported checks that a file with several mistakes gets
// every one back, in line order, each with its key and message.
func TestEveryErrorReported(t *testing.T) {
	type wantErr struct {
		line int
		key  string
		msg  string // a part of the message; "" checks line and key only
	}
	for _, tc := range []struct {
		file string
		want []wantErr
	}{
		{"many-errors.yaml", []wantErr{
			{7, "defaults.idle_timout", ""},
			{11, "routes[0].pool", ""},
			{12, "routes[0].hash_key", ""},
			{18, "pools.chat.backends[1].address", ""},
		}},
		{"many-admission-errors.yaml", []wantErr{
			{5, "admission.max_sessions", "must not be negative"},
			{7, "admission.handshakes_per_second_per_ip", "must not be negative"},
			{8, "admission.max_header_bytes", "100 is out of range"},
			{9, "admission.retry_after", "500ms is too short"},
			{13, "routes[0].max_sessions", "must not be negative"},
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			_, err := Load(testdata + tc.file)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load = %v, want Errors", err)
			}
			if len(errs) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(tc.want), err)
			}
			for i, w := range tc.want {
				if errs[i].Line != w.line || errs[i].Key != w.key || !strings.Contains(errs[i].Msg, w.msg) {
					t.Errorf("error %d: got %v, want line %d key %s containing %q", i, errs[i], w.line, w.key, w.msg)
				}
			}
		})
	}
}

// TestDedentedKeys checks that a key indented one level too little, so
// that it reads as a pool name or a key of the mapping above, is reported
// once as the setting it is, and nothing else is reported for its sake.
func TestDedentedKeys(t *testing.T) {
	const head = "listeners:\n  - address: \":8080\"\nroutes:\n  - {path: /, pool: chat}\n" // 4 lines
	for _, tc := range []struct {
		name, yaml string
		want       string // every error, as printed; "" for a valid file
	}{
		{"pool settings under pools", head + `pools:
  chat:
  bounded_load: 1.25
  backends:
    - {address: "127.0.0.1:9001"}
  health: {type: http, path: /healthz}
`, "t.yaml:7: pools.bounded_load: looks like a pool setting, as do backends (line 8) and health (line 10): check their indentation (as written they name new pools, after pool chat)"},
		{"pool setting before any pool", head + `pools:
  backends:
    - {address: "127.0.0.1:9001"}
  chat:
    backends: [{address: "127.0.0.1:9002"}]
`, "t.yaml:6: pools.backends: looks like a pool setting: check its indentation (as written it names a new pool)"},
		{"pool setting the pool has", head + `pools:
  chat:
    backends: [{address: "127.0.0.1:9001"}]
  backends: [{address: "127.0.0.1:9002"}]
`, "t.yaml:8: pools.backends: looks like a pool setting: check its indentation (as written it names a new pool, after pool chat)"},
		{"moved setting still checked", head + `pools:
  chat:
    backends: [{address: "127.0.0.1:9001"}]
  bounded_load: 0.5
`, "t.yaml:8: pools.bounded_load: looks like a pool setting: check its indentation (as written it names a new pool, after pool chat)\n" +
			"t.yaml:8: pools.chat.bounded_load: 0.5 is out of range: want 0 (off) or a factor from 1 to 100, like 1.25"},
		{"pools named like settings", `listeners: [{address: ":8080"}]
routes: [{path: /, pool: health}, {path: /b, pool: backends}]
pools:
  health: {backends: [{address: "127.0.0.1:9001"}]}
  backends:
    health: {type: tcp}
    backends: [{address: "127.0.0.1:9002"}]
`, ""},
		{"route settings at the top level", `listeners: [{address: ":8080"}]
routes:
- path: /
pool: chat
hash_key: header:X-User
pools: {chat: {backends: [{address: "127.0.0.1:9001"}]}}
`, "t.yaml:4: pool: looks like a route setting, as does hash_key (line 5): check their indentation (as written they are top-level keys, after routes)"},
		{"defaults setting at the top level", head + `defaults:
  idle_timeout: 5m
read_timeout: 90s
pools: {chat: {backends: [{address: "127.0.0.1:9001"}]}}
`, "t.yaml:7: read_timeout: looks like a defaults setting: check its indentation (as written it is a top-level key, after defaults)"},
		{"listener setting at the top level", `listeners:
- address: ":8080"
tls: {min_version: "1.4"}
routes: [{path: /, pool: chat}]
pools: {chat: {backends: [{address: "127.0.0.1:9001"}]}}
`, "t.yaml:3: tls: looks like a listener setting: check its indentation (as written it is a top-level key, after listeners)\n" +
			"t.yaml:3: listeners[0].tls.certificates: a TLS listener needs at least one certificate ({cert_file, key_file}) or an acme block\n" +
			"t.yaml:3: listeners[0].tls.min_version: unknown TLS version \"1.4\": want \"1.2\" or \"1.3\""},
		{"backend and health settings in a pool", head + `pools:
  chat:
    backends:
    - address: "127.0.0.1:9001"
    weight: 2
    health:
      type: http
    path: /hz
`, "t.yaml:9: pools.chat.weight: looks like a backend setting: check its indentation (as written it is a key of pools.chat, after backends)\n" +
			"t.yaml:12: pools.chat.path: looks like a health setting: check its indentation (as written it is a key of pools.chat, after health)"},
		{"admin setting at the top level", `admin:
  pprof: true
address: "127.0.0.1:9999"
listeners: [{address: ":8080"}]
routes: [{path: /, pool: chat}]
pools: {chat: {backends: [{address: "127.0.0.1:9001"}]}}
`, "t.yaml:3: address: looks like an admin setting: check its indentation (as written it is a top-level key, after admin)"},
		{"a typo stays a typo", head + `pools: {chat: {backends: [{address: "127.0.0.1:9001"}]}}
pool: x
`, "t.yaml:6: pool: unknown key (did you mean pools?)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(tc.yaml))
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

// TestSyntaxErrorLines checks that a YAML syntax error is reported at the
// line to edit, which yaml.v3 itself puts at the start of the mapping or
// scalar it was reading.
func TestSyntaxErrorLines(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"list item indented more than the one above", "pools:\n  chat:\n    backends:\n    - {address: a}\n     - {address: b}\n",
			"t.yaml:5: invalid YAML: did not find expected key (check this line's indentation)"},
		{"list item indented less than the one above", "pools:\n  chat:\n    backends:\n      - {address: a}\n    - {address: b}\n",
			"t.yaml:5: invalid YAML: did not find expected key (check this line's indentation)"},
		{"key of a list item indented less than the item", "routes:\n  - path: /\n    exact: true\n  pool: p\n",
			"t.yaml:4: invalid YAML: did not find expected '-' indicator (check this line's indentation)"},
		{"key of a list item at the dash", "pools:\n  chat:\n    backends:\n      - address: a\n      weight: 2\n",
			"t.yaml:5: invalid YAML: did not find expected '-' indicator (check this line's indentation)"},
		{"key indented less than the one above", "a:\n  b: 1\n c: 2\n",
			"t.yaml:3: invalid YAML: did not find expected key (check this line's indentation)"},
		{"tab before a key", "pools:\n  chat:\n    bounded_load: 1.25\n\tbackends: []\n",
			"t.yaml:4: invalid YAML: found a tab character that violates indentation (indent with spaces, not tabs)"},
		{"tab before a list item", "pools:\n  chat:\n    backends:\n      - {address: a}\n\t  - {address: b}\n",
			"t.yaml:5: invalid YAML: found character that cannot start any token (indent with spaces, not tabs)"},
		{"tab on the first line", "\tlisteners: []\n",
			"t.yaml:1: invalid YAML: found character that cannot start any token (indent with spaces, not tabs)"},
		{"windows line ends", "pools:\r\n  chat:\r\n    backends:\r\n    - {address: a}\r\n     - {address: b}\r\n",
			"t.yaml:5: invalid YAML: did not find expected key (check this line's indentation)"},
		{"unclosed quote", "a: 1\nb: \"x\nc: 2\n",
			"t.yaml:2: invalid YAML: found unexpected end of stream"},
		{"unknown alias", "a: 1\nb: 2\nc: *x\n",
			"t.yaml:3: invalid YAML: unknown anchor 'x' referenced"},
		{"multi-line flow list before the mistake", "routes: [\n  {path: /},\n  {path: /b}\n]\na:\n  b: 1\n c: 2\n",
			"t.yaml:7: invalid YAML: did not find expected key (check this line's indentation)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(tc.yaml))
			if err == nil || err.Error() != tc.want {
				t.Errorf("got  %v\nwant %s", err, tc.want)
			}
		})
	}
}

func TestExampleAndGoodFiles(t *testing.T) {
	files, _ := filepath.Glob(testdata + "good-*.yaml")
	files = append(files, "../config.example.yaml")
	for _, f := range files {
		if _, err := Load(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// The Kubernetes manifests embed a config in a ConfigMap: it must load
// as it stands, or a deployment copied from them crash-loops.
func TestKubernetesConfigMapLoads(t *testing.T) {
	data, err := os.ReadFile("../deploy/kubernetes/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(data, &cm); err != nil {
		t.Fatal(err)
	}
	embedded, ok := cm.Data["config.yaml"]
	if !ok {
		t.Fatal("configmap.yaml has no data.config.yaml")
	}
	c, err := Parse("configmap.yaml:config.yaml", []byte(embedded))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Routes) == 0 || len(c.Pools) == 0 {
		t.Fatalf("embedded config has %d routes and %d pools", len(c.Routes), len(c.Pools))
	}
}

func TestDefaults(t *testing.T) {
	c, err := Load(testdata + "good-minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := defaults().Defaults
	if c.Defaults != want {
		t.Errorf("defaults = %+v, want %+v", c.Defaults, want)
	}
	r := c.Routes[0]
	if r.Limits != want || r.HashKey != (HashKey{Kind: HashIP}) || r.Exact {
		t.Errorf("route = %+v", r)
	}
	p := c.Pools["app"]
	if p.Name != "app" || p.Backends[0].Weight != 1 || !reflect.DeepEqual(p.Health, defaultHealth()) || p.BoundedLoad != 0 {
		t.Errorf("pool = %+v", p)
	}
	if c.Admin.Address != "127.0.0.1:9090" || c.Log != (Log{Level: "info", Format: "json", AccessLog: true, AccessLogSample: 1}) {
		t.Errorf("admin %+v log %+v", c.Admin, c.Log)
	}
}

func TestRouteOverridesDefaults(t *testing.T) {
	c, err := Load(testdata + "good-full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	chat, ticker := c.Routes[0].Limits, c.Routes[2].Limits
	if chat.IdleTimeout != 0 || chat.MaxMessageBytes != 4<<20 || chat.ReadTimeout != 45*time.Second || chat.DrainCloseCode != 1012 {
		t.Errorf("chat limits = %+v", chat)
	}
	if ticker.PingInterval != 0 || ticker.IdleTimeout != time.Hour || ticker.MaxMessageBytes != 64<<10 {
		t.Errorf("ticker limits = %+v", ticker)
	}
	want := Admission{MaxSessions: 50000, MaxSessionsPerIP: 100, HandshakesPerSecondPerIP: 2.5, HandshakeBurstPerIP: 20, MaxHeaderBytes: 16 << 10, RetryAfter: 10 * time.Second}
	if c.Admission != want || c.Routes[0].MaxSessions != 20000 || c.Routes[1].MaxSessions != 0 {
		t.Errorf("admission = %+v, route caps %d %d", c.Admission, c.Routes[0].MaxSessions, c.Routes[1].MaxSessions)
	}
	if k := c.Routes[0].HashKey; k != (HashKey{Kind: HashHeader, Name: "X-User-Id"}) {
		t.Errorf("hash key = %+v", k)
	}
	if got := c.TrustedProxies; len(got) != 3 || got[1] != netip.MustParsePrefix("192.168.1.7/32") {
		t.Errorf("trusted proxies = %v", got)
	}
	if b := c.Pools["chat"].Backends; b[0].Weight != 2 || b[1].Weight != 1 || b[2].Weight != 0 {
		t.Errorf("weights = %+v", b)
	}
	if h := c.Pools["market"].Health; h.Type != "websocket" || h.Path != "/ws-health" || h.PassiveFailures != 0 || h.Interval != 5*time.Second {
		t.Errorf("market health = %+v", h)
	}
	if c.Pools["chat"].Discovery != nil {
		t.Errorf("chat discovery = %+v, want none", c.Pools["chat"].Discovery)
	}
	if d := c.Pools["feed"].Discovery; d == nil || *d != (Discovery{DNS: "_ws._tcp.feed.default.svc.cluster.local", Type: "srv", Interval: 5 * time.Second, Hold: 10 * time.Second}) {
		t.Errorf("feed discovery = %+v", d)
	}
	if d := c.Pools["scores"].Discovery; d == nil || *d != (Discovery{DNS: "scores.default.svc.cluster.local.", Type: "a", Port: 8080, Resolver: "10.96.0.10:53", Interval: 2 * time.Second}) || len(c.Pools["scores"].Backends) != 1 {
		t.Errorf("scores discovery = %+v, backends %v", d, c.Pools["scores"].Backends)
	}
}

// TestDefaultsBeforeRoutes checks that a route inherits the defaults
// section even when it comes after the routes in the file.
func TestDefaultsBeforeRoutes(t *testing.T) {
	c, err := Parse("t.yaml", []byte(`
listeners: [{address: ":8080"}]
routes:
  - {path: /, pool: p, read_timeout: 90s}
pools:
  p: {backends: [{address: "127.0.0.1:1"}]}
defaults:
  idle_timeout: 5m
`))
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Routes[0].Limits; l.IdleTimeout != 5*time.Minute || l.ReadTimeout != 90*time.Second {
		t.Errorf("route limits = %+v", l)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	for _, f := range []string{"good-full.yaml", "good-minimal.yaml"} {
		c, err := Load(testdata + f)
		if err != nil {
			t.Fatal(err)
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(f, out)
		if err != nil {
			t.Fatalf("%s: effective config does not load: %v\n%s", f, err, out)
		}
		if !reflect.DeepEqual(c, back) {
			t.Errorf("%s: round trip differs:\n%s", f, out)
		}
	}
}

func TestRelativePathsAndTLSFiles(t *testing.T) {
	ca := testpki.NewCA(t)
	leaf := ca.Issue(t, "proxy.test", testpki.Options{Names: []string{"proxy.test"}})
	dir := t.TempDir()
	for name, src := range map[string]string{"site.pem": leaf.CertFile, "site-key.pem": leaf.KeyFile, "ca.pem": ca.File} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(dir, "wsproxy.yaml")
	body := `
listeners:
  - address: "127.0.0.1:8443"
    tls:
      certificates: [{cert_file: site.pem, key_file: site-key.pem}]
      client_ca_file: ca.pem
      client_auth: request
      min_version: "1.3"
routes: [{path: /, pool: p}]
pools:
  p:
    backends: [{address: "127.0.0.1:9001"}]
    tls: {enabled: true, ca_file: ca.pem, cert_file: site.pem, key_file: site-key.pem}
`
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	lt := c.Listeners[0].TLS
	if lt.Certificates[0].CertFile != filepath.Join(dir, "site.pem") || lt.ClientCAFile != filepath.Join(dir, "ca.pem") || lt.MinVersion != "1.3" || lt.ClientAuth != "request" {
		t.Errorf("listener TLS = %+v", lt)
	}
	if pt := c.Pools["p"].TLS; pt.CAFile != filepath.Join(dir, "ca.pem") || !pt.Enabled {
		t.Errorf("pool TLS = %+v", pt)
	}

	// A missing file is an error at its key.
	os.Remove(filepath.Join(dir, "ca.pem"))
	_, err = Load(file)
	if err == nil || !strings.Contains(err.Error(), "wsproxy.yaml:6: listeners[0].tls.client_ca_file: cannot read") ||
		!strings.Contains(err.Error(), "wsproxy.yaml:13: pools.p.tls.ca_file: cannot read") {
		t.Errorf("missing CA file: %v", err)
	}
}

func TestMoreMistakes(t *testing.T) {
	base := func(extra string) string {
		return "listeners: [{address: \":8080\"}]\nroutes: [{path: /, pool: p}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\n" + extra
	}
	disc := func(block string) string {
		return "listeners: [{address: \":8080\"}]\nroutes: [{path: /, pool: p}]\npools: {p: {discovery: " + block + "}}\n"
	}
	cases := []struct {
		name, yaml, want string
	}{
		{"empty", "", "t.yaml:1: the file is empty"},
		{"not a mapping", "- a\n- b\n", "t.yaml:1: the top level must be a mapping"},
		{"no listeners", "routes: [{path: /, pool: p}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\n", "listeners: at least one listener"},
		{"no routes", "listeners: [{address: \":8080\"}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\n", "routes: at least one route"},
		{"listeners clash", "listeners: [{address: \":8080\"}, {address: \"127.0.0.1:8080\"}]\nroutes: [{path: /, pool: p}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\n", "t.yaml:1: listeners[1].address"},
		{"path without slash", "listeners: [{address: \":8080\"}]\nroutes: [{path: chat, pool: p}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\n", `routes[0].path: "chat" must start with /`},
		{"log level", base("log: {level: verbose}\n"), `t.yaml:4: log.level: unknown level "verbose"`},
		{"log format", base("log: {format: text}\n"), `t.yaml:4: log.format: unknown format "text"`},
		{"bool", base("admin: {pprof: yes please}\n"), "t.yaml:4: admin.pprof: want true or false"},
		{"ping above read timeout", base("defaults: {ping_interval: 90s}\n"), "t.yaml:4: defaults.ping_interval: 1m30s is not below read_timeout"},
		{"infinite handshake rate", base("admission: {handshakes_per_second_per_ip: .inf}\n"), "t.yaml:4: admission.handshakes_per_second_per_ip: want a finite number, got .inf"},
		{"bad origin", "listeners: [{address: \":8080\"}]\nroutes: [{path: /, pool: p, allowed_origins: [app.example.com]}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\n", `routes[0].allowed_origins[0]: bad origin "app.example.com"`},
		{"backend without host", "listeners: [{address: \":8080\"}]\nroutes: [{path: /, pool: p}]\npools: {p: {backends: [{address: \":9001\"}]}}\n", "a backend needs a host"},
		{"key twice", base("log: {level: info}\nlog: {level: info}\n"), "t.yaml:5: log: defined twice"},
		{"negative duration", base("defaults: {idle_timeout: -5s}\n"), "must not be negative"},
		{"drain rate", "listeners: [{address: \":8080\"}]\nroutes: [{path: /, pool: p}]\npools: {p: {drain_rate: -1, backends: [{address: \"127.0.0.1:9001\"}]}}\n", "pools.p.drain_rate: must not be negative"},
		{"bounded load", "listeners: [{address: \":8080\"}]\nroutes: [{path: /, pool: p}]\npools: {p: {bounded_load: 0.5, backends: [{address: \"127.0.0.1:9001\"}]}}\n", "pools.p.bounded_load: 0.5 is out of range"},
		{"discovery without a name", disc("{type: srv}"), "t.yaml:3: pools.p.discovery.dns: missing"},
		{"discovery bad name", disc("{dns: \"chat service\"}"), `t.yaml:3: pools.p.discovery.dns: bad name "chat service"`},
		{"discovery of an address", disc("{dns: 10.0.0.1, type: a, port: 80}"), `t.yaml:3: pools.p.discovery.dns: "10.0.0.1" is an address, not a name`},
		{"discovery bad type", disc("{dns: chat.svc, type: aaaa}"), `t.yaml:3: pools.p.discovery.type: unknown type "aaaa": want srv or a`},
		{"discovery a without port", disc("{dns: chat.svc, type: a}"), "t.yaml:3: pools.p.discovery.port: missing: type a needs the backends' port"},
		{"discovery a port range", disc("{dns: chat.svc, type: a, port: 70000}"), "t.yaml:3: pools.p.discovery.port: 70000 is out of range"},
		{"discovery srv with port", disc("{dns: _ws._tcp.chat.svc, port: 8080}"), "t.yaml:3: pools.p.discovery.port: not used with type srv"},
		{"discovery resolver", disc("{dns: chat.svc, type: a, port: 80, resolver: 10.0.0.10}"), `t.yaml:3: pools.p.discovery.resolver: bad address "10.0.0.10"`},
		{"discovery interval", disc("{dns: chat.svc, type: a, port: 80, interval: 100ms}"), "t.yaml:3: pools.p.discovery.interval: 100ms is too short: want at least 500ms"},
		{"discovery unknown key", disc("{dns: chat.svc, type: a, port: 80, ttl: 5s}"), "t.yaml:3: pools.p.discovery.ttl: unknown key"},
		{"discovery hold", disc("{dns: chat.svc, hold: -1s}"), "t.yaml:3: pools.p.discovery.hold: bad duration"},
		{"reuse_port not a bool", "listeners: [{address: \":8080\", reuse_port: 1}]\nroutes: [{path: /, pool: p}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\n", "t.yaml:1: listeners[0].reuse_port: want true or false"},
		{"reuse_port on port 0", "listeners: [{address: \"127.0.0.1:0\", reuse_port: true}]\nroutes: [{path: /, pool: p}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\n", `t.yaml:1: listeners[0].reuse_port: "127.0.0.1:0" has port 0`},
		{"route limit", "listeners: [{address: \":8080\"}]\nroutes: [{path: /, pool: p, max_message_bytes: 0}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\n", "t.yaml:2: routes[0].max_message_bytes: must be above 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestSameSocket(t *testing.T) {
	cases := []struct {
		a, b string
		same bool
	}{
		{":8080", "127.0.0.1:8080", true},
		{"0.0.0.0:8080", "10.0.0.1:8080", true},
		{"[::]:8080", "127.0.0.1:8080", true},
		{"127.0.0.1:8080", "127.0.0.1:8080", true},
		{"127.0.0.1:8080", "127.0.0.2:8080", false},
		{"127.0.0.1:8080", "127.0.0.1:8081", false},
		{"localhost:8080", "LOCALHOST:8080", true},
	}
	for _, tc := range cases {
		if got := sameSocket(tc.a, tc.b); got != tc.same {
			t.Errorf("sameSocket(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "64KiB": 64 << 10, "1MiB": 1 << 20, "2MB": 2e6, "10 KB": 10e3, "512B": 512} {
		c, err := Parse("t.yaml", []byte("listeners: [{address: \":8080\"}]\nroutes: [{path: /, pool: p}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\ndefaults: {max_message_bytes: "+in+"}\n"))
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if c.Defaults.MaxMessageBytes != want {
			t.Errorf("%s = %d, want %d", in, c.Defaults.MaxMessageBytes, want)
		}
	}
}

// FuzzParse feeds the loader arbitrary bytes: it must return a config or
// errors, never panic, and every config it accepts must survive a round
// trip through Marshal.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(testdata + "*.yaml")
	for _, name := range append(files, "../config.example.yaml") {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not Errors: %v", err)
			}
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse("fuzz.yaml", out)
		if err != nil {
			t.Fatalf("accepted config does not reload: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(c, back) {
			t.Fatalf("round trip differs:\n%s", out)
		}
	})
}

// File paths may name ${CREDENTIALS_DIRECTORY}, where systemd puts the
// files of LoadCredential=; unset, the path is one clear error at its key.
func TestCredentialsDirectory(t *testing.T) {
	const text = `
listeners:
  - address: ":8443"
    tls:
      certificates: [{cert_file: "${CREDENTIALS_DIRECTORY}/tls.crt", key_file: "${CREDENTIALS_DIRECTORY}/tls.key"}]
admin: {token_file: "${CREDENTIALS_DIRECTORY}/admin-token"}
watch_config: true
shutdown_delay: 5s
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: "127.0.0.1:9001"}]}}
`
	dir := t.TempDir()
	for _, f := range []string{"tls.crt", "tls.key", "admin-token"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	c, err := Parse("/etc/wsproxy/config.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Listeners[0].TLS.Certificates[0].KeyFile; got != filepath.Join(dir, "tls.key") {
		t.Errorf("key_file %q, want it in %s", got, dir)
	}
	if got := c.Admin.TokenFile; got != filepath.Join(dir, "admin-token") {
		t.Errorf("token_file %q, want it in %s", got, dir)
	}
	if !c.WatchConfig || c.ShutdownDelay != 5*time.Second {
		t.Errorf("watch_config %v, shutdown_delay %v", c.WatchConfig, c.ShutdownDelay)
	}

	t.Setenv("CREDENTIALS_DIRECTORY", "")
	_, err = Parse("/etc/wsproxy/config.yaml", []byte(text))
	var es Errors
	if !errors.As(err, &es) || len(es) != 3 {
		t.Fatalf("want 3 errors (one per path), got %v", err)
	}
	for _, e := range es {
		if !strings.Contains(e.Msg, "CREDENTIALS_DIRECTORY}, which is not set") || e.Line == 0 {
			t.Errorf("error %v", e)
		}
	}
}

func TestShutdownDefaults(t *testing.T) {
	c, err := Load(testdata + "good-minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.WatchConfig || c.ShutdownDelay != 0 || c.Admin.TokenFile != "" {
		t.Fatalf("watch_config %v, shutdown_delay %v, token_file %q: want off", c.WatchConfig, c.ShutdownDelay, c.Admin.TokenFile)
	}
}

// pid_file is relative to the config file and its directory must exist;
// upgrade_timeout defaults to 30s and must be positive.
func TestUpgradeKeys(t *testing.T) {
	c, err := Load(testdata + "good-minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.PIDFile != "" || c.UpgradeTimeout != 30*time.Second {
		t.Fatalf("pid_file %q, upgrade_timeout %v: want none and 30s", c.PIDFile, c.UpgradeTimeout)
	}
	dir := t.TempDir()
	const base = "routes: [{path: /, pool: p}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\nlisteners: [{address: \":8080\"}]\n"
	c, err = Parse(filepath.Join(dir, "config.yaml"), []byte(base+"pid_file: run/wsproxy.pid\nupgrade_timeout: 5s\n"))
	if err == nil || !strings.Contains(err.Error(), "pid_file: "+filepath.Join(dir, "run", "wsproxy.pid")+": its directory") {
		t.Fatalf("a pid_file in a missing directory: %v", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	c, err = Parse(filepath.Join(dir, "config.yaml"), []byte(base+"pid_file: run/wsproxy.pid\nupgrade_timeout: 5s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.PIDFile != filepath.Join(dir, "run", "wsproxy.pid") || c.UpgradeTimeout != 5*time.Second {
		t.Fatalf("pid_file %q, upgrade_timeout %v", c.PIDFile, c.UpgradeTimeout)
	}
	_, err = Parse(filepath.Join(dir, "config.yaml"), []byte(base+"upgrade_timeout: 0s\n"))
	if err == nil || !strings.Contains(err.Error(), "upgrade_timeout: 0s: want more than 0") {
		t.Fatalf("upgrade_timeout 0: %v", err)
	}
}

// engine defaults to loops, takes goroutines and refuses anything else.
func TestEngineKey(t *testing.T) {
	const base = "routes: [{path: /, pool: p}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\nlisteners: [{address: \":8080\"}]\n"
	for _, tc := range []struct{ yaml, want, err string }{
		{"", EngineLoops, ""},
		{"engine: loops\n", EngineLoops, ""},
		{"engine: goroutines\n", EngineGoroutines, ""},
		{"engine: epoll\n", "", `engine: unknown engine "epoll": want goroutines or loops`},
	} {
		c, err := Parse("config.yaml", []byte(base+tc.yaml))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("%q: %v, want %s", tc.yaml, err, tc.err)
			}
			continue
		}
		if err != nil || c.Engine != tc.want {
			t.Fatalf("%q: engine %q, %v; want %q", tc.yaml, c.Engine, err, tc.want)
		}
	}
}
