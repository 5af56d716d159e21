package proxy

import (
	"crypto/tls"
	"net"

	"github.com/wsproxy/wsproxy/internal/relay"
)

// socketListener wraps accepted connections in relay Sockets and TLS.
type socketListener struct {
	net.Listener
	config *tls.Config
}

// WrapListener returns a listener whose connections are TLS over relay
// Sockets, so that the relay can read them without blocking. config is
// used as crypto/tls's server configuration (use GetConfigForClient for
// certificates that change on reload).
func WrapListener(ln net.Listener, config *tls.Config) net.Listener {
	return &socketListener{Listener: ln, config: config}
}

func (l *socketListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return tls.Server(c, l.config), nil
	}
	s, err := relay.NewSocket(tc)
	if err != nil {
		c.Close()
		return nil, err
	}
	return tls.Server(s, l.config), nil
}
