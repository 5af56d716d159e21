package proxy

import (
	"context"
	"sync"
)

// registry tracks live sessions. fasthttp forgets hijacked connections, so
// reloads, drains and shutdown find the sessions here.
type registry struct {
	mu    sync.Mutex
	m     map[*session]struct{}
	empty chan struct{} // closed while the registry is empty
}

func (r *registry) init() {
	r.m = make(map[*session]struct{})
	r.empty = make(chan struct{})
	close(r.empty)
}

// add registers s and returns the function that unregisters it.
func (r *registry) add(s *session) (remove func()) {
	r.mu.Lock()
	if len(r.m) == 0 {
		r.empty = make(chan struct{})
	}
	r.m[s] = struct{}{}
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		if _, ok := r.m[s]; ok {
			delete(r.m, s)
			if len(r.m) == 0 {
				close(r.empty)
			}
		}
		r.mu.Unlock()
	}
}

func (r *registry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

// each calls f for every live session, outside the lock.
func (r *registry) each(f func(*session)) {
	r.mu.Lock()
	list := make([]*session, 0, len(r.m))
	for s := range r.m {
		list = append(list, s)
	}
	r.mu.Unlock()
	for _, s := range list {
		f(s)
	}
}

// wait returns when no session is left or ctx is done.
func (r *registry) wait(ctx context.Context) error {
	for {
		r.mu.Lock()
		ch := r.empty
		r.mu.Unlock()
		select {
		case <-ch:
			r.mu.Lock()
			n := len(r.m)
			r.mu.Unlock()
			if n == 0 {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
