package service

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/validate"
)

// Bounds of the per-provider timeouts.
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

// protocolParams cannot be set through extra_authorization_params: they are
// mcpauth's to choose.
var protocolParams = []string{"response_type", "client_id", "redirect_uri", "state", "code_challenge",
	"code_challenge_method", "resource", "scope", "request", "request_uri", "code_verifier"}

// CredentialResetter drops everything tied to a provider's old server when
// its URL changes (tokens, client registrations, tool list) in the same
// transaction as the provider update.
type CredentialResetter interface {
	UpdateProviderResettingCredentials(ctx context.Context, p *repository.Provider, expectedVersion int64) error
}

// Revoker revokes a provider's tokens at its authorization server before
// the provider is deleted. It reports whether the server confirmed; errors
// are audited by the implementation and never block the delete.
type Revoker interface {
	RevokeBeforeDelete(ctx context.Context, tenant, providerID string) bool
}

// Prober checks that an MCP server answers (any 2xx, or 401/403 asking for
// authorization) before a provider is created with validate_connectivity.
type Prober interface {
	ProbeServer(ctx context.Context, serverURL string, headers map[string]string) error
}

// ProviderService implements mcpauth.v1.MCPProviderService.
type ProviderService struct {
	mcpauthv1.UnimplementedMCPProviderServiceServer
	store   ProviderStore
	reset   CredentialResetter
	cipher  Cipher
	audit   *Auditor
	log     *slog.Logger
	now     Clock
	revoker Revoker
	prober  Prober
}

// ProviderDeps are what NewProviderService needs. Revoker and Prober are
// optional.
type ProviderDeps struct {
	Store   ProviderStore
	Reset   CredentialResetter
	Cipher  Cipher
	Audit   *Auditor
	Log     *slog.Logger
	Now     Clock
	Revoker Revoker
	Prober  Prober
}

// NewProviderService returns the provider registry.
func NewProviderService(d ProviderDeps) (*ProviderService, error) {
	if d.Store == nil || d.Cipher == nil || d.Audit == nil || d.Log == nil || d.Reset == nil {
		return nil, fmt.Errorf("provider service: store, reset, cipher, audit and log are required")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return &ProviderService{store: d.Store, reset: d.Reset, cipher: d.Cipher, audit: d.Audit, log: d.Log,
		now: d.Now, revoker: d.Revoker, prober: d.Prober}, nil
}

// SetRevoker sets the revoker once the token service exists (it depends on
// the provider store too, so it is built after this service).
func (s *ProviderService) SetRevoker(r Revoker) { s.revoker = r }

// SetProber sets the connectivity prober.
func (s *ProviderService) SetProber(p Prober) { s.prober = p }

func invalid(field, rule string) error { return apperr.Invalid(field, "%s", rule) }

// compat is the stored form of mcpauthv1.CompatibilityProfile.
type compat struct {
	ResourceMode      int32             `json:"resource_mode,omitempty"`
	ResourceOverride  string            `json:"resource_override,omitempty"`
	AllowMissingPKCE  bool              `json:"allow_missing_pkce,omitempty"`
	ExtraParams       map[string]string `json:"extra_params,omitempty"`
	TokenEndpointAuth string            `json:"token_endpoint_auth,omitempty"`
}

// providerInput is a validated provider, still in clear.
type providerInput struct {
	displayName, serverIdentifier, icon string
	serverURL                           *url.URL
	headers                             map[string]string
	timeout, sseReadTimeout             time.Duration
	clientID, clientSecret              string
	scopes                              []string
	compat                              compat
}

// validateFields checks the fields named in paths (all fields when paths is
// nil) of p and returns the first precise error.
func validateFields(p *mcpauthv1.Provider, paths []string) (*providerInput, error) {
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
	in := &providerInput{}
	if has("display_name") {
		if err := validate.DisplayName("provider.display_name", p.GetDisplayName()); err != nil {
			return nil, err
		}
		in.displayName = strings.TrimSpace(p.GetDisplayName())
	}
	if has("server_identifier") {
		if err := validate.Identifier("provider.server_identifier", p.GetServerIdentifier()); err != nil {
			return nil, err
		}
		in.serverIdentifier = p.GetServerIdentifier()
	}
	if has("server_url") {
		u, err := validate.ServerURL("provider.server_url", p.GetServerUrl())
		if err != nil {
			return nil, err
		}
		in.serverURL = u
	}
	if has("headers") {
		h, err := validate.Headers("provider.headers", p.GetHeaders())
		if err != nil {
			return nil, err
		}
		in.headers = h
	}
	if has("icon") {
		if err := validate.Icon("provider.icon", p.GetIcon()); err != nil {
			return nil, err
		}
		in.icon = p.GetIcon()
	}
	if has("timeout") {
		d, err := duration("provider.timeout", p.GetTimeout(), DefaultTimeout, MinTimeout, MaxTimeout)
		if err != nil {
			return nil, err
		}
		in.timeout = d
	}
	if has("sse_read_timeout") {
		d, err := duration("provider.sse_read_timeout", p.GetSseReadTimeout(), DefaultSSEReadTimeout, MinTimeout, MaxSSEReadTimeout)
		if err != nil {
			return nil, err
		}
		in.sseReadTimeout = d
	}
	if has("oauth_client") {
		c := p.GetOauthClient()
		if err := clientIDRule("provider.oauth_client.client_id", c.GetClientId()); err != nil {
			return nil, err
		}
		if n := len(c.GetClientSecret()); n > maxClientSecretLen {
			return nil, invalid("provider.oauth_client.client_secret", fmt.Sprintf("must be at most %d bytes", maxClientSecretLen))
		}
		if strings.ContainsAny(c.GetClientSecret(), "\r\n\x00") {
			return nil, invalid("provider.oauth_client.client_secret", "must not contain control characters")
		}
		if c.GetClientSecret() != "" && c.GetClientId() == "" && (paths == nil || slices.Contains(paths, "oauth_client")) {
			return nil, invalid("provider.oauth_client.client_id", "is required when a client secret is given")
		}
		if err := validate.Scopes("provider.oauth_client.scopes", c.GetScopes()); err != nil {
			return nil, err
		}
		in.clientID, in.clientSecret, in.scopes = c.GetClientId(), c.GetClientSecret(), c.GetScopes()
	}
	if has("compatibility") {
		c, err := validateCompat(p.GetCompatibility())
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

func duration(field string, d *durationpb.Duration, def, min, max time.Duration) (time.Duration, error) {
	if d == nil {
		return def, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalid(field, "is not a valid duration")
	}
	if err := validate.Timeout(field, d.AsDuration(), min, max); err != nil {
		return 0, err
	}
	return d.AsDuration(), nil
}

func validateCompat(c *mcpauthv1.CompatibilityProfile) (compat, error) {
	out := compat{ResourceMode: int32(c.GetResourceMode()), AllowMissingPKCE: c.GetAllowMissingPkceMetadata(),
		TokenEndpointAuth: c.GetTokenEndpointAuthMethod()}
	switch c.GetResourceMode() {
	case mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_UNSPECIFIED,
		mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_CANONICAL,
		mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_OMIT:
		if c.GetResourceOverride() != "" {
			return out, invalid("provider.compatibility.resource_override", "is only allowed with resource_mode OVERRIDE")
		}
	case mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_OVERRIDE:
		u, err := url.Parse(c.GetResourceOverride())
		if err != nil || !u.IsAbs() || u.Fragment != "" || len(c.GetResourceOverride()) > 2048 {
			return out, invalid("provider.compatibility.resource_override", "must be an absolute URI without fragment, at most 2048 bytes")
		}
		out.ResourceOverride = c.GetResourceOverride()
	default:
		return out, invalid("provider.compatibility.resource_mode", "is not a known mode")
	}
	switch c.GetTokenEndpointAuthMethod() {
	case "", "client_secret_basic", "client_secret_post", "none":
	default:
		return out, invalid("provider.compatibility.token_endpoint_auth_method", "must be client_secret_basic, client_secret_post or none")
	}
	if len(c.GetExtraAuthorizationParams()) > maxExtraParams {
		return out, invalid("provider.compatibility.extra_authorization_params", fmt.Sprintf("must have at most %d entries", maxExtraParams))
	}
	for k, v := range c.GetExtraAuthorizationParams() {
		field := fmt.Sprintf("provider.compatibility.extra_authorization_params[%q]", k)
		if k == "" || len(k) > 64 || strings.IndexFunc(k, func(r rune) bool {
			return !(r == '_' || r == '-' || r == '.' || r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r)))
		}) >= 0 {
			return out, invalid(field, "name must be 1-64 characters of [A-Za-z0-9._-]")
		}
		if slices.Contains(protocolParams, strings.ToLower(k)) {
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

// newProviderID returns a random resource id: "p" and 19 base32 characters.
func newProviderID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	b := make([]byte, 19)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[b[i]&31]
	}
	return "p" + string(b)
}

// sealField encrypts one field of a provider.
func (s *ProviderService) sealField(tenant, id, field string, plaintext []byte) ([]byte, error) {
	ct, err := s.cipher.Seal(keyring.Scope{Tenant: tenant, Provider: id, Field: field}, plaintext)
	if err != nil {
		return nil, apperr.Internal(err, "sealing %s", field)
	}
	return ct, nil
}

// applyURL sets the encrypted URL and its keyed hash on row.
func (s *ProviderService) applyURL(row *repository.Provider, u *url.URL) error {
	ct, err := s.sealField(row.TenantID, row.ID, fieldServerURL, []byte(u.String()))
	if err != nil {
		return err
	}
	row.ServerURL = ct
	row.URLHash = s.cipher.Fingerprint(row.TenantID, purposeURL, []byte(validate.NormalizeURL(u)))
	return nil
}

func (s *ProviderService) applyHeaders(row *repository.Provider, h map[string]string) error {
	if len(h) == 0 {
		row.Headers = nil
		return nil
	}
	raw, err := json.Marshal(h)
	if err != nil {
		return apperr.Internal(err, "encoding headers")
	}
	row.Headers, err = s.sealField(row.TenantID, row.ID, fieldHeaders, raw)
	return err
}

func (s *ProviderService) applyClientSecret(row *repository.Provider, secretValue string) error {
	if secretValue == "" {
		row.ClientSecret = nil
		return nil
	}
	var err error
	row.ClientSecret, err = s.sealField(row.TenantID, row.ID, fieldClientSecret, []byte(secretValue))
	return err
}

// checkURLUnique refuses a URL another provider of the tenant already uses,
// comparing keyed hashes of the normalised URL under every key.
func (s *ProviderService) checkURLUnique(ctx context.Context, tenant, selfID string, u *url.URL) error {
	hashes := s.cipher.Fingerprints(tenant, purposeURL, []byte(validate.NormalizeURL(u)))
	other, err := s.store.FindProviderByURLHash(ctx, tenant, hashes)
	if err != nil {
		return err
	}
	if other != nil && other.ID != selfID {
		return apperr.AlreadyExists("provider.server_url", "a provider with this server URL already exists in the tenant")
	}
	return nil
}

// CreateProvider validates, encrypts and stores a new provider.
func (s *ProviderService) CreateProvider(ctx context.Context, req *mcpauthv1.CreateProviderRequest) (*mcpauthv1.CreateProviderResponse, error) {
	tenant, err := resname.ParseTenant("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	if req.GetProvider() == nil {
		return nil, invalid("provider", "is required")
	}
	id := req.GetProviderId()
	if id != "" {
		if err := validate.ResourceID("provider_id", id); err != nil {
			return nil, err
		}
	} else {
		id = newProviderID()
	}
	in, err := validateFields(req.GetProvider(), nil)
	if err != nil {
		return nil, err
	}
	if err := s.checkURLUnique(ctx, tenant, "", in.serverURL); err != nil {
		return nil, err
	}
	if req.GetValidateConnectivity() {
		if s.prober == nil {
			return nil, apperr.FailedPrecondition("PROBE_UNAVAILABLE", "connectivity validation is not available")
		}
		if err := s.prober.ProbeServer(ctx, in.serverURL.String(), in.headers); err != nil {
			return nil, err
		}
	}
	now := s.now().UTC()
	row := &repository.Provider{
		TenantID: tenant, ID: id,
		DisplayName: in.displayName, ServerIdentifier: in.serverIdentifier, Icon: in.icon,
		TimeoutMS: in.timeout.Milliseconds(), SSEReadTimeoutMS: in.sseReadTimeout.Milliseconds(),
		ClientID: in.clientID, Scopes: jsonList(in.scopes), Compat: jsonCompat(in.compat),
		AuthStatus: int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED),
		KeyID:      s.cipher.PrimaryID(), Version: 1, CreatedAt: now, UpdatedAt: now,
	}
	if err := s.applyURL(row, in.serverURL); err != nil {
		return nil, err
	}
	if err := s.applyHeaders(row, in.headers); err != nil {
		return nil, err
	}
	if err := s.applyClientSecret(row, in.clientSecret); err != nil {
		return nil, err
	}
	if err := s.store.CreateProvider(ctx, row); err != nil {
		return nil, err
	}
	s.audit.Record(ctx, Event{Tenant: tenant, Type: EventProviderCreated, Provider: id,
		Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS, Details: compatDetails(in.compat)})
	view, err := s.view(row)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.CreateProviderResponse{Provider: view}, nil
}

// GetProvider returns the masked view of a provider.
func (s *ProviderService) GetProvider(ctx context.Context, req *mcpauthv1.GetProviderRequest) (*mcpauthv1.GetProviderResponse, error) {
	row, err := providerByName(ctx, s.store, req.GetName())
	if err != nil {
		return nil, err
	}
	view, err := s.view(row)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.GetProviderResponse{Provider: view}, nil
}

// ListProviders pages through a tenant's providers ordered by id (keyset
// pagination: the page token holds the last id seen, nothing else).
func (s *ProviderService) ListProviders(ctx context.Context, req *mcpauthv1.ListProvidersRequest) (*mcpauthv1.ListProvidersResponse, error) {
	tenant, err := resname.ParseTenant("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	size, err := validate.PageSize("page_size", req.GetPageSize())
	if err != nil {
		return nil, err
	}
	tok, err := resname.DecodePageToken("page_token", req.GetParent(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	rows, err := s.store.ListProviders(ctx, tenant, tok.After, size+1)
	if err != nil {
		return nil, err
	}
	resp := &mcpauthv1.ListProvidersResponse{}
	if len(rows) > size {
		rows = rows[:size]
		resp.NextPageToken = resname.EncodePageToken(resname.PageToken{Parent: req.GetParent(), After: rows[size-1].ID})
	}
	resp.Providers = make([]*mcpauthv1.Provider, 0, len(rows))
	for i := range rows {
		v, err := s.view(&rows[i])
		if err != nil {
			return nil, err
		}
		resp.Providers = append(resp.Providers, v)
	}
	return resp, nil
}

// updatablePaths are the field-mask paths UpdateProvider accepts.
var updatablePaths = []string{"display_name", "server_identifier", "server_url", "headers", "icon", "timeout",
	"sse_read_timeout", "oauth_client", "oauth_client.client_id", "oauth_client.client_secret", "oauth_client.scopes",
	"compatibility"}

// UpdateProvider changes the fields named in the update mask. A new server
// URL drops everything tied to the old server: tokens, client
// registrations, the tool list, and (unless the same request sets them)
// the custom headers and the pre-registered client, so no credential meant
// for the old server is ever sent to the new one.
func (s *ProviderService) UpdateProvider(ctx context.Context, req *mcpauthv1.UpdateProviderRequest) (*mcpauthv1.UpdateProviderResponse, error) {
	p := req.GetProvider()
	if p == nil {
		return nil, invalid("provider", "is required")
	}
	tenant, id, err := resname.ParseProvider("provider.name", p.GetName())
	if err != nil {
		return nil, err
	}
	paths, err := maskPaths(req.GetUpdateMask())
	if err != nil {
		return nil, err
	}
	in, err := validateFields(p, paths)
	if err != nil {
		return nil, err
	}
	row, err := s.store.GetProvider(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	if p.GetEtag() != "" && p.GetEtag() != etag(row) {
		return nil, apperr.Aborted("etag does not match: the provider was changed since it was read")
	}
	expected := row.Version
	urlChanged := false
	changed := make([]string, 0, len(paths))
	for _, path := range paths {
		changed = append(changed, path)
		switch path {
		case "display_name":
			row.DisplayName = in.displayName
		case "server_identifier":
			row.ServerIdentifier = in.serverIdentifier
		case "server_url":
			if err := s.checkURLUnique(ctx, tenant, id, in.serverURL); err != nil {
				return nil, err
			}
			old, err := s.openURL(row)
			if err != nil {
				return nil, err
			}
			urlChanged = validate.NormalizeURL(old) != validate.NormalizeURL(in.serverURL)
			if err := s.applyURL(row, in.serverURL); err != nil {
				return nil, err
			}
		case "headers":
			if err := s.applyHeaders(row, in.headers); err != nil {
				return nil, err
			}
		case "icon":
			row.Icon = in.icon
		case "timeout":
			row.TimeoutMS = in.timeout.Milliseconds()
		case "sse_read_timeout":
			row.SSEReadTimeoutMS = in.sseReadTimeout.Milliseconds()
		case "oauth_client":
			row.ClientID, row.Scopes = in.clientID, jsonList(in.scopes)
			if err := s.applyClientSecret(row, in.clientSecret); err != nil {
				return nil, err
			}
		case "oauth_client.client_id":
			row.ClientID = in.clientID
		case "oauth_client.client_secret":
			if err := s.applyClientSecret(row, in.clientSecret); err != nil {
				return nil, err
			}
		case "oauth_client.scopes":
			row.Scopes = jsonList(in.scopes)
		case "compatibility":
			row.Compat = jsonCompat(in.compat)
		}
	}
	if urlChanged {
		if !slices.Contains(paths, "headers") {
			row.Headers = nil
		}
		if !slices.Contains(paths, "oauth_client") && !slices.Contains(paths, "oauth_client.client_secret") {
			row.ClientSecret = nil
			if !slices.Contains(paths, "oauth_client.client_id") {
				row.ClientID = ""
			}
		}
		row.AuthStatus = int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED)
	}
	if row.ClientID == "" && len(row.ClientSecret) > 0 {
		return nil, invalid("provider.oauth_client.client_id", "is required when a client secret is stored")
	}
	row.KeyID = s.cipher.PrimaryID()
	if err := s.reencryptUntouched(row, paths); err != nil {
		return nil, err
	}
	row.UpdatedAt = s.now().UTC()
	revoked := false
	if urlChanged {
		// The old server's tokens are about to be forgotten: revoke them
		// there first, as on delete, which also drops this process's cached
		// copy. A copy cached elsewhere lives at most the token cache TTL,
		// is dead at the server once revoked, and is never sent by tool
		// calls (they check the provider's status).
		if s.revoker != nil {
			revoked = s.revoker.RevokeBeforeDelete(ctx, tenant, id)
		}
		err = s.reset.UpdateProviderResettingCredentials(ctx, row, expected)
	} else {
		err = s.store.UpdateProvider(ctx, row, expected)
	}
	if err != nil {
		return nil, err
	}
	row.Version = expected + 1
	s.audit.Record(ctx, Event{Tenant: tenant, Type: EventProviderUpdated, Provider: id,
		Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS, Details: map[string]string{"fields": strings.Join(changed, ",")}})
	if urlChanged {
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventCredentialsReset, Provider: id,
			Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS, Reason: "SERVER_URL_CHANGED",
			Details: map[string]string{"revoked_at_server": strconv.FormatBool(revoked)}})
	}
	view, err := s.view(row)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.UpdateProviderResponse{Provider: view}, nil
}

// reencryptUntouched re-seals the ciphertexts the update did not replace
// when they are under an older key, so a row always uses one key id (the
// one in its key_id column) and rotation bookkeeping stays exact.
func (s *ProviderService) reencryptUntouched(row *repository.Provider, paths []string) error {
	type field struct {
		name string
		ct   *[]byte
		path string
	}
	for _, f := range []field{{fieldServerURL, &row.ServerURL, "server_url"}, {fieldHeaders, &row.Headers, "headers"},
		{fieldClientSecret, &row.ClientSecret, "oauth_client.client_secret"}} {
		if len(*f.ct) == 0 || slices.Contains(paths, f.path) || (f.path == "oauth_client.client_secret" && slices.Contains(paths, "oauth_client")) {
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
	if !slices.Contains(paths, "server_url") {
		u, err := s.openURL(row)
		if err != nil {
			return err
		}
		row.URLHash = s.cipher.Fingerprint(row.TenantID, purposeURL, []byte(validate.NormalizeURL(u)))
	}
	return nil
}

func maskPaths(m *fieldmaskpb.FieldMask) ([]string, error) {
	if m == nil || len(m.GetPaths()) == 0 {
		return nil, invalid("update_mask", "must name the fields to change")
	}
	seen := map[string]bool{}
	var out []string
	for _, p := range m.GetPaths() {
		// name and etag identify and guard the update, they change
		// nothing; the REST gateway infers a PATCH's mask from every field
		// of the body, etag included.
		if p == "name" || p == "etag" {
			continue
		}
		if !slices.Contains(updatablePaths, p) {
			return nil, invalid("update_mask", fmt.Sprintf("path %q is not updatable (allowed: %s)", p, strings.Join(updatablePaths, ", ")))
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, invalid("update_mask", "must name the fields to change")
	}
	return out, nil
}

// DeleteProvider revokes the provider's tokens at the authorization server
// when possible, then deletes the provider and everything it owns.
func (s *ProviderService) DeleteProvider(ctx context.Context, req *mcpauthv1.DeleteProviderRequest) (*mcpauthv1.DeleteProviderResponse, error) {
	row, err := providerByName(ctx, s.store, req.GetName())
	if err != nil {
		return nil, err
	}
	tenant, id := row.TenantID, row.ID
	var expected int64
	if req.GetEtag() != "" {
		if req.GetEtag() != etag(row) {
			return nil, apperr.Aborted("etag does not match: the provider was changed since it was read")
		}
		expected = row.Version
	}
	revoked := false
	if s.revoker != nil {
		revoked = s.revoker.RevokeBeforeDelete(ctx, tenant, id)
	}
	if err := s.store.DeleteProvider(ctx, tenant, id, expected); err != nil {
		return nil, err
	}
	s.audit.Record(ctx, Event{Tenant: tenant, Type: EventProviderDeleted, Provider: id,
		Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS, Details: map[string]string{"revoked_at_server": strconv.FormatBool(revoked)}})
	return &mcpauthv1.DeleteProviderResponse{RevokedAtServer: revoked}, nil
}

// openURL decrypts a provider's server URL.
func (s *ProviderService) openURL(row *repository.Provider) (*url.URL, error) {
	d, err := openProvider(s.cipher, row)
	if err != nil {
		return nil, err
	}
	return d.url, nil
}

func etag(row *repository.Provider) string { return `"v` + strconv.FormatInt(row.Version, 10) + `"` }

// view builds the masked API view of a stored provider.
func (s *ProviderService) view(row *repository.Provider) (*mcpauthv1.Provider, error) {
	d, err := openProvider(s.cipher, row)
	if err != nil {
		return nil, err
	}
	u, headers := d.url, d.headers
	// Times are cut to microseconds, what the databases keep (PostgreSQL
	// drops the rest), so a write's response shows what a later read does.
	v := &mcpauthv1.Provider{
		Name:                resname.ProviderName(row.TenantID, row.ID),
		DisplayName:         row.DisplayName,
		ServerIdentifier:    row.ServerIdentifier,
		MaskedServerUrl:     validate.MaskURL(u),
		Icon:                row.Icon,
		Timeout:             durationpb.New(time.Duration(row.TimeoutMS) * time.Millisecond),
		SseReadTimeout:      durationpb.New(time.Duration(row.SSEReadTimeoutMS) * time.Millisecond),
		AuthorizationStatus: mcpauthv1.AuthorizationStatus(row.AuthStatus),
		CreateTime:          timestamppb.New(row.CreatedAt.Truncate(time.Microsecond)),
		UpdateTime:          timestamppb.New(row.UpdatedAt.Truncate(time.Microsecond)),
		Etag:                etag(row),
	}
	names := make([]string, 0, len(headers))
	for k := range headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v.HeaderInfo = append(v.HeaderInfo, &mcpauthv1.HeaderInfo{Name: k, ValueSet: headers[k] != "",
			Fingerprint: s.cipher.ShortFingerprint(row.TenantID, purposeHeader, []byte(headers[k]))})
	}
	if row.ClientID != "" || len(row.ClientSecret) > 0 || row.Scopes != "" && row.Scopes != "[]" {
		v.OauthClient = &mcpauthv1.OAuthClient{ClientId: row.ClientID, ClientSecretSet: len(row.ClientSecret) > 0, Scopes: parseList(row.Scopes)}
	}
	c := parseCompat(row.Compat)
	if c.ResourceMode != 0 || c.AllowMissingPKCE || len(c.ExtraParams) > 0 || c.TokenEndpointAuth != "" {
		v.Compatibility = &mcpauthv1.CompatibilityProfile{
			ResourceMode:             mcpauthv1.ResourceParameterMode(c.ResourceMode),
			ResourceOverride:         c.ResourceOverride,
			AllowMissingPkceMetadata: c.AllowMissingPKCE,
			ExtraAuthorizationParams: c.ExtraParams,
			TokenEndpointAuthMethod:  c.TokenEndpointAuth,
		}
	}
	return v, nil
}

func jsonList(l []string) string {
	if len(l) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(l)
	return string(b)
}

func parseList(s string) []string {
	var l []string
	_ = json.Unmarshal([]byte(s), &l)
	return l
}

func jsonCompat(c compat) string {
	b, _ := json.Marshal(c)
	return string(b)
}

func parseCompat(s string) compat {
	var c compat
	if s != "" {
		_ = json.Unmarshal([]byte(s), &c)
	}
	return c
}

// compatDetails lists the relaxations a profile turns on, for the audit log.
func compatDetails(c compat) map[string]string {
	d := map[string]string{}
	if c.ResourceMode == int32(mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_OMIT) {
		d["compat.resource"] = "omit"
	}
	if c.ResourceMode == int32(mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_OVERRIDE) {
		d["compat.resource"] = "override"
	}
	if c.AllowMissingPKCE {
		d["compat.allow_missing_pkce_metadata"] = "true"
	}
	if len(c.ExtraParams) > 0 {
		keys := make([]string, 0, len(c.ExtraParams))
		for k := range c.ExtraParams {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		d["compat.extra_authorization_params"] = strings.Join(keys, ",")
	}
	if c.TokenEndpointAuth != "" {
		d["compat.token_endpoint_auth_method"] = c.TokenEndpointAuth
	}
	if len(d) == 0 {
		return nil
	}
	return d
}
