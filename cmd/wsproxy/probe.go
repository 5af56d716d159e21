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
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: wsproxy probe URL")
		return 2
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(args[0])
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
