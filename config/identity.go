package config

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/wsproxy/wsproxy/jwtauth"
)

// validateIdentity checks a route's auth and jwt blocks.
func (d *decoder) validateIdentity(path string, r *Route) {
	if a := r.Auth; a != nil {
		p := path + ".auth"
		if a.URL == "" {
			d.failAt(p+".url", "missing: the auth service's URL, like http://auth.internal:8080/check")
		} else if u, err := url.Parse(a.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			d.failAt(p+".url", "bad URL %q: want http://host[:port]/path or https://…", a.URL)
		}
		if a.Timeout <= 0 {
			d.failAt(p+".timeout", "must be more than 0")
		}
		d.headerNames(p+".copy_headers", a.CopyHeaders)
		switch a.OnError {
		case "deny", "allow":
		default:
			d.failAt(p+".on_error", "unknown %q: want deny (503) or allow", a.OnError)
		}
	}
	j := r.JWT
	if j == nil {
		return
	}
	p := path + ".jwt"
	switch {
	case j.JWKSFile == "" && j.JWKSURL == "":
		d.failAt(p, "needs jwks_file or jwks_url")
	case j.JWKSFile != "" && j.JWKSURL != "":
		d.failAt(p+".jwks_url", "set jwks_file or jwks_url, not both")
	case j.JWKSURL != "":
		if u, err := url.Parse(j.JWKSURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			d.failAt(p+".jwks_url", "bad URL %q: want http://host[:port]/path or https://…", j.JWKSURL)
		}
	default:
		before := len(d.errs)
		d.needFile(p+".jwks_file", j.JWKSFile, true)
		if len(d.errs) == before {
			if _, err := jwtauth.ReadJWKSFile(j.JWKSFile); err != nil {
				d.failAt(p+".jwks_file", "%s: %v", j.JWKSFile, strings.TrimPrefix(err.Error(), "jwtauth: "))
			}
		}
	}
	if _, _, err := ParseTokenSource(j.From); err != nil {
		d.failAt(p+".from", "%v", err)
	}
	for claim, h := range j.ClaimsToHeaders {
		if !isTokenName(h) {
			d.failAt(p+".claims_to_headers."+claim, "%q is not a header name", h)
		}
	}
}

// ParseTokenSource parses a jwt from: header:NAME, query:NAME or
// cookie:NAME.
func ParseTokenSource(s string) (kind, name string, err error) {
	kind, name, _ = strings.Cut(s, ":")
	switch kind {
	case "header", "query", "cookie":
		if name != "" && (kind != "header" || isTokenName(name)) && !strings.ContainsAny(name, " \t;=") {
			return kind, name, nil
		}
	}
	return "", "", fmt.Errorf("bad token source %q: want header:NAME (a Bearer token), query:NAME or cookie:NAME", s)
}

// headerNames checks a list of header names.
func (d *decoder) headerNames(path string, names []string) {
	for i, n := range names {
		if !isTokenName(n) {
			d.failAt(fmt.Sprintf("%s[%d]", path, i), "%q is not a header name", n)
		}
	}
}

// isTokenName reports whether s is an RFC 9110 token, as a header name is.
func isTokenName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', strings.ContainsRune("!#$%&'*+-.^_`|~", c):
		default:
			return false
		}
	}
	return true
}
