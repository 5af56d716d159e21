package discovery

import (
	"reflect"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/config"
)

// TestMerge: discovered backends join a pool's listed ones; a listed
// address keeps its listed weight; pools without discovery or without a
// set are the config's own; the config is not modified.
func TestMerge(t *testing.T) {
	cfg, err := config.Parse("t.yaml", []byte(`
listeners: [{address: ":8080"}]
routes: [{path: /, pool: chat}, {path: /feed, pool: feed}, {path: /static, pool: static}]
pools:
  chat:
    backends: [{address: "10.0.0.1:80", weight: 5}]
    discovery: {dns: chat.svc, type: a, port: 80, interval: 2s, hold: 1m}
  feed:
    discovery: {dns: _ws._tcp.feed.svc}
  static:
    backends: [{address: "10.9.0.1:80"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	specs := Specs(cfg)
	if len(specs) != 2 || specs["chat"] != (Spec{Name: "chat.svc", Type: TypeA, Port: 80, Interval: 2 * time.Second, Hold: time.Minute}) || specs["feed"].Type != TypeSRV {
		t.Fatalf("specs = %+v", specs)
	}
	merged := Merge(cfg, map[string][]Backend{
		"chat":   {{"10.0.0.1:80", 1}, {"10.0.0.2:80", 1}},
		"static": {{"10.9.0.2:80", 1}}, // not discovered: ignored
	})
	want := []config.Backend{{Address: "10.0.0.1:80", Weight: 5}, {Address: "10.0.0.2:80", Weight: 1}}
	if got := merged.Pools["chat"].Backends; !reflect.DeepEqual(got, want) {
		t.Errorf("chat = %v, want %v", got, want)
	}
	if merged.Pools["feed"] != cfg.Pools["feed"] || merged.Pools["static"] != cfg.Pools["static"] || len(merged.Pools["feed"].Backends) != 0 {
		t.Errorf("pools without a set were not the config's own")
	}
	if len(cfg.Pools["chat"].Backends) != 1 || merged.Routes[0].Path != cfg.Routes[0].Path {
		t.Errorf("config modified: %v", cfg.Pools["chat"].Backends)
	}
}
