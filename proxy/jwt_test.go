package proxy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/wsproxy/wsproxy/config"
)

// signer is a generated key that signs tokens.
type signer struct {
	kid  string
	alg  jwt.SigningMethod
	priv crypto.Signer
}

func newSigner(t *testing.T, kid string, alg jwt.SigningMethod) *signer {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch alg.Alg() {
	case "RS256":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	return &signer{kid: kid, alg: alg, priv: priv}
}

func (s *signer) sign(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(s.alg, claims)
	tok.Header["kid"] = s.kid
	out, err := tok.SignedString(s.priv)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func jwksOf(t *testing.T, ss ...*signer) []byte {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, s := range ss {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: s.priv.Public(), KeyID: s.kid, Algorithm: s.alg.Alg(), Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// claims are a valid token's, with extra set (nil deletes).
func claims(user string, extra jwt.MapClaims) jwt.MapClaims {
	c := jwt.MapClaims{"iss": "https://id.example.com", "aud": "chat", "sub": user,
		"exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func jwtYAML(jwtBlock string) string {
	return `
listeners: [{address: "127.0.0.1:0"}]
pools: {p: {backends: [{address: "{{B0}}"}, {address: "{{B1}}"}]}}
routes:
  - path: /
    pool: p
    hash_key: header:X-User-Id
    jwt: ` + jwtBlock + "\n"
}

func writeJWKS(t *testing.T, ss ...*signer) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(f, jwksOf(t, ss...), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// Every bad token gets 401 with its reason, over plain HTTP and upgrades,
// and reaches no backend; RS256, ES256 and EdDSA pass.
func TestJWTRefusals(t *testing.T) {
	rs, es, ed := newSigner(t, "rs", jwt.SigningMethodRS256), newSigner(t, "es", jwt.SigningMethodES256), newSigner(t, "ed", jwt.SigningMethodEdDSA)
	impostor := newSigner(t, "rs", jwt.SigningMethodRS256)
	b0, b1 := identityBackend(t, "b0"), identityBackend(t, "b1")
	p := startProxy(t, jwtYAML(`{jwks_file: "`+writeJWKS(t, rs, es, ed)+`", issuer: "https://id.example.com", audiences: [chat], leeway: 5s, claims_to_headers: {sub: X-User-Id}}`),
		b0.addr(), b1.addr())
	addr := p.ln.Addr().String()
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims("alice", nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	hmac, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, claims("alice", nil)).SignedString(jwksOf(t, rs))
	for _, tc := range []struct {
		name, authorization, reason string
	}{
		{"RS256", "Bearer " + rs.sign(t, claims("alice", nil)), ""},
		{"ES256", "Bearer " + es.sign(t, claims("alice", nil)), ""},
		{"EdDSA", "Bearer " + ed.sign(t, claims("alice", nil)), ""},
		{"missing", "", "token missing"},
		{"not bearer", "Basic YWxpY2U6cHc=", "token malformed"},
		{"malformed", "Bearer not.a.token", "token malformed"},
		{"badly signed", "Bearer " + impostor.sign(t, claims("alice", nil)), "token signature invalid"},
		{"unknown key", "Bearer " + newSigner(t, "new", jwt.SigningMethodES256).sign(t, claims("alice", nil)), "token signed by an unknown key"},
		{"none", "Bearer " + none, "token algorithm not allowed"},
		{"HMAC with the public key", "Bearer " + hmac, "token algorithm not allowed"},
		{"expired", "Bearer " + rs.sign(t, claims("alice", jwt.MapClaims{"exp": time.Now().Add(-time.Minute).Unix()})), "token expired"},
		{"not yet valid", "Bearer " + rs.sign(t, claims("alice", jwt.MapClaims{"nbf": time.Now().Add(time.Minute).Unix()})), "token not valid yet"},
		{"wrong issuer", "Bearer " + rs.sign(t, claims("alice", jwt.MapClaims{"iss": "https://evil.example.com"})), "token issuer not accepted"},
		{"wrong audience", "Bearer " + rs.sign(t, claims("alice", jwt.MapClaims{"aud": "billing"})), "token audience not accepted"},
		{"no expiry", "Bearer " + rs.sign(t, claims("alice", jwt.MapClaims{"exp": nil})), "token has no expiry"},
		{"claim no header can carry", "Bearer " + rs.sign(t, claims("alice\r\nX-Admin: 1", nil)), "token claims invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := []string{"X-User-Id: mallory"}
			if tc.authorization != "" {
				extra = append(extra, "Authorization: "+tc.authorization)
			}
			for _, req := range []string{
				rawHandshake(addr, "/room", extra...),
				"GET /page HTTP/1.1\r\nHost: " + addr + "\r\n" + strings.Join(extra, "\r\n") + "\r\n\r\n",
			} {
				resp, body := rawExchange(t, addr, req)
				if tc.reason == "" {
					if resp.StatusCode != http.StatusSwitchingProtocols && (resp.StatusCode != http.StatusOK || !strings.HasSuffix(string(body), ":alice")) {
						t.Fatalf("%d %q", resp.StatusCode, body)
					}
					continue
				}
				if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(string(body), "jwt: "+tc.reason) ||
					!strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
					t.Fatalf("got %d %q %v, want 401 %q", resp.StatusCode, body, resp.Header, tc.reason)
				}
			}
		})
	}
	b0.mu.Lock()
	b1.mu.Lock()
	upgrades := b0.conns + b1.conns
	for _, h := range append(append([]http.Header{}, b0.headers...), b1.headers...) {
		if v := h.Values("X-User-Id"); len(v) != 1 || v[0] != "alice" {
			t.Errorf("a backend got X-User-Id %q", v)
		}
	}
	b0.mu.Unlock()
	b1.mu.Unlock()
	if upgrades != 3 {
		t.Fatalf("%d upgrades reached the backends, want the 3 good ones", upgrades)
	}
	sc := scrapeProxy(t, p)
	if sc.value("wsproxy_auth_total", "step", "jwt", "outcome", "refused") != 2*13 || sc.value("wsproxy_auth_total", "step", "jwt", "outcome", "passed") != 2*3 {
		t.Fatal("auth metrics do not count the outcomes")
	}
}

// A token in a query parameter (browsers cannot set headers on a
// WebSocket) names the user, whose claim is the hash key: every device of
// a user on one backend, users spread over the pool.
func TestJWTClaimAsHashKey(t *testing.T) {
	key := newSigner(t, "k", jwt.SigningMethodES256)
	b0, b1 := startBackend(t, "b0"), startBackend(t, "b1")
	p := startProxy(t, jwtYAML(`{jwks_file: "`+writeJWKS(t, key)+`", from: "query:access_token", claims_to_headers: {sub: X-User-Id}}`), b0.addr(), b1.addr())
	users := 16
	for i := 0; i < users; i++ {
		tok := key.sign(t, claims(fmt.Sprintf("user%d", i), nil))
		for j := 0; j < 2; j++ {
			c := dial(t, p.url("/room?access_token="+tok), http.Header{"X-User-Id": {"mallory"}})
			c.Close()
		}
	}
	spread := 0
	for _, b := range []*testBackend{b0, b1} {
		b.mu.Lock()
		byUser := map[string]int{}
		for _, h := range b.headers {
			byUser[h.Get("X-User-Id")]++
		}
		b.mu.Unlock()
		for u, n := range byUser {
			if n != 2 || !strings.HasPrefix(u, "user") {
				t.Fatalf("%s: %d sessions of %q", b.name, n, u)
			}
		}
		if len(byUser) > 0 {
			spread++
		}
	}
	if spread != 2 {
		t.Fatal("every user on one backend")
	}
}

// Keys rotate through jwks_url: a token signed by a new key passes once
// the set is fetched again, which its unknown kid causes; the old key's
// tokens then fail; a failed fetch keeps the last good keys.
func TestJWTRotation(t *testing.T) {
	defer func(r time.Duration) { jwksMinRefetch = r }(jwksMinRefetch)
	jwksMinRefetch = time.Nanosecond
	a, b := newSigner(t, "a", jwt.SigningMethodRS256), newSigner(t, "b", jwt.SigningMethodEdDSA)
	var set atomic.Pointer[[]byte]
	first := jwksOf(t, a)
	set.Store(&first)
	var fetches atomic.Int64
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if s := set.Load(); s != nil {
			_, _ = w.Write(*s)
			return
		}
		http.Error(w, "down", http.StatusBadGateway)
	}))
	defer keys.Close()
	b0, b1 := identityBackend(t, "b0"), identityBackend(t, "b1")
	p := startProxy(t, jwtYAML(`{jwks_url: "`+keys.URL+`/jwks", claims_to_headers: {sub: X-User-Id}}`), b0.addr(), b1.addr())
	base := "http://" + p.ln.Addr().String()
	waitFor(t, "the first key-set fetch", func() bool { return fetches.Load() > 0 })
	check := func(s *signer, want int) {
		t.Helper()
		var status int
		var body string
		waitFor(t, "keys fetched", func() bool { // the first fetch may be under way
			status, body = getAs(t, base+"/page", map[string]string{"Authorization": "Bearer " + s.sign(t, claims("alice", nil))})
			return status != http.StatusServiceUnavailable
		})
		if status != want {
			t.Fatalf("kid %s: %d %q, want %d", s.kid, status, body, want)
		}
	}
	check(a, http.StatusOK)
	second := jwksOf(t, b)
	set.Store(&second)
	check(b, http.StatusOK)
	check(a, http.StatusUnauthorized)
	set.Store(nil)
	n := fetches.Load()
	check(newSigner(t, "c", jwt.SigningMethodRS256), http.StatusUnauthorized)
	if fetches.Load() != n+1 {
		t.Fatal("an unknown kid did not fetch the set again")
	}
	check(b, http.StatusOK) // the last good keys
	// A reload that keeps the jwt block keeps its verifier and its keys.
	cfgYAML := strings.ReplaceAll(strings.ReplaceAll(jwtYAML(`{jwks_url: "`+keys.URL+`/jwks", claims_to_headers: {sub: X-User-Id}}`), "{{B0}}", b0.addr()), "{{B1}}", b1.addr())
	reload(t, p, cfgYAML)
	check(b, http.StatusOK)
}

// A session whose token expires is closed with 1008 "token expired" when
// exp (plus leeway, 0 here) passes, not before; it is counted.
func TestJWTSessionExpires(t *testing.T) {
	key := newSigner(t, "k", jwt.SigningMethodEdDSA)
	b0, b1 := startBackend(t, "b0"), startBackend(t, "b1")
	p := startProxy(t, jwtYAML(`{jwks_file: "`+writeJWKS(t, key)+`", leeway: 0s}`), b0.addr(), b1.addr())
	exp := time.Now().Add(1500 * time.Millisecond).Truncate(time.Second) // exp is in whole seconds
	if time.Until(exp) < 300*time.Millisecond {
		exp = exp.Add(time.Second)
	}
	c := dial(t, p.url("/room"), http.Header{"Authorization": {"Bearer " + key.sign(t, claims("alice", jwt.MapClaims{"exp": exp.Unix()}))}})
	if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hi" {
		t.Fatalf("echo: %q %v", msg, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := c.ReadMessage()
	if code, reason := closeCode(err); code != 1008 || reason != "token expired" {
		t.Fatalf("got %v, want 1008 \"token expired\"", err)
	}
	if time.Now().Before(exp) {
		t.Fatalf("closed %v before exp", time.Until(exp))
	}
	p.waitSessions(t, 0)
	if v := scrapeProxy(t, p).value("wsproxy_auth_total", "step", "jwt", "outcome", "session_expired"); v != 1 {
		t.Fatalf("session_expired %v", v)
	}
}

// reload updates p with a configuration.
func reload(t *testing.T, p *testProxy, yaml string) {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.srv.Update(cfg); err != nil {
		t.Fatal(err)
	}
}

// The access log names the identity authentication set, under
// log.access_log_identity only, and never a client's own header.
func TestAccessLogIdentity(t *testing.T) {
	key := newSigner(t, "k", jwt.SigningMethodES256)
	jwks := writeJWKS(t, key)
	b0, b1 := identityBackend(t, "b0"), identityBackend(t, "b1")
	tok := "Bearer " + key.sign(t, claims("alice", nil))
	for _, tc := range []struct {
		name, log string
		want      string
	}{
		{"configured", "log: {access_log_identity: X-User-Id}\n", "alice"},
		{"not configured", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := tc.log + jwtYAML(`{jwks_file: "`+jwks+`", claims_to_headers: {sub: X-User-Id}}`) +
				"  - {path: /open, pool: p, hash_key: header:X-User-Id}\n"
			hp := startHealthProxy(t, y, b0.addr(), b1.addr())
			base := "http://" + hp.ln.Addr().String()
			if status, _ := getAs(t, base+"/page", map[string]string{"Authorization": tok}); status != http.StatusOK {
				t.Fatalf("status %d", status)
			}
			if status, _ := getAs(t, base+"/open", map[string]string{"X-User-Id": "mallory"}); status != http.StatusOK {
				t.Fatalf("status %d", status)
			}
			c := dial(t, hp.testProxy.url("/room"), http.Header{"Authorization": {tok}})
			c.Close()
			waitFor(t, "the session's log line", func() bool { return hp.logs.FilterMessage("session").Len() == 1 })
			if n := hp.logs.FilterMessage("http").Len(); n != 2 {
				t.Fatalf("%d http lines", n)
			}
			for _, e := range append(hp.logs.FilterMessage("http").All(), hp.logs.FilterMessage("session").All()...) {
				got, _ := e.ContextMap()["identity"].(string)
				want := tc.want
				if e.ContextMap()["route"] == "/open" {
					want = ""
				}
				if got != want {
					t.Errorf("%s line of %v: identity %q, want %q", e.Message, e.ContextMap()["route"], got, want)
				}
			}
		})
	}
}
