// Package health runs active and passive health checks of backends and
// reports their state changes to the balancer.
//
// # Use
//
//	m := health.NewManager(ctx, health.Config{Setter: registry, Logger: log})
//	defer m.Close()
//	m.Update(specs)                // at start and on every reload
//	...
//	m.ReportFailure(pool, addr, err) // the proxy could not dial or handshake
//	m.ReportSuccess(addr)            // the proxy reached the backend
//
// health does not import the balancer: it reports through StatusSetter,
// which balancer.Registry implements, and through the optional
// Config.OnChange hook (metrics, status pages). It only reports state: a
// failed check never touches live sessions; what a down backend means for
// new sessions is the balancer's business.
//
// # Active checks
//
// Each backend of each pool gets a checker (a goroutine) that probes it at
// once, then every Spec.Interval (±10% jitter) after the end of the previous
// probe, each probe bounded by Spec.Timeout:
//
//   - http: GET Spec.Path with Host set to the backend address; healthy on
//     2xx or 3xx, or only on Spec.Statuses when given.
//   - tcp: connect (and complete the TLS handshake), then close.
//   - websocket: an opening handshake on Spec.Path with
//     github.com/fasthttp/websocket's Dialer, healthy on 101; then a Close
//     with status 1000 and a wait of at most a second for the peer's Close.
//
// With Spec.TLS set, every probe goes over TLS (https, wss). A healthy
// backend goes down after UnhealthyThreshold failed probes in a row; a down
// one comes back after HealthyThreshold successful probes in a row.
//
// A backend starts healthy, so that a fresh start or a reload serves at
// once rather than answering 503 until the first probes complete; a dead
// backend goes out after UnhealthyThreshold probes (the first is immediate).
//
// # Passive checks
//
// ReportFailure counts the proxy's consecutive failures to reach an
// address, ReportSuccess resets the count. When the count reaches
// Spec.PassiveFailures (default 3, PassiveOff to disable) the backend goes
// down at once, and every checker of the address restarts its count: only
// HealthyThreshold successful active probes in a row bring it back; proxy
// successes do not. A pool with no active check (TypeNone) then gets a tcp
// probe on the backend's behalf, every Spec.Interval (default 10s), until
// HealthyThreshold of them succeed in a row; while the backend is up, such
// a pool sends no probe at all.
//
// # Addresses in several pools
//
// State is per address, as in balancer.Registry, while checkers are per
// (pool, address): an address listed by two pools is probed by both pools'
// checks and is up only when every one of them says so. Its passive
// threshold is the smallest of the pools' thresholds that are not off.
//
// # Reloads
//
// Update diffs the checkers by (pool, address, Spec): unchanged checkers
// keep running with their counters, changed ones restart, removed ones
// stop, new ones start. State is kept per address as long as some pool lists
// it. Spec.TLS is compared by pointer.
//
// # Concurrency
//
// All methods of Manager are safe for concurrent use. ReportSuccess and
// State take no lock and allocate nothing; ReportFailure takes a lock only
// while the backend is up. Every goroutine derives from the context given to
// NewManager and returns when it is done or on Close, which waits for them;
// Update waits for the checkers it stops.
//
// State changes are delivered to the Logger, the Setter and then OnChange,
// one at a time and in the order they happened, outside the Manager's lock,
// from the goroutine that caused the change (a checker, or the caller of
// Update or ReportFailure) or from one already delivering. The Setter and
// OnChange may call State, ReportFailure and ReportSuccess, but not Update
// or Close; they should return quickly, as they delay the checks.
package health
