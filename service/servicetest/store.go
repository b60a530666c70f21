// Package servicetest holds working in-memory stand-ins for what the use
// cases consume, for their unit tests: a Store with the repository's rules
// (tenant scope, uniqueness, versions, generation compare-and-swap, grant
// status), a stepping Clock, and an audit Recorder that keeps events. They
// are real implementations, not call recorders: tests assert on state.
package servicetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
)

// ErrInjected is the cause of failures injected with Store.FailOn.
var ErrInjected = errors.New("servicetest: injected failure")

// Store is an in-memory repository. The zero value is not usable: call
// NewStore.
type Store struct {
	mu        sync.Mutex
	now       func() time.Time
	providers map[string]repository.Provider
	creds     map[string]repository.Credential
	regs      map[string]repository.ClientRegistration
	tools     map[string]repository.ToolList
	chals     map[string]repository.Challenge
	audit     []repository.AuditEvent
	leases    map[string]repository.RefreshLease
	fail      map[string]error
	calls     map[string]int
}

// NewStore returns an empty store whose timestamps come from now (time.Now
// when nil).
func NewStore(now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{now: now, providers: map[string]repository.Provider{}, creds: map[string]repository.Credential{},
		regs: map[string]repository.ClientRegistration{}, tools: map[string]repository.ToolList{}, leases: map[string]repository.RefreshLease{},
		chals: map[string]repository.Challenge{}, fail: map[string]error{},
		calls: map[string]int{}}
}

// FailOn makes every later call of the named method (for example
// "PutCredential") return err; a nil err clears it.
func (s *Store) FailOn(method string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.fail, method)
		return
	}
	s.fail[method] = err
}

// Calls reports how often the named method was called.
func (s *Store) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// enter counts a call, checks the tenant scope and returns an injected
// failure. s.mu is held.
func (s *Store) enter(method, tenant string) error {
	s.calls[method]++
	if err := s.fail[method]; err != nil {
		return err
	}
	if tenant == "" {
		return apperr.Internal(repository.ErrNoTenant, "tenant scope missing")
	}
	return nil
}

func key(parts ...string) string { return strings.Join(parts, "\x00") }

// gkey is the map key of a per-grant row: the provider's key for the
// tenant-wide grant, with the user appended for a connection.
func gkey(g domain.GrantRef) string {
	if g.User == "" {
		return key(g.Tenant, g.Provider)
	}
	return key(g.Tenant, g.Provider, g.User)
}

// ofProvider reports whether k is the key of a per-grant row of the
// provider with key pk.
func ofProvider(k, pk string) bool { return k == pk || strings.HasPrefix(k, pk+"\x00") }

// CreateProvider inserts p with the repository's uniqueness rules.
func (s *Store) CreateProvider(_ context.Context, p *repository.Provider, events ...*repository.AuditEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("CreateProvider", p.TenantID); err != nil {
		return err
	}
	if err := s.conflict(p, true); err != nil {
		return err
	}
	row := *p
	row.Version = 1
	row.CreatedAt, row.UpdatedAt = s.now(), s.now()
	row.GrantStatus, row.GrantReason, row.GrantGeneration = 0, "", 0
	s.providers[key(p.TenantID, p.ID)] = row
	*p = row
	s.appendEvents(events)
	return nil
}

func (s *Store) conflict(p *repository.Provider, create bool) error {
	for _, r := range s.providers {
		if r.TenantID != p.TenantID || (!create && r.ID == p.ID) {
			continue
		}
		var rule repository.Unique
		switch {
		case create && r.ID == p.ID:
			rule = repository.UniqueID
		case lowerASCII(r.DisplayName) == lowerASCII(p.DisplayName):
			rule = repository.UniqueDisplayName
		case lowerASCII(r.ServerIdentifier) == lowerASCII(p.ServerIdentifier):
			rule = repository.UniqueServerIdentifier
		case r.URLHash == p.URLHash:
			rule = repository.UniqueServerURL
		default:
			continue
		}
		c := &repository.ConflictError{Rule: rule}
		return &apperr.Error{Kind: apperr.KindAlreadyExists, Reason: domain.ReasonAlreadyExists, Message: c.Error(), Err: c}
	}
	return nil
}

// lowerASCII folds s as SQLite's lower() does (ASCII letters only), the
// case rule every backend of the repository applies to display names and
// server identifiers.
func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// withGrant fills the grant fields of a provider row as the repository's
// join does. s.mu is held.
func (s *Store) withGrant(p repository.Provider) *repository.Provider {
	if c, ok := s.creds[key(p.TenantID, p.ID)]; ok {
		p.GrantStatus, p.GrantReason, p.GrantGeneration = c.Status, c.Reason, c.Generation
	} else {
		p.GrantStatus, p.GrantReason, p.GrantGeneration = 0, "", 0
	}
	return &p
}

// GetProvider returns the provider with its grant status.
func (s *Store) GetProvider(_ context.Context, tenant, id string) (*repository.Provider, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("GetProvider", tenant); err != nil {
		return nil, err
	}
	p, ok := s.providers[key(tenant, id)]
	if !ok {
		return nil, apperr.NotFound("provider")
	}
	return s.withGrant(p), nil
}

// GetProviderPublic returns a provider's plaintext columns.
func (s *Store) GetProviderPublic(_ context.Context, tenant, id string) (*repository.ProviderPublic, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("GetProviderPublic", tenant); err != nil {
		return nil, err
	}
	p, ok := s.providers[key(tenant, id)]
	if !ok {
		return nil, apperr.NotFound("provider")
	}
	return &repository.ProviderPublic{ClientID: p.ClientID, CredentialKind: p.CredentialKind, CredentialConfig: p.CredentialConfig}, nil
}

// ListProviders pages by id.
func (s *Store) ListProviders(_ context.Context, tenant, afterID string, limit int) ([]repository.Provider, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("ListProviders", tenant); err != nil {
		return nil, err
	}
	var out []repository.Provider
	for _, p := range s.providers {
		if p.TenantID == tenant && p.ID > afterID {
			out = append(out, *s.withGrant(p))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// FindProviderByURLHash returns the tenant's provider with one of hashes.
func (s *Store) FindProviderByURLHash(_ context.Context, tenant string, hashes []string) (*repository.Provider, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("FindProviderByURLHash", tenant); err != nil {
		return nil, err
	}
	for _, p := range s.providers {
		if p.TenantID == tenant && slices.Contains(hashes, p.URLHash) {
			return s.withGrant(p), nil
		}
	}
	return nil, nil
}

// UpdateProvider replaces the row when its version matches.
func (s *Store) UpdateProvider(ctx context.Context, p *repository.Provider, expectedVersion int64, events ...*repository.AuditEvent) error {
	return s.update("UpdateProvider", p, expectedVersion, false, events)
}

// UpdateProviderResettingCredentials also drops the grant, registrations and
// tool list.
func (s *Store) UpdateProviderResettingCredentials(ctx context.Context, p *repository.Provider, expectedVersion int64, events ...*repository.AuditEvent) error {
	return s.update("UpdateProviderResettingCredentials", p, expectedVersion, true, events)
}

func (s *Store) update(method string, p *repository.Provider, expectedVersion int64, reset bool, events []*repository.AuditEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(method, p.TenantID); err != nil {
		return err
	}
	cur, ok := s.providers[key(p.TenantID, p.ID)]
	if !ok {
		return apperr.NotFound("provider")
	}
	if cur.Version != expectedVersion {
		return apperr.Aborted("provider was changed concurrently; re-read and retry")
	}
	if err := s.conflict(p, false); err != nil {
		return err
	}
	row := *p
	row.Version = expectedVersion + 1
	row.CreatedAt, row.UpdatedAt = cur.CreatedAt, s.now()
	row.CredGeneration = cur.CredGeneration
	s.providers[key(p.TenantID, p.ID)] = row
	if p.GrantScope.PerUser() && !p.SharedToolList {
		// As the repository: a USER provider keeps a list for all its
		// users only while it is declared shared.
		delete(s.tools, gkey(domain.TenantGrant(p.TenantID, p.ID)))
	}
	if reset {
		s.dropDependents(p.TenantID, p.ID)
	}
	p.Version, p.UpdatedAt = row.Version, row.UpdatedAt
	s.appendEvents(events)
	return nil
}

func (s *Store) dropDependents(tenant, id string) {
	pk := key(tenant, id)
	maps.DeleteFunc(s.creds, func(k string, _ repository.Credential) bool { return ofProvider(k, pk) })
	maps.DeleteFunc(s.tools, func(k string, _ repository.ToolList) bool { return ofProvider(k, pk) })
	maps.DeleteFunc(s.leases, func(k string, _ repository.RefreshLease) bool { return ofProvider(k, pk) })
	maps.DeleteFunc(s.chals, func(k string, _ repository.Challenge) bool { return ofProvider(k, pk) })
	for k, r := range s.regs {
		if r.TenantID == tenant && r.ProviderID == id {
			delete(s.regs, k)
		}
	}
}

// DeleteProvider deletes the provider and what it owns.
func (s *Store) DeleteProvider(_ context.Context, tenant, id string, expectedVersion int64, events ...*repository.AuditEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("DeleteProvider", tenant); err != nil {
		return err
	}
	cur, ok := s.providers[key(tenant, id)]
	if !ok {
		return apperr.NotFound("provider")
	}
	if expectedVersion != 0 && cur.Version != expectedVersion {
		return apperr.Aborted("provider was changed concurrently; re-read and retry")
	}
	delete(s.providers, key(tenant, id))
	s.dropDependents(tenant, id)
	s.appendEvents(events)
	return nil
}

// GetCredential returns the provider's grant row.
func (s *Store) GetCredential(_ context.Context, g domain.GrantRef) (*repository.Credential, error) {
	tenant := g.Tenant
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("GetCredential", tenant); err != nil {
		return nil, err
	}
	c, ok := s.creds[gkey(g)]
	if !ok {
		return nil, apperr.NotFound("credential")
	}
	return &c, nil
}

// PutCredential writes with compare-and-swap on the generation, as the
// repository does.
func (s *Store) PutCredential(_ context.Context, c *repository.Credential, expectedGeneration int64, events ...*repository.AuditEvent) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("PutCredential", c.TenantID); err != nil {
		return 0, err
	}
	return s.putCredential(c, expectedGeneration, events)
}

// putCredential is PutCredential with s.mu held.
func (s *Store) putCredential(c *repository.Credential, expectedGeneration int64, events []*repository.AuditEvent) (int64, error) {
	pk, k := key(c.TenantID, c.ProviderID), gkey(c.Ref())
	p, ok := s.providers[pk]
	cur, exists := s.creds[k]
	var gen int64
	switch {
	case expectedGeneration == 0 && !ok:
		return 0, apperr.NotFound("provider")
	case expectedGeneration == 0 && exists:
		return 0, apperr.Aborted("credential was changed concurrently; re-read and retry")
	case expectedGeneration == 0:
		gen = p.CredGeneration + 1
	case !exists || cur.Generation != expectedGeneration:
		return 0, apperr.Aborted("credential was changed concurrently; re-read and retry")
	default:
		gen = expectedGeneration + 1
	}
	row := *c
	row.Generation = gen
	row.UpdatedAt = s.now()
	if exists && row.IdentitySubject == "" {
		// As the repository: a write without a binding keeps the stored one.
		row.IdentityIssuer, row.IdentitySubject = cur.IdentityIssuer, cur.IdentitySubject
	}
	s.creds[k] = row
	if p.CredGeneration < gen {
		p.CredGeneration = gen
		s.providers[pk] = p
	}
	c.Generation, c.UpdatedAt = gen, row.UpdatedAt
	s.appendEvents(events)
	return gen, nil
}

// PutCredentialAtProvider is PutCredential while the provider is at
// providerVersion, as the repository.
func (s *Store) PutCredentialAtProvider(_ context.Context, c *repository.Credential, expectedGeneration, providerVersion int64, events ...*repository.AuditEvent) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("PutCredentialAtProvider", c.TenantID); err != nil {
		return 0, err
	}
	if p, ok := s.providers[key(c.TenantID, c.ProviderID)]; ok && p.Version != providerVersion {
		return 0, apperr.FailedPrecondition(domain.ReasonProviderChanged,
			"the provider was changed while its tokens were being obtained: obtain them again")
	}
	return s.putCredential(c, expectedGeneration, events)
}

// DeleteCredential deletes the grant (any generation when 0).
func (s *Store) DeleteCredential(_ context.Context, g domain.GrantRef, expectedGeneration int64, events ...*repository.AuditEvent) error {
	tenant := g.Tenant
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("DeleteCredential", tenant); err != nil {
		return err
	}
	cur, ok := s.creds[gkey(g)]
	if !ok {
		return apperr.NotFound("credential")
	}
	if expectedGeneration != 0 && cur.Generation != expectedGeneration {
		return apperr.Aborted("credential was changed concurrently; re-read and retry")
	}
	delete(s.creds, gkey(g))
	s.appendEvents(events)
	return nil
}

// SetGrantStatus moves the grant's status as the repository does.
func (s *Store) SetGrantStatus(_ context.Context, g domain.GrantRef, from []domain.AuthStatus, to domain.AuthStatus, reason string, keyID uint32, events ...*repository.AuditEvent) (bool, error) {
	tenant, providerID := g.Tenant, g.Provider
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("SetGrantStatus", tenant); err != nil {
		return false, err
	}
	k, pk := gkey(g), key(tenant, providerID)
	if c, ok := s.creds[k]; ok {
		if !slices.Contains(from, c.Status) {
			return false, nil
		}
		c.Status, c.Reason, c.UpdatedAt = to, reason, s.now()
		s.creds[k] = c
		s.appendEvents(events)
		return true, nil
	}
	if !slices.Contains(from, domain.StatusUnauthorized) {
		return false, nil
	}
	p, ok := s.providers[pk]
	if !ok {
		return false, apperr.NotFound("provider")
	}
	p.CredGeneration++
	s.providers[pk] = p
	s.creds[k] = repository.Credential{TenantID: tenant, ProviderID: providerID, UserID: g.User, Tokens: []byte{}, Generation: p.CredGeneration,
		Status: to, Reason: reason, KeyID: keyID, UpdatedAt: s.now()}
	s.appendEvents(events)
	return true, nil
}

// ProviderGrants lists the provider's authorized grants, by user.
func (s *Store) ProviderGrants(_ context.Context, tenant, provider string) ([]repository.Credential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("ProviderGrants", tenant); err != nil {
		return nil, err
	}
	var out []repository.Credential
	pk := key(tenant, provider)
	for k, c := range s.creds {
		if ofProvider(k, pk) && (c.Status == domain.StatusAuthorized || c.Status == domain.StatusReauthRequired) {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UserID < out[j].UserID })
	return out, nil
}

// CredentialsIdleSince lists authorized grants with a refresh token not
// refreshed since before, never-refreshed first.
func (s *Store) CredentialsIdleSince(_ context.Context, before time.Time, limit int) ([]repository.Credential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["CredentialsIdleSince"]++
	if err := s.fail["CredentialsIdleSince"]; err != nil {
		return nil, err
	}
	var out []repository.Credential
	for _, c := range s.creds {
		if c.Status == domain.StatusAuthorized && c.HasRefresh && (c.LastRefreshAt == nil || c.LastRefreshAt.Before(before)) {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].LastRefreshAt, out[j].LastRefreshAt
		switch {
		case a == nil && b == nil:
			return key(out[i].TenantID, out[i].ProviderID) < key(out[j].TenantID, out[j].ProviderID)
		case a == nil:
			return true
		case b == nil:
			return false
		}
		return a.Before(*b)
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// RecordRefreshFailure counts a failed background refresh at generation.
func (s *Store) RecordRefreshFailure(_ context.Context, g domain.GrantRef, generation int64) (int, error) {
	tenant := g.Tenant
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("RecordRefreshFailure", tenant); err != nil {
		return 0, err
	}
	c, ok := s.creds[gkey(g)]
	if !ok || c.Generation != generation {
		return 0, nil
	}
	c.RefreshFailures++
	s.creds[gkey(g)] = c
	return c.RefreshFailures, nil
}

// GetClientRegistration returns the registration at issuer.
func (s *Store) GetClientRegistration(_ context.Context, tenant, providerID, issuer string) (*repository.ClientRegistration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("GetClientRegistration", tenant); err != nil {
		return nil, err
	}
	r, ok := s.regs[key(tenant, providerID, issuer)]
	if !ok {
		return nil, apperr.NotFound("client registration")
	}
	return &r, nil
}

// PutClientRegistration stores a registration with compare-and-swap on its
// version (0: insert only), as the repository does.
func (s *Store) PutClientRegistration(_ context.Context, r *repository.ClientRegistration, events ...*repository.AuditEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("PutClientRegistration", r.TenantID); err != nil {
		return err
	}
	if _, ok := s.providers[key(r.TenantID, r.ProviderID)]; !ok {
		return apperr.NotFound("provider")
	}
	k := key(r.TenantID, r.ProviderID, r.Issuer)
	if s.regs[k].Version != r.Version {
		return apperr.Aborted("client registration was changed concurrently; re-read it")
	}
	row := *r
	row.Version = r.Version + 1
	s.regs[k] = row
	r.Version = row.Version
	s.appendEvents(events)
	return nil
}

// DeleteClientRegistration deletes a registration (absent is fine).
func (s *Store) DeleteClientRegistration(_ context.Context, tenant, providerID, issuer string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("DeleteClientRegistration", tenant); err != nil {
		return err
	}
	delete(s.regs, key(tenant, providerID, issuer))
	return nil
}

// PutTools stores a grant's tool list only while the provider is at
// providerVersion, as the repository.
func (s *Store) PutTools(_ context.Context, t *repository.ToolList, providerVersion int64) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("PutTools", t.TenantID); err != nil {
		return false, err
	}
	p, ok := s.providers[key(t.TenantID, t.ProviderID)]
	if !ok {
		return false, apperr.NotFound("provider")
	}
	if p.Version != providerVersion {
		return false, nil
	}
	s.tools[gkey(domain.GrantRef{Tenant: t.TenantID, Provider: t.ProviderID, User: t.UserID})] = *t
	return true, nil
}

// PutSharedTools stores a USER provider's shared tool list only while the
// provider is shared and at providerVersion, as the repository.
func (s *Store) PutSharedTools(_ context.Context, t *repository.ToolList, providerVersion int64) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("PutSharedTools", t.TenantID); err != nil {
		return false, err
	}
	p, ok := s.providers[key(t.TenantID, t.ProviderID)]
	if !ok {
		return false, apperr.NotFound("provider")
	}
	if t.UserID != "" || !p.GrantScope.PerUser() || !p.SharedToolList || p.Version != providerVersion {
		return false, nil
	}
	s.tools[gkey(domain.TenantGrant(t.TenantID, t.ProviderID))] = *t
	return true, nil
}

// GetTools returns a stored tool list.
func (s *Store) GetTools(_ context.Context, g domain.GrantRef) (*repository.ToolList, error) {
	tenant := g.Tenant
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("GetTools", tenant); err != nil {
		return nil, err
	}
	t, ok := s.tools[gkey(g)]
	if !ok {
		return nil, apperr.NotFound("tool list")
	}
	return &t, nil
}

// AppendAudit appends one event.
func (s *Store) AppendAudit(_ context.Context, e *repository.AuditEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("AppendAudit", e.TenantID); err != nil {
		return err
	}
	e.ID = int64(len(s.audit) + 1)
	s.audit = append(s.audit, *e)
	return nil
}

// AppendAuditBatch appends events, all or none.
func (s *Store) AppendAuditBatch(_ context.Context, events []*repository.AuditEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["AppendAuditBatch"]++
	if err := s.fail["AppendAuditBatch"]; err != nil {
		return err
	}
	for _, e := range events {
		if e.TenantID == "" {
			return apperr.Internal(repository.ErrNoTenant, "tenant scope missing")
		}
	}
	for _, e := range events {
		// The repository's idempotency key: a retried event is stored once.
		if e.UID != "" && slices.ContainsFunc(s.audit, func(o repository.AuditEvent) bool {
			return o.TenantID == e.TenantID && o.UID == e.UID && o.CreatedAt.Equal(e.CreatedAt)
		}) {
			continue
		}
		e.ID = int64(len(s.audit) + 1)
		s.audit = append(s.audit, *e)
	}
	return nil
}

// ListAudit lists the tenant's events older than the one with UID afterUID
// ("": newest), newest first. The fake's UIDs are "e" and the ID: "e1",
// "e2", ... (set on the listed copies; Events shows none).
func (s *Store) ListAudit(_ context.Context, tenant string, f repository.AuditFilter, afterUID string, limit int) ([]repository.AuditEvent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("ListAudit", tenant); err != nil {
		return nil, err
	}
	var beforeID int64
	if afterUID != "" {
		i := slices.IndexFunc(s.audit, func(e repository.AuditEvent) bool {
			return e.TenantID == tenant && fmt.Sprintf("e%d", e.ID) == afterUID
		})
		if i < 0 {
			return nil, apperr.Invalid("page_token", "is not a valid page token")
		}
		beforeID = s.audit[i].ID
	}
	var out []repository.AuditEvent
	for i := len(s.audit) - 1; i >= 0; i-- {
		e := s.audit[i]
		if e.TenantID != tenant || (beforeID > 0 && e.ID >= beforeID) ||
			(f.ProviderID != "" && e.ProviderID != f.ProviderID) || (f.EventType != "" && e.EventType != f.EventType) {
			continue
		}
		e.UID = fmt.Sprintf("e%d", e.ID)
		out = append(out, e)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out, nil
}

// appendEvents stores the events of a change that succeeded, as the
// repository does in the change's transaction. Call with s.mu held.
func (s *Store) appendEvents(events []*repository.AuditEvent) {
	for _, e := range events {
		e.ID = int64(len(s.audit) + 1)
		s.audit = append(s.audit, *e)
	}
}

// Events returns every stored audit event, oldest first.
func (s *Store) Events() []repository.AuditEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.audit)
}

// Credential returns the stored grant row, or nil.
func (s *Store) Credential(tenant, providerID string) *repository.Credential {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.creds[key(tenant, providerID)]
	if !ok {
		return nil
	}
	return &c
}

// AcquireRefreshLease implements the repository's refresh lease in memory.
func (s *Store) AcquireRefreshLease(_ context.Context, g domain.GrantRef, generation int64, holder string, ttl time.Duration) (repository.LeaseAcquired, error) {
	tenant, providerID := g.Tenant, g.Provider
	s.mu.Lock()
	defer s.mu.Unlock()
	var out repository.LeaseAcquired
	if err := s.enter("AcquireRefreshLease", tenant); err != nil {
		return out, err
	}
	if _, ok := s.providers[key(tenant, providerID)]; !ok {
		return out, apperr.NotFound("provider")
	}
	now := s.now()
	prev, ok := s.leases[gkey(g)]
	if ok && prev.Holder != holder && !prev.ExpiresAt.Before(now) {
		if prev.Holder == "backoff" {
			out.BackoffUntil = prev.ExpiresAt
			return out, repository.ErrRefreshBackoff
		}
		return out, repository.ErrLeaseHeld
	}
	out.TookOver = ok && prev.Holder != holder && prev.Holder != "backoff" && prev.Generation == generation
	s.leases[gkey(g)] = repository.RefreshLease{TenantID: tenant, ProviderID: providerID, UserID: g.User, Generation: generation,
		Holder: holder, ExpiresAt: now.Add(ttl)}
	return out, nil
}

// ExtendRefreshLease implements the repository's refresh lease in memory.
func (s *Store) ExtendRefreshLease(_ context.Context, g domain.GrantRef, holder string, ttl time.Duration) error {
	tenant := g.Tenant
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("ExtendRefreshLease", tenant); err != nil {
		return err
	}
	l, ok := s.leases[gkey(g)]
	if !ok || l.Holder != holder {
		return repository.ErrLeaseGone
	}
	l.ExpiresAt = s.now().Add(ttl)
	s.leases[gkey(g)] = l
	return nil
}

// ReleaseRefreshLease implements the repository's refresh lease in memory.
func (s *Store) ReleaseRefreshLease(_ context.Context, g domain.GrantRef, holder string) error {
	tenant := g.Tenant
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("ReleaseRefreshLease", tenant); err != nil {
		return err
	}
	if l, ok := s.leases[gkey(g)]; ok && l.Holder == holder {
		delete(s.leases, gkey(g))
	}
	return nil
}

// ExpirePendingGrants implements the repository's sweep of abandoned flows.
func (s *Store) ExpirePendingGrants(_ context.Context, before time.Time, reason string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["ExpirePendingGrants"]++
	if err := s.fail["ExpirePendingGrants"]; err != nil {
		return 0, err
	}
	var n int64
	for k, c := range s.creds {
		if c.Status == domain.StatusPending && c.UpdatedAt.Before(before) {
			c.Status, c.Reason, c.UpdatedAt = domain.StatusUnauthorized, reason, s.now()
			s.creds[k] = c
			n++
		}
	}
	return n, nil
}

// BackoffRefreshLease implements the repository's refresh backoff in memory.
func (s *Store) BackoffRefreshLease(_ context.Context, g domain.GrantRef, holder string, d time.Duration) error {
	tenant := g.Tenant
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("BackoffRefreshLease", tenant); err != nil {
		return err
	}
	if l, ok := s.leases[gkey(g)]; ok && l.Holder == holder {
		l.Holder, l.ExpiresAt = "backoff", s.now().Add(d)
		s.leases[gkey(g)] = l
	}
	return nil
}
