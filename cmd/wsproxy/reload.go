package main

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/config"
)

// Three things reload the configuration file: SIGHUP, POST /reload on the
// admin listener, and the watcher of watch_config. All three go through
// the signal loop, which alone applies a configuration, so that reloads
// never overlap and each one sees the last one's result.

// reloadRequest asks the signal loop for a reload and waits for its result.
type reloadRequest struct {
	source string // "admin"
	reply  chan reloadResult
}

// reloadResult is what a reload did: the answer of POST /reload.
type reloadResult struct {
	OK   bool   `json:"ok"`
	File string `json:"file"`
	// Errors are the reasons a reload changed nothing, each with the
	// file, line and key when the file itself is at fault.
	Errors []reloadError `json:"errors,omitempty"`
	// RestartPending lists the settings the file changed that only a
	// restart applies.
	RestartPending []string `json:"restart_pending"`
}

// reloadError is one reason a reload failed.
type reloadError struct {
	File    string `json:"file,omitempty"`
	Line    int    `json:"line,omitempty"`
	Key     string `json:"key,omitempty"`
	Message string `json:"message"`
	// Error is the whole line as the log and wsproxy check print it.
	Error string `json:"error"`
}

// reloadErrors turns a reload's failure into its reasons: one per mistake
// of an invalid file, at its line.
func reloadErrors(errs ...error) []reloadError {
	var out []reloadError
	for _, err := range errs {
		var fes config.Errors
		var ke keyError
		switch {
		case errors.As(err, &fes):
			for _, fe := range fes {
				out = append(out, reloadError{File: fe.File, Line: fe.Line, Key: fe.Key, Message: fe.Msg, Error: fe.Error()})
			}
		case errors.As(err, &ke):
			out = append(out, reloadError{Key: ke.key, Message: ke.err.Error(), Error: err.Error()})
		default:
			out = append(out, reloadError{Message: err.Error(), Error: err.Error()})
		}
	}
	return out
}

// errNotRunning answers a reload asked for once shutdown began.
var errNotRunning = errors.New("wsproxy: shutting down")

// requestReload hands a reload to the signal loop and returns its result.
func (in *instance) requestReload(ctx context.Context, source string) (reloadResult, error) {
	req := reloadRequest{source: source, reply: make(chan reloadResult, 1)}
	select {
	case in.reloadReqs <- req:
	case <-in.stopped:
		return reloadResult{}, errNotRunning
	case <-ctx.Done():
		return reloadResult{}, ctx.Err()
	}
	return <-req.reply, nil
}

// reload re-reads the config file and applies it. An invalid file changes
// nothing. Only the signal loop calls it.
func (in *instance) reload(source string) reloadResult {
	res := reloadResult{File: in.path, RestartPending: in.pendingRestart()}
	if in.path == "" {
		in.log.Warn("reload ignored: no config file", zap.String("source", source))
		res.Errors = reloadErrors(errors.New("no config file: this instance runs a built-in configuration"))
		return res
	}
	fail := func(errs ...error) reloadResult {
		in.reloads.count(false)
		res.Errors = reloadErrors(errs...)
		in.log.Error("reload failed; keeping the running configuration",
			zap.String("source", source), zap.Errors("errors", errs))
		return res
	}
	cfg, err := config.Load(in.path)
	if err != nil {
		return fail(err)
	}
	// Listeners are fixed at start; their certificates reload. Every
	// certificate is checked before anything changes.
	if len(cfg.Listeners) != len(in.tls) {
		return fail(errors.New("listeners cannot be added or removed by a reload; restart instead"))
	}
	for i, l := range cfg.Listeners {
		if (l.TLS == nil) != (in.tls[i] == nil) {
			return fail(fmt.Errorf("listeners[%d]: TLS cannot be turned on or off by a reload; restart instead", i))
		}
	}
	if errs := tlsProblems(cfg); errs != nil {
		return fail(errs...)
	}
	token, err := readToken(cfg.Admin)
	if err != nil {
		return fail(err)
	}
	if err := in.discovered.apply(cfg); err != nil { // the proxy, then health checks
		return fail(err)
	}
	for i, l := range cfg.Listeners {
		if l.TLS != nil {
			_ = in.tls[i].Reload(serverOptions(l.TLS))
		}
	}
	in.level.SetLevel(parseLevel(cfg.Log.Level))
	if in.admin != nil {
		in.admin.pprof.Store(cfg.Admin.Pprof)
		in.admin.setToken(token)
	}
	var pending []string
	for _, c := range restartChanges(in.started, cfg) {
		pending = append(pending, c.String())
		if !c.warned {
			in.log.Warn("a reload cannot change this setting; the running value stays until a restart",
				zap.String("key", c.key), zap.String("running", c.running), zap.String("file", c.file))
		}
	}
	in.restartPending.Store(&pending)
	// Counted once /status can say what it left pending: a reader that
	// sees the count sees the list.
	in.reloads.count(true)
	in.running = cfg
	in.log.Info("configuration reloaded", zap.String("file", in.path), zap.String("source", source),
		zap.Strings("restart_pending", pending))
	res.OK = true
	res.RestartPending = in.pendingRestart()
	return res
}
