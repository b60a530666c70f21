package grants

import (
	"context"
	"sync"

	"github.com/mcpauth/mcpauth/domain"
)

// revokeConcurrency bounds the revocations a provider's deletion sends at
// once (one per connection of a USER provider).
const revokeConcurrency = 4

// PrepareRevokeProvider reads every grant of the provider that holds tokens
// (its tenant-wide grant, or each of its connections) and returns their
// revocation at the server, to run once the change that forgets them (a
// delete, a new server URL) has committed. The revocation reports whether
// the server confirmed every one (false when none was held); failures are
// audited and never block the caller.
func (s *Service) PrepareRevokeProvider(ctx context.Context, tenant, id string) func(context.Context) bool {
	var pending []*pendingRevocation
	if rows, err := s.store.ProviderGrants(ctx, tenant, id); err == nil {
		for i := range rows {
			if rv := s.prepareRevocation(ctx, &rows[i]); rv != nil {
				pending = append(pending, rv)
			}
		}
	}
	return func(ctx context.Context) bool {
		if len(pending) == 0 {
			s.cache.drop(domain.TenantGrant(tenant, id).Key())
			return false
		}
		var (
			mu  sync.Mutex
			wg  sync.WaitGroup
			all = true
		)
		sem := make(chan struct{}, revokeConcurrency)
		for _, rv := range pending {
			s.cache.drop(domain.GrantRef{Tenant: rv.tenant, Provider: rv.id, User: rv.user}.Key())
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				ok := s.revokeAtServer(ctx, rv)
				mu.Lock()
				all = all && ok
				mu.Unlock()
			}()
		}
		wg.Wait()
		return all
	}
}
