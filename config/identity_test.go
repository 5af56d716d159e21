package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A route's auth and jwt blocks: defaults, and each mistake at its line.
func TestIdentityKeys(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "jwks.json")
	// An Ed25519 public key (RFC 8037 appendix A.2).
	if err := os.WriteFile(good, []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "t.yaml")
	parse := func(route string) (*Config, error) {
		y := "listeners: [{address: \":8080\"}]\nlog: {access_log_identity: X-User-Id}\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\nroutes:\n  - path: /\n    pool: p\n" + route
		return Parse(file, []byte(y))
	}
	cfg, err := parse("    auth: {url: \"http://127.0.0.1:1/check\", copy_headers: [X-User-Id]}\n    jwt: {jwks_file: jwks.json, claims_to_headers: {sub: X-User-Id}}\n")
	if err != nil {
		t.Fatal(err)
	}
	a, j := cfg.Routes[0].Auth, cfg.Routes[0].JWT
	if a.Timeout != 2*time.Second || a.OnError != "deny" || a.CacheTTL != 0 || a.CopyHeaders[0] != "X-User-Id" {
		t.Errorf("auth defaults: %+v", a)
	}
	if j.From != "header:Authorization" || j.Leeway != 30*time.Second || j.JWKSFile != good || j.ClaimsToHeaders["sub"] != "X-User-Id" {
		t.Errorf("jwt defaults: %+v", j)
	}
	if cfg.Log.AccessLogIdentity != "X-User-Id" {
		t.Errorf("access_log_identity %q", cfg.Log.AccessLogIdentity)
	}
	for _, tc := range []struct{ name, route, want string }{
		{"auth without url", "    auth: {timeout: 1s}\n", "t.yaml:7: routes[0].auth.url: missing"},
		{"auth url", "    auth: {url: auth.internal/check}\n", `t.yaml:7: routes[0].auth.url: bad URL "auth.internal/check"`},
		{"auth timeout", "    auth:\n      url: http://a/check\n      timeout: 0s\n", "t.yaml:9: routes[0].auth.timeout: must be more than 0"},
		{"auth on_error", "    auth:\n      url: http://a/check\n      on_error: maybe\n", `t.yaml:9: routes[0].auth.on_error: unknown "maybe"`},
		{"auth header", "    auth:\n      url: http://a/check\n      copy_headers: [X-Ok, \"X User\"]\n", `t.yaml:9: routes[0].auth.copy_headers[1]: "X User" is not a header name`},
		{"auth unknown key", "    auth: {url: http://a/check, ttl: 5s}\n", "t.yaml:7: routes[0].auth.ttl: unknown key"},
		{"jwt without keys", "    jwt: {issuer: x}\n", "t.yaml:7: routes[0].jwt: needs jwks_file or jwks_url"},
		{"jwt both", "    jwt:\n      jwks_file: jwks.json\n      jwks_url: http://id/jwks\n", "t.yaml:9: routes[0].jwt.jwks_url: set jwks_file or jwks_url, not both"},
		{"jwt missing file", "    jwt:\n      jwks_file: none.json\n", "t.yaml:8: routes[0].jwt.jwks_file: cannot read"},
		{"jwt file does not parse", "    jwt:\n      jwks_file: bad.json\n", "t.yaml:8: routes[0].jwt.jwks_file: " + bad + ": key set: key 0 (kid \"h\") is not an RSA, EC or Ed25519 public key"},
		{"jwt url", "    jwt:\n      jwks_url: id/jwks\n", `t.yaml:8: routes[0].jwt.jwks_url: bad URL "id/jwks"`},
		{"jwt from", "    jwt:\n      jwks_url: http://id/jwks\n      from: body:token\n", `t.yaml:9: routes[0].jwt.from: bad token source "body:token"`},
		{"jwt claim header", "    jwt:\n      jwks_url: http://id/jwks\n      claims_to_headers:\n        sub: \"X User\"\n", `t.yaml:10: routes[0].jwt.claims_to_headers.sub: "X User" is not a header name`},
		{"jwt leeway", "    jwt:\n      jwks_url: http://id/jwks\n      leeway: soon\n", "t.yaml:9: routes[0].jwt.leeway: bad duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(tc.route)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Parse(file, []byte("listeners: [{address: \":8080\"}]\nlog: {access_log_identity: \"X:Y\"}\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\nroutes: [{path: /, pool: p}]\n")); err == nil ||
		!strings.Contains(err.Error(), `t.yaml:2: log.access_log_identity: "X:Y" is not a header name`) {
		t.Errorf("access_log_identity: %v", err)
	}
}
