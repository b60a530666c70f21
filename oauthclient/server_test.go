package oauthclient

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// testServer is a small but working MCP protected resource and OAuth 2.1
// authorization server on one loopback host: protected-resource metadata,
// authorization-server metadata at configurable well-known locations,
// RFC 7591 registration, an authorization endpoint that approves at once,
// a token endpoint that verifies PKCE S256, redirect_uri, resource and
// client authentication and rotates refresh tokens, RFC 7009 revocation,
// and an MCP endpoint that accepts the issued access tokens.
type testServer struct {
	srv *httptest.Server

	mu sync.Mutex
	// Configuration, set before the first request.
	mcpPath      string
	open         bool              // MCP endpoint needs no token
	challenge    func() string     // WWW-Authenticate for 401; nil = none
	prmPaths     map[string]bool   // where PRM is served
	prmResource  string            // "" = the canonical resource
	prmScopes    []string          // PRM scopes_supported
	issuerPath   string            // path of the issuer ("" or "/tenant1")
	asMetaPaths  map[string]string // path -> issuer written in the document
	asScopes     []string          // AS scopes_supported
	authMethods  []string          // token_endpoint_auth_methods_supported
	noPKCE       bool
	issSupported bool
	rotate       bool
	metaPad      int              // bytes of padding in AS metadata
	tokenFail    *tokenFailure    // token endpoint failure injection
	revokeStatus int              // 0 = normal
	tokenHook    func(url.Values) // sees every token request form
	registerHook func(map[string]any)

	// State.
	hits          map[string]int
	clients       map[string]*tsClient
	codes         map[string]*tsCode
	refresh       map[string]*tsGrant
	access        map[string]*tsGrant
	sessionsEnded int
}

type tokenFailure struct {
	status     int
	retryAfter string
	body       string
}

type tsClient struct {
	id, secret, authMethod string
	redirectURIs           []string
}

type tsCode struct {
	clientID, redirectURI, challenge, resource, scope string
}

type tsGrant struct {
	clientID, resource, scope string
}

func newTestServer(tb testing.TB) *testServer {
	tb.Helper()
	ts := &testServer{
		mcpPath:     "/mcp",
		prmPaths:    map[string]bool{},
		asMetaPaths: map[string]string{},
		rotate:      true,
		hits:        map[string]int{},
		clients:     map[string]*tsClient{},
		codes:       map[string]*tsCode{},
		refresh:     map[string]*tsGrant{},
		access:      map[string]*tsGrant{},
	}
	ts.srv = httptest.NewServer(http.HandlerFunc(ts.serve))
	tb.Cleanup(ts.srv.Close)
	return ts
}

func (ts *testServer) URL() string      { return ts.srv.URL }
func (ts *testServer) resource() string { return ts.srv.URL + ts.mcpPath }
func (ts *testServer) issuer() string   { return ts.srv.URL + ts.issuerPath }

// hitCount returns how many requests reached path.
func (ts *testServer) hitCount(path string) int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.hits[path]
}

func (ts *testServer) totalHits() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	n := 0
	for _, v := range ts.hits {
		n += v
	}
	return n
}

// modern configures PRM at the path-inserted location and AS metadata at
// the first location for the issuer.
func (ts *testServer) modern() *testServer {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.prmPaths["/.well-known/oauth-protected-resource"+ts.mcpPath] = true
	urls, err := AuthServerMetadataURLs(ts.issuer())
	if err != nil {
		panic(err)
	}
	u, _ := url.Parse(urls[0])
	ts.asMetaPaths[u.Path] = ts.issuer()
	return ts
}

func randToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func oauthErr(w http.ResponseWriter, status int, code string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": "SECRET-DESCRIPTION do not reflect"})
}

func (ts *testServer) serve(w http.ResponseWriter, r *http.Request) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.hits[r.URL.Path]++
	p := r.URL.Path
	switch {
	case p == ts.mcpPath:
		ts.serveMCP(w, r)
	case ts.prmPaths[p]:
		res := ts.prmResource
		if res == "" {
			res = ts.resource()
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"resource":              res,
			"authorization_servers": []string{ts.issuer()},
			"scopes_supported":      ts.prmScopes,
		})
	case ts.asMetaPaths[p] != "":
		ts.serveASMeta(w, ts.asMetaPaths[p])
	case p == "/register":
		ts.serveRegister(w, r)
	case p == "/authorize":
		ts.serveAuthorize(w, r)
	case p == "/token":
		ts.serveToken(w, r)
	case p == "/revoke":
		ts.serveRevoke(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (ts *testServer) serveMCP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodDelete {
		if r.Header.Get("Mcp-Session-Id") != "" {
			ts.sessionsEnded++
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.Method != http.MethodPost || r.Header.Get("MCP-Protocol-Version") == "" ||
		!strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	var msg struct {
		Method string `json:"method"`
	}
	if json.NewDecoder(r.Body).Decode(&msg) != nil || msg.Method != "initialize" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	if !ts.open {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		g := ts.access[tok]
		if !ok || g == nil || g.resource != ts.resource() {
			if ts.challenge != nil {
				w.Header().Set("WWW-Authenticate", ts.challenge())
			}
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	}
	w.Header().Set("Mcp-Session-Id", "session-1")
	writeJSON(w, http.StatusOK, map[string]any{"jsonrpc": "2.0", "id": 1, "result": map[string]any{}})
}

func (ts *testServer) serveASMeta(w http.ResponseWriter, issuer string) {
	doc := map[string]any{
		"issuer":                   issuer,
		"authorization_endpoint":   ts.srv.URL + "/authorize",
		"token_endpoint":           ts.srv.URL + "/token",
		"registration_endpoint":    ts.srv.URL + "/register",
		"revocation_endpoint":      ts.srv.URL + "/revoke",
		"response_types_supported": []string{"code"},
		"grant_types_supported":    []string{"authorization_code", "refresh_token"},
		"authorization_response_iss_parameter_supported": ts.issSupported,
	}
	if !ts.noPKCE {
		doc["code_challenge_methods_supported"] = []string{"S256"}
	}
	if ts.asScopes != nil {
		doc["scopes_supported"] = ts.asScopes
	}
	if ts.authMethods != nil {
		doc["token_endpoint_auth_methods_supported"] = ts.authMethods
	}
	if ts.metaPad > 0 {
		doc["padding"] = strings.Repeat("x", ts.metaPad)
	}
	writeJSON(w, http.StatusOK, doc)
}

func (ts *testServer) serveRegister(w http.ResponseWriter, r *http.Request) {
	var req map[string]any
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&req) != nil {
		oauthErr(w, http.StatusBadRequest, "invalid_client_metadata")
		return
	}
	if ts.registerHook != nil {
		ts.registerHook(req)
	}
	uris, _ := req["redirect_uris"].([]any)
	if len(uris) == 0 {
		oauthErr(w, http.StatusBadRequest, "invalid_redirect_uri")
		return
	}
	c := &tsClient{id: "client-" + randToken()}
	for _, u := range uris {
		s, _ := u.(string)
		c.redirectURIs = append(c.redirectURIs, s)
	}
	c.authMethod, _ = req["token_endpoint_auth_method"].(string)
	if c.authMethod == "" {
		c.authMethod = AuthClientSecretBasic
	}
	if c.authMethod != AuthNone && ts.authMethods != nil && !contains(ts.authMethods, c.authMethod) {
		c.authMethod = AuthNone
	}
	resp := map[string]any{
		"client_id":                  c.id,
		"redirect_uris":              c.redirectURIs,
		"token_endpoint_auth_method": c.authMethod,
	}
	if c.authMethod != AuthNone {
		c.secret = "secret-" + randToken()
		resp["client_secret"] = c.secret
		resp["client_secret_expires_at"] = 0
	}
	ts.clients[c.id] = c
	writeJSON(w, http.StatusCreated, resp)
}

func (ts *testServer) serveAuthorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	c := ts.clients[q.Get("client_id")]
	if c == nil || !contains(c.redirectURIs, q.Get("redirect_uri")) {
		http.Error(w, "unknown client or redirect uri", http.StatusBadRequest)
		return
	}
	if q.Get("response_type") != "code" || q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	code := "code-" + randToken()
	ts.codes[code] = &tsCode{
		clientID: c.id, redirectURI: q.Get("redirect_uri"), challenge: q.Get("code_challenge"),
		resource: q.Get("resource"), scope: q.Get("scope"),
	}
	back, _ := url.Parse(q.Get("redirect_uri"))
	bq := back.Query()
	bq.Set("code", code)
	bq.Set("state", q.Get("state"))
	bq.Set("iss", ts.issuer())
	back.RawQuery = bq.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}

// authenticate checks client authentication as registered.
func (ts *testServer) authenticate(r *http.Request) *tsClient {
	if id, sec, ok := r.BasicAuth(); ok {
		id, _ = url.QueryUnescape(id)
		sec, _ = url.QueryUnescape(sec)
		c := ts.clients[id]
		if c == nil || c.authMethod != AuthClientSecretBasic || r.PostForm.Get("client_secret") != "" ||
			subtle.ConstantTimeCompare([]byte(sec), []byte(c.secret)) != 1 {
			return nil
		}
		return c
	}
	c := ts.clients[r.PostForm.Get("client_id")]
	if c == nil {
		return nil
	}
	switch c.authMethod {
	case AuthClientSecretPost:
		if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("client_secret")), []byte(c.secret)) != 1 {
			return nil
		}
	case AuthNone:
		if r.PostForm.Has("client_secret") {
			return nil
		}
	default:
		return nil
	}
	return c
}

func (ts *testServer) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		oauthErr(w, http.StatusBadRequest, "invalid_request")
		return
	}
	if ts.tokenHook != nil {
		ts.tokenHook(r.PostForm)
	}
	if f := ts.tokenFail; f != nil {
		if f.retryAfter != "" {
			w.Header().Set("Retry-After", f.retryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.status)
		_, _ = w.Write([]byte(f.body))
		return
	}
	c := ts.authenticate(r)
	if c == nil {
		oauthErr(w, http.StatusUnauthorized, "invalid_client")
		return
	}
	f := r.PostForm
	var g *tsGrant
	switch f.Get("grant_type") {
	case "authorization_code":
		code := ts.codes[f.Get("code")]
		delete(ts.codes, f.Get("code")) // single use, even on failure
		if code == nil || code.clientID != c.id || code.redirectURI != f.Get("redirect_uri") ||
			code.resource != f.Get("resource") {
			oauthErr(w, http.StatusBadRequest, "invalid_grant")
			return
		}
		sum := sha256.Sum256([]byte(f.Get("code_verifier")))
		if base64.RawURLEncoding.EncodeToString(sum[:]) != code.challenge {
			oauthErr(w, http.StatusBadRequest, "invalid_grant")
			return
		}
		g = &tsGrant{clientID: c.id, resource: code.resource, scope: code.scope}
	case "refresh_token":
		old := ts.refresh[f.Get("refresh_token")]
		if old == nil || old.clientID != c.id || (f.Has("resource") && f.Get("resource") != old.resource) {
			oauthErr(w, http.StatusBadRequest, "invalid_grant")
			return
		}
		g = old
	default:
		oauthErr(w, http.StatusBadRequest, "unsupported_grant_type")
		return
	}
	at := "at-" + randToken()
	ts.access[at] = g
	resp := map[string]any{"access_token": at, "token_type": "Bearer", "expires_in": 3600}
	if g.scope != "" {
		resp["scope"] = g.scope
	}
	if f.Get("grant_type") == "authorization_code" || ts.rotate {
		if f.Get("grant_type") == "refresh_token" {
			delete(ts.refresh, f.Get("refresh_token"))
		}
		rt := "rt-" + randToken()
		ts.refresh[rt] = g
		resp["refresh_token"] = rt
	}
	writeJSON(w, http.StatusOK, resp)
}

func (ts *testServer) serveRevoke(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		oauthErr(w, http.StatusBadRequest, "invalid_request")
		return
	}
	if ts.revokeStatus != 0 {
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(ts.revokeStatus)
		return
	}
	c := ts.authenticate(r)
	if c == nil {
		oauthErr(w, http.StatusUnauthorized, "invalid_client")
		return
	}
	tok := r.PostForm.Get("token")
	if g := ts.refresh[tok]; g != nil && g.clientID == c.id {
		delete(ts.refresh, tok)
	}
	if g := ts.access[tok]; g != nil && g.clientID == c.id {
		delete(ts.access, tok)
	}
	w.WriteHeader(http.StatusOK)
}

// config changes the server's configuration under its lock.
func (ts *testServer) config(f func(ts *testServer)) *testServer {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	f(ts)
	return ts
}
