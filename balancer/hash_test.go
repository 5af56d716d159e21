package balancer

import (
	"net/netip"
	"strconv"
	"testing"
)

// XXH64 reference vectors (seed 0): Hash must stay XXH64, or every
// deployment's key-to-backend mapping changes.
func TestHashGolden(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
	}{
		{"", 0xef46db3751d8e999},
		{"a", 0xd24ec4f1a98c6e5b},
		{"as", 0x1c330fb2d66be179},
		{"asd", 0x631c37ce72a97393},
		{"asdf", 0x415872f599cea71e},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			if got := Hash([]byte(tc.in)); got != tc.want {
				t.Errorf("Hash(%q) = %#x, want %#x", tc.in, got, tc.want)
			}
			if got := HashString(tc.in); got != tc.want {
				t.Errorf("HashString(%q) = %#x, want %#x", tc.in, got, tc.want)
			}
		})
	}
}

func TestMix64Golden(t *testing.T) {
	tests := []struct{ in, want uint64 }{
		{0, 0},
		{1, 0x5692161d100b05e5},
		{0x9e3779b97f4a7c15, 0xe220a8397b1dcdaf},
	}
	for _, tc := range tests {
		if got := mix64(tc.in); got != tc.want {
			t.Errorf("mix64(%#x) = %#x, want %#x", tc.in, got, tc.want)
		}
	}
}

func TestHashAddr(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.1")
	tests := []struct {
		name string
		a, b netip.Addr
		same bool
	}{
		{"mapped", v4, netip.MustParseAddr("::ffff:192.0.2.1"), true},
		{"zone", netip.MustParseAddr("fe80::1"), netip.MustParseAddr("fe80::1%eth0"), true},
		{"different", v4, netip.MustParseAddr("192.0.2.2"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := hashAddr(tc.a) == hashAddr(tc.b); got != tc.same {
				t.Errorf("hashAddr(%v) == hashAddr(%v) is %v, want %v", tc.a, tc.b, got, tc.same)
			}
		})
	}
	if got, want := hashAddr(v4), uint64(0xde3cbbe5a2240bf0); got != want {
		t.Errorf("hashAddr(%v) = %#x, want %#x", v4, got, want)
	}
}

func BenchmarkHash(b *testing.B) {
	for _, n := range []int{16, 64, 256} {
		key := make([]byte, n)
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				Hash(key)
			}
		})
	}
}
