// Package wsframe parses and builds WebSocket frame headers (RFC 6455
// section 5.2) without touching payloads.
//
// The relay uses it to find frame and message boundaries in a byte stream
// while forwarding payload bytes untouched, and to build the few frames the
// proxy sends itself (pings, closes). Functions here are pure and safe for
// concurrent use; nothing allocates.
package wsframe

import (
	"encoding/binary"
	"errors"
)

// Opcodes, RFC 6455 section 5.2.
const (
	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xA
)

// Bits of the first two header bytes, RFC 6455 section 5.2.
const (
	finalBit = 0x80
	rsv1Bit  = 0x40
	rsvBits  = 0x70
	opMask   = 0x0f
	maskBit  = 0x80
	len7Mask = 0x7f
)

// MaxHeaderLen is the longest frame header: 2 bytes, an 8-byte extended
// length and a 4-byte masking key.
const MaxHeaderLen = 14

// MaxControlPayload is the largest payload a control frame may carry,
// RFC 6455 section 5.5.
const MaxControlPayload = 125

// Close status codes, RFC 6455 section 7.4.1 and the IANA registry.
const (
	CloseNormal          = 1000
	CloseGoingAway       = 1001
	CloseProtocolError   = 1002
	CloseUnsupported     = 1003
	CloseNoStatus        = 1005
	CloseAbnormal        = 1006
	CloseInvalidPayload  = 1007
	ClosePolicyViolation = 1008
	CloseTooBig          = 1009
	CloseInternalError   = 1011
	CloseServiceRestart  = 1012
	CloseTryAgainLater   = 1013
	CloseBadGateway      = 1014
)

// ErrLength reports a 64-bit payload length with its most significant bit
// set, which RFC 6455 section 5.2 forbids.
var ErrLength = errors.New("wsframe: payload length has its most significant bit set")

// Header is a parsed frame header.
type Header struct {
	Fin    bool
	Rsv    byte // the three RSV bits, in place (0x70 mask)
	Opcode byte
	Masked bool
	Mask   [4]byte
	Length int64 // payload length
}

// IsControl reports whether the opcode is a control opcode (close, ping,
// pong or a reserved control opcode).
func (h *Header) IsControl() bool { return h.Opcode&0x8 != 0 }

// Rsv1 reports whether RSV1 is set (the "per-message compressed" bit under
// permessage-deflate, RFC 7692).
func (h *Header) Rsv1() bool { return h.Rsv&rsv1Bit != 0 }

// Parse parses the frame header at the start of b. It returns the header
// length, or 0 when b does not hold a whole header yet.
func Parse(b []byte) (h Header, n int, err error) {
	if len(b) < 2 {
		return h, 0, nil
	}
	b0, b1 := b[0], b[1]
	h.Fin = b0&finalBit != 0
	h.Rsv = b0 & rsvBits
	h.Opcode = b0 & opMask
	h.Masked = b1&maskBit != 0
	n = 2
	switch l := b1 & len7Mask; l {
	case 126:
		if len(b) < 4 {
			return h, 0, nil
		}
		h.Length = int64(binary.BigEndian.Uint16(b[2:4]))
		n = 4
	case 127:
		if len(b) < 10 {
			return h, 0, nil
		}
		v := binary.BigEndian.Uint64(b[2:10])
		if v>>63 != 0 {
			return h, 0, ErrLength
		}
		h.Length = int64(v)
		n = 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, nil
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	return h, n, nil
}

// HeaderLen returns the length of a header for a payload of the given length.
func HeaderLen(length int, masked bool) int {
	n := 2
	switch {
	case length > 0xffff:
		n = 10
	case length > 125:
		n = 4
	}
	if masked {
		n += 4
	}
	return n
}

// AppendHeader appends a frame header to dst. A nil mask means unmasked.
func AppendHeader(dst []byte, fin bool, opcode byte, mask *[4]byte, length int) []byte {
	b0 := opcode & opMask
	if fin {
		b0 |= finalBit
	}
	var b1 byte
	if mask != nil {
		b1 = maskBit
	}
	switch {
	case length > 0xffff:
		dst = append(dst, b0, b1|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(length))
	case length > 125:
		dst = append(dst, b0, b1|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(length))
	default:
		dst = append(dst, b0, b1|byte(length))
	}
	if mask != nil {
		dst = append(dst, mask[:]...)
	}
	return dst
}

// AppendControl appends a whole control frame with the given payload
// (truncated to MaxControlPayload), masked when mask is not nil.
func AppendControl(dst []byte, opcode byte, mask *[4]byte, payload []byte) []byte {
	if len(payload) > MaxControlPayload {
		payload = payload[:MaxControlPayload]
	}
	dst = AppendHeader(dst, true, opcode, mask, len(payload))
	start := len(dst)
	dst = append(dst, payload...)
	if mask != nil {
		MaskBytes(*mask, 0, dst[start:])
	}
	return dst
}

// AppendClose appends a Close frame carrying code and reason (the reason is
// cut so the payload fits a control frame), masked when mask is not nil.
func AppendClose(dst []byte, mask *[4]byte, code int, reason string) []byte {
	if len(reason) > MaxControlPayload-2 {
		reason = reason[:MaxControlPayload-2]
	}
	dst = AppendHeader(dst, true, OpClose, mask, 2+len(reason))
	start := len(dst)
	dst = binary.BigEndian.AppendUint16(dst, uint16(code))
	dst = append(dst, reason...)
	if mask != nil {
		MaskBytes(*mask, 0, dst[start:])
	}
	return dst
}

// MaskBytes XORs b with the masking key, starting at key offset pos, and
// returns the offset for the byte after b (RFC 6455 section 5.3).
func MaskBytes(key [4]byte, pos int, b []byte) int {
	for i := range b {
		b[i] ^= key[(pos+i)&3]
	}
	return (pos + len(b)) & 3
}

// ParseClose splits a Close payload (already unmasked) into its code and
// reason. An empty payload yields CloseNoStatus. ok is false when the
// payload is one byte long or carries a code that may not be sent on the
// wire (RFC 6455 section 7.4).
func ParseClose(p []byte) (code int, reason []byte, ok bool) {
	switch len(p) {
	case 0:
		return CloseNoStatus, nil, true
	case 1:
		return 0, nil, false
	}
	code = int(binary.BigEndian.Uint16(p))
	return code, p[2:], ValidCloseCode(code)
}

// ValidCloseCode reports whether code may appear in a Close frame.
func ValidCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}
