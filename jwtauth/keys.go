package jwtauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/go-jose/go-jose/v4"
)

// Keys is a parsed key set: immutable once built.
type Keys struct {
	byKID map[string][]key
	all   []key
}

// key is one verification key and the algorithm its JWK pins, if any.
type key struct {
	pub any // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	alg string
}

// errNoUsableKey is a set with no key that can verify a signature.
var errNoUsableKey = errors.New("jwtauth: the key set has no RSA, EC or Ed25519 signing key")

// ParseJWKS parses a JSON Web Key Set (RFC 7517 section 5). Keys meant for
// encryption ("use": "enc") are left out; symmetric keys refuse the whole
// set, since a shared secret in a public key set is a mistake.
func ParseJWKS(data []byte) (*Keys, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("jwtauth: key set: %w", err)
	}
	ks := &Keys{byKID: map[string][]key{}}
	for i := range set.Keys {
		jk := &set.Keys[i]
		if jk.Use == "enc" {
			continue
		}
		pub := jk.Public() // a private key's public half
		var k key
		switch p := pub.Key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
			k = key{pub: p, alg: jk.Algorithm}
		default:
			return nil, fmt.Errorf("jwtauth: key set: key %d (kid %q) is not an RSA, EC or Ed25519 public key", i, jk.KeyID)
		}
		ks.all = append(ks.all, k)
		ks.byKID[jk.KeyID] = append(ks.byKID[jk.KeyID], k)
	}
	if len(ks.all) == 0 {
		return nil, errNoUsableKey
	}
	return ks, nil
}

// ReadJWKSFile reads and parses a key set file.
func ReadJWKSFile(name string) (*Keys, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	return ParseJWKS(data)
}

// Len is the number of keys in the set.
func (ks *Keys) Len() int { return len(ks.all) }

// candidates returns the keys that may have signed a token with this key
// id and algorithm: those of the id (every key when the token names none),
// of a family that signs with alg and not pinned to another algorithm.
func (ks *Keys) candidates(kid string, hasKID bool, alg string) (out []any, kidKnown bool) {
	list := ks.all
	if hasKID {
		list, kidKnown = ks.byKID[kid]
	}
	for _, k := range list {
		if (k.alg == "" || k.alg == alg) && family(k.pub) == family(alg) {
			out = append(out, k.pub)
		}
	}
	return out, kidKnown
}

// family names the kind of key an algorithm or a key belongs to.
func family(v any) string {
	switch v := v.(type) {
	case *rsa.PublicKey:
		return "RSA"
	case *ecdsa.PublicKey:
		return "EC"
	case ed25519.PublicKey:
		return "OKP"
	case string:
		switch v {
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
			return "RSA"
		case "ES256", "ES384", "ES512":
			return "EC"
		case "EdDSA":
			return "OKP"
		}
	}
	return ""
}
