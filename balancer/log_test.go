package balancer

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestLog2Table(t *testing.T) {
	for i, v := range log2Table {
		want := math.Log2(1+float64(i)/(1<<logTableBits)) * (1 << 32)
		if d := math.Abs(float64(v) - want); d > 64 {
			t.Errorf("log2Table[%d] = %d, want %.0f (off by %.0f)", i, v, want, d)
		}
	}
}

func TestNeglog2(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	xs := []uint64{1, 2, 3, 1 << 32, 1<<63 - 1, 1 << 63, math.MaxUint64 - 1, math.MaxUint64}
	for range 100_000 {
		xs = append(xs, rng.Uint64()>>rng.IntN(64)|1)
	}
	for _, x := range xs {
		got := float64(neglog2(x)) / (1 << 32)
		want := 64 - math.Log2(float64(x))
		if got <= 0 || math.Abs(got-want) > 2e-7 {
			t.Fatalf("neglog2(%#x) = %.10f, want %.10f", x, got, want)
		}
	}
	// Non-increasing: a larger hash never scores worse.
	slices.Sort(xs)
	for i := 1; i < len(xs); i++ {
		if neglog2(xs[i]) > neglog2(xs[i-1]) {
			t.Fatalf("neglog2(%#x) > neglog2(%#x)", xs[i], xs[i-1])
		}
	}
}

// The fixed-point logarithm is part of the mapping: pin a few values.
func TestNeglog2Golden(t *testing.T) {
	tests := []struct{ in, want uint64 }{
		{1, 64 << 32},
		{1 << 63, 1 << 32},
		{0xdeadbeefcafebabe, 0x33808dee},
		{0x0123456789abcdef, 0x7d053f784},
	}
	for _, tc := range tests {
		if got := neglog2(tc.in); got != tc.want {
			t.Errorf("neglog2(%#x) = %#x, want %#x", tc.in, got, tc.want)
		}
	}
}
