package main

import (
	"fmt"
	"io"
	"net/http"
	"time"
)

// cmdProbe fetches a URL and succeeds on a 2xx answer: the container
// HEALTHCHECK, for images that carry no HTTP client of their own.
func cmdProbe(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("probe", "probe URL",
		"GET URL and exit 0 on a 2xx answer, 1 otherwise: the container health check, for\nimages that carry no HTTP client of their own. Gives up after 3 s.")
	if code := parseFlags(fs, args, stdout, stderr); code >= 0 {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: wsproxy probe URL")
		return 2
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "wsproxy probe: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		fmt.Fprintf(stderr, "wsproxy probe: %s\n", resp.Status)
		return 1
	}
	fmt.Fprintln(stdout, resp.Status)
	return 0
}
