package relay

import (
	"bytes"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// RSVRule says which RSV bits data frames may carry, from the extensions
// the backend's 101 answer negotiated (RFC 6455 section 5.2).
type RSVRule uint8

const (
	RSVNone    RSVRule = iota // no extension: RSV bits must be 0
	RSVDeflate                // permessage-deflate (RFC 7692): RSV1 on a message's first frame
	RSVAny                    // an extension the relay does not know: not checked
)

// ExtensionRule derives the RSV rule from a Sec-WebSocket-Extensions
// value (empty: none negotiated).
func ExtensionRule(extensions []byte) RSVRule {
	if len(bytes.TrimSpace(extensions)) == 0 {
		return RSVNone
	}
	rule := RSVNone
	for _, ext := range bytes.Split(extensions, []byte(",")) {
		name := ext
		if i := bytes.IndexByte(name, ';'); i >= 0 {
			name = name[:i]
		}
		if !bytes.EqualFold(bytes.TrimSpace(name), []byte("permessage-deflate")) {
			return RSVAny
		}
		rule = RSVDeflate
	}
	return rule
}

// check validates a frame header from x against RFC 6455 section 5 and
// returns what is wrong with it, or "".
func (x *side) check(h *wsframe.Header) string {
	if x.kind == Client && !h.Masked {
		return "unmasked frame from client"
	}
	if x.kind == Backend && h.Masked {
		return "masked frame from backend"
	}
	switch h.Opcode {
	case wsframe.OpContinuation, wsframe.OpText, wsframe.OpBinary:
	case wsframe.OpClose, wsframe.OpPing, wsframe.OpPong:
		if !h.Fin {
			return "fragmented control frame"
		}
		if h.Length > wsframe.MaxControlPayload {
			return "control frame over 125 bytes"
		}
		if h.Opcode == wsframe.OpClose && h.Length == 1 {
			return "close frame with a one-byte payload"
		}
	default:
		return "reserved opcode"
	}
	if h.Rsv != 0 {
		switch x.s.rsv {
		case RSVAny:
		case RSVDeflate:
			if h.Rsv != 0x40 || h.IsControl() || h.Opcode == wsframe.OpContinuation {
				return "RSV bits not allowed by the negotiated extension"
			}
		default:
			return "RSV bits set without a negotiated extension"
		}
	}
	return ""
}
