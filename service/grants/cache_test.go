package grants

import (
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/vault"
)

func TestTokenCache(t *testing.T) {
	t.Parallel()
	cred, held := &repository.Credential{TenantID: tnt, ProviderID: pid}, &vault.Held{}
	tests := []struct {
		name  string
		cache *tokenCache
		age   time.Duration
		want  bool
	}{
		{"nil cache keeps nothing", nil, 0, false},
		{"zero ttl keeps nothing", newTokenCache(0), 0, false},
		{"kept within its ttl", newTokenCache(time.Second), time.Second - time.Nanosecond, true},
		{"gone at its ttl", newTokenCache(time.Second), time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.cache.put("k", cred, held, t0, tt.cache.now())
			e, ok := tt.cache.get("k", t0.Add(tt.age))
			if ok != tt.want || (ok && (e.cred != cred || e.held != held)) {
				t.Errorf("get = %+v, %v; want %v", e, ok, tt.want)
			}
			tt.cache.drop("k")
			if _, ok := tt.cache.get("k", t0); ok {
				t.Error("dropped entry still served")
			}
		})
	}
	t.Run("emptied when full", func(t *testing.T) {
		t.Parallel()
		c := newTokenCache(time.Hour)
		for i := range maxCachedCreds {
			c.put(strconv.Itoa(i), cred, held, t0, c.now())
		}
		if _, ok := c.get("0", t0); !ok {
			t.Fatal("entry lost before the cache was full")
		}
		c.put("new", cred, held, t0, c.now())
		_, oldKept := c.get("0", t0)
		_, newKept := c.get("new", t0)
		if oldKept || !newKept || len(c.m) != 1 {
			t.Errorf("after overflow: old kept %v, new kept %v, %d entries", oldKept, newKept, len(c.m))
		}
	})
}

// A Get on this replica that runs between a write's cache drop and the
// write itself caches the credential the write is about to replace. The
// refresh path drops the entry again after its write for this reason; the
// other writes must too, or the replaced token is served for up to
// CacheTTL after the write returned.
func TestCacheNotRefilledDuringWrite(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		arm        func(hs *hookStore, concurrentGet func())
		write      func(e *env, svc *Service) error
		wantKind   apperr.Kind
		wantReason string
	}{
		{name: "Revoke",
			arm: func(hs *hookStore, get func()) { hs.onDelete = get },
			write: func(e *env, svc *Service) error {
				_, err := svc.Revoke(e.ctx, domain.TenantGrant(tnt, pid))
				return err
			},
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonNotAuthorized},
		{name: "MarkReauth",
			arm: func(hs *hookStore, get func()) {
				hs.onPut = func(*repository.Credential, int64) error { get(); return nil }
			},
			write: func(e *env, svc *Service) error {
				err := svc.MarkReauth(e.ctx, domain.TenantGrant(tnt, pid), domain.ReasonMCPServerRejectedToken, e.cred(tnt, pid).Generation)
				if apperr.KindOf(err) == apperr.KindFailedPrecondition {
					return nil
				}
				return err
			},
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonReauthRequired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newCachedEnv(t)
			e.authorize(grantSpec{})
			hs := &hookStore{Store: e.store}
			svc := e.service(e.svc.cfg, hs, e.locks)
			tt.arm(hs, func() { _, _ = svc.Get(e.ctx, domain.TenantGrant(tnt, pid)) })
			if err := tt.write(e, svc); err != nil {
				t.Fatal(err)
			}
			tok, err := svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
			if err == nil {
				t.Fatalf("Get after %s served %q from the cache", tt.name, tok.AccessToken.Reveal())
			}
			wantErr(t, err, tt.wantKind, tt.wantReason)
		})
	}
}

// TestConcurrentMissesShareOneRead: callers that miss the cache at the same
// time (every caller of a busy grant, whenever its entry ends) share one
// database read and decryption.
func TestConcurrentMissesShareOneRead(t *testing.T) {
	t.Parallel()
	e := newCachedEnv(t)
	s := e.authorize(grantSpec{})
	hs := &hookStore{Store: e.store}
	svc := e.service(e.svc.cfg, hs, e.locks)
	var reads atomic.Int32
	entered, release := make(chan struct{}), make(chan struct{})
	hs.onGet = func() {
		if reads.Add(1) == 1 {
			close(entered)
			<-release
		}
	}
	const callers = 8
	errs := make(chan error, callers)
	get := func() {
		tok, err := svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
		if err == nil && tok.AccessToken != s.tokens.AccessToken {
			err = errors.New("another token served")
		}
		errs <- err
	}
	go get()
	<-entered
	for range callers - 1 {
		go get()
	}
	// Not a timing assertion: the wait only lets the other callers reach
	// the shared read before it returns.
	time.Sleep(300 * time.Millisecond)
	close(release)
	for range callers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("%d credential reads for %d concurrent misses, want 1", n, callers)
	}
}

// TestReadBeforeDropNotCached: a read that began before a drop (this
// process changed the credential meanwhile) is not cached.
func TestReadBeforeDropNotCached(t *testing.T) {
	t.Parallel()
	c := newTokenCache(time.Hour)
	t0 := time.Unix(1000, 0)
	before := c.now()
	c.drop("other")
	c.put("k", &repository.Credential{}, &vault.Held{}, t0, before)
	if _, ok := c.get("k", t0); ok {
		t.Fatal("a read that began before a drop was cached")
	}
	if c.shareKey("k", before) == c.shareKey("k", c.now()) {
		t.Fatal("callers after a drop would join a read that began before it")
	}
	c.put("k", &repository.Credential{}, &vault.Held{}, t0, c.now())
	if _, ok := c.get("k", t0); !ok {
		t.Fatal("a read after the drop was not cached")
	}
}
