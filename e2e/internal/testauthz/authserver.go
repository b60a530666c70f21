package testauthz

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mcpauth/mcpauth/e2e/internal/democontrol"
	"github.com/ory/fosite"
	"github.com/ory/fosite/compose"
)

// MetadataLocation says at which well-known URL the authorization server
// serves its metadata document, relative to its issuer. For an issuer
// without a path the "path-insert" and "root" locations coincide.
type MetadataLocation int

// Metadata locations. The zero value serves the document at the three
// locations a client may try for the issuer (RFC 8414 path-insert, OpenID
// path-insert and OpenID path-append).
const (
	// MetadataAll serves the document at every location derived from the issuer.
	MetadataAll MetadataLocation = iota
	// MetadataOAuthPathInsert serves only /.well-known/oauth-authorization-server{issuer path}.
	MetadataOAuthPathInsert
	// MetadataOIDCPathInsert serves only /.well-known/openid-configuration{issuer path}.
	MetadataOIDCPathInsert
	// MetadataOIDCPathAppend serves only {issuer path}/.well-known/openid-configuration.
	MetadataOIDCPathAppend
	// MetadataOAuthRoot serves only /.well-known/oauth-authorization-server,
	// which is the wrong place for an issuer with a path.
	MetadataOAuthRoot
	// MetadataOIDCRoot serves only /.well-known/openid-configuration, which is
	// the wrong place for an issuer with a path.
	MetadataOIDCRoot
	// MetadataNone serves no metadata document at all.
	MetadataNone
)

// AuthServerOptions configures an AuthServer. The zero value is a strict,
// modern server: PKCE S256 enforced and advertised, refresh tokens rotated
// with reuse detection, no iss parameter, issuer without a path, metadata at
// every well-known location, no dynamic registration.
type AuthServerOptions struct {
	// AccessTokenLifetime is how long access tokens live; default one hour.
	// fosite rounds expiry to whole seconds.
	AccessTokenLifetime time.Duration
	// RefreshTokenLifetime is how long refresh tokens live; default one day.
	RefreshTokenLifetime time.Duration
	// NoRefreshRotation makes refresh responses carry no new refresh token,
	// so the client must keep using the one it has (which stays valid).
	NoRefreshRotation bool
	// RequireOfflineAccess issues refresh tokens only when the offline_access
	// scope was granted; by default every authorization gets one.
	RequireOfflineAccess bool

	// OmitPKCEMetadata leaves code_challenge_methods_supported out of the
	// metadata (PKCE is then optional but still verified when sent).
	OmitPKCEMetadata bool
	// PKCEMethods is the advertised code_challenge_methods_supported; nil
	// means ["S256"]. Listing "plain" also makes the server accept it.
	PKCEMethods []string

	// IssParameter advertises authorization_response_iss_parameter_supported
	// and adds iss to every authorization response (RFC 9207).
	IssParameter bool
	// IssuerPath puts the issuer under a path, such as "/tenant1".
	IssuerPath string
	// Metadata selects the well-known location of the metadata document.
	Metadata MetadataLocation
	// MetadataIssuer, when set, replaces the issuer field of the metadata
	// document, making it disagree with the URL it was fetched from.
	MetadataIssuer string

	// Scopes is scopes_supported and every client's allowed scopes; default
	// ["mcp.read", "mcp.write", "offline_access"].
	Scopes []string

	// DCR serves RFC 7591 dynamic client registration at {issuer}/register.
	DCR bool

	// RejectResource answers invalid_target whenever a resource parameter is
	// present, on authorization and token requests (as Entra ID does).
	RejectResource bool

	// User is the user the authorization endpoint approves as when the
	// browser has not signed in at {issuer}/login (login.go); default "alice".
	User string
	// Deny makes the authorization endpoint answer error=access_denied.
	Deny bool
	// Consent makes the authorization endpoint show a consent page (HTML,
	// works in a real browser) instead of approving at once: the page's form
	// POSTs the request back with consent=approve or consent=deny. A
	// headless client can POST consent=approve to the authorization URL.
	Consent bool

	// IDTokens makes the token endpoint add an OpenID Connect ID token
	// naming the signed-in user to an authorization code exchange whose
	// grant includes the openid scope (idtoken.go; list "openid" in Scopes).
	IDTokens bool

	// DPoP turns on RFC 9449 at the token endpoint (dpop.go).
	DPoP *DPoPOptions

	// CIMD accepts clients identified by Client ID Metadata Documents
	// (cimd.go) and advertises client_id_metadata_document_supported and
	// private_key_jwt.
	CIMD *CIMDOptions

	// DemoControls serves POST {issuer}/demo/revoke-access-tokens and POST
	// {issuer}/demo/expire-refresh-tokens, RevokeAccessTokens and
	// ExpireRefreshTokens over HTTP, so that the README's walk-through can
	// make a refresh fail from a shell. Each needs the header
	// "X-Demo-Control: 1" (democontrol.Header; 403 without it), so that a
	// web page cannot trigger it with a plain cross-site POST; anyone else
	// who reaches the server may call them: only the demo sets this.
	DemoControls bool

	// Addr is the listen address; default "127.0.0.1:0" (a free port).
	Addr string
}

// AuthServer is a real OAuth 2.1 authorization server (fosite) listening on
// 127.0.0.1, with recording and fault injection for tests.
type AuthServer struct {
	// URL is the issuer identifier, e.g. "http://127.0.0.1:41234/tenant1".
	URL string
	// Origin is the scheme and host the server listens on, without path.
	Origin string

	opt      AuthServerOptions
	config   *fosite.Config
	provider fosite.OAuth2Provider
	store    *store
	mux      *http.ServeMux
	rec      recorder
	dpop     *dpopServer // nil without DPoP
	// idjag is set on a machine server that accepts ID-JAGs (xaa.go).
	idjag *idJAGTrust
	// idTokens signs ID tokens; nil unless IDTokens.
	idTokens *idTokenSigner
	// cimd resolves Client Identifier URLs; nil unless CIMD.
	cimd *cimdResolver
	// logins are the browsers signed in at {issuer}/login (login.go).
	logins loginSessions

	mu              sync.Mutex
	tokenDelay      time.Duration
	beforeAnswer    func(grantType string)
	tokenStatus     int
	retryAfter      string
	deny            bool
	issOverride     *string // nil: follow IssParameter; else send this value ("" omits)
	refreshCount    int
	reuseRejections int
	revocations     int
	issued          []Issuance
	// hangNext token requests hang until their client gives up; each
	// sends on hung once it hangs (HangTokenRequests).
	hangNext int
	hung     chan struct{}
}

// Issuance is one successful answer of the token endpoint, in the order
// they were written.
type Issuance struct {
	// Grant is the request's grant_type.
	Grant string
	// Presented is the refresh token a refresh_token grant presented.
	Presented string
	// AccessToken and RefreshToken are the tokens issued (RefreshToken is
	// empty when none was sent back).
	AccessToken, RefreshToken string
	// ExpiresIn is the expires_in sent, whole seconds as on the wire.
	ExpiresIn time.Duration
	// Requested is when the request reached the handler; Issued is when
	// the answer was about to be written (the client cannot have read it
	// before).
	Requested, Issued time.Time
}

// NewAuthServer starts an authorization server on 127.0.0.1 and stops it
// when tb ends.
func NewAuthServer(tb TB, opt AuthServerOptions) *AuthServer {
	tb.Helper()
	l, err := net.Listen("tcp", listenAddr(opt.Addr))
	if err != nil {
		tb.Fatalf("testauthz: listen: %v", err)
	}
	origin := "http://" + l.Addr().String()
	a := newAuthServer(tb, opt, origin)
	srv := httptest.NewUnstartedServer(a)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	tb.Cleanup(srv.Close)
	return a
}

// NewAuthServerOn serves an authorization server on l whose issuer and
// endpoints are under publicOrigin (for example "http://127.0.0.1:4567"),
// the address of a fault proxy in front of l: every request mcpauth makes
// to the server then passes through the proxy. It stops when tb ends.
func NewAuthServerOn(tb TB, opt AuthServerOptions, l net.Listener, publicOrigin string) *AuthServer {
	tb.Helper()
	a := newAuthServer(tb, opt, publicOrigin)
	srv := httptest.NewUnstartedServer(a)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	tb.Cleanup(srv.Close)
	return a
}

// newAuthServer builds the server's handler for an issuer under origin; the
// caller serves it.
func newAuthServer(tb TB, opt AuthServerOptions, origin string) *AuthServer {
	tb.Helper()
	if opt.AccessTokenLifetime == 0 {
		opt.AccessTokenLifetime = time.Hour
	}
	if opt.RefreshTokenLifetime == 0 {
		opt.RefreshTokenLifetime = 24 * time.Hour
	}
	if opt.Scopes == nil {
		opt.Scopes = []string{"mcp.read", "mcp.write", "offline_access"}
	}
	if opt.PKCEMethods == nil {
		opt.PKCEMethods = []string{"S256"}
	}
	if opt.User == "" {
		opt.User = "alice"
	}
	if opt.IssuerPath != "" && (!strings.HasPrefix(opt.IssuerPath, "/") || strings.HasSuffix(opt.IssuerPath, "/")) {
		tb.Fatalf("testauthz: IssuerPath %q must start and not end with /", opt.IssuerPath)
	}
	a := &AuthServer{
		URL:    origin + opt.IssuerPath,
		Origin: origin,
		opt:    opt,
		store:  newStore(!opt.NoRefreshRotation),
		deny:   opt.Deny,
	}
	if opt.DPoP != nil {
		a.dpop = newDPoPServer(*opt.DPoP)
	}
	if opt.IDTokens {
		signer, err := newIDTokenSigner()
		if err != nil {
			tb.Fatalf("testauthz: id token key: %v", err)
		}
		a.idTokens = signer
	}
	refreshScopes := []string{}
	if opt.RequireOfflineAccess {
		refreshScopes = []string{"offline_access"}
	}
	a.config = &fosite.Config{
		AccessTokenLifespan:            opt.AccessTokenLifetime,
		RefreshTokenLifespan:           opt.RefreshTokenLifetime,
		AuthorizeCodeLifespan:          5 * time.Minute,
		GlobalSecret:                   []byte(rand.Text() + rand.Text())[:32],
		HashCost:                       4, // bcrypt's minimum: client secrets are test data
		ScopeStrategy:                  fosite.ExactScopeStrategy,
		AudienceMatchingStrategy:       fosite.DefaultAudienceMatchingStrategy,
		EnforcePKCE:                    !opt.OmitPKCEMetadata,
		EnablePKCEPlainChallengeMethod: slices.Contains(opt.PKCEMethods, "plain"),
		RefreshTokenScopes:             refreshScopes,
		TokenURL:                       a.URL + "/token",
		AccessTokenIssuer:              a.URL,
		SendDebugMessagesToClients:     true,
	}
	// Set what fosite's getters would otherwise set lazily, racily.
	a.config.ClientSecretsHasher = &fosite.BCrypt{Config: a.config}
	a.config.JWKSFetcherStrategy = fosite.NewDefaultJWKSFetcherStrategy()
	if opt.CIMD != nil {
		a.newCIMD(opt.CIMD)
	}
	a.provider = compose.Compose(a.config, a.store, compose.NewOAuth2HMACStrategy(a.config),
		compose.OAuth2AuthorizeExplicitFactory,
		compose.OAuth2PKCEFactory,
		compose.OAuth2RefreshTokenGrantFactory,
		compose.OAuth2TokenRevocationFactory,
		compose.OAuth2TokenIntrospectionFactory,
	)

	p := opt.IssuerPath
	a.mux = http.NewServeMux()
	a.mux.HandleFunc("GET "+p+"/authorize", a.authorize)
	if opt.Consent {
		a.mux.HandleFunc("POST "+p+"/authorize", a.authorize)
	}
	a.mux.HandleFunc("GET "+p+"/login", a.login)
	a.mux.HandleFunc("POST "+p+"/login", a.login)
	a.mux.HandleFunc("POST "+p+"/token", a.tokenHandler())
	a.mux.HandleFunc("POST "+p+"/revoke", a.revoke)
	a.mux.HandleFunc("POST "+p+"/introspect", a.introspect)
	a.mux.HandleFunc("GET "+p+"/jwks", func(w http.ResponseWriter, _ *http.Request) {
		if a.idTokens != nil {
			writeJSON(w, http.StatusOK, a.idTokens.jwks())
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"keys": []any{}})
	})
	if opt.DCR {
		a.mux.HandleFunc("POST "+p+"/register", a.register)
	}
	for _, path := range a.metadataPaths() {
		a.mux.HandleFunc("GET "+path, a.metadata)
	}
	if opt.DemoControls {
		a.mux.HandleFunc("POST "+p+"/demo/revoke-access-tokens", democontrol.Require(demoControl(a.RevokeAccessTokens, "access tokens revoked")))
		a.mux.HandleFunc("POST "+p+"/demo/expire-refresh-tokens", democontrol.Require(demoControl(a.ExpireRefreshTokens, "refresh tokens expired")))
	}
	return a
}

// demoControl answers a DemoControls request: it runs kill and says what it
// did.
func demoControl(kill func(), done string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		kill()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, done+"\n")
	}
}

// metadataPaths lists the URL paths serving the metadata document.
func (a *AuthServer) metadataPaths() []string {
	p := a.opt.IssuerPath
	oauthInsert := "/.well-known/oauth-authorization-server" + p
	oidcInsert := "/.well-known/openid-configuration" + p
	oidcAppend := p + "/.well-known/openid-configuration"
	switch a.opt.Metadata {
	case MetadataOAuthPathInsert:
		return []string{oauthInsert}
	case MetadataOIDCPathInsert:
		return []string{oidcInsert}
	case MetadataOIDCPathAppend:
		return []string{oidcAppend}
	case MetadataOAuthRoot:
		return []string{"/.well-known/oauth-authorization-server"}
	case MetadataOIDCRoot:
		return []string{"/.well-known/openid-configuration"}
	case MetadataNone:
		return nil
	}
	return slices.Compact([]string{oauthInsert, oidcInsert, oidcAppend})
}

// MetadataURL returns the first URL at which the metadata document is
// served, or "" when none is.
func (a *AuthServer) MetadataURL() string {
	paths := a.metadataPaths()
	if len(paths) == 0 {
		return ""
	}
	return a.Origin + paths[0]
}

// ServeHTTP records the request and dispatches it.
func (a *AuthServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.rec.record(r)
	w.Header().Set("Cache-Control", "no-store")
	a.mux.ServeHTTP(w, r)
}

func (a *AuthServer) metadata(w http.ResponseWriter, _ *http.Request) {
	issuer := a.URL
	if a.opt.MetadataIssuer != "" {
		issuer = a.opt.MetadataIssuer
	}
	authMethods := []string{"client_secret_basic", "client_secret_post", "none"}
	doc := map[string]any{
		"issuer":                                        issuer,
		"authorization_endpoint":                        a.URL + "/authorize",
		"token_endpoint":                                a.URL + "/token",
		"revocation_endpoint":                           a.URL + "/revoke",
		"introspection_endpoint":                        a.URL + "/introspect",
		"jwks_uri":                                      a.URL + "/jwks",
		"response_types_supported":                      []string{"code"},
		"response_modes_supported":                      []string{"query"},
		"grant_types_supported":                         []string{"authorization_code", "refresh_token"},
		"token_endpoint_auth_methods_supported":         authMethods,
		"revocation_endpoint_auth_methods_supported":    authMethods,
		"introspection_endpoint_auth_methods_supported": []string{"client_secret_basic"},
		"scopes_supported":                              a.opt.Scopes,
		"subject_types_supported":                       []string{"public"},
		"id_token_signing_alg_values_supported":         []string{"RS256"},
	}
	if a.idTokens != nil {
		doc["id_token_signing_alg_values_supported"] = []string{"ES256"}
	}
	if !a.opt.OmitPKCEMetadata {
		doc["code_challenge_methods_supported"] = a.opt.PKCEMethods
	}
	if a.opt.IssParameter {
		doc["authorization_response_iss_parameter_supported"] = true
	}
	if a.opt.DCR {
		doc["registration_endpoint"] = a.URL + "/register"
	}
	if a.cimd != nil {
		// The draft, section 5; RFC 8414 section 2 for private_key_jwt.
		doc["client_id_metadata_document_supported"] = true
		doc["token_endpoint_auth_methods_supported"] = append(slices.Clone(authMethods), "private_key_jwt")
		doc["token_endpoint_auth_signing_alg_values_supported"] = []string{"ES256", "RS256"}
	}
	a.dpopMetadata(doc)
	writeJSON(w, http.StatusOK, doc)
}

// errInvalidTarget is RFC 8707's error for an unacceptable resource.
var errInvalidTarget = &fosite.RFC6749Error{
	ErrorField:       "invalid_target",
	DescriptionField: "The requested resource is invalid, unknown, or malformed.",
	CodeField:        http.StatusBadRequest,
}

func (a *AuthServer) authorize(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	w = &issWriter{ResponseWriter: w, a: a}
	ar, err := a.provider.NewAuthorizeRequest(ctx, r)
	if err != nil {
		a.provider.WriteAuthorizeError(ctx, w, ar, err)
		return
	}
	resource := ar.GetRequestForm().Get("resource")
	if a.opt.RejectResource && ar.GetRequestForm().Has("resource") {
		a.provider.WriteAuthorizeError(ctx, w, ar, errInvalidTarget)
		return
	}
	a.mu.Lock()
	deny := a.deny
	a.mu.Unlock()
	user := a.signedInUser(r)
	if a.opt.Consent && r.Method == http.MethodGet {
		writeConsentPage(w, ar, user)
		return
	}
	if deny || (a.opt.Consent && ar.GetRequestForm().Get("consent") != "approve") {
		a.provider.WriteAuthorizeError(ctx, w, ar, fosite.ErrAccessDenied.WithHint("The user denied the request."))
		return
	}
	for _, s := range ar.GetRequestedScopes() {
		ar.GrantScope(s)
	}
	session := &fosite.DefaultSession{
		Subject:  user,
		Username: user,
		Extra:    map[string]any{"resource": resource},
	}
	resp, err := a.provider.NewAuthorizeResponse(ctx, ar, session)
	if err != nil {
		a.provider.WriteAuthorizeError(ctx, w, ar, err)
		return
	}
	if jkt := ar.GetRequestForm().Get("dpop_jkt"); a.dpop != nil && jkt != "" {
		// RFC 9449 section 10: the code is bound to this key.
		a.dpop.bindCode(resp.GetCode(), jkt)
	}
	a.provider.WriteAuthorizeResponse(ctx, w, ar, resp)
}

// issWriter adds RFC 9207's iss to the redirect of every authorization
// response, success or error, as configured.
type issWriter struct {
	http.ResponseWriter
	a *AuthServer
}

func (w *issWriter) WriteHeader(code int) {
	loc := w.Header().Get("Location")
	if code >= 300 && code < 400 && loc != "" {
		w.a.mu.Lock()
		override := w.a.issOverride
		w.a.mu.Unlock()
		iss, send := w.a.URL, w.a.opt.IssParameter
		if override != nil {
			iss, send = *override, *override != ""
		}
		if u, err := url.Parse(loc); err == nil && send {
			q := u.Query()
			q.Set("iss", iss)
			u.RawQuery = q.Encode()
			w.Header().Set("Location", u.String())
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

// tokenHandler is the token endpoint, behind RFC 9449 when configured.
func (a *AuthServer) tokenHandler() http.HandlerFunc {
	if a.dpop != nil {
		return a.dpopToken(a.token)
	}
	return a.token
}

func (a *AuthServer) token(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	requested := time.Now()
	a.mu.Lock()
	delay, status, retryAfter := a.tokenDelay, a.tokenStatus, a.retryAfter
	hang, hung := a.hangNext > 0, a.hung
	if hang {
		a.hangNext--
	}
	a.mu.Unlock()
	if hang {
		hung <- struct{}{}
		<-ctx.Done()
		return
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	if status != 0 {
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		writeJSON(w, status, map[string]string{"error": "temporarily_unavailable"})
		return
	}
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	refresh := r.PostForm.Get("grant_type") == "refresh_token"
	if refresh {
		a.mu.Lock()
		a.refreshCount++
		a.mu.Unlock()
	}
	if a.opt.RejectResource && r.PostForm.Has("resource") {
		a.provider.WriteAccessError(ctx, w, nil, errInvalidTarget)
		return
	}
	ar, err := a.provider.NewAccessRequest(ctx, r, &fosite.DefaultSession{})
	if err != nil {
		if refresh && errors.Is(err, fosite.ErrInactiveToken) {
			// fosite has revoked the token family by now.
			a.mu.Lock()
			a.reuseRejections++
			a.mu.Unlock()
		}
		a.provider.WriteAccessError(ctx, w, ar, err)
		return
	}
	resp, err := a.provider.NewAccessResponse(ctx, ar)
	if err != nil {
		a.provider.WriteAccessError(ctx, w, ar, err)
		return
	}
	if err := a.addIDToken(ar, resp); err != nil {
		a.provider.WriteAccessError(ctx, w, ar, fosite.ErrServerError.WithWrap(err))
		return
	}
	a.mu.Lock()
	hook := a.beforeAnswer
	a.mu.Unlock()
	if hook != nil {
		hook(r.PostForm.Get("grant_type"))
	}
	if refresh && a.opt.NoRefreshRotation {
		if ar, ok := resp.(*fosite.AccessResponse); ok {
			delete(ar.Extra, "refresh_token")
		}
	}
	a.noteIssued(r.PostForm, resp, requested)
	a.provider.WriteAccessResponse(ctx, w, ar, resp)
}

// noteIssued records the answer about to be written to a token request.
func (a *AuthServer) noteIssued(form url.Values, resp fosite.AccessResponder, requested time.Time) {
	is := Issuance{Grant: form.Get("grant_type"), AccessToken: resp.GetAccessToken(), Requested: requested}
	if is.Grant == "refresh_token" {
		is.Presented = form.Get("refresh_token")
	}
	is.RefreshToken, _ = resp.GetExtra("refresh_token").(string)
	switch n := resp.GetExtra("expires_in").(type) {
	case int64:
		is.ExpiresIn = time.Duration(n) * time.Second
	case int:
		is.ExpiresIn = time.Duration(n) * time.Second
	}
	is.Issued = time.Now()
	a.mu.Lock()
	a.issued = append(a.issued, is)
	a.mu.Unlock()
}

func (a *AuthServer) revoke(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	err := a.provider.NewRevocationRequest(ctx, r)
	if err == nil {
		a.mu.Lock()
		a.revocations++
		a.mu.Unlock()
	}
	a.provider.WriteRevocationResponse(ctx, w, err)
}

func (a *AuthServer) introspect(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	resp, err := a.provider.NewIntrospectionRequest(ctx, r, &fosite.DefaultSession{})
	if err != nil {
		a.provider.WriteIntrospectionError(ctx, w, err)
		return
	}
	a.provider.WriteIntrospectionResponse(ctx, w, resp)
}

// registrationRequest is the subset of RFC 7591 client metadata the
// harness understands; other members are accepted and ignored.
type registrationRequest struct {
	RedirectURIs            []string `json:"redirect_uris"`
	TokenEndpointAuthMethod string   `json:"token_endpoint_auth_method"`
	GrantTypes              []string `json:"grant_types"`
	ResponseTypes           []string `json:"response_types"`
	ClientName              string   `json:"client_name"`
	Scope                   string   `json:"scope"`
	ApplicationType         string   `json:"application_type"`
}

func (a *AuthServer) register(w http.ResponseWriter, r *http.Request) {
	regErr := func(code, desc string) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": code, "error_description": desc})
	}
	var req registrationRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		regErr("invalid_client_metadata", "body is not a JSON object")
		return
	}
	if len(req.RedirectURIs) == 0 {
		regErr("invalid_redirect_uri", "redirect_uris is required")
		return
	}
	for _, ru := range req.RedirectURIs {
		u, err := url.Parse(ru)
		if err != nil || !u.IsAbs() || u.Fragment != "" {
			regErr("invalid_redirect_uri", "redirect_uris must be absolute URIs without fragment")
			return
		}
	}
	if req.TokenEndpointAuthMethod == "" {
		req.TokenEndpointAuthMethod = "client_secret_basic" // RFC 7591 default
	}
	if !slices.Contains([]string{"none", "client_secret_basic", "client_secret_post"}, req.TokenEndpointAuthMethod) {
		regErr("invalid_client_metadata", "unsupported token_endpoint_auth_method")
		return
	}
	if len(req.GrantTypes) == 0 {
		req.GrantTypes = []string{"authorization_code", "refresh_token"}
	}
	for _, g := range req.GrantTypes {
		if g != "authorization_code" && g != "refresh_token" {
			regErr("invalid_client_metadata", "unsupported grant type")
			return
		}
	}
	if len(req.ResponseTypes) == 0 {
		req.ResponseTypes = []string{"code"}
	}
	if !slices.Equal(req.ResponseTypes, []string{"code"}) {
		regErr("invalid_client_metadata", "only response type code is supported")
		return
	}
	if req.ApplicationType == "" {
		req.ApplicationType = "web"
	}
	id := "dcr-" + rand.Text()
	public := req.TokenEndpointAuthMethod == "none"
	var secret string
	client := &fosite.DefaultOpenIDConnectClient{
		DefaultClient: &fosite.DefaultClient{
			ID:            id,
			RedirectURIs:  req.RedirectURIs,
			GrantTypes:    req.GrantTypes,
			ResponseTypes: req.ResponseTypes,
			Scopes:        a.opt.Scopes,
			Public:        public,
		},
		TokenEndpointAuthMethod: req.TokenEndpointAuthMethod,
	}
	if !public {
		secret = rand.Text() + rand.Text()
		h, err := a.config.ClientSecretsHasher.Hash(r.Context(), []byte(secret))
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "server_error"})
			return
		}
		client.Secret = h
	}
	a.store.setClient(client)
	resp := map[string]any{
		"client_id":                  id,
		"client_id_issued_at":        time.Now().Unix(),
		"redirect_uris":              req.RedirectURIs,
		"token_endpoint_auth_method": req.TokenEndpointAuthMethod,
		"grant_types":                req.GrantTypes,
		"response_types":             req.ResponseTypes,
		"application_type":           req.ApplicationType,
		"scope":                      strings.Join(a.opt.Scopes, " "),
	}
	if req.ClientName != "" {
		resp["client_name"] = req.ClientName
	}
	if !public {
		resp["client_secret"] = secret
		resp["client_secret_expires_at"] = 0
	}
	writeJSON(w, http.StatusCreated, resp)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// RegisterClient adds a pre-registered client allowed every configured
// scope, the authorization_code and refresh_token grants, and the given
// redirect URIs (a loopback http URI matches any port, per RFC 8252). A
// confidential client may authenticate with client_secret_basic or
// client_secret_post; a public client sends only client_id.
func (a *AuthServer) RegisterClient(id, secret string, redirectURIs []string, public bool) {
	c := &fosite.DefaultClient{
		ID:            id,
		RedirectURIs:  redirectURIs,
		GrantTypes:    []string{"authorization_code", "refresh_token"},
		ResponseTypes: []string{"code"},
		Scopes:        a.opt.Scopes,
		Public:        public,
	}
	if !public {
		h, err := a.config.ClientSecretsHasher.Hash(context.Background(), []byte(secret))
		if err != nil {
			panic(fmt.Sprintf("testauthz: hash client secret: %v", err))
		}
		c.Secret = h
	}
	a.store.setClient(c)
}

// DeleteClient forgets a client, as an authorization server that evicts
// dynamically registered clients does; its next request gets invalid_client.
func (a *AuthServer) DeleteClient(id string) {
	a.store.deleteClient(id)
}

// Requests returns every request the server received, oldest first.
func (a *AuthServer) Requests() []RecordedRequest { return a.rec.all() }

// RequestsTo returns the requests received at the URL path, oldest first.
func (a *AuthServer) RequestsTo(path string) []RecordedRequest {
	var out []RecordedRequest
	for _, r := range a.rec.all() {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// Counts returns how many requests arrived at the URL path (for example
// a.Path("/token")).
func (a *AuthServer) Counts(path string) int { return a.rec.count(path) }

// Path returns the URL path of an endpoint under the issuer, such as
// Path("/token") = "/tenant1/token".
func (a *AuthServer) Path(endpoint string) string { return a.opt.IssuerPath + endpoint }

// RefreshCount returns how many refresh_token grant requests reached the
// token endpoint (including rejected ones, excluding injected faults).
func (a *AuthServer) RefreshCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refreshCount
}

// Issued returns the token endpoint's successful answers so far, oldest
// first.
func (a *AuthServer) Issued() []Issuance {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.issued)
}

// ReuseRejections returns how many refresh requests presented a refresh
// token that was already rotated or revoked. fosite cannot tell the two
// apart: for each it revokes the whole token family and answers invalid_grant.
func (a *AuthServer) ReuseRejections() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reuseRejections
}

// RevocationCount returns how many RFC 7009 revocation requests succeeded.
func (a *AuthServer) RevocationCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.revocations
}

// SetTokenDelay makes the token endpoint wait d before answering (or until
// the client gives up); 0 restores immediate answers.
func (a *AuthServer) SetTokenDelay(d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tokenDelay = d
}

// HangTokenRequests makes the next n token requests hang, unanswered,
// until their client gives up; the returned channel receives a value as
// each of them starts hanging. Which requests hang is decided as each
// arrives, so a test changing the server's behaviour once it learns a
// request hangs cannot change that request's fate (as SetTokenDelay(0)
// could, before the request read the delay).
func (a *AuthServer) HangTokenRequests(n int) <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.hangNext, a.hung = n, make(chan struct{}, n)
	return a.hung
}

// SetBeforeTokenAnswer makes the token endpoint call f with the request's
// grant_type once it has issued the tokens of a successful request, before
// it answers (the tokens are live by then); nil removes the hook. It stages
// what happens elsewhere while a token request is under way.
func (a *AuthServer) SetBeforeTokenAnswer(f func(grantType string)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.beforeAnswer = f
}

// SetTokenStatus makes the token endpoint answer every request with HTTP
// status code, error temporarily_unavailable and, when retryAfter is not
// empty, a Retry-After header; code 0 restores normal answers.
func (a *AuthServer) SetTokenStatus(code int, retryAfter string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tokenStatus, a.retryAfter = code, retryAfter
}

// SetDeny switches the authorization endpoint between approving and
// answering error=access_denied.
func (a *AuthServer) SetDeny(deny bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.deny = deny
}

// SetRedirectIss overrides the iss parameter of authorization responses:
// a non-empty iss is sent as given (a mix-up attacker's value), "" sends
// none, whatever the metadata advertises.
func (a *AuthServer) SetRedirectIss(iss string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.issOverride = &iss
}

// ExpireRefreshTokens makes every refresh token issued so far fail with
// invalid_grant, as after its expiry or an administrator's revocation.
// Access tokens keep working until they expire.
func (a *AuthServer) ExpireRefreshTokens() { a.store.killRefresh() }

// RevokeAccessTokens makes every access token issued so far unusable (the
// resource server answers 401 to them) while the refresh tokens stay valid:
// a refresh gets a working token again.
func (a *AuthServer) RevokeAccessTokens() { a.store.killAccess() }

// RevokeAllTokens makes every access and refresh token issued so far invalid.
func (a *AuthServer) RevokeAllTokens() { a.store.killAll() }

// TokenInfo describes a valid access token.
type TokenInfo struct {
	// Subject is the user who authorized the token.
	Subject string
	// ClientID is the client the token was issued to.
	ClientID string
	// Scopes are the granted scopes.
	Scopes []string
	// Resource is the RFC 8707 resource sent on the authorization request,
	// or "" when none was.
	Resource string
	// ExpiresAt is when the token expires.
	ExpiresAt time.Time
}

// ValidateToken introspects an access token in-process. It fails for
// unknown, expired, revoked and refresh tokens.
func (a *AuthServer) ValidateToken(ctx context.Context, token string) (TokenInfo, error) {
	use, ar, err := a.provider.IntrospectToken(ctx, token, fosite.AccessToken, &fosite.DefaultSession{})
	if err != nil {
		return TokenInfo{}, err
	}
	if use != fosite.AccessToken {
		return TokenInfo{}, errors.New("testauthz: not an access token")
	}
	info := TokenInfo{
		ClientID: ar.GetClient().GetID(),
		Scopes:   slices.Clone(ar.GetGrantedScopes()),
	}
	if s, ok := ar.GetSession().(*fosite.DefaultSession); ok {
		info.Subject = s.Subject
		info.ExpiresAt = s.GetExpiresAt(fosite.AccessToken)
		info.Resource, _ = s.Extra["resource"].(string)
	}
	return info, nil
}

// Validate reports whether token is a valid access token and its scopes.
func (a *AuthServer) Validate(token string) (scopes []string, ok bool) {
	info, err := a.ValidateToken(context.Background(), token)
	if err != nil {
		return nil, false
	}
	return info.Scopes, true
}
