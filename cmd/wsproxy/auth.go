package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/wsproxy/wsproxy/config"
)

// The admin listener's state-changing endpoints (drain, undrain, reload)
// are guarded: with admin.token_file they need "Authorization: Bearer
// TOKEN"; without it they answer only on connections made to a loopback
// address, which only processes of this host (or pod) can open. Read-only
// pages stay open: the kubelet probes /readyz, Prometheus scrapes /metrics.

// readToken reads admin.token_file: the token is the file's content
// without surrounding white space (a Secret or an echo adds a newline).
// It returns nil when no file is set.
func readToken(a config.Admin) ([]byte, error) {
	if a.TokenFile == "" {
		return nil, nil
	}
	data, err := os.ReadFile(a.TokenFile)
	if err != nil {
		return nil, keyError{"admin.token_file", unwrapPath(err)}
	}
	tok := bytes.TrimSpace(data)
	if len(tok) == 0 {
		return nil, keyError{"admin.token_file", fmt.Errorf("%s is empty: put the token in it", a.TokenFile)}
	}
	return tok, nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("cannot read %s: %w", pe.Path, pe.Err)
	}
	return err
}

// setToken installs the token the guarded endpoints check; nil means none.
func (a *adminServer) setToken(tok []byte) {
	if tok == nil {
		a.token.Store(nil)
		return
	}
	sum := sha256.Sum256(tok)
	a.token.Store(&sum)
}

// guarded lets a request through to h only as the package comment says:
// 401 for a missing or wrong token, 403 without a token off loopback.
func (a *adminServer) guarded(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if want := a.token.Load(); want != nil {
			got, ok := bearerToken(r.Header.Get("Authorization"))
			// Hashes of equal length: the comparison takes the same time
			// whatever the length or content of the token offered.
			sum := sha256.Sum256([]byte(got))
			if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="wsproxy admin"`)
				writeJSON(w, http.StatusUnauthorized, map[string]string{
					"error": "this endpoint needs Authorization: Bearer <the token of admin.token_file>"})
				return
			}
			h(w, r)
			return
		}
		if !onLoopback(r) {
			writeJSON(w, http.StatusForbidden, map[string]string{
				"error": "without admin.token_file this endpoint answers only on a loopback address (127.0.0.1, ::1)"})
			return
		}
		h(w, r)
	}
}

// bearerToken returns the token of an "Authorization: Bearer TOKEN"
// header; the scheme is case-insensitive (RFC 7235 section 2.1).
func bearerToken(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// onLoopback reports whether the request came in on a loopback address of
// the admin listener.
func onLoopback(r *http.Request) bool {
	addr, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// loopbackAddress reports whether a listen address (host:port) binds only
// loopback: 127.0.0.0/8, ::1 or localhost. An empty host binds every
// interface.
func loopbackAddress(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// adminWarning is the warning of check and of the start log for an admin
// listener that other hosts reach while no token guards it; "" if none.
func adminWarning(a config.Admin) string {
	if a.Address == "" || a.TokenFile != "" || loopbackAddress(a.Address) {
		return ""
	}
	return fmt.Sprintf("admin.address %q is not a loopback address and admin.token_file is not set: drain, undrain and reload answer 403 to every connection that does not come in on loopback; set admin.token_file to use them remotely", a.Address)
}
