package relay

import "time"

// Limits are the relay's timeouts and limits. A session keeps a pointer to
// them: they must not change while a session uses them. Zero turns each
// off, except BackendGoneCloseCode.
type Limits struct {
	// ReadTimeout closes a session (1001) when one side sent nothing at
	// all for this long.
	ReadTimeout time.Duration
	// IdleTimeout closes a session (1001) after no data frame either way
	// for this long.
	IdleTimeout time.Duration
	// WriteTimeout ends a session whose side accepted no bytes for this
	// long; meanwhile the sender is held back.
	WriteTimeout time.Duration
	// PingInterval is how often the relay pings a silent side.
	PingInterval time.Duration
	// MaxMessageBytes closes a session (1009) whose side sends a longer
	// message, counted over its fragments.
	MaxMessageBytes int64
	// MaxMessagesPerSecond closes a session (1008) whose client sends
	// data messages faster than this on average, MessageBurst at once (0:
	// the rate rounded up).
	MaxMessagesPerSecond float64
	MessageBurst         int
	// MaxControlFramesPerSecond closes a session (1008) whose client sends
	// pings, or pongs answering no relay ping, faster than this, with a
	// burst of twice the rate.
	MaxControlFramesPerSecond float64
	// BackendGoneCloseCode is the Close code the client gets when its
	// backend vanished, stopped reading or broke the protocol; 0 means
	// 1014.
	BackendGoneCloseCode int
	// CloseTimeout bounds the closing handshake, from its first Close to
	// the end of the session; 0 means DefaultCloseTimeout.
	CloseTimeout time.Duration
}

// Options configure a session; see Init.
type Options struct {
	// Limits are required.
	Limits *Limits
	// ClientEarly and BackendEarly are bytes each side sent behind its
	// handshake that were read already: they are relayed first.
	ClientEarly, BackendEarly []byte
	// Extensions says which RSV bits data frames may carry.
	Extensions RSVRule
	// Hooks hear of the session's rare events; nil hears nothing.
	Hooks Hooks
	// Deadline, when set, closes the session at that time (a credential's
	// expiry), on the session's own timer: both sides get DeadlineCode
	// (0 means 1008, policy violation) and DeadlineReason, and the
	// Timeout hook hears Deadline. A time already past closes it as soon
	// as it starts.
	Deadline       time.Time
	DeadlineCode   int
	DeadlineReason string
}

// Hooks hear of a session's rare events, never of a frame. They run on
// the session's pumps and timer, and must not block or call back into the
// session, except Ended, after which the session is inert.
type Hooks interface {
	// Violation: from broke RFC 6455 or sent a message over the limit;
	// the session is being closed.
	Violation(from Side, reason string)
	// RateLimited: the client went over a rate limit (rate per second,
	// burst); the session is being closed with 1008.
	RateLimited(l Limit, rate, burst float64)
	// Timeout: a timeout is closing the session.
	Timeout(t Timeout)
	// PingSent: the relay pinged a silent side.
	PingSent(to Side)
	// Pong: a side answered the relay's latest ping after rtt.
	Pong(from Side, rtt time.Duration)
	// Ended: the session finished, both sockets are closed (a bare
	// descriptor a pump still uses is shut down, and closed when the pump
	// stops). It runs once.
	Ended()
}

// Limit names a rate limit.
type Limit uint8

const (
	MessageRate Limit = iota // MaxMessagesPerSecond
	ControlRate              // MaxControlFramesPerSecond
)

// Timeout names a timeout.
type Timeout uint8

const (
	ReadTimeout Timeout = iota
	IdleTimeout
	WriteTimeout
	Deadline // Options.Deadline
)
