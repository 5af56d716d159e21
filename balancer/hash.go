package balancer

import "github.com/cespare/xxhash/v2"

// Hash returns the 64-bit hash of key that Pool.Pick expects: XXH64 with
// seed 0. The value depends only on the bytes, so every process, restart
// and architecture computes the same one (unlike hash/maphash, which is
// seeded per process).
func Hash(key []byte) uint64 { return xxhash.Sum64(key) }

// HashString is Hash for a string; it does not allocate.
func HashString(s string) uint64 { return xxhash.Sum64String(s) }

// mix64 is the splitmix64 finaliser (Stafford's variant 13): a bijection on
// uint64 whose every output bit depends on every input bit. It spreads
// caller-supplied keys over the slots and combines a slot with a backend's
// address hash into a rendezvous score.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
