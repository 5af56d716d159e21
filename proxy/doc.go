// Package proxy is wsproxy's HTTP front: it accepts connections, routes
// requests by path to backend pools, and either proxies them as plain
// HTTP (pages, long-polls, Server-Sent Events) or, for an upgrade, opens
// the backend's WebSocket handshake and hands both sockets to the relay
// (internal/relay), which moves the frames from then on.
//
// Its parts, a file each:
//
//	server.go     Server: New, Serve, Update (reload), Shutdown, routing
//	listener.go   the accept loop: backoff, the connection budget
//	admission.go  which upgrades may become sessions: caps and rates
//	auth.go       authentication before the backend choice: forward auth,
//	              with authcache.go its cache, and jwt.go the JWT step
//	handshake.go  the upgrade request to the backend and its answer
//	websocket.go  serving an upgrade: attempts, refusals, starting a session
//	affinity.go   the backend choice: an affinity cookie, else the hash
//	session.go    a proxied session: the relay's, plus what the proxy
//	              keeps for routing, drains and metrics; the relay's hooks
//	httpproxy.go  plain HTTP requests, with httpclient.go its backend pool
//	backenderr.go the one mapping of backend errors to HTTP statuses
//	drain.go      closing sessions gracefully, spread over a window
//	registry.go   live sessions, which fasthttp does not track
//	route.go      the routing table, built whole and swapped atomically
//	metrics.go    Prometheus collector; stats.go the counters behind it
//	status.go     the admin listener's snapshot
//
// Concurrency: a Server's methods are safe for concurrent use. Requests
// read the routing table through an atomic pointer and take no lock; a
// reload builds a new table and swaps it in. Sessions run on the relay's
// pumps and timers and report to the proxy only through relay.Hooks (a
// violation, a timeout, a pong, the end), never per frame. Drains are
// decided under Server.drainMu, so a reload, an admin drain and a session
// registering at the same time agree on who closes what.
package proxy
