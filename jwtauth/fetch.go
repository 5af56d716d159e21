package jwtauth

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Run fetches the key set from the URL now and every Refresh until ctx is
// done. A Verifier with fixed keys returns at once.
func (v *Verifier) Run(ctx context.Context) {
	if v.cfg.URL == "" {
		return
	}
	t := time.NewTicker(v.cfg.Refresh)
	defer t.Stop()
	for {
		v.fetch(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Fetches reports how many fetches of the URL have finished, good or not.
func (v *Verifier) Fetches() int64 { return v.fetches.Load() }

// Ready reports whether the Verifier has keys.
func (v *Verifier) Ready() bool { return v.keys.Load() != nil }

// refetch fetches the key set again for a token with an unknown key id,
// unless the last fetch began less than MinRefetch ago. It reports
// whether it fetched. Concurrent callers wait for one fetch.
func (v *Verifier) refetch(ctx context.Context) bool {
	if time.Since(time.Unix(0, v.lastFetch.Load())) < v.cfg.MinRefetch {
		return false
	}
	return v.fetch(ctx)
}

// fetch gets and publishes the key set; on failure the last good set
// stays. It reports whether it fetched (false when a fetch that began
// within MinRefetch happened meanwhile).
func (v *Verifier) fetch(ctx context.Context) bool {
	start := time.Now()
	v.fetchMu.Lock()
	defer v.fetchMu.Unlock()
	if last := v.lastFetch.Load(); last > start.UnixNano() {
		return true // another fetch began while this one waited: its set is the news
	}
	v.lastFetch.Store(time.Now().UnixNano())
	defer v.fetches.Add(1)
	ks, err := v.get(ctx)
	if err != nil {
		v.cfg.Log.Warn("jwks fetch failed; the last good keys stay", zap.String("url", v.cfg.URL), zap.Error(err))
		return true
	}
	v.keys.Store(ks)
	return true
}

func (v *Verifier) get(ctx context.Context) (*Keys, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.cfg.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := v.cfg.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jwtauth: %s answered %s", v.cfg.URL, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("jwtauth: %s: key set larger than %d bytes", v.cfg.URL, maxJWKSBytes)
	}
	return ParseJWKS(data)
}
