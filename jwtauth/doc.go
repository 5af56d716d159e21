// Package jwtauth verifies JSON Web Tokens against a JSON Web Key Set, as
// a proxy does before it lets a request through: signatures by
// github.com/golang-jwt/jwt/v5, key sets parsed by go-jose, nothing
// hand-written. Asymmetric algorithms only (RS*, PS*, ES*, EdDSA): "none"
// and HMAC are refused, and so are symmetric keys in a set.
//
// A Verifier is safe for concurrent use. Its keys are an immutable set
// swapped whole (atomic.Pointer), so Verify takes no lock. A Verifier
// reading a URL fetches it in Run, a goroutine that stops with its
// context, and again, at most every MinRefetch, when a token names a key
// id the set lacks; the last good set is kept when a fetch fails.
package jwtauth
