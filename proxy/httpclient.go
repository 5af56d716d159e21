package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The plain HTTP client of one backend: its keep-alive connections, and a
// connection type that turns read_timeout and write_timeout into bounds on
// silence rather than on whole responses.

// httpClient keeps the idle keep-alive connections to one backend, most
// recently used first, and closes each one idleTimeout after it went idle,
// before a backend with a longer keep-alive timeout of its own would (Node
// closes after 5s). Its methods are safe for concurrent use; the mutex is
// held only to push or pop a connection, never across I/O.
type httpClient struct {
	addr string
	// idleTimeout: 0 means no keep-alive, a connection per request.
	idleTimeout time.Duration

	mu     sync.Mutex
	idle   []*backendConn // oldest first
	timer  *time.Timer    // expires idle connections; nil while none
	closed bool
}

func newHTTPClient(addr string, idleTimeout time.Duration) *httpClient {
	return &httpClient{addr: addr, idleTimeout: idleTimeout}
}

// respBufSize is the read buffer of a backend connection: it bounds the
// backend's response head, like a 101's.
const respBufSize = maxResponseHead

// backendConn is a connection to a backend carrying plain HTTP. Each Read
// and Write sets its own deadline, so that readTimeout bounds the silence
// between two reads (nginx's proxy_read_timeout) and writeTimeout a write
// that makes no progress; neither bounds a whole response.
type backendConn struct {
	net.Conn
	tcp *net.TCPConn // the socket under TLS, to peek at it while idle
	br  *bufio.Reader
	// Set per exchange by begin.
	readTimeout  time.Duration
	writeTimeout time.Duration
	heard        bool  // a byte was read in this exchange
	readErr      error // the last read error of this exchange
	reused       bool  // the exchange runs on a pooled connection
	idleSince    time.Time
}

func (c *backendConn) Read(p []byte) (int, error) {
	if c.readTimeout > 0 {
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.readTimeout))
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.heard = true
	}
	if err != nil {
		c.readErr = err
	}
	return n, err
}

func (c *backendConn) Write(p []byte) (int, error) {
	if c.writeTimeout > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	}
	return c.Conn.Write(p)
}

// begin starts an exchange with the route's timeouts.
func (c *backendConn) begin(read, write time.Duration) {
	c.readTimeout, c.writeTimeout = read, write
	c.heard, c.readErr = false, nil
	if read <= 0 || write <= 0 {
		_ = c.Conn.SetDeadline(time.Time{}) // a previous exchange's may linger
	}
}

// alive reports whether an idle connection still looks usable: the
// backend neither closed it nor sent anything while it sat in the pool.
// One non-blocking peek, so that most connections a backend closed are
// dropped before a request is written to them.
func (c *backendConn) alive() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	rc, err := c.tcp.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	var b [1]byte
	_ = rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		ok = errors.Is(err, syscall.EAGAIN) // nothing to read: still open
		return true
	})
	return ok
}

// get returns an idle connection that still looks alive, or nil.
func (c *httpClient) get() *backendConn {
	for {
		c.mu.Lock()
		n := len(c.idle)
		if n == 0 {
			c.mu.Unlock()
			return nil
		}
		bc := c.idle[n-1]
		c.idle[n-1] = nil
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		if time.Since(bc.idleSince) < c.idleTimeout && bc.alive() {
			bc.reused = true
			return bc
		}
		_ = bc.Close()
	}
}

// put takes back a connection whose exchange ended cleanly, or closes it
// when keep-alive is off or the client is closed.
func (c *httpClient) put(bc *backendConn) {
	if c.idleTimeout <= 0 {
		_ = bc.Close()
		return
	}
	bc.idleSince = time.Now()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = bc.Close()
		return
	}
	c.idle = append(c.idle, bc)
	if c.timer == nil {
		c.timer = time.AfterFunc(c.idleTimeout, c.expire)
	}
	c.mu.Unlock()
}

// expire closes the connections idle for idleTimeout, and runs again when
// the oldest one left is due.
func (c *httpClient) expire() {
	now := time.Now()
	c.mu.Lock()
	i := 0
	for i < len(c.idle) && now.Sub(c.idle[i].idleSince) >= c.idleTimeout {
		i++
	}
	expired := make([]*backendConn, i)
	copy(expired, c.idle[:i])
	n := copy(c.idle, c.idle[i:])
	clear(c.idle[n:])
	c.idle = c.idle[:n]
	if n > 0 && !c.closed {
		c.timer.Reset(c.idle[0].idleSince.Add(c.idleTimeout).Sub(now))
	} else {
		c.timer = nil
	}
	c.mu.Unlock()
	for _, bc := range expired {
		_ = bc.Close()
	}
}

// close closes the idle connections; connections in use are closed when
// their exchange ends.
func (c *httpClient) close() {
	c.mu.Lock()
	c.closed = true
	idle := c.idle
	c.idle = nil
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	c.mu.Unlock()
	for _, bc := range idle {
		_ = bc.Close()
	}
}

// dial opens a connection to the backend, over TLS with tlsConfig, within
// timeout (connect and TLS handshake). A failed connect is a *dialError.
func (c *httpClient) dial(timeout time.Duration, tlsConfig *tls.Config) (*backendConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := backendDialer.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, &dialError{err}
	}
	tcp := conn.(*net.TCPConn)
	if tlsConfig != nil {
		tc := tls.Client(conn, tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, &dialError{err}
		}
		conn = tc
	}
	bc := &backendConn{Conn: conn, tcp: tcp}
	bc.br = bufio.NewReaderSize(bc, respBufSize)
	return bc, nil
}

// closeDropped closes the clients of old that t no longer uses, once t is
// published: their idle connections go at once, busy ones when done.
func closeDropped(old, t *table) {
	if old == nil {
		return
	}
	kept := make(map[*httpClient]bool)
	for _, p := range t.pools {
		for _, hc := range p.clients {
			kept[hc] = true
		}
	}
	for _, p := range old.pools {
		for _, hc := range p.clients {
			if !kept[hc] {
				hc.close()
			}
		}
	}
}
