package main

import (
	"context"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The status page charts the last minutes: live sessions, messages and
// handshakes per second, and close codes. The admin server samples the
// proxy's own metrics every historyInterval into a ring of
// historySamples, so a page opened now has the minutes before it, and
// GET /status/history serves the ring with a sample taken at the request.

const (
	historyInterval = 2 * time.Second
	historySamples  = 150 // five minutes
)

// sample is the counters at one moment. Rates are the page's work: the
// difference of two samples over their interval.
type sample struct {
	T          int64   `json:"t"` // Unix milliseconds
	Sessions   float64 `json:"sessions"`
	Messages   float64 `json:"messages"`   // data messages relayed, both directions
	Handshakes float64 `json:"handshakes"` // upgrade requests, every outcome
	Refused    float64 `json:"refused"`    // upgrade requests answered other than 101
}

// history is the ring of samples; safe for concurrent use.
type history struct {
	metrics prometheus.Gatherer // the proxy's metrics only

	mu      sync.Mutex
	samples []sample
}

func newHistory(c prometheus.Collector) *history {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	return &history{metrics: reg}
}

// take reads the counters now, with the close codes so far.
func (h *history) take() (sample, map[string]float64) {
	s := sample{T: time.Now().UnixMilli()}
	codes := map[string]float64{}
	mfs, _ := h.metrics.Gather() // a partial gather still has its families
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			switch mf.GetName() {
			case "wsproxy_route_sessions_live":
				s.Sessions += v
			case "wsproxy_messages_total":
				s.Messages += v
			case "wsproxy_handshakes_total":
				s.Handshakes += v
				if label(m, "outcome") != "ok" {
					s.Refused += v
				}
			case "wsproxy_session_closes_total":
				codes[label(m, "code")] += v
			}
		}
	}
	return s, codes
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// record appends a sample, dropping the oldest beyond historySamples.
func (h *history) record(s sample) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.samples) == historySamples {
		copy(h.samples, h.samples[1:])
		h.samples = h.samples[:historySamples-1]
	}
	h.samples = append(h.samples, s)
}

// sampleLoop records a sample every historyInterval until ctx ends.
func (h *history) sampleLoop(ctx context.Context) {
	s, _ := h.take()
	h.record(s)
	t := time.NewTicker(historyInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s, _ := h.take()
			h.record(s)
		}
	}
}

// historyReport is the document of GET /status/history.
type historyReport struct {
	IntervalSeconds float64  `json:"interval_seconds"`
	Samples         []sample `json:"samples"` // oldest first; the last one is now
	// CloseCodes are the sessions ended so far by first Close code.
	CloseCodes []closeCount `json:"close_codes"`
}

type closeCount struct {
	Code  string  `json:"code"`
	Count float64 `json:"count"`
}

func (h *history) report() historyReport {
	now, codes := h.take()
	h.mu.Lock()
	samples := append(make([]sample, 0, len(h.samples)+1), h.samples...)
	h.mu.Unlock()
	samples = append(samples, now)
	r := historyReport{IntervalSeconds: historyInterval.Seconds(), Samples: samples, CloseCodes: []closeCount{}}
	for code, n := range codes {
		if n > 0 {
			r.CloseCodes = append(r.CloseCodes, closeCount{code, n})
		}
	}
	sort.Slice(r.CloseCodes, func(i, j int) bool { return r.CloseCodes[i].Code < r.CloseCodes[j].Code })
	return r
}

// statusHistory serves the samples the status page charts.
func (a *adminServer) statusHistory(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, a.history.report())
}
