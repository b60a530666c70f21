package server

import (
	"strings"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
	"github.com/mcpauth/mcpauth/service/providers"
)

// credentialKinds maps the API's credential kinds to the domain's.
var credentialKinds = map[mcpauthv1.CredentialKind]domain.CredentialKind{
	mcpauthv1.CredentialKind_CREDENTIAL_KIND_UNSPECIFIED:          domain.KindAuthorizationCode,
	mcpauthv1.CredentialKind_CREDENTIAL_KIND_AUTHORIZATION_CODE:   domain.KindAuthorizationCode,
	mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS:   domain.KindClientCredentials,
	mcpauthv1.CredentialKind_CREDENTIAL_KIND_JWT_BEARER:           domain.KindJWTBearer,
	mcpauthv1.CredentialKind_CREDENTIAL_KIND_STATIC_AUTHORIZATION: domain.KindStaticAuthorization,
	mcpauthv1.CredentialKind_CREDENTIAL_KIND_ENTERPRISE_MANAGED:   domain.KindEnterpriseManaged,
}

// credentialKindProto is the API's value of a domain credential kind
// (UNSPECIFIED stays for the authorization code default).
func credentialKindProto(k domain.CredentialKind) mcpauthv1.CredentialKind {
	if k == domain.KindAuthorizationCode {
		return mcpauthv1.CredentialKind_CREDENTIAL_KIND_UNSPECIFIED
	}
	for api, d := range credentialKinds {
		if d == k && api != mcpauthv1.CredentialKind_CREDENTIAL_KIND_UNSPECIFIED {
			return api
		}
	}
	return mcpauthv1.CredentialKind_CREDENTIAL_KIND_UNSPECIFIED
}

// credentialFields converts the credential settings of an API provider.
func credentialFields(p *mcpauthv1.Provider, f *providers.Fields) error {
	kind, known := credentialKinds[p.GetCredentialKind()]
	if !known {
		return apperr.Invalid("provider.credential_kind", "is not a known credential kind")
	}
	f.CredentialKind, f.StaticAuthorization = kind, p.GetStaticAuthorization()
	f.AssertionFile = p.GetWorkloadIdentity().GetAssertionFile()
	if e := p.GetEnterpriseIdentityProvider(); e != nil {
		f.EnterpriseIdP = &providers.EnterpriseIdPInput{Issuer: e.GetIssuer(), TokenEndpoint: e.GetTokenEndpoint(),
			ClientID: e.GetClientId(), ClientSecret: e.GetClientSecret(), UserClaim: e.GetUserClaim()}
		if k := e.GetPrivateKeyJwt(); k != nil {
			f.EnterpriseIdP.Key = &providers.ClientKeyInput{PEM: k.GetPrivateKeyPem(), Generate: k.GetGenerate(), Algorithm: k.GetAlgorithm()}
		}
	}
	if k := p.GetOauthClient().GetPrivateKeyJwt(); k != nil {
		f.OAuthClient.Key = &providers.ClientKeyInput{PEM: k.GetPrivateKeyPem(), Generate: k.GetGenerate(), Algorithm: k.GetAlgorithm()}
	}
	if d := p.GetDpop(); d != nil {
		mode, known := dpopModes[d.GetMode()]
		if !known {
			return apperr.Invalid("provider.dpop.mode", "is not a known DPoP mode")
		}
		f.DPoP = providers.DPoPInput{Mode: mode, Algorithm: d.GetAlgorithm(), RotateKey: d.GetRotateKey()}
	}
	return nil
}

// dpopModes maps the API's DPoP modes to the domain's.
var dpopModes = map[mcpauthv1.DpopMode]domain.DPoPMode{
	mcpauthv1.DpopMode_DPOP_MODE_UNSPECIFIED: domain.DPoPDisabled,
	mcpauthv1.DpopMode_DPOP_MODE_DISABLED:    domain.DPoPDisabled,
	mcpauthv1.DpopMode_DPOP_MODE_AUTO:        domain.DPoPAuto,
	mcpauthv1.DpopMode_DPOP_MODE_REQUIRED:    domain.DPoPRequired,
}

// dpopModeProto is the API's name of a DPoP mode.
func dpopModeProto(m domain.DPoPMode) mcpauthv1.DpopMode {
	switch m {
	case domain.DPoPAuto:
		return mcpauthv1.DpopMode_DPOP_MODE_AUTO
	case domain.DPoPRequired:
		return mcpauthv1.DpopMode_DPOP_MODE_REQUIRED
	}
	return mcpauthv1.DpopMode_DPOP_MODE_DISABLED
}

// credentialProto adds the credential settings of a view to p.
func credentialProto(v *providers.View, p *mcpauthv1.Provider) {
	p.CredentialKind = credentialKindProto(v.CredentialKind)
	if h := v.StaticAuthorization; h != nil {
		p.StaticAuthorizationInfo = &mcpauthv1.HeaderInfo{Name: h.Name, ValueSet: h.ValueSet, Fingerprint: h.Fingerprint}
	}
	if v.AssertionFile != "" {
		p.WorkloadIdentity = &mcpauthv1.WorkloadIdentity{AssertionFile: v.AssertionFile}
	}
	if e := v.EnterpriseIdP; e != nil {
		p.EnterpriseIdentityProvider = &mcpauthv1.EnterpriseIdentityProvider{Issuer: e.Issuer, TokenEndpoint: e.TokenEndpoint,
			ClientId: e.ClientID, ClientSecretSet: e.SecretSet, UserClaim: e.UserClaim}
		if k := e.Key; k != nil {
			p.EnterpriseIdentityProvider.PrivateKeyJwt = &mcpauthv1.ClientKey{Algorithm: k.Algorithm, KeyId: k.KeyID, JwksUri: k.JWKSURI, Generated: k.Generated}
		}
	}
	if d := v.DPoP; d != nil {
		p.Dpop = &mcpauthv1.DpopSettings{Mode: dpopModeProto(d.Mode), Algorithm: d.Algorithm, KeyThumbprint: d.Thumbprint}
	}
	if c := v.OAuthClient; c != nil && c.Key != nil && p.OauthClient != nil {
		p.OauthClient.PrivateKeyJwt = &mcpauthv1.ClientKey{Algorithm: c.Key.Algorithm, KeyId: c.Key.KeyID, JwksUri: c.Key.JWKSURI, Generated: c.Key.Generated}
		p.OauthClient.ClientIdMetadataDocumentUri = c.MetadataDocumentURL
	}
}

// credentialPath folds the nested paths a REST PATCH body yields for the
// credential messages into the paths Update knows: a key and a workload
// identity are replaced as a whole, and so is the enterprise identity
// provider except for its client secret alone.
func credentialPath(path string) string {
	if path == providers.PathEnterpriseIdPSecret {
		return path
	}
	if strings.HasPrefix(path, providers.PathEnterpriseIdP+".") {
		return providers.PathEnterpriseIdP
	}
	for _, whole := range []string{providers.PathOAuthClientKey, providers.PathWorkloadIdentity, providers.PathDPoP} {
		if strings.HasPrefix(path, whole+".") {
			return whole
		}
	}
	return path
}
