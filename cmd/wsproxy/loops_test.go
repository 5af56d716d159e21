package main

import (
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/poller"
)

func TestPlanLoops(t *testing.T) {
	for _, tc := range []struct {
		name        string
		env         map[string]string
		procs, cpus int
		want        loopPlan
		err         bool
	}{
		{name: "default", procs: 2, cpus: 2,
			want: loopPlan{loops: 2, gomaxprocs: 2}},
		{name: "CPU quota below the CPUs", procs: 1, cpus: 8,
			want: loopPlan{loops: 1, gomaxprocs: 1}},
		{name: "locked", env: map[string]string{loopsEnv: "locked"}, procs: 2, cpus: 2,
			want: loopPlan{loops: 2, poller: poller.Config{Wait: poller.Locked}, gomaxprocs: 4}},
		{name: "locked under a CPU quota", env: map[string]string{loopsEnv: "locked"}, procs: 1, cpus: 8,
			want: loopPlan{loops: 1, poller: poller.Config{Wait: poller.Locked}, gomaxprocs: 9}},
		{name: "locked, GOMAXPROCS fixed", env: map[string]string{"GOMAXPROCS": "2", loopsEnv: "locked"}, procs: 2, cpus: 2,
			want: loopPlan{loops: 2, poller: poller.Config{Wait: poller.Locked}, gomaxprocs: 2}},
		{name: "GOMAXPROCS above the CPUs", env: map[string]string{"GOMAXPROCS": "6"}, procs: 6, cpus: 2,
			want: loopPlan{loops: 2, gomaxprocs: 6}},
		{name: "parked asked", env: map[string]string{loopsEnv: "parked"}, procs: 2, cpus: 2,
			want: loopPlan{loops: 2, gomaxprocs: 2}},
		{name: "locked with spin", env: map[string]string{loopsEnv: "locked", spinEnv: "20us"}, procs: 2, cpus: 2,
			want: loopPlan{loops: 2, poller: poller.Config{Wait: poller.Locked, Spin: 20 * time.Microsecond}, gomaxprocs: 4}},
		{name: "bad mode", env: map[string]string{loopsEnv: "busy"}, procs: 2, cpus: 2, err: true},
		{name: "bad spin", env: map[string]string{spinEnv: "-1s"}, procs: 2, cpus: 2, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := planLoops(func(k string) string { return tc.env[k] }, tc.procs, tc.cpus)
			if (err != nil) != tc.err {
				t.Fatalf("error %v, want one: %v", err, tc.err)
			}
			if got != tc.want {
				t.Fatalf("plan %+v, want %+v", got, tc.want)
			}
		})
	}
}
