package providers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/dpop"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// The update paths of the credential settings (issue 12).
const (
	PathCredentialKind      = "credential_kind"
	PathStaticAuthorization = "static_authorization"
	PathWorkloadIdentity    = "workload_identity"
	PathOAuthClientKey      = "oauth_client.private_key_jwt"
	PathDPoP                = "dpop"
	// PathEnterpriseIdP replaces the enterprise identity provider as a
	// whole; its client secret too when one is given or the client id
	// changes (else the stored secret is kept).
	PathEnterpriseIdP = "enterprise_identity_provider"
	// PathEnterpriseIdPSecret sets only the identity provider's client
	// secret.
	PathEnterpriseIdPSecret = "enterprise_identity_provider.client_secret"
)

// credentialPaths are the update paths that change credential material.
var credentialPaths = []string{PathCredentialKind, PathStaticAuthorization, PathWorkloadIdentity, PathOAuthClient,
	PathOAuthClientID, PathOAuthClientSecret, PathOAuthClientKey, PathOAuthClientScopes, PathEnterpriseIdP, PathEnterpriseIdPSecret, PathDPoP}

// Bounds of the enterprise identity provider's settings.
const (
	maxIdPClientIDLen     = 255
	maxIdPClientSecretLen = 4096
)

// EnterpriseIdPInput is the enterprise identity provider of an
// enterprise-managed provider, in clear.
type EnterpriseIdPInput struct {
	Issuer        string
	TokenEndpoint string
	ClientID      string
	ClientSecret  string
	// Key, when set, is the private_key_jwt key mcpauth authenticates
	// with at the IdP instead of a secret.
	Key *ClientKeyInput
	// UserClaim names the ID token claim that must equal the user of an
	// exchange ("" for none).
	UserClaim string
}

// EnterpriseIdPView describes the enterprise identity provider without its
// client secret or private key.
type EnterpriseIdPView struct {
	Issuer        string
	TokenEndpoint string
	ClientID      string
	SecretSet     bool
	Key           *ClientKeyView
	UserClaim     string
}

// maxStaticAuthorizationLen bounds a static Authorization value.
const maxStaticAuthorizationLen = 4096

// WorkloadPolicy decides which files may hold workload identity tokens.
// *workload.Files implements it.
type WorkloadPolicy interface {
	Check(path string) error
}

// ClientKeyInput is a private_key_jwt key to store: a supplied PKCS#8 PEM
// key, or a request to generate one.
type ClientKeyInput struct {
	PEM       string
	Generate  bool
	Algorithm string
}

// DPoPInput is a provider's DPoP setting as a request gives it.
type DPoPInput struct {
	Mode      domain.DPoPMode
	Algorithm string
	RotateKey bool
}

// DPoPView describes a provider's DPoP setting and the public facts of
// its key; never the private part.
type DPoPView struct {
	Mode       domain.DPoPMode
	Algorithm  string
	Thumbprint string
}

// ClientKeyView describes a stored key without its private part.
type ClientKeyView struct {
	Algorithm string
	KeyID     string
	Generated bool
	JWKSURI   string
}

// credInput is the validated credential part of a request.
type credInput struct {
	kind   domain.CredentialKind
	static string
	file   string
	// key is the parsed key and pem its PKCS#8 form; nil when the request
	// sets no key (which, for a path that names the key, removes it).
	key *oauthclient.ClientKey
	pem string
	gen bool
	// dpop is the DPoP setting and dpopKey a key made for it, used when
	// the provider has none, asks for a new one or another algorithm.
	dpop    DPoPInput
	dpopKey *dpop.Key
	// idp is the validated identity provider, idpSecret its secret and
	// idpKey its key (nil: none given).
	idp       domain.EnterpriseIdP
	idpSecret string
	idpKey    *parsedKey
}

// parsedKey is a validated private_key_jwt key and its PKCS#8 form.
type parsedKey struct {
	key *oauthclient.ClientKey
	pem string
	gen bool
}

// parseKey validates a key input: generate one, or read a supplied PKCS#8
// PEM key; field names the input in errors (which never quote the key).
func parseKey(field string, k *ClientKeyInput) (*parsedKey, error) {
	switch k.Algorithm {
	case "", oauthclient.AlgES256, oauthclient.AlgRS256:
	default:
		return nil, invalid(field+".algorithm", "must be ES256 or RS256")
	}
	switch {
	case k.Generate && k.PEM != "":
		return nil, invalid(field, "set either private_key_pem or generate, not both")
	case k.Generate:
		key, pem, err := oauthclient.GenerateClientKey(k.Algorithm)
		if err != nil {
			return nil, apperr.Internal(err, "generating a client key")
		}
		return &parsedKey{key: key, pem: pem, gen: true}, nil
	case k.PEM != "":
		if len(k.PEM) > 16<<10 {
			return nil, invalid(field+".private_key_pem", "must be at most 16 KiB")
		}
		key, err := oauthclient.ParseClientKey(k.PEM, k.Algorithm)
		if err != nil {
			return nil, invalid(field+".private_key_pem", err.Error())
		}
		return &parsedKey{key: key, pem: k.PEM}, nil
	}
	return nil, invalid(field, "set private_key_pem or generate")
}

// validateCredentials checks the credential fields named in paths.
func (s *Service) validateCredentials(f *Fields, has func(string) bool) (*credInput, error) {
	in := &credInput{}
	if has(PathCredentialKind) {
		switch f.CredentialKind {
		case domain.KindAuthorizationCode, domain.KindClientCredentials, domain.KindJWTBearer, domain.KindStaticAuthorization,
			domain.KindEnterpriseManaged:
			in.kind = f.CredentialKind
		default:
			return nil, invalid("provider.credential_kind", "is not a known credential kind")
		}
	}
	if has(PathStaticAuthorization) {
		v := f.StaticAuthorization
		if len(v) > maxStaticAuthorizationLen {
			return nil, invalid("provider.static_authorization", fmt.Sprintf("must be at most %d bytes", maxStaticAuthorizationLen))
		}
		if strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
			return nil, invalid("provider.static_authorization", "must not contain control characters")
		}
		in.static = strings.TrimSpace(v)
	}
	if has(PathWorkloadIdentity) && f.AssertionFile != "" {
		if s.workload == nil {
			return nil, invalid("provider.workload_identity.assertion_file", "workload identity tokens are not enabled on this server")
		}
		if err := s.workload.Check(f.AssertionFile); err != nil {
			return nil, invalid("provider.workload_identity.assertion_file", err.Error())
		}
		in.file = f.AssertionFile
	}
	if has(PathDPoP) {
		if err := validateDPoP(f.DPoP, in); err != nil {
			return nil, err
		}
	}
	if err := validateIdP(f.EnterpriseIdP, has, in); err != nil {
		return nil, err
	}
	if (has(PathOAuthClientKey) || has(PathOAuthClient)) && f.OAuthClient.Key != nil {
		k, err := parseKey("provider.oauth_client.private_key_jwt", f.OAuthClient.Key)
		if err != nil {
			return nil, err
		}
		in.key, in.pem, in.gen = k.key, k.pem, k.gen
	}
	return in, nil
}

// validateDPoP checks a DPoP setting and, when it uses DPoP, makes a key
// it may need.
func validateDPoP(in DPoPInput, out *credInput) error {
	switch in.Mode {
	case domain.DPoPDisabled, domain.DPoPAuto, domain.DPoPRequired:
	default:
		return invalid("provider.dpop.mode", "is not a known DPoP mode")
	}
	switch in.Algorithm {
	case "", dpop.AlgES256, dpop.AlgRS256:
	default:
		return invalid("provider.dpop.algorithm", "must be ES256 or RS256")
	}
	if in.Mode == domain.DPoPDisabled && (in.RotateKey || in.Algorithm != "") {
		return invalid("provider.dpop", "algorithm and rotate_key need mode AUTO or REQUIRED")
	}
	out.dpop = in
	if in.Mode == domain.DPoPDisabled {
		return nil
	}
	k, err := dpop.Generate(in.Algorithm)
	if err != nil {
		return apperr.Internal(err, "generating a DPoP key")
	}
	out.dpopKey = k
	return nil
}

// applyDPoP applies a DPoP setting to st and returns how the key changed:
// "created", "rotated", "deleted" or "".
func (st *credState) applyDPoP(in *credInput) string {
	had := st.cfg.DPoPJKT != ""
	st.cfg.DPoPMode = in.dpop.Mode
	if in.dpop.Mode == domain.DPoPDisabled {
		st.cfg.DPoPAlg, st.cfg.DPoPJKT, st.sec.DPoPKeyPEM = "", "", secret.Secret{}
		if had {
			return "deleted"
		}
		return ""
	}
	newAlg := in.dpop.Algorithm != "" && in.dpop.Algorithm != st.cfg.DPoPAlg
	if had && !in.dpop.RotateKey && !newAlg {
		return ""
	}
	k := in.dpopKey
	st.cfg.DPoPAlg, st.cfg.DPoPJKT, st.sec.DPoPKeyPEM = k.Algorithm(), k.Thumbprint(), k.PEM()
	if had {
		return "rotated"
	}
	return "created"
}

// validateIdP checks the enterprise identity provider fields named by has
// into in. A nil input clears them.
func validateIdP(e *EnterpriseIdPInput, has func(string) bool, in *credInput) error {
	const field = "provider.enterprise_identity_provider"
	whole, onlySecret := has(PathEnterpriseIdP), has(PathEnterpriseIdPSecret)
	if e == nil || !whole && !onlySecret {
		return nil
	}
	if len(e.ClientSecret) > maxIdPClientSecretLen {
		return invalid(field+".client_secret", fmt.Sprintf("must be at most %d bytes", maxIdPClientSecretLen))
	}
	if strings.IndexFunc(e.ClientSecret, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return invalid(field+".client_secret", "must not contain control characters")
	}
	in.idpSecret = e.ClientSecret
	if !whole {
		return nil
	}
	if e.Issuer != "" {
		u, err := validate.ServerURL(field+".issuer", e.Issuer)
		if err != nil {
			return err
		}
		if u.RawQuery != "" || u.ForceQuery {
			// RFC 8414 section 2: an issuer has no query.
			return invalid(field+".issuer", "must not contain a query")
		}
		in.idp.Issuer = strings.TrimSpace(e.Issuer)
	}
	if e.TokenEndpoint != "" {
		if _, err := validate.ServerURL(field+".token_endpoint", e.TokenEndpoint); err != nil {
			return err
		}
		in.idp.TokenEndpoint = strings.TrimSpace(e.TokenEndpoint)
	}
	if len(e.ClientID) > maxIdPClientIDLen {
		return invalid(field+".client_id", fmt.Sprintf("must be at most %d bytes", maxIdPClientIDLen))
	}
	if strings.IndexFunc(e.ClientID, func(r rune) bool { return r <= 0x20 || r == 0x7f }) >= 0 {
		return invalid(field+".client_id", "must not contain spaces or control characters")
	}
	in.idp.ClientID = e.ClientID
	if e.UserClaim != "" && !validUserClaim(e.UserClaim) {
		return invalid(field+".user_claim", "must be a claim name of 1 to 64 letters, digits, '_', '-', '.' or ':'")
	}
	in.idp.UserClaim = e.UserClaim
	if e.Key != nil {
		k, err := parseKey(field+".private_key_jwt", e.Key)
		if err != nil {
			return err
		}
		in.idpKey = k
	}
	return nil
}

// credState is a provider's credential settings while they are changed.
type credState struct {
	kind domain.CredentialKind
	cfg  domain.CredentialConfig
	sec  vault.CredentialSecrets
	// dpopChange is how apply changed the DPoP key ("" when it did not).
	dpopChange string
}

func (s *Service) openCred(row *repository.Provider) (*credState, error) {
	sec, err := vault.OpenCredentialSecrets(s.cipher, row)
	if err != nil {
		return nil, err
	}
	return &credState{kind: domain.CredentialKind(row.CredentialKind), cfg: vault.ParseCredentialConfig(row.CredentialConfig), sec: sec}, nil
}

// setKey stores key (nil removes the key).
func (st *credState) setKey(in *credInput) {
	st.cfg.KeyAlg, st.cfg.KeyID, st.cfg.KeyGenerated, st.cfg.PublicJWK = "", "", false, ""
	st.sec.PrivateKeyPEM = secret.Secret{}
	if in.key == nil {
		return
	}
	jwk, _ := in.key.PublicJWK()
	st.cfg.KeyAlg, st.cfg.KeyID, st.cfg.KeyGenerated, st.cfg.PublicJWK = in.key.Algorithm(), in.key.KeyID(), in.gen, string(jwk)
	st.sec.PrivateKeyPEM = secret.New(in.pem)
}

// applyCred applies the credential paths of an update (all of them on
// create, paths nil) to st, then drops what must not be carried over: a
// new server URL drops the static Authorization value, and a new or
// cleared client id drops the key, unless the same request sets them (they
// are secrets meant for the old host or client). It returns the dropped
// paths.
func (st *credState) apply(in *credInput, paths []string, urlChanged, clientChanged bool) []string {
	named := func(p string) bool { return paths == nil || slices.Contains(paths, p) }
	if named(PathCredentialKind) {
		st.kind = in.kind
	}
	if named(PathStaticAuthorization) {
		st.sec.StaticAuthorization = secret.New(in.static)
		st.cfg.StaticSet = in.static != ""
	}
	if named(PathWorkloadIdentity) {
		st.cfg.AssertionFile = in.file
	}
	if named(PathDPoP) {
		st.dpopChange = st.applyDPoP(in)
	}
	st.applyIdP(in, named)
	setsKey := named(PathOAuthClient) || named(PathOAuthClientKey)
	if setsKey {
		st.setKey(in)
	}
	var dropped []string
	if urlChanged && !named(PathStaticAuthorization) && st.cfg.StaticSet {
		st.sec.StaticAuthorization, st.cfg.StaticSet = secret.Secret{}, false
		dropped = append(dropped, PathStaticAuthorization)
	}
	if clientChanged && !setsKey && st.cfg.KeyAlg != "" {
		st.setKey(&credInput{})
		dropped = append(dropped, PathOAuthClientKey)
	}
	return dropped
}

// applyIdP applies the identity provider paths: the whole configuration
// replaces the old one and keeps the stored secret only when no secret is
// given and the client id stays the same (a secret is never carried over
// to another client).
func (st *credState) applyIdP(in *credInput, named func(string) bool) {
	if named(PathEnterpriseIdP) {
		keep := in.idpSecret == "" && in.idpKey == nil && in.idp.ClientID == st.cfg.IdP.ClientID && in.idp.ClientID != ""
		old := st.cfg.IdP
		st.cfg.IdP = in.idp
		switch {
		case keep:
			// The stored secret or key stays with the same client.
			st.cfg.IdP.KeyAlg, st.cfg.IdP.KeyID, st.cfg.IdP.KeyGenerated, st.cfg.IdP.PublicJWK = old.KeyAlg, old.KeyID, old.KeyGenerated, old.PublicJWK
		default:
			st.sec.IdPClientSecret = secret.New(in.idpSecret)
			st.sec.IdPPrivateKeyPEM = secret.Secret{}
			if k := in.idpKey; k != nil {
				jwk, _ := k.key.PublicJWK()
				st.cfg.IdP.KeyAlg, st.cfg.IdP.KeyID, st.cfg.IdP.KeyGenerated, st.cfg.IdP.PublicJWK = k.key.Algorithm(), k.key.KeyID(), k.gen, string(jwk)
				st.sec.IdPPrivateKeyPEM = secret.New(k.pem)
			}
		}
	} else if named(PathEnterpriseIdPSecret) {
		st.sec.IdPClientSecret = secret.New(in.idpSecret)
	}
	st.cfg.IdP.SecretSet = !st.sec.IdPClientSecret.IsZero()
}

// check refuses combinations that make no sense, on the provider as it
// would be stored.
func (st *credState) check(row *repository.Provider, cimd bool) error {
	hasSecret, hasKey, hasClient := len(row.ClientSecret) > 0, st.cfg.KeyAlg != "", row.ClientID != ""
	if hasKey && hasSecret {
		return invalid("provider.oauth_client.private_key_jwt", "set either a client_secret or a private key, not both")
	}
	if hasKey && !hasClient && !(st.kind == domain.KindAuthorizationCode && cimd) {
		// An authorization-code provider's key without a client id is
		// identified by its own Client ID Metadata Document (authflow's
		// cimd.go), which needs an https public URL.
		return invalid("provider.oauth_client.client_id", "is required with a private key (an authorization-code provider may omit it when mcpauth's public URL is https: its client is then its own Client ID Metadata Document)")
	}
	if st.cfg.StaticSet && st.kind != domain.KindStaticAuthorization {
		return invalid("provider.static_authorization", "is only allowed with credential_kind STATIC_AUTHORIZATION")
	}
	if st.cfg.AssertionFile != "" && st.kind != domain.KindJWTBearer {
		return invalid("provider.workload_identity.assertion_file", "is only allowed with credential_kind JWT_BEARER")
	}
	if !st.cfg.IdP.IsZero() && st.kind != domain.KindEnterpriseManaged {
		return invalid("provider.enterprise_identity_provider", "is only allowed with credential_kind ENTERPRISE_MANAGED")
	}
	switch st.kind {
	case domain.KindEnterpriseManaged:
		return st.checkEnterprise(hasClient, hasSecret, hasKey, row.GrantScope.PerUser())
	case domain.KindStaticAuthorization:
		if !st.cfg.StaticSet {
			return invalid("provider.static_authorization", "is required with credential_kind STATIC_AUTHORIZATION")
		}
		if hasClient || hasSecret || hasKey || row.Scopes != "" && row.Scopes != "[]" {
			return invalid("provider.oauth_client", "a static Authorization value is never combined with an OAuth client: clear oauth_client")
		}
	case domain.KindClientCredentials:
		if !hasClient {
			return invalid("provider.oauth_client.client_id", "is required with credential_kind CLIENT_CREDENTIALS")
		}
		if !hasSecret && !hasKey {
			return invalid("provider.oauth_client", "credential_kind CLIENT_CREDENTIALS needs a client_secret or a private_key_jwt key")
		}
	case domain.KindJWTBearer:
		if st.cfg.AssertionFile == "" {
			return invalid("provider.workload_identity.assertion_file", "is required with credential_kind JWT_BEARER")
		}
	}
	return nil
}

// checkEnterprise checks an enterprise-managed provider: an identity
// provider with a client id and secret (the ID-JAG draft and the MCP
// extension require client authentication at the token exchange), and a
// client of the MCP server's authorization server to present the grant
// with.
func (st *credState) checkEnterprise(hasClient, hasSecret, hasKey, perUser bool) error {
	const field = "provider.enterprise_identity_provider"
	idp := st.cfg.IdP
	switch {
	case idp.Issuer == "" && idp.TokenEndpoint == "":
		return invalid(field+".issuer", "an issuer or a token_endpoint is required with credential_kind ENTERPRISE_MANAGED")
	case idp.ClientID == "":
		return invalid(field+".client_id", "is required with credential_kind ENTERPRISE_MANAGED")
	case idp.SecretSet && idp.KeyAlg != "":
		return invalid(field+".private_key_jwt", "set either a client_secret or a private key, not both")
	case !idp.SecretSet && idp.KeyAlg == "":
		return invalid(field+".client_secret", "a client_secret or a private_key_jwt key is required with credential_kind ENTERPRISE_MANAGED")
	case idp.KeyAlg != "" && idp.Issuer == "":
		// RFC 7523 section 3: the assertion's audience is the IdP's issuer.
		return invalid(field+".issuer", "is required with a private_key_jwt key (the audience of its client assertions)")
	case !hasClient:
		return invalid("provider.oauth_client.client_id", "is required with credential_kind ENTERPRISE_MANAGED (the client of the MCP server's authorization server)")
	case !hasSecret && !hasKey:
		return invalid("provider.oauth_client", "credential_kind ENTERPRISE_MANAGED needs a client_secret or a private_key_jwt key for the MCP server's authorization server")
	case idp.UserClaim != "" && !perUser:
		// A TENANT provider's user names nobody's grant: there is nothing
		// for the claim to match.
		return invalid(field+".user_claim", "is only allowed with grant_scope USER")
	}
	return nil
}

// validUserClaim reports whether name is a plausible JWT claim name.
func validUserClaim(name string) bool {
	if len(name) > 64 {
		return false
	}
	return strings.IndexFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.' || r == ':')
	}) < 0
}

// store seals st into row.
func (s *Service) storeCred(row *repository.Provider, st *credState) error {
	ct, err := vault.SealCredentialSecrets(s.cipher, row, st.sec)
	if err != nil {
		return err
	}
	row.CredentialKind, row.CredentialConfig, row.CredentialSecrets = string(st.kind), vault.JSONCredentialConfig(st.cfg), ct
	return nil
}

// credentialsChanged reports whether an update changed credential
// material that tokens obtained without a person were obtained with, so
// those tokens must go: a new kind, or, for a kind without a person, a new
// client, secret, key, scope or token file.
func credentialsChanged(before, after *credState, oldRow, newRow *repository.Provider) bool {
	if before.kind != after.kind {
		return true
	}
	if before.cfg.DPoPJKT != "" && before.cfg.DPoPJKT != after.cfg.DPoPJKT {
		// Tokens bound to the old DPoP key cannot be used with the new
		// one (RFC 9449 section 6), whatever the kind.
		return true
	}
	if !after.kind.Machine() && after.kind != domain.KindEnterpriseManaged {
		return false
	}
	return oldRow.ClientID != newRow.ClientID || string(oldRow.ClientSecret) != string(newRow.ClientSecret) ||
		oldRow.Scopes != newRow.Scopes || before.cfg != after.cfg ||
		before.sec.PrivateKeyPEM.Reveal() != after.sec.PrivateKeyPEM.Reveal() ||
		before.sec.IdPClientSecret.Reveal() != after.sec.IdPClientSecret.Reveal() ||
		before.sec.IdPPrivateKeyPEM.Reveal() != after.sec.IdPPrivateKeyPEM.Reveal()
}

// credAudit is the audit detail of a provider's credential settings:
// the kind and how the client authenticates, never a secret.
func credAudit(st *credState, row *repository.Provider, d map[string]string) map[string]string {
	if st.kind == domain.KindAuthorizationCode && st.cfg.KeyAlg == "" {
		return d
	}
	if d == nil {
		d = map[string]string{}
	}
	if st.kind != "" {
		d["credential_kind"] = string(st.kind)
	}
	if st.cfg.KeyAlg != "" {
		d["client_auth"] = oauthclient.AuthPrivateKeyJWT
		d["key_alg"] = st.cfg.KeyAlg
		d["key_id"] = st.cfg.KeyID
		if st.cfg.KeyGenerated {
			d["key_generated"] = "true"
		}
	} else if len(row.ClientSecret) > 0 {
		d["client_auth"] = "client_secret"
	}
	switch {
	case st.cfg.IdP.KeyAlg != "":
		d["idp_client_auth"], d["idp_key_alg"], d["idp_key_id"] = oauthclient.AuthPrivateKeyJWT, st.cfg.IdP.KeyAlg, st.cfg.IdP.KeyID
	case st.cfg.IdP.SecretSet:
		d["idp_client_auth"] = "client_secret"
	}
	return d
}

// JWKS returns the public JWKS document (RFC 7517 section 5) of the
// provider's private_key_jwt keys (its client's at the authorization
// server, and its client's at an enterprise identity provider; each with
// its own kid), for those servers to verify its client assertions. It
// holds only public keys; a provider without a key and one that does not
// exist are the same NOT_FOUND. Anyone may ask for it, so it reads the
// provider's plaintext columns from the database (GetProviderPublic):
// nothing is decrypted, and made-up names never reach the shared read
// cache.
func (s *Service) JWKS(ctx context.Context, tenant, id string) ([]byte, error) {
	row, err := s.store.GetProviderPublic(ctx, tenant, id)
	if err != nil && apperr.KindOf(err) != apperr.KindNotFound {
		return nil, err
	}
	if err != nil {
		return nil, apperr.NotFound("jwks")
	}
	cfg := vault.ParseCredentialConfig(row.CredentialConfig)
	var keys []string
	for _, k := range []string{cfg.PublicJWK, cfg.IdP.PublicJWK} {
		if k != "" {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, apperr.NotFound("jwks")
	}
	return []byte(`{"keys":[` + strings.Join(keys, ",") + `]}`), nil
}

// dpopAudit is the audit event of a DPoP key change, nil when the key did
// not change: the change, the algorithm and the public thumbprint, never
// the private key.
func dpopAudit(tenant, id string, st *credState) []audit.Event {
	if st.dpopChange == "" {
		return nil
	}
	d := map[string]string{"change": st.dpopChange, "mode": string(st.cfg.DPoPMode)}
	if st.cfg.DPoPJKT != "" {
		d["algorithm"], d["jkt"] = st.cfg.DPoPAlg, st.cfg.DPoPJKT
	}
	return []audit.Event{{Tenant: tenant, Type: domain.EventDPoPKeyChanged, Provider: id, Outcome: domain.OutcomeSuccess, Details: d}}
}

// viewCredentials adds the credential settings to a view: the kind, the
// static value's fingerprint (never the value), the token file, and the
// key's public facts.
func (s *Service) viewCredentials(v *View, d *vault.Provider) {
	v.CredentialKind, v.AssertionFile = d.Kind, d.CredConfig.AssertionFile
	if d.CredConfig.DPoPMode != domain.DPoPDisabled || d.CredConfig.DPoPJKT != "" {
		v.DPoP = &DPoPView{Mode: d.CredConfig.DPoPMode, Algorithm: d.CredConfig.DPoPAlg, Thumbprint: d.CredConfig.DPoPJKT}
	}
	if idp := d.CredConfig.IdP; !idp.IsZero() {
		v.EnterpriseIdP = &EnterpriseIdPView{Issuer: idp.Issuer, TokenEndpoint: idp.TokenEndpoint, ClientID: idp.ClientID, SecretSet: idp.SecretSet,
			UserClaim: idp.UserClaim}
		if idp.KeyAlg != "" {
			k := &ClientKeyView{Algorithm: idp.KeyAlg, KeyID: idp.KeyID, Generated: idp.KeyGenerated}
			if s.jwksURL != nil {
				k.JWKSURI = s.jwksURL(d.Row.TenantID, d.Row.ID)
			}
			v.EnterpriseIdP.Key = k
		}
	}
	if d.CredConfig.StaticSet {
		v.StaticAuthorization = &HeaderInfo{Name: "Authorization", ValueSet: true,
			Fingerprint: s.cipher.ShortFingerprint(d.Row.TenantID, vault.PurposeHeader, []byte(d.StaticAuthorization.Reveal()))}
	}
	if d.CredConfig.KeyAlg == "" || v.OAuthClient == nil {
		return
	}
	k := &ClientKeyView{Algorithm: d.CredConfig.KeyAlg, KeyID: d.CredConfig.KeyID, Generated: d.CredConfig.KeyGenerated}
	if s.jwksURL != nil {
		k.JWKSURI = s.jwksURL(d.Row.TenantID, d.Row.ID)
	}
	v.OAuthClient.Key = k
	if d.Row.ClientID == "" && d.Kind == domain.KindAuthorizationCode && s.cimdURL != nil {
		v.OAuthClient.MetadataDocumentURL = s.cimdURL(d.Row.TenantID, d.Row.ID)
	}
}
