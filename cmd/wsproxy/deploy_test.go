package main

import (
	"context"
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/wsproxy/wsproxy/balancer"
	"github.com/wsproxy/wsproxy/config"
	"github.com/wsproxy/wsproxy/discovery"
	"github.com/wsproxy/wsproxy/health"
	"github.com/wsproxy/wsproxy/proxy"
)

// servedMetricNames returns the name of every metric /metrics serves,
// labelled series or not yet: what the collectors describe.
func servedMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(`
listeners: [{address: "127.0.0.1:0"}]
routes: [{path: /, pool: p}]
pools: {p: {backends: [{address: "127.0.0.1:1"}]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	backends := balancer.NewRegistry()
	hm := health.NewManager(ctx, health.Config{Setter: backends, Logger: zap.NewNop()})
	defer hm.Close()
	srv, err := proxy.New(proxy.Config{Config: cfg, Logger: zap.NewNop(), Backends: backends, Health: hm})
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{srv: srv, discovered: &discovered{mgr: discovery.NewManager(ctx, discovery.Config{})}}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	names := map[string]bool{}
	for _, c := range in.collectors() {
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			if m := fqName.FindStringSubmatch(d.String()); m != nil {
				names[m[1]] = true
			}
		}
	}
	return names
}

// The dashboard and the alert rules query only metrics the proxy serves:
// a renamed metric would otherwise leave a panel empty and an alert silent.
// The discovery metrics come with DNS discovery: until the proxy serves
// one of them, their names are listed rather than failed.
func TestDeployMetricNames(t *testing.T) {
	served := servedMetricNames(t)
	var exprs []string
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	data, err := os.ReadFile("../../deploy/prometheus/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts[r.Alert] = true
			exprs = append(exprs, r.Expr)
		}
	}
	for _, a := range []string{"WsproxyNoHealthyBackend", "WsproxyReloadFailed", "WsproxyDiscoveryFailing", "WsproxySessionLimitNear"} {
		if !alerts[a] {
			t.Errorf("rules.yaml has no alert %s", a)
		}
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	data, err = os.ReadFile("../../deploy/grafana/wsproxy.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		exprs = append(exprs, v.Definition)
	}

	name := regexp.MustCompile(`\bwsproxy_[a-z0-9_]+`)
	used := map[string]bool{}
	for _, e := range exprs {
		for _, n := range name.FindAllString(e, -1) {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, ok := strings.CutSuffix(n, suffix); ok && served[base] {
					n = base
				}
			}
			used[n] = true
		}
	}
	if len(used) < 20 {
		t.Fatalf("only %d metric names in the rules and the dashboard: %v", len(used), used)
	}
	discoveryServed := false
	for n := range served {
		discoveryServed = discoveryServed || strings.HasPrefix(n, "wsproxy_discovery_")
	}
	var missing, pending []string
	for n := range used {
		switch {
		case served[n]:
		case strings.HasPrefix(n, "wsproxy_discovery_") && !discoveryServed:
			pending = append(pending, n)
		default:
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	sort.Strings(pending)
	if len(pending) > 0 {
		t.Logf("discovery metrics not served yet (no DNS discovery in this build): %v", pending)
	}
	if len(missing) > 0 {
		t.Errorf("queried but not served by /metrics: %v", missing)
	}
}

// The Kubernetes manifests agree with each other: the ConfigMap turns on
// watch_config and shutdown_delay and names a token file that the
// Deployment mounts from the Secret; both are mounted as directories (a
// subPath mount is never updated); the grace period covers the delay and
// the drain; and no health check needs a path an app may lack.
func TestKubernetesManifests(t *testing.T) {
	dir := "../../deploy/kubernetes"
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	data, err := os.ReadFile(filepath.Join(dir, "configmap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &cm); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("/etc/wsproxy/config.yaml", []byte(cm.Data["config.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.WatchConfig || cfg.ShutdownDelay <= 0 || cfg.Admin.TokenFile == "" {
		t.Errorf("ConfigMap: watch_config %v, shutdown_delay %v, admin.token_file %q", cfg.WatchConfig, cfg.ShutdownDelay, cfg.Admin.TokenFile)
	}
	for name, p := range cfg.Pools {
		if p.Health.Type == "http" || p.Health.Type == "websocket" {
			t.Errorf("pool %s: health %s on %s: an app may not serve it; use tcp", name, p.Health.Type, p.Health.Path)
		}
	}

	var dep struct {
		Spec struct {
			Template struct {
				Spec struct {
					Grace      int `yaml:"terminationGracePeriodSeconds"`
					Containers []struct {
						Args   []string `yaml:"args"`
						Mounts []struct {
							Name      string `yaml:"name"`
							MountPath string `yaml:"mountPath"`
							SubPath   string `yaml:"subPath"`
						} `yaml:"volumeMounts"`
					} `yaml:"containers"`
					Volumes []struct {
						Name      string            `yaml:"name"`
						ConfigMap map[string]string `yaml:"configMap"`
						Secret    map[string]any    `yaml:"secret"`
					} `yaml:"volumes"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	data, err = os.ReadFile(filepath.Join(dir, "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &dep); err != nil {
		t.Fatal(err)
	}
	pod := dep.Spec.Template.Spec
	if need := cfg.ShutdownDelay + cfg.Defaults.DrainTimeout; time.Duration(pod.Grace)*time.Second <= need {
		t.Errorf("terminationGracePeriodSeconds %d does not cover shutdown_delay + drain_timeout (%v)", pod.Grace, need)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	if strings.Join(c.Args, " ") != "-config /etc/wsproxy/config.yaml" {
		t.Errorf("args %v: the test parsed the ConfigMap as /etc/wsproxy/config.yaml", c.Args)
	}
	volumes := map[string]string{} // name -> ConfigMap or Secret it mounts
	for _, v := range pod.Volumes {
		switch {
		case v.ConfigMap != nil:
			volumes[v.Name] = "configmap/" + v.ConfigMap["name"]
		case v.Secret != nil:
			volumes[v.Name] = "secret/" + v.Secret["secretName"].(string)
		}
	}
	mounted := map[string]string{} // directory -> source
	for _, m := range c.Mounts {
		if m.SubPath != "" {
			t.Errorf("volume %s mounted with subPath: the kubelet never updates it", m.Name)
		}
		mounted[m.MountPath] = volumes[m.Name]
	}
	if got := mounted["/etc/wsproxy"]; got != "configmap/wsproxy" {
		t.Errorf("/etc/wsproxy mounts %q, want the ConfigMap", got)
	}
	if got := mounted[path.Dir(cfg.Admin.TokenFile)]; got != "secret/wsproxy-admin" {
		t.Errorf("the directory of %s mounts %q, want the Secret wsproxy-admin", cfg.Admin.TokenFile, got)
	}

	var k struct {
		Resources []string `yaml:"resources"`
		Secrets   []struct {
			Name string `yaml:"name"`
		} `yaml:"secretGenerator"`
	}
	data, err = os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &k); err != nil {
		t.Fatal(err)
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(filepath.Join(dir, r)); err != nil {
			t.Errorf("kustomization.yaml: %v", err)
		}
	}
	if len(k.Secrets) != 1 || k.Secrets[0].Name != "wsproxy-admin" {
		t.Errorf("kustomization.yaml generates %v, want the Secret wsproxy-admin", k.Secrets)
	}
}
