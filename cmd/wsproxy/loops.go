package main

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/wsproxy/wsproxy/internal/poller"
)

// Environment variables that choose how the event loops wait, to compare
// the modes: WSPROXY_LOOPS is "parked" (the default) or "locked",
// WSPROXY_LOOP_SPIN a Locked loop's polling window before it blocks (a Go
// duration).
const (
	loopsEnv = "WSPROXY_LOOPS"
	spinEnv  = "WSPROXY_LOOP_SPIN"
)

// loopPlan is how many event loops the proxy runs, how they wait, and the
// GOMAXPROCS that leaves the Go scheduler room beside them.
type loopPlan struct {
	loops      int
	poller     poller.Config
	gomaxprocs int
}

// planLoops decides the loops: one per CPU the process may use (procs, the
// GOMAXPROCS the runtime chose, which heeds CPU quotas, or cpus if lower),
// Parked unless WSPROXY_LOOPS says "locked". Parked won in interleaved
// runs: the runtime's poller wakes both loops with one epoll_wait and
// they take longer batches, where Locked loops woke nearly four times as
// often (0.79 epoll_wait calls per round trip against 0.21) and cost 18-20%
// more CPU per message and per session. For Locked loops
// GOMAXPROCS is raised to loops + CPUs, unless set in the environment, so
// that goroutines the loops start (handshakes, pumps that moved off a
// loop, timers) find a free scheduler slot while every loop thread is
// blocked in epoll_wait; with no room the runtime's monitor takes the
// blocked threads' slots back only after up to milliseconds.
func planLoops(getenv func(string) string, procs, cpus int) (loopPlan, error) {
	n := max(1, min(procs, cpus))
	plan := loopPlan{loops: n, gomaxprocs: procs}
	switch mode := getenv(loopsEnv); mode {
	case "", "parked":
	case "locked":
		plan.poller.Wait = poller.Locked
		if getenv("GOMAXPROCS") == "" {
			plan.gomaxprocs = n + cpus
		}
	default:
		return loopPlan{}, fmt.Errorf("%s=%q: want parked or locked", loopsEnv, mode)
	}
	if s := getenv(spinEnv); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return loopPlan{}, fmt.Errorf("%s=%q: want a duration such as 20us", spinEnv, s)
		}
		plan.poller.Spin = d
	}
	return plan, nil
}

// processLoops plans the loops once per process and applies its
// GOMAXPROCS: the scheduler is the process's, whatever runs in it.
var processLoops = sync.OnceValues(func() (loopPlan, error) {
	plan, err := planLoops(os.Getenv, runtime.GOMAXPROCS(0), runtime.NumCPU())
	if err == nil && plan.gomaxprocs != runtime.GOMAXPROCS(0) {
		runtime.GOMAXPROCS(plan.gomaxprocs)
	}
	return plan, err
})
