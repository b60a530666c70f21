package oauthclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/oauthex"
)

// Metadata is the result of discovery: what the client needs to know about
// the MCP server (the protected resource) and its authorization server.
type Metadata struct {
	// Resource is the canonical URI of the MCP server, as passed to
	// Discover and confirmed by the protected-resource metadata.
	Resource string
	// ResourceMetadataURL is where the protected-resource metadata was
	// found; empty for legacy servers.
	ResourceMetadataURL string
	// Issuer is the authorization server's issuer identifier, exactly as
	// its metadata states it (the value RFC 9207 "iss" is compared with).
	// For legacy default endpoints it is the MCP server's origin.
	Issuer string
	// AuthorizationEndpoint is the authorization endpoint.
	AuthorizationEndpoint string
	// TokenEndpoint is the token endpoint.
	TokenEndpoint string
	// RegistrationEndpoint is the RFC 7591 registration endpoint, if any.
	RegistrationEndpoint string
	// RevocationEndpoint is the RFC 7009 revocation endpoint, if any.
	RevocationEndpoint string
	// CodeChallengeMethods is code_challenge_methods_supported.
	CodeChallengeMethods []string
	// ScopesSupported is the protected resource's scopes_supported.
	ScopesSupported []string
	// ASScopesSupported is the authorization server's scopes_supported.
	ASScopesSupported []string
	// TokenEndpointAuthMethods is token_endpoint_auth_methods_supported
	// as advertised (empty means the RFC 8414 default,
	// client_secret_basic).
	TokenEndpointAuthMethods []string
	// IssParameterSupported is
	// authorization_response_iss_parameter_supported (RFC 9207).
	IssParameterSupported bool
	// ClientIDMetadataDocumentSupported is
	// client_id_metadata_document_supported.
	ClientIDMetadataDocumentSupported bool
	// GrantTypes is grant_types_supported.
	GrantTypes []string
	// DPoPSigningAlgs is dpop_signing_alg_values_supported (RFC 9449
	// section 5.1): the server accepts DPoP proofs signed with these.
	DPoPSigningAlgs []string
	// GrantProfiles is authorization_grant_profiles_supported, and
	// GrantProfilesAdvertised whether the document has the member at all.
	GrantProfiles           []string
	GrantProfilesAdvertised bool
	// Legacy is true when the server published no protected-resource
	// metadata and discovery followed the 2025-03-26 rules (authorization
	// server metadata at the MCP server's origin, or default endpoints).
	Legacy bool
	// DefaultEndpoints is true when not even origin metadata existed and
	// the 2025-03-26 default endpoints (/authorize, /token, /register) are
	// assumed. Such metadata never advertises PKCE.
	DefaultEndpoints bool
}

// SupportsS256 reports whether the authorization server advertises PKCE
// with the S256 method. The MCP specification requires clients to refuse
// to proceed otherwise.
func (m *Metadata) SupportsS256() bool {
	return m != nil && contains(m.CodeChallengeMethods, "S256")
}

// Discover finds the metadata of the MCP server at serverURL, whose
// canonical resource URI is canonicalResource (what "resource" parameters
// carry). probe is the result of Probe and may be nil.
//
// Protected-resource metadata (RFC 9728) is read from the challenge's
// resource_metadata URL, else the path-inserted well-known URL, else the
// root one (a resource_metadata URL that yields no document falls through
// to the well-known ones, visibly in the trace); a document whose "resource" differs from canonicalResource
// fails with ErrResourceMismatch, with no fallback. Authorization-server
// metadata (RFC 8414 / OIDC discovery) for authorization_servers[0] is
// read in the MCP specification's order, and a document whose "issuer"
// differs from the issuer the URL was built from is not used. Without any
// protected-resource metadata the 2025-03-26 rules apply (see
// Metadata.Legacy). Documents and 4xx answers are cached per URL for the
// metadata TTL; 5xx, 429 and network failures abort discovery with a
// *TemporaryError rather than fall back, so a transient outage never
// switches the client to another authorization server.
func (c *Client) Discover(ctx context.Context, serverURL, canonicalResource string, probe *ProbeResult, tr *Trace) (*Metadata, error) {
	// Untraced calls reuse a validated result for the metadata TTL instead
	// of decoding and validating the cached documents again; a traced call
	// (diagnosis) always walks every step and stores nothing. A result can
	// be built from documents cached up to a TTL earlier, so discovery data
	// is at most twice the TTL old.
	key := serverURL + "\x00" + canonicalResource + "\x00"
	if probe != nil {
		key += probe.ResourceMetadataURL
	}
	if tr == nil {
		if md, ok := c.results.get(key, c.now()); ok {
			return md, nil
		}
	}
	md, err := c.discover(ctx, serverURL, canonicalResource, probe, tr)
	if err == nil && tr == nil {
		c.results.put(key, md, c.now().Add(c.ttl))
	}
	return md, err
}

// discover runs discovery; Discover caches its successful results.
func (c *Client) discover(ctx context.Context, serverURL, canonicalResource string, probe *ProbeResult, tr *Trace) (*Metadata, error) {
	su, err := url.Parse(serverURL)
	if err != nil || checkEndpoint("server url", serverURL) != nil {
		return nil, errors.New("discover: invalid server url")
	}
	if canonicalResource == "" {
		return nil, errors.New("discover: canonical resource is empty")
	}
	origin := su.Scheme + "://" + su.Host

	var candidates []string
	if probe != nil && probe.ResourceMetadataURL != "" {
		if checkEndpoint("resource_metadata", probe.ResourceMetadataURL) == nil {
			candidates = append(candidates, probe.ResourceMetadataURL)
		}
	}
	for _, u := range prmWellKnownURLs(su) {
		if !contains(candidates, u) {
			candidates = append(candidates, u)
		}
	}

	var prm *oauthex.ProtectedResourceMetadata
	var prmURL string
	for _, u := range candidates {
		doc, err := c.fetchPRM(ctx, u, canonicalResource, tr)
		if err != nil {
			return nil, err
		}
		if doc != nil {
			prm, prmURL = doc, u
			break
		}
	}

	if prm == nil {
		return c.discoverLegacy(ctx, origin, canonicalResource, tr)
	}

	issuer := prm.AuthorizationServers[0]
	asm, _, err := c.findAuthServerMeta(ctx, issuer, tr)
	if err != nil {
		return nil, err
	}
	md := metadataFrom(asm)
	// The resource parameter (RFC 8707) carries the protected resource's
	// own identifier, the PRM "resource": the MCP authorization spec
	// ("Canonical Server URI") defines the canonical URI as the RFC 8707
	// resource identifier that "aligns with the resource parameter in RFC
	// 9728", and the MCP server checks a token's audience against that
	// identifier. For a path-inserted or header-named document it is the
	// MCP URL itself; a root document (RFC 9728 section 3.3) names the
	// origin, and a token for the origin is what such a server accepts.
	md.Resource = prm.Resource
	md.ResourceMetadataURL = prmURL
	md.ScopesSupported = splitScopeList(prm.ScopesSupported)
	if err := c.preflightEndpoints(ctx, md, tr); err != nil {
		return nil, err
	}
	return md, nil
}

// Forget drops what discovery cached for the MCP server at serverURL: its
// validated results, and the protected-resource and authorization-server
// documents they were built from. Callers use it when a request based on
// that metadata failed (a registration refused, a token rejected), so the
// next discovery reads the servers again instead of serving a stale answer
// for the rest of the TTL.
func (c *Client) Forget(serverURL string) {
	var urls []string
	if su, err := url.Parse(serverURL); err == nil {
		urls = prmWellKnownURLs(su)
	}
	for _, md := range c.results.drop(serverURL + "\x00") {
		urls = append(urls, md.ResourceMetadataURL)
		if as, err := AuthServerMetadataURLs(md.Issuer); err == nil {
			urls = append(urls, as...)
		}
	}
	for _, u := range urls {
		c.cache.delete(u)
	}
}

// preflighter is implemented by the egress guard's transport: it applies
// the guard's URL rules to a URL without requesting it.
type preflighter interface {
	Preflight(ctx context.Context, rawURL string) error
}

// preflightEndpoints refuses metadata whose endpoints the HTTP client's
// egress policy refuses (a token endpoint on a private address, say) before
// a flow starts; otherwise the person would consent at the authorization
// server only for the code exchange to be blocked. Clients whose transport
// has no such policy skip the check. The refusal wraps the policy's error.
func (c *Client) preflightEndpoints(ctx context.Context, md *Metadata, tr *Trace) error {
	pf, ok := c.http.Transport.(preflighter)
	if !ok {
		return nil
	}
	for _, e := range []struct{ name, u string }{
		{"authorization_endpoint", md.AuthorizationEndpoint},
		{"token_endpoint", md.TokenEndpoint},
		{"registration_endpoint", md.RegistrationEndpoint},
		{"revocation_endpoint", md.RevocationEndpoint},
	} {
		if e.u == "" {
			continue
		}
		if err := pf.Preflight(ctx, e.u); err != nil {
			tr.add(Step{Action: ActionEndpointCheck, URL: e.u, Detail: e.name + " refused by the egress policy"})
			return fmt.Errorf("discover: %s: %w", e.name, err)
		}
	}
	return nil
}

// discoverLegacy applies the 2025-03-26 fallback: authorization-server
// metadata at the MCP server's origin, else default endpoints. A document
// that exists but is rejected (issuer mismatch, invalid) is an error: it
// would be wrong to ignore it and guess endpoints.
func (c *Client) discoverLegacy(ctx context.Context, origin, canonicalResource string, tr *Trace) (*Metadata, error) {
	asm, nothing, err := c.findAuthServerMeta(ctx, origin, tr)
	switch {
	case err == nil:
		md := metadataFrom(asm)
		md.Resource = canonicalResource
		md.Legacy = true
		if err := c.preflightEndpoints(ctx, md, tr); err != nil {
			return nil, err
		}
		return md, nil
	case !nothing:
		return nil, err
	}
	md := &Metadata{
		Resource:              canonicalResource,
		Issuer:                origin,
		AuthorizationEndpoint: origin + "/authorize",
		TokenEndpoint:         origin + "/token",
		RegistrationEndpoint:  origin + "/register",
		Legacy:                true,
		DefaultEndpoints:      true,
	}
	tr.add(Step{Action: ActionLegacyDefaultEndpoints, URL: origin, OK: true,
		Detail: "no metadata found; assuming /authorize, /token, /register"})
	return md, nil
}

func metadataFrom(asm *authServerMeta) *Metadata {
	return &Metadata{
		Issuer:                            asm.Issuer,
		AuthorizationEndpoint:             asm.AuthorizationEndpoint,
		TokenEndpoint:                     asm.TokenEndpoint,
		RegistrationEndpoint:              asm.RegistrationEndpoint,
		RevocationEndpoint:                asm.RevocationEndpoint,
		CodeChallengeMethods:              asm.CodeChallengeMethodsSupported,
		ASScopesSupported:                 splitScopeList(asm.ScopesSupported),
		TokenEndpointAuthMethods:          asm.TokenEndpointAuthMethodsSupported,
		IssParameterSupported:             asm.AuthorizationResponseIssParameterSupported,
		ClientIDMetadataDocumentSupported: asm.ClientIDMetadataDocumentSupported,
		GrantTypes:                        asm.GrantTypesSupported,
		DPoPSigningAlgs:                   asm.DPoPSigningAlgs,
		GrantProfiles:                     splitScopeList(asm.GrantProfiles),
		GrantProfilesAdvertised:           asm.GrantProfiles != nil,
	}
}

// GrantProfileIDJAG is the authorization grant profile of the identity
// assertion JWT authorization grant (the ID-JAG draft, section 7.2; the MCP
// enterprise-managed authorization extension, section 6).
const GrantProfileIDJAG = "urn:ietf:params:oauth:grant-profile:id-jag"

// RefusesIDJAG reports whether the metadata says the server does not
// accept ID-JAGs: it lists its grant profiles, and the ID-JAG one is not
// among them. Metadata without the member says nothing (most servers do
// not publish it) and the grant is tried.
func (m *Metadata) RefusesIDJAG() bool {
	return m.GrantProfilesAdvertised && !slices.Contains(m.GrantProfiles, GrantProfileIDJAG)
}

// splitScopeList keeps the valid scope tokens of a metadata scope list.
func splitScopeList(in []string) []string {
	var out []string
	for _, s := range in {
		if validScopeToken(s) && !contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// prmWellKnownURLs returns the RFC 9728 section 3.1 locations: the
// path-inserted one (when the server URL has a path or query) and the root.
func prmWellKnownURLs(su *url.URL) []string {
	const wk = "/.well-known/oauth-protected-resource"
	origin := su.Scheme + "://" + su.Host
	p := strings.TrimSuffix(su.EscapedPath(), "/")
	var out []string
	if p != "" || su.RawQuery != "" {
		u := origin + wk + p
		if su.RawQuery != "" {
			u += "?" + su.RawQuery
		}
		out = append(out, u)
	}
	return append(out, origin+wk)
}

// AuthServerMetadataURLs returns the well-known URLs for issuer in the
// order the MCP specification asks clients to try them: for an issuer with
// a path, OAuth path-insert, OIDC path-insert, OIDC path-append; without a
// path, OAuth then OIDC.
func AuthServerMetadataURLs(issuer string) ([]string, error) {
	if err := checkEndpoint("issuer", issuer); err != nil {
		return nil, err
	}
	u, _ := url.Parse(issuer)
	if u.RawQuery != "" || u.ForceQuery {
		return nil, errors.New("issuer has a query")
	}
	origin := u.Scheme + "://" + u.Host
	p := strings.TrimSuffix(u.EscapedPath(), "/")
	const oauthWK, oidcWK = "/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"
	if p == "" {
		return []string{origin + oauthWK, origin + oidcWK}, nil
	}
	return []string{origin + oauthWK + p, origin + oidcWK + p, origin + p + oidcWK}, nil
}

// findAuthServerMeta tries the well-known locations for issuer and returns
// the first document that validates. On failure it returns
// ErrIssuerMismatch when documents existed but named another issuer, else
// ErrNoAuthServerMetadata, with nothing set when no location had a
// document at all (as opposed to documents that were rejected).
func (c *Client) findAuthServerMeta(ctx context.Context, issuer string, tr *Trace) (asm *authServerMeta, nothing bool, err error) {
	return c.findMeta(ctx, issuer, tr, validateAuthServerMeta)
}

// findMeta is findAuthServerMeta with the document check as a parameter.
func (c *Client) findMeta(ctx context.Context, issuer string, tr *Trace, validate func(*authServerMeta, string) error) (asm *authServerMeta, nothing bool, err error) {
	urls, err := AuthServerMetadataURLs(issuer)
	if err != nil {
		return nil, false, fmt.Errorf("discover: authorization server: %w", err)
	}
	found, mismatch := false, false
	for _, u := range urls {
		res, cached, err := c.fetchMetadata(ctx, u)
		step := Step{Action: ActionAuthServerMetadata, URL: u, HTTPStatus: res.status, ContentType: res.contentType}
		if err != nil {
			step.Detail = err.Error()
			tr.add(step)
			return nil, false, err
		}
		if res.status != http.StatusOK {
			step.Detail = cachedPrefix(cached) + "not found"
			tr.add(step)
			continue
		}
		if res.body == nil {
			// A catch-all page is no document; for a legacy server it must
			// not block the default endpoints.
			step.Detail = cachedPrefix(cached) + "not found: not json"
			tr.add(step)
			continue
		}
		found = true
		doc, err := decodeAuthServerMeta(res.body)
		if err == nil {
			err = validate(doc, issuer)
		}
		if err != nil {
			if errors.Is(err, ErrIssuerMismatch) {
				mismatch = true
				err = fmt.Errorf("issuer mismatch: the document names %q, expected %q", StripURL(doc.Issuer), StripURL(issuer))
			}
			step.Detail = cachedPrefix(cached) + "not used: " + err.Error()
			tr.add(step)
			continue
		}
		step.OK, step.Detail = true, cachedPrefix(cached)+"issuer matches"
		tr.add(step)
		return doc, false, nil
	}
	if mismatch {
		return nil, false, fmt.Errorf("discover: authorization server metadata: %w", ErrIssuerMismatch)
	}
	return nil, !found, fmt.Errorf("discover: %w", ErrNoAuthServerMetadata)
}

// fetchPRM fetches and checks one protected-resource metadata candidate.
// It returns (nil, nil) when there is no usable document at u, so that the
// next candidate is tried.
func (c *Client) fetchPRM(ctx context.Context, u, canonicalResource string, tr *Trace) (*oauthex.ProtectedResourceMetadata, error) {
	res, cached, err := c.fetchMetadata(ctx, u)
	step := Step{Action: ActionProtectedResourceMetadata, URL: u, HTTPStatus: res.status, ContentType: res.contentType}
	if err != nil {
		step.Detail = err.Error()
		tr.add(step)
		return nil, err
	}
	if res.status != http.StatusOK {
		step.Detail = cachedPrefix(cached) + "not found"
		tr.add(step)
		return nil, nil
	}
	prm, err := decodePRM(res.body)
	if err != nil {
		// Servers that answer every path with an HTML page land here.
		step.Detail = cachedPrefix(cached) + "not used: " + err.Error()
		tr.add(step)
		return nil, nil
	}
	if !CoversResource(prm.Resource, canonicalResource) {
		// Both values, for DiagnoseProvider (which hides the provider's
		// path); the error itself quotes neither.
		step.Detail = cachedPrefix(cached) + fmt.Sprintf("resource mismatch: the document names %q, the MCP server is %q",
			StripURL(prm.Resource), StripURL(canonicalResource))
		tr.add(step)
		return nil, fmt.Errorf("discover: %w", ErrResourceMismatch)
	}
	if err := validatePRM(prm); err != nil {
		step.Detail = cachedPrefix(cached) + "not used: " + err.Error()
		tr.add(step)
		return nil, fmt.Errorf("discover: protected resource metadata: %w", err)
	}
	step.OK, step.Detail = true, cachedPrefix(cached)+"resource matches"
	tr.add(step)
	return prm, nil
}

func cachedPrefix(cached bool) string {
	if cached {
		return "cached; "
	}
	return ""
}

// fetchMetadata GETs a metadata document through the cache. A 200 with a
// JSON media type yields its body; a 200 of another type (often an HTML
// catch-all page) yields a nil body; other statuses below 500 mean "no
// document here". These outcomes are cached (4xx and non-JSON included, so
// a cached discovery makes no request at all). Network errors, 429 and 5xx
// are *TemporaryError and not cached; a body over 256 KiB is an error.
//
// The SDK's oauthex.GetProtectedResourceMetadata and GetAuthServerMeta are
// not used: they replace the caller's transport and redirect policy with
// their own, read up to 1 MiB, reject documents without PKCE before the
// caller can report it, hide the HTTP status this package's trace records,
// and include upstream values in their error text.
func (c *Client) fetchMetadata(ctx context.Context, u string) (fetchResult, bool, error) {
	const op = "metadata"
	now := c.now()
	if c.ttl > 0 {
		if res, ok := c.cache.get(u, now); ok {
			return res, true, nil
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fetchResult{}, false, errors.New("metadata: cannot build request")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("MCP-Protocol-Version", ProtocolVersion)
	resp, err := c.http.Do(req)
	if err != nil {
		return fetchResult{}, false, netError(op, err)
	}
	res := fetchResult{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type")}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		drain(resp.Body)
		return res, false, &TemporaryError{Op: op, Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), now)}
	case resp.StatusCode != http.StatusOK:
		drain(resp.Body)
		if resp.StatusCode >= 400 {
			c.store(u, res, now)
		}
		// 1xx/2xx/3xx other than 200: nothing usable here, not cached.
		return res, false, nil
	}
	defer resp.Body.Close()
	if !isJSON(res.contentType) {
		// No document here (often an HTML catch-all page); cached like a
		// 404, body left nil.
		c.store(u, res, now)
		return res, false, nil
	}
	body, err := readCapped(resp.Body, maxMetadataBytes)
	if errors.Is(err, ErrResponseTooLarge) {
		return res, false, fmt.Errorf("metadata: %w", ErrResponseTooLarge)
	}
	if err != nil {
		return res, false, netError(op, err)
	}
	res.body = body
	c.store(u, res, now)
	return res, false, nil
}

func (c *Client) store(u string, res fetchResult, now time.Time) {
	if c.ttl > 0 {
		c.cache.put(u, res, now.Add(c.ttl))
	}
}

// isJSON accepts application/json and any +json media type.
func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// decodePRM parses a protected-resource metadata document.
func decodePRM(body []byte) (*oauthex.ProtectedResourceMetadata, error) {
	if body == nil {
		return nil, errors.New("not json")
	}
	var prm oauthex.ProtectedResourceMetadata
	if err := decodeJSONObject(body, &prm); err != nil {
		return nil, err
	}
	return &prm, nil
}

// validatePRM checks the fields the client relies on.
func validatePRM(prm *oauthex.ProtectedResourceMetadata) error {
	if len(prm.AuthorizationServers) == 0 {
		return errors.New("no authorization_servers")
	}
	for _, as := range prm.AuthorizationServers {
		if err := checkEndpoint("authorization server", as); err != nil {
			return err
		}
	}
	return nil
}

// authServerMeta is RFC 8414 metadata with the RFC 9449 section 5.1
// member the SDK's type does not carry.
type authServerMeta struct {
	oauthex.AuthServerMeta
	DPoPSigningAlgs []string `json:"dpop_signing_alg_values_supported,omitempty"`
	// GrantProfiles is authorization_grant_profiles_supported (the ID-JAG
	// draft, section 7.2): nil when absent, empty when advertised empty.
	GrantProfiles []string `json:"authorization_grant_profiles_supported"`
}

// decodeAuthServerMeta parses an authorization-server metadata document.
func decodeAuthServerMeta(body []byte) (*authServerMeta, error) {
	if body == nil {
		return nil, errors.New("not json")
	}
	var asm authServerMeta
	if err := decodeJSONObject(body, &asm); err != nil {
		return nil, err
	}
	return &asm, nil
}

// validateAuthServerMeta checks the issuer (RFC 8414 section 3.3) and the
// endpoints the client will call or send a browser to.
func validateAuthServerMeta(asm *authServerMeta, issuer string) error {
	if !SameIssuer(asm.Issuer, issuer) {
		return ErrIssuerMismatch
	}
	if asm.AuthorizationEndpoint == "" || asm.TokenEndpoint == "" {
		return errors.New("missing authorization or token endpoint")
	}
	for _, e := range []struct{ name, v string }{
		{"authorization_endpoint", asm.AuthorizationEndpoint},
		{"token_endpoint", asm.TokenEndpoint},
		{"registration_endpoint", asm.RegistrationEndpoint},
		{"revocation_endpoint", asm.RevocationEndpoint},
	} {
		if e.v == "" {
			continue
		}
		if err := checkEndpoint(e.name, e.v); err != nil {
			return err
		}
	}
	return nil
}

// decodeJSONObject decodes exactly one JSON object.
func decodeJSONObject(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return errors.New("invalid json")
	}
	if dec.More() {
		return errors.New("trailing data after json")
	}
	return nil
}

// SameIssuer reports whether the issuer in a metadata document equals the
// issuer the metadata URL was built from. The comparison is exact, except
// that an empty path and "/" are the same URL (RFC 3986 section 6.2.3),
// which real servers disagree on.
func SameIssuer(got, want string) bool {
	if got == want {
		return true
	}
	if got == "" || want == "" {
		return false
	}
	return strings.TrimSuffix(got, "/") == strings.TrimSuffix(want, "/") &&
		isOriginOnly(got) && isOriginOnly(want)
}

func isOriginOnly(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Host != "" && (u.Path == "" || u.Path == "/") &&
		u.RawQuery == "" && !u.ForceQuery && u.Fragment == "" && u.User == nil
}

// CoversResource reports whether a protected-resource metadata document
// naming resource describes the MCP server at canonical: the same URI
// (SameResource), or one on the same origin whose path is a whole-segment
// prefix of canonical's, without a query. RFC 9728 section 3.3 makes a
// document at the root well-known URL name the origin, and the MCP
// authorization spec lets that root document serve a path-bearing MCP
// endpoint ("Protected Resource Metadata Discovery Requirements"); RFC
// 8707 section 2 lets a resource indicator be less specific than the
// request URL. Another origin (scheme, host or port) is never accepted.
func CoversResource(resource, canonical string) bool {
	if SameResource(resource, canonical) {
		return true
	}
	r, okR := normalizeResource(resource)
	c, okC := normalizeResource(canonical)
	if !okR || !okC || strings.Contains(r, "?") {
		return false
	}
	ru, _ := url.Parse(r)
	cu, _ := url.Parse(c)
	if ru.Scheme != cu.Scheme || ru.Host != cu.Host {
		return false
	}
	rp := strings.TrimSuffix(ru.EscapedPath(), "/")
	cp := cu.EscapedPath()
	return rp == "" || cp == rp || strings.HasPrefix(cp, rp+"/")
}

// SameResource reports whether two resource URIs are the same after the
// normalisation RFC 3986 allows without knowing the scheme's rules:
// case-insensitive scheme and host, default port removed, an empty path
// equal to "/". Everything else is compared exactly.
func SameResource(a, b string) bool {
	if a == b {
		return true
	}
	na, okA := normalizeResource(a)
	nb, okB := normalizeResource(b)
	return okA && okB && na == nb
}

func normalizeResource(s string) (string, bool) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil || u.Fragment != "" {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Hostname())
	port := u.Port()
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	p := u.EscapedPath()
	if p == "" {
		p = "/"
	}
	q := ""
	if u.RawQuery != "" || u.ForceQuery {
		q = "?" + u.RawQuery
	}
	return scheme + "://" + host + p + q, true
}
