package grants

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// IdentityExchanger exchanges a user's ID token for an identity assertion
// JWT authorization grant at an enterprise identity provider.
// *oauthclient.Client implements it.
type IdentityExchanger interface {
	IdentityProviderMetadata(ctx context.Context, issuer string, tr *oauthclient.Trace) (*oauthclient.Metadata, error)
	ExchangeIDToken(ctx context.Context, idp *oauthclient.Metadata, reg *oauthclient.Registration, idToken secret.Secret, audience, resource string, scopes []string) (*oauthclient.IDJAG, error)
}

var _ IdentityExchanger = (*oauthclient.Client)(nil)

// maxIDTokenLen bounds an ID token a caller may supply.
const maxIDTokenLen = 16 << 10

// The steps of enterprise-managed authorization, named in errors
// (metadata "step") and audit details.
const (
	stepDiscovery     = "discovery"
	stepTokenExchange = "token_exchange"
	stepJWTBearer     = "jwt_bearer"
	// stepStore is storing the tokens obtained.
	stepStore = "store"
)

// IdentityAssertion asks for an enterprise-managed provider's tokens from
// a user's ID token.
type IdentityAssertion struct {
	Tenant, Provider string
	// User is the end user as the calling platform knows them.
	User string
	// IDToken is the user's ID token from the enterprise identity provider.
	IDToken secret.Secret
}

// Exchanged describes the tokens ExchangeIdentityAssertion stored,
// without them.
type Exchanged struct {
	Issuer string
	Scopes []string
	// ExpiresAt is zero when the server gave no lifetime.
	ExpiresAt  time.Time
	HasRefresh bool
}

// IDTokenRequired is the error of an enterprise-managed provider that holds
// no usable token: only the calling platform can supply what gets a new one.
func IDTokenRequired(why string) error {
	return apperr.FailedPrecondition(domain.ReasonIDTokenRequired,
		"%s: call ExchangeIdentityAssertion with a fresh ID token of the user from the enterprise identity provider", why)
}

// checkIdentityAssertion checks a request before anything is read or sent.
func checkIdentityAssertion(in IdentityAssertion) error {
	tok := in.IDToken.Reveal()
	switch {
	case tok == "":
		return apperr.Invalid("id_token", "is required")
	case len(tok) > maxIDTokenLen:
		return apperr.Invalid("id_token", "must be at most 16 KiB")
	case strings.Count(tok, ".") != 2 || strings.IndexFunc(tok, notJWTRune) >= 0:
		// A JWS in compact serialisation (RFC 7515 section 7.1); the
		// identity provider checks the rest.
		return apperr.Invalid("id_token", "must be a JWT: three base64url parts separated by dots")
	case len(in.User) > 255 || strings.IndexFunc(in.User, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0:
		return apperr.Invalid("user", "must be at most 255 bytes without control characters")
	}
	return nil
}

func notJWTRune(r rune) bool {
	return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
}

// ExchangeIdentityAssertion obtains an enterprise-managed provider's tokens
// (the MCP enterprise-managed authorization extension): an RFC 8693 token
// exchange of the user's ID token at the identity provider for an ID-JAG
// whose audience is the MCP server's authorization server and whose
// resource is the MCP server, then the RFC 7523 JWT bearer grant with that
// ID-JAG at the authorization server, as the provider's client. The tokens
// replace the provider's grant. Neither the ID token nor the ID-JAG is kept,
// logged or audited. Nothing is retried: an OAuth error at either step is
// reported as it is. The ID token's iss must be exactly the identity
// provider's issuer, or it is sent nowhere. A USER provider's connection is bound to the identity
// (iss, sub) of the ID token of its first exchange, and the provider's
// user_claim, when set, must name the user (binding.go).
func (s *Service) ExchangeIdentityAssertion(ctx context.Context, in IdentityAssertion) (*Exchanged, error) {
	if err := checkIdentityAssertion(in); err != nil {
		return nil, err
	}
	id, err := readExchangeIdentity(in.IDToken)
	if err != nil {
		return nil, err
	}
	row, err := s.store.GetProvider(ctx, in.Tenant, in.Provider)
	if err != nil {
		return nil, err
	}
	d, err := vault.OpenProvider(s.cipher, row)
	if err != nil {
		return nil, err
	}
	if d.Kind != domain.KindEnterpriseManaged {
		return nil, apperr.Invalid("name", "names a provider whose credential_kind is not ENTERPRISE_MANAGED")
	}
	// A TENANT provider keeps taking the user for the audit trail only.
	ref := domain.TenantGrant(in.Tenant, in.Provider)
	if row.GrantScope.PerUser() {
		if ref, err = vault.GrantFor(row, in.User); err != nil {
			return nil, err
		}
	}
	m := s.machine
	if m.Discover == nil || m.Proto == nil || m.Identity == nil {
		return nil, apperr.FailedPrecondition(domain.ReasonNotAuthorized, "enterprise-managed authorization is not available on this server")
	}
	ctx = audit.WithScope(ctx, in.Tenant, in.Provider)
	// stored is the failure's "stored" detail: storedUnknown for tokens
	// whose write may have committed.
	var stored string
	failed := func(step, reason, code string) {
		det := map[string]string{"kind": string(d.Kind), "step": step}
		if code != "" {
			det["oauth_error"] = code
		}
		if stored != "" {
			det["stored"] = stored
		}
		s.audit.Record(ctx, audit.Event{Tenant: in.Tenant, Type: domain.EventTokenObtainFailed, Provider: in.Provider, User: ref.User,
			Outcome: domain.OutcomeFailure, Reason: reason, Details: withUser(identityDetails(det, id), in.User)})
	}
	perUser := row.GrantScope.PerUser()
	// The identity checks come first: a refused ID token goes nowhere,
	// not even the MCP server is asked anything (binding.go).
	if err := s.checkIdentity(ctx, d, ref, in.User, id, perUser); err != nil {
		if e, ok := apperr.As(err); ok && e.Kind == apperr.KindFailedPrecondition {
			failed(stepBinding, e.Reason, "")
		}
		return nil, err
	}
	probe, err := m.Discover.Probe(ctx, d.URL.String(), d.Headers, nil)
	if err != nil {
		failed(stepDiscovery, domain.ReasonUnavailable, "")
		return nil, apperr.Unavailable(err, "the MCP server could not be probed")
	}
	md, err := m.Discover.Discover(ctx, d.URL.String(), d.Resource, probe, nil)
	if err != nil {
		failed(stepDiscovery, domain.ReasonUnavailable, "")
		return nil, apperr.Unavailable(err, "the authorization server could not be discovered")
	}
	if md.RefusesIDJAG() {
		// The server says it takes no ID-JAG: the user's ID token is not
		// sent anywhere for a grant that cannot be presented.
		failed(stepDiscovery, domain.ReasonIDJAGNotSupported, "")
		return nil, apperr.FailedPrecondition(domain.ReasonIDJAGNotSupported,
			"the authorization server's authorization_grant_profiles_supported does not list %s: it does not accept identity assertion grants", oauthclient.GrantProfileIDJAG).
			WithMeta("step", stepDiscovery)
	}
	idp, err := s.identityProvider(ctx, d)
	if err != nil {
		failed(stepDiscovery, domain.ReasonUnavailable, "")
		return nil, err
	}
	if err := checkIssuerExact(idp, id); err != nil {
		failed(stepBinding, domain.ReasonIDTokenIssuerMismatch, "")
		return nil, err
	}
	scopes, resource := grantScopes(d, probe, md), d.ResourceParam()
	idpReg := &oauthclient.Registration{Method: domain.RegPreRegistered, ClientID: d.CredConfig.IdP.ClientID, ClientSecret: d.IdPClientSecret,
		ClientKey: d.IdPClientKey}
	jag, err := m.Identity.ExchangeIDToken(ctx, idp, idpReg, in.IDToken, md.Issuer, resource, scopes)
	if err != nil {
		return nil, exchangeFailed(stepTokenExchange, err, failed)
	}
	if perUser {
		// The identity provider accepted the ID token: its identity is now
		// the provider's word. A binding a concurrent exchange stored
		// meanwhile refuses it before the authorization server is asked.
		if err := s.checkBinding(ctx, ref, id); err != nil {
			if apperr.KindOf(err) == apperr.KindFailedPrecondition {
				failed(stepBinding, domain.ReasonIdentityBindingMismatch, "")
			}
			return nil, err
		}
	}
	reg := &oauthclient.Registration{Method: domain.RegPreRegistered, ClientID: row.ClientID, ClientSecret: d.ClientSecret,
		AuthMethod: d.Compat.TokenEndpointAuth, ClientKey: d.ClientKey}
	// DPoP as for every other grant (RFC 9449 section 5): the JWT bearer
	// request is proven with the provider's key when its mode says so, and
	// only a token bound to that key is taken.
	reg.DPoP = d.DPoPFor(md.DPoPSigningAlgs)
	fresh, err := m.Proto.JWTBearer(ctx, md, reg, jag.Assertion, scopes, resource)
	if err != nil {
		// An unbound token is never used: revoke it at once.
		s.revokeUnbound(ctx, in.Tenant, in.Provider, md, reg, err)
		return nil, exchangeFailed(stepJWTBearer, err, failed)
	}
	if fresh.TokenType == "" {
		fresh.TokenType = "Bearer"
	}
	method, _ := oauthclient.ChooseAuthMethod(reg, md.TokenEndpointAuthMethods)
	g := vault.Grant{Issuer: md.Issuer, TokenEndpoint: md.TokenEndpoint, RevocationEndpoint: md.RevocationEndpoint,
		RegMethod: domain.RegPreRegistered, ClientID: row.ClientID, AuthMethod: method, Resource: resource,
		Server: validate.NormalizeURL(d.URL), Kind: d.Kind}
	if reg.DPoP != nil {
		g.DPoPJKT = reg.DPoP.Thumbprint()
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
	defer cancel()
	var bind *oauthclient.IDTokenClaims
	if perUser {
		bind = id.claims
	}
	if err := s.storeExchanged(pctx, ref, g, fresh, bind, row.Version); err != nil {
		if held, _, _, lerr := s.readBack(ctx, ref, fresh); !held {
			step, reason := stepStore, storeFailReason(err)
			if e, ok := apperr.As(err); ok && e.Reason == domain.ReasonIdentityBindingMismatch {
				step, reason = stepBinding, domain.ReasonIdentityBindingMismatch
			}
			if storeOutcomeUnknown(err, lerr) {
				// The write may have committed (its answer and the
				// read-back both failed): revoking could leave the stored
				// grant with dead tokens, so they are left to expire.
				stored = storedUnknown
				failed(step, reason, "")
				s.warnStoreUnknown(ref, err, lerr)
				return nil, err
			}
			// Nobody's to keep, whatever kept them out: revoked. Bound to
			// another identity by an exchange that stored first; obtained
			// under rules the provider no longer has (its grants were
			// reset meanwhile: PROVIDER_CHANGED); or not stored at all
			// (storeFailReason).
			failed(step, reason, "")
			s.revokeFresh(pctx, in.Tenant, in.Provider, md, reg, fresh.AccessToken, fresh.RefreshToken)
			return nil, err
		}
		// Stored after all (the write's answer was lost): done.
	}
	det := map[string]string{"kind": string(d.Kind), "grant_type": d.Kind.GrantType(), "auth_method": method,
		"idp_grant_type": oauthclient.GrantTokenExchange}
	identityDetails(det, id)
	if g.DPoPJKT != "" {
		det["token_type"], det["dpop_jkt"] = fresh.TokenType, g.DPoPJKT
	}
	s.audit.Record(pctx, audit.Event{Tenant: in.Tenant, Type: domain.EventTokenObtained, Provider: in.Provider, User: ref.User,
		Outcome: domain.OutcomeSuccess, Details: withUser(det, in.User)})
	return &Exchanged{Issuer: md.Issuer, Scopes: fresh.Scopes, ExpiresAt: fresh.ExpiresAt, HasRefresh: !fresh.RefreshToken.IsZero()}, nil
}

// checkIdentity is the checks of an ID token made before anything is
// sent (binding.go): its issuer for every provider; for a USER
// provider's connection, its user claim and the connection's binding.
func (s *Service) checkIdentity(ctx context.Context, d *vault.Provider, ref domain.GrantRef, user string, id *exchangeIdentity, perUser bool) error {
	if err := checkIssuerConfigured(d.CredConfig.IdP.Issuer, id); err != nil || !perUser {
		return err
	}
	if err := checkUserClaim(d.CredConfig.IdP.UserClaim, user, id); err != nil {
		return err
	}
	return s.checkBinding(ctx, ref, id)
}

// withUser adds the end user to audit details when one is named.
func withUser(det map[string]string, user string) map[string]string {
	if user != "" {
		det["user"] = user
	}
	return det
}

// identityProvider is where the provider's ID tokens are exchanged: the
// configured token endpoint, else the one the issuer's metadata names;
// the metadata's authentication methods when there is metadata.
func (s *Service) identityProvider(ctx context.Context, d *vault.Provider) (*oauthclient.Metadata, error) {
	cfg := d.CredConfig.IdP
	md := &oauthclient.Metadata{Issuer: cfg.Issuer, TokenEndpoint: cfg.TokenEndpoint}
	if cfg.Issuer == "" {
		return md, nil
	}
	found, err := s.machine.Identity.IdentityProviderMetadata(ctx, cfg.Issuer, nil)
	if err != nil {
		if cfg.TokenEndpoint != "" {
			// The configured endpoint is enough; the metadata only helps
			// choose the authentication.
			return md, nil
		}
		return nil, apperr.Unavailable(err, "the identity provider's metadata could not be read")
	}
	if cfg.TokenEndpoint != "" {
		found.TokenEndpoint = cfg.TokenEndpoint
	}
	return found, nil
}

// grantScopes are the scopes a grant without a browser asks for: the
// provider's, else the MCP server's challenge's, else its metadata's.
func grantScopes(d *vault.Provider, probe *oauthclient.ProbeResult, md *oauthclient.Metadata) []string {
	scopes := d.Scopes
	if len(scopes) == 0 && probe != nil {
		scopes = probe.Scopes
	}
	if len(scopes) == 0 {
		scopes = md.ScopesSupported
	}
	return scopes
}

// exchangeFailed turns a failed step into the caller's error, as the
// server answered: the identity provider's OAuth error as
// IDENTITY_PROVIDER_REFUSED, the authorization server's with the reasons
// of the other grants without a browser; both with the code in metadata.
// The held grant is left alone: tokens an earlier exchange got still work.
func exchangeFailed(step string, err error, failed func(step, reason, code string)) error {
	var (
		oe   *oauthclient.OAuthError
		temp *oauthclient.TemporaryError
	)
	party := "the authorization server"
	if step == stepTokenExchange {
		party = "the identity provider"
	}
	switch {
	case step == stepJWTBearer && dpopRefused(err):
		// Never retried, never answered by taking a Bearer token.
		failed(step, domain.ReasonDPoPRefused, oauthCode(err))
		return apperr.FailedPrecondition(domain.ReasonDPoPRefused, "the authorization server did not honour DPoP for the identity assertion grant: disable DPoP for the provider, or fix the server").
			WithMeta("step", step)
	case errors.As(err, &oe):
		reason := domain.ReasonIdentityProviderRefused
		if step == stepJWTBearer {
			reason = oauthReason(oe.Code)
		}
		failed(step, reason, oe.Code)
		return apperr.FailedPrecondition(reason, "%s refused the %s (%s)", party, stepName(step), oe.Code).
			WithMeta("oauth_error", oe.Code).WithMeta("step", step)
	case errors.As(err, &temp):
		failed(step, domain.ReasonUnavailable, "")
		return apperr.Unavailable(err, "%s could not be reached for the %s", party, stepName(step))
	}
	reason := domain.ReasonGrantRefused
	if step == stepTokenExchange {
		reason = domain.ReasonIdentityProviderRefused
	}
	failed(step, reason, "")
	// oauthclient's errors name what was wrong with the answer, never a
	// token.
	return apperr.FailedPrecondition(reason, "%s did not complete the %s: %s", party, stepName(step), err.Error()).WithMeta("step", step)
}

func stepName(step string) string {
	if step == stepTokenExchange {
		return "token exchange"
	}
	return "identity assertion grant"
}

// oauthReasons are the reasons of the token endpoint's OAuth error codes
// (RFC 6749 section 5.2) that have one of their own.
var oauthReasons = map[string]string{
	"invalid_grant":       domain.ReasonInvalidGrant,
	"invalid_client":      domain.ReasonInvalidClient,
	"invalid_scope":       domain.ReasonInvalidScope,
	"unauthorized_client": domain.ReasonUnauthorizedClient,
}

// oauthReason maps a token endpoint's OAuth error code to a reason.
func oauthReason(code string) string {
	if r, ok := oauthReasons[code]; ok {
		return r
	}
	return domain.ReasonGrantRefused
}

// oauthCodeOf is the OAuth error code a reason stands for, "" when it
// stands for none in particular.
func oauthCodeOf(reason string) string {
	for code, r := range oauthReasons {
		if r == reason {
			return code
		}
	}
	return ""
}

// storeExchanged stores tokens obtained from an ID token over whatever the
// grant holds: they are what the user just asked for. A concurrent writer
// (a refresh of the old tokens) loses the compare-and-swap and is read
// again once. With bind (a USER provider's connection), the row read must
// not be bound to another identity (IDENTITY_BINDING_MISMATCH, nothing
// stored), and the write binds it to bind's when it is not bound yet:
// checked and written under the same compare-and-swap.
//
// The tokens are stored only while the provider is still at
// providerVersion, the row whose rules (user_claim, identity provider,
// client) the exchange was checked and made under: an update that changed
// them reset the provider's grants, and tokens obtained under the old
// rules must not come back after that reset (PROVIDER_CHANGED).
func (s *Service) storeExchanged(ctx context.Context, ref domain.GrantRef, g vault.Grant, t *oauthclient.Tokens, bind *oauthclient.IDTokenClaims, providerVersion int64) error {
	for attempt := 0; ; attempt++ {
		prev, err := s.store.GetCredential(ctx, ref)
		if apperr.KindOf(err) == apperr.KindNotFound {
			prev, err = nil, nil
		}
		if err != nil {
			// Nothing of this attempt was sent, and a first attempt
			// retried was aborted: nothing was written.
			return unsent{err}
		}
		if bind != nil && bindingMismatch(prev, &exchangeIdentity{claims: bind}) {
			return errBindingMismatch()
		}
		_, err = s.storeObtained(ctx, ref, prev, g, t, bind, providerVersion)
		if apperr.KindOf(err) != apperr.KindAborted || attempt == 1 {
			return err
		}
	}
}

// enterpriseLoadError is Get's answer for an enterprise-managed provider
// without a usable grant: only a new ID token helps.
func enterpriseLoadError(cred *repository.Credential, loadErr error) error {
	e, ok := apperr.As(loadErr)
	switch {
	case !ok:
		return loadErr
	case e.Reason == domain.ReasonNotAuthorized:
		return IDTokenRequired("the provider holds no tokens")
	case e.Reason == domain.ReasonReauthRequired && cred != nil:
		return IDTokenRequired(reauthWhy(cred.Reason))
	}
	return loadErr
}
