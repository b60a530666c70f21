package testauthz

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Identifiers of enterprise-managed authorization: RFC 8693 section 3's
// token exchange grant and ID token type, and the ID-JAG draft's
// (draft-ietf-oauth-identity-assertion-authz-grant) token type and JWT
// "typ".
const (
	GrantTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	TokenTypeIDToken   = "urn:ietf:params:oauth:token-type:id_token"
	TokenTypeIDJAG     = "urn:ietf:params:oauth:token-type:id-jag"
	// TypIDJAG is the ID-JAG's JOSE "typ" header (the draft, section 3.1).
	TypIDJAG = "oauth-id-jag+jwt"
	// GrantProfileIDJAG is the draft's authorization grant profile (section
	// 7.2), listed in authorization_grant_profiles_supported.
	GrantProfileIDJAG = "urn:ietf:params:oauth:grant-profile:id-jag"
)

// IDJAGClaims are the claims of an identity assertion JWT authorization
// grant (the ID-JAG draft, section 3.1; the MCP enterprise-managed
// authorization extension, section 4.3).
type IDJAGClaims struct {
	Issuer   string           `json:"iss"`
	Subject  string           `json:"sub"`
	Audience string           `json:"aud"`
	ClientID string           `json:"client_id"`
	ID       string           `json:"jti"`
	Expiry   *jwt.NumericDate `json:"exp"`
	IssuedAt *jwt.NumericDate `json:"iat"`
	Resource string           `json:"resource,omitempty"`
	Scope    string           `json:"scope,omitempty"`
	// Raw is the signed JWT (kept by the identity provider only, so tests
	// can look for it where it must not be).
	Raw string `json:"-"`
}

// IdentityProvider is an enterprise identity provider for tests: it issues
// ID tokens to test users (OpenID Connect Core 1.0 section 2) and
// exchanges them for ID-JAGs at its token endpoint (RFC 8693 token
// exchange as the ID-JAG draft, section 4.3, profiles it), under an
// administrator's policy of which client may reach which authorization
// server and resource with which scopes. It serves RFC 8414 metadata and
// its JWKS (RFC 7517 section 5), and records every request.
type IdentityProvider struct {
	// URL is the issuer identifier.
	URL string

	key    *ecdsa.PrivateKey
	kid    string
	rec    recorder
	mu     sync.Mutex
	client map[string]string // client id -> secret
	// keyClient maps a private_key_jwt client to its jwks_uri; usedJTI
	// holds the client assertions' jti seen (RFC 7523 section 3 point 7).
	keyClient map[string]string
	usedJTI   map[string]bool
	keyAuths  int
	policy    map[[2]string]idpGrant
	issued    []IDJAGClaims
}

// idpGrant is what the policy allows for one (audience, resource) pair.
type idpGrant struct {
	// clientID is the client id at the resource authorization server the
	// ID-JAG names (the draft, section 5: the IdP maps its client to the
	// client registered there).
	clientID string
	scopes   []string
}

// NewIdentityProvider starts an identity provider on 127.0.0.1 and stops
// it when tb ends.
func NewIdentityProvider(tb TB) *IdentityProvider {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("testauthz: listen: %v", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("testauthz: idp key: %v", err)
	}
	p := &IdentityProvider{URL: "http://" + l.Addr().String(), key: key, kid: rand.Text()[:12],
		client: map[string]string{}, keyClient: map[string]string{}, usedJTI: map[string]bool{}, policy: map[[2]string]idpGrant{}}
	mux := http.NewServeMux()
	meta := func(w http.ResponseWriter, _ *http.Request) {
		// RFC 8414 section 2 (and OpenID Connect Discovery 1.0 section 3).
		writeJSON(w, http.StatusOK, map[string]any{
			"issuer":                                p.URL,
			"token_endpoint":                        p.URL + "/token",
			"jwks_uri":                              p.URL + "/jwks",
			"grant_types_supported":                 []string{GrantTokenExchange},
			"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post", "private_key_jwt"},
			// RFC 8414 section 2, for private_key_jwt.
			"token_endpoint_auth_signing_alg_values_supported": []string{"ES256", "RS256"},
			"id_token_signing_alg_values_supported":            []string{"ES256"},
		})
	}
	mux.HandleFunc("GET /.well-known/oauth-authorization-server", meta)
	mux.HandleFunc("GET /.well-known/openid-configuration", meta)
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: p.kid, Algorithm: "ES256", Use: "sig"}}})
	})
	mux.HandleFunc("POST /token", p.token)
	serveRecorded(tb, l, &p.rec, mux)
	return p
}

// serveRecorded serves h on l, recording every request in rec, until tb
// ends.
func serveRecorded(tb TB, l net.Listener, rec *recorder, h http.Handler) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.record(r)
		h.ServeHTTP(w, r)
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	tb.Cleanup(srv.Close)
}

// JWKSURL is where the provider's public keys are served.
func (p *IdentityProvider) JWKSURL() string { return p.URL + "/jwks" }

// RegisterClient adds a confidential client (client_secret_basic or
// client_secret_post).
func (p *IdentityProvider) RegisterClient(id, secret string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.client[id] = secret
}

// RegisterKeyClient adds a client that authenticates with private_key_jwt
// (RFC 7523 section 2.2), its public keys fetched from jwksURL.
func (p *IdentityProvider) RegisterKeyClient(id, jwksURL string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keyClient[id] = jwksURL
}

// KeyAuthentications counts the client assertions the token endpoint
// accepted.
func (p *IdentityProvider) KeyAuthentications() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.keyAuths
}

// Allow is the administrator's policy (the MCP extension, sections 4.1 and
// 7.6.1): ID-JAGs may be issued for the authorization server audience and
// the resource, naming resourceClientID (the client at that authorization
// server), with at most scopes.
func (p *IdentityProvider) Allow(audience, resource, resourceClientID string, scopes []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.policy[[2]string{audience, resource}] = idpGrant{clientID: resourceClientID, scopes: scopes}
}

// IDToken issues an ID token (OpenID Connect Core 1.0 section 2) for
// subject to the client clientID, valid for ttl (negative: already
// expired).
func (p *IdentityProvider) IDToken(tb TB, subject, clientID string, ttl time.Duration) string {
	tb.Helper()
	return p.IDTokenWith(tb, subject, clientID, ttl, nil)
}

// IDTokenWith is IDToken with extra claims (OpenID Connect Core 1.0
// section 5.1's standard claims such as email or preferred_username);
// they cannot replace iss, sub, aud, iat or exp.
func (p *IdentityProvider) IDTokenWith(tb TB, subject, clientID string, ttl time.Duration, extra map[string]any) string {
	tb.Helper()
	return p.idToken(tb, p.URL, subject, clientID, ttl, extra)
}

// IDTokenIssuedAs is IDToken signed with the provider's key but naming
// iss as its issuer: a token the provider would not issue (its ID tokens
// carry its issuer identifier exactly), for clients that must refuse it.
func (p *IdentityProvider) IDTokenIssuedAs(tb TB, iss, subject, clientID string, ttl time.Duration) string {
	tb.Helper()
	return p.idToken(tb, iss, subject, clientID, ttl, nil)
}

// idToken signs an ID token of iss for subject with the extra claims.
func (p *IdentityProvider) idToken(tb TB, iss, subject, clientID string, ttl time.Duration, extra map[string]any) string {
	tb.Helper()
	now := time.Now()
	claims := map[string]any{}
	for k, v := range extra {
		claims[k] = v
	}
	for k, v := range map[string]any{"iss": iss, "sub": subject, "aud": clientID, "iat": now.Unix(),
		"exp": now.Add(ttl).Unix(), "auth_time": now.Unix()} {
		claims[k] = v
	}
	s, err := p.sign("JWT", claims)
	if err != nil {
		tb.Fatalf("testauthz: sign ID token: %v", err)
	}
	return s
}

// Issued returns the claims of every ID-JAG issued so far.
func (p *IdentityProvider) Issued() []IDJAGClaims {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.issued)
}

// Requests returns every recorded request, in order of arrival.
func (p *IdentityProvider) Requests() []RecordedRequest { return p.rec.all() }

// RequestsTo returns the recorded requests to path.
func (p *IdentityProvider) RequestsTo(path string) []RecordedRequest {
	var out []RecordedRequest
	for _, r := range p.rec.all() {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

func (p *IdentityProvider) sign(typ string, claims map[string]any) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: p.key},
		(&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader("kid", p.kid))
	if err != nil {
		return "", err
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}

// tokenError answers an RFC 6749 section 5.2 error.
func tokenError(w http.ResponseWriter, status int, code string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="token"`)
	}
	writeJSON(w, status, map[string]string{"error": code})
}

// token is the token endpoint: RFC 8693 section 2.1 requests as the ID-JAG
// draft, section 4.3, profiles them.
func (p *IdentityProvider) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		tokenError(w, http.StatusBadRequest, "invalid_request")
		return
	}
	f := r.PostForm
	// The MCP extension, section 7.7: client authentication MUST be
	// enforced on the exchange (RFC 6749 section 2.3.1 methods).
	client, ok := p.authenticate(r)
	if !ok {
		tokenError(w, http.StatusUnauthorized, "invalid_client")
		return
	}
	if f.Get("grant_type") != GrantTokenExchange {
		tokenError(w, http.StatusBadRequest, "unsupported_grant_type")
		return
	}
	// RFC 8693 section 2.1: subject_token and subject_token_type are
	// required; the draft, section 4.3, requires requested_token_type id-jag
	// and audience, and names the ID token as a subject token type.
	if f.Get("requested_token_type") != TokenTypeIDJAG || f.Get("subject_token_type") != TokenTypeIDToken ||
		f.Get("subject_token") == "" || f.Get("audience") == "" {
		tokenError(w, http.StatusBadRequest, "invalid_request")
		return
	}
	subject, ok := p.verifyIDToken(f.Get("subject_token"), client)
	if !ok {
		// The draft's section 4.3 error example and common IdPs: an ID token
		// that does not validate is invalid_grant.
		tokenError(w, http.StatusBadRequest, "invalid_grant")
		return
	}
	p.mu.Lock()
	grant, allowed := p.policy[[2]string{f.Get("audience"), f.Get("resource")}]
	p.mu.Unlock()
	if !allowed {
		// RFC 8693 section 2.2.2: an unacceptable target is invalid_target.
		tokenError(w, http.StatusBadRequest, "invalid_target")
		return
	}
	scopes := grant.scopes
	if req := strings.Fields(f.Get("scope")); len(req) > 0 {
		scopes = slices.DeleteFunc(req, func(s string) bool { return !slices.Contains(grant.scopes, s) })
		if len(scopes) == 0 {
			tokenError(w, http.StatusBadRequest, "invalid_scope")
			return
		}
	}
	p.issue(w, subject, f.Get("audience"), f.Get("resource"), grant.clientID, scopes)
}

// issue signs an ID-JAG and answers RFC 8693 section 2.2.1 as the draft's
// section 4.3.2 (the MCP extension's section 4.2) shows.
func (p *IdentityProvider) issue(w http.ResponseWriter, subject, audience, resource, clientID string, scopes []string) {
	now := time.Now()
	c := IDJAGClaims{Issuer: p.URL, Subject: subject, Audience: audience, ClientID: clientID, ID: rand.Text(),
		Expiry: jwt.NewNumericDate(now.Add(5 * time.Minute)), IssuedAt: jwt.NewNumericDate(now), Resource: resource,
		Scope: strings.Join(scopes, " ")}
	claims := map[string]any{"iss": c.Issuer, "sub": c.Subject, "aud": c.Audience, "client_id": c.ClientID, "jti": c.ID,
		"exp": c.Expiry, "iat": c.IssuedAt, "scope": c.Scope}
	if resource != "" {
		claims["resource"] = resource
	}
	s, err := p.sign(TypIDJAG, claims)
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "server_error")
		return
	}
	c.Raw = s
	p.mu.Lock()
	p.issued = append(p.issued, c)
	p.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"issued_token_type": TokenTypeIDJAG, "access_token": s, "token_type": "N_A",
		"expires_in": 300, "scope": c.Scope})
}

// authenticate checks client_secret_basic (RFC 6749 section 2.3.1: both
// parts form-url-encoded before Basic encoding), client_secret_post, or
// private_key_jwt (RFC 7523 section 2.2). One method only (RFC 6749
// section 2.3).
func (p *IdentityProvider) authenticate(r *http.Request) (string, bool) {
	if r.PostForm.Has("client_assertion_type") || r.PostForm.Has("client_assertion") {
		if r.Header.Get("Authorization") != "" || r.PostForm.Has("client_secret") {
			return "", false
		}
		return p.authenticateKey(r)
	}
	id, secret, basic := r.BasicAuth()
	if basic {
		var err1, err2 error
		id, err1 = url.QueryUnescape(id)
		secret, err2 = url.QueryUnescape(secret)
		if err1 != nil || err2 != nil || r.PostForm.Has("client_secret") {
			return "", false
		}
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	p.mu.Lock()
	want, known := p.client[id]
	p.mu.Unlock()
	if !known || id == "" || subtle.ConstantTimeCompare([]byte(secret), []byte(want)) != 1 {
		return "", false
	}
	return id, true
}

// verifyIDToken checks an ID token as OpenID Connect Core 1.0 section
// 3.1.3.7 asks of its recipient: signed by this provider (ES256), issued
// by it, to the client presenting it (aud), and not expired.
func (p *IdentityProvider) verifyIDToken(raw, client string) (string, bool) {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return "", false
	}
	var c jwt.Claims
	if err := tok.Claims(&p.key.PublicKey, &c); err != nil {
		return "", false
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: p.URL, AnyAudience: jwt.Audience{client}, Time: time.Now()}, 0); err != nil || c.Subject == "" || c.Expiry == nil {
		return "", false
	}
	return c.Subject, true
}

// authenticateKey checks a private_key_jwt client assertion as RFC 7523
// sections 2.2 and 3 ask: the assertion type, a JWT signed (ES256 or RS256)
// by a key of the client's JWKS, iss and sub the client id (and client_id,
// when sent, the same: RFC 7521 section 4.2), aud this IdP's issuer or
// token endpoint, exp in the future, and a jti not seen before.
func (p *IdentityProvider) authenticateKey(r *http.Request) (string, bool) {
	f := r.PostForm
	if f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || len(f["client_assertion"]) != 1 {
		return "", false
	}
	tok, err := jwt.ParseSigned(f.Get("client_assertion"), []jose.SignatureAlgorithm{jose.ES256, jose.RS256})
	if err != nil {
		return "", false
	}
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return "", false
	}
	id := unverified.Issuer
	p.mu.Lock()
	jwksURL, known := p.keyClient[id]
	p.mu.Unlock()
	if !known || (f.Has("client_id") && f.Get("client_id") != id) {
		return "", false
	}
	res, err := http.Get(jwksURL)
	if err != nil {
		return "", false
	}
	defer res.Body.Close()
	var set jose.JSONWebKeySet
	if res.StatusCode != http.StatusOK || json.NewDecoder(res.Body).Decode(&set) != nil {
		return "", false
	}
	var c jwt.Claims
	if err := tok.Claims(&set, &c); err != nil {
		return "", false
	}
	aud := c.Audience.Contains(p.URL) || c.Audience.Contains(p.URL+"/token")
	if c.Subject != id || !aud || c.Expiry == nil || !time.Now().Before(c.Expiry.Time()) || c.ID == "" {
		return "", false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.usedJTI[c.ID] {
		return "", false
	}
	p.usedJTI[c.ID] = true
	p.keyAuths++
	return id, true
}
