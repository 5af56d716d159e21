package jwtauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// signer is a generated key and the algorithm it signs with.
type signer struct {
	kid  string
	alg  jwt.SigningMethod
	priv crypto.Signer
}

func newSigner(t testing.TB, kid string, alg jwt.SigningMethod) *signer {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch alg.Alg() {
	case "RS256":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	return &signer{kid: kid, alg: alg, priv: priv}
}

func (s *signer) sign(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(s.alg, claims)
	if s.kid != "" {
		tok.Header["kid"] = s.kid
	}
	out, err := tok.SignedString(s.priv)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func jwks(t testing.TB, ss ...*signer) []byte {
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

func good(extra jwt.MapClaims) jwt.MapClaims {
	c := jwt.MapClaims{"iss": "https://id.example.com", "aud": "chat", "sub": "alice",
		"exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix()}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// Every algorithm family verifies; every kind of bad token is refused
// with its own reason.
func TestVerify(t *testing.T) {
	rs := newSigner(t, "rs", jwt.SigningMethodRS256)
	es := newSigner(t, "es", jwt.SigningMethodES256)
	ed := newSigner(t, "ed", jwt.SigningMethodEdDSA)
	other := newSigner(t, "rs", jwt.SigningMethodRS256) // same kid, another key
	ks, err := ParseJWKS(jwks(t, rs, es, ed))
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(Config{Keys: ks, Issuer: "https://id.example.com", Audiences: []string{"chat"}, Leeway: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	hmac := func() string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, good(nil)).SignedString(jwks(t, rs)) // the public set as an HMAC secret
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	none := func() string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodNone, good(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	noKID := &signer{alg: es.alg, priv: es.priv}
	for _, tc := range []struct {
		name  string
		token string
		want  error
	}{
		{"RS256", rs.sign(t, good(nil)), nil},
		{"ES256", es.sign(t, good(nil)), nil},
		{"EdDSA", ed.sign(t, good(nil)), nil},
		{"no kid: every key of the family tried", noKID.sign(t, good(nil)), nil},
		{"audience in a list", rs.sign(t, good(jwt.MapClaims{"aud": []string{"other", "chat"}})), nil},
		{"expired within the leeway", rs.sign(t, good(jwt.MapClaims{"exp": time.Now().Add(-2 * time.Second).Unix()})), nil},
		{"missing", "", ErrMissing},
		{"malformed", "a.b", ErrMalformed},
		{"garbage segments", "eyJ.eyJ.x", ErrMalformed},
		{"none", none, ErrAlgorithm},
		{"HMAC", hmac, ErrAlgorithm},
		{"badly signed", other.sign(t, good(nil)), ErrSignature},
		{"unknown kid", newSigner(t, "new", jwt.SigningMethodES256).sign(t, good(nil)), ErrUnknownKey},
		{"expired", rs.sign(t, good(jwt.MapClaims{"exp": time.Now().Add(-time.Minute).Unix()})), ErrExpired},
		{"no exp", rs.sign(t, good(jwt.MapClaims{"exp": nil})), ErrNoExpiry},
		{"not yet valid", rs.sign(t, good(jwt.MapClaims{"nbf": time.Now().Add(time.Minute).Unix()})), ErrNotYetValid},
		{"issued in the future", rs.sign(t, good(jwt.MapClaims{"iat": time.Now().Add(time.Minute).Unix()})), ErrNotYetValid},
		{"wrong issuer", rs.sign(t, good(jwt.MapClaims{"iss": "https://evil.example.com"})), ErrIssuer},
		{"no issuer", rs.sign(t, good(jwt.MapClaims{"iss": nil})), ErrIssuer},
		{"wrong audience", rs.sign(t, good(jwt.MapClaims{"aud": "billing"})), ErrAudience},
		{"no audience", rs.sign(t, good(jwt.MapClaims{"aud": nil})), ErrAudience},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := v.Verify(context.Background(), tc.token)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err == nil && (tok.Claims["sub"] != "alice" || time.Until(tok.Expiry) > time.Hour) {
				t.Fatalf("claims %v, expiry %v", tok.Claims, tok.Expiry)
			}
		})
	}
}

// A key set with a shared secret is refused whole; one with no signing
// key at all too.
func TestParseJWKSRefuses(t *testing.T) {
	oct, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: []byte("secret"), KeyID: "h", Algorithm: "HS256"}}})
	for name, data := range map[string]string{
		"symmetric": string(oct),
		"empty":     `{"keys": []}`,
		"not json":  `{"keys": [`,
	} {
		if _, err := ParseJWKS([]byte(data)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// Keys rotate through the URL: a token with a new kid makes the Verifier
// fetch again and pass; a failed fetch keeps the last good set; refetches
// come no more often than MinRefetch.
func TestVerifierRotation(t *testing.T) {
	a := newSigner(t, "a", jwt.SigningMethodRS256)
	b := newSigner(t, "b", jwt.SigningMethodES256)
	var serve atomic.Pointer[[]byte] // nil: answer 500
	set := jwks(t, a)
	serve.Store(&set)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := serve.Load(); p != nil {
			_, _ = w.Write(*p)
			return
		}
		http.Error(w, "down", http.StatusInternalServerError)
	}))
	defer srv.Close()
	v, err := New(Config{URL: srv.URL, MinRefetch: time.Nanosecond, Leeway: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), a.sign(t, good(nil))); !errors.Is(err, ErrNoKeys) {
		t.Fatalf("before the first fetch: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for !v.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("no first fetch")
		}
		time.Sleep(time.Millisecond)
	}
	check := func(s *signer, want error) {
		t.Helper()
		if _, err := v.Verify(context.Background(), s.sign(t, good(nil))); !errors.Is(err, want) {
			t.Fatalf("kid %s: got %v, want %v", s.kid, err, want)
		}
	}
	check(a, nil)
	set = jwks(t, b)
	serve.Store(&set)
	check(b, nil) // fetched on the unknown kid
	check(a, ErrUnknownKey)
	serve.Store(nil)
	before := v.Fetches()
	check(newSigner(t, "c", jwt.SigningMethodRS256), ErrUnknownKey)
	if v.Fetches() != before+1 {
		t.Fatalf("fetches %d, want %d", v.Fetches(), before+1)
	}
	check(b, nil) // the last good set
	v.cfg.MinRefetch = time.Hour
	before = v.Fetches()
	check(newSigner(t, "d", jwt.SigningMethodRS256), ErrUnknownKey)
	if v.Fetches() != before {
		t.Fatal("fetched again within MinRefetch")
	}
}

// BenchmarkVerify measures one token's verification per algorithm.
func BenchmarkVerify(b *testing.B) {
	for _, alg := range []jwt.SigningMethod{jwt.SigningMethodRS256, jwt.SigningMethodES256, jwt.SigningMethodEdDSA} {
		s := newSigner(b, "k", alg)
		ks, err := ParseJWKS(jwks(b, s))
		if err != nil {
			b.Fatal(err)
		}
		v, _ := New(Config{Keys: ks})
		tok := s.sign(b, good(nil))
		b.Run(alg.Alg(), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := v.Verify(context.Background(), tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
