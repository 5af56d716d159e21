package proxy

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// authCache keeps forward auth's 2xx answers (the headers they copied) for
// a TTL, keyed on the request's credentials. It is sharded so that
// requests do not queue on one lock, and bounded: a full shard first
// drops what expired, then entries at random.
type authCache struct {
	ttl    time.Duration
	seed   maphash.Seed
	shards [authCacheShards]authShard
}

const (
	authCacheShards = 16
	// authCacheEntries bounds the cache of one route.
	authCacheEntries = 16384
	authShardEntries = authCacheEntries / authCacheShards
)

type authShard struct {
	mu sync.Mutex
	m  map[string]authEntry
}

type authEntry struct {
	vals    []header
	expires time.Time
}

func newAuthCache(ttl time.Duration) *authCache {
	c := &authCache{ttl: ttl, seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = map[string]authEntry{}
	}
	return c
}

func (c *authCache) shard(key string) *authShard {
	return &c.shards[maphash.String(c.seed, key)%authCacheShards]
}

func (c *authCache) get(key string) ([]header, bool) {
	sh := c.shard(key)
	sh.mu.Lock()
	e, ok := sh.m[key]
	sh.mu.Unlock()
	if !ok || time.Now().After(e.expires) {
		return nil, false
	}
	return e.vals, true
}

func (c *authCache) put(key string, vals []header) {
	sh := c.shard(key)
	now := time.Now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if len(sh.m) >= authShardEntries {
		// One sweep makes room for a quarter of the shard, so that a
		// full cache costs a sweep per quarter, not per answer.
		for k, e := range sh.m {
			if now.After(e.expires) {
				delete(sh.m, k)
			}
		}
		for k := range sh.m { // random order: drops entries at random
			if len(sh.m) <= authShardEntries*3/4 {
				break
			}
			delete(sh.m, k)
		}
	}
	sh.m[key] = authEntry{vals: vals, expires: now.Add(c.ttl)}
}

// len counts the cached answers.
func (c *authCache) len() int {
	n := 0
	for i := range c.shards {
		c.shards[i].mu.Lock()
		n += len(c.shards[i].m)
		c.shards[i].mu.Unlock()
	}
	return n
}

// cacheKey is what an auth answer is cached on: the request's credentials,
// Authorization, Cookie, Sec-WebSocket-Protocol (where browser clients put
// tokens) and the query string (where others do). A request with none of
// them is not cached: "" is no key.
func cacheKey(req *fasthttp.Request) string {
	h := &req.Header
	auth, cookie := joinedHeader(h, "Authorization"), h.Peek("Cookie")
	proto, query := joinedHeader(h, "Sec-WebSocket-Protocol"), req.URI().QueryString()
	if len(auth)+len(cookie)+len(proto)+len(query) == 0 {
		return ""
	}
	b := make([]byte, 0, len(auth)+len(cookie)+len(proto)+len(query)+3)
	b = append(append(b, auth...), 0)
	b = append(append(b, cookie...), 0)
	b = append(append(b, proto...), 0)
	return string(append(b, query...))
}
