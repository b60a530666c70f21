// Package authflow is the OAuth authorization use case: it discovers a
// provider's authorization server, chooses the client registration, starts
// single-use flows bound to a browser, completes them on the callback (state,
// browser binding and RFC 9207 issuer checked before the code goes
// anywhere), and diagnoses providers step by step. It speaks no HTTP: the
// transport owns cookies, pages and redirects.
package authflow

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/dpop"
	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/reqid"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// Store reads providers and keeps grant status and client registrations.
// *repository.Store implements it.
type Store interface {
	vault.ProviderGetter
	// GetProviderPublic reads a provider's plaintext columns only, from
	// the database (the per-provider Client ID Metadata Document).
	GetProviderPublic(ctx context.Context, tenant, id string) (*repository.ProviderPublic, error)
	SetGrantStatus(ctx context.Context, g domain.GrantRef, from []domain.AuthStatus, to domain.AuthStatus, reason string, keyID uint32, events ...*repository.AuditEvent) (bool, error)
	GetClientRegistration(ctx context.Context, tenant, providerID, issuer string) (*repository.ClientRegistration, error)
	// PutClientRegistration stores events in the registration's transaction.
	PutClientRegistration(ctx context.Context, r *repository.ClientRegistration, events ...*repository.AuditEvent) error
	DeleteClientRegistration(ctx context.Context, tenant, providerID, issuer string) error
	GetCredential(ctx context.Context, g domain.GrantRef) (*repository.Credential, error)
	// Challenges the MCP server answered (any replica, any request).
	RecordChallenge(ctx context.Context, c *repository.Challenge, keyID uint32, events ...*repository.AuditEvent) (bool, error)
	GetChallenge(ctx context.Context, g domain.GrantRef) (*repository.Challenge, error)
	CountStepUp(ctx context.Context, g domain.GrantRef) error
}

var _ Store = (*repository.Store)(nil)

// Reads are the reads of a provider's state StartAuthorization makes on
// every call. They may be served from a short-lived cache
// (*repository.CachedReads: changes made by this replica are seen at once,
// other replicas' within its TTL); Diagnose and the callback read the
// database.
type Reads interface {
	vault.ProviderGetter
	GetChallenge(ctx context.Context, g domain.GrantRef) (*repository.Challenge, error)
	GetCredential(ctx context.Context, g domain.GrantRef) (*repository.Credential, error)
	GetClientRegistration(ctx context.Context, tenant, providerID, issuer string) (*repository.ClientRegistration, error)
}

var _ Reads = (*repository.CachedReads)(nil)

// Protocol is the OAuth client protocol mcpauth speaks to MCP and
// authorization servers. *oauthclient.Client implements it.
type Protocol interface {
	Probe(ctx context.Context, serverURL string, headers map[string]string, tr *oauthclient.Trace) (*oauthclient.ProbeResult, error)
	Discover(ctx context.Context, serverURL, canonicalResource string, probe *oauthclient.ProbeResult, tr *oauthclient.Trace) (*oauthclient.Metadata, error)
	RegisterDynamic(ctx context.Context, md *oauthclient.Metadata, clientName, redirectURI string, scopes []string) (*oauthclient.Registration, error)
	Exchange(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, code, verifier secret.Secret, redirectURI, resource string, requestedScopes []string) (*oauthclient.Tokens, error)
	// Forget drops cached discovery for a server whose metadata led to a
	// failed request.
	Forget(serverURL string)
	// IdentityProviderMetadata reads an enterprise identity provider's
	// metadata (DiagnoseProvider of an enterprise-managed provider).
	IdentityProviderMetadata(ctx context.Context, issuer string, tr *oauthclient.Trace) (*oauthclient.Metadata, error)
}

// GrantStore stores the tokens of a completed authorization.
// *grants.Service implements it.
type GrantStore interface {
	// StoreNew stores events in the same transaction as the tokens.
	StoreNew(ctx context.Context, row *repository.Provider, user string, g vault.Grant, t *oauthclient.Tokens, events ...*repository.AuditEvent) error
}

// Clock tells the time.
type Clock func() time.Time

// Config is the part of the configuration the flow needs.
type Config struct {
	// CallbackURL is the redirect URI registered with authorization servers.
	CallbackURL string
	// AuthorizeURLPrefix followed by a flow handle is the URL a person's
	// browser opens to start a flow (the gateway's authorize route).
	AuthorizeURLPrefix string
	// ClientName is sent in dynamic registrations.
	ClientName string
	// ClientMetadataURL is the client_id used with servers that support
	// Client ID Metadata Documents; empty when mcpauth serves none.
	ClientMetadataURL string
	// ProviderMetadataURL returns the URL of a provider's own Client ID
	// Metadata Document (cimd.go), and JWKSURL the provider's JWKS; nil
	// when mcpauth serves no per-provider documents (its public URL is not
	// https).
	ProviderMetadataURL, JWKSURL func(tenant, id string) string
	// ReturnOrigins are the origins a flow may send the browser back to.
	ReturnOrigins []string
	// FlowTTL bounds a pending flow (default 5 minutes).
	FlowTTL time.Duration
	// ProbeTTL keeps probe results (see probeCache); 0 probes every time.
	ProbeTTL time.Duration
}

// Service runs authorization flows.
type Service struct {
	store  Store
	reads  Reads
	cipher vault.Cipher
	flows  flowCodec
	proto  Protocol
	grants GrantStore
	audit  audit.Recorder
	log    *slog.Logger
	now    Clock
	cfg    Config
	probes *probeCache
	opened *opened // decrypted rows of the cached reads (opened.go)
}

// Deps are what New needs. Now defaults to time.Now; Reads defaults to
// Store.
type Deps struct {
	Store  Store
	Reads  Reads
	Cipher vault.Cipher
	Flows  FlowStore
	Proto  Protocol
	Grants GrantStore
	Audit  audit.Recorder
	Log    *slog.Logger
	Now    Clock
	Config Config
}

// New returns the authorization flow use case.
func New(d Deps) (*Service, error) {
	if d.Store == nil || d.Cipher == nil || d.Flows == nil || d.Proto == nil || d.Audit == nil || d.Log == nil || d.Grants == nil {
		return nil, errors.New("authflow: store, cipher, flows, proto, grants, audit and log are required")
	}
	if d.Config.CallbackURL == "" || d.Config.AuthorizeURLPrefix == "" {
		return nil, errors.New("authflow: callback and authorize URLs are required")
	}
	if d.Config.FlowTTL <= 0 {
		d.Config.FlowTTL = 5 * time.Minute
	}
	if d.Config.ClientName == "" {
		d.Config.ClientName = "mcpauth"
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Reads == nil {
		d.Reads = d.Store
	}
	return &Service{store: d.Store, reads: d.Reads, cipher: d.Cipher, flows: flowCodec{cipher: d.Cipher, store: d.Flows},
		proto: d.Proto, grants: d.Grants, audit: d.Audit, log: d.Log, now: d.Now, cfg: d.Config,
		probes: newProbeCache(d.Config.ProbeTTL), opened: newOpened()}, nil
}

// ClientMetadataDocument is mcpauth's Client ID Metadata Document, or nil
// when it has none.
func (s *Service) ClientMetadataDocument() map[string]any {
	if s.cfg.ClientMetadataURL == "" {
		return nil
	}
	return map[string]any{
		"client_id":                  s.cfg.ClientMetadataURL,
		"client_name":                s.cfg.ClientName,
		"redirect_uris":              []string{s.cfg.CallbackURL},
		"grant_types":                []string{"authorization_code", "refresh_token"},
		"response_types":             []string{"code"},
		"token_endpoint_auth_method": "none",
		"application_type":           "web",
	}
}

func loadProvider(ctx context.Context, r Reads, c vault.Cipher, tenant, id string) (*vault.Provider, error) {
	row, err := r.GetProvider(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	return vault.OpenProvider(c, row)
}

// discovery is the outcome of probing and discovering one provider.
type discovery struct {
	probe  *oauthclient.ProbeResult
	md     *oauthclient.Metadata
	scopes []string
	// challenge is the recorded challenge discovery started from, if any.
	challenge *repository.Challenge
}

// discover finds out whether the provider's MCP server asks for
// authorization and, when it does, discovers its authorization server.
//
// A challenge an earlier MCP request was refused with (401, or 403
// insufficient_scope; recorded by any replica) is the truth and is used
// instead of probing: servers that let initialize through and challenge
// tools/list would otherwise look open. Without one, an unauthenticated
// initialize probes (cached per provider version for the metadata TTL). The
// probe is only a first guess and is not recorded: its 401 is answered by
// the flow this discovery starts.
func (s *Service) discover(ctx context.Context, r Reads, d *vault.Provider, ref domain.GrantRef, extra []string, tr *oauthclient.Trace) (*discovery, error) {
	var probe *oauthclient.ProbeResult
	ch, err := r.GetChallenge(ctx, ref)
	switch {
	case err == nil:
		probe = d.ChallengeProbe(ch)
		tr.Add(oauthclient.Step{Action: oauthclient.ActionRecordedChallenge, HTTPStatus: ch.HTTPStatus, OK: true,
			Detail: fmt.Sprintf("an MCP request was refused at %s; error %q, scope %q, resource_metadata %s",
				ch.SeenAt.UTC().Format(time.RFC3339), ch.Error, ch.Scope, presence(probe.ResourceMetadataURL))})
	case apperr.KindOf(err) != apperr.KindNotFound:
		return nil, err
	default:
		ch = nil
		cached := false
		if tr == nil {
			probe, cached = s.probes.get(d.Row, s.now())
		}
		if !cached {
			if probe, err = s.proto.Probe(ctx, d.URL.String(), d.Headers, tr); err != nil {
				return nil, upstreamErr("probing the MCP server", err)
			}
			s.probes.put(d.Row, probe, s.now())
		}
	}
	if probe.NotRequired {
		return &discovery{probe: probe}, nil
	}
	if ch != nil && s.probes.discoveredBefore(d.Row, ch.SeenAt, s.now()) {
		// The server refused a request after this replica last read its
		// metadata (possibly based on it: a token from an authorization
		// server it no longer trusts): read the metadata again.
		s.proto.Forget(d.URL.String())
	}
	md, err := s.proto.Discover(ctx, d.URL.String(), d.Resource, probe, tr)
	if err != nil {
		return nil, upstreamErr("discovering the authorization server", err)
	}
	// The held grant, if any: its scopes for a step-up, its issuer to
	// notice an authorization server that moved.
	cred, err := r.GetCredential(ctx, ref)
	switch {
	case err == nil:
	case apperr.KindOf(err) == apperr.KindNotFound:
		cred = nil
	default:
		return nil, err
	}
	if ch != nil && ch.Error == "insufficient_scope" && cred != nil {
		// Step-up (MCP authorization, Step-Up Authorization Flow): the
		// union of the scopes granted so far and those the challenge names.
		extra = append(vault.ParseList(cred.Scopes), extra...)
	}
	var scopes []string
	if len(d.Scopes) > 0 {
		scopes = oauthclient.SelectScopes(d.Scopes, nil, md.ASScopesSupported, extra)
	} else {
		scopes = oauthclient.SelectScopes(probe.Scopes, md.ScopesSupported, md.ASScopesSupported, extra)
	}
	if err := s.checkAuthServer(ctx, d, cred, md); err != nil {
		return nil, err
	}
	return &discovery{probe: probe, md: md, scopes: scopes, challenge: ch}, nil
}

func presence(u string) string {
	if u == "" {
		return "absent"
	}
	return "present"
}

// checkAuthServer compares the authorization server the protected
// resource metadata names now with the one that issued the held grant. When
// it moved, the grant becomes REAUTH_REQUIRED (its tokens are never sent to
// the new server, and its refresh token only ever goes back to the old
// server's token endpoint), the move is audited once, and the flow goes on
// with the new server: client registrations are kept per issuer, so a new
// client is registered there and the old server's client id and secret are
// never presented to it (a pre-registered client is the operator's
// statement of which client to use, and is kept).
func (s *Service) checkAuthServer(ctx context.Context, d *vault.Provider, cred *repository.Credential, md *oauthclient.Metadata) error {
	tenant, id := d.Row.TenantID, d.Row.ID
	if cred == nil || cred.Issuer == "" || oauthclient.SameIssuer(cred.Issuer, md.Issuer) {
		return nil
	}
	// The event commits with the status change (SetGrantStatus stores it
	// only when the status changed), once per move.
	var events []*repository.AuditEvent
	if cred.Reason != domain.ReasonAuthServerChanged {
		events = audit.Rows(ctx, s.now(), audit.Event{Tenant: tenant, Type: domain.EventAuthServerChanged, Provider: id, Outcome: domain.OutcomeFailure,
			Reason: domain.ReasonAuthServerChanged, Details: map[string]string{"old_issuer": cred.Issuer, "new_issuer": md.Issuer}})
	}
	_, err := s.store.SetGrantStatus(ctx, cred.Ref(),
		[]domain.AuthStatus{domain.StatusAuthorized, domain.StatusExpired, domain.StatusReauthRequired},
		domain.StatusReauthRequired, domain.ReasonAuthServerChanged, s.cipher.PrimaryID(), events...)
	return err
}

// upstreamErr turns a protocol failure into a caller-facing error that
// names the step but carries no upstream body.
func upstreamErr(step string, err error) error {
	if _, ok := apperr.As(err); ok {
		return err
	}
	var blocked *egress.BlockedError
	var status *oauthclient.StatusError
	switch {
	case errors.As(err, &blocked):
		// Retrying cannot help: the provider's configuration or the
		// allow-list must change. The message names host and rule only.
		return apperr.FailedPrecondition(domain.ReasonEgressBlocked, "%s: %s", step, blocked.Error())
	case errors.Is(err, oauthclient.ErrNoUsableAuthMethod):
		return apperr.FailedPrecondition(domain.ReasonNoUsableAuthMethod, "%s: %s", step, oauthclient.ErrNoUsableAuthMethod.Error())
	case errors.Is(err, oauthclient.ErrResourceMismatch):
		return apperr.FailedPrecondition(domain.ReasonResourceMismatch, "%s: the protected resource metadata names a different resource than this MCP server", step)
	case errors.Is(err, oauthclient.ErrIssuerMismatch):
		return apperr.FailedPrecondition(domain.ReasonIssuerMismatch, "%s: the authorization server metadata names a different issuer", step)
	case errors.Is(err, oauthclient.ErrNoAuthServerMetadata):
		// Every well-known location answered definitively (4xx, or no
		// metadata document): 5xx, 429 and network failures abort discovery
		// as temporary errors before this.
		return apperr.FailedPrecondition(domain.ReasonMetadataNotFound,
			"%s: the authorization server the MCP server names publishes no metadata at any well-known location", step)
	case errors.As(err, &status) && status.Op == oauthclient.OpProbe && domain.ServerStatusReason(status.Status) != "":
		return apperr.FailedPrecondition(domain.ServerStatusReason(status.Status),
			"%s: the MCP server answered %d: check the provider's server_url and headers", step, status.Status)
	case errors.Is(err, context.DeadlineExceeded):
		return apperr.Unavailable(err, "%s: timed out", step)
	}
	return apperr.Unavailable(err, "%s failed: %s", step, err.Error())
}

// resourceParam is the RFC 8707 resource parameter of a flow: the
// provider's compatibility override when it has one, else the protected
// resource's identifier from its metadata (see oauthclient.Metadata.Resource),
// else the canonical MCP server URI.
func resourceParam(d *vault.Provider, md *oauthclient.Metadata) string {
	if d.Compat.ResourceMode == domain.ResourceOmit || d.Compat.ResourceMode == domain.ResourceOverride || md.Resource == "" {
		return d.ResourceParam()
	}
	return md.Resource
}

// flowSupported refuses, before any registration or browser step, an
// authorization server that advertises grant types without
// authorization_code (RFC 8414 grant_types_supported).
func flowSupported(md *oauthclient.Metadata) error {
	if len(md.GrantTypes) > 0 && !slices.Contains(md.GrantTypes, "authorization_code") {
		return apperr.FailedPrecondition(domain.ReasonNoClientRegistration,
			"the authorization server does not advertise the authorization_code grant (grant_types_supported)")
	}
	return nil
}

// usableRegistration opens a stored dynamic registration when it is still
// good for this deployment (same redirect URI, not expired).
func (s *Service) usableRegistration(row *repository.ClientRegistration) (*oauthclient.Registration, bool) {
	reg, err := s.opened.registration(s.cipher, row)
	if err != nil || reg.RedirectURI != s.cfg.CallbackURL || !(reg.ExpiresAt.IsZero() || reg.ExpiresAt.After(s.now())) {
		return nil, false
	}
	return reg, true
}

// registration picks the client registration in the spec's order:
// pre-registered, Client ID Metadata Document, dynamic registration. With
// dryRun it never registers (Diagnose).
func (s *Service) registration(ctx context.Context, r Reads, d *vault.Provider, md *oauthclient.Metadata, scopes []string, dryRun bool) (*oauthclient.Registration, error) {
	if d.Row.ClientID != "" {
		reg := &oauthclient.Registration{Method: domain.RegPreRegistered, ClientID: d.Row.ClientID, ClientSecret: d.ClientSecret,
			AuthMethod: d.Compat.TokenEndpointAuth, RedirectURI: s.cfg.CallbackURL, ClientKey: d.ClientKey}
		method, err := oauthclient.ChooseAuthMethod(reg, md.TokenEndpointAuthMethods)
		if err != nil {
			return nil, apperr.FailedPrecondition(domain.ReasonNoUsableAuthMethod,
				"the authorization server advertises no token endpoint authentication method mcpauth can use with the pre-registered client (token_endpoint_auth_methods_supported: %s)",
				advertisedMethods(md))
		}
		reg.AuthMethod = method
		return reg, nil
	}
	if keyedCIMD(d) {
		return s.keyedRegistration(d, md)
	}
	if cimd := s.cfg.ClientMetadataURL; cimd != "" && md.ClientIDMetadataDocumentSupported {
		// mcpauth's metadata document declares "none": usable only where
		// the server accepts public clients.
		reg := &oauthclient.Registration{Method: domain.RegCIMD, ClientID: cimd, AuthMethod: oauthclient.AuthNone, RedirectURI: s.cfg.CallbackURL}
		if _, err := oauthclient.ChooseAuthMethod(&oauthclient.Registration{Method: domain.RegCIMD}, md.TokenEndpointAuthMethods); err == nil {
			return reg, nil
		}
	}
	if md.RegistrationEndpoint == "" {
		return nil, apperr.FailedPrecondition(domain.ReasonNoClientRegistration,
			"the authorization server supports neither client ID metadata documents nor dynamic registration: set oauth_client on the provider")
	}
	if _, err := oauthclient.RegistrationAuthMethod(md.TokenEndpointAuthMethods); err != nil {
		return nil, apperr.FailedPrecondition(domain.ReasonNoUsableAuthMethod,
			"the authorization server advertises no token endpoint authentication method mcpauth can register with (token_endpoint_auth_methods_supported: %s)",
			advertisedMethods(md))
	}
	var replaces int64 // the version of an unusable stored registration
	stored, err := r.GetClientRegistration(ctx, d.Row.TenantID, d.Row.ID, md.Issuer)
	switch {
	case err == nil:
		if reg, ok := s.usableRegistration(stored); ok {
			reg = withAuthOverride(reg, d.Compat)
			if _, err := oauthclient.ChooseAuthMethod(reg, md.TokenEndpointAuthMethods); err == nil {
				return reg, nil
			}
			// The server no longer accepts how this client authenticates:
			// register a new one.
		}
		replaces = stored.Version
	case apperr.KindOf(err) != apperr.KindNotFound:
		return nil, err
	}
	if dryRun {
		return &oauthclient.Registration{Method: domain.RegDynamic, RedirectURI: s.cfg.CallbackURL}, nil
	}
	reg, err := s.proto.RegisterDynamic(ctx, md, s.cfg.ClientName, s.cfg.CallbackURL, scopes)
	if err != nil {
		return nil, upstreamErr("dynamic client registration", err)
	}
	reg.Method = domain.RegDynamic
	ct, err := vault.SealRegistration(s.cipher, d.Row.TenantID, d.Row.ID, md.Issuer, reg)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	// The event commits with the registration (a lost race stores neither).
	events := audit.Rows(ctx, s.now(), audit.Event{Tenant: d.Row.TenantID, Type: domain.EventClientRegistered, Provider: d.Row.ID,
		Outcome: domain.OutcomeSuccess, Details: map[string]string{"issuer": md.Issuer, "method": string(domain.RegDynamic)}})
	err = s.store.PutClientRegistration(ctx, &repository.ClientRegistration{TenantID: d.Row.TenantID, ProviderID: d.Row.ID,
		Issuer: md.Issuer, Method: domain.RegDynamic, ClientID: reg.ClientID, Secret: ct, RedirectURI: reg.RedirectURI,
		KeyID: s.cipher.PrimaryID(), Version: replaces, CreatedAt: now, UpdatedAt: now}, events...)
	if apperr.KindOf(err) == apperr.KindAborted {
		// Another start registered concurrently and stored its client
		// first: use that one, so neither pending flow's client is
		// overwritten (its callback would fail with CLIENT_CHANGED).
		won, gerr := s.store.GetClientRegistration(ctx, d.Row.TenantID, d.Row.ID, md.Issuer)
		if gerr != nil {
			return nil, gerr
		}
		if r, ok := s.usableRegistration(won); ok {
			return withAuthOverride(r, d.Compat), nil
		}
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	return withAuthOverride(reg, d.Compat), nil
}

// advertisedMethods lists the advertised token endpoint authentication
// methods for a message (sanitised by the metadata parser's caller: codes
// only, cut short).
func advertisedMethods(md *oauthclient.Metadata) string {
	if len(md.TokenEndpointAuthMethods) == 0 {
		return "absent"
	}
	out := make([]string, 0, len(md.TokenEndpointAuthMethods))
	for i, m := range md.TokenEndpointAuthMethods {
		if i == 8 {
			out = append(out, "...")
			break
		}
		out = append(out, oauthclient.SanitizeCode(m))
	}
	return strings.Join(out, " ")
}

// withAuthOverride applies the provider's token-endpoint authentication
// override, when it has one, to a dynamically registered client.
func withAuthOverride(reg *oauthclient.Registration, c domain.Compat) *oauthclient.Registration {
	if c.TokenEndpointAuth != "" {
		reg.AuthMethod = c.TokenEndpointAuth
	}
	return reg
}

// randomToken returns n random bytes, base64url encoded.
func randomToken(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// reasonOf returns the stable reason of a classified error.
func reasonOf(err error) string {
	if e, ok := apperr.As(err); ok && e.Reason != "" {
		return e.Reason
	}
	return domain.ReasonInternal
}

// StartInput asks for an authorization flow.
type StartInput struct {
	Tenant   string
	Provider string
	// User is the calling platform's id of the person who will authorize.
	User string
	// ReturnURL, when set, is where the browser goes after the callback.
	ReturnURL        string
	AdditionalScopes []string
	// RequireCompletion and ExpectedSubject bind the completion to the
	// platform's signed-in user (completion.go).
	RequireCompletion bool
	ExpectedSubject   string
}

// Started is a started flow, or NOT_REQUIRED when the server asks for no
// authorization.
type Started struct {
	Status domain.AuthStatus
	// AuthorizationURL is what the person's browser opens (single use).
	AuthorizationURL   string
	ExpiresAt          time.Time
	Scopes             []string
	Issuer             string
	RegistrationMethod domain.RegistrationMethod
}

// grantStatus is the status of the grant ref of row: the provider row
// carries its tenant-wide grant's; a connection's is read (cached like the
// provider). A grant that cannot be read counts as UNAUTHORIZED.
func (s *Service) grantStatus(ctx context.Context, row *repository.Provider, ref domain.GrantRef) domain.AuthStatus {
	if ref.User == "" {
		st, _ := row.AuthStatus()
		return st
	}
	cred, err := s.reads.GetCredential(ctx, ref)
	if err != nil {
		return domain.StatusUnauthorized
	}
	return cred.Status
}

// StartFor starts an authorization of ref's grant for its user, asking for
// scopes besides the discovered ones (grants.Starter: NOT_AUTHORIZED and
// step-up answers carry its URL).
func (s *Service) StartFor(ctx context.Context, ref domain.GrantRef, scopes []string) (string, time.Time, error) {
	st, err := s.Start(ctx, StartInput{Tenant: ref.Tenant, Provider: ref.Provider, User: ref.User, AdditionalScopes: scopes})
	if err != nil {
		return "", time.Time{}, err
	}
	return st.AuthorizationURL, st.ExpiresAt, nil
}

// Start discovers the provider's authorization server, picks the client
// registration, stores a single-use flow and returns the URL of mcpauth's
// authorize route for the person's browser.
func (s *Service) Start(ctx context.Context, in StartInput) (*Started, error) {
	st, _, err := s.start(ctx, in, restartOf{})
	return st, err
}

// start is Start, also for Restart; it returns the flow handle too.
func (s *Service) start(ctx context.Context, in StartInput, again restartOf) (*Started, string, error) {
	if err := validate.UserID("user", in.User); err != nil {
		return nil, "", err
	}
	if in.ReturnURL != "" {
		if err := validate.ReturnURL("return_url", in.ReturnURL, s.cfg.ReturnOrigins); err != nil {
			return nil, "", err
		}
	}
	if err := validate.Scopes("additional_scopes", in.AdditionalScopes); err != nil {
		return nil, "", err
	}
	if err := checkCompletionInput(in); err != nil {
		return nil, "", err
	}
	in.AdditionalScopes = completionScopes(in)
	row, err := s.reads.GetProvider(ctx, in.Tenant, in.Provider)
	if err != nil {
		return nil, "", err
	}
	d, err := s.opened.provider(s.cipher, row)
	if err != nil {
		return nil, "", err
	}
	if d.Kind != domain.KindAuthorizationCode {
		// Tokens of other kinds are obtained without a person (GetAccessToken).
		return nil, "", apperr.FailedPrecondition(domain.ReasonNotAuthorized,
			"the provider's credential kind %q needs no browser authorization: call GetAccessToken", d.Kind)
	}
	if d.Row.RequireCompletion && !in.RequireCompletion {
		// The provider's policy, whatever the caller asked: also the
		// URLs NOT_AUTHORIZED and step-up answers would carry, which have
		// no return URL and so are not handed out.
		if in.ReturnURL == "" {
			return nil, "", apperr.Invalid("return_url", "is required: the provider requires completion (require_completion), and the completion code is delivered to it")
		}
		in.RequireCompletion = true
	}
	tenant, id := d.Row.TenantID, d.Row.ID
	// The grant this flow completes: the provider's tenant-wide grant, or
	// for a USER provider the connection of the user the flow is for.
	ref := domain.TenantGrant(tenant, id)
	if d.Row.GrantScope.PerUser() {
		ref.User = in.User
	}
	ctx = audit.WithScope(ctx, tenant, id)
	failed := func(reason string) {
		s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventAuthStarted, Provider: id, User: ref.User, Actor: again.actor,
			Outcome: domain.OutcomeFailure, Reason: reason})
	}
	disc, err := s.discover(ctx, s.reads, d, ref, in.AdditionalScopes, nil)
	if err != nil {
		failed(reasonOf(err))
		return nil, "", err
	}
	if disc.probe.NotRequired {
		// A grant held already stays: tokens the server no longer asks
		// for do no harm, and it may ask again.
		if _, err := s.store.SetGrantStatus(ctx, ref, []domain.AuthStatus{domain.StatusUnauthorized, domain.StatusPending},
			domain.StatusNotRequired, "", s.cipher.PrimaryID()); err != nil {
			return nil, "", err
		}
		return &Started{Status: domain.StatusNotRequired}, "", nil
	}
	if ch := disc.challenge; ch != nil && ch.Error == "insufficient_scope" && ch.StepUpAttempts >= domain.MaxStepUpAttempts {
		failed(domain.ReasonStepUpExhausted)
		return nil, "", apperr.FailedPrecondition(domain.ReasonStepUpExhausted,
			"the MCP server still refuses with insufficient_scope after %d authorizations for more scopes; authorizing again will not help", ch.StepUpAttempts)
	}
	md := disc.md
	if err := flowSupported(md); err != nil {
		failed(reasonOf(err))
		return nil, "", err
	}
	if !md.SupportsS256() && !md.DefaultEndpoints {
		if !d.Compat.AllowMissingPKCE || len(md.CodeChallengeMethods) > 0 {
			failed(domain.ReasonPKCENotSupported)
			return nil, "", apperr.FailedPrecondition(domain.ReasonPKCENotSupported,
				"the authorization server does not advertise S256 PKCE (code_challenge_methods_supported); refusing to authorize without it")
		}
		s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventCompatRelaxation, Provider: id, Outcome: domain.OutcomeSuccess,
			Reason: domain.ReasonPKCEMetadataMissing, Details: map[string]string{"issuer": md.Issuer}})
	}
	reg, err := s.registration(ctx, s.reads, d, md, disc.scopes, false)
	if err != nil {
		failed(reasonOf(err))
		if apperr.KindOf(err) != apperr.KindFailedPrecondition {
			// A registration endpoint that started refusing: read the
			// metadata again next time rather than for the whole TTL.
			s.proto.Forget(d.URL.String())
			s.probes.drop(d.Row)
		}
		return nil, "", err
	}
	verifier, _, err := oauthclient.NewPKCE()
	if err != nil {
		return nil, "", apperr.Internal(err, "pkce")
	}
	state, err := oauthclient.NewState()
	if err != nil {
		return nil, "", apperr.Internal(err, "state")
	}
	handle, err := randomToken(32)
	if err != nil {
		return nil, "", apperr.Internal(err, "flow handle")
	}
	expires := s.now().Add(s.cfg.FlowTTL)
	rec := &flowRecord{
		Tenant: tenant, Provider: id, User: in.User, GrantUser: ref.User, Issuer: md.Issuer, IssSupported: md.IssParameterSupported,
		AuthEndpoint: md.AuthorizationEndpoint, TokenEndpoint: md.TokenEndpoint, RevocationURL: md.RevocationEndpoint, ClientID: reg.ClientID,
		RegMethod: reg.Method, AuthMethod: reg.AuthMethod, RedirectURI: s.cfg.CallbackURL, Resource: resourceParam(d, md),
		Scopes: disc.scopes, Verifier: verifier.Reveal(), State: state, ReturnURL: in.ReturnURL,
		URLHash: d.Row.URLHash, ExpiresAt: expires.Unix(), Extra: d.Compat.ExtraParams,
		// 2025-03-26 default endpoints advertise nothing, and that
		// revision requires PKCE: S256 is always sent to them.
		PKCEException:     !md.SupportsS256() && !md.DefaultEndpoints,
		RequireCompletion: in.RequireCompletion, ExpectedSubject: in.ExpectedSubject,
		RestartUntil: expires.Add(s.restartWindow()).Unix(), AddScopes: in.AdditionalScopes,
		StartedBy: again.actor, StartRequest: reqid.From(ctx),
	}
	if rec.StartedBy == "" {
		rec.StartedBy = caller.ActorName(ctx)
	}
	if again.until != 0 {
		rec.RestartUntil = again.until
	}
	if key := d.DPoPFor(md.DPoPSigningAlgs); key != nil {
		rec.DPoPJKT = key.Thumbprint()
	}
	if err := s.flows.put(ctx, flowKey("flow", handle), rec, s.cfg.FlowTTL); err != nil {
		return nil, "", err
	}
	// A held grant (authorized, or dead with its reason) keeps its status
	// until the new flow completes. A pending one is not written again:
	// concurrent starts would queue on the row's lock for nothing.
	if cur := s.grantStatus(ctx, d.Row, ref); cur == domain.StatusUnauthorized || cur == domain.StatusNotRequired {
		if _, err := s.store.SetGrantStatus(ctx, ref, []domain.AuthStatus{domain.StatusUnauthorized, domain.StatusNotRequired},
			domain.StatusPending, "", s.cipher.PrimaryID()); err != nil {
			return nil, "", err
		}
	}
	details := map[string]string{"issuer": md.Issuer, "registration": string(reg.Method), "user": in.User}
	if rec.Resource == "" {
		details["resource"] = "omitted"
	}
	if again.until != 0 {
		details["restarted"] = "true"
	}
	// A start changes nothing durable: its flow lives in the state store,
	// and the callback's event names who started it. Its event is written
	// without waiting (the Auditor's group commit batches a burst). A
	// compatibility exception used by the flow is waited for: nothing else
	// records it.
	s.audit.RecordAsync(ctx, audit.Event{Tenant: tenant, Type: domain.EventAuthStarted, Provider: id, User: ref.User, Actor: again.actor,
		Outcome: domain.OutcomeSuccess, Details: details})
	if d.Compat.ResourceMode == domain.ResourceOmit || d.Compat.ResourceMode == domain.ResourceOverride || len(d.Compat.ExtraParams) > 0 {
		s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventCompatRelaxation, Provider: id, Outcome: domain.OutcomeSuccess,
			Details: d.Compat.AuditDetails()})
	}
	return &Started{
		Status:             domain.StatusPending,
		AuthorizationURL:   s.cfg.AuthorizeURLPrefix + handle,
		ExpiresAt:          expires,
		Scopes:             disc.scopes,
		Issuer:             md.Issuer,
		RegistrationMethod: reg.Method,
	}, handle, nil
}

// BrowserStart is what the authorize route needs to redirect the browser:
// the authorization server URL, and the secret binding the browser to the
// flow under a name derived from the flow.
type BrowserStart struct {
	RedirectURL string
	// Binding names the flow's browser secret (derived from the state by a
	// hash, so it does not reveal it); the transport stores BrowserSecret
	// under it (a cookie, for MaxAge) and hands it back on the callback.
	// It is the secret, a dot, and the sealed restart hint (lostflow.go).
	Binding       string
	BrowserSecret string
	MaxAge        time.Duration
}

// Binding derives the browser binding's name from a state: one per flow, so
// two flows in one browser do not overwrite each other.
func Binding(state string) string {
	h := sha256.Sum256([]byte("mcpauth/v1/cookie\x00" + state))
	return base64.RawURLEncoding.EncodeToString(h[:6])
}

// BeginBrowser consumes the flow handle (single use), binds the flow to a
// fresh browser secret and returns the authorization server redirect.
func (s *Service) BeginBrowser(ctx context.Context, handle string) (*BrowserStart, error) {
	if handle == "" || len(handle) > 128 {
		return nil, errFlowGone
	}
	now := s.now()
	rec, err := s.flows.take(ctx, flowKey("flow", handle), now)
	if err != nil {
		return nil, err
	}
	browser, err := randomToken(32)
	if err != nil {
		return nil, apperr.Internal(err, "browser binding")
	}
	rec.Browser = browserHash(browser)
	ttl := time.Unix(rec.ExpiresAt, 0).Sub(now)
	if ttl <= 0 {
		return nil, errFlowGone
	}
	md := &oauthclient.Metadata{AuthorizationEndpoint: rec.AuthEndpoint, Issuer: rec.Issuer}
	if !rec.PKCEException {
		// Start checked the server advertises S256.
		md.CodeChallengeMethods = []string{"S256"}
	}
	authURL, err := oauthclient.AuthorizationURL(oauthclient.AuthRequest{
		Metadata:      md,
		PKCEException: rec.PKCEException,
		ClientID:      rec.ClientID,
		RedirectURI:   rec.RedirectURI,
		State:         rec.State,
		CodeChallenge: challengeOf(rec.Verifier),
		Scopes:        rec.Scopes,
		Resource:      rec.Resource,
		Extra:         rec.Extra,
		DPoPJKT:       rec.DPoPJKT,
	})
	if err != nil {
		return nil, apperr.Internal(err, "building authorization url")
	}
	cookie, err := s.flowCookie(rec, browser)
	if err != nil {
		return nil, apperr.Internal(err, "sealing the restart hint")
	}
	if err := s.flows.put(ctx, flowKey("state", rec.State), rec, ttl); err != nil {
		return nil, err
	}
	// The cookie outlives the flow until its restart deadline.
	keep := max(time.Unix(max(rec.RestartUntil, rec.ExpiresAt), 0).Sub(now), ttl)
	return &BrowserStart{RedirectURL: authURL, Binding: Binding(rec.State), BrowserSecret: cookie, MaxAge: keep}, nil
}

// challengeOf computes the S256 challenge of a verifier.
func challengeOf(verifier string) string {
	h := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// CallbackInput is the authorization response as the browser delivered it.
type CallbackInput struct {
	State            string
	Code             string
	Iss              string
	IssPresent       bool
	Error            string
	ErrorDescription string
	// BrowserSecret returns the browser secret the browser holds under a
	// binding name (see BrowserStart), or "".
	BrowserSecret func(binding string) string
}

// CallbackResult is the outcome of a callback.
type CallbackResult struct {
	OK bool
	// Reason is a stable code for failures (domain.Reason...).
	Reason string
	// Detail is the authorization server's error and description, already
	// cut and stripped of control characters (escape it when shown); never
	// set after an issuer mismatch.
	Detail string
	// Tenant and Provider name the provider, when known.
	Tenant, Provider string
	// ReturnURL is where the flow's starter asked the browser to go back.
	ReturnURL string
	// CompletionCode, when set, is the one-time code of a parked grant
	// (require_completion): the browser takes it to ReturnURL.
	CompletionCode string
	// Restart, set when the flow was lost or expired and this browser may
	// start it again, is the binding to pass to Restart; the flow cookie
	// must then be kept.
	Restart string
}

// Callback completes a flow: it checks the browser binding on a read of the
// state's record, then consumes the record atomically (retry-safe for this
// browser, see consumeFlow) and checks the issuer
// (RFC 9207) before the code goes anywhere, exchanges the code once, and
// stores the tokens encrypted. A request from another browser consumes
// nothing: whoever learns a state cannot cancel someone else's
// authorization with it.
func (s *Service) Callback(ctx context.Context, in CallbackInput) *CallbackResult {
	if in.State == "" || len(in.State) > 512 {
		return &CallbackResult{Reason: domain.ReasonMissingState}
	}
	rec, res := s.consumeFlow(ctx, in)
	if res != nil {
		return res
	}
	ctx = audit.WithScope(ctx, rec.Tenant, rec.Provider)
	failed := func(reason string) {
		s.audit.Record(ctx, rec.event(domain.EventCallbackFailed, domain.OutcomeFailure, reason, nil))
	}
	fail := func(reason, detail string) *CallbackResult {
		failed(reason)
		// A pending grant goes back to unauthorized; a held one keeps its
		// tokens and status.
		_, _ = s.store.SetGrantStatus(ctx, rec.grant(), []domain.AuthStatus{domain.StatusPending},
			domain.StatusUnauthorized, reason, s.cipher.PrimaryID())
		return &CallbackResult{Reason: reason, Detail: detail, Tenant: rec.Tenant, Provider: rec.Provider, ReturnURL: rec.ReturnURL}
	}
	if err := oauthclient.CheckIssuer(rec.Issuer, rec.IssSupported, in.Iss, in.IssPresent); err != nil {
		// Mix-up defence: nothing the response says is shown or used.
		return fail(domain.ReasonIssuerMismatch, "")
	}
	if in.Error != "" {
		return fail(domain.ReasonAuthorizationDenied, upstreamDetail(in.Error, in.ErrorDescription))
	}
	if in.Code == "" || len(in.Code) > 4096 {
		return fail(domain.ReasonMissingCode, "")
	}
	row, err := s.store.GetProvider(ctx, rec.Tenant, rec.Provider)
	if err != nil {
		return fail(domain.ReasonProviderGone, "")
	}
	if row.URLHash != rec.URLHash {
		return fail(domain.ReasonProviderChanged, "")
	}
	if row.RequireCompletion && !rec.RequireCompletion {
		// The provider came to require completion after this flow
		// started: its URL was handed out without the platform's
		// completion step (perhaps the very link forwarded to someone
		// else the setting is meant to stop), so the code goes nowhere.
		return fail(domain.ReasonProviderChanged, "")
	}
	reg, err := s.flowRegistration(ctx, row, rec)
	if err != nil {
		return fail(domain.ReasonClientChanged, "")
	}
	if rec.DPoPJKT != "" {
		if reg.DPoP, err = s.flowDPoPKey(row, rec); err != nil {
			return fail(domain.ReasonClientChanged, "")
		}
	}
	md := &oauthclient.Metadata{Issuer: rec.Issuer, TokenEndpoint: rec.TokenEndpoint, AuthorizationEndpoint: rec.AuthEndpoint}
	tokens, err := s.proto.Exchange(ctx, md, reg, secret.New(in.Code), secret.New(rec.Verifier), rec.RedirectURI, rec.Resource, rec.Scopes)
	if err != nil {
		if errors.Is(err, oauthclient.ErrInvalidClient) && reg.Method == domain.RegDynamic {
			// The server evicted our registration: register again next time.
			_ = s.store.DeleteClientRegistration(ctx, rec.Tenant, rec.Provider, rec.Issuer)
		}
		s.log.WarnContext(ctx, "code exchange failed", "tenant", rec.Tenant, "provider", rec.Provider, "err", err.Error())
		if u, uerr := vault.OpenURL(s.cipher, row); uerr == nil {
			s.proto.Forget(u.String())
		}
		// The token endpoint's error code (never its body or description)
		// goes to the audit event; the status carries the reason.
		details := tokenErrorDetails(err)
		s.audit.Record(ctx, rec.event(domain.EventCallbackFailed, domain.OutcomeFailure, domain.ReasonTokenExchangeFailed, details))
		_, _ = s.store.SetGrantStatus(ctx, rec.grant(), []domain.AuthStatus{domain.StatusPending},
			domain.StatusUnauthorized, domain.ReasonTokenExchangeFailed, s.cipher.PrimaryID())
		return &CallbackResult{Reason: domain.ReasonTokenExchangeFailed, Tenant: rec.Tenant, Provider: rec.Provider, ReturnURL: rec.ReturnURL}
	}
	grant := vault.Grant{Issuer: rec.Issuer, TokenEndpoint: rec.TokenEndpoint, RevocationEndpoint: rec.RevocationURL,
		RegMethod: reg.Method, ClientID: reg.ClientID, AuthMethod: reg.AuthMethod, Resource: rec.Resource, DPoPJKT: rec.DPoPJKT}
	if len(tokens.Scopes) == 0 {
		tokens.Scopes = rec.Scopes
	}
	if res := s.bindCompletion(ctx, rec, row, reg, grant, tokens, fail); res != nil {
		return res
	}
	succeeded := audit.Rows(ctx, s.now(), rec.event(domain.EventCallbackSucceeded, domain.OutcomeSuccess, "", callbackDetails(rec, tokens)))
	if err := s.grants.StoreNew(ctx, row, rec.grant().User, grant, tokens, succeeded...); err != nil {
		s.log.ErrorContext(ctx, "storing tokens failed", "tenant", rec.Tenant, "provider", rec.Provider, "err", err.Error())
		return fail(domain.ReasonStoreFailed, "")
	}
	// An authorization completed while an insufficient_scope refusal was
	// outstanding counts towards the step-up bound.
	if err := s.store.CountStepUp(ctx, rec.grant()); err != nil {
		s.log.WarnContext(ctx, "counting a step-up failed", "tenant", rec.Tenant, "provider", rec.Provider, "err", err.Error())
	}
	return &CallbackResult{OK: true, Tenant: rec.Tenant, Provider: rec.Provider, ReturnURL: rec.ReturnURL}
}

// callbackDetails describes a completed authorization for the audit log:
// the issuer, the scopes and, for DPoP-bound tokens, the key's thumbprint.
func callbackDetails(rec *flowRecord, t *oauthclient.Tokens) map[string]string {
	d := map[string]string{"issuer": rec.Issuer, "scopes": strings.Join(t.Scopes, " ")}
	if rec.DPoPJKT != "" {
		d["token_type"], d["dpop_jkt"] = t.TokenType, rec.DPoPJKT
	}
	return d
}

// tokenErrorDetails describes a failed token request for the audit log by
// the token endpoint's error code (RFC 6749 section 5.2) or HTTP status,
// never its body or description.
func tokenErrorDetails(err error) map[string]string {
	var oe *oauthclient.OAuthError
	var se *oauthclient.StatusError
	var te *oauthclient.TemporaryError
	switch {
	case errors.Is(err, oauthclient.ErrInvalidGrant):
		return map[string]string{"error": "invalid_grant"}
	case errors.Is(err, oauthclient.ErrInvalidClient):
		return map[string]string{"error": "invalid_client"}
	case errors.As(err, &oe):
		return map[string]string{"error": oe.Code}
	case errors.As(err, &te) && te.Status == 0:
		return map[string]string{"error": "unreachable"}
	case errors.As(err, &te):
		return map[string]string{"error": "temporarily_unavailable", "http_status": strconv.Itoa(te.Status)}
	case errors.As(err, &se):
		return map[string]string{"http_status": strconv.Itoa(se.Status)}
	}
	return nil
}

// browserMatches reports whether the browser holds the secret the flow was
// bound to when it began (compared as hashes, in constant time).
func browserMatches(rec *flowRecord, held string) bool {
	if held == "" || rec.Browser == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(browserHash(held)), []byte(rec.Browser)) == 1
}

// browserHash is what a flow keeps of its browser's secret.
func browserHash(secret string) string {
	bh := sha256.Sum256([]byte(secret))
	return base64.RawURLEncoding.EncodeToString(bh[:])
}

// flowDPoPKey is the provider's DPoP key when it is still the one the
// flow was started with.
func (s *Service) flowDPoPKey(row *repository.Provider, rec *flowRecord) (*dpop.Key, error) {
	d, err := vault.OpenProvider(s.cipher, row)
	if err != nil {
		return nil, err
	}
	if d.DPoP == nil || d.DPoP.Thumbprint() != rec.DPoPJKT {
		return nil, errors.New("the DPoP key changed during the flow")
	}
	return d.DPoP, nil
}

// flowRegistration re-reads the client the flow was started with; secrets
// never travel through the flow store.
func (s *Service) flowRegistration(ctx context.Context, row *repository.Provider, rec *flowRecord) (*oauthclient.Registration, error) {
	switch rec.RegMethod {
	case domain.RegPreRegistered:
		d, err := vault.OpenProvider(s.cipher, row)
		if err != nil {
			return nil, err
		}
		if row.ClientID != rec.ClientID {
			return nil, errors.New("pre-registered client changed")
		}
		return &oauthclient.Registration{Method: domain.RegPreRegistered, ClientID: row.ClientID, ClientSecret: d.ClientSecret, AuthMethod: rec.AuthMethod, RedirectURI: rec.RedirectURI, ClientKey: d.ClientKey}, nil
	case domain.RegCIMD:
		if rec.AuthMethod == oauthclient.AuthPrivateKeyJWT {
			// The provider's own document: its key, read again.
			d, err := vault.OpenProvider(s.cipher, row)
			if err != nil {
				return nil, err
			}
			if !keyedCIMD(d) || s.cfg.ProviderMetadataURL == nil || s.cfg.ProviderMetadataURL(row.TenantID, row.ID) != rec.ClientID {
				return nil, errors.New("the provider's client metadata document client changed")
			}
			return &oauthclient.Registration{Method: domain.RegCIMD, ClientID: rec.ClientID, AuthMethod: rec.AuthMethod, RedirectURI: rec.RedirectURI,
				ClientKey: d.ClientKey}, nil
		}
		return &oauthclient.Registration{Method: domain.RegCIMD, ClientID: rec.ClientID, AuthMethod: oauthclient.AuthNone, RedirectURI: rec.RedirectURI}, nil
	case domain.RegDynamic:
		stored, err := s.store.GetClientRegistration(ctx, rec.Tenant, rec.Provider, rec.Issuer)
		if err != nil {
			return nil, err
		}
		if stored.ClientID != rec.ClientID {
			return nil, errors.New("dynamic registration changed")
		}
		reg, err := vault.OpenRegistration(s.cipher, stored)
		if err != nil {
			return nil, err
		}
		if rec.AuthMethod != "" {
			reg.AuthMethod = rec.AuthMethod
		}
		return reg, nil
	}
	return nil, fmt.Errorf("unknown registration method %q", rec.RegMethod)
}

// upstreamDetail shortens an authorization server's error for display: cut
// and stripped of control characters (the page escapes it).
func upstreamDetail(code, desc string) string {
	clean := func(s string, n int) string {
		s = strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return -1
			}
			return r
		}, s)
		if len(s) > n {
			// Cut at a character boundary: the page must stay valid UTF-8.
			for n > 0 && !utf8.RuneStart(s[n]) {
				n--
			}
			s = s[:n] + "…"
		}
		return s
	}
	out := clean(code, 64)
	if desc != "" {
		out += ": " + clean(desc, 200)
	}
	return out
}

// Diagnosis reports discovery and registration without starting a flow.
type Diagnosis struct {
	// Steps are the requests discovery made, with the provider's URL path
	// hidden.
	Steps                             []oauthclient.Step
	BlockingProblem                   string
	Status                            domain.AuthStatus
	Ready                             bool
	ResourceMetadataURL               string
	Issuer                            string
	PKCES256Supported                 bool
	ClientIDMetadataDocumentSupported bool
	DynamicRegistrationSupported      bool
	IssuerParameterSupported          bool
	Scopes                            []string
	RegistrationMethod                domain.RegistrationMethod
	// What the server advertises for the credential kinds, and what the
	// provider will use (diagnose_kinds.go).
	GrantTypesSupported      []string
	TokenEndpointAuthMethods []string
	CredentialKind           domain.CredentialKind
	GrantType                string
	TokenEndpointAuthMethod  string
	// DPoPSigningAlgs is the server's dpop_signing_alg_values_supported
	// and DPoPWillBeUsed whether token requests will carry DPoP proofs.
	DPoPSigningAlgs []string
	DPoPWillBeUsed  bool
	// For an enterprise-managed provider: its identity provider's issuer,
	// what that advertises, and the client authentication mcpauth will use
	// there.
	IdPIssuer      string
	IdPGrantTypes  []string
	IdPAuthMethods []string
	IdPAuthMethod  string
	// GrantProfiles is the authorization server's
	// authorization_grant_profiles_supported.
	GrantProfiles []string
}

// Diagnose runs discovery and registration selection without starting a
// flow and reports every step in plain words.
func (s *Service) Diagnose(ctx context.Context, tenant, id string) (*Diagnosis, error) {
	d, err := loadProvider(ctx, s.store, s.cipher, tenant, id)
	if err != nil {
		return nil, err
	}
	ctx = audit.WithScope(ctx, d.Row.TenantID, d.Row.ID)
	tr := &oauthclient.Trace{}
	out := &Diagnosis{}
	// A diagnosis reads the servers as they are now, and what it reads
	// replaces what StartAuthorization had cached.
	s.proto.Forget(d.URL.String())
	s.probes.drop(d.Row)
	disc, derr := s.discover(ctx, s.store, d, domain.TenantGrant(tenant, id), nil, tr)
	// The provider's URL path can hold a secret (some servers put an API
	// key there), and masked views never show it: nor does the trace.
	hide := func(u string) string { return u }
	if p := strings.TrimRight(d.URL.EscapedPath(), "/"); p != "" {
		hide = func(u string) string { return strings.ReplaceAll(u, p, "/******") }
	}
	for _, st := range tr.Steps {
		st.URL, st.Detail = hide(st.URL), hide(st.Detail)
		out.Steps = append(out.Steps, st)
	}
	if derr != nil {
		out.BlockingProblem = apperr.PublicMessage(derr)
		return out, nil
	}
	if disc.probe.NotRequired {
		out.Status = domain.StatusNotRequired
		out.Ready = true
		return out, nil
	}
	md := disc.md
	out.ResourceMetadataURL = hide(md.ResourceMetadataURL)
	out.Issuer = md.Issuer
	out.PKCES256Supported = md.SupportsS256()
	out.ClientIDMetadataDocumentSupported = md.ClientIDMetadataDocumentSupported
	out.DynamicRegistrationSupported = md.RegistrationEndpoint != ""
	out.IssuerParameterSupported = md.IssParameterSupported
	out.Scopes = disc.scopes
	out.Status, _ = d.Row.AuthStatus()
	if diagnoseKind(out, d, md) {
		if d.Kind == domain.KindEnterpriseManaged {
			s.diagnoseIdP(ctx, out, d)
		}
		return out, nil
	}
	if ch := disc.challenge; ch != nil && ch.Error == "insufficient_scope" && ch.StepUpAttempts >= domain.MaxStepUpAttempts {
		out.BlockingProblem = fmt.Sprintf("the MCP server still refuses with insufficient_scope after %d authorizations for more scopes", ch.StepUpAttempts)
		return out, nil
	}
	if err := flowSupported(md); err != nil {
		out.BlockingProblem = apperr.PublicMessage(err)
		return out, nil
	}
	switch {
	case md.DefaultEndpoints:
		// 2025-03-26 default endpoints: S256 is always sent.
		out.PKCES256Supported = true
		fallthrough
	default:
		reg, err := s.registration(ctx, s.store, d, md, disc.scopes, true)
		if err != nil {
			out.BlockingProblem = apperr.PublicMessage(err)
		} else {
			out.RegistrationMethod = reg.Method
			out.TokenEndpointAuthMethod = reg.AuthMethod
			out.Ready = true
		}
	case !md.SupportsS256() && !(d.Compat.AllowMissingPKCE && len(md.CodeChallengeMethods) == 0):
		out.BlockingProblem = "the authorization server does not advertise S256 PKCE; mcpauth refuses to authorize without it (set compatibility.allow_missing_pkce_metadata only if you know the server supports S256 anyway)"
	}
	return out, nil
}
