package jwtauth

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
)

// Algorithms are the signing algorithms a token may use.
var Algorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// Defaults of Config's zero values.
const (
	DefaultRefresh      = 5 * time.Minute
	DefaultMinRefetch   = 30 * time.Second
	DefaultFetchTimeout = 10 * time.Second
	// maxJWKSBytes bounds a fetched key set.
	maxJWKSBytes = 1 << 20
)

// Config configures a Verifier. Exactly one of Keys and URL is set.
type Config struct {
	// Keys is a fixed key set (a file read already).
	Keys *Keys
	// URL is fetched for the key set by Run.
	URL string
	// Issuer, when set, must be the token's iss.
	Issuer string
	// Audiences, when set, must include one of the token's aud.
	Audiences []string
	// Leeway is the clock skew allowed on exp, nbf and iat.
	Leeway time.Duration
	// Refresh is how often Run fetches URL; 0 means DefaultRefresh.
	Refresh time.Duration
	// MinRefetch is the least time between two fetches caused by unknown
	// key ids; 0 means DefaultMinRefetch.
	MinRefetch time.Duration
	// Client fetches URL; nil means one with DefaultFetchTimeout.
	Client *http.Client
	// Log hears of failed fetches; nil logs nothing.
	Log *zap.Logger
}

// Reasons a token is refused, as a client is told them. Verify's errors
// wrap one of these.
var (
	ErrMissing     = errors.New("token missing")
	ErrMalformed   = errors.New("token malformed")
	ErrAlgorithm   = errors.New("token algorithm not allowed")
	ErrUnknownKey  = errors.New("token signed by an unknown key")
	ErrSignature   = errors.New("token signature invalid")
	ErrExpired     = errors.New("token expired")
	ErrNotYetValid = errors.New("token not valid yet")
	ErrNoExpiry    = errors.New("token has no expiry")
	ErrIssuer      = errors.New("token issuer not accepted")
	ErrAudience    = errors.New("token audience not accepted")
	ErrClaims      = errors.New("token claims invalid")
	// ErrNoKeys: no key set was fetched yet. Not the token's fault.
	ErrNoKeys = errors.New("signing keys not available")
)

// Verifier checks tokens against a key set. See the package comment.
type Verifier struct {
	cfg    Config
	parser *jwt.Parser
	keys   atomic.Pointer[Keys]

	fetchMu   sync.Mutex // one fetch at a time
	lastFetch atomic.Int64
	// fetches counts finished fetches, good or not.
	fetches atomic.Int64
}

// New returns a Verifier. With a URL it has no keys until Run fetched them.
func New(cfg Config) (*Verifier, error) {
	if (cfg.Keys == nil) == (cfg.URL == "") {
		return nil, errors.New("jwtauth: want exactly one of Keys and URL")
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.MinRefetch <= 0 {
		cfg.MinRefetch = DefaultMinRefetch
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: DefaultFetchTimeout}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(Algorithms), jwt.WithLeeway(cfg.Leeway),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt()}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if len(cfg.Audiences) > 0 {
		opts = append(opts, jwt.WithAudience(cfg.Audiences...))
	}
	v := &Verifier{cfg: cfg, parser: jwt.NewParser(opts...)}
	if cfg.Keys != nil {
		v.keys.Store(cfg.Keys)
	}
	return v, nil
}

// Token is a verified token.
type Token struct {
	// Claims are the token's claims.
	Claims jwt.MapClaims
	// Expiry is its exp.
	Expiry time.Time
}

// Verify checks a token: its algorithm, signature, exp, nbf, iat, iss and
// aud. A token naming a key id the set lacks makes a Verifier with a URL
// fetch it again (at most every MinRefetch), waiting for that fetch
// within ctx.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Token, error) {
	if raw == "" {
		return nil, ErrMissing
	}
	var refetched bool
	for {
		claims := jwt.MapClaims{}
		var unknownKID, keyed bool
		_, err := v.parser.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
			keyed = true // the algorithm is an allowed one
			ks := v.keys.Load()
			if ks == nil {
				return nil, ErrNoKeys
			}
			kid, hasKID := t.Header["kid"].(string)
			keys, known := ks.candidates(kid, hasKID, t.Method.Alg())
			if hasKID && !known {
				unknownKID = true
				return nil, ErrUnknownKey
			}
			if len(keys) == 0 {
				return nil, ErrUnknownKey
			}
			set := jwt.VerificationKeySet{}
			for _, k := range keys {
				set.Keys = append(set.Keys, k)
			}
			return set, nil
		})
		if unknownKID && !refetched && v.cfg.URL != "" && v.refetch(ctx) {
			refetched = true
			continue
		}
		if err != nil {
			if !keyed && errors.Is(err, jwt.ErrTokenSignatureInvalid) {
				return nil, ErrAlgorithm // "none", HMAC, or another not allowed
			}
			if errors.Is(err, jwt.ErrTokenRequiredClaimMissing) {
				return nil, v.missing(claims)
			}
			return nil, reason(err)
		}
		exp, _ := claims.GetExpirationTime() // required: the parser checked it
		return &Token{Claims: claims, Expiry: exp.Time}, nil
	}
}

// missing names the required claim a token lacks.
func (v *Verifier) missing(claims jwt.MapClaims) error {
	switch {
	case claims["exp"] == nil:
		return ErrNoExpiry
	case v.cfg.Issuer != "" && claims["iss"] == nil:
		return ErrIssuer
	}
	return ErrAudience
}

// reason maps the parser's errors to the reasons clients are told.
func reason(err error) error {
	for _, r := range []error{ErrNoKeys, ErrUnknownKey} {
		if errors.Is(err, r) {
			return r
		}
	}
	switch {
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ErrSignature
	case errors.Is(err, jwt.ErrTokenExpired):
		return ErrExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ErrNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ErrIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return ErrAudience
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return ErrAlgorithm // an algorithm jwt does not know
	case errors.Is(err, jwt.ErrTokenMalformed):
		return ErrMalformed
	}
	return ErrClaims
}
