package dpop

import (
	"crypto"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mcpauth/mcpauth/secret"
)

// parsed is a proof as a server reads it (RFC 9449 section 4.3).
type parsed struct {
	typ, alg, jkt string
	private       bool
	claims        map[string]any
}

func parseProof(t *testing.T, raw string) parsed {
	t.Helper()
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256, jose.RS256})
	if err != nil {
		t.Fatalf("proof does not parse: %v", err)
	}
	h := tok.Headers[0]
	if h.JSONWebKey == nil {
		t.Fatal("no jwk header")
	}
	var c map[string]any
	if err := tok.Claims(h.JSONWebKey.Key, &c); err != nil {
		t.Fatalf("signature: %v", err)
	}
	tp, err := h.JSONWebKey.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	typ, _ := h.ExtraHeaders[jose.HeaderType].(string)
	return parsed{typ: typ, alg: h.Algorithm, jkt: base64.RawURLEncoding.EncodeToString(tp), private: !h.JSONWebKey.IsPublic(), claims: c}
}

func TestProofClaims(t *testing.T) {
	t.Parallel()
	for _, alg := range []string{AlgES256, AlgRS256} {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			k, err := Generate(alg)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Unix(1_800_000_000, 0)
			raw, err := k.Proof("POST", "https://mcp.example.com/mcp?q=1#frag", secret.New("tok-123"), "n-1", now)
			if err != nil {
				t.Fatal(err)
			}
			p := parseProof(t, raw)
			if p.typ != "dpop+jwt" || p.alg != alg || p.jkt != k.Thumbprint() || p.private {
				t.Fatalf("headers: typ %q alg %q jkt %q private %v", p.typ, p.alg, p.jkt, p.private)
			}
			want := map[string]any{"htm": "POST", "htu": "https://mcp.example.com/mcp", "iat": float64(now.Unix()),
				"ath": ATH("tok-123"), "nonce": "n-1"}
			for k, v := range want {
				if p.claims[k] != v {
					t.Errorf("claim %s = %v, want %v", k, p.claims[k], v)
				}
			}
			if jti, _ := p.claims["jti"].(string); len(jti) < 16 {
				t.Errorf("jti %q too short", jti)
			}
			// A proof for a token request has neither ath nor nonce when
			// none is known, and every proof has its own jti.
			raw2, _ := k.Proof("POST", "https://as.example.com/token", secret.Secret{}, "", now)
			p2 := parseProof(t, raw2)
			if _, ok := p2.claims["ath"]; ok {
				t.Error("ath without an access token")
			}
			if _, ok := p2.claims["nonce"]; ok {
				t.Error("nonce without a server nonce")
			}
			if p2.claims["jti"] == p.claims["jti"] {
				t.Error("jti repeated")
			}
		})
	}
}

func TestKeyRoundTripAndRedaction(t *testing.T) {
	t.Parallel()
	k, err := Generate("")
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(k.PEM())
	if err != nil {
		t.Fatal(err)
	}
	if again.Thumbprint() != k.Thumbprint() || again.Algorithm() != AlgES256 {
		t.Fatalf("parsed key %s, want %s", again, k)
	}
	pem := k.PEM().Reveal()
	for _, s := range []string{k.String(), k.PEM().String()} {
		if strings.Contains(s, "PRIVATE") || strings.Contains(s, pem[40:80]) {
			t.Errorf("%q shows the key", s)
		}
	}
	jwk, err := k.PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(jwk, &m); err != nil || m["d"] != nil || m["kty"] != "EC" {
		t.Errorf("public JWK %s", jwk)
	}
	if _, err := Parse(secret.New("not a key")); err == nil {
		t.Error("garbage parsed")
	}
	if _, err := Generate("HS256"); err == nil {
		t.Error("HS256 accepted")
	}
}

func TestSupportedAndHTU(t *testing.T) {
	t.Parallel()
	if got := Supported([]string{"PS256", "RS256", "ES256"}); got != AlgES256 {
		t.Errorf("Supported = %q", got)
	}
	if got := Supported([]string{"EdDSA"}); got != "" {
		t.Errorf("Supported = %q", got)
	}
	for in, want := range map[string]string{
		"https://u:p@h.example/a/b?x=1#y": "https://h.example/a/b",
		"http://127.0.0.1:8080/mcp":       "http://127.0.0.1:8080/mcp",
	} {
		if got, err := HTU(in); err != nil || got != want {
			t.Errorf("HTU(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"/relative", "ftp://h/x", "https://"} {
		if _, err := HTU(bad); err == nil {
			t.Errorf("HTU(%q) accepted", bad)
		}
	}
}

func TestResourceNonceChallenge(t *testing.T) {
	t.Parallel()
	h := http.Header{}
	h.Set("WWW-Authenticate", `DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"`)
	h.Set(HeaderNonce, "eyJ7S_zG.eyJH0-Z.HX4w-7v")
	if !ResourceNonceChallenge(401, h) {
		t.Error("RFC 9449 section 9's example not recognised")
	}
	if ResourceNonceChallenge(403, h) {
		t.Error("403 taken for a nonce challenge")
	}
	bearer := h.Clone()
	bearer.Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	if ResourceNonceChallenge(401, bearer) {
		t.Error("a Bearer invalid_token taken for a nonce challenge")
	}
	noNonce := h.Clone()
	noNonce.Del(HeaderNonce)
	if ResourceNonceChallenge(401, noNonce) {
		t.Error("a challenge without DPoP-Nonce accepted")
	}
	badNonce := h.Clone()
	badNonce.Set(HeaderNonce, "has space")
	if ResourceNonceChallenge(401, badNonce) {
		t.Error("an invalid nonce accepted")
	}
}

// nonceServer is a token endpoint that demands its nonce (RFC 9449
// section 8) and records the proofs and bodies it received.
type nonceServer struct {
	mu     sync.Mutex
	nonce  string
	proofs []parsed
	bodies []string
	always bool // demand a nonce whatever the proof says
}

func (s *nonceServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	s.bodies = append(s.bodies, string(body))
	raw := r.Header.Get(HeaderProof)
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":"invalid_dpop_proof"}`)
		return
	}
	var c map[string]any
	_ = tok.Claims(tok.Headers[0].JSONWebKey.Key, &c)
	s.proofs = append(s.proofs, parsed{claims: c})
	w.Header().Set(HeaderNonce, s.nonce)
	w.Header().Set("Content-Type", "application/json")
	if s.always || c["nonce"] != s.nonce {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":"use_dpop_nonce","error_description":"Authorization server requires nonce in DPoP proof"}`)
		return
	}
	_, _ = io.WriteString(w, `{"access_token":"at","token_type":"DPoP"}`)
}

func TestTransportNonceRetry(t *testing.T) {
	t.Parallel()
	srv := &nonceServer{nonce: "server-nonce-1"}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	k, _ := Generate("")
	nonces := NewNonces()
	c := &http.Client{Transport: &Transport{Base: http.DefaultTransport, Key: k, Nonces: nonces}}
	post := func() *http.Response {
		t.Helper()
		res, err := c.Post(ts.URL+"/token", "application/x-www-form-urlencoded", strings.NewReader("grant_type=client_credentials"))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	if res := post(); res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	// One refusal, one retry with the nonce and the same body.
	if len(srv.proofs) != 2 || srv.proofs[0].claims["nonce"] != nil || srv.proofs[1].claims["nonce"] != "server-nonce-1" {
		t.Fatalf("proofs %+v", srv.proofs)
	}
	if srv.bodies[0] != "grant_type=client_credentials" || srv.bodies[1] != srv.bodies[0] {
		t.Errorf("bodies %q", srv.bodies)
	}
	if srv.proofs[0].claims["jti"] == srv.proofs[1].claims["jti"] {
		t.Error("the retry reused the jti")
	}
	// The nonce is remembered: the next request needs no retry.
	if res := post(); res.StatusCode != 200 || len(srv.proofs) != 3 {
		t.Fatalf("second request: status %d, %d proofs", res.StatusCode, len(srv.proofs))
	}
	// A server that keeps demanding gets exactly one retry, then its answer.
	srv.mu.Lock()
	srv.always = true
	srv.mu.Unlock()
	if res := post(); res.StatusCode != 400 || len(srv.proofs) != 5 {
		t.Fatalf("always-demanding server: status %d, %d proofs (want 400 after one retry)", res.StatusCode, len(srv.proofs))
	}
}
