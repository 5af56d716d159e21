// Package acmecert obtains and renews a TLS listener's certificates from an
// ACME CA (RFC 8555) with golang.org/x/crypto/acme/autocert: TLS-ALPN-01 is
// answered on the listener itself, HTTP-01 on a plain listener when asked.
//
// A Manager serves only certificates it already holds: a handshake never
// waits for the CA. Certificates are loaded from storage at start without
// contacting the CA, obtained in the background when missing (retried with
// back-off), and renewed by autocert ahead of expiry; each new certificate
// is swapped in through an atomic pointer, so live sessions keep theirs.
//
// Each domain has its own autocert.Manager and ACME client, sharing one
// account key, so that every answer of the CA (an order refused, a
// challenge failed, a rate limit) is logged and counted against its domain.
// All methods are safe for concurrent use.
package acmecert
