package acmecert

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/crypto/acme/autocert"
)

// autocert neither reports a renewal nor says why an order failed: its
// renewal timer drops the error, and a failed challenge only makes it try
// the next type. Two small wrappers see what it does: watchCache notices
// each certificate it stores (an order that succeeded), watchTransport
// each answer of the CA that refuses something.

// watchCache is autocert's storage; a certificate stored for the domain
// is a new one, swapped in at once.
type watchCache struct {
	cache autocert.DirCache
	d     *domain
}

// Get implements autocert.Cache.
func (c watchCache) Get(ctx context.Context, name string) ([]byte, error) {
	if c.d.m.closed.Load() {
		return nil, errClosed
	}
	return c.cache.Get(ctx, name)
}

// Put implements autocert.Cache. Keys other than the bare domain (its RSA
// twin "+rsa", challenge tokens) are stored but not served.
func (c watchCache) Put(ctx context.Context, name string, data []byte) error {
	if c.d.m.closed.Load() {
		return errClosed
	}
	if err := c.cache.Put(ctx, name, data); err != nil {
		c.d.m.log.Error("acme: cannot store", zap.String("domain", c.d.name), zap.String("file", name), zap.Error(err))
		return err
	}
	if name != c.d.name {
		return nil
	}
	// autocert stores the private key and the chain, PEM, in one file.
	cert, err := tls.X509KeyPair(data, data)
	if err == nil {
		cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0])
	}
	if err != nil {
		return fmt.Errorf("acmecert: stored certificate for %s: %w", c.d.name, err)
	}
	c.d.issued(&cert)
	return nil
}

// Delete implements autocert.Cache.
func (c watchCache) Delete(ctx context.Context, name string) error {
	if c.d.m.closed.Load() {
		return errClosed
	}
	return c.cache.Delete(ctx, name)
}

// caTransport is the HTTP transport to the CA: the system roots, plus
// those of caFile when set.
func caTransport(caFile string) (http.RoundTripper, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if caFile == "" {
		return t, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("acmecert: ca_file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("acmecert: ca_file %s holds no PEM certificate", caFile)
	}
	t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return t, nil
}

// maxCABody bounds the CA answers read to look for errors.
const maxCABody = 1 << 20

// problemRateLimited is the ACME error type of a rate limit (RFC 8555,
// section 6.7).
const problemRateLimited = "urn:ietf:params:acme:error:rateLimited"

// problem is an ACME error document (RFC 7807), alone or inside an
// authorization's challenge.
type problem struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}

// caObject is what an answer may say about a failure: an order or
// authorization marked invalid, with the challenge's error. Status is a
// string there but the HTTP status, a number, in an error document.
type caObject struct {
	problem
	Status     json.RawMessage `json:"status"`
	Error      *problem        `json:"error"`
	Challenges []struct {
		Type  string   `json:"type"`
		Error *problem `json:"error"`
	} `json:"challenges"`
}

// watchTransport passes requests to the CA and records, against its
// domain, each one that fails: the CA unreachable, an error document (a
// rate limit is logged as such, with the CA's words and Retry-After), a
// challenge the CA found invalid.
type watchTransport struct {
	next http.RoundTripper
	d    *domain
}

// RoundTrip implements http.RoundTripper.
func (t *watchTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	d := t.d
	if d.m.closed.Load() {
		return nil, errClosed
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		d.failed("CA unreachable: " + err.Error())
		d.m.log.Warn("acme: cannot reach the CA", zap.String("domain", d.name), zap.String("url", req.URL.String()), zap.Error(err))
		return nil, err
	}
	if !strings.Contains(resp.Header.Get("Content-Type"), "json") {
		return resp, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxCABody))
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var o caObject
	if json.Unmarshal(body, &o) != nil {
		return resp, nil
	}
	switch {
	case resp.StatusCode >= 400:
		if strings.HasSuffix(o.Type, ":badNonce") {
			return resp, nil // the client retries with a fresh nonce
		}
		d.failed(o.Detail)
		fields := []zap.Field{zap.String("domain", d.name), zap.Int("status", resp.StatusCode),
			zap.String("type", o.Type), zap.String("detail", o.Detail)}
		if o.Type == problemRateLimited {
			d.m.log.Error("acme: rate limited by the CA", append(fields, zap.String("retry_after", resp.Header.Get("Retry-After")))...)
		} else {
			d.m.log.Error("acme: the CA refused a request", fields...)
		}
	case string(o.Status) == `"invalid"`:
		why := "invalid"
		if o.Error != nil {
			why = o.Error.Detail
		}
		for _, c := range o.Challenges {
			if c.Error != nil {
				why = c.Type + ": " + c.Error.Detail
				break
			}
		}
		d.failed(why)
		d.m.log.Error("acme: the CA could not validate the domain", zap.String("domain", d.name),
			zap.String("detail", why))
	}
	return resp, nil
}
