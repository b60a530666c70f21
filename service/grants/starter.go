package grants

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
)

// Starter starts a browser authorization of one grant for its user, so an
// answer that needs a person (no connection yet, more scopes) can carry a
// fresh authorization URL. *authflow.Service implements it; it is wired
// after New with SetStarter, as the authorization flow needs this service
// to store what it obtains.
type Starter interface {
	StartFor(ctx context.Context, ref domain.GrantRef, scopes []string) (url string, expires time.Time, err error)
}

// starterBox holds the optional Starter (set once at wiring).
type starterBox struct{ atomic.Pointer[Starter] }

// SetStarter lets NOT_AUTHORIZED answers about a user's connection carry a
// fresh authorization URL for that user.
func (s *Service) SetStarter(st Starter) { s.starter.Store(&st) }

// AttachAuthorizationURL adds a fresh authorization URL for ref's user (and
// when it ends) to e, when there is a user, st can start flows and the
// caller in ctx may start authorizations on the tenant; otherwise e only
// says what to call. A failed start leaves e as it is: the answer is about
// the grant, not about starting.
func AttachAuthorizationURL(ctx context.Context, st Starter, ref domain.GrantRef, scopes []string, e *apperr.Error) {
	if st == nil || ref.User == "" {
		return
	}
	id, ok := caller.FromContext(ctx)
	if !ok || !id.Allows(ref.Tenant, caller.Authorize) {
		return
	}
	url, expires, err := st.StartFor(ctx, ref, scopes)
	if err != nil || url == "" {
		return
	}
	e.WithMeta("authorization_url", url).WithMeta("authorization_expire_time", expires.UTC().Format(time.RFC3339))
}

// startFor is the Starter set with SetStarter, or nil.
func (s *Service) startFor() Starter {
	if p := s.starter.Load(); p != nil {
		return *p
	}
	return nil
}
