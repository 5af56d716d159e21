package main

import (
	"fmt"
	"strconv"

	"github.com/wsproxy/wsproxy/config"
)

// A reload applies what it can at once; a few settings are read only when
// the process starts: the addresses it listens on and their reuse_port, the log format, and
// the two limits fasthttp reads per connection (the request head size and
// the time to read a request). A reload that changes one of them succeeds
// for everything else, warns about each of these and marks a restart as
// pending on /status and the status page until the process restarts.

// restartChange is a setting whose new value waits for a restart.
type restartChange struct {
	key     string // as in the config reference: listeners[0].address
	running string // the value the process started with
	file    string // the value in the file last reloaded
	note    string // what waits, when the rest of the setting applies at once
	// warned is true for the keys the proxy package warns about itself.
	warned bool
}

// String returns the change as /status shows it: "key: running -> file".
func (c restartChange) String() string {
	s := c.key + ": " + c.running + " -> " + c.file
	if c.note != "" {
		s += " (" + c.note + ")"
	}
	return s
}

// restartChanges lists the settings of next that differ from those the
// process started with and that only a restart applies. Listeners cannot
// be added, removed or switch TLS by a reload (it fails), so the lists
// have the same length here.
func restartChanges(started, next *config.Config) []restartChange {
	var cs []restartChange
	add := func(c restartChange) {
		if c.running != c.file {
			cs = append(cs, c)
		}
	}
	for i := range min(len(started.Listeners), len(next.Listeners)) {
		add(restartChange{key: fmt.Sprintf("listeners[%d].address", i),
			running: started.Listeners[i].Address, file: next.Listeners[i].Address})
		add(restartChange{key: fmt.Sprintf("listeners[%d].reuse_port", i),
			running: strconv.FormatBool(started.Listeners[i].ReusePort), file: strconv.FormatBool(next.Listeners[i].ReusePort)})
		// The ACME manager is built at start.
		add(restartChange{key: fmt.Sprintf("listeners[%d].tls.acme", i),
			running: acmeSummary(started.Listeners[i].TLS), file: acmeSummary(next.Listeners[i].TLS)})
	}
	add(restartChange{key: "admin.address",
		running: quoteEmpty(started.Admin.Address), file: quoteEmpty(next.Admin.Address)})
	add(restartChange{key: "log.format", running: started.Log.Format, file: next.Log.Format})
	add(restartChange{key: "pid_file", running: quoteEmpty(started.PIDFile), file: quoteEmpty(next.PIDFile)})
	add(restartChange{key: "engine", running: started.Engine, file: next.Engine})
	add(restartChange{key: "upgrade_timeout", running: started.UpgradeTimeout.String(), file: next.UpgradeTimeout.String()})
	add(restartChange{key: "admission.max_header_bytes", warned: true,
		running: strconv.FormatInt(started.Admission.MaxHeaderBytes, 10),
		file:    strconv.FormatInt(next.Admission.MaxHeaderBytes, 10)})
	// handshake_timeout also bounds backend handshakes, which follow the
	// reload; only its use as the request-read timeout waits.
	add(restartChange{key: "defaults.handshake_timeout", warned: true, note: "as the time to read a request",
		running: started.Defaults.HandshakeTimeout.String(), file: next.Defaults.HandshakeTimeout.String()})
	return cs
}

// acmeSummary shows a listener's acme block on one line; "none" without.
func acmeSummary(t *config.ListenerTLS) string {
	if t == nil || t.ACME == nil {
		return "none"
	}
	a := t.ACME
	return fmt.Sprintf("domains %v, email %q, directory_url %s, ca_file %q, storage %s, renew_before %v",
		a.Domains, a.Email, a.DirectoryURL, a.CAFile, a.Storage, a.RenewBefore)
}

// quoteEmpty shows an empty setting as "" rather than as nothing.
func quoteEmpty(s string) string {
	if s == "" {
		return `""`
	}
	return s
}
