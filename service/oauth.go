package service

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/validate"
)

// Registration methods, in the order the MCP spec asks a client to try.
const (
	RegPreRegistered = "pre_registered"
	RegCIMD          = "client_id_metadata_document"
	RegDynamic       = "dynamic_registration"
)

// ClientMetadataPath is where mcpauth serves its own Client ID Metadata
// Document when its public URL is https.
const ClientMetadataPath = "/v1/oauth/client-metadata.json"

// OAuthProtocol is the OAuth client protocol mcpauth speaks to MCP and
// authorization servers. *oauthclient.Client implements it.
type OAuthProtocol interface {
	Probe(ctx context.Context, serverURL string, headers map[string]string, tr *oauthclient.Trace) (*oauthclient.ProbeResult, error)
	Discover(ctx context.Context, serverURL, canonicalResource string, probe *oauthclient.ProbeResult, tr *oauthclient.Trace) (*oauthclient.Metadata, error)
	RegisterDynamic(ctx context.Context, md *oauthclient.Metadata, clientName, redirectURI string, scopes []string) (*oauthclient.Registration, error)
	Exchange(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, code, verifier secret.Secret, redirectURI, resource string, requestedScopes []string) (*oauthclient.Tokens, error)
}

// OAuthConfig is the part of the configuration the OAuth flow needs.
type OAuthConfig struct {
	PublicURL         string
	CallbackURL       string
	ClientName        string
	ClientMetadataURL string // empty: none, unless PublicURL is https
	ReturnOrigins     []string
	FlowTTL           time.Duration
	// ProbeTTL keeps probe results (see probeCache); 0 probes every time.
	ProbeTTL time.Duration
}

// OAuthService implements mcpauth.v1.OAuthService and the browser side of
// the authorization flow.
type OAuthService struct {
	mcpauthv1.UnimplementedOAuthServiceServer
	store  CredentialStore
	cipher Cipher
	flows  flowCodec
	proto  OAuthProtocol
	audit  *Auditor
	log    *slog.Logger
	now    Clock
	cfg    OAuthConfig
	tokens *TokenService
	probes *probeCache
}

// OAuthDeps are what NewOAuthService needs.
type OAuthDeps struct {
	Store  CredentialStore
	Cipher Cipher
	Flows  FlowStore
	Proto  OAuthProtocol
	Audit  *Auditor
	Log    *slog.Logger
	Now    Clock
	Config OAuthConfig
	Tokens *TokenService
}

// NewOAuthService returns the OAuth service.
func NewOAuthService(d OAuthDeps) (*OAuthService, error) {
	if d.Store == nil || d.Cipher == nil || d.Flows == nil || d.Proto == nil || d.Audit == nil || d.Log == nil || d.Tokens == nil {
		return nil, errors.New("oauth service: store, cipher, flows, proto, audit, log and tokens are required")
	}
	if d.Config.CallbackURL == "" || d.Config.PublicURL == "" {
		return nil, errors.New("oauth service: public and callback URLs are required")
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
	return &OAuthService{store: d.Store, cipher: d.Cipher, flows: flowCodec{cipher: d.Cipher, store: d.Flows},
		proto: d.Proto, audit: d.Audit, log: d.Log, now: d.Now, cfg: d.Config, tokens: d.Tokens,
		probes: newProbeCache(d.Config.ProbeTTL)}, nil
}

// ClientMetadataURL is the client_id used with servers that support Client
// ID Metadata Documents, or "" when mcpauth has none.
func (s *OAuthService) ClientMetadataURL() string {
	if s.cfg.ClientMetadataURL != "" {
		return s.cfg.ClientMetadataURL
	}
	if strings.HasPrefix(s.cfg.PublicURL, "https://") {
		return s.cfg.PublicURL + ClientMetadataPath
	}
	return ""
}

// ClientMetadataDocument is the document served at ClientMetadataPath.
func (s *OAuthService) ClientMetadataDocument() map[string]any {
	return map[string]any{
		"client_id":                  s.ClientMetadataURL(),
		"client_name":                s.cfg.ClientName,
		"redirect_uris":              []string{s.cfg.CallbackURL},
		"grant_types":                []string{"authorization_code", "refresh_token"},
		"response_types":             []string{"code"},
		"token_endpoint_auth_method": "none",
		"application_type":           "web",
	}
}

func (s *OAuthService) loadProvider(ctx context.Context, name string) (*providerData, error) {
	row, err := providerByName(ctx, s.store, name)
	if err != nil {
		return nil, err
	}
	return openProvider(s.cipher, row)
}

// discovery is the outcome of probing and discovering one provider.
type discovery struct {
	probe  *oauthclient.ProbeResult
	md     *oauthclient.Metadata
	scopes []string
}

// discover probes the MCP server and, when it asks for authorization,
// discovers its authorization server.
func (s *OAuthService) discover(ctx context.Context, d *providerData, extra []string, tr *oauthclient.Trace) (*discovery, error) {
	probe, cached := (*oauthclient.ProbeResult)(nil), false
	if tr == nil {
		probe, cached = s.probes.get(d.row, s.now())
	}
	if !cached {
		var err error
		if probe, err = s.proto.Probe(ctx, d.url.String(), d.headers, tr); err != nil {
			return nil, upstreamErr("probing the MCP server", err)
		}
		s.probes.put(d.row, probe, s.now())
	}
	if probe.NotRequired {
		return &discovery{probe: probe}, nil
	}
	md, err := s.proto.Discover(ctx, d.url.String(), d.resource, probe, tr)
	if err != nil {
		return nil, upstreamErr("discovering the authorization server", err)
	}
	var scopes []string
	if len(d.scopes) > 0 {
		scopes = oauthclient.SelectScopes(d.scopes, nil, md.ASScopesSupported, extra)
	} else {
		scopes = oauthclient.SelectScopes(probe.Scopes, md.ScopesSupported, md.ASScopesSupported, extra)
	}
	return &discovery{probe: probe, md: md, scopes: scopes}, nil
}

// upstreamErr turns a protocol failure into a caller-facing error that
// names the step but carries no upstream body.
func upstreamErr(step string, err error) error {
	if _, ok := apperr.As(err); ok {
		return err
	}
	var blocked *egress.BlockedError
	switch {
	case errors.As(err, &blocked):
		// Retrying cannot help: the provider's configuration or the
		// allow-list must change. The message names host and rule only.
		return apperr.FailedPrecondition("EGRESS_BLOCKED", "%s: %s", step, blocked.Error())
	case errors.Is(err, oauthclient.ErrResourceMismatch):
		return apperr.FailedPrecondition("RESOURCE_MISMATCH", "%s: the protected resource metadata names a different resource than this MCP server", step)
	case errors.Is(err, oauthclient.ErrIssuerMismatch):
		return apperr.FailedPrecondition("ISSUER_MISMATCH", "%s: the authorization server metadata names a different issuer", step)
	case errors.Is(err, context.DeadlineExceeded):
		return apperr.Unavailable(err, "%s: timed out", step)
	}
	return apperr.Unavailable(err, "%s failed: %s", step, err.Error())
}

// chooseAuthMethod picks the token endpoint client authentication.
func chooseAuthMethod(override string, hasSecret bool, supported []string) string {
	if override != "" {
		return override
	}
	if !hasSecret {
		return "none"
	}
	if len(supported) == 0 || slices.Contains(supported, "client_secret_basic") {
		return "client_secret_basic"
	}
	if slices.Contains(supported, "client_secret_post") {
		return "client_secret_post"
	}
	return "client_secret_basic"
}

// registration picks the client registration in the spec's order:
// pre-registered, Client ID Metadata Document, dynamic registration. With
// dryRun it never registers (DiagnoseProvider).
func (s *OAuthService) registration(ctx context.Context, d *providerData, md *oauthclient.Metadata, scopes []string, dryRun bool) (*oauthclient.Registration, error) {
	if d.row.ClientID != "" {
		return &oauthclient.Registration{Method: RegPreRegistered, ClientID: d.row.ClientID, ClientSecret: d.clientSecret,
			AuthMethod:  chooseAuthMethod(d.compat.TokenEndpointAuth, !d.clientSecret.IsZero(), md.TokenEndpointAuthMethods),
			RedirectURI: s.cfg.CallbackURL}, nil
	}
	if cimd := s.ClientMetadataURL(); cimd != "" && md.ClientIDMetadataDocumentSupported {
		return &oauthclient.Registration{Method: RegCIMD, ClientID: cimd, AuthMethod: "none", RedirectURI: s.cfg.CallbackURL}, nil
	}
	if md.RegistrationEndpoint == "" {
		return nil, apperr.FailedPrecondition("NO_CLIENT_REGISTRATION",
			"the authorization server supports neither client ID metadata documents nor dynamic registration: set oauth_client on the provider")
	}
	stored, err := s.store.GetClientRegistration(ctx, d.row.TenantID, d.row.ID, md.Issuer)
	switch {
	case err == nil:
		reg, err := openRegistration(s.cipher, stored)
		if err != nil {
			return nil, err
		}
		if reg.RedirectURI == s.cfg.CallbackURL && (reg.ExpiresAt.IsZero() || reg.ExpiresAt.After(s.now())) {
			if d.compat.TokenEndpointAuth != "" {
				reg.AuthMethod = d.compat.TokenEndpointAuth
			}
			return reg, nil
		}
	case apperr.KindOf(err) != apperr.KindNotFound:
		return nil, err
	}
	if dryRun {
		return &oauthclient.Registration{Method: RegDynamic, RedirectURI: s.cfg.CallbackURL}, nil
	}
	reg, err := s.proto.RegisterDynamic(ctx, md, s.cfg.ClientName, s.cfg.CallbackURL, scopes)
	if err != nil {
		return nil, upstreamErr("dynamic client registration", err)
	}
	reg.Method = RegDynamic
	// Two first starts can register concurrently: the first stored client
	// wins and the other is discarded, so a pending flow's client is never
	// overwritten (its callback would fail with CLIENT_CHANGED).
	if won, err := s.store.GetClientRegistration(ctx, d.row.TenantID, d.row.ID, md.Issuer); err == nil && won.RedirectURI == s.cfg.CallbackURL {
		if r, err := openRegistration(s.cipher, won); err == nil && (r.ExpiresAt.IsZero() || r.ExpiresAt.After(s.now())) {
			return r, nil
		}
	}
	ct, err := sealRegistration(s.cipher, d.row.TenantID, d.row.ID, md.Issuer, reg)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	if err := s.store.PutClientRegistration(ctx, &repository.ClientRegistration{TenantID: d.row.TenantID, ProviderID: d.row.ID,
		Issuer: md.Issuer, Method: RegDynamic, ClientID: reg.ClientID, Secret: ct, RedirectURI: reg.RedirectURI,
		KeyID: s.cipher.PrimaryID(), CreatedAt: now, UpdatedAt: now}); err != nil {
		return nil, err
	}
	s.audit.Record(ctx, Event{Tenant: d.row.TenantID, Type: EventClientRegistered, Provider: d.row.ID,
		Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS, Details: map[string]string{"issuer": md.Issuer, "method": RegDynamic}})
	return reg, nil
}

// randomToken returns n random bytes, base64url encoded.
func randomToken(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// StartAuthorization discovers the provider's authorization server, picks
// the client registration, stores a single-use flow and returns a URL on
// mcpauth's gateway for the person's browser.
func (s *OAuthService) StartAuthorization(ctx context.Context, req *mcpauthv1.StartAuthorizationRequest) (*mcpauthv1.StartAuthorizationResponse, error) {
	if err := validate.UserID("user", req.GetUser()); err != nil {
		return nil, err
	}
	if req.GetReturnUrl() != "" {
		if err := validate.ReturnURL("return_url", req.GetReturnUrl(), s.cfg.ReturnOrigins); err != nil {
			return nil, err
		}
	}
	if err := validate.Scopes("additional_scopes", req.GetAdditionalScopes()); err != nil {
		return nil, err
	}
	d, err := s.loadProvider(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	tenant, id := d.row.TenantID, d.row.ID
	ctx = WithAuditScope(ctx, tenant, id)
	disc, err := s.discover(ctx, d, req.GetAdditionalScopes(), nil)
	if err != nil {
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventAuthStarted, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE, Reason: reasonOf(err)})
		return nil, err
	}
	if disc.probe.NotRequired {
		if err := s.store.SetAuthStatus(ctx, tenant, id, int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED)); err != nil {
			return nil, err
		}
		return &mcpauthv1.StartAuthorizationResponse{Status: mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED}, nil
	}
	md := disc.md
	if !md.SupportsS256() {
		if !d.compat.AllowMissingPKCE || len(md.CodeChallengeMethods) > 0 {
			s.audit.Record(ctx, Event{Tenant: tenant, Type: EventAuthStarted, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE, Reason: "PKCE_NOT_SUPPORTED"})
			return nil, apperr.FailedPrecondition("PKCE_NOT_SUPPORTED",
				"the authorization server does not advertise S256 PKCE (code_challenge_methods_supported); refusing to authorize without it")
		}
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventCompatRelaxation, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS,
			Reason: "PKCE_METADATA_MISSING", Details: map[string]string{"issuer": md.Issuer}})
	}
	reg, err := s.registration(ctx, d, md, disc.scopes, false)
	if err != nil {
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventAuthStarted, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE, Reason: reasonOf(err)})
		return nil, err
	}
	verifier, _, err := oauthclient.NewPKCE()
	if err != nil {
		return nil, apperr.Internal(err, "pkce")
	}
	state, err := oauthclient.NewState()
	if err != nil {
		return nil, apperr.Internal(err, "state")
	}
	handle, err := randomToken(32)
	if err != nil {
		return nil, apperr.Internal(err, "flow handle")
	}
	expires := s.now().Add(s.cfg.FlowTTL)
	rec := &flowRecord{
		Tenant: tenant, Provider: id, User: req.GetUser(), Issuer: md.Issuer, IssSupported: md.IssParameterSupported,
		AuthEndpoint: md.AuthorizationEndpoint, TokenEndpoint: md.TokenEndpoint, RevocationURL: md.RevocationEndpoint, ClientID: reg.ClientID,
		RegMethod: reg.Method, AuthMethod: reg.AuthMethod, RedirectURI: s.cfg.CallbackURL, Resource: d.resourceParam(),
		Scopes: disc.scopes, Verifier: verifier.Reveal(), State: state, ReturnURL: req.GetReturnUrl(),
		URLHash: d.row.URLHash, ExpiresAt: expires.Unix(), Extra: d.compat.ExtraParams,
		PKCEException: !md.SupportsS256(),
	}
	if err := s.flows.put(ctx, flowKey("flow", handle), rec, s.cfg.FlowTTL); err != nil {
		return nil, err
	}
	// An authorized provider keeps its status until the new flow completes.
	// A pending one is not written again: concurrent starts would queue on
	// the row's lock and a commit each for nothing.
	if st := mcpauthv1.AuthorizationStatus(d.row.AuthStatus); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED &&
		st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_PENDING {
		if err := s.store.SetAuthStatus(ctx, tenant, id, int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_PENDING)); err != nil {
			return nil, err
		}
	}
	details := map[string]string{"issuer": md.Issuer, "registration": reg.Method, "user": req.GetUser()}
	if rec.Resource == "" {
		details["resource"] = "omitted"
	}
	s.audit.Record(ctx, Event{Tenant: tenant, Type: EventAuthStarted, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS, Details: details})
	if d.compat.ResourceMode == 2 || d.compat.ResourceMode == 3 || len(d.compat.ExtraParams) > 0 {
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventCompatRelaxation, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS,
			Details: compatDetails(d.compat)})
	}
	return &mcpauthv1.StartAuthorizationResponse{
		AuthorizationUrl:   s.cfg.PublicURL + "/v1/oauth/authorize/" + handle,
		ExpireTime:         timestamppb.New(expires),
		Scopes:             disc.scopes,
		Status:             mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_PENDING,
		Issuer:             md.Issuer,
		RegistrationMethod: reg.Method,
	}, nil
}

// reasonOf returns the stable reason of a classified error.
func reasonOf(err error) string {
	if e, ok := apperr.As(err); ok && e.Reason != "" {
		return e.Reason
	}
	return "INTERNAL"
}

// BrowserStart is what the gateway's authorize route needs to redirect the
// browser: the authorization server URL and the cookie binding the browser
// to the flow.
type BrowserStart struct {
	RedirectURL string
	CookieName  string
	CookieValue string
	MaxAge      time.Duration
}

// CookieName is the flow cookie's name for a state: one per flow, so two
// flows in one browser do not overwrite each other. It is derived from the
// state by a hash, so it does not reveal the state.
func CookieName(secure bool, state string) string {
	h := sha256.Sum256([]byte("mcpauth/v1/cookie\x00" + state))
	suffix := base64.RawURLEncoding.EncodeToString(h[:6])
	if secure {
		return "__Host-mcpauth_" + suffix
	}
	return "mcpauth_" + suffix
}

// BeginBrowser consumes the flow handle (single use), binds the flow to a
// fresh browser secret and returns the authorization server redirect.
func (s *OAuthService) BeginBrowser(ctx context.Context, handle string, secure bool) (*BrowserStart, error) {
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
	bh := sha256.Sum256([]byte(browser))
	rec.Browser = base64.RawURLEncoding.EncodeToString(bh[:])
	ttl := time.Unix(rec.ExpiresAt, 0).Sub(now)
	if ttl <= 0 {
		return nil, errFlowGone
	}
	_, challenge := challengeOf(rec.Verifier)
	md := &oauthclient.Metadata{AuthorizationEndpoint: rec.AuthEndpoint, Issuer: rec.Issuer}
	if !rec.PKCEException {
		// StartAuthorization checked the server advertises S256.
		md.CodeChallengeMethods = []string{"S256"}
	}
	authURL, err := oauthclient.AuthorizationURL(oauthclient.AuthRequest{
		Metadata:      md,
		PKCEException: rec.PKCEException,
		ClientID:      rec.ClientID,
		RedirectURI:   rec.RedirectURI,
		State:         rec.State,
		CodeChallenge: challenge,
		Scopes:        rec.Scopes,
		Resource:      rec.Resource,
		Extra:         rec.Extra,
	})
	if err != nil {
		return nil, apperr.Internal(err, "building authorization url")
	}
	if err := s.flows.put(ctx, flowKey("state", rec.State), rec, ttl); err != nil {
		return nil, err
	}
	return &BrowserStart{RedirectURL: authURL, CookieName: CookieName(secure, rec.State), CookieValue: browser, MaxAge: ttl}, nil
}

// challengeOf computes the S256 challenge of a verifier.
func challengeOf(verifier string) (string, string) {
	h := sha256.Sum256([]byte(verifier))
	return "S256", base64.RawURLEncoding.EncodeToString(h[:])
}

// CallbackInput is the authorization response as the browser delivered it.
type CallbackInput struct {
	State            string
	Code             string
	Iss              string
	IssPresent       bool
	Error            string
	ErrorDescription string
	// Cookie returns the value of the named cookie, or "".
	Cookie func(name string) string
	Secure bool
}

// CallbackResult is what the browser is shown.
type CallbackResult struct {
	OK bool
	// Reason is a stable code for failures.
	Reason string
	// Message is plain text for the result page (escaped when rendered).
	Message string
	// Detail is the authorization server's error and description, already
	// truncated; never set after an issuer mismatch.
	Detail string
	// Redirect, when set, is where to send the browser instead of a page.
	Redirect string
	// ProviderName is the provider's resource name, when known.
	ProviderName string
}

// Callback completes a flow: it consumes the state atomically, checks the
// browser binding and the issuer (RFC 9207) before the code goes anywhere,
// exchanges the code once, and stores the tokens encrypted.
func (s *OAuthService) Callback(ctx context.Context, in CallbackInput) *CallbackResult {
	if in.State == "" || len(in.State) > 512 {
		return &CallbackResult{Reason: "MISSING_STATE", Message: "The authorization response carries no valid state. Start the authorization again."}
	}
	rec, err := s.flows.take(ctx, flowKey("state", in.State), s.now())
	if err != nil {
		if apperr.KindOf(err) == apperr.KindUnavailable {
			return &CallbackResult{Reason: "UNAVAILABLE", Message: "mcpauth cannot reach its state store right now. Try again in a moment."}
		}
		s.log.WarnContext(ctx, "oauth callback with unknown, expired or replayed state")
		return &CallbackResult{Reason: "STATE_INVALID", Message: "This authorization link has expired or was already used. Start the authorization again."}
	}
	ctx = WithAuditScope(ctx, rec.Tenant, rec.Provider)
	name := resname.ProviderName(rec.Tenant, rec.Provider)
	fail := func(reason, msg, detail string) *CallbackResult {
		s.audit.Record(ctx, Event{Tenant: rec.Tenant, Type: EventCallbackFailed, Provider: rec.Provider, Actor: "user:" + rec.User,
			Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE, Reason: reason})
		_ = s.resetPending(ctx, rec.Tenant, rec.Provider)
		return s.finish(rec, &CallbackResult{Reason: reason, Message: msg, Detail: detail, ProviderName: name})
	}
	cookie := ""
	if in.Cookie != nil {
		cookie = in.Cookie(CookieName(in.Secure, rec.State))
	}
	bh := sha256.Sum256([]byte(cookie))
	if cookie == "" || subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(bh[:])), []byte(rec.Browser)) != 1 {
		return fail("BROWSER_MISMATCH", "This authorization was started in another browser. Start it again from the browser you use here.", "")
	}
	if err := oauthclient.CheckIssuer(rec.Issuer, rec.IssSupported, in.Iss, in.IssPresent); err != nil {
		// Mix-up defence: nothing the response says is shown or used.
		return fail("ISSUER_MISMATCH", "The authorization response came from an unexpected authorization server and was discarded.", "")
	}
	if in.Error != "" {
		return fail("AUTHORIZATION_DENIED", "The authorization server did not grant access.", upstreamDetail(in.Error, in.ErrorDescription))
	}
	if in.Code == "" || len(in.Code) > 4096 {
		return fail("MISSING_CODE", "The authorization response carries no code.", "")
	}
	row, err := s.store.GetProvider(ctx, rec.Tenant, rec.Provider)
	if err != nil {
		return fail("PROVIDER_GONE", "The provider was deleted while it was being authorized.", "")
	}
	if row.URLHash != rec.URLHash {
		return fail("PROVIDER_CHANGED", "The provider's server changed while it was being authorized. Start again.", "")
	}
	reg, err := s.flowRegistration(ctx, row, rec)
	if err != nil {
		return fail("CLIENT_CHANGED", "The provider's client registration changed while it was being authorized. Start again.", "")
	}
	md := &oauthclient.Metadata{Issuer: rec.Issuer, TokenEndpoint: rec.TokenEndpoint, AuthorizationEndpoint: rec.AuthEndpoint}
	tokens, err := s.proto.Exchange(ctx, md, reg, secret.New(in.Code), secret.New(rec.Verifier), rec.RedirectURI, rec.Resource, rec.Scopes)
	if err != nil {
		if errors.Is(err, oauthclient.ErrInvalidClient) && reg.Method == RegDynamic {
			// The server evicted our registration: register again next time.
			_ = s.store.DeleteClientRegistration(ctx, rec.Tenant, rec.Provider, rec.Issuer)
		}
		s.log.WarnContext(ctx, "code exchange failed", "tenant", rec.Tenant, "provider", rec.Provider, "err", err.Error())
		return fail("TOKEN_EXCHANGE_FAILED", "The authorization server refused to exchange the authorization code.", "")
	}
	grant := grantInfo{Issuer: rec.Issuer, TokenEndpoint: rec.TokenEndpoint, RevocationEndpoint: rec.RevocationURL,
		RegMethod: reg.Method, ClientID: reg.ClientID, AuthMethod: reg.AuthMethod, Resource: rec.Resource}
	if len(tokens.Scopes) == 0 {
		tokens.Scopes = rec.Scopes
	}
	if err := s.tokens.storeNew(ctx, row, grant, tokens); err != nil {
		s.log.ErrorContext(ctx, "storing tokens failed", "tenant", rec.Tenant, "provider", rec.Provider, "err", err.Error())
		return fail("STORE_FAILED", "The tokens could not be stored. Start the authorization again.", "")
	}
	s.audit.Record(ctx, Event{Tenant: rec.Tenant, Type: EventCallbackSucceeded, Provider: rec.Provider, Actor: "user:" + rec.User,
		Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS, Details: map[string]string{"issuer": rec.Issuer, "scopes": strings.Join(tokens.Scopes, " ")}})
	return s.finish(rec, &CallbackResult{OK: true, Message: "The MCP server is now connected. You can close this window.", ProviderName: name})
}

// flowRegistration re-reads the client the flow was started with; secrets
// never travel through the flow store.
func (s *OAuthService) flowRegistration(ctx context.Context, row *repository.Provider, rec *flowRecord) (*oauthclient.Registration, error) {
	switch rec.RegMethod {
	case RegPreRegistered:
		d, err := openProvider(s.cipher, row)
		if err != nil {
			return nil, err
		}
		if row.ClientID != rec.ClientID {
			return nil, errors.New("pre-registered client changed")
		}
		return &oauthclient.Registration{Method: RegPreRegistered, ClientID: row.ClientID, ClientSecret: d.clientSecret, AuthMethod: rec.AuthMethod, RedirectURI: rec.RedirectURI}, nil
	case RegCIMD:
		return &oauthclient.Registration{Method: RegCIMD, ClientID: rec.ClientID, AuthMethod: "none", RedirectURI: rec.RedirectURI}, nil
	case RegDynamic:
		stored, err := s.store.GetClientRegistration(ctx, rec.Tenant, rec.Provider, rec.Issuer)
		if err != nil {
			return nil, err
		}
		if stored.ClientID != rec.ClientID {
			return nil, errors.New("dynamic registration changed")
		}
		reg, err := openRegistration(s.cipher, stored)
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

// resetPending puts a PENDING provider back to UNAUTHORIZED after a failed
// flow; an authorized provider keeps its tokens and status.
func (s *OAuthService) resetPending(ctx context.Context, tenant, id string) error {
	row, err := s.store.GetProvider(ctx, tenant, id)
	if err != nil {
		return err
	}
	if mcpauthv1.AuthorizationStatus(row.AuthStatus) == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_PENDING {
		return s.store.SetAuthStatus(ctx, tenant, id, int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED))
	}
	return nil
}

// finish turns a result into a redirect to the caller's return URL when
// one was given at start.
func (s *OAuthService) finish(rec *flowRecord, r *CallbackResult) *CallbackResult {
	if rec.ReturnURL == "" {
		return r
	}
	u, err := url.Parse(rec.ReturnURL)
	if err != nil {
		return r
	}
	q := u.Query()
	q.Set("mcpauth_provider", r.ProviderName)
	if r.OK {
		q.Set("mcpauth_status", "success")
	} else {
		q.Set("mcpauth_status", "error")
		q.Set("mcpauth_reason", r.Reason)
	}
	u.RawQuery = q.Encode()
	r.Redirect = u.String()
	return r
}

// upstreamDetail shortens an authorization server's error for display. The
// page escapes it; here it is cut and stripped of control characters.
func upstreamDetail(code, desc string) string {
	clean := func(s string, n int) string {
		s = strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return -1
			}
			return r
		}, s)
		if len(s) > n {
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

// GetAuthorizationStatus reports whether the provider holds usable tokens.
func (s *OAuthService) GetAuthorizationStatus(ctx context.Context, req *mcpauthv1.GetAuthorizationStatusRequest) (*mcpauthv1.GetAuthorizationStatusResponse, error) {
	row, err := providerByName(ctx, s.store, req.GetName())
	if err != nil {
		return nil, err
	}
	tenant, id := row.TenantID, row.ID
	resp := &mcpauthv1.GetAuthorizationStatusResponse{Status: mcpauthv1.AuthorizationStatus(row.AuthStatus)}
	cred, err := s.store.GetCredential(ctx, tenant, id)
	if err != nil && apperr.KindOf(err) != apperr.KindNotFound {
		return nil, err
	}
	if cred != nil {
		resp.Issuer, resp.Scopes, resp.HasRefreshToken, resp.Reason = cred.Issuer, parseList(cred.Scopes), cred.HasRefresh, cred.Reason
		if cred.ExpiresAt != nil {
			resp.ExpireTime = timestamppb.New(*cred.ExpiresAt)
			if resp.Status == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED && !cred.HasRefresh && !cred.ExpiresAt.After(s.now()) {
				resp.Status = mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_EXPIRED
				resp.Reason = "access token expired and no refresh token is held"
			}
		}
	}
	return resp, nil
}

// GetAccessToken returns a valid access token (see TokenService).
func (s *OAuthService) GetAccessToken(ctx context.Context, req *mcpauthv1.GetAccessTokenRequest) (*mcpauthv1.GetAccessTokenResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	tok, cred, err := s.tokens.Get(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	resp := &mcpauthv1.GetAccessTokenResponse{AccessToken: tok.AccessToken.Reveal(), TokenType: tok.TokenType,
		Scopes: tok.Scopes, Issuer: cred.Issuer}
	if resp.TokenType == "" {
		resp.TokenType = "Bearer"
	}
	if !tok.ExpiresAt.IsZero() {
		resp.ExpireTime = timestamppb.New(tok.ExpiresAt)
	}
	s.audit.Record(ctx, Event{Tenant: tenant, Type: EventTokenRead, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS})
	return resp, nil
}

// RevokeAuthorization revokes at the server when it can, then deletes the
// tokens locally; the client registration is kept.
func (s *OAuthService) RevokeAuthorization(ctx context.Context, req *mcpauthv1.RevokeAuthorizationRequest) (*mcpauthv1.RevokeAuthorizationResponse, error) {
	row, err := providerByName(ctx, s.store, req.GetName())
	if err != nil {
		return nil, err
	}
	revoked, err := s.tokens.Revoke(ctx, row.TenantID, row.ID)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.RevokeAuthorizationResponse{RevokedAtServer: revoked}, nil
}

// DiagnoseProvider runs discovery and registration selection without
// starting a flow and reports every step in plain words.
func (s *OAuthService) DiagnoseProvider(ctx context.Context, req *mcpauthv1.DiagnoseProviderRequest) (*mcpauthv1.DiagnoseProviderResponse, error) {
	d, err := s.loadProvider(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	ctx = WithAuditScope(ctx, d.row.TenantID, d.row.ID)
	tr := &oauthclient.Trace{}
	resp := &mcpauthv1.DiagnoseProviderResponse{}
	disc, derr := s.discover(ctx, d, nil, tr)
	// The provider's URL path can hold a secret (some servers put an API
	// key there), and masked views never show it: nor does the trace.
	hide := func(u string) string { return u }
	if p := strings.TrimRight(d.url.EscapedPath(), "/"); p != "" {
		hide = func(u string) string { return strings.ReplaceAll(u, p, "/******") }
	}
	for _, st := range tr.Steps {
		resp.Steps = append(resp.Steps, &mcpauthv1.DiagnosticStep{Action: st.Action, Url: hide(st.URL), HttpStatus: int32(st.HTTPStatus),
			ContentType: st.ContentType, Ok: st.OK, Detail: hide(st.Detail)})
	}
	if derr != nil {
		resp.BlockingProblem = derr.Error()
		return resp, nil
	}
	if disc.probe.NotRequired {
		resp.Status = mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED
		resp.Ready = true
		return resp, nil
	}
	md := disc.md
	resp.ResourceMetadataUrl = hide(md.ResourceMetadataURL)
	resp.Issuer = md.Issuer
	resp.PkceS256Supported = md.SupportsS256()
	resp.ClientIdMetadataDocumentSupported = md.ClientIDMetadataDocumentSupported
	resp.DynamicRegistrationSupported = md.RegistrationEndpoint != ""
	resp.IssuerParameterSupported = md.IssParameterSupported
	resp.Scopes = disc.scopes
	resp.Status = mcpauthv1.AuthorizationStatus(d.row.AuthStatus)
	switch {
	case !md.SupportsS256() && !(d.compat.AllowMissingPKCE && len(md.CodeChallengeMethods) == 0):
		resp.BlockingProblem = "the authorization server does not advertise S256 PKCE; mcpauth refuses to authorize without it (set compatibility.allow_missing_pkce_metadata only if you know the server supports S256 anyway)"
	default:
		reg, err := s.registration(ctx, d, md, disc.scopes, true)
		if err != nil {
			resp.BlockingProblem = err.Error()
		} else {
			resp.RegistrationMethod = reg.Method
			resp.Ready = true
		}
	}
	return resp, nil
}
