package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

func TestFilesVerify(t *testing.T) {
	dir := t.TempDir()
	if err := run(dir); err != nil {
		t.Fatal(err)
	}
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(read("ca.pem")) {
		t.Fatal("ca.pem holds no certificate")
	}
	for _, pair := range [][2]string{{"cert.pem", "key.pem"}, {"bundle.pem", "bundle.pem"}} {
		c, err := tls.X509KeyPair(read(pair[0]), read(pair[1]))
		if err != nil {
			t.Fatalf("%s and %s: %v", pair[0], pair[1], err)
		}
		leaf := c.Leaf
		if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
			t.Errorf("%s: key %T, want ECDSA P-256", pair[0], leaf.PublicKey)
		}
		for _, name := range []string{"127.0.0.1", "localhost"} {
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
				t.Errorf("%s for %s: %v", pair[0], name, err)
			}
		}
	}
	if b, _ := pem.Decode(read("cert.pem")); b == nil || len(pem.EncodeToMemory(b)) != len(read("cert.pem")) {
		t.Error("cert.pem should hold the leaf alone")
	}
	if fi, err := os.Stat(filepath.Join(dir, "key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}
