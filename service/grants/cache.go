package grants

import (
	"strconv"
	"sync"
	"sync/atomic"
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
//
// epoch counts drops: a credential read that began before a drop is neither
// cached nor shared with callers that arrive after it (see Service.Get), so
// a change made by this process is never hidden by a read that began
// before it.
type tokenCache struct {
	ttl   time.Duration
	mu    sync.RWMutex
	m     map[string]cachedCred
	epoch atomic.Uint64
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

// now returns the current epoch, to pass to put after a read.
func (c *tokenCache) now() uint64 {
	if c == nil {
		return 0
	}
	return c.epoch.Load()
}

// put caches a credential read that began at epoch; it is dropped instead
// if anything was dropped since.
func (c *tokenCache) put(key string, cred *repository.Credential, h *vault.Held, now time.Time, epoch uint64) {
	if c == nil || c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	if c.epoch.Load() != epoch {
		c.mu.Unlock()
		return
	}
	if len(c.m) >= maxCachedCreds {
		c.m = map[string]cachedCred{}
	}
	c.m[key] = cachedCred{cred: cred, held: h, at: now}
	c.mu.Unlock()
}

// shareKey is the key under which concurrent reads of key share one read:
// callers that arrive after a drop start a new one.
func (c *tokenCache) shareKey(key string, epoch uint64) string {
	return key + "#" + strconv.FormatUint(epoch, 10)
}

func (c *tokenCache) drop(key string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.epoch.Add(1)
	delete(c.m, key)
	c.mu.Unlock()
}
