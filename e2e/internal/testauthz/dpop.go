package testauthz

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// The server side of OAuth 2.0 Demonstrating Proof of Possession (RFC
// 9449), written from the RFC: proof checking (section 4.3), token binding
// at the token endpoint (section 5, recorded as the token's cnf.jkt,
// section 6), DPoP-bound resource access (section 7) and server nonces
// (sections 8 and 9). Proofs are verified with go-jose.

// DPoPOptions turns RFC 9449 on at a test server.
type DPoPOptions struct {
	// Algs is dpop_signing_alg_values_supported (section 5.1) and the
	// algorithms proofs may use; default ES256 and RS256.
	Algs []string
	// RequireNonce makes the server demand its nonce in every proof: a
	// proof without it (or with an old one) is answered use_dpop_nonce
	// with a DPoP-Nonce header (sections 8 and 9).
	RequireNonce bool
	// RequireProof (token endpoint only) refuses token requests without a
	// proof instead of issuing Bearer tokens.
	RequireProof bool
}

// DPoPProof is a proof a server accepted, for assertions.
type DPoPProof struct {
	// Path is the request path it came with.
	Path string
	// JTI, HTM, HTU, Nonce and ATH are its claims; IAT its issue time.
	JTI, HTM, HTU, Nonce, ATH string
	IAT                       time.Time
	// JKT is the RFC 7638 thumbprint of the key in its jwk header.
	JKT string
	// Typ and Alg are its typ and alg headers.
	Typ, Alg string
}

// dpopIATWindow is how far a proof's iat may lie from the server's clock
// (section 4.3 point 11 leaves the window to the server; section 11.1
// asks for a short one).
const dpopIATWindow = 2 * time.Minute

// proofError is why a proof was refused: Code is the error code of the
// answer (invalid_dpop_proof, use_dpop_nonce or invalid_token).
type proofError struct {
	Code   string
	Reason string
}

func (e *proofError) Error() string { return e.Code + ": " + e.Reason }

// dpopServer is one server's RFC 9449 state.
type dpopServer struct {
	opt DPoPOptions

	mu         sync.Mutex
	nonce      string
	seen       map[string]time.Time // jti -> iat, for replay detection (section 11.1)
	proofs     []DPoPProof
	challenges int               // use_dpop_nonce answers
	bound      map[string]string // token -> jkt (section 6: cnf.jkt), at the token endpoint
	codes      map[string]string // authorization code -> dpop_jkt (section 10)
	refused    []string          // reasons of refused proofs
	ignoring   bool              // IgnoreDPoP: behave as a server without DPoP
	// lookup is the cnf.jkt of an access token: this server's own binding
	// at an authorization server, the authorization server's at an MCP
	// server (as introspection would return it, section 6.2).
	lookup func(token string) string
}

func newDPoPServer(opt DPoPOptions) *dpopServer {
	if opt.Algs == nil {
		opt.Algs = []string{"ES256", "RS256"}
	}
	s := &dpopServer{opt: opt, nonce: rand.Text(), seen: map[string]time.Time{}, bound: map[string]string{}, codes: map[string]string{}}
	s.lookup = s.boundTo
	return s
}

// proofClaims are the claims of section 4.2.
type proofClaims struct {
	JTI   string           `json:"jti"`
	HTM   string           `json:"htm"`
	HTU   string           `json:"htu"`
	IAT   *jwt.NumericDate `json:"iat"`
	Nonce string           `json:"nonce"`
	ATH   string           `json:"ath"`
}

// check verifies the proof of r as section 4.3 lists: one DPoP header
// holding one JWT (points 1, 2), typ dpop+jwt (4), an asymmetric
// supported alg (5), a signature by the key in jwk (6), a public jwk (7),
// htm and htu matching the request (8, 9), the server's nonce when it
// demands one (10), iat within the window (11), ath and the bound key for
// a resource request (12), and a jti never seen before (section 11.1).
// accessToken is "" at the token endpoint.
func (s *dpopServer) check(r *http.Request, htu, accessToken string) (*DPoPProof, *proofError) {
	p, perr := s.verify(r, htu, accessToken)
	s.mu.Lock()
	defer s.mu.Unlock()
	if perr != nil {
		s.refused = append(s.refused, perr.Error())
		if perr.Code == "use_dpop_nonce" {
			s.challenges++
		}
		return nil, perr
	}
	s.proofs = append(s.proofs, *p)
	return p, nil
}

func (s *dpopServer) verify(r *http.Request, htu, accessToken string) (*DPoPProof, *proofError) {
	bad := func(format string, args ...any) *proofError {
		return &proofError{Code: "invalid_dpop_proof", Reason: fmt.Sprintf(format, args...)}
	}
	values := r.Header.Values("DPoP")
	if len(values) != 1 {
		return nil, bad("want exactly one DPoP header, got %d", len(values))
	}
	algs := make([]jose.SignatureAlgorithm, 0, len(s.opt.Algs))
	for _, a := range s.opt.Algs {
		algs = append(algs, jose.SignatureAlgorithm(a))
	}
	tok, err := jwt.ParseSigned(values[0], algs)
	if err != nil {
		return nil, bad("not a JWT signed with a supported algorithm: %v", err)
	}
	if len(tok.Headers) != 1 {
		return nil, bad("want one signature")
	}
	h := tok.Headers[0]
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != "dpop+jwt" {
		return nil, bad("typ is %q", typ)
	}
	if !slices.Contains(s.opt.Algs, h.Algorithm) || strings.HasPrefix(h.Algorithm, "HS") || h.Algorithm == "none" {
		return nil, bad("alg %q not accepted", h.Algorithm)
	}
	if h.JSONWebKey == nil || !h.JSONWebKey.Valid() {
		return nil, bad("no jwk header")
	}
	if !h.JSONWebKey.IsPublic() {
		return nil, bad("the jwk header holds a private key")
	}
	var c proofClaims
	if err := tok.Claims(h.JSONWebKey.Key, &c); err != nil {
		return nil, bad("signature does not verify with the jwk header")
	}
	if c.JTI == "" || c.HTM == "" || c.HTU == "" || c.IAT == nil {
		return nil, bad("missing jti, htm, htu or iat")
	}
	if c.HTM != r.Method {
		return nil, bad("htm %q for a %s request", c.HTM, r.Method)
	}
	if c.HTU != htu {
		return nil, bad("htu %q, want %q", c.HTU, htu)
	}
	if d := time.Since(c.IAT.Time()); d > dpopIATWindow || d < -dpopIATWindow {
		return nil, bad("iat outside the window (%s)", d)
	}
	tp, err := h.JSONWebKey.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, bad("no thumbprint")
	}
	jkt := base64.RawURLEncoding.EncodeToString(tp)
	if accessToken != "" {
		sum := sha256.Sum256([]byte(accessToken))
		if subtle.ConstantTimeCompare([]byte(c.ATH), []byte(base64.RawURLEncoding.EncodeToString(sum[:]))) != 1 {
			return nil, bad("ath does not match the access token")
		}
		if bound := s.lookup(accessToken); bound == "" || bound != jkt {
			return nil, &proofError{Code: "invalid_token", Reason: "the token is not bound to the proof's key"}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opt.RequireNonce && c.Nonce != s.nonce {
		return nil, &proofError{Code: "use_dpop_nonce", Reason: "nonce required"}
	}
	if _, replay := s.seen[c.JTI]; replay {
		return nil, bad("jti replayed")
	}
	s.seen[c.JTI] = c.IAT.Time()
	return &DPoPProof{Path: r.URL.Path, JTI: c.JTI, HTM: c.HTM, HTU: c.HTU, Nonce: c.Nonce, ATH: c.ATH, IAT: c.IAT.Time(),
		JKT: jkt, Typ: "dpop+jwt", Alg: h.Algorithm}, nil
}

// setNonce adds the current nonce to a response (sections 8.1, 9).
func (s *dpopServer) setNonce(h http.Header) {
	if !s.opt.RequireNonce {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h.Set("DPoP-Nonce", s.nonce)
}

func (s *dpopServer) bindCode(code, jkt string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[code] = jkt
}

func (s *dpopServer) codeJKT(code string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.codes[code]
}

func (s *dpopServer) bind(token, jkt string) {
	if token == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bound[token] = jkt
}

func (s *dpopServer) boundTo(token string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bound[token]
}

func (s *dpopServer) isIgnoring() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ignoring
}

// IgnoreDPoP makes the token endpoint behave as a server without DPoP
// support (on true): proofs are ignored, nothing is bound, token_type is
// Bearer; false restores RFC 9449. Metadata is unchanged, as for a server
// reconfigured while clients hold its tokens.
func (a *AuthServer) IgnoreDPoP(on bool) {
	a.dpop.mu.Lock()
	defer a.dpop.mu.Unlock()
	a.dpop.ignoring = on
}

// RotateNonce makes the server's current nonce a new one: proofs with the
// old one are answered use_dpop_nonce (section 8.2).
func (s *dpopServer) RotateNonce() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nonce = rand.Text()
}

func (s *dpopServer) snapshot() ([]DPoPProof, int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.proofs), s.challenges, slices.Clone(s.refused)
}

// dpopToken wraps the token endpoint (RFC 9449 section 5): a request with
// a proof is checked (section 4.3, htu the token endpoint), a refresh must
// be proven with the key its refresh token is bound to, and the issued
// tokens are bound to the proof's key and answered with token_type DPoP.
// Every answer carries the current nonce when nonces are required
// (section 8).
func (a *AuthServer) dpopToken(inner http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := a.dpop
		if s.isIgnoring() {
			// A server that does not (or no longer) support DPoP ignores
			// the proof and issues Bearer tokens (section 5: the client
			// learns it from token_type).
			inner(w, r)
			return
		}
		s.setNonce(w.Header())
		if r.Header.Get("DPoP") == "" {
			if s.opt.RequireProof {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_dpop_proof", "error_description": "a DPoP proof is required"})
				return
			}
			inner(w, r)
			return
		}
		p, perr := s.check(r, a.URL+"/token", "")
		if perr != nil {
			// Section 8: use_dpop_nonce and invalid_dpop_proof are token
			// endpoint errors (RFC 6749 section 5.2), status 400.
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": perr.Code})
			return
		}
		if err := r.ParseForm(); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
			return
		}
		if code := r.PostForm.Get("code"); r.PostForm.Get("grant_type") == "authorization_code" {
			// Section 10.1: a code bound with dpop_jkt is redeemed only
			// with a proof by that key.
			if want := s.codeJKT(code); want != "" && want != p.JKT {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_dpop_proof", "error_description": "the code is bound to another key"})
				return
			}
		}
		if rt := r.PostForm.Get("refresh_token"); r.PostForm.Get("grant_type") == "refresh_token" {
			// Section 5: a refresh proves possession of the key the refresh
			// token is bound to.
			if bound := s.boundTo(rt); bound != "" && bound != p.JKT {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_dpop_proof", "error_description": "the refresh token is bound to another key"})
				return
			}
		}
		rec := httptest.NewRecorder()
		inner(rec, r)
		body := rec.Body.Bytes()
		if rec.Code == http.StatusOK {
			var resp map[string]any
			if err := json.Unmarshal(body, &resp); err == nil {
				at, _ := resp["access_token"].(string)
				rt, _ := resp["refresh_token"].(string)
				s.bind(at, p.JKT)
				s.bind(rt, p.JKT)
				resp["token_type"] = "DPoP"
				body, _ = json.Marshal(resp)
			}
		}
		for k, v := range rec.Header() {
			if k != "Content-Length" {
				w.Header()[k] = v
			}
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	}
}

// DPoPProofs returns the proofs the token endpoint accepted, oldest first.
func (a *AuthServer) DPoPProofs() []DPoPProof {
	p, _, _ := a.dpop.snapshot()
	return p
}

// DPoPNonceChallenges counts the token endpoint's use_dpop_nonce answers.
func (a *AuthServer) DPoPNonceChallenges() int {
	_, n, _ := a.dpop.snapshot()
	return n
}

// DPoPRefused lists why the token endpoint refused proofs.
func (a *AuthServer) DPoPRefused() []string {
	_, _, r := a.dpop.snapshot()
	return r
}

// TokenJKT is the thumbprint of the key a token is bound to (its cnf.jkt,
// section 6.1), "" for a Bearer token.
func (a *AuthServer) TokenJKT(token string) string {
	if a.dpop == nil {
		return ""
	}
	return a.dpop.boundTo(token)
}

// RotateDPoPNonce replaces the token endpoint's nonce.
func (a *AuthServer) RotateDPoPNonce() { a.dpop.RotateNonce() }

// dpopMetadata adds section 5.1's metadata member.
func (a *AuthServer) dpopMetadata(doc map[string]any) {
	if a.dpop != nil {
		doc["dpop_signing_alg_values_supported"] = a.dpop.opt.Algs
	}
}

// requireDPoP guards the MCP endpoint as a resource server that accepts
// only DPoP-bound tokens (section 7.1): "Authorization: DPoP <token>" with
// a proof for this request (htu the endpoint URL, ath the token's hash)
// signed by the key the token is bound to. A Bearer token, a missing or
// bad proof, or one without the current nonce (section 9) is answered 401
// with a DPoP challenge. The verified request goes on to next with the
// token as a Bearer credential, so the SDK's bearer middleware checks the
// token itself (introspection, audience, scopes) as for any server.
func (m *MCPServer) requireDPoP(next http.Handler) http.Handler {
	s := m.dpop
	algs := strings.Join(s.opt.Algs, " ")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.setNonce(w.Header())
		challenge := func(code, reason string) {
			c := fmt.Sprintf("DPoP algs=%q", algs)
			if code != "" {
				c += fmt.Sprintf(", error=%q, error_description=%q", code, reason)
			}
			if u := m.challengeMetadataURL(); u != "" {
				c += fmt.Sprintf(", resource_metadata=%q", u)
			}
			w.Header().Set("WWW-Authenticate", c)
			http.Error(w, "DPoP-bound token required", http.StatusUnauthorized)
		}
		scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if !strings.EqualFold(scheme, "DPoP") || token == "" {
			m.countBearer(scheme)
			challenge("", "")
			return
		}
		u := url.URL{Scheme: "http", Host: r.Host, Path: r.URL.Path}
		if _, perr := s.check(r, u.String(), token); perr != nil {
			challenge(perr.Code, perr.Reason)
			return
		}
		r.Header.Set("Authorization", "Bearer "+token)
		next.ServeHTTP(&challengeWriter{ResponseWriter: w, scheme: "DPoP"}, r)
	})
}

func (m *MCPServer) countBearer(scheme string) {
	if strings.EqualFold(scheme, "Bearer") {
		m.dpopMu.Lock()
		m.bearerAttempts++
		m.dpopMu.Unlock()
	}
}

// DPoPProofs returns the proofs the MCP endpoint accepted, oldest first.
func (m *MCPServer) DPoPProofs() []DPoPProof {
	p, _, _ := m.dpop.snapshot()
	return p
}

// DPoPNonceChallenges counts the MCP endpoint's use_dpop_nonce answers.
func (m *MCPServer) DPoPNonceChallenges() int {
	_, n, _ := m.dpop.snapshot()
	return n
}

// DPoPRefused lists why the MCP endpoint refused proofs.
func (m *MCPServer) DPoPRefused() []string {
	_, _, r := m.dpop.snapshot()
	return r
}

// BearerAttempts counts requests that presented a token with the Bearer
// scheme to the DPoP-only endpoint.
func (m *MCPServer) BearerAttempts() int {
	m.dpopMu.Lock()
	defer m.dpopMu.Unlock()
	return m.bearerAttempts
}

var errNoDPoP = errors.New("testauthz: DPoP is not enabled")

// RotateDPoPNonce replaces the MCP endpoint's nonce.
func (m *MCPServer) RotateDPoPNonce() error {
	if m.dpop == nil {
		return errNoDPoP
	}
	m.dpop.RotateNonce()
	return nil
}
