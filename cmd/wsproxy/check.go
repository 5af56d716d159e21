package main

import (
	"fmt"
	"io"

	"github.com/wsproxy/wsproxy/config"
)

// cmdCheck validates a config file and prints the effective config, with
// every default filled in, or every error.
func cmdCheck(args []string, stdout, stderr io.Writer) int {
	path, code := configFlag("check", "Validate a configuration file, loading every certificate, key and CA it names as\nthe proxy does when it starts, and print the effective configuration with every\ndefault filled in, or every mistake; exit 1 if there is one.", args, stdout, stderr)
	if code >= 0 {
		return code
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	errs := tlsProblems(cfg)
	if _, err := readToken(cfg.Admin); err != nil {
		errs = append(errs, err)
	}
	if errs != nil {
		for _, err := range errs {
			fmt.Fprintf(stderr, "%s: %v\n", path, err)
		}
		return 1
	}
	if w := adminWarning(cfg.Admin); w != "" {
		fmt.Fprintf(stderr, "%s: warning: %s\n", path, w)
	}
	out, err := cfg.Marshal()
	if err != nil {
		fmt.Fprintf(stderr, "wsproxy check: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "# %s: configuration is valid; effective settings:\n", path)
	stdout.Write(out)
	return 0
}
