package relay

import "testing"

func TestExtensionRule(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ext  string
		want RSVRule
	}{
		{"", RSVNone},
		{"  ", RSVNone},
		{"permessage-deflate", RSVDeflate},
		{"permessage-deflate; client_max_window_bits=10", RSVDeflate},
		{"Permessage-Deflate, permessage-deflate; server_no_context_takeover", RSVDeflate},
		{"x-webkit-deflate-frame", RSVAny},
		{"permessage-deflate, x-custom", RSVAny},
	} {
		if got := ExtensionRule([]byte(tc.ext)); got != tc.want {
			t.Errorf("%q: rule %d, want %d", tc.ext, got, tc.want)
		}
	}
}
