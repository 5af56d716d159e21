package balancer

import "math/bits"

// Fixed-point logarithm for weighted rendezvous scores. Integer arithmetic
// only, so that every process on every architecture computes the same bits
// (math.Log may differ in the last bit between architectures, and the Go
// compiler may fuse floating-point operations differently on each).

const (
	logTableBits = 10
	logInterp    = 22 // fraction bits interpolated between table entries
)

// floorBits is how many top bits of a hash index neglog2Floor.
const floorBits = 12

// neglog2Floor[j] is the least neglog2 of the hashes whose top floorBits bits
// are j (neglog2 does not increase), a cheap lower bound for pruning.
var neglog2Floor = makeNeglog2Floor()

func makeNeglog2Floor() *[1 << floorBits]uint64 {
	var t [1 << floorBits]uint64
	for j := range t {
		t[j] = neglog2(uint64(j)<<(64-floorBits) | (1<<(64-floorBits) - 1))
	}
	return &t
}

// log2Table[i] is log2(1 + i/1024) in 0.32 fixed point.
var log2Table = makeLog2Table()

func makeLog2Table() *[1<<logTableBits + 1]uint64 {
	var t [1<<logTableBits + 1]uint64
	for i := range 1 << logTableBits {
		t[i] = log2Frac(1<<62 + uint64(i)<<(62-logTableBits))
	}
	t[1<<logTableBits] = 1 << 32
	return &t
}

// log2Frac returns log2(y / 2^62) in 0.32 fixed point for y in [2^62, 2^63),
// that is a value in [1, 2), by repeated squaring: each squaring that
// reaches 2 yields a one bit.
func log2Frac(y uint64) uint64 {
	var r uint64
	for b := 31; b >= 0; b-- {
		hi, lo := bits.Mul64(y, y)
		y = hi<<2 | lo>>62
		if y >= 1<<63 {
			y >>= 1
			r |= 1 << b
		}
	}
	return r
}

// neglog2 returns -log2(x / 2^64) in 32.32 fixed point for x ≥ 1: a value
// in (0, 64 << 32], within 2e-7 of the exact one (linear interpolation
// between table entries), and non-increasing in x.
func neglog2(x uint64) uint64 {
	k := bits.Len64(x) - 1     // integer part of log2(x)
	frac := x << (63 - k) << 1 // the bits after the leading one
	i := frac >> (64 - logTableBits)
	r := frac >> (64 - logTableBits - logInterp) & (1<<logInterp - 1)
	lo, hi := log2Table[i], log2Table[i+1]
	f := lo + (hi-lo)*r>>logInterp
	return uint64(64-k)<<32 - f
}
