package main

import (
	"fmt"

	"github.com/wsproxy/wsproxy/acmecert"
	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/tlsconf"
)

// A TLS file that exists can still be unusable: a key that does not match
// its certificate, a file that is not PEM, a certificate where the key
// belongs, an expired certificate. The config package checks only that the
// files are there; the loaders below build the TLS configurations exactly
// as the running proxy does (listeners through tlsconf.NewServer, pools
// through tlsconf.NewClient), so that check, run and a reload accept and
// refuse the same files.

// keyError is a problem with the setting at key, such as
// listeners[0].tls.certificates[1].
type keyError struct {
	key string
	err error
}

func (e keyError) Error() string { return e.key + ": " + e.err.Error() }
func (e keyError) Unwrap() error { return e.err }

// tlsProblems loads every certificate, key and CA file cfg names and
// returns one error per problem, each naming its key; none when the proxy
// can serve with them.
func tlsProblems(cfg *config.Config) []error {
	var errs []error
	for i, l := range cfg.Listeners {
		if l.TLS != nil {
			_, e := listenerTLS(i, l.TLS, nil)
			errs = append(errs, e...)
		}
		if l.TLS != nil && l.TLS.ACME != nil {
			// Without contacting the CA: the CA file and the storage.
			if err := acmecert.Check(acmeOptions(cfg, l.TLS.ACME)); err != nil {
				errs = append(errs, keyError{fmt.Sprintf("listeners[%d].tls.acme", i), err})
			}
		}
	}
	for _, name := range cfg.PoolNames() {
		errs = append(errs, poolTLSProblems(name, cfg.Pools[name].TLS)...)
	}
	return errs
}

// listenerTLS builds the TLS server of listeners[i] as the proxy serves it,
// with acme serving the listener's ACME domains (nil to check only).
// When that fails it loads each certificate and the client CA on its own,
// so that every error names the key that holds the bad file.
func listenerTLS(i int, t *config.ListenerTLS, acme tlsconf.CertSource) (*tlsconf.Server, []error) {
	opts := serverOptions(t)
	if t.ACME != nil {
		opts.ACME = acme
		if acme == nil {
			opts.ACME = checkOnlyACME{}
		}
	}
	ts, err := tlsconf.NewServer(opts)
	if err == nil {
		return ts, nil
	}
	key := fmt.Sprintf("listeners[%d].tls", i)
	var errs []error
	for j, c := range t.Certificates {
		one := tlsconf.ServerOptions{Certificates: []tlsconf.CertFiles{{CertFile: c.CertFile, KeyFile: c.KeyFile}}}
		if _, err := tlsconf.NewServer(one); err != nil {
			errs = append(errs, keyError{fmt.Sprintf("%s.certificates[%d]", key, j), err})
		}
	}
	if t.ClientCAFile != "" {
		// A client configuration reads its CA file with the same loader
		// as a server's client CAs.
		if _, err := tlsconf.NewClient(tlsconf.ClientOptions{CAFile: t.ClientCAFile}); err != nil {
			errs = append(errs, keyError{key + ".client_ca_file", err})
		}
	}
	if len(errs) == 0 {
		errs = append(errs, keyError{key, err})
	}
	return nil, errs
}

// poolTLSProblems builds the TLS client of pools.NAME as the proxy dials
// its backends with it and, when that fails, names the key at fault.
func poolTLSProblems(name string, t config.PoolTLS) []error {
	if !t.Enabled {
		return nil
	}
	_, err := tlsconf.NewClient(clientOptions(t))
	if err == nil {
		return nil
	}
	key := "pools." + name + ".tls"
	var errs []error
	if t.CAFile != "" {
		if _, err := tlsconf.NewClient(tlsconf.ClientOptions{CAFile: t.CAFile}); err != nil {
			errs = append(errs, keyError{key + ".ca_file", err})
		}
	}
	if t.CertFile != "" || t.KeyFile != "" {
		if _, err := tlsconf.NewClient(tlsconf.ClientOptions{CertFile: t.CertFile, KeyFile: t.KeyFile}); err != nil {
			errs = append(errs, keyError{key + ".cert_file", err})
		}
	}
	if len(errs) == 0 {
		errs = append(errs, keyError{key, err})
	}
	return errs
}

// serverOptions converts a listener's TLS settings.
func serverOptions(t *config.ListenerTLS) tlsconf.ServerOptions {
	o := tlsconf.ServerOptions{MinVersion: t.MinVersion, ClientCAFile: t.ClientCAFile, ClientAuth: t.ClientAuth}
	for _, c := range t.Certificates {
		o.Certificates = append(o.Certificates, tlsconf.CertFiles{CertFile: c.CertFile, KeyFile: c.KeyFile})
	}
	return o
}

// clientOptions converts a pool's TLS settings.
func clientOptions(t config.PoolTLS) tlsconf.ClientOptions {
	return tlsconf.ClientOptions{
		ServerName: t.ServerName, CAFile: t.CAFile,
		CertFile: t.CertFile, KeyFile: t.KeyFile,
		InsecureSkipVerify: t.InsecureSkipVerify,
	}
}
