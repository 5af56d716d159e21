// Command wsproxy is a WebSocket-aware reverse proxy.
//
//	wsproxy -config FILE         run the proxy (or set WSPROXY_CONFIG)
//	wsproxy check -config FILE   validate a config and print it with defaults
//	wsproxy demo [-listen ADDR]  run the proxy with two built-in echo backends
//	wsproxy probe URL            GET URL, succeed on 2xx (container health check)
//	wsproxy version              print the version
//
// Exit codes: 0 success, 1 a configuration or runtime error, 2 bad usage.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches the subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := ""
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "", "run":
		return cmdRun(args, stderr)
	case "check":
		return cmdCheck(args, stdout, stderr)
	case "demo":
		return cmdDemo(args, stdout, stderr)
	case "probe":
		return cmdProbe(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "wsproxy", versionString())
		return 0
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "wsproxy: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  wsproxy [-config FILE]          run the proxy (FILE may come from WSPROXY_CONFIG)
  wsproxy check -config FILE      validate FILE and print the effective config
  wsproxy demo [-listen ADDR]     run the proxy with built-in echo backends and a page
  wsproxy probe URL               GET URL and succeed on 2xx (container health check)
  wsproxy version                 print the version
`)
}

// configFlag parses -config, falling back to WSPROXY_CONFIG.
func configFlag(name string, args []string, stderr io.Writer) (string, bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", os.Getenv("WSPROXY_CONFIG"), "configuration file (default $WSPROXY_CONFIG)")
	if err := fs.Parse(args); err != nil {
		return "", false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wsproxy %s: unexpected argument %q\n", name, fs.Arg(0))
		return "", false
	}
	if *path == "" {
		fmt.Fprintf(stderr, "wsproxy %s: no configuration: use -config FILE or set WSPROXY_CONFIG\n", name)
		return "", false
	}
	return *path, true
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
