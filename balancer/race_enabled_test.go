//go:build race

package balancer

// raceEnabled lets slow measurement-style tests shrink under -race.
const raceEnabled = true

// underRace returns race under -race, else normal.
func underRace(normal, race int) int { return race }
