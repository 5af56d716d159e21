package relay

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"testing"

	"github.com/wsproxy/wsproxy/internal/poller"
	"github.com/wsproxy/wsproxy/internal/testpki"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// A client on TLS over a Socket is relayed like a plain one: frames of
// every length both ways, a message larger than TLS records and than the
// socket buffers, and the closing handshake.
func TestRelayTLSClient(t *testing.T) {
	checkGoroutines(t)
	ca := testpki.NewCA(t)
	leaf := ca.Issue(t, "relay", testpki.Options{Names: []string{"relay.test"}})
	cert, err := tls.LoadX509KeyPair(leaf.CertFile, leaf.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	dialed, accepted := tcpPair(t)
	sock, err := NewSocket(accepted)
	if err != nil {
		t.Fatal(err)
	}
	server := tls.Server(sock, &tls.Config{Certificates: []tls.Certificate{cert}})
	client := tls.Client(dialed, &tls.Config{RootCAs: ca.Pool(), ServerName: "relay.test"})
	done := make(chan error, 1)
	go func() { done <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	proxyBackend, backend := tcpPair(t)
	p, err := poller.New()
	if err != nil {
		t.Fatal(err)
	}
	hooks := newRecorder()
	s := new(Session)
	if err := s.Init(server, proxyBackend, &Options{Limits: &Limits{MaxMessageBytes: 4 << 20}, Hooks: hooks}); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(p); err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, s: s, hooks: hooks,
		client:  &peer{t: t, conn: client, br: bufio.NewReader(client), mask: true},
		backend: &peer{t: t, conn: backend, br: bufio.NewReader(backend)},
	}
	t.Cleanup(func() {
		s.Finish()
		<-hooks.ended
		client.Close()
		backend.Close()
		p.Close()
	})
	for _, n := range []int{0, 125, 126, 65535, 65536, 1 << 20} {
		payload := bytes.Repeat([]byte{byte(n)}, n)
		in := r.client.frame(true, wsframe.OpBinary, payload)
		go func() { _, _ = client.Write(in) }()
		got := make([]byte, len(in))
		if _, err := io.ReadFull(r.backend.br, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, in) {
			t.Fatalf("%d bytes: the backend got other bytes than the client sent", n)
		}
		r.backend.send(r.backend.frame(true, wsframe.OpBinary, payload))
		r.client.expect(wsframe.OpBinary, string(payload))
	}
	r.client.send(r.client.closeFrame(1000, ""))
	r.backend.expectClose()
	r.backend.send(r.backend.closeFrame(1000, ""))
	r.client.expectClose()
	r.waitEnded()
	if s.ClosedBy() != PartyClient || s.CloseCode() != 1000 {
		t.Fatalf("closed by %s with %d", s.ClosedBy(), s.CloseCode())
	}
}
