// Package discovery finds the backends of pools in DNS: SRV records
// (target and port per backend, the record's weight as the backend's) or
// A and AAAA records (one backend per address, at a configured port), as a
// Kubernetes headless Service publishes them.
//
// A Manager runs one Watcher goroutine per discovered pool. Each resolves
// its name every interval (sooner when the answer's TTL is shorter, never
// below 500ms) and publishes the pool's set to a Publisher when it
// changes. The rules are those HAProxy, Envoy, nginx and Caddy users
// learned the hard way:
//
//   - A failed lookup (timeout, SERVFAIL, REFUSED, no server reachable)
//     changes nothing: the last good set stays, and the failure is logged
//     and counted.
//   - Only an answer changes the set. A backend in the answer is in the
//     set at once, with the answer's weight. A backend missing from an
//     answer stays until the answers have lacked it for hold (from the
//     first answer without it; failed lookups in between do not count
//     against it, and an answer that has it again starts over), so a
//     flapping DNS or a slow endpoint update drains nobody. NXDOMAIN and
//     an empty answer are answers: without backends.
//
// What a set means for sessions is the Publisher's business: the proxy
// merges it into its configuration (Merge) and applies that as a reload
// would, so a backend taken out is drained exactly as one a reload
// removes.
//
// # Concurrency
//
// Manager's methods are safe for concurrent use. Publish is called from
// the watchers' goroutines, one call at a time per pool, never while the
// Manager holds its lock, so a Publisher may call Update or Status.
package discovery
