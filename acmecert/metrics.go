package acmecert

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	descExpiry = prometheus.NewDesc("wsproxy_acme_certificate_expiry_timestamp_seconds",
		"When the certificate served for an ACME domain expires (Unix seconds); absent until there is one.",
		[]string{"domain"}, nil)
	descLastOK = prometheus.NewDesc("wsproxy_acme_renewal_last_successful",
		"Whether the last order for an ACME domain (its first certificate or a renewal) succeeded (1) or failed (0); absent until one finishes.",
		[]string{"domain"}, nil)
	descLastAt = prometheus.NewDesc("wsproxy_acme_renewal_last_timestamp_seconds",
		"When the last order for an ACME domain finished (Unix seconds); absent until one does.",
		[]string{"domain"}, nil)
)

// Collector returns the managers' metrics: each domain's certificate
// expiry and the result of its last order. One collector covers every
// listener's manager, as their series share names.
func Collector(ms ...*Manager) prometheus.Collector { return collector(ms) }

type collector []*Manager

// Describe implements prometheus.Collector.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descExpiry
	ch <- descLastOK
	ch <- descLastAt
}

// Collect implements prometheus.Collector.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c {
		c.collect(ch, m)
	}
}

func (c collector) collect(ch chan<- prometheus.Metric, m *Manager) {
	for _, s := range m.Status() {
		if !s.Expires.IsZero() {
			ch <- prometheus.MustNewConstMetric(descExpiry, prometheus.GaugeValue, float64(s.Expires.Unix()), s.Domain)
		}
		if s.Attempted {
			ok := 0.0
			if s.LastOK {
				ok = 1
			}
			ch <- prometheus.MustNewConstMetric(descLastOK, prometheus.GaugeValue, ok, s.Domain)
			ch <- prometheus.MustNewConstMetric(descLastAt, prometheus.GaugeValue, float64(s.LastAt.Unix()), s.Domain)
		}
	}
}
