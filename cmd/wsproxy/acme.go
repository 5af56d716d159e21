package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/acmecert"
	"github.com/wsproxy/wsproxy/config"
)

// acmeOptions converts a listener's acme block.
func acmeOptions(cfg *config.Config, a *config.ACME) acmecert.Options {
	return acmecert.Options{
		Domains: a.Domains, Email: a.Email, DirectoryURL: a.DirectoryURL,
		CAFile: a.CAFile, Storage: a.Storage, RenewBefore: a.RenewBefore,
		HTTP01: servesPort80(cfg),
	}
}

// servesPort80 reports whether a plain listener is on port 80, where CAs
// send HTTP-01 validations.
func servesPort80(cfg *config.Config) bool {
	for _, l := range cfg.Listeners {
		if _, port, err := net.SplitHostPort(l.Address); err == nil && port == "80" && l.TLS == nil {
			return true
		}
	}
	return false
}

// newACME makes the ACME manager of each listener with an acme block
// (nil for the others). It reads or creates the account key in storage but
// does not contact the CA.
func newACME(cfg *config.Config, log *zap.Logger) ([]*acmecert.Manager, error) {
	ms := make([]*acmecert.Manager, len(cfg.Listeners))
	for i, l := range cfg.Listeners {
		if l.TLS == nil || l.TLS.ACME == nil {
			continue
		}
		opts := acmeOptions(cfg, l.TLS.ACME)
		opts.Logger = log.Named("acme")
		m, err := acmecert.New(opts)
		if err != nil {
			return nil, keyError{fmt.Sprintf("listeners[%d].tls.acme", i), err}
		}
		ms[i] = m
	}
	return ms, nil
}

// acmeManagers lists the instance's ACME managers.
func (in *instance) acmeManagers() []*acmecert.Manager {
	var out []*acmecert.Manager
	for _, m := range in.acme {
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}

// acmePreroute answers HTTP-01 challenges before routing, when a manager
// takes them; nil when none does.
func (in *instance) acmePreroute(cfg *config.Config) func(*fasthttp.RequestCtx) bool {
	ms := in.acmeManagers()
	if len(ms) == 0 || !servesPort80(cfg) {
		return nil
	}
	return func(ctx *fasthttp.RequestCtx) bool {
		for _, m := range ms {
			if m.ServeHTTP01(ctx) {
				return true
			}
		}
		return false
	}
}

// checkOnlyACME stands for an ACME manager where certificates are only
// checked (check, reload): it holds no certificate.
type checkOnlyACME struct{}

func (checkOnlyACME) Has(string) bool { return false }
func (checkOnlyACME) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return nil, errors.New("acme: not serving")
}
