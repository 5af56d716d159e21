package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// affinityYAML is a config whose only route has the affinity block given,
// on line 5.
func affinityYAML(block string) string {
	return "listeners: [{address: \":8080\"}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\nroutes:\n  - path: /socket.io\n    affinity: " + block + "\n    pool: p\n"
}

func TestAffinityDefaults(t *testing.T) {
	for _, tc := range []struct {
		name, block string
		want        *Affinity
	}{
		{"absent", "", nil},
		{"empty", "{}", &Affinity{Cookie: "wsp_backend", Secure: SecureAuto, HTTPOnly: true, SameSite: "lax"}},
		{"every key", "{cookie: SRV, ttl: 1h, secure: true, http_only: false, same_site: none}",
			&Affinity{Cookie: "SRV", TTL: time.Hour, Secure: SecureAlways, SameSite: "none"}},
		{"secure false", "{secure: false}", &Affinity{Cookie: "wsp_backend", Secure: SecureNever, HTTPOnly: true, SameSite: "lax"}},
		{"secure auto", "{secure: auto}", &Affinity{Cookie: "wsp_backend", Secure: SecureAuto, HTTPOnly: true, SameSite: "lax"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("t.yaml", []byte(affinityYAML(tc.block)))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Routes[0].Affinity; !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			out, err := c.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse("t.yaml", out)
			if err != nil || !reflect.DeepEqual(back.Routes[0].Affinity, tc.want) {
				t.Fatalf("round trip: %v\n%s", err, out)
			}
		})
	}
}

func TestAffinityMistakes(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(short, []byte("0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(good, []byte(strings.Repeat("k", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, block, want string }{
		{"empty name", `{cookie: ""}`, "t.yaml:5: routes[0].affinity.cookie: missing: the cookie needs a name"},
		{"bad name", `{cookie: "a b"}`, `t.yaml:5: routes[0].affinity.cookie: "a b" is not a cookie name`},
		{"name with =", `{cookie: "a=b"}`, `t.yaml:5: routes[0].affinity.cookie: "a=b" is not a cookie name`},
		{"negative ttl", "{ttl: -1s}", "t.yaml:5: routes[0].affinity.ttl: bad duration"},
		{"ttl under a second", "{ttl: 500ms}", "t.yaml:5: routes[0].affinity.ttl: 500ms is shorter than a second"},
		{"secure", "{secure: sometimes}", `t.yaml:5: routes[0].affinity.secure: want auto, true or false, got "sometimes"`},
		{"same site", "{same_site: loose}", `t.yaml:5: routes[0].affinity.same_site: unknown value "loose": want lax, strict or none`},
		{"same site none, not secure", "{same_site: none, secure: false}", "t.yaml:5: routes[0].affinity.same_site: none needs secure auto or true"},
		{"missing key file", "{key_file: " + filepath.Join(dir, "nope") + "}", "t.yaml:5: routes[0].affinity.key_file: cannot read"},
		{"short key", "{key_file: " + short + "}", "t.yaml:5: routes[0].affinity.key_file: " + short + " holds 10 bytes: want at least 32"},
		{"unknown key", "{cookies: x}", "t.yaml:5: routes[0].affinity.cookies: unknown key (did you mean cookie?)"},
		{"not a mapping", "wsp_backend", "t.yaml:5: routes[0].affinity: want a mapping of keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(affinityYAML(tc.block)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v\nwant %q", err, tc.want)
			}
		})
	}
	// The hash key places clients without the cookie: it cannot be it.
	y := strings.Replace(affinityYAML("{cookie: sticky}"), "    pool: p\n", "    pool: p\n    hash_key: cookie:sticky\n", 1)
	if _, err := Parse("t.yaml", []byte(y)); err == nil || !strings.Contains(err.Error(), `t.yaml:5: routes[0].affinity.cookie: "sticky" is also the route's hash_key`) {
		t.Fatalf("cookie as hash key: %v", err)
	}
	// A good key file, relative to the config file.
	file := filepath.Join(dir, "wsproxy.yaml")
	if err := os.WriteFile(file, []byte(affinityYAML("{key_file: good}")), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	if c.Routes[0].Affinity.KeyFile != good {
		t.Fatalf("key_file %q, want %q", c.Routes[0].Affinity.KeyFile, good)
	}
	key, err := ReadAffinityKey(good)
	if err != nil || string(key) != strings.Repeat("k", 32) {
		t.Fatalf("key %q, %v: want the file without its newline", key, err)
	}
}
