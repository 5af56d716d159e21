// Package relay moves WebSocket frames between the two connections of a
// session whose opening handshake is done: a client the proxy accepted
// and the backend it dialed, each a TCP connection, TLS over a Socket, or
// a bare non-blocking TCP descriptor (Endpoint.FD). It knows nothing of
// HTTP, routes or configuration: it takes two endpoints, Options (limits,
// close timeout, bytes read behind the handshakes, the negotiated RSV
// rule) and Hooks for rare events.
//
// # The pump model
//
// Each side has a pump: it reads what that side sent, without blocking,
// parses frame headers (RFC 6455 section 5.2) and writes the bytes on to
// the peer untouched, in runs as long as the read. Payloads are neither
// unmasked nor copied; only control frames are looked into. The pump of a
// side is the only writer of its peer's stream, so the relay's own
// control frames for a side (pings, closes) are queued on that side and
// written by its peer's pump at the next frame boundary of the stream.
//
// A pump runs only while there is something to do: when its socket has no
// more data it returns its buffer to the pool and stops, and the poller
// starts it again when data arrives. An idle session thus holds no
// goroutine and no buffer. A pump the poller starts runs on the poller's
// loop goroutine, as in an event loop, for a bounded number of reads; a
// write that would block detaches the loop first (another goroutine takes
// the poller over), so one slow peer never holds up the other sessions of
// its poller, and a pump with more to read moves to a goroutine of its
// own. A side that accepts nothing holds back the pump that feeds it, up
// to Limits.WriteTimeout: that is the relay's back-pressure.
//
// # Bare descriptors
//
// A side given as a descriptor has no net.Conn: its pump reads it with
// read(2), its writer writes it with write(2), with neither the runtime's
// poller nor its fdMutex in between; a socket that takes nothing more
// makes the writer leave its loop and park, up to Limits.WriteTimeout,
// until the side's own poller reports room (its registration is modified
// to report it at the first full socket, and keeps it). A parked writer
// holds a goroutine and no thread: writers waiting in poll(2) each held a
// thread (69 threads for 64 stalled peers, where Go allows 10,000 in all).
// Only a write before Start, when the side is not watched yet, waits in
// ppoll(2). abort sets SO_LINGER to 0. Options such as TCP_NODELAY are
// its maker's (Go's net sets it on every connection; without it, Nagle's
// algorithm made the relay of 16 KiB frames several times slower here). A
// descriptor that comes registered on a poller (Endpoint.Reg) is taken
// over by Start with Registration.Rebind, so its side runs on that
// poller, whichever the other side's is.
//
// A descriptor number is reused by the kernel as soon as it is closed, so
// the session closes a bare descriptor only when nobody can use it any
// more: each pump counts itself out when it stops for good (pumpDead,
// after the session is done), finish once it has retired the idle pumps
// and, if a pump still runs, woken a writer parked for room (a writer in
// ppoll by shutting the socket down), whose write then fails, as every
// write does once the session is done; the last of the three closes both
// descriptors (releaseFDs), once. The kernel drops their epoll
// registrations then. A session's end thus costs two close(2) and no
// shutdown(2) nor epoll_ctl.
//
// A pump is idle, running, running and asked to look again (wake is the
// one transition from outside; only the pump itself goes back to idle),
// or dead: stopped for good once the session finished (finish retires an
// idle pump, a running one retires itself; wake never claims it). A
// side's place in the closing handshake is one set of flags (closeState)
// that only grows: Close queued, Close written, Close read, gone, stalled. The session is finished once each side is gone or has
// had Closes both ways, or when the close timeout expires.
//
// # Who owns what
//
// Fields of a side x, and of the Session:
//
//	field                          written by                     read by
//	x.conn, rc, tls, sock, fd,     Init                           everyone
//	  bare, rebind, writable, look
//	x.early, tail, remaining,      x's pump                       x's pump
//	  msgBytes, msgOpen, drop,
//	  eof, lim, loop, raw.rbuf       (x.raw: Conn sides only)
//	x.raw.wbuf, werr, midFrame     x.peer's pump (x's writer)     x.peer's pump; midFrame also x's pump
//	x's socket (read)              x's pump                       -
//	x's socket (write, ppoll)      x.peer's pump; abort by finish -
//	                                 (shutdown if x.polling)
//	x.polling                      x.peer's pump                  finish
//	x.wready, wtimer, wmod         x.peer's pump (x's writer)     x.peer's pump; wready also x's
//	                                                              Ready and finish, once wwait
//	x.wwait                        x.peer's pump                  x's Ready, finish
//	x.watched                      Start                          x.peer's pump
//	x's bare descriptor (close)    the last of both pumps and     -
//	                                 finish (s.fdUsers)
//	x.ctrl (under ctrl.mu)         timer, any pump (queue);       x.peer's pump
//	                               x.peer's pump (take)
//	x.close                        any (flags only ever set)      any
//	x.state                        wake (anyone), x's pump;       anyone
//	                                 finish (idle to dead)
//	x.lastRead, msgs, bytes        x's pump                       timer, Counts
//	x.lastPing, pingSeq            timer                          x's pump (pong check)
//	x.reg                          Init, Start, finish            finish
//	                                 (under regMu from Start on)
//	s.ctrlTAT, ctrlPonged          the client's pump              the client's pump
//	s.lastData                     both pumps                     timer
//	s.closing, closeDeadline       beginClosing (CAS once)        timer
//	s.closedBy, closeCode          noteFirst (CAS once); finish   CloseCode, ClosedBy
//	s.done                         finish (CAS once)              everyone
//
// Hooks run on whichever goroutine met the event: a pump or the timer.
// Nothing on a frame's path allocates, takes a lock or calls a hook.
package relay
