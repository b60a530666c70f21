package dpop

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/mcpauth/mcpauth/secret"
)

// maxErrorBody bounds how much of an error answer is read to look for
// use_dpop_nonce.
const maxErrorBody = 64 << 10

// Transport puts a DPoP proof on every request to an authorization server
// (RFC 9449 section 5) and, when the server answers with the
// use_dpop_nonce error and a DPoP-Nonce header (section 8), sends the
// request once more with that nonce in a new proof. Every nonce a server
// gives is remembered in Nonces for its next request (section 8.2).
//
// The retry is safe for an authorization code: a server that asks for a
// nonce has refused the request before looking at the grant (section 8).
type Transport struct {
	// Base sends the requests (the egress guard's transport).
	Base http.RoundTripper
	// Key signs the proofs.
	Key *Key
	// Nonces remembers server nonces; required.
	Nonces *Nonces
	// Now is the clock of iat; time.Now when nil.
	Now func() time.Time
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	origin := Origin(req.URL)
	first, err := t.withProof(req, req.Body, t.Nonces.Get(origin))
	if err != nil {
		closeBody(req)
		return nil, err
	}
	resp, err := t.Base.RoundTrip(first)
	if err != nil {
		return nil, err
	}
	nonce := t.Nonces.Note(origin, resp.Header)
	if nonce == "" || (resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusUnauthorized) || req.GetBody == nil && req.Body != nil {
		return resp, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	_ = resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if !nonceError(body) {
		resp.Body = io.NopCloser(bytes.NewReader(body))
		return resp, nil
	}
	var again io.ReadCloser
	if req.GetBody != nil {
		if again, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	second, err := t.withProof(req, again, nonce)
	if err != nil {
		return nil, err
	}
	resp, err = t.Base.RoundTrip(second)
	if err != nil {
		return nil, err
	}
	t.Nonces.Note(origin, resp.Header)
	return resp, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// withProof is a copy of req with body and a fresh proof.
func (t *Transport) withProof(req *http.Request, body io.ReadCloser, nonce string) (*http.Request, error) {
	if t.Key == nil || t.Nonces == nil {
		return nil, errors.New("dpop transport: no key")
	}
	now := time.Now
	if t.Now != nil {
		now = t.Now
	}
	proof, err := t.Key.Proof(req.Method, req.URL.String(), secret.Secret{}, nonce, now())
	if err != nil {
		return nil, err
	}
	r := req.Clone(req.Context())
	r.Body = body
	r.Header.Set(HeaderProof, proof)
	return r, nil
}

// nonceError reports whether an OAuth error body (RFC 6749 section 5.2)
// names use_dpop_nonce.
func nonceError(body []byte) bool {
	var e struct {
		Error string `json:"error"`
	}
	return json.Unmarshal(body, &e) == nil && e.Error == ErrUseNonce
}
