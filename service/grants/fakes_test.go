package grants

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/statestore"
)

// fakeAS is an in-memory authorization server's token and revocation
// endpoints (RFC 6749 refresh, RFC 7009 revocation). It knows its clients
// and their secrets, keeps the refresh tokens it issued, rotates them on
// every refresh (unless told it is a non-rotating server), and rejects a
// reused or unknown refresh token with invalid_grant and an unknown client
// or wrong secret with invalid_client, as a real server does. Tests can
// queue failures, block refreshes until released, and run a hook while a
// refresh is under way.
type fakeAS struct {
	now func() time.Time

	mu        sync.Mutex
	seq       int
	clients   map[string]string        // client id -> secret ("" for public clients)
	live      map[string]issuedRefresh // refresh token -> what it was issued for
	rotate    bool
	lifetime  time.Duration // access token lifetime; 0 issues no expires_in
	scopes    []string      // scope of refresh responses; nil keeps the grant's
	tokenType string        // token_type of refresh responses; "" omits it
	queued    []error       // returned by the next Refresh calls, in order
	always    error         // returned by every Refresh call once queued is empty
	revokeErr map[string]error
	gate      chan struct{} // when set, Refresh waits until it is closed
	entered   chan struct{} // receives one value per Refresh call (never blocks)
	during    func()        // runs inside Refresh before it answers
	// onIssue runs inside ClientCredentials after the answer is decided
	// (tokens minted or the client refused), before it is given.
	onIssue func()

	// jwtBearer: JWTBearer serves the grant to known clients.
	jwtBearer bool

	obtained []string // access tokens issued by ClientCredentials and JWTBearer, in order

	refreshes int      // Refresh calls, failed ones included
	refreshed []string // subjects of successful refreshes, in order
	resources []string // resource parameters of successful refreshes
	revoked   []revocation
}

type issuedRefresh struct{ subject, client string }

type revocation struct{ token, hint string }

func newFakeAS(now func() time.Time) *fakeAS {
	return &fakeAS{now: now, clients: map[string]string{}, live: map[string]issuedRefresh{}, rotate: true,
		lifetime: time.Hour, revokeErr: map[string]error{}, entered: make(chan struct{}, 1024)}
}

// addClient registers a client with the server.
func (f *fakeAS) addClient(id, secret string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clients[id] = secret
}

// forgetClient makes the server forget a client (invalid_client from now on).
func (f *fakeAS) forgetClient(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.clients, id)
}

// forgetGrant drops every refresh token issued for subject, as when the
// user revokes mcpauth's access at the server (invalid_grant from now on).
func (f *fakeAS) forgetGrant(subject string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for rt, g := range f.live {
		if g.subject == subject {
			delete(f.live, rt)
		}
	}
}

// mint issues a token set for subject; f.mu is held.
func (f *fakeAS) mint(subject, client string, withRefresh bool) *oauthclient.Tokens {
	f.seq++
	n := strconv.Itoa(f.seq)
	t := &oauthclient.Tokens{AccessToken: secret.New("at-" + subject + "-" + n)}
	if f.lifetime > 0 {
		t.ExpiresAt = f.now().Add(f.lifetime)
	}
	if withRefresh {
		rt := "rt-" + subject + "-" + n
		f.live[rt] = issuedRefresh{subject: subject, client: client}
		t.RefreshToken = secret.New(rt)
	}
	return t
}

// authorize issues the tokens of a completed authorization code grant.
func (f *fakeAS) authorize(subject, client string, withRefresh bool) *oauthclient.Tokens {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mint(subject, client, withRefresh)
}

// fail queues errors for the next Refresh calls.
func (f *fakeAS) fail(errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queued = append(f.queued, errs...)
}

// failAlways makes every Refresh call fail with err (nil: stop failing).
func (f *fakeAS) failAlways(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.always = err
}

// block makes Refresh calls wait until the returned release is called.
func (f *fakeAS) block() (release func()) {
	gate := make(chan struct{})
	f.mu.Lock()
	f.gate = gate
	f.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(gate) }) }
}

// set changes the server's behaviour under its lock.
func (f *fakeAS) set(change func(f *fakeAS)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

func (f *fakeAS) Refresh(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, refreshToken secret.Secret, resource string) (*oauthclient.Tokens, error) {
	f.mu.Lock()
	f.refreshes++
	gate, during := f.gate, f.during
	f.mu.Unlock()
	select {
	case f.entered <- struct{}{}:
	default:
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, &oauthclient.TemporaryError{Op: "refresh", Err: ctx.Err()}
		}
	}
	if during != nil {
		during()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if md.TokenEndpoint != tokenEndpoint {
		return nil, fmt.Errorf("refresh: unexpected token endpoint %q", md.TokenEndpoint)
	}
	if len(f.queued) > 0 {
		err := f.queued[0]
		f.queued = f.queued[1:]
		return nil, err
	}
	if f.always != nil {
		return nil, f.always
	}
	if sec, ok := f.clients[reg.ClientID]; !ok || sec != reg.ClientSecret.Reveal() {
		return nil, fmt.Errorf("refresh: %w", oauthclient.ErrInvalidClient)
	}
	g, ok := f.live[refreshToken.Reveal()]
	if !ok || g.client != reg.ClientID {
		return nil, fmt.Errorf("refresh: %w", oauthclient.ErrInvalidGrant)
	}
	f.refreshed = append(f.refreshed, g.subject)
	f.resources = append(f.resources, resource)
	t := f.mint(g.subject, g.client, f.rotate)
	if f.rotate {
		delete(f.live, refreshToken.Reveal())
	}
	t.Scopes, t.TokenType = f.scopes, f.tokenType
	return t, nil
}

// ClientCredentials is the token endpoint's client_credentials grant: the
// client must be known with that secret (else invalid_client, an OAuth
// error answer); the token's subject is the client. No refresh token.
func (f *fakeAS) ClientCredentials(_ context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, _ []string, _ string) (*oauthclient.Tokens, error) {
	f.mu.Lock()
	var (
		t   *oauthclient.Tokens
		err error
	)
	switch sec, ok := f.clients[reg.ClientID]; {
	case md.TokenEndpoint != tokenEndpoint:
		err = fmt.Errorf("client credentials: unexpected token endpoint %q", md.TokenEndpoint)
	case !ok || sec != reg.ClientSecret.Reveal():
		err = &oauthclient.OAuthError{Op: "client credentials", Status: 401, Code: "invalid_client"}
	default:
		t = f.mint(reg.ClientID, reg.ClientID, false)
		f.obtained = append(f.obtained, t.AccessToken.Reveal())
	}
	hook := f.onIssue
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	return t, err
}

// JWTBearer is the JWT bearer grant (RFC 7523 section 2.1) when jwtBearer
// is set: the client must be known with that secret (else invalid_client,
// RFC 6749 section 5.2) and the assertion present (else invalid_grant); the
// token's subject is the client. No refresh token. Otherwise the grant is
// not served (unsupported_grant_type).
func (f *fakeAS) JWTBearer(_ context.Context, _ *oauthclient.Metadata, reg *oauthclient.Registration, assertion secret.Secret, _ []string, _ string) (*oauthclient.Tokens, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sec, ok := f.clients[reg.ClientID]
	switch {
	case !f.jwtBearer:
		return nil, &oauthclient.OAuthError{Op: "jwt bearer", Status: 400, Code: "unsupported_grant_type"}
	case !ok || sec != reg.ClientSecret.Reveal():
		return nil, &oauthclient.OAuthError{Op: "jwt bearer", Status: 401, Code: "invalid_client"}
	case assertion.IsZero():
		return nil, &oauthclient.OAuthError{Op: "jwt bearer", Status: 400, Code: "invalid_grant"}
	}
	t := f.mint(reg.ClientID, reg.ClientID, false)
	f.obtained = append(f.obtained, t.AccessToken.Reveal())
	return t, nil
}

// issued lists the access tokens ClientCredentials and JWTBearer issued,
// in order.
func (f *fakeAS) issued() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.obtained...)
}

// fakeDiscovery finds the fake server for every MCP server.
type fakeDiscovery struct{}

func (fakeDiscovery) Probe(context.Context, string, map[string]string, *oauthclient.Trace) (*oauthclient.ProbeResult, error) {
	return &oauthclient.ProbeResult{Status: 401}, nil
}

func (fakeDiscovery) Discover(_ context.Context, _, resource string, _ *oauthclient.ProbeResult, _ *oauthclient.Trace) (*oauthclient.Metadata, error) {
	return &oauthclient.Metadata{Resource: resource, Issuer: issuer, TokenEndpoint: tokenEndpoint, RevocationEndpoint: revocationEndpoint}, nil
}

func (f *fakeAS) Revoke(_ context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, token secret.Secret, hint string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, revocation{token: token.Reveal(), hint: hint})
	if md.RevocationEndpoint != revocationEndpoint {
		return fmt.Errorf("revoke: unexpected revocation endpoint %q", md.RevocationEndpoint)
	}
	if err := f.revokeErr[hint]; err != nil {
		return err
	}
	if sec, ok := f.clients[reg.ClientID]; !ok || sec != reg.ClientSecret.Reveal() {
		return fmt.Errorf("revoke: %w", oauthclient.ErrInvalidClient)
	}
	delete(f.live, token.Reveal())
	return nil
}

// refreshCalls is how many times Refresh was called.
func (f *fakeAS) refreshCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refreshes
}

// refreshedSubjects lists the subjects of successful refreshes, in order.
func (f *fakeAS) refreshedSubjects() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.refreshed...)
}

// resourcesSent lists the resource parameters of successful refreshes.
func (f *fakeAS) resourcesSent() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.resources...)
}

func (f *fakeAS) revocations() []revocation {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]revocation(nil), f.revoked...)
}

// isLive reports whether the server would accept refreshToken.
func (f *fakeAS) isLive(refreshToken string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.live[refreshToken]
	return ok
}

var (
	_ Protocol        = (*fakeAS)(nil)
	_ MachineProtocol = (*fakeAS)(nil)
	_ Discoverer      = fakeDiscovery{}
)

// hookStore is the in-memory store with hooks into its credential writes,
// to stage what another replica or request does at that very moment, or a
// database that fails some writes.
type hookStore struct {
	*servicetest.Store
	// onPut runs before each PutCredential; an error fails the write.
	onPut func(c *repository.Credential, expected int64) error
	// afterPutAt runs after each PutCredentialAtProvider with its error,
	// and its answer is the write's: a database whose answer was lost
	// after it committed returns an error for a stored write.
	afterPutAt func(err error) error
	// onDelete runs before each DeleteCredential.
	onDelete func()
	// afterList runs after CredentialsIdleSince lists its rows.
	afterList func()
	// onGet runs before each GetCredential.
	onGet func()
	// failGet runs before each GetCredential; an error fails the read.
	failGet func() error
}

func (h *hookStore) GetCredential(ctx context.Context, g domain.GrantRef) (*repository.Credential, error) {
	if h.onGet != nil {
		h.onGet()
	}
	if h.failGet != nil {
		if err := h.failGet(); err != nil {
			return nil, err
		}
	}
	return h.Store.GetCredential(ctx, g)
}

func (h *hookStore) PutCredential(ctx context.Context, c *repository.Credential, expected int64, events ...*repository.AuditEvent) (int64, error) {
	if h.onPut != nil {
		if err := h.onPut(c, expected); err != nil {
			return 0, err
		}
	}
	return h.Store.PutCredential(ctx, c, expected, events...)
}

func (h *hookStore) PutCredentialAtProvider(ctx context.Context, c *repository.Credential, expected, version int64, events ...*repository.AuditEvent) (int64, error) {
	gen, err := h.Store.PutCredentialAtProvider(ctx, c, expected, version, events...)
	if h.afterPutAt != nil {
		if err = h.afterPutAt(err); err != nil {
			return 0, err
		}
	}
	return gen, err
}

func (h *hookStore) DeleteCredential(ctx context.Context, g domain.GrantRef, expected int64, events ...*repository.AuditEvent) error {
	if h.onDelete != nil {
		h.onDelete()
	}
	return h.Store.DeleteCredential(ctx, g, expected, events...)
}

func (h *hookStore) CredentialsIdleSince(ctx context.Context, before time.Time, limit int) ([]repository.Credential, error) {
	rows, err := h.Store.CredentialsIdleSince(ctx, before, limit)
	if h.afterList != nil {
		h.afterList()
	}
	return rows, err
}

// waitSignalLocker is the in-process lock store that also reports each
// caller that starts waiting for a held lock.
type waitSignalLocker struct {
	*statestore.Memory
	waiting chan string
}

func newWaitSignalLocker(m *statestore.Memory) *waitSignalLocker {
	return &waitSignalLocker{Memory: m, waiting: make(chan string, 64)}
}

func (l *waitSignalLocker) WaitUnlocked(ctx context.Context, key string) error {
	select {
	case l.waiting <- key:
	default:
	}
	return l.Memory.WaitUnlocked(ctx, key)
}
