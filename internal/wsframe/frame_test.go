package wsframe

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

func TestParseBoundaries(t *testing.T) {
	mask := [4]byte{1, 2, 3, 4}
	for _, tc := range []struct {
		name   string
		length int
		masked bool
		hlen   int
	}{
		{"0", 0, false, 2},
		{"125", 125, false, 2},
		{"126", 126, false, 4},
		{"127", 127, false, 4},
		{"65535", 65535, false, 4},
		{"65536", 65536, false, 10},
		{"masked 0", 0, true, 6},
		{"masked 126", 126, true, 8},
		{"masked 65536", 65536, true, 14},
		{"16MiB", 16 << 20, true, 14},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m *[4]byte
			if tc.masked {
				m = &mask
			}
			b := AppendHeader(nil, true, OpBinary, m, tc.length)
			if len(b) != tc.hlen || HeaderLen(tc.length, tc.masked) != tc.hlen {
				t.Fatalf("header length %d (HeaderLen %d), want %d", len(b), HeaderLen(tc.length, tc.masked), tc.hlen)
			}
			// Every proper prefix is incomplete.
			for i := 0; i < len(b); i++ {
				if _, n, err := Parse(b[:i]); n != 0 || err != nil {
					t.Fatalf("prefix %d: n=%d err=%v, want incomplete", i, n, err)
				}
			}
			h, n, err := Parse(append(b, 0xff))
			if err != nil || n != tc.hlen {
				t.Fatalf("n=%d err=%v", n, err)
			}
			if !h.Fin || h.Opcode != OpBinary || h.Length != int64(tc.length) || h.Masked != tc.masked {
				t.Fatalf("parsed %+v", h)
			}
			if tc.masked && h.Mask != mask {
				t.Fatalf("mask %v", h.Mask)
			}
		})
	}
}

func TestParseFlags(t *testing.T) {
	h, n, err := Parse([]byte{0x41 | 0x30, 0x05})
	if err != nil || n != 2 {
		t.Fatal(n, err)
	}
	if h.Fin || h.Rsv != 0x70 || h.Opcode != OpText || !h.Rsv1() || h.IsControl() {
		t.Fatalf("%+v", h)
	}
	h, _, _ = Parse([]byte{0x89, 0x00})
	if !h.IsControl() || h.Opcode != OpPing {
		t.Fatalf("%+v", h)
	}
}

func TestParseLengthMSB(t *testing.T) {
	b := []byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}
	if _, _, err := Parse(b); err != ErrLength {
		t.Fatalf("err = %v, want ErrLength", err)
	}
}

func TestCloseRoundTrip(t *testing.T) {
	mask := [4]byte{9, 8, 7, 6}
	for _, m := range []*[4]byte{nil, &mask} {
		f := AppendClose(nil, m, CloseGoingAway, "bye")
		h, n, err := Parse(f)
		if err != nil || h.Opcode != OpClose || h.Length != 5 {
			t.Fatalf("%+v %v", h, err)
		}
		p := append([]byte(nil), f[n:]...)
		if h.Masked {
			MaskBytes(h.Mask, 0, p)
		}
		code, reason, ok := ParseClose(p)
		if !ok || code != CloseGoingAway || string(reason) != "bye" {
			t.Fatalf("code %d reason %q ok %v", code, reason, ok)
		}
	}
	long := string(bytes.Repeat([]byte("x"), 300))
	f := AppendClose(nil, nil, CloseNormal, long)
	if len(f) != 2+MaxControlPayload {
		t.Fatalf("close frame of %d bytes, want %d", len(f), 2+MaxControlPayload)
	}
}

func TestParseCloseCodes(t *testing.T) {
	for _, tc := range []struct {
		p    []byte
		code int
		ok   bool
	}{
		{nil, CloseNoStatus, true},
		{[]byte{3}, 0, false},
		{[]byte{0x03, 0xe8}, 1000, true},
		{[]byte{0x03, 0xed}, 1005, false},
		{[]byte{0x0b, 0xb8}, 3000, true},
		{[]byte{0x13, 0x88}, 5000, false},
	} {
		code, _, ok := ParseClose(tc.p)
		if code != tc.code || ok != tc.ok {
			t.Errorf("%v: code %d ok %v, want %d %v", tc.p, code, ok, tc.code, tc.ok)
		}
	}
}

func TestMaskBytesOffsets(t *testing.T) {
	key := [4]byte{0xa, 0xb, 0xc, 0xd}
	msg := []byte("hello, websocket world")
	whole := append([]byte(nil), msg...)
	MaskBytes(key, 0, whole)
	// Masking in pieces with carried offsets equals masking at once.
	pieces := append([]byte(nil), msg...)
	r := iotest.HalfReader(bytes.NewReader(pieces))
	var out []byte
	pos := 0
	buf := make([]byte, 5)
	for {
		n, err := r.Read(buf)
		chunk := append([]byte(nil), buf[:n]...)
		pos = MaskBytes(key, pos, chunk)
		out = append(out, chunk...)
		if err == io.EOF {
			break
		}
	}
	if !bytes.Equal(out, whole) {
		t.Fatalf("piecewise %x != whole %x", out, whole)
	}
}

func TestAllocs(t *testing.T) {
	frame := AppendHeader(nil, true, OpBinary, &[4]byte{1, 2, 3, 4}, 70000)
	var dst [32]byte
	if n := testing.AllocsPerRun(100, func() {
		_, _, _ = Parse(frame)
		_ = AppendControl(dst[:0], OpPing, nil, []byte("12345678"))
	}); n != 0 {
		t.Fatalf("%v allocations per run, want 0", n)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte{0x81, 0x85, 1, 2, 3, 4, 'h', 'e', 'l', 'l', 'o'})
	f.Add([]byte{0x82, 126, 0x01, 0x00})
	f.Add([]byte{0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0})
	f.Add([]byte{0x88, 0x02, 0x03, 0xe8})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := Parse(b)
		if err != nil {
			return
		}
		if n == 0 {
			return
		}
		if n > len(b) || n > MaxHeaderLen || n < 2 {
			t.Fatalf("header length %d of %d bytes", n, len(b))
		}
		if h.Length < 0 {
			t.Fatalf("negative length %d", h.Length)
		}
		var m *[4]byte
		if h.Masked {
			m = &h.Mask
		}
		// Re-encoding gives a header of the minimal length for the payload;
		// parsing that again yields the same header.
		re := AppendHeader(nil, h.Fin, h.Opcode, m, int(h.Length))
		re[0] |= h.Rsv
		h2, n2, err := Parse(re)
		if err != nil || n2 != len(re) || h2 != h {
			t.Fatalf("re-parse %+v (n=%d err=%v) != %+v", h2, n2, err, h)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	frame := AppendHeader(nil, true, OpBinary, &[4]byte{1, 2, 3, 4}, 128)
	b.ReportAllocs()
	for b.Loop() {
		_, _, _ = Parse(frame)
	}
}
