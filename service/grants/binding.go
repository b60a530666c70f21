package grants

import (
	"context"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
)

// The identity binding of enterprise-managed connections.
//
// The calling platform names the user and supplies the ID token; nothing
// but the platform ties the two together. A platform bug, or a caller
// allowed to act for alice holding bob's ID token, would store bob's
// enterprise identity under alice's connection, and alice's tool calls
// would act as bob. So a USER provider's connection is bound to the
// identity (iss, sub; OpenID Connect Core 1.0 section 2: together they
// name one end user, never reassigned) of the ID token its first exchange
// stored tokens with, and an exchange with an ID token of another
// identity is refused (IDENTITY_BINDING_MISMATCH). Optionally the
// provider's user_claim names a claim that must equal the user exactly
// (ID_TOKEN_USER_MISMATCH).
//
// Both checks read the ID token's claims before anything is sent: a
// refusal sends the ID token nowhere. Those claims are unverified then;
// they become the identity provider's word once it accepts the token in
// the exchange (the ID-JAG draft, section 4.3.1: the IdP MUST validate
// the subject token, and its audience is mcpauth's client), because
// exactly those bytes were sent. The binding is therefore written only
// after that acceptance, and checked again after it: before the
// authorization server is asked (a binding stored meanwhile by a
// concurrent exchange), and under the credential's compare-and-swap when
// the tokens are stored (then the tokens just obtained are revoked). The
// ID-JAG's own sub cannot serve: it names the user at the resource
// authorization server (the draft, section 3), which may differ.
//
// The binding lives on the connection's row: deleting or revoking the
// connection, or a provider change that drops its grants, clears it.
// Setting or changing user_claim is such a change (the identity
// provider's settings): connections bound before were never checked
// against the claim, so all go, and each user exchanges again under it.
// An exchange checked under the old rule and still under way stores
// nothing (storeExchanged: PROVIDER_CHANGED).

// stepBinding names the identity checks in errors and audit details.
const stepBinding = "identity_binding"

// exchangeIdentity is what an exchange's ID token says about its user.
type exchangeIdentity struct {
	claims *oauthclient.IDTokenClaims
}

// readExchangeIdentity reads the ID token's identity (unverified; see
// above). A token without iss and sub is no OpenID Connect ID token.
func readExchangeIdentity(tok secret.Secret) (*exchangeIdentity, error) {
	c, err := oauthclient.ReadIDTokenUnverified(tok)
	if err != nil {
		return nil, apperr.Invalid("id_token", "must be an OpenID Connect ID token: %s", err)
	}
	return &exchangeIdentity{claims: c}, nil
}

// checkUserClaim refuses an ID token whose user claim (when the provider
// names one) is not user, compared exactly.
func checkUserClaim(claim, user string, id *exchangeIdentity) error {
	if claim == "" {
		return nil
	}
	if v, ok := id.claims.All[claim].(string); ok && v == user {
		return nil
	}
	return apperr.FailedPrecondition(domain.ReasonIDTokenUserMismatch,
		"the ID token's %q claim is not the user the exchange is for (the provider's enterprise_identity_provider.user_claim)", claim).
		WithMeta("step", stepBinding)
}

// The issuer check. An ID token is only ever the word of the identity
// provider that issued it, and it is sent only to the provider's own
// enterprise identity provider: one whose iss is not that provider's
// issuer identifier exactly (OpenID Connect Core 1.0 section 3.1.3.7
// step 2) is refused (ID_TOKEN_ISSUER_MISMATCH), for every grant scope.
// The identifier is known before anything is sent: it is the configured
// enterprise_identity_provider.issuer, which the metadata's issuer must
// equal to be used (RFC 8414 section 3.3), except that the two may differ
// in the trailing slash of an issuer without a path (oauthclient.
// SameIssuer). So the token is checked twice: before anything is sent,
// against the configured issuer, leaving only that slash open; and after
// the metadata was read, before the token exchange, against the issuer
// the metadata names (the one "obtained during Discovery"), exactly. A
// token of another identity provider thus goes nowhere. A provider
// configured with a token endpoint alone names no issuer: nothing to
// compare with, and its identity provider's own validation stands alone.

// checkIssuerConfigured refuses, before anything is sent, an ID token
// whose iss cannot be the configured issuer's identifier.
func checkIssuerConfigured(configured string, id *exchangeIdentity) error {
	if configured == "" || oauthclient.SameIssuer(id.claims.Issuer, configured) {
		return nil
	}
	return errIssuerMismatch(configured)
}

// checkIssuerExact refuses an ID token whose iss is not exactly the
// identity provider's issuer identifier (from its metadata when it was
// read, else the configured one; identityProvider).
func checkIssuerExact(idp *oauthclient.Metadata, id *exchangeIdentity) error {
	if idp.Issuer == "" || id.claims.Issuer == idp.Issuer {
		return nil
	}
	return errIssuerMismatch(idp.Issuer)
}

// errIssuerMismatch is the caller's error. It names the expected issuer
// (the provider's setting, shown by GetProvider) but not the token's iss:
// errors never quote an ID token's claims (the audit event names it).
func errIssuerMismatch(want string) error {
	return apperr.FailedPrecondition(domain.ReasonIDTokenIssuerMismatch,
		"the ID token's iss is not exactly %q, the issuer of the provider's enterprise identity provider (OpenID Connect Core 1.0 section 3.1.3.7): it was sent nowhere", want).
		WithMeta("step", stepBinding)
}

// bindingMismatch reports whether cred is bound to another identity than
// id's.
func bindingMismatch(cred *repository.Credential, id *exchangeIdentity) bool {
	if cred == nil || cred.IdentitySubject == "" {
		return false
	}
	return cred.IdentityIssuer != id.claims.Issuer || cred.IdentitySubject != id.claims.Subject
}

// errBindingMismatch is the caller's error; it names neither identity (the
// connection's identity is the connection's to show, to callers allowed
// to read it).
func errBindingMismatch() error {
	return apperr.FailedPrecondition(domain.ReasonIdentityBindingMismatch,
		"the ID token names another identity (iss, sub) than the one the user's connection is bound to; delete the connection to bind it to another identity").
		WithMeta("step", stepBinding)
}

// checkBinding reads the user's connection and refuses id when the
// connection is bound to another identity.
func (s *Service) checkBinding(ctx context.Context, ref domain.GrantRef, id *exchangeIdentity) error {
	cred, err := s.store.GetCredential(ctx, ref)
	if apperr.KindOf(err) == apperr.KindNotFound {
		return nil
	}
	if err != nil {
		return err
	}
	if bindingMismatch(cred, id) {
		return errBindingMismatch()
	}
	return nil
}

// identityDetails are the audit details naming the identity an ID token
// presented. iss and sub are identifiers, not secrets (OpenID Connect
// Core 1.0 section 2: a locally unique, never reassigned identifier meant
// to be consumed by the client; knowing one grants nothing), and the
// audit already names the platform's own user id: an operator looking at
// a refused exchange needs to know whose identity was offered. The ID
// token itself is never audited.
func identityDetails(det map[string]string, id *exchangeIdentity) map[string]string {
	det["identity_issuer"], det["identity_subject"] = id.claims.Issuer, id.claims.Subject
	return det
}
