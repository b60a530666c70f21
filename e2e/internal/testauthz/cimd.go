package testauthz

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-retryablehttp"
	"github.com/ory/fosite"
)

// CIMDOptions makes an authorization server accept clients identified by
// a Client ID Metadata Document (draft-ietf-oauth-client-id-metadata-document):
// a client_id that is an https URL is resolved by fetching the document
// there, and a document declaring private_key_jwt makes the client
// confidential, its RFC 7523 client assertions verified (by fosite) with
// the keys at the document's jwks_uri.
type CIMDOptions struct {
	// Client fetches documents and JWKS documents; tests give it a
	// transport that reaches the client's https public URL on a local
	// listener (as DNS would). Nil: http.DefaultClient's transport.
	Client *http.Client
}

// cimdResolver resolves Client Identifier URLs into fosite clients.
type cimdResolver struct {
	http   *http.Client
	scopes []string

	mu      sync.Mutex
	fetched []string
}

// newCIMD sets up a: the resolver, JWKS fetches through the same client,
// and the token URL fosite compares assertion audiences with.
func (a *AuthServer) newCIMD(opt *CIMDOptions) {
	base := http.DefaultTransport
	if opt.Client != nil && opt.Client.Transport != nil {
		base = opt.Client.Transport
	}
	r := &cimdResolver{scopes: a.opt.Scopes}
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		r.mu.Lock()
		r.fetched = append(r.fetched, req.URL.String())
		r.mu.Unlock()
		return base.RoundTrip(req)
	})
	// The draft, section 4: the server MUST NOT follow redirects when
	// fetching the document.
	r.http = &http.Client{Transport: rt, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	a.cimd = r
	a.store.resolve = r.resolve
	jwks := retryablehttp.NewClient()
	jwks.HTTPClient, jwks.RetryMax, jwks.Logger = r.http, 0, nil
	a.config.JWKSFetcherStrategy = fosite.NewDefaultJWKSFetcherStrategy(fosite.JWKSFetcherWithHTTPClient(jwks))
	// RFC 7523 section 3: aud identifies the authorization server; its
	// issuer identifier does (fosite compares aud with TokenURL).
	a.config.TokenURL = a.URL
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// CIMDFetches returns the URLs the server fetched for Client ID Metadata
// Documents and the JWKS documents they name, in order.
func (a *AuthServer) CIMDFetches() []string {
	if a.cimd == nil {
		return nil
	}
	a.cimd.mu.Lock()
	defer a.cimd.mu.Unlock()
	return slices.Clone(a.cimd.fetched)
}

// cimdDocument is the part of a Client ID Metadata Document the server
// uses (RFC 7591 section 2 client metadata).
type cimdDocument struct {
	ClientID                string   `json:"client_id"`
	RedirectURIs            []string `json:"redirect_uris"`
	GrantTypes              []string `json:"grant_types"`
	ResponseTypes           []string `json:"response_types"`
	TokenEndpointAuthMethod string   `json:"token_endpoint_auth_method"`
	TokenEndpointAuthAlg    string   `json:"token_endpoint_auth_signing_alg"`
	JWKSURI                 string   `json:"jwks_uri"`
	ClientSecret            *string  `json:"client_secret"`
}

var errCIMD = errors.New("client metadata document refused")

// resolve fetches and checks the document of a Client Identifier URL (the
// draft, sections 3, 4 and 4.1): an https URL with a path, no userinfo,
// fragment or dot segments; a 200 JSON answer, not a redirect; client_id
// equal to the URL by simple string comparison; no shared-secret method
// and no client_secret (section 4.1); a jwks_uri for private_key_jwt.
func (r *cimdResolver) resolve(ctx context.Context, id string) (fosite.Client, error) {
	u, err := url.Parse(id)
	if err != nil || u.Scheme != "https" || u.User != nil || u.Fragment != "" || u.Path == "" ||
		slices.ContainsFunc(strings.Split(u.Path, "/"), func(s string) bool { return s == "." || s == ".." }) {
		return nil, fosite.ErrNotFound
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, id, nil)
	if err != nil {
		return nil, fosite.ErrNotFound
	}
	req.Header.Set("Accept", "application/json")
	res, err := r.http.Do(req)
	if err != nil {
		return nil, errCIMD
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if err != nil || res.StatusCode != http.StatusOK {
		return nil, errCIMD
	}
	var doc cimdDocument
	if json.Unmarshal(body, &doc) != nil || doc.ClientID != id || doc.ClientSecret != nil || len(doc.RedirectURIs) == 0 {
		return nil, errCIMD
	}
	switch doc.TokenEndpointAuthMethod {
	case "", "none":
		doc.TokenEndpointAuthMethod = "none"
	case "private_key_jwt":
		if doc.JWKSURI == "" {
			return nil, errCIMD
		}
	default:
		// client_secret_basic, client_secret_post, client_secret_jwt: no
		// secret can be shared through a public document.
		return nil, errCIMD
	}
	grants := doc.GrantTypes
	if len(grants) == 0 {
		grants = []string{"authorization_code"}
	}
	dc := &fosite.DefaultClient{ID: id, RedirectURIs: doc.RedirectURIs, GrantTypes: grants, ResponseTypes: []string{"code"},
		Scopes: r.scopes, Public: doc.TokenEndpointAuthMethod == "none"}
	return &fosite.DefaultOpenIDConnectClient{DefaultClient: dc, JSONWebKeysURI: doc.JWKSURI,
		TokenEndpointAuthMethod: doc.TokenEndpointAuthMethod, TokenEndpointAuthSigningAlgorithm: doc.TokenEndpointAuthAlg}, nil
}
