//go:build !race

package balancer

const raceEnabled = false

// underRace returns race under -race, else normal.
func underRace(normal, race int) int { return normal }
