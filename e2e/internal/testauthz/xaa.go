package testauthz

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/ory/fosite"
	"github.com/ory/fosite/handler/oauth2"
)

// idJAGTrust is which identity provider's ID-JAGs an authorization server
// accepts, and for which resources.
type idJAGTrust struct {
	mu        sync.Mutex
	issuer    string
	jwksURL   string
	resources []string
	used      map[string]time.Time // jti -> exp
	grants    int
}

// TrustIdentityProvider makes a server started with MachineOptions.IDJAG
// accept ID-JAGs issued by issuer, verified with the keys at jwksURL, for
// the given resource identifiers (its MCP servers).
func (a *AuthServer) TrustIdentityProvider(issuer, jwksURL string, resources ...string) {
	t := a.idjag
	t.mu.Lock()
	defer t.mu.Unlock()
	t.issuer, t.jwksURL, t.resources = issuer, jwksURL, resources
}

// IDJAGGrants counts the ID-JAGs the server accepted.
func (a *AuthServer) IDJAGGrants() int {
	a.idjag.mu.Lock()
	defer a.idjag.mu.Unlock()
	return a.idjag.grants
}

// idJAGHandler is the resource authorization server's side of the ID-JAG
// draft (section 4.4) and of the MCP enterprise-managed authorization
// extension (section 5): an RFC 7523 section 2.1 JWT bearer grant whose
// assertion is an ID-JAG, from an authenticated client.
type idJAGHandler struct {
	*oauth2.HandleHelper
	// refresh, when set, issues refresh tokens too.
	refresh        oauth2.RefreshTokenStrategy
	refreshStorage oauth2.RefreshTokenStorage
	issuer         string
	trust          *idJAGTrust
	http           *http.Client
}

var _ fosite.TokenEndpointHandler = (*idJAGHandler)(nil)

func (h *idJAGHandler) CanSkipClientAuth(context.Context, fosite.AccessRequester) bool { return false }

func (h *idJAGHandler) CanHandleTokenEndpointRequest(_ context.Context, r fosite.AccessRequester) bool {
	return r.GetGrantTypes().ExactOne(GrantJWTBearer)
}

// HandleTokenEndpointRequest validates the ID-JAG (the draft, section
// 4.4.1; the extension, sections 5.1, 7.4 and 7.6.2). Every failure is
// invalid_grant, as the extension's section 7.6.2 asks.
func (h *idJAGHandler) HandleTokenEndpointRequest(ctx context.Context, r fosite.AccessRequester) error {
	if !h.CanHandleTokenEndpointRequest(ctx, r) {
		return fosite.ErrUnknownRequest
	}
	if !r.GetClient().GetGrantTypes().Has(GrantJWTBearer) {
		return fosite.ErrUnauthorizedClient
	}
	c, err := h.verify(ctx, r.GetRequestForm().Get("assertion"), r.GetClient().GetID())
	if err != nil {
		return fosite.ErrInvalidGrant.WithHint(err.Error())
	}
	// The extension, section 7.2.1: issue the intersection of the scopes
	// asked for and those in the ID-JAG.
	granted := strings.Fields(c.Scope)
	if req := r.GetRequestedScopes(); len(req) > 0 {
		granted = slices.DeleteFunc(slices.Clone([]string(req)), func(s string) bool { return !slices.Contains(granted, s) })
	}
	for _, s := range granted {
		r.GrantScope(s)
	}
	s, _ := r.GetSession().(*fosite.DefaultSession)
	if s == nil {
		return fosite.ErrServerError
	}
	s.Subject = c.Subject
	// The extension, section 5.1: the access token is audience-restricted
	// to the ID-JAG's resource (the MCP server checks it).
	if c.Resource != "" {
		s.Extra = map[string]any{"resource": c.Resource}
	}
	s.SetExpiresAt(fosite.AccessToken, time.Now().UTC().Add(h.Config.GetAccessTokenLifespan(ctx)).Round(time.Second))
	return nil
}

// PopulateTokenEndpointResponse issues the access token, and a refresh
// token only on a server started with MachineOptions.IDJAGRefresh (the
// usual answer is none: a new ID-JAG is the way to a new token).
func (h *idJAGHandler) PopulateTokenEndpointResponse(ctx context.Context, r fosite.AccessRequester, resp fosite.AccessResponder) error {
	if !h.CanHandleTokenEndpointRequest(ctx, r) {
		return fosite.ErrUnknownRequest
	}
	accessSig, err := h.IssueAccessToken(ctx, h.Config.GetAccessTokenLifespan(ctx), r, resp)
	if err != nil || h.refresh == nil {
		return err
	}
	token, sig, err := h.refresh.GenerateRefreshToken(ctx, r)
	if err != nil {
		return err
	}
	if err := h.refreshStorage.CreateRefreshTokenSession(ctx, sig, accessSig, r.Sanitize(nil)); err != nil {
		return err
	}
	resp.SetExtra("refresh_token", token)
	return nil
}

// idJAGError is why an ID-JAG was refused (a hint for the test log).
type idJAGError string

func (e idJAGError) Error() string { return string(e) }

// verify checks an ID-JAG presented by clientID.
func (h *idJAGHandler) verify(ctx context.Context, raw, clientID string) (*IDJAGClaims, error) {
	t := h.trust
	t.mu.Lock()
	issuer, jwksURL, resources := t.issuer, t.jwksURL, slices.Clone(t.resources)
	t.mu.Unlock()
	if raw == "" {
		return nil, idJAGError("no assertion")
	}
	// The extension, section 7.4.1: an explicit algorithm allow-list.
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256, jose.RS256})
	if err != nil {
		return nil, idJAGError("not a signed JWT")
	}
	hdr := tok.Headers[0]
	// The draft, section 3.1: typ is oauth-id-jag+jwt.
	if typ, _ := hdr.ExtraHeaders[jose.HeaderType].(string); typ != TypIDJAG {
		return nil, idJAGError("typ is not " + TypIDJAG)
	}
	key, err := h.key(ctx, jwksURL, hdr.KeyID)
	if err != nil {
		return nil, err
	}
	var c IDJAGClaims
	if err := tok.Claims(key, &c); err != nil {
		return nil, idJAGError("signature does not verify")
	}
	now := time.Now()
	switch {
	case issuer == "" || c.Issuer != issuer:
		return nil, idJAGError("iss is not a trusted identity provider")
	case c.Audience != h.issuer:
		// The extension, section 7.6.2: aud is this server's issuer.
		return nil, idJAGError("aud is not this authorization server")
	case c.ClientID != clientID:
		// The draft, section 4.4.1: client_id names the authenticated client.
		return nil, idJAGError("client_id is not the authenticated client")
	case c.Subject == "":
		return nil, idJAGError("no sub")
	case c.Expiry == nil || !now.Before(c.Expiry.Time()) || c.IssuedAt == nil:
		return nil, idJAGError("expired, or no exp or iat")
	case c.Resource != "" && !slices.Contains(resources, c.Resource):
		// The extension, section 7.6.2: resource is one of this server's.
		return nil, idJAGError("resource is not served by this authorization server")
	case c.ID == "":
		return nil, idJAGError("no jti")
	}
	// The extension, section 7.4.2: jti replay detection is required.
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, seen := t.used[c.ID]; seen {
		return nil, idJAGError("jti was used before")
	}
	t.used[c.ID] = c.Expiry.Time()
	t.grants++
	return &c, nil
}

// key fetches the identity provider's JWKS and returns the key kid.
func (h *idJAGHandler) key(ctx context.Context, jwksURL, kid string) (*jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, jwksURL, nil)
	if err != nil {
		return nil, idJAGError("bad jwks url")
	}
	res, err := h.http.Do(req)
	if err != nil {
		return nil, idJAGError("jwks unreachable")
	}
	defer res.Body.Close()
	var set jose.JSONWebKeySet
	if res.StatusCode != http.StatusOK || json.NewDecoder(res.Body).Decode(&set) != nil {
		return nil, idJAGError("jwks unreadable")
	}
	keys := set.Key(kid)
	if len(keys) == 0 {
		return nil, idJAGError("no key " + kid + " in the identity provider's jwks")
	}
	return &keys[0], nil
}

// idJAGFactory builds the handler for compose.Compose.
func (a *AuthServer) idJAGFactory(refresh bool) func(config fosite.Configurator, storage any, strategy any) any {
	return func(config fosite.Configurator, storage any, strategy any) any {
		h := a.newIDJAGHandler(config, storage, strategy)
		if refresh {
			h.refresh, h.refreshStorage = strategy.(oauth2.RefreshTokenStrategy), storage.(oauth2.RefreshTokenStorage)
		}
		return h
	}
}

func (a *AuthServer) newIDJAGHandler(config fosite.Configurator, storage any, strategy any) *idJAGHandler {
	return &idJAGHandler{
		HandleHelper: &oauth2.HandleHelper{AccessTokenStrategy: strategy.(oauth2.AccessTokenStrategy),
			AccessTokenStorage: storage.(oauth2.AccessTokenStorage), Config: config},
		issuer: a.URL,
		trust:  a.idjag,
		http:   &http.Client{Timeout: 10 * time.Second},
	}
}
