package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA makes a CA and a server certificate for 127.0.0.1 it signs, and
// writes the CA to a PEM file for -ca.
func testCA(t *testing.T) (caFile string, cert tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}

// upgradeServer answers every WebSocket upgrade over TLS with a 101 and
// reports, per connection, whether its handshake resumed a session.
func upgradeServer(t *testing.T, cfg *tls.Config) (addr string, resumed <-chan bool) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan bool, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveUpgrade(c.(*tls.Conn), ch)
		}
	}()
	return ln.Addr().String(), ch
}

func serveUpgrade(c *tls.Conn, resumed chan<- bool) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	var key string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "Sec-WebSocket-Key") {
			key = strings.TrimSpace(v)
		}
		if line == "\r\n" {
			break
		}
	}
	resumed <- c.ConnectionState().DidResume
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	_, _ = c.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		base64.StdEncoding.EncodeToString(h[:]) + "\r\n\r\n"))
	_, _ = br.ReadByte() // until the client closes
}

func TestDialTLS(t *testing.T) {
	caFile, cert := testCA(t)
	otherCA, _ := testCA(t)
	cases := []struct {
		name     string
		server   *tls.Config
		ca       string
		wantErr  string
		wantInfo string
	}{
		{
			name:     "full handshakes, X25519, verified",
			server:   &tls.Config{Certificates: []tls.Certificate{cert}}, // tickets on: the client must not use them
			ca:       caFile,
			wantInfo: "TLS 1.3 TLS_AES_128_GCM_SHA256 X25519",
		},
		{
			name:    "another CA",
			server:  &tls.Config{Certificates: []tls.Certificate{cert}},
			ca:      otherCA,
			wantErr: "certificate signed by unknown authority",
		},
		{
			name:    "TLS 1.2 only",
			server:  &tls.Config{Certificates: []tls.Certificate{cert}, MaxVersion: tls.VersionTLS12},
			ca:      caFile,
			wantErr: "protocol version",
		},
		{
			name:    "a server without X25519",
			server:  &tls.Config{Certificates: []tls.Certificate{cert}, CurvePreferences: []tls.CurveID{tls.CurveP256}},
			ca:      caFile,
			wantErr: "handshake",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr, resumed := upgradeServer(t, tc.server)
			cfg, err := clientTLS("127.0.0.1", tc.ca, "X25519")
			if err != nil {
				t.Fatal(err)
			}
			b := &bench{host: addr, path: "/", size: 16, tls: cfg}
			b.prepare()
			for i := range 3 {
				c, err := b.dial(1 << 10)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("dial: %v, want an error with %q", err, tc.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatalf("dial %d: %v", i, err)
				}
				if <-resumed {
					t.Errorf("dial %d resumed a session: every handshake must be full", i)
				}
				c.raw.Close()
			}
			if got := b.tlsInfo.Load(); got == nil || *got != tc.wantInfo {
				t.Errorf("tls info %v, want %q", got, tc.wantInfo)
			}
		})
	}
}

func TestClientTLSCurves(t *testing.T) {
	cfg, err := clientTLS("127.0.0.1", "", "x25519, P256")
	if err != nil {
		t.Fatal(err)
	}
	if want := []tls.CurveID{tls.X25519, tls.CurveP256}; !bytes.Equal(curveBytes(cfg.CurvePreferences), curveBytes(want)) {
		t.Errorf("curves %v, want %v", cfg.CurvePreferences, want)
	}
	if cfg.ClientSessionCache != nil || cfg.MinVersion != tls.VersionTLS13 || cfg.InsecureSkipVerify {
		t.Errorf("config %+v: want TLS 1.3, no session cache, verification on", cfg)
	}
	if _, err := clientTLS("127.0.0.1", "", "X448"); err == nil {
		t.Error("an unknown group was accepted")
	}
	if _, err := clientTLS("127.0.0.1", os.DevNull, "X25519"); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("an empty -ca file: %v", err)
	}
}

func curveBytes(ids []tls.CurveID) []byte {
	var out []byte
	for _, id := range ids {
		out = append(out, byte(id>>8), byte(id))
	}
	return out
}
