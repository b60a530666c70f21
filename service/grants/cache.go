package grants

import (
	"sync"
	"time"

	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/vault"
)

// tokenCache keeps opened credentials for a very short time, so a burst of
// token reads for one provider costs one database read and one decryption
// instead of one each. Entries are dropped locally whenever this process
// changes the credential (refresh, re-authorization, revocation). Another
// replica's change is seen within ttl at most; an entry is never served
// past its token's refresh margin, so the cache cannot hand out an expired
// or due token.
type tokenCache struct {
	ttl time.Duration
	mu  sync.RWMutex
	m   map[string]cachedCred
}

type cachedCred struct {
	cred *repository.Credential
	held *vault.Held
	at   time.Time
}

// maxCachedCreds bounds the cache; past it, the cache is emptied (cheap,
// and refilled by the next reads).
const maxCachedCreds = 50_000

func newTokenCache(ttl time.Duration) *tokenCache {
	return &tokenCache{ttl: ttl, m: map[string]cachedCred{}}
}

func (c *tokenCache) get(key string, now time.Time) (cachedCred, bool) {
	if c == nil || c.ttl <= 0 {
		return cachedCred{}, false
	}
	c.mu.RLock()
	e, ok := c.m[key]
	c.mu.RUnlock()
	if !ok || now.Sub(e.at) >= c.ttl {
		return cachedCred{}, false
	}
	return e, true
}

func (c *tokenCache) put(key string, cred *repository.Credential, h *vault.Held, now time.Time) {
	if c == nil || c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	if len(c.m) >= maxCachedCreds {
		c.m = map[string]cachedCred{}
	}
	c.m[key] = cachedCred{cred: cred, held: h, at: now}
	c.mu.Unlock()
}

func (c *tokenCache) drop(key string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.m, key)
	c.mu.Unlock()
}
