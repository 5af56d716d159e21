package main

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/internal/testpki"
)

// symlink makes a symlink or fails the test.
func symlink(t *testing.T, target, name string) {
	t.Helper()
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}

func mkdir(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func touch(t *testing.T, name string) {
	t.Helper()
	if err := os.WriteFile(name, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// watchDirs watches where a swap can happen: the directory of the file
// and of every symlink on its way, each under its resolved name.
func TestWatchDirs(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	j := func(p ...string) string { return filepath.Join(append([]string{root}, p...)...) }
	for _, tc := range []struct {
		name  string
		setup func()
		file  string
		want  []string
	}{
		{"plain file", func() {
			mkdir(t, j("plain"))
			touch(t, j("plain", "config.yaml"))
		}, j("plain", "config.yaml"), []string{j("plain")}},
		{"configmap", func() {
			mkdir(t, j("cm", "..2026_1"))
			touch(t, j("cm", "..2026_1", "config.yaml"))
			symlink(t, "..2026_1", j("cm", "..data"))
			symlink(t, "..data/config.yaml", j("cm", "config.yaml"))
		}, j("cm", "config.yaml"), []string{j("cm"), j("cm", "..2026_1")}},
		{"through a directory symlink elsewhere", func() {
			mkdir(t, j("etc"), j("srv", "v1"))
			touch(t, j("srv", "v1", "config.yaml"))
			symlink(t, "v1", j("srv", "current"))
			symlink(t, "../srv/current/config.yaml", j("etc", "config.yaml"))
		}, j("etc", "config.yaml"), []string{j("etc"), j("srv"), j("srv", "v1")}},
		{"a symlink loop ends", func() {
			mkdir(t, j("loop"))
			symlink(t, "b", j("loop", "a"))
			symlink(t, "a", j("loop", "b"))
		}, j("loop", "a"), []string{j("loop")}},
		{"missing file", func() { mkdir(t, j("missing")) }, j("missing", "config.yaml"), []string{j("missing")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			var got []string
			for d := range watchDirs([]string{tc.file}) {
				got = append(got, d)
			}
			sort.Strings(got)
			sort.Strings(tc.want)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v\nwant %v", got, tc.want)
			}
		})
	}
}

// A config reached through a symlinked directory in another place (a
// release directory switched by "current") reloads when the directory
// symlink is swapped, though nothing changed where the config is named.
func TestWatchConfigDirectorySwap(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)
	root := t.TempDir()
	mkdir(t, filepath.Join(root, "etc"), filepath.Join(root, "srv", "v1"), filepath.Join(root, "srv", "v2"))
	write := func(version, route string) {
		text := fmt.Sprintf(watchConfigText, listen, admin, route, backend)
		if err := os.WriteFile(filepath.Join(root, "srv", version, "config.yaml"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("v1", "/one")
	write("v2", "/two")
	symlink(t, "v1", filepath.Join(root, "srv", "current"))
	cfg := filepath.Join(root, "etc", "config.yaml")
	symlink(t, "../srv/current/config.yaml", cfg)

	p := startProcess(t, "-config", cfg)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	waitLog(t, p, "watching the configuration")
	symlink(t, "v2", filepath.Join(root, "srv", "current.tmp"))
	if err := os.Rename(filepath.Join(root, "srv", "current.tmp"), filepath.Join(root, "srv", "current")); err != nil {
		t.Fatal(err)
	}
	st := waitReloadsDone(t, p, admin, 1)
	if st.ReloadsOK != 1 || !dialOK(listen, "/two") {
		t.Fatalf("after the swap: %+v:\n%s", st, p.stderr.String())
	}
}

// A certificate renewed in a mounted Secret (its ..data symlink swapped,
// as cert-manager's renewals reach a pod) is served without a signal: the
// watcher watches the files the config names too.
func TestWatchConfigRenewedCertificate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	ca := testpki.NewCA(t)
	first := ca.Issue(t, "first", testpki.Options{Names: []string{"127.0.0.1"}})
	second := ca.Issue(t, "second", testpki.Options{Names: []string{"127.0.0.1"}})
	if first.Cert.Subject.CommonName == second.Cert.Subject.CommonName {
		t.Fatal("the two certificates have the same name: the test could not tell them apart")
	}
	backend := echoBackend(t, "b1")
	listen, admin := freePort(t), freePort(t)

	secret := t.TempDir()
	put := func(version string, leaf testpki.Leaf) {
		mkdir(t, filepath.Join(secret, version))
		for src, dst := range map[string]string{leaf.CertFile: "tls.crt", leaf.KeyFile: "tls.key"} {
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(secret, version, dst), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	put("..v1", first)
	symlink(t, "..v1", filepath.Join(secret, "..data"))
	symlink(t, "..data/tls.crt", filepath.Join(secret, "tls.crt"))
	symlink(t, "..data/tls.key", filepath.Join(secret, "tls.key"))
	cfgPath := writeConfig(t, fmt.Sprintf(`
watch_config: true
listeners:
  - address: %q
    tls: {certificates: [{cert_file: %q, key_file: %q}]}
admin: {address: %q}
routes: [{path: /, pool: p}]
pools:
  p: {backends: [{address: %q}]}
`, listen, filepath.Join(secret, "tls.crt"), filepath.Join(secret, "tls.key"), admin, backend))
	p := startProcess(t, "-config", cfgPath)
	waitHTTP(t, p, "http://"+admin+"/readyz", 200)
	waitLog(t, p, "watching the configuration")

	served := func() string {
		conn, err := tls.Dial("tcp", listen, &tls.Config{RootCAs: ca.Pool()})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != first.Cert.Subject.CommonName {
		t.Fatalf("serving %q at start, want %q", got, first.Cert.Subject.CommonName)
	}
	put("..v2", second)
	symlink(t, "..v2", filepath.Join(secret, "..data_tmp"))
	if err := os.Rename(filepath.Join(secret, "..data_tmp"), filepath.Join(secret, "..data")); err != nil {
		t.Fatal(err)
	}
	st := waitReloadsDone(t, p, admin, 1)
	if st.ReloadsOK != 1 {
		t.Fatalf("reload after the renewal failed:\n%s", p.stderr.String())
	}
	if got := served(); got != second.Cert.Subject.CommonName {
		t.Fatalf("serving %q after the renewal, want %q", got, second.Cert.Subject.CommonName)
	}
}

// A route's jwks_file is a file the config names: watch_config follows it,
// so that keys rotated in a mounted Secret are read without a signal.
func TestWatchedFilesNameJWKS(t *testing.T) {
	dir := t.TempDir()
	jwks := filepath.Join(dir, "jwks.json")
	// An Ed25519 public key (RFC 8037 appendix A.2).
	if err := os.WriteFile(jwks, []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.yaml")
	cfg, err := config.Parse(path, []byte("listeners: [{address: \":8080\"}]\npools: {p: {backends: [{address: \"127.0.0.1:9001\"}]}}\n"+
		"routes: [{path: /, pool: p, jwt: {jwks_file: jwks.json}}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := watchedFiles(path, cfg); !reflect.DeepEqual(got, []string{path, jwks}) {
		t.Fatalf("watched %v", got)
	}
}
