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
// the modes: WSPROXY_LOOPS is "locked" or "parked", WSPROXY_LOOP_SPIN a
// Locked loop's polling window before it blocks (a Go duration).
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
// Locked, with GOMAXPROCS raised to loops + CPUs so that goroutines the
// loops start (handshakes, pumps that moved off a loop, timers) find a
// free scheduler slot while every loop thread is blocked in epoll_wait;
// with no room the runtime's monitor takes the blocked threads' slots back
// only after up to milliseconds. GOMAXPROCS set in the environment is
// kept; Locked loops then need it above the loop count, or the loops are
// Parked unless WSPROXY_LOOPS asks otherwise.
func planLoops(getenv func(string) string, procs, cpus int) (loopPlan, error) {
	n := max(1, min(procs, cpus))
	plan := loopPlan{loops: n, poller: poller.Config{Wait: poller.Locked}, gomaxprocs: procs}
	fixed := getenv("GOMAXPROCS") != ""
	switch mode := getenv(loopsEnv); mode {
	case "":
		if fixed && procs <= n {
			plan.poller.Wait = poller.Parked
		}
	case "locked":
	case "parked":
		plan.poller.Wait = poller.Parked
	default:
		return loopPlan{}, fmt.Errorf("%s=%q: want locked or parked", loopsEnv, mode)
	}
	if s := getenv(spinEnv); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return loopPlan{}, fmt.Errorf("%s=%q: want a duration such as 20us", spinEnv, s)
		}
		plan.poller.Spin = d
	}
	if plan.poller.Wait == poller.Locked && !fixed {
		plan.gomaxprocs = n + cpus
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
