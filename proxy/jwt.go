package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/jwtauth"
)

// routeJWT is a route's jwt block in use.
type routeJWT struct {
	v        *jwtauth.Verifier
	from     string // header, query or cookie
	fromName string
	claims   []claimHeader
	leeway   time.Duration
}

// claimHeader is a claims_to_headers entry.
type claimHeader struct{ claim, header string }

// jwksRefetchWait bounds how long a request whose token names an unknown
// key waits for the key set fetched again.
const jwksRefetchWait = 5 * time.Second

// Test hooks: how often key sets are fetched, on schedule and at most on
// unknown key ids.
var (
	jwksRefresh    = jwtauth.DefaultRefresh
	jwksMinRefetch = jwtauth.DefaultMinRefetch
)

func (s *Server) buildJWT(j *config.JWT, vs *verifiers) (*routeJWT, error) {
	kind, name, err := config.ParseTokenSource(j.From)
	if err != nil {
		return nil, err
	}
	v, err := vs.get(s, j)
	if err != nil {
		return nil, err
	}
	rj := &routeJWT{v: v, from: kind, fromName: name, leeway: j.Leeway}
	for claim, h := range j.ClaimsToHeaders {
		rj.claims = append(rj.claims, claimHeader{claim: claim, header: h})
	}
	sort.Slice(rj.claims, func(a, b int) bool { return rj.claims[a].claim < rj.claims[b].claim })
	return rj, nil
}

// checkJWT verifies the request's token; a refused one gets 401 with the
// reason (503 while no key set could be had yet).
func (s *Server) checkJWT(ctx *fasthttp.RequestCtx, rt *route, id *identity) bool {
	rj := rt.auth.jwt
	st := &s.stats.Auth[0]
	raw, err := rj.token(&ctx.Request)
	var tok *jwtauth.Token
	if err == nil {
		vctx, cancel := context.WithTimeout(s.ctx, jwksRefetchWait)
		tok, err = rj.v.Verify(vctx, raw)
		cancel()
	}
	if err == nil {
		for _, c := range rj.claims {
			v, ok, cerr := claimValue(tok.Claims[c.claim])
			if cerr != nil {
				err = fmt.Errorf("%w: claim %s %v", jwtauth.ErrClaims, c.claim, cerr)
				break
			}
			if ok {
				id.set = append(id.set, header{name: c.header, value: v})
			}
		}
	}
	if err != nil {
		if errors.Is(err, jwtauth.ErrNoKeys) {
			st[authDenied].Add(1)
			refuse(ctx, fasthttp.StatusServiceUnavailable, "jwt: signing keys not available", 5)
			return false
		}
		st[authRefused].Add(1)
		if ce := s.log.Check(zap.DebugLevel, "token refused"); ce != nil {
			ce.Write(zap.String("route", rt.path), zap.String("client", ctx.RemoteAddr().String()), zap.Error(err))
		}
		ctx.Error("jwt: "+err.Error(), fasthttp.StatusUnauthorized)
		if errors.Is(err, jwtauth.ErrMissing) {
			ctx.Response.Header.Set("WWW-Authenticate", "Bearer")
		} else {
			ctx.Response.Header.Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="`+err.Error()+`"`)
		}
		return false
	}
	st[authPassed].Add(1)
	id.expiry = tok.Expiry.Add(rj.leeway)
	return true
}

// errNotBearer is an Authorization header of another scheme.
var errNotBearer = fmt.Errorf("%w: want Authorization: Bearer TOKEN", jwtauth.ErrMalformed)

// token returns the request's token from where the route reads it.
func (rj *routeJWT) token(req *fasthttp.Request) (string, error) {
	var v []byte
	switch rj.from {
	case "query":
		v = req.URI().QueryArgs().Peek(rj.fromName)
	case "cookie":
		v = req.Header.Cookie(rj.fromName)
	default:
		v = bytes.TrimSpace(req.Header.Peek(rj.fromName))
		if len(v) == 0 {
			break
		}
		scheme, tok, ok := bytes.Cut(v, []byte(" "))
		switch {
		case ok && bytes.EqualFold(scheme, []byte("Bearer")):
			v = bytes.TrimSpace(tok)
		case strings.EqualFold(rj.fromName, "Authorization"):
			return "", errNotBearer
		}
	}
	if len(v) == 0 {
		return "", jwtauth.ErrMissing
	}
	return string(v), nil
}

// claimValue renders a claim as a header value: strings as they are,
// numbers and booleans in JSON, lists of strings joined by commas. A value
// a header cannot carry (a line break, an object) is an error.
func claimValue(c any) (string, bool, error) {
	var s string
	switch v := c.(type) {
	case nil:
		return "", false, nil
	case string:
		s = v
	case float64:
		s = strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		s = strconv.FormatBool(v)
	case []any:
		parts := make([]string, 0, len(v))
		for _, x := range v {
			str, ok := x.(string)
			if !ok {
				return "", false, errors.New("is a list of other than strings")
			}
			parts = append(parts, str)
		}
		s = strings.Join(parts, ",")
	default:
		b, _ := json.Marshal(v)
		return "", false, fmt.Errorf("is not a string, number or list: %s", b)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return "", false, errors.New("holds control characters")
		}
	}
	return s, true, nil
}

// verifiers holds the key-set verifiers of a table. Those that fetch a URL
// run until the table that holds them is replaced by one that does not;
// one configured alike in the next table is kept, keys and all.
type verifiers struct {
	byConf map[string]*runningVerifier
}

type runningVerifier struct {
	v    *jwtauth.Verifier
	stop context.CancelFunc
	done chan struct{}
}

// get returns the verifier for j, made new, taken over from the table
// being replaced, or shared with another route of this one.
func (vs *verifiers) get(s *Server, j *config.JWT) (*jwtauth.Verifier, error) {
	cfg := jwtauth.Config{Issuer: j.Issuer, Audiences: j.Audiences, Leeway: j.Leeway}
	if j.JWKSFile != "" {
		ks, err := jwtauth.ReadJWKSFile(j.JWKSFile)
		if err != nil {
			return nil, err
		}
		cfg.Keys = ks
		return jwtauth.New(cfg)
	}
	key := fmt.Sprintf("%s\x00%s\x00%q\x00%v", j.JWKSURL, j.Issuer, j.Audiences, j.Leeway)
	if rv := vs.byConf[key]; rv != nil {
		return rv.v, nil
	}
	if rv := s.verifiersTaken(key); rv != nil {
		vs.byConf[key] = rv
		return rv.v, nil
	}
	cfg.URL, cfg.Refresh, cfg.MinRefetch = j.JWKSURL, jwksRefresh, jwksMinRefetch
	cfg.Client = &http.Client{Timeout: jwksRefetchWait}
	cfg.Log = s.log
	v, err := jwtauth.New(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	rv := &runningVerifier{v: v, stop: cancel, done: make(chan struct{})}
	go rv.run(ctx)
	vs.byConf[key] = rv
	return v, nil
}

// run fetches the verifier's key set until ctx is done.
func (rv *runningVerifier) run(ctx context.Context) {
	defer close(rv.done)
	rv.v.Run(ctx)
}

// verifiersTaken returns the running verifier configured as key in the
// published table, if any.
func (s *Server) verifiersTaken(key string) *runningVerifier {
	if t := s.table.Load(); t != nil && t.verifiers != nil {
		return t.verifiers.byConf[key]
	}
	return nil
}

// retireAuth stops what old ran for authentication and next does not
// keep: key-set fetches, auth clients' idle connections. next nil retires
// all.
func retireAuth(old, next *table) {
	if old == nil {
		return
	}
	if old.verifiers != nil {
		for key, rv := range old.verifiers.byConf {
			if next != nil && next.verifiers != nil && next.verifiers.byConf[key] == rv {
				continue
			}
			rv.stop()
			<-rv.done
		}
	}
	for _, r := range old.routes {
		if r.auth != nil && r.auth.fwd != nil {
			r.auth.fwd.close()
		}
	}
}
