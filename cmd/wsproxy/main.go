// Command wsproxy is a WebSocket-aware reverse proxy.
//
//	wsproxy [run] -config FILE   run the proxy (or set WSPROXY_CONFIG)
//	wsproxy check -config FILE   validate a config, certificates included, and print it with defaults
//	wsproxy demo [-listen ADDR]  run the proxy with two built-in echo backends
//	wsproxy probe URL            GET URL, succeed on 2xx (container health check)
//	wsproxy version              print the version and the build's VCS revision
//	wsproxy help [COMMAND]       list the commands, or one command's flags
//
// Exit codes: 0 success, 1 a configuration or runtime error, 2 bad usage.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches the subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := ""
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help":
			usage(stdout)
			return 0
		case "-version", "--version":
			printVersion(stdout)
			return 0
		}
		if len(args[0]) > 0 && args[0][0] != '-' {
			cmd, args = args[0], args[1:]
		}
	}
	switch cmd {
	case "", "run":
		return cmdRun(args, stdout, stderr)
	case "check":
		return cmdCheck(args, stdout, stderr)
	case "demo":
		return cmdDemo(args, stdout, stderr)
	case "probe":
		return cmdProbe(args, stdout, stderr)
	case "version":
		if len(args) > 0 {
			fmt.Fprintf(stderr, "wsproxy version: unexpected argument %q\n", args[0])
			return 2
		}
		printVersion(stdout)
		return 0
	case "help":
		if len(args) == 1 && args[0] != "help" && args[0] != "version" {
			// The command's own -h: its flags, on stdout, exit 0 (or
			// 2 for a command that does not exist).
			return run([]string{args[0], "-h"}, stdout, stderr)
		}
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "wsproxy: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `wsproxy is a WebSocket-aware reverse proxy.

usage:
  wsproxy [run] [-config FILE]    run the proxy (FILE may come from WSPROXY_CONFIG)
  wsproxy check [-config FILE]    validate FILE and its certificates; print the effective config
  wsproxy demo [-listen ADDR]     run the proxy with built-in echo backends and a page
  wsproxy probe URL               GET URL and succeed on 2xx (container health check)
  wsproxy version                 print the version and the build's VCS revision
  wsproxy help [COMMAND]          this text, or a command's flags (also: COMMAND -h)

Exit codes: 0 success, 1 a configuration or runtime error, 2 bad usage.
`)
}

// newFlagSet returns a flag set for a subcommand whose usage line is
// synopsis and whose -h prints summary and the flags.
func newFlagSet(name, synopsis, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: wsproxy %s\n\n%s\n", synopsis, summary)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(fs.Output(), "\nflags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args into fs. It returns -1 when the command goes on,
// else the exit code: 0 after -h, whose usage goes to stdout, 2 after a bad
// flag, whose error and usage go to stderr.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) int {
	var out bytes.Buffer
	fs.SetOutput(&out)
	err := fs.Parse(args)
	fs.SetOutput(stderr)
	switch {
	case err == nil:
		return -1
	case errors.Is(err, flag.ErrHelp):
		stdout.Write(out.Bytes())
		return 0
	default:
		stderr.Write(out.Bytes())
		return 2
	}
}

// configFlag parses -config, falling back to WSPROXY_CONFIG. It returns
// the path, or the exit code when the command stops here.
func configFlag(name, summary string, args []string, stdout, stderr io.Writer) (string, int) {
	fs := newFlagSet(name, name+" [-config FILE]", summary)
	path := fs.String("config", os.Getenv("WSPROXY_CONFIG"), "configuration file (default $WSPROXY_CONFIG)")
	if code := parseFlags(fs, args, stdout, stderr); code >= 0 {
		return "", code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wsproxy %s: unexpected argument %q\n", name, fs.Arg(0))
		return "", 2
	}
	if *path == "" {
		fmt.Fprintf(stderr, "wsproxy %s: no configuration: use -config FILE or set WSPROXY_CONFIG\n", name)
		return "", 2
	}
	return *path, -1
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// printVersion writes the version and, for a binary built from a clone,
// the commit it was built from.
func printVersion(w io.Writer) {
	bi, _ := debug.ReadBuildInfo()
	fmt.Fprintln(w, "wsproxy", versionString()+buildDetails(bi))
}

// buildDetails describes the source and toolchain of a build from its
// build info: " (revision 0123abcd…, 2026-12-01T10:00:00Z, modified) go1.26.8".
// The VCS settings are present when the binary was built from a clone with
// go build; go run and builds from a module download have none.
func buildDetails(bi *debug.BuildInfo) string {
	if bi == nil {
		return ""
	}
	var rev, at string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	var parts []string
	if rev != "" {
		parts = append(parts, "revision "+rev)
	}
	if at != "" {
		parts = append(parts, at)
	}
	if modified {
		parts = append(parts, "modified")
	}
	s := ""
	if len(parts) > 0 {
		s = " (" + strings.Join(parts, ", ") + ")"
	}
	if bi.GoVersion != "" {
		s += " " + bi.GoVersion
	}
	return s
}
