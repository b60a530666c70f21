// Package providers is the provider registry use case: create, read, list,
// update and delete a tenant's MCP servers, with every sensitive field
// encrypted and only masked views returned.
package providers

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// Bounds of the per-provider settings.
const (
	DefaultTimeout        = 30 * time.Second
	MinTimeout            = time.Second
	MaxTimeout            = 10 * time.Minute
	DefaultSSEReadTimeout = 5 * time.Minute
	MaxSSEReadTimeout     = time.Hour
	maxClientIDLen        = 256
	maxClientSecretLen    = 1024
	maxExtraParams        = 16
)

// Store persists providers. *repository.Store implements it.
type Store interface {
	// The write methods take the audit events of the change and store them
	// in its transaction.
	CreateProvider(ctx context.Context, p *repository.Provider, events ...*repository.AuditEvent) error
	GetProvider(ctx context.Context, tenant, id string) (*repository.Provider, error)
	// GetProviderPublic reads a provider's plaintext columns only, from
	// the database (the unauthenticated JWKS route).
	GetProviderPublic(ctx context.Context, tenant, id string) (*repository.ProviderPublic, error)
	ListProviders(ctx context.Context, tenant, afterID string, limit int) ([]repository.Provider, error)
	FindProviderByURLHash(ctx context.Context, tenant string, hashes []string) (*repository.Provider, error)
	UpdateProvider(ctx context.Context, p *repository.Provider, expectedVersion int64, events ...*repository.AuditEvent) error
	// UpdateProviderResettingCredentials drops everything tied to the old
	// server (tokens, client registrations, tool list) in the same
	// transaction as the update.
	UpdateProviderResettingCredentials(ctx context.Context, p *repository.Provider, expectedVersion int64, events ...*repository.AuditEvent) error
	DeleteProvider(ctx context.Context, tenant, id string, expectedVersion int64, events ...*repository.AuditEvent) error
	SetGrantStatus(ctx context.Context, g domain.GrantRef, from []domain.AuthStatus, to domain.AuthStatus, reason string, keyID uint32, events ...*repository.AuditEvent) (bool, error)
}

var _ Store = (*repository.Store)(nil)

// Revoker revokes a provider's tokens at its authorization server when
// they are forgotten. PrepareRevoke reads the grant held now and returns
// the revocation to run once the change that forgets it has committed (so a
// refused change never leaves a grant revoked at the server but still
// stored); the revocation reports whether the server confirmed, and its
// failures are audited by the implementation and never block the caller.
type Revoker interface {
	PrepareRevokeProvider(ctx context.Context, tenant, id string) func(context.Context) bool
}

// Prober checks that an MCP server answers (any 2xx, or 401/403 asking for
// authorization) before a provider is created with connectivity validation,
// and reports whether it asked for authorization. The context carries the
// tenant and provider audit scope, so a blocked request is audited for the
// tenant.
type Prober interface {
	ProbeServer(ctx context.Context, serverURL string, headers map[string]string) (authRequired bool, err error)
}

// Clock tells the time.
type Clock func() time.Time

// Service is the provider registry.
type Service struct {
	store   Store
	reads   vault.ProviderGetter
	cipher  vault.Cipher
	audit   audit.Recorder
	log     *slog.Logger
	now     Clock
	revoker Revoker
	prober  Prober
	// workload checks workload identity token paths; nil disables them.
	workload WorkloadPolicy
	// jwksURL is where a provider's public key is served; nil or "" when
	// the service has no public URL.
	jwksURL func(tenant, id string) string
	// cimdURL is where a provider's own Client ID Metadata Document is
	// served; nil when none is.
	cimdURL func(tenant, id string) string
}

// Deps are what New needs. Revoker and Prober are optional; Now defaults to
// time.Now.
type Deps struct {
	Store Store
	// Reads serves Get, possibly from a short-lived cache
	// (*repository.CachedReads: this replica's changes are seen at once,
	// other replicas' within its TTL); nil reads Store.
	Reads   vault.ProviderGetter
	Cipher  vault.Cipher
	Audit   audit.Recorder
	Log     *slog.Logger
	Now     Clock
	Revoker Revoker
	Prober  Prober
	// Workload allows workload identity token files; nil allows none.
	Workload WorkloadPolicy
	// JWKSURL returns the URL of a provider's public JWKS document.
	JWKSURL func(tenant, id string) string
	// ClientMetadataURL returns the URL of a provider's own Client ID
	// Metadata Document; nil when mcpauth serves none (its public URL is
	// not https). With it, an authorization-code provider may have a
	// private_key_jwt key without a client_id.
	ClientMetadataURL func(tenant, id string) string
}

// New returns the provider registry.
func New(d Deps) (*Service, error) {
	if d.Store == nil || d.Cipher == nil || d.Audit == nil || d.Log == nil {
		return nil, errors.New("providers: store, cipher, audit and log are required")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Reads == nil {
		d.Reads = d.Store
	}
	return &Service{store: d.Store, reads: d.Reads, cipher: d.Cipher, audit: d.Audit, log: d.Log, now: d.Now, revoker: d.Revoker, prober: d.Prober,
		workload: d.Workload, jwksURL: d.JWKSURL, cimdURL: d.ClientMetadataURL}, nil
}

// OAuthClient is a pre-registered OAuth client.
type OAuthClient struct {
	ClientID     string
	ClientSecret string
	Scopes       []string
	// Key, when set, is a private_key_jwt key to store.
	Key *ClientKeyInput
}

// Fields are a provider's settable fields, in clear. A nil timeout means
// the default.
type Fields struct {
	DisplayName      string
	ServerIdentifier string
	ServerURL        string
	Headers          map[string]string
	Icon             string
	Timeout          *time.Duration
	SSEReadTimeout   *time.Duration
	OAuthClient      OAuthClient
	Compat           domain.Compat
	// CredentialKind is how the token is obtained.
	CredentialKind domain.CredentialKind
	// StaticAuthorization is a static API-key Authorization value.
	StaticAuthorization string
	// AssertionFile is where a JWT bearer provider reads its workload token.
	AssertionFile string
	// DPoP is the provider's DPoP setting (update path "dpop").
	DPoP DPoPInput
	// EnterpriseIdP is an enterprise-managed provider's identity provider.
	EnterpriseIdP *EnterpriseIdPInput
	// GrantScope says whose grants the provider holds ("": TENANT). Set on
	// create; an update may name it (path "grant_scope") only with the
	// value it has.
	GrantScope domain.GrantScope
	// SharedToolList declares, for a USER provider, that its server lists
	// the same tools to every user (path "shared_tool_list").
	SharedToolList bool
	// RequireCompletion makes every authorization flow of the provider
	// need CompleteAuthorization (path "require_completion").
	RequireCompletion bool
}

// The update paths: the fields Update can change. Names follow the API's
// field paths inside a provider.
const (
	PathDisplayName       = "display_name"
	PathServerIdentifier  = "server_identifier"
	PathServerURL         = "server_url"
	PathHeaders           = "headers"
	PathIcon              = "icon"
	PathTimeout           = "timeout"
	PathSSEReadTimeout    = "sse_read_timeout"
	PathOAuthClient       = "oauth_client"
	PathOAuthClientID     = "oauth_client.client_id"
	PathOAuthClientSecret = "oauth_client.client_secret"
	PathOAuthClientScopes = "oauth_client.scopes"
	PathCompatibility     = "compatibility"
	// PathGrantScope is accepted by Update only with the provider's
	// current value: the grant scope is immutable.
	PathGrantScope = "grant_scope"
	// PathSharedToolList is the USER provider's shared tool list setting.
	PathSharedToolList = "shared_tool_list"
	// PathRequireCompletion is the provider's completion requirement.
	PathRequireCompletion = "require_completion"
)

// UpdatablePaths lists every path Update accepts.
var UpdatablePaths = []string{PathDisplayName, PathServerIdentifier, PathServerURL, PathHeaders, PathIcon, PathTimeout,
	PathSSEReadTimeout, PathOAuthClient, PathOAuthClientID, PathOAuthClientSecret, PathOAuthClientScopes, PathCompatibility,
	PathCredentialKind, PathStaticAuthorization, PathWorkloadIdentity, PathOAuthClientKey, PathEnterpriseIdP, PathEnterpriseIdPSecret, PathDPoP,
	PathSharedToolList, PathRequireCompletion}

// HeaderInfo describes one custom header without its value.
type HeaderInfo struct {
	Name        string
	ValueSet    bool
	Fingerprint string
}

// OAuthClientView is a pre-registered client without its secret.
type OAuthClientView struct {
	ClientID        string
	ClientSecretSet bool
	Scopes          []string
	// Key describes the private_key_jwt key, if any.
	Key *ClientKeyView
	// MetadataDocumentURL is the provider's own Client ID Metadata
	// Document, its client_id at servers that support such documents,
	// when it has a key and no ClientID.
	MetadataDocumentURL string
}

// View is the masked view of a provider: no secret, no full URL.
type View struct {
	// GrantScope is domain.ScopeUser for a provider whose grants belong
	// to end users, empty for a tenant-wide one.
	GrantScope domain.GrantScope
	// SharedToolList is set when the USER provider's tool list is one for
	// every connected user.
	SharedToolList bool
	// RequireCompletion is set when every flow needs CompleteAuthorization.
	RequireCompletion bool
	Tenant            string
	ID                string
	DisplayName       string
	ServerIdentifier  string
	MaskedServerURL   string
	Icon              string
	Timeout           time.Duration
	SSEReadTimeout    time.Duration
	Status            domain.AuthStatus
	StatusReason      string
	Headers           []HeaderInfo
	OAuthClient       *OAuthClientView
	Compat            domain.Compat
	CredentialKind    domain.CredentialKind
	// StaticAuthorization describes a stored static Authorization value.
	StaticAuthorization *HeaderInfo
	AssertionFile       string
	// EnterpriseIdP describes an enterprise-managed provider's identity
	// provider.
	EnterpriseIdP *EnterpriseIdPView
	// DPoP is the DPoP setting, nil when DPoP was never configured.
	DPoP       *DPoPView
	CreateTime time.Time
	UpdateTime time.Time
	Etag       string
}

func invalid(field, rule string) error { return apperr.Invalid(field, "%s", rule) }

// input is a validated provider, still in clear.
type input struct {
	displayName, serverIdentifier, icon string
	serverURL                           *url.URL
	headers                             map[string]string
	timeout, sseReadTimeout             time.Duration
	clientID, clientSecret              string
	scopes                              []string
	compat                              domain.Compat
}

// validateFields checks the fields named in paths (all fields when paths is
// nil) of f and returns the first precise error.
func validateFields(f *Fields, paths []string) (*input, error) {
	has := func(path string) bool {
		if paths == nil {
			return true
		}
		for _, q := range paths {
			if q == path || strings.HasPrefix(path, q+".") || strings.HasPrefix(q, path+".") {
				return true
			}
		}
		return false
	}
	in := &input{}
	if has(PathDisplayName) {
		if err := validate.DisplayName("provider.display_name", f.DisplayName); err != nil {
			return nil, err
		}
		in.displayName = strings.TrimSpace(f.DisplayName)
	}
	if has(PathServerIdentifier) {
		if err := validate.Identifier("provider.server_identifier", f.ServerIdentifier); err != nil {
			return nil, err
		}
		in.serverIdentifier = f.ServerIdentifier
	}
	if has(PathServerURL) {
		u, err := validate.ServerURL("provider.server_url", f.ServerURL)
		if err != nil {
			return nil, err
		}
		in.serverURL = u
	}
	if has(PathHeaders) {
		h, err := validate.Headers("provider.headers", f.Headers)
		if err != nil {
			return nil, err
		}
		in.headers = h
	}
	if has(PathIcon) {
		if err := validate.Icon("provider.icon", f.Icon); err != nil {
			return nil, err
		}
		in.icon = f.Icon
	}
	if has(PathTimeout) {
		d, err := duration("provider.timeout", f.Timeout, DefaultTimeout, MinTimeout, MaxTimeout)
		if err != nil {
			return nil, err
		}
		in.timeout = d
	}
	if has(PathSSEReadTimeout) {
		d, err := duration("provider.sse_read_timeout", f.SSEReadTimeout, DefaultSSEReadTimeout, MinTimeout, MaxSSEReadTimeout)
		if err != nil {
			return nil, err
		}
		in.sseReadTimeout = d
	}
	if has(PathOAuthClient) {
		c := f.OAuthClient
		if err := clientIDRule("provider.oauth_client.client_id", c.ClientID); err != nil {
			return nil, err
		}
		if n := len(c.ClientSecret); n > maxClientSecretLen {
			return nil, invalid("provider.oauth_client.client_secret", fmt.Sprintf("must be at most %d bytes", maxClientSecretLen))
		}
		if strings.ContainsAny(c.ClientSecret, "\r\n\x00") {
			return nil, invalid("provider.oauth_client.client_secret", "must not contain control characters")
		}
		if c.ClientSecret != "" && c.ClientID == "" && (paths == nil || slices.Contains(paths, PathOAuthClient)) {
			return nil, invalid("provider.oauth_client.client_id", "is required when a client secret is given")
		}
		if err := validate.Scopes("provider.oauth_client.scopes", c.Scopes); err != nil {
			return nil, err
		}
		in.clientID, in.clientSecret, in.scopes = c.ClientID, c.ClientSecret, c.Scopes
	}
	if has(PathCompatibility) {
		c, err := validateCompat(f.Compat)
		if err != nil {
			return nil, err
		}
		in.compat = c
	}
	return in, nil
}

func clientIDRule(field, id string) error {
	if len(id) > maxClientIDLen {
		return invalid(field, fmt.Sprintf("must be at most %d bytes", maxClientIDLen))
	}
	for _, r := range id {
		if r < 0x21 || r > 0x7e {
			return invalid(field, "must be printable ASCII without spaces")
		}
	}
	return nil
}

func duration(field string, d *time.Duration, def, min, max time.Duration) (time.Duration, error) {
	if d == nil {
		return def, nil
	}
	if err := validate.Timeout(field, *d, min, max); err != nil {
		return 0, err
	}
	return *d, nil
}

func validateCompat(c domain.Compat) (domain.Compat, error) {
	out := domain.Compat{ResourceMode: c.ResourceMode, AllowMissingPKCE: c.AllowMissingPKCE, TokenEndpointAuth: c.TokenEndpointAuth}
	switch c.ResourceMode {
	case 0, domain.ResourceCanonical, domain.ResourceOmit:
		if c.ResourceOverride != "" {
			return out, invalid("provider.compatibility.resource_override", "is only allowed with resource_mode OVERRIDE")
		}
	case domain.ResourceOverride:
		u, err := url.Parse(c.ResourceOverride)
		if err != nil || !u.IsAbs() || u.Fragment != "" || len(c.ResourceOverride) > 2048 {
			return out, invalid("provider.compatibility.resource_override", "must be an absolute URI without fragment, at most 2048 bytes")
		}
		out.ResourceOverride = c.ResourceOverride
	default:
		return out, invalid("provider.compatibility.resource_mode", "is not a known mode")
	}
	switch c.TokenEndpointAuth {
	case "", "client_secret_basic", "client_secret_post", "none":
	default:
		return out, invalid("provider.compatibility.token_endpoint_auth_method", "must be client_secret_basic, client_secret_post or none")
	}
	if len(c.ExtraParams) > maxExtraParams {
		return out, invalid("provider.compatibility.extra_authorization_params", fmt.Sprintf("must have at most %d entries", maxExtraParams))
	}
	// Sorted, so the same profile is always refused on the same entry.
	for _, k := range slices.Sorted(maps.Keys(c.ExtraParams)) {
		v := c.ExtraParams[k]
		field := fmt.Sprintf("provider.compatibility.extra_authorization_params[%q]", truncate(k, 64))
		if k == "" || len(k) > 64 || strings.IndexFunc(k, func(r rune) bool {
			return !(r == '_' || r == '-' || r == '.' || r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r)))
		}) >= 0 {
			return out, invalid(field, "name must be 1-64 characters of [A-Za-z0-9._-]")
		}
		// The list is the authorization request builder's own, so what is
		// accepted here is what it sends.
		if oauthclient.ReservedParameter(k) {
			return out, invalid(field, "is a protocol parameter and cannot be overridden")
		}
		if len(v) > 512 || strings.ContainsAny(v, "\r\n\x00") {
			return out, invalid(field, "value must be at most 512 bytes without control characters")
		}
		if out.ExtraParams == nil {
			out.ExtraParams = map[string]string{}
		}
		out.ExtraParams[k] = v
	}
	return out, nil
}

// truncate cuts s to at most n bytes for an error's field path, so an
// oversized name cannot flood the error.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// newID returns a random resource id: "p" and 19 base32 characters.
func newID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	b := make([]byte, 19)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[b[i]&31]
	}
	return "p" + string(b)
}

// sealField encrypts one field of a provider.
func (s *Service) sealField(tenant, id, field string, plaintext []byte) ([]byte, error) {
	ct, err := s.cipher.Seal(keyring.Scope{Tenant: tenant, Provider: id, Field: field}, plaintext)
	if err != nil {
		return nil, apperr.Internal(err, "sealing %s", field)
	}
	return ct, nil
}

// applyURL sets the encrypted URL and its keyed hash on row.
func (s *Service) applyURL(row *repository.Provider, u *url.URL) error {
	ct, err := s.sealField(row.TenantID, row.ID, vault.FieldServerURL, []byte(u.String()))
	if err != nil {
		return err
	}
	row.ServerURL = ct
	row.URLHash = s.cipher.Fingerprint(row.TenantID, vault.PurposeURL, []byte(validate.NormalizeURL(u)))
	return nil
}

func (s *Service) applyHeaders(row *repository.Provider, h map[string]string) error {
	if len(h) == 0 {
		row.Headers = nil
		return nil
	}
	raw, err := json.Marshal(h)
	if err != nil {
		return apperr.Internal(err, "encoding headers")
	}
	row.Headers, err = s.sealField(row.TenantID, row.ID, vault.FieldHeaders, raw)
	return err
}

func (s *Service) applyClientSecret(row *repository.Provider, secretValue string) error {
	if secretValue == "" {
		row.ClientSecret = nil
		return nil
	}
	var err error
	row.ClientSecret, err = s.sealField(row.TenantID, row.ID, vault.FieldClientSecret, []byte(secretValue))
	return err
}

// conflictFields names the API field of each uniqueness rule.
var conflictFields = map[repository.Unique]string{
	repository.UniqueID:               "provider_id",
	repository.UniqueDisplayName:      "provider.display_name",
	repository.UniqueServerIdentifier: "provider.server_identifier",
	repository.UniqueServerURL:        "provider.server_url",
}

// storeErr names the field of a uniqueness conflict.
func storeErr(err error) error {
	var c *repository.ConflictError
	if errors.As(err, &c) {
		return apperr.AlreadyExists(conflictFields[c.Rule], "%s", c.Error())
	}
	return err
}

// checkURLUnique refuses a URL another provider of the tenant already uses,
// comparing keyed hashes of the normalised URL under every key.
func (s *Service) checkURLUnique(ctx context.Context, tenant, selfID string, u *url.URL) error {
	hashes := s.cipher.Fingerprints(tenant, vault.PurposeURL, []byte(validate.NormalizeURL(u)))
	other, err := s.store.FindProviderByURLHash(ctx, tenant, hashes)
	if err != nil {
		return err
	}
	if other != nil && other.ID != selfID {
		return apperr.AlreadyExists("provider.server_url", "a provider with this server URL already exists in the tenant")
	}
	return nil
}

// CreateInput is a new provider.
type CreateInput struct {
	Tenant string
	// ID is the requested resource id; empty for a generated one.
	ID     string
	Fields Fields
	// ValidateConnectivity probes the server before anything is stored.
	ValidateConnectivity bool
}

// Create validates, encrypts and stores a new provider.
func (s *Service) Create(ctx context.Context, in CreateInput) (*View, error) {
	id := in.ID
	if id != "" {
		if err := validate.ResourceID("provider_id", id); err != nil {
			return nil, err
		}
	} else {
		id = newID()
	}
	v, err := validateFields(&in.Fields, nil)
	if err != nil {
		return nil, err
	}
	ci, err := s.validateCredentials(&in.Fields, func(string) bool { return true })
	if err != nil {
		return nil, err
	}
	if err := s.checkURLUnique(ctx, in.Tenant, "", v.serverURL); err != nil {
		return nil, err
	}
	// Without a probe nothing is known about the server: the provider
	// starts UNAUTHORIZED, as the stored default says.
	authRequired := true
	if in.ValidateConnectivity {
		if s.prober == nil {
			return nil, apperr.FailedPrecondition(domain.ReasonProbeUnavailable, "connectivity validation is not available")
		}
		// The scope files an egress block under the tenant and the id
		// the provider would have had.
		authRequired, err = s.prober.ProbeServer(audit.WithScope(ctx, in.Tenant, id), v.serverURL.String(), v.headers)
		if err != nil {
			return nil, err
		}
	}
	scope := scopeOf(in.Fields.GrantScope)
	if err := checkScopeKind(scope, in.Fields.CredentialKind); err != nil {
		return nil, err
	}
	if err := checkSharedToolList(scope, in.Fields.SharedToolList); err != nil {
		return nil, err
	}
	now := s.now().UTC()
	row := &repository.Provider{
		TenantID: in.Tenant, ID: id, GrantScope: scope, SharedToolList: in.Fields.SharedToolList,
		RequireCompletion: in.Fields.RequireCompletion,
		DisplayName:       v.displayName, ServerIdentifier: v.serverIdentifier, Icon: v.icon,
		TimeoutMS: v.timeout.Milliseconds(), SSEReadTimeoutMS: v.sseReadTimeout.Milliseconds(),
		ClientID: v.clientID, Scopes: vault.JSONList(v.scopes), Compat: vault.JSONCompat(v.compat),
		KeyID: s.cipher.PrimaryID(), Version: 1, CreatedAt: now, UpdatedAt: now,
	}
	if err := s.applyURL(row, v.serverURL); err != nil {
		return nil, err
	}
	if err := s.applyHeaders(row, v.headers); err != nil {
		return nil, err
	}
	if err := s.applyClientSecret(row, v.clientSecret); err != nil {
		return nil, err
	}
	st := &credState{}
	st.apply(ci, nil, false, false)
	if err := st.check(row, s.cimdURL != nil); err != nil {
		return nil, err
	}
	if err := s.storeCred(row, st); err != nil {
		return nil, err
	}
	details := credAudit(st, row, v.compat.AuditDetails())
	if row.SharedToolList {
		details = withDetail(details, PathSharedToolList, "true")
	}
	if row.RequireCompletion {
		details = withDetail(details, PathRequireCompletion, "true")
	}
	created := audit.Rows(ctx, s.now(), append([]audit.Event{{Tenant: in.Tenant, Type: domain.EventProviderCreated, Provider: id,
		Outcome: domain.OutcomeSuccess, Details: details}}, dpopAudit(in.Tenant, id, st)...)...)
	if err := s.store.CreateProvider(ctx, row, created...); err != nil {
		return nil, storeErr(err)
	}
	if !authRequired {
		s.markNotRequired(ctx, row)
	}
	return s.view(row)
}

// scopeOf is a grant scope with "" read as TENANT.
func scopeOf(s domain.GrantScope) domain.GrantScope {
	if s == "" {
		return domain.ScopeTenant
	}
	return s
}

// checkScopeKind refuses per-user grants of a credential kind without a
// person: a client's own token or a workload's identity is the same for
// every user, and a static key is no grant at all.
func checkScopeKind(scope domain.GrantScope, kind domain.CredentialKind) error {
	if scope.PerUser() && kind != domain.KindAuthorizationCode && kind != domain.KindEnterpriseManaged {
		return invalid("provider.grant_scope", "USER needs credential_kind AUTHORIZATION_CODE or ENTERPRISE_MANAGED (the kinds with a person)")
	}
	return nil
}

// checkSharedToolList refuses a shared tool list on a tenant-wide
// provider: its one grant already serves one list to everyone, and the
// setting would promise something it does not do.
func checkSharedToolList(scope domain.GrantScope, shared bool) error {
	if shared && !scope.PerUser() {
		return invalid("provider.shared_tool_list", "only for grant_scope USER (a TENANT provider's one grant already shares its tool list)")
	}
	return nil
}

// withDetail returns details (a new map when nil) with key set to value.
func withDetail(details map[string]string, key, value string) map[string]string {
	if details == nil {
		details = map[string]string{}
	}
	details[key] = value
	return details
}

// markNotRequired records that the server of a provider just created
// answered the probe without asking for authorization. The provider exists
// by now, so a failure here does not fail the create (a retry would only
// meet ALREADY_EXISTS): the provider stays UNAUTHORIZED until its first
// authorization attempt finds out again.
func (s *Service) markNotRequired(ctx context.Context, row *repository.Provider) {
	if _, err := s.store.SetGrantStatus(ctx, domain.TenantGrant(row.TenantID, row.ID), []domain.AuthStatus{domain.StatusUnauthorized},
		domain.StatusNotRequired, "", s.cipher.PrimaryID()); err != nil {
		s.log.WarnContext(ctx, "recording a provider's authorization as not required", "tenant", row.TenantID, "provider", row.ID, "error", err)
		return
	}
	row.GrantStatus = domain.StatusNotRequired
}

// Get returns the masked view of a provider.
func (s *Service) Get(ctx context.Context, tenant, id string) (*View, error) {
	row, err := s.reads.GetProvider(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	return s.view(row)
}

// List returns up to limit providers of the tenant with ids after afterID,
// ordered by id (keyset pagination), and whether more follow.
func (s *Service) List(ctx context.Context, tenant, afterID string, limit int) ([]*View, bool, error) {
	rows, err := s.store.ListProviders(ctx, tenant, afterID, limit+1)
	if err != nil {
		return nil, false, err
	}
	more := len(rows) > limit
	if more {
		rows = rows[:limit]
	}
	out := make([]*View, 0, len(rows))
	for i := range rows {
		v, err := s.view(&rows[i])
		if err != nil {
			return nil, false, err
		}
		out = append(out, v)
	}
	return out, more, nil
}

// UpdateInput changes the fields named in Paths (see UpdatablePaths).
type UpdateInput struct {
	Tenant string
	ID     string
	// Etag, when set, must match the stored provider's.
	Etag   string
	Fields Fields
	Paths  []string
}

// Update changes the fields named in the input's paths. A new server URL
// drops everything tied to the old server: tokens, client registrations,
// the tool list, and (unless the same request sets them) the custom headers
// and the pre-registered client's id and secret, so no credential meant for
// the old server is ever sent to the new one. A new client id drops the
// stored client secret unless the same request sets one. What was dropped
// is named in the audit events' "dropped" detail.
func (s *Service) Update(ctx context.Context, in UpdateInput) (*View, error) {
	if len(in.Paths) == 0 {
		return nil, invalid("update_mask", "must name the fields to change")
	}
	checkScope := slices.Contains(in.Paths, PathGrantScope)
	in.Paths = slices.DeleteFunc(slices.Clone(in.Paths), func(p string) bool { return p == PathGrantScope })
	if len(in.Paths) == 0 {
		// Only the grant scope was named: nothing changes if it is the
		// provider's.
		row, err := s.store.GetProvider(ctx, in.Tenant, in.ID)
		if err != nil {
			return nil, err
		}
		if scopeOf(in.Fields.GrantScope) != scopeOf(row.GrantScope) {
			return nil, invalid("provider.grant_scope", "is immutable: create a new provider for grants of another scope")
		}
		return s.view(row)
	}
	for _, p := range in.Paths {
		if !slices.Contains(UpdatablePaths, p) {
			return nil, invalid("update_mask", fmt.Sprintf("path %q is not updatable (allowed: %s)", p, strings.Join(UpdatablePaths, ", ")))
		}
	}
	paths := in.Paths
	v, err := validateFields(&in.Fields, paths)
	if err != nil {
		return nil, err
	}
	ci, err := s.validateCredentials(&in.Fields, func(p string) bool { return slices.Contains(paths, p) })
	if err != nil {
		return nil, err
	}
	tenant, id := in.Tenant, in.ID
	row, err := s.store.GetProvider(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	if in.Etag != "" && in.Etag != etag(row) {
		return nil, apperr.Aborted("etag does not match: the provider was changed since it was read")
	}
	if checkScope && scopeOf(in.Fields.GrantScope) != scopeOf(row.GrantScope) {
		return nil, invalid("provider.grant_scope", "is immutable: create a new provider for grants of another scope")
	}

	// Every stored ciphertext must open before anything is written over
	// the row: one that does not (moved from another row, or corrupt)
	// stops the update instead of being carried along.
	if _, err := vault.OpenProvider(s.cipher, row); err != nil {
		return nil, err
	}
	expected := row.Version
	oldClientID := row.ClientID
	oldRow := *row
	before, err := s.openCred(row)
	if err != nil {
		return nil, err
	}
	urlChanged := false
	for _, path := range paths {
		switch path {
		case PathDisplayName:
			row.DisplayName = v.displayName
		case PathServerIdentifier:
			row.ServerIdentifier = v.serverIdentifier
		case PathServerURL:
			if err := s.checkURLUnique(ctx, tenant, id, v.serverURL); err != nil {
				return nil, err
			}
			old, err := vault.OpenURL(s.cipher, row)
			if err != nil {
				return nil, err
			}
			urlChanged = validate.NormalizeURL(old) != validate.NormalizeURL(v.serverURL)
			if err := s.applyURL(row, v.serverURL); err != nil {
				return nil, err
			}
		case PathHeaders:
			if err := s.applyHeaders(row, v.headers); err != nil {
				return nil, err
			}
		case PathIcon:
			row.Icon = v.icon
		case PathTimeout:
			row.TimeoutMS = v.timeout.Milliseconds()
		case PathSSEReadTimeout:
			row.SSEReadTimeoutMS = v.sseReadTimeout.Milliseconds()
		case PathOAuthClient:
			row.ClientID, row.Scopes = v.clientID, vault.JSONList(v.scopes)
			if err := s.applyClientSecret(row, v.clientSecret); err != nil {
				return nil, err
			}
		case PathOAuthClientID:
			row.ClientID = v.clientID
		case PathOAuthClientSecret:
			if err := s.applyClientSecret(row, v.clientSecret); err != nil {
				return nil, err
			}
		case PathOAuthClientScopes:
			row.Scopes = vault.JSONList(v.scopes)
		case PathCompatibility:
			row.Compat = vault.JSONCompat(v.compat)
		case PathSharedToolList:
			row.SharedToolList = in.Fields.SharedToolList
		case PathRequireCompletion:
			row.RequireCompletion = in.Fields.RequireCompletion
		}
	}
	if err := checkSharedToolList(row.GrantScope, row.SharedToolList); err != nil {
		return nil, err
	}
	dropped := dropUnsafe(row, paths, urlChanged, oldClientID)
	if row.ClientID == "" && len(row.ClientSecret) > 0 {
		return nil, invalid("provider.oauth_client.client_id", "is required when a client secret is stored")
	}
	after := *before
	dropped = append(dropped, after.apply(ci, paths, urlChanged, row.ClientID != oldClientID)...)
	if err := after.check(row, s.cimdURL != nil); err != nil {
		return nil, err
	}
	if err := s.storeCred(row, &after); err != nil {
		return nil, err
	}
	credReset := !urlChanged && credentialsChanged(before, &after, &oldRow, row)
	if err := checkScopeKind(row.GrantScope, after.kind); err != nil {
		return nil, err
	}
	row.KeyID = s.cipher.PrimaryID()
	if err := s.reencryptUntouched(row, paths); err != nil {
		return nil, err
	}
	row.UpdatedAt = s.now().UTC()
	details := map[string]string{"fields": strings.Join(paths, ",")}
	if len(dropped) > 0 {
		details["dropped"] = strings.Join(dropped, ",")
	}
	if slices.ContainsFunc(paths, func(p string) bool { return slices.Contains(credentialPaths, p) }) {
		details = credAudit(&after, row, details)
	}
	// The new values of the two policy settings, so the log says who
	// declared a list shared, or stopped requiring completion, and when.
	if slices.Contains(paths, PathSharedToolList) {
		details[PathSharedToolList] = strconv.FormatBool(row.SharedToolList)
	}
	if slices.Contains(paths, PathRequireCompletion) {
		details[PathRequireCompletion] = strconv.FormatBool(row.RequireCompletion)
	}
	userClaimChanged := before.cfg.IdP.UserClaim != after.cfg.IdP.UserClaim
	if userClaimChanged {
		// Who set, changed or removed the rule that binds a connection's
		// ID tokens to its user, and to what ("" for removed).
		details[detailUserClaim] = after.cfg.IdP.UserClaim
	}
	events := append([]audit.Event{{Tenant: tenant, Type: domain.EventProviderUpdated, Provider: id,
		Outcome: domain.OutcomeSuccess, Details: details}}, dpopAudit(tenant, id, &after)...)
	if urlChanged {
		// The event commits with the reset; whether the old server then
		// confirmed the revocation is in the response, and a failed
		// revocation is audited on its own (oauth.revocation.failed).
		details := map[string]string{}
		if len(dropped) > 0 {
			details["dropped"] = strings.Join(dropped, ",")
		}
		events = append(events, audit.Event{Tenant: tenant, Type: domain.EventCredentialsReset, Provider: id,
			Outcome: domain.OutcomeSuccess, Reason: domain.ReasonServerURLChanged, Details: details})
	}
	if credReset {
		// Tokens obtained with the old credential material go with it. A
		// new user_claim is such a change (the enterprise identity
		// provider's settings): every connection was bound without
		// checking it, so all are deleted and revoked, each user exchanges
		// again under the new rule, and an exchange under way is refused
		// when it stores (grants.storeExchanged). The event says so.
		var resetDetails map[string]string
		if userClaimChanged {
			resetDetails = map[string]string{detailUserClaim: after.cfg.IdP.UserClaim}
		}
		events = append(events, audit.Event{Tenant: tenant, Type: domain.EventCredentialsReset, Provider: id,
			Outcome: domain.OutcomeSuccess, Reason: domain.ReasonCredentialKindChanged, Details: resetDetails})
	}
	rows := audit.Rows(ctx, s.now(), events...)
	if urlChanged || credReset {
		// The old server's tokens are forgotten with the update, then
		// revoked there, as on delete. A copy cached on another replica is
		// never sent by tool calls: they check the grant read with the
		// provider.
		revoke := s.prepareRevoke(ctx, tenant, id)
		if err := s.store.UpdateProviderResettingCredentials(ctx, row, expected, rows...); err != nil {
			return nil, storeErr(err)
		}
		revoke(ctx)
	} else if err := s.store.UpdateProvider(ctx, row, expected, rows...); err != nil {
		return nil, storeErr(err)
	}
	row.Version = expected + 1
	if urlChanged || credReset {
		row.GrantStatus, row.GrantReason, row.GrantGeneration = domain.StatusUnknown, "", 0
	}
	return s.view(row)
}

// detailUserClaim is the audit detail naming an enterprise provider's new
// user_claim ("" when removed) in the update and reset events.
const detailUserClaim = "user_claim"

// dropUnsafe removes from row the credentials the update must not carry
// over although the mask does not name them, and returns the paths of those
// that were stored. A new server URL drops the custom headers and the
// pre-registered client's id and secret (they may be secrets meant for the
// old host) unless the same request sets them. A new client id drops the
// stored secret, which belongs to the previous client, unless the same
// request sets one: a client id is never paired with another client's
// secret. Clearing the id while a secret is stored is left to the caller to
// refuse.
func dropUnsafe(row *repository.Provider, paths []string, urlChanged bool, oldClientID string) []string {
	setsSecret := slices.Contains(paths, PathOAuthClient) || slices.Contains(paths, PathOAuthClientSecret)
	var dropped []string
	if urlChanged && !slices.Contains(paths, PathHeaders) && len(row.Headers) > 0 {
		row.Headers = nil
		dropped = append(dropped, PathHeaders)
	}
	if urlChanged && !setsSecret && !slices.Contains(paths, PathOAuthClientID) && row.ClientID != "" {
		row.ClientID = ""
		dropped = append(dropped, PathOAuthClientID)
	}
	idChanged := row.ClientID != oldClientID && (urlChanged || row.ClientID != "")
	if idChanged && !setsSecret && len(row.ClientSecret) > 0 {
		row.ClientSecret = nil
		dropped = append(dropped, PathOAuthClientSecret)
	}
	return dropped
}

// reencryptUntouched re-seals the ciphertexts the update did not replace
// when they are under an older key, so a row always uses one key id (the
// one in its key_id column) and rotation bookkeeping stays exact.
func (s *Service) reencryptUntouched(row *repository.Provider, paths []string) error {
	type field struct {
		name string
		ct   *[]byte
		path string
	}
	for _, f := range []field{{vault.FieldServerURL, &row.ServerURL, PathServerURL}, {vault.FieldHeaders, &row.Headers, PathHeaders},
		{vault.FieldClientSecret, &row.ClientSecret, PathOAuthClientSecret}, {vault.FieldCredentialSecrets, &row.CredentialSecrets, ""}} {
		if len(*f.ct) == 0 || slices.Contains(paths, f.path) || (f.path == PathOAuthClientSecret && slices.Contains(paths, PathOAuthClient)) {
			continue
		}
		kid, err := keyring.KeyID(*f.ct)
		if err != nil {
			return apperr.Internal(err, "reading key id of %s", f.name)
		}
		if kid == s.cipher.PrimaryID() {
			continue
		}
		scope := keyring.Scope{Tenant: row.TenantID, Provider: row.ID, Field: f.name}
		pt, err := s.cipher.Open(scope, *f.ct)
		if err != nil {
			return apperr.Internal(err, "opening %s", f.name)
		}
		if *f.ct, err = s.cipher.Seal(scope, pt); err != nil {
			return apperr.Internal(err, "sealing %s", f.name)
		}
	}
	if !slices.Contains(paths, PathServerURL) {
		u, err := vault.OpenURL(s.cipher, row)
		if err != nil {
			return err
		}
		row.URLHash = s.cipher.Fingerprint(row.TenantID, vault.PurposeURL, []byte(validate.NormalizeURL(u)))
	}
	return nil
}

// Delete revokes the provider's tokens at the authorization server when
// possible, then deletes the provider and everything it owns. It reports
// whether the server confirmed the revocation.
func (s *Service) Delete(ctx context.Context, tenant, id, wantEtag string) (bool, error) {
	row, err := s.store.GetProvider(ctx, tenant, id)
	if err != nil {
		return false, err
	}
	var expected int64
	if wantEtag != "" {
		if wantEtag != etag(row) {
			return false, apperr.Aborted("etag does not match: the provider was changed since it was read")
		}
		expected = row.Version
	}
	revoke := s.prepareRevoke(ctx, tenant, id)
	// The event commits with the deletion. Whether the server then
	// confirmed the revocation is in the response; a failed revocation is
	// audited on its own (oauth.revocation.failed).
	deleted := audit.Rows(ctx, s.now(), audit.Event{Tenant: tenant, Type: domain.EventProviderDeleted, Provider: id,
		Outcome: domain.OutcomeSuccess})
	if err := s.store.DeleteProvider(ctx, tenant, id, expected, deleted...); err != nil {
		return false, err
	}
	return revoke(ctx), nil
}

// prepareRevoke is the revocation of the provider's grants as held now (its
// tenant-wide grant, or every connection of a USER provider); a no-op
// without a revoker.
func (s *Service) prepareRevoke(ctx context.Context, tenant, id string) func(context.Context) bool {
	if s.revoker == nil {
		return func(context.Context) bool { return false }
	}
	return s.revoker.PrepareRevokeProvider(ctx, tenant, id)
}

func etag(row *repository.Provider) string { return `"v` + strconv.FormatInt(row.Version, 10) + `"` }

// view builds the masked view of a stored provider.
func (s *Service) view(row *repository.Provider) (*View, error) {
	d, err := vault.OpenProvider(s.cipher, row)
	if err != nil {
		return nil, err
	}
	status, reason := row.AuthStatus()
	// Times are cut to microseconds, what the databases keep (PostgreSQL
	// drops the rest), so a write's response shows what a later read does.
	v := &View{
		Tenant:            row.TenantID,
		ID:                row.ID,
		DisplayName:       row.DisplayName,
		ServerIdentifier:  row.ServerIdentifier,
		MaskedServerURL:   validate.MaskURL(d.URL),
		Icon:              row.Icon,
		Timeout:           time.Duration(row.TimeoutMS) * time.Millisecond,
		SSEReadTimeout:    time.Duration(row.SSEReadTimeoutMS) * time.Millisecond,
		Status:            status,
		StatusReason:      reason,
		CreateTime:        row.CreatedAt.Truncate(time.Microsecond),
		UpdateTime:        row.UpdatedAt.Truncate(time.Microsecond),
		Etag:              etag(row),
		Compat:            d.Compat,
		RequireCompletion: row.RequireCompletion,
	}
	if row.GrantScope.PerUser() {
		v.GrantScope, v.SharedToolList = domain.ScopeUser, row.SharedToolList
	}
	names := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v.Headers = append(v.Headers, HeaderInfo{Name: k, ValueSet: d.Headers[k] != "",
			Fingerprint: s.cipher.ShortFingerprint(row.TenantID, vault.PurposeHeader, []byte(d.Headers[k]))})
	}
	if row.ClientID != "" || len(row.ClientSecret) > 0 || row.Scopes != "" && row.Scopes != "[]" || d.CredConfig.KeyAlg != "" {
		v.OAuthClient = &OAuthClientView{ClientID: row.ClientID, ClientSecretSet: len(row.ClientSecret) > 0, Scopes: d.Scopes}
	}
	s.viewCredentials(v, d)
	return v, nil
}
