package main

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// TestHelp: every way of asking for help lists the commands on stdout and
// exits 0; a command's -h prints its own usage the same way.
func TestHelp(t *testing.T) {
	commands := []string{"wsproxy [run]", "wsproxy check", "wsproxy demo", "wsproxy probe", "wsproxy version", "wsproxy help"}
	for _, args := range [][]string{{"-h"}, {"--help"}, {"-help"}, {"help"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, out, errOut := runCmd(args...)
			if code != 0 || errOut != "" {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			for _, c := range commands {
				if !strings.Contains(out, c) {
					t.Errorf("usage lacks %q:\n%s", c, out)
				}
			}
		})
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"probe", "-h"}, "usage: wsproxy probe URL"},
		{[]string{"check", "-h"}, "usage: wsproxy check [-config FILE]"},
		{[]string{"help", "check"}, "usage: wsproxy check [-config FILE]"},
		{[]string{"run", "--help"}, "usage: wsproxy run [-config FILE]"},
		{[]string{"-config", "x.yaml", "-h"}, "usage: wsproxy run [-config FILE]"},
		{[]string{"demo", "-h"}, "-listen"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := runCmd(tc.args...)
			if code != 0 || errOut != "" || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and %q", code, out, errOut, tc.want)
			}
		})
	}
	// Bad usage still goes to stderr with exit 2.
	for _, args := range [][]string{{"probe"}, {"probe", "-bogus", "x"}, {"check", "-bogus"}, {"version", "extra"}, {"help", "frobnicate"}} {
		if code, out, errOut := runCmd(args...); code != 2 || out != "" || errOut == "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and a message on stderr", args, code, out, errOut)
		}
	}
}

func TestVersionFlags(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, errOut := runCmd(args...)
		if code != 0 || errOut != "" || !strings.HasPrefix(out, "wsproxy "+versionString()) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
		if !strings.Contains(out, runtime.Version()) {
			t.Errorf("%q: %q does not name the toolchain %s", args, out, runtime.Version())
		}
	}
}

// TestBuildDetails: a binary built from a clone names its commit, the
// commit's time and whether the tree had changes; one without VCS settings
// names only the toolchain.
func TestBuildDetails(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings []debug.BuildSetting
		want     string
	}{
		{"clean clone", []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "2228e1456b07f13a6a480b4e389b87b2b828f703"},
			{Key: "vcs.time", Value: "2026-12-01T23:10:00Z"},
			{Key: "vcs.modified", Value: "false"},
		}, " (revision 2228e1456b07f13a6a480b4e389b87b2b828f703, 2026-12-01T23:10:00Z) go1.26.8"},
		{"modified", []debug.BuildSetting{
			{Key: "vcs.revision", Value: "2228e1456b07"},
			{Key: "vcs.time", Value: "2026-12-01T23:10:00Z"},
			{Key: "vcs.modified", Value: "true"},
		}, " (revision 2228e1456b07, 2026-12-01T23:10:00Z, modified) go1.26.8"},
		{"no vcs", []debug.BuildSetting{{Key: "GOOS", Value: "linux"}}, " go1.26.8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := buildDetails(&debug.BuildInfo{GoVersion: "go1.26.8", Settings: tc.settings})
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	if got := buildDetails(nil); got != "" {
		t.Fatalf("no build info: %q", got)
	}
}
