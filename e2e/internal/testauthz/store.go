package testauthz

import (
	"context"
	"strings"
	"sync"

	"github.com/ory/fosite"
	"github.com/ory/fosite/storage"
)

// store is fosite's in-memory storage with the few hooks the harness needs:
// clients are kept in a map of its own (fosite's Clients map cannot be
// written safely while fosite reads it), tokens can be killed from outside,
// and refresh rotation can be switched off.
type store struct {
	*storage.MemoryStore

	// rotate is false when the server keeps refresh tokens across refreshes.
	rotate bool

	mu      sync.RWMutex
	clients map[string]fosite.Client
	// resolve looks up clients the map does not hold (cimd.go); nil for
	// none.
	resolve func(ctx context.Context, id string) (fosite.Client, error)
	// refreshFamilies records request IDs (token families) that already hold
	// a refresh token, so that without rotation no second one is created.
	refreshFamilies map[string]bool
	// dead holds token signatures made invalid by ExpireRefreshTokens or
	// RevokeAllTokens.
	dead       map[string]bool
	refreshSig map[string]bool
	accessSig  map[string]bool
}

func newStore(rotate bool) *store {
	return &store{
		MemoryStore:     storage.NewMemoryStore(),
		rotate:          rotate,
		clients:         make(map[string]fosite.Client),
		refreshFamilies: make(map[string]bool),
		dead:            make(map[string]bool),
		refreshSig:      make(map[string]bool),
		accessSig:       make(map[string]bool),
	}
}

func (s *store) setClient(c fosite.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[c.GetID()] = c
}

func (s *store) deleteClient(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.clients, id)
}

// GetClient implements fosite.ClientManager from the harness's own map,
// then (on a server with CIMDOptions) from Client ID Metadata Documents.
func (s *store) GetClient(ctx context.Context, id string) (fosite.Client, error) {
	s.mu.RLock()
	c, ok := s.clients[id]
	resolve := s.resolve
	s.mu.RUnlock()
	if ok {
		return c, nil
	}
	if resolve != nil && strings.HasPrefix(id, "https://") {
		return resolve(ctx, id)
	}
	return nil, fosite.ErrNotFound
}

// CreateAccessTokenSession records the signature so RevokeAllTokens can kill it.
func (s *store) CreateAccessTokenSession(ctx context.Context, signature string, req fosite.Requester) error {
	s.mu.Lock()
	s.accessSig[signature] = true
	s.mu.Unlock()
	return s.MemoryStore.CreateAccessTokenSession(ctx, signature, req)
}

// GetAccessTokenSession treats killed tokens as unknown.
func (s *store) GetAccessTokenSession(ctx context.Context, signature string, sess fosite.Session) (fosite.Requester, error) {
	s.mu.RLock()
	dead := s.dead[signature]
	s.mu.RUnlock()
	if dead {
		return nil, fosite.ErrNotFound
	}
	return s.MemoryStore.GetAccessTokenSession(ctx, signature, sess)
}

// CreateRefreshTokenSession stores a refresh token; without rotation a
// family keeps its first refresh token and later ones are never stored (the
// token endpoint also leaves them out of the response).
func (s *store) CreateRefreshTokenSession(ctx context.Context, signature, accessSignature string, req fosite.Requester) error {
	s.mu.Lock()
	if !s.rotate && s.refreshFamilies[req.GetID()] {
		s.mu.Unlock()
		return nil
	}
	s.refreshFamilies[req.GetID()] = true
	s.refreshSig[signature] = true
	s.mu.Unlock()
	return s.MemoryStore.CreateRefreshTokenSession(ctx, signature, accessSignature, req)
}

// GetRefreshTokenSession treats killed tokens as unknown (invalid_grant).
func (s *store) GetRefreshTokenSession(ctx context.Context, signature string, sess fosite.Session) (fosite.Requester, error) {
	s.mu.RLock()
	dead := s.dead[signature]
	s.mu.RUnlock()
	if dead {
		return nil, fosite.ErrNotFound
	}
	return s.MemoryStore.GetRefreshTokenSession(ctx, signature, sess)
}

// RotateRefreshToken revokes the used refresh token (rotation) or, with
// rotation off, only the family's previous access token.
func (s *store) RotateRefreshToken(ctx context.Context, requestID, signature string) error {
	if s.rotate {
		return s.MemoryStore.RotateRefreshToken(ctx, requestID, signature)
	}
	return s.MemoryStore.RevokeAccessToken(ctx, requestID)
}

// killRefresh makes every refresh token issued so far unusable.
func (s *store) killRefresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sig := range s.refreshSig {
		s.dead[sig] = true
	}
}

// killAccess makes every access token issued so far unusable, keeping the
// refresh tokens (an access token revoked early, RFC 7009 section 2.1).
func (s *store) killAccess() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sig := range s.accessSig {
		s.dead[sig] = true
	}
}

// killAll makes every access and refresh token issued so far unusable.
func (s *store) killAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sig := range s.refreshSig {
		s.dead[sig] = true
	}
	for sig := range s.accessSig {
		s.dead[sig] = true
	}
}
