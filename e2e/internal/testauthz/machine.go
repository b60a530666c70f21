package testauthz

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v3"
	"github.com/ory/fosite"
	"github.com/ory/fosite/compose"
	"github.com/ory/fosite/storage"
)

// Grant types the machine server accepts besides refresh_token.
const (
	GrantClientCredentials = "client_credentials"
	// GrantJWTBearer is RFC 7523 section 2.1's grant type.
	GrantJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"
)

// MachineOptions configures an authorization server for grants without a
// person.
type MachineOptions struct {
	// AccessTokenLifetime is how long access tokens live; default one hour.
	AccessTokenLifetime time.Duration
	// Scopes is scopes_supported and every client's allowed scopes; default
	// ["mcp.read", "mcp.write"].
	Scopes []string
	// AuthMethods is token_endpoint_auth_methods_supported; default
	// client_secret_basic, client_secret_post and private_key_jwt.
	AuthMethods []string
	// DPoP turns on RFC 9449 at the token endpoint (dpop.go).
	DPoP *DPoPOptions
	// IDJAG makes the JWT bearer grant accept identity assertion JWT
	// authorization grants (ID-JAG) from the identity provider named with
	// TrustIdentityProvider (xaa.go), instead of fosite's RFC 7523 handler
	// with per-subject keys.
	IDJAG bool
	// IDJAGRefresh makes the ID-JAG grant issue refresh tokens too.
	IDJAGRefresh bool
	// GrantProfiles, when not nil, is authorization_grant_profiles_supported
	// as advertised instead of the ID-JAG profile (the ID-JAG draft,
	// section 7.2): a server that lists other profiles only says it does
	// not accept ID-JAGs.
	GrantProfiles []string
}

// NewMachineAuthServer starts a fosite authorization server that issues
// tokens without a person, as OAuth 2.1 section 4.2 (client_credentials)
// and RFC 7523 section 2.1 (JWT bearer grant) describe, and authenticates
// clients with client_secret_basic, client_secret_post (RFC 6749 section
// 2.3.1) or private_key_jwt (RFC 7523 section 2.2, keys fetched from the
// client's jwks_uri). Its token endpoint URL is its issuer identifier, so
// fosite's audience checks of client assertions and JWT grants (RFC 7523
// section 3, point 3: "aud" identifies the authorization server) accept
// exactly the issuer. The returned *AuthServer works with NewMCPServer.
func NewMachineAuthServer(tb testing.TB, opt MachineOptions) *AuthServer {
	tb.Helper()
	if opt.AccessTokenLifetime == 0 {
		opt.AccessTokenLifetime = time.Hour
	}
	if opt.Scopes == nil {
		opt.Scopes = []string{"mcp.read", "mcp.write"}
	}
	if opt.AuthMethods == nil {
		opt.AuthMethods = []string{"client_secret_basic", "client_secret_post", "private_key_jwt"}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("testauthz: listen: %v", err)
	}
	origin := "http://" + l.Addr().String()
	a := &AuthServer{
		URL:    origin,
		Origin: origin,
		opt:    AuthServerOptions{AccessTokenLifetime: opt.AccessTokenLifetime, RefreshTokenLifetime: 24 * time.Hour, Scopes: opt.Scopes},
		store:  newStore(true),
	}
	if opt.DPoP != nil {
		a.dpop = newDPoPServer(*opt.DPoP)
	}
	a.config = &fosite.Config{
		AccessTokenLifespan:      opt.AccessTokenLifetime,
		RefreshTokenLifespan:     24 * time.Hour,
		GlobalSecret:             []byte(rand.Text() + rand.Text())[:32],
		HashCost:                 4,
		ScopeStrategy:            fosite.ExactScopeStrategy,
		AudienceMatchingStrategy: fosite.DefaultAudienceMatchingStrategy,
		// The audience of client assertions and JWT grants: the issuer.
		TokenURL:                      a.URL,
		AccessTokenIssuer:             a.URL,
		GrantTypeJWTBearerMaxDuration: 24 * time.Hour,
	}
	a.config.ClientSecretsHasher = &fosite.BCrypt{Config: a.config}
	a.config.JWKSFetcherStrategy = fosite.NewDefaultJWKSFetcherStrategy()
	jwtBearer := compose.Factory(compose.RFC7523AssertionGrantFactory)
	if opt.IDJAG {
		a.idjag = &idJAGTrust{used: map[string]time.Time{}}
		jwtBearer = a.idJAGFactory(opt.IDJAGRefresh)
		// Refresh tokens without an offline scope.
		a.config.RefreshTokenScopes = []string{}
	}
	a.provider = compose.Compose(a.config, a.store, compose.NewOAuth2HMACStrategy(a.config),
		compose.OAuth2ClientCredentialsGrantFactory,
		jwtBearer,
		compose.OAuth2RefreshTokenGrantFactory,
		compose.OAuth2TokenRevocationFactory,
		compose.OAuth2TokenIntrospectionFactory,
	)
	a.mux = http.NewServeMux()
	a.mux.HandleFunc("POST /token", a.tokenHandler())
	a.mux.HandleFunc("GET /authorize", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_response_type"})
	})
	a.mux.HandleFunc("POST /revoke", a.revoke)
	a.mux.HandleFunc("POST /introspect", a.introspect)
	meta := func(w http.ResponseWriter, _ *http.Request) {
		// RFC 8414 section 2.
		doc := map[string]any{
			"issuer": a.URL,
			// RFC 8414 section 2 lets a server without browser grants omit
			// it; mcpauth's discovery (oauthclient) still requires it, so it
			// is advertised, and answers every request with an error.
			"authorization_endpoint":                           a.URL + "/authorize",
			"token_endpoint":                                   a.URL + "/token",
			"revocation_endpoint":                              a.URL + "/revoke",
			"introspection_endpoint":                           a.URL + "/introspect",
			"grant_types_supported":                            []string{GrantClientCredentials, GrantJWTBearer, "refresh_token"},
			"token_endpoint_auth_methods_supported":            opt.AuthMethods,
			"token_endpoint_auth_signing_alg_values_supported": []string{"ES256", "RS256"},
			"scopes_supported":                                 opt.Scopes,
		}
		a.dpopMetadata(doc)
		if opt.IDJAG {
			// The ID-JAG draft, section 7.2 (the MCP extension, section 6).
			doc["authorization_grant_profiles_supported"] = []string{GrantProfileIDJAG}
		}
		if opt.GrantProfiles != nil {
			doc["authorization_grant_profiles_supported"] = opt.GrantProfiles
		}
		writeJSON(w, http.StatusOK, doc)
	}
	a.mux.HandleFunc("GET /.well-known/oauth-authorization-server", meta)
	a.mux.HandleFunc("GET /.well-known/openid-configuration", meta)
	srv := httptest.NewUnstartedServer(a)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	tb.Cleanup(srv.Close)
	return a
}

// MachineClient is a client of the machine server.
type MachineClient struct {
	ID string
	// Secret is the client secret (client_secret_basic or _post); empty
	// for a private_key_jwt client.
	Secret string
	// JWKSURI is where a private_key_jwt client's public keys are fetched
	// (RFC 7591 section 2, jwks_uri), and Alg the assertion algorithm.
	JWKSURI, Alg string
	// Scopes the client may ask for; default the server's.
	Scopes []string
	// AuthMethod of a secret client: client_secret_basic (default) or
	// client_secret_post; fosite refuses the other one.
	AuthMethod string
	// GrantTypes the client may use; default client_credentials, the JWT
	// bearer grant and refresh_token. A grant it lacks is answered
	// unauthorized_client (RFC 6749 section 5.2).
	GrantTypes []string
}

// RegisterMachineClient registers a confidential client allowed the
// client_credentials and JWT bearer grants.
func (a *AuthServer) RegisterMachineClient(c MachineClient) {
	scopes := c.Scopes
	if scopes == nil {
		scopes = a.opt.Scopes
	}
	grants := c.GrantTypes
	if grants == nil {
		grants = []string{GrantClientCredentials, GrantJWTBearer, "refresh_token"}
	}
	dc := fosite.DefaultClient{
		ID:         c.ID,
		GrantTypes: grants,
		Scopes:     scopes,
	}
	oc := &fosite.DefaultOpenIDConnectClient{DefaultClient: &dc}
	if c.JWKSURI != "" {
		oc.JSONWebKeysURI = c.JWKSURI
		oc.TokenEndpointAuthMethod = "private_key_jwt"
		oc.TokenEndpointAuthSigningAlgorithm = c.Alg
	} else {
		h, err := a.config.ClientSecretsHasher.Hash(context.Background(), []byte(c.Secret))
		if err != nil {
			panic(fmt.Sprintf("testauthz: hash client secret: %v", err))
		}
		dc.Secret = h
		oc.TokenEndpointAuthMethod = "client_secret_basic"
		if c.AuthMethod != "" {
			oc.TokenEndpointAuthMethod = c.AuthMethod
		}
	}
	a.store.setClient(oc)
}

// TrustIssuer makes the server accept JWT bearer grants (RFC 7523 section
// 3) whose iss is issuer and sub is subject, signed by key, for scopes.
// Call it before the server is used.
func (a *AuthServer) TrustIssuer(issuer, subject string, key *jose.JSONWebKey, scopes []string) {
	a.store.IssuerPublicKeys[issuer] = storage.IssuerPublicKeys{Issuer: issuer, KeysBySub: map[string]storage.SubjectPublicKeys{
		subject: {Subject: subject, Keys: map[string]storage.PublicKeyScopes{key.KeyID: {Key: key, Scopes: scopes}}},
	}}
}
