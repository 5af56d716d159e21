package health

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Type names an active check.
type Type string

// The active check types.
const (
	// TypeNone runs no active check: the backend is taken out only by
	// passive failures, and brought back by a recovery TCP probe (see the
	// package documentation). The empty Type means TypeNone.
	TypeNone Type = "none"
	// TypeHTTP sends GET Path with Host set to the backend address; 2xx and
	// 3xx answers (or those listed in Spec.Statuses) are healthy.
	TypeHTTP Type = "http"
	// TypeTCP connects (and completes the TLS handshake when Spec.TLS is
	// set), then closes.
	TypeTCP Type = "tcp"
	// TypeWebSocket performs an opening handshake (RFC 6455, section 4) on
	// Path, healthy on 101, then a closing handshake with status 1000.
	TypeWebSocket Type = "websocket"
)

// Defaults for the zero values of Spec.
const (
	DefaultInterval           = 10 * time.Second
	DefaultTimeout            = 2 * time.Second
	DefaultHealthyThreshold   = 2
	DefaultUnhealthyThreshold = 3
	DefaultPassiveFailures    = 3
	defaultPath               = "/"
)

// PassiveOff, as Spec.PassiveFailures, turns passive checking off.
const PassiveOff = -1

// jitterFraction spreads probes over ±10% of the interval so that backends
// configured together are not probed in lockstep.
const jitterFraction = 0.1

// ErrInvalidSpec is wrapped by the errors of Spec.Validate.
var ErrInvalidSpec = errors.New("health: invalid spec")

// Spec configures the checks of one pool's backends. Zero values mean the
// documented default.
type Spec struct {
	// Type is the active check; empty means TypeNone.
	Type Type
	// Path is the request path (and query) of http and websocket checks;
	// empty means "/". It must start with "/".
	Path string
	// Interval is the time between the end of a probe and the start of the
	// next, jittered by ±10%; zero means DefaultInterval. Probes of one
	// backend never overlap.
	Interval time.Duration
	// Timeout bounds one probe, connection and TLS handshake included;
	// zero means DefaultTimeout.
	Timeout time.Duration
	// HealthyThreshold is the number of successful probes in a row that
	// bring an unhealthy backend back; zero means DefaultHealthyThreshold.
	HealthyThreshold int
	// UnhealthyThreshold is the number of failed probes in a row that take
	// a healthy backend out; zero means DefaultUnhealthyThreshold.
	UnhealthyThreshold int
	// Statuses, when not empty, are the only HTTP statuses an http check
	// accepts (instead of 2xx and 3xx).
	Statuses []int
	// TLS, when not nil, makes every probe use TLS with this
	// configuration (https, wss, or a TLS handshake for tcp). An empty
	// ServerName is taken from the backend address. The Manager does not
	// modify it, and compares it by pointer: a new *tls.Config restarts the
	// checkers that use it.
	TLS *tls.Config
	// PassiveFailures is the number of consecutive failures reported by
	// ReportFailure that take a backend out at once; zero means
	// DefaultPassiveFailures and a negative value (PassiveOff) turns
	// passive checking off.
	PassiveFailures int
}

// PoolSpec is the check configuration of one pool.
type PoolSpec struct {
	// Pool is the pool's name, reported in Change and logs.
	Pool string
	// Backends are the addresses ("host:port") of the pool's backends.
	Backends []string
	// Spec configures the checks of every backend of the pool.
	Spec Spec
}

// Validate reports whether s is usable. Zero values are valid.
func (s Spec) Validate() error {
	switch s.Type {
	case "", TypeNone, TypeHTTP, TypeTCP, TypeWebSocket:
	default:
		return fmt.Errorf("%w: unknown type %q (want none, http, tcp or websocket)", ErrInvalidSpec, s.Type)
	}
	if s.Interval < 0 {
		return fmt.Errorf("%w: negative interval %v", ErrInvalidSpec, s.Interval)
	}
	if s.Timeout < 0 {
		return fmt.Errorf("%w: negative timeout %v", ErrInvalidSpec, s.Timeout)
	}
	if s.HealthyThreshold < 0 {
		return fmt.Errorf("%w: negative healthy threshold %d", ErrInvalidSpec, s.HealthyThreshold)
	}
	if s.UnhealthyThreshold < 0 {
		return fmt.Errorf("%w: negative unhealthy threshold %d", ErrInvalidSpec, s.UnhealthyThreshold)
	}
	for _, st := range s.Statuses {
		if st < 100 || st > 599 {
			return fmt.Errorf("%w: status %d out of range 100-599", ErrInvalidSpec, st)
		}
	}
	if s.Path != "" {
		if s.Path[0] != '/' || strings.ContainsFunc(s.Path, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return fmt.Errorf("%w: path %q must start with / and hold no space or control character", ErrInvalidSpec, s.Path)
		}
		if _, err := url.ParseRequestURI(s.Path); err != nil {
			return fmt.Errorf("%w: path %q: %v", ErrInvalidSpec, s.Path, err)
		}
	}
	return nil
}

// withDefaults returns s with its zero values replaced by the defaults.
func (s Spec) withDefaults() Spec {
	if s.Type == "" {
		s.Type = TypeNone
	}
	if s.Path == "" {
		s.Path = defaultPath
	}
	if s.Interval == 0 {
		s.Interval = DefaultInterval
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	}
	if s.HealthyThreshold == 0 {
		s.HealthyThreshold = DefaultHealthyThreshold
	}
	if s.UnhealthyThreshold == 0 {
		s.UnhealthyThreshold = DefaultUnhealthyThreshold
	}
	if s.PassiveFailures == 0 {
		s.PassiveFailures = DefaultPassiveFailures
	}
	return s
}

// sameChecker reports whether a checker running s can keep running for o:
// everything but PassiveFailures (a per-address setting) must match. Both
// must have their defaults applied.
func (s Spec) sameChecker(o Spec) bool {
	return s.Type == o.Type &&
		s.Path == o.Path &&
		s.Interval == o.Interval &&
		s.Timeout == o.Timeout &&
		s.HealthyThreshold == o.HealthyThreshold &&
		s.UnhealthyThreshold == o.UnhealthyThreshold &&
		slices.Equal(s.Statuses, o.Statuses) &&
		s.TLS == o.TLS
}

// jitter returns d spread uniformly over ±10%.
func jitter(d time.Duration) time.Duration {
	return d + time.Duration((rand.Float64()*2-1)*jitterFraction*float64(d))
}
