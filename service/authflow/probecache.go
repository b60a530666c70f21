package authflow

import (
	"strconv"
	"sync"
	"time"

	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
)

// probeCache remembers what probing a provider's MCP server said (whether
// it asks for authorization, its resource_metadata and scope) for as long
// as discovery metadata is cached. It is keyed by the provider's version,
// so any change to the provider (its URL or headers) probes again.
// DiagnoseProvider always probes live.
type probeCache struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]probeEntry
	// discovered is when each provider (any version) was last discovered
	// on this replica, so a challenge recorded later drops what discovery
	// cached (see Service.discover).
	discovered map[string]time.Time
}

type probeEntry struct {
	res *oauthclient.ProbeResult
	at  time.Time
}

// maxProbeEntries bounds the cache; past it, it is emptied.
const maxProbeEntries = 10_000

func newProbeCache(ttl time.Duration) *probeCache {
	return &probeCache{ttl: ttl, m: map[string]probeEntry{}, discovered: map[string]time.Time{}}
}

func probeKey(row *repository.Provider) string {
	return row.TenantID + "/" + row.ID + "/" + strconv.FormatInt(row.Version, 10)
}

func (c *probeCache) get(row *repository.Provider, now time.Time) (*oauthclient.ProbeResult, bool) {
	if c == nil || c.ttl <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[probeKey(row)]
	if !ok || now.Sub(e.at) >= c.ttl {
		return nil, false
	}
	return e.res, true
}

func (c *probeCache) put(row *repository.Provider, res *oauthclient.ProbeResult, now time.Time) {
	if c == nil || c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxProbeEntries {
		c.m = map[string]probeEntry{}
	}
	c.m[probeKey(row)] = probeEntry{res: res, at: now}
}

// drop forgets the provider's probe result.
func (c *probeCache) drop(row *repository.Provider) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, probeKey(row))
}

// discoveredBefore reports whether the provider was last discovered on this
// replica before t (or never), and records now as its discovery time.
func (c *probeCache) discoveredBefore(row *repository.Provider, t, now time.Time) bool {
	if c == nil {
		return true
	}
	k := row.TenantID + "/" + row.ID
	c.mu.Lock()
	defer c.mu.Unlock()
	last, ok := c.discovered[k]
	if len(c.discovered) >= maxProbeEntries {
		c.discovered = map[string]time.Time{}
	}
	c.discovered[k] = now
	return !ok || last.Before(t)
}
