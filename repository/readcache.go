package repository

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gorm.io/gorm"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// CachedReads serves the four reads of StartAuthorization and GetProvider
// (a provider with its grant status, its recorded challenge, its credential
// and a client registration) from memory for at most a short TTL, so a
// burst of starts or reads of one provider costs one database read each
// instead of one per call. Only callers that can live with that staleness
// use it; every other read (refresh under its lock, updates with their
// version check, the callback) goes to the database.
//
// Staleness is bounded two ways:
//   - in this process, every write statement to the tables these reads
//     come from (any method of the Store, recognised by a GORM callback on
//     the statement's table) and every committed transaction empties the
//     cache before the write method returns, and a read that began before
//     such a change is not cached (the epoch check in put);
//   - across replicas, Invalidate is called by the application's broadcast
//     (a Redis message published after each local change, see OnChange),
//     and an entry is never served after the TTL whatever happens to that
//     message.
//
// Not-found answers are cached too (no challenge, no credential), as they
// are the common answers of these reads.
//
// The cache holds at most maxCachedReads entries. When full, it drops what
// can no longer be served (an earlier epoch, past the TTL) and what was not
// read since the previous such pass, keeping the entries in use (CLOCK's
// second chance), so a sweep over many providers does not take the busy
// ones out with it.
type CachedReads struct {
	store *Store
	ttl   time.Duration
	now   func() time.Time
	max   int

	mu sync.RWMutex
	m  map[cacheKey]*cachedRead
}

// cacheKey names one cached read: its kind, the tenant, the provider, the
// grant's user (challenges and credentials; empty for the tenant-wide
// grant) and the issuer (client registrations).
type cacheKey struct {
	kind                     byte
	tenant, id, user, issuer string
}

type cachedRead struct {
	v     any // *Provider, *Challenge, *Credential or *ClientRegistration
	err   error
	at    time.Time
	epoch uint64
	// used says the entry was served since it was stored or since the
	// last eviction pass. Hits set it only when clear, so a hot entry's
	// cache line is written once per pass, not once per read.
	used atomic.Bool
}

// maxCachedReads bounds the cache (see evict).
const maxCachedReads = 50_000

// cachedTables are the tables the cached reads come from: a write to any of
// them empties the cache.
var cachedTables = []string{"providers", "credentials", "mcp_challenges", "client_registrations"}

// NewCachedReads returns the cached reads of s with entries kept for ttl
// (0 or less: every read goes to the database).
func (s *Store) NewCachedReads(ttl time.Duration) *CachedReads {
	return &CachedReads{store: s, ttl: ttl, now: time.Now, max: maxCachedReads, m: map[cacheKey]*cachedRead{}}
}

// GetProvider is Store.GetProvider, cached. The caller must not modify the
// returned row.
func (c *CachedReads) GetProvider(ctx context.Context, tenant, id string) (*Provider, error) {
	return cachedGet(c, cacheKey{kind: 'p', tenant: tenant, id: id}, func() (*Provider, error) { return c.store.GetProvider(ctx, tenant, id) })
}

// GetChallenge is Store.GetChallenge, cached per grant (a user's grant
// apart from the tenant-wide one).
func (c *CachedReads) GetChallenge(ctx context.Context, g domain.GrantRef) (*Challenge, error) {
	return cachedGet(c, grantKey('c', g), func() (*Challenge, error) { return c.store.GetChallenge(ctx, g) })
}

// GetCredential is Store.GetCredential, cached per grant (a user's grant
// apart from the tenant-wide one).
func (c *CachedReads) GetCredential(ctx context.Context, g domain.GrantRef) (*Credential, error) {
	return cachedGet(c, grantKey('g', g), func() (*Credential, error) { return c.store.GetCredential(ctx, g) })
}

// grantKey is the cache key of a read of kind about grant g.
func grantKey(kind byte, g domain.GrantRef) cacheKey {
	return cacheKey{kind: kind, tenant: g.Tenant, id: g.Provider, user: g.User}
}

// GetClientRegistration is Store.GetClientRegistration, cached.
func (c *CachedReads) GetClientRegistration(ctx context.Context, tenant, providerID, issuer string) (*ClientRegistration, error) {
	return cachedGet(c, cacheKey{kind: 'r', tenant: tenant, id: providerID, issuer: issuer}, func() (*ClientRegistration, error) {
		return c.store.GetClientRegistration(ctx, tenant, providerID, issuer)
	})
}

// Len is the number of entries held, stale ones included (for tests and
// diagnostics).
func (c *CachedReads) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// Invalidate empties the cache (another replica changed something).
func (c *CachedReads) Invalidate() {
	c.store.readEpoch.Add(1)
}

func cachedGet[T any](c *CachedReads, k cacheKey, read func() (*T, error)) (*T, error) {
	if c.ttl <= 0 {
		return read()
	}
	now := c.now()
	epoch := c.store.readEpoch.Load()
	c.mu.RLock()
	e, ok := c.m[k]
	c.mu.RUnlock()
	if ok && e.epoch == epoch && now.Sub(e.at) < c.ttl {
		if !e.used.Load() {
			e.used.Store(true)
		}
		if e.err != nil {
			return nil, e.err
		}
		return e.v.(*T), nil
	}
	v, err := read()
	if err != nil && apperr.KindOf(err) != apperr.KindNotFound {
		return nil, err
	}
	c.mu.Lock()
	if c.store.readEpoch.Load() == epoch {
		if _, replaces := c.m[k]; !replaces && len(c.m) >= c.max {
			c.evict(epoch, now)
		}
		c.m[k] = &cachedRead{v: v, err: err, at: now, epoch: epoch}
	}
	c.mu.Unlock()
	return v, err
}

// evict makes room in the full cache (c.mu held for writing). It drops the
// entries that can no longer be served (an epoch before epoch, or past the
// TTL at now) and those not read since the previous pass, and clears the
// read mark of the others: an entry survives a pass only if it was read
// since the one before. When that frees less than a quarter of the cache
// (nearly everything is hot), arbitrary entries go until a quarter is free
// (Go's map order is randomised). Each pass visits every entry once and
// frees at least a quarter, so its cost spread over the inserts it makes
// room for is constant; a hit costs one more atomic load than before.
func (c *CachedReads) evict(epoch uint64, now time.Time) {
	for k, e := range c.m {
		if e.epoch != epoch || now.Sub(e.at) >= c.ttl || !e.used.Load() {
			delete(c.m, k)
			continue
		}
		e.used.Store(false)
	}
	keep := c.max - max(c.max/4, 1)
	for k := range c.m {
		if len(c.m) <= keep {
			break
		}
		delete(c.m, k)
	}
}

// readEpochState is the Store's side of the cached reads: the epoch every
// local change advances, and the hook told about it.
type readEpochState struct {
	readEpoch  atomic.Uint64
	changeHook atomic.Pointer[func()]
	// dirty holds the connections of open transactions that wrote a
	// cached table (see transaction).
	dirty sync.Map
}

// OnChange registers f to be called after every local change to the tables
// the cached reads come from (after the statement, and again after the
// transaction that made it commits), so that other replicas can be told to
// drop theirs. f must not block.
func (s *Store) OnChange(f func()) { s.changeHook.Store(&f) }

// changed advances the epoch and tells the hook.
func (s *Store) changed() {
	s.readEpoch.Add(1)
	if f := s.changeHook.Load(); f != nil {
		(*f)()
	}
}

// watchWrites registers the GORM callbacks that call changed after every
// write statement to a cached table, and marks the transaction so that
// transaction commits call it again.
func (s *Store) watchWrites() error {
	after := func(db *gorm.DB) {
		if db.Error != nil || db.Statement == nil {
			return
		}
		if !writesCachedTable(db.Statement.Table, db.Statement.SQL.String()) {
			return
		}
		if _, inTx := db.Statement.ConnPool.(gorm.TxCommitter); inTx {
			s.dirty.Store(db.Statement.ConnPool, struct{}{})
		}
		s.changed()
	}
	cb := s.db.Callback()
	if err := cb.Create().After("gorm:create").Register("mcpauth:cached_reads", after); err != nil {
		return err
	}
	if err := cb.Update().After("gorm:update").Register("mcpauth:cached_reads", after); err != nil {
		return err
	}
	if err := cb.Delete().After("gorm:delete").Register("mcpauth:cached_reads", after); err != nil {
		return err
	}
	return cb.Raw().After("gorm:raw").Register("mcpauth:cached_reads", after)
}

// writesCachedTable reports whether a statement on table (empty for raw
// SQL) with text sql may change a cached table.
func writesCachedTable(table, sql string) bool {
	if table != "" {
		for _, t := range cachedTables {
			if table == t {
				return true
			}
		}
		return false
	}
	for _, t := range cachedTables {
		if strings.Contains(sql, t) {
			return true
		}
	}
	return false
}

// transaction is s.db.Transaction that also advances the cached reads'
// epoch after the commit (or rollback) of a transaction that wrote a cached
// table: a read that began between the statement and the commit (and saw
// the old row) is then neither cached nor served.
func (s *Store) transaction(ctx context.Context, fn func(tx *gorm.DB) error) error {
	var pool gorm.ConnPool
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		pool = tx.Statement.ConnPool
		return fn(tx)
	})
	if pool != nil {
		if _, wrote := s.dirty.LoadAndDelete(pool); wrote {
			s.changed()
		}
	}
	return err
}
