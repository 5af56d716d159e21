package discovery

import "github.com/prometheus/client_golang/prometheus"

var (
	descInfo = prometheus.NewDesc("wsproxy_discovery_info",
		"Always 1: where a discovered pool's backends come from (record type, name, resolver; \"\" is /etc/resolv.conf).",
		[]string{"pool", "type", "name", "resolver"}, nil)
	descBackends = prometheus.NewDesc("wsproxy_discovery_backends",
		"Backends in a pool's discovered set, those held after they left the answers included.", []string{"pool"}, nil)
	descLookups = prometheus.NewDesc("wsproxy_discovery_lookups_total",
		"DNS lookups of a pool's name by result: ok (an answer) or failed (timeout, SERVFAIL, REFUSED, no server).",
		[]string{"pool", "result"}, nil)
	descLastSuccess = prometheus.NewDesc("wsproxy_discovery_last_success_timestamp_seconds",
		"When a pool's name last got an answer, in seconds since the epoch; 0 before the first.", []string{"pool"}, nil)
	descAge = prometheus.NewDesc("wsproxy_discovery_last_success_age_seconds",
		"Seconds since a pool's name last got an answer (or since its discovery started, before the first).", []string{"pool"}, nil)
)

// Describe implements prometheus.Collector.
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descBackends, descLookups, descLastSuccess, descAge} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	for _, st := range m.Status() {
		ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, st.Pool, st.Type, st.Name, st.Resolver)
		ch <- prometheus.MustNewConstMetric(descBackends, prometheus.GaugeValue, float64(st.Backends), st.Pool)
		ch <- prometheus.MustNewConstMetric(descLookups, prometheus.CounterValue, float64(st.Lookups-st.Failures), st.Pool, "ok")
		ch <- prometheus.MustNewConstMetric(descLookups, prometheus.CounterValue, float64(st.Failures), st.Pool, "failed")
		last := 0.0
		if !st.LastSuccess.IsZero() {
			last = float64(st.LastSuccess.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(descLastSuccess, prometheus.GaugeValue, last, st.Pool)
		ch <- prometheus.MustNewConstMetric(descAge, prometheus.GaugeValue, st.AgeSeconds, st.Pool)
	}
}
