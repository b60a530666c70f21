package mcpclient

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mcpauth/mcpauth/dpop"
)

// nonceTransport is an MCP server's DPoP check in miniature: it records
// each request's Authorization, proof claims and body, and answers a proof
// without its nonce with RFC 9449 section 9's 401 (demands times at most,
// then it answers 200 whatever the proof says).
type nonceTransport struct {
	nonce   string
	demands int
	always  bool // demand a nonce whatever the proof carries
	auth    []string
	claims  []map[string]any
	bodies  []string
}

func (nt *nonceTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	body := ""
	if req.Body != nil {
		b, _ := io.ReadAll(req.Body)
		_ = req.Body.Close()
		body = string(b)
	}
	nt.bodies = append(nt.bodies, body)
	nt.auth = append(nt.auth, req.Header.Get("Authorization"))
	var c map[string]any
	if tok, err := jwt.ParseSigned(req.Header.Get("DPoP"), []jose.SignatureAlgorithm{jose.ES256}); err == nil {
		_ = tok.Claims(tok.Headers[0].JSONWebKey.Key, &c)
	}
	nt.claims = append(nt.claims, c)
	h := http.Header{}
	h.Set("DPoP-Nonce", nt.nonce)
	if nt.always || c["nonce"] != nt.nonce && nt.demands > 0 {
		nt.demands--
		h.Set("WWW-Authenticate", `DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"`)
		return &http.Response{StatusCode: http.StatusUnauthorized, Header: h, Body: io.NopCloser(strings.NewReader("nonce")), Request: req}, nil
	}
	return &http.Response{StatusCode: http.StatusOK, Header: h, Body: http.NoBody, Request: req}, nil
}

// TestRoundTripperDPoP: a DPoP-bound token goes as "DPoP <token>" with a
// fresh proof per request (ath, htu without query); the server's nonce
// demand is answered once with the same body, then remembered; a second
// demand in a row reaches the caller as the 401 it is.
func TestRoundTripperDPoP(t *testing.T) {
	t.Parallel()
	key, err := dpop.Generate("")
	if err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse("https://mcp.example.com/mcp")
	base := &nonceTransport{nonce: "n-1", demands: 1}
	rt := newRoundTripper(base, target, Credentials{AccessToken: secretOf("tok"), DPoP: key}, newSessionState(1<<20), dpop.NewNonces())
	post := func(body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, "https://mcp.example.com/mcp?x=1", bytes.NewReader([]byte(body)))
		res, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := post(`{"id":1}`); res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	if len(base.auth) != 2 || base.bodies[0] != `{"id":1}` || base.bodies[1] != base.bodies[0] {
		t.Fatalf("requests %d, bodies %q", len(base.auth), base.bodies)
	}
	if base.claims[0]["nonce"] != nil || base.claims[1]["nonce"] != "n-1" || base.claims[0]["jti"] == base.claims[1]["jti"] {
		t.Errorf("proofs %v", base.claims)
	}
	for i, c := range base.claims {
		if base.auth[i] != "DPoP tok" || c["ath"] != dpop.ATH("tok") || c["htu"] != "https://mcp.example.com/mcp" || c["htm"] != "POST" {
			t.Errorf("request %d: authorization %q, claims %v", i, base.auth[i], c)
		}
	}
	// Remembered: the next request carries the nonce at once.
	if res := post(`{"id":2}`); res.StatusCode != 200 || len(base.auth) != 3 || base.claims[2]["nonce"] != "n-1" {
		t.Fatalf("second request: %d requests, nonce %v", len(base.auth), base.claims[2]["nonce"])
	}
	// A server that keeps demanding: one retry, then its 401 goes to the
	// caller.
	base.nonce, base.always = "n-2", true
	if res := post(`{"id":3}`); res.StatusCode != http.StatusUnauthorized || len(base.auth) != 5 {
		t.Fatalf("status %d after %d requests, want 401 after one retry", res.StatusCode, len(base.auth))
	}
}
