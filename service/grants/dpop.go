package grants

import (
	"context"
	"errors"
	"net/url"
	"strings"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// Bounds of a proof request's fields.
const (
	maxProofMethodLen = 32
	maxProofURLLen    = 4096
	maxProofNonceLen  = 512
)

// ProofRequest names a request a caller will make itself with a
// DPoP-bound token from GetAccessToken: its HTTP method and URL, and the
// DPoP-Nonce its server gave, if any.
type ProofRequest struct {
	Method string
	URL    string
	Nonce  string
}

// IsZero reports whether the caller asked for no proof.
func (r ProofRequest) IsZero() bool { return r == ProofRequest{} }

// ValidateProofRequest checks a proof request before anything else is
// done: method and URL come together, the method is an RFC 9110 token,
// the URL an absolute http(s) URL without userinfo, the nonce RFC 9449's
// NQCHAR string.
func ValidateProofRequest(r ProofRequest) error {
	if r.IsZero() {
		return nil
	}
	if r.Method == "" || r.URL == "" {
		return apperr.Invalid("dpop_method", "dpop_method and dpop_url must be set together")
	}
	if len(r.Method) > maxProofMethodLen || strings.IndexFunc(r.Method, func(c rune) bool { return !isTokenChar(c) }) >= 0 {
		return apperr.Invalid("dpop_method", "must be an HTTP method (RFC 9110 token characters, at most %d)", maxProofMethodLen)
	}
	u, err := url.Parse(r.URL)
	if len(r.URL) > maxProofURLLen || err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
		return apperr.Invalid("dpop_url", "must be an absolute http or https URL without userinfo, at most %d bytes", maxProofURLLen)
	}
	if len(r.Nonce) > maxProofNonceLen || strings.IndexFunc(r.Nonce, func(c rune) bool { return c < 0x21 || c > 0x7e || c == '"' || c == '\\' }) >= 0 {
		return apperr.Invalid("dpop_nonce", "must be a DPoP nonce (RFC 9449 section 8.1: printable ASCII without quote or backslash), at most %d bytes", maxProofNonceLen)
	}
	return nil
}

func isTokenChar(c rune) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.ContainsRune("!#$%&'*+-.^_`|~", c)
}

// CheckProofTarget checks, before any token is read, that a proof request
// names the provider's own MCP server: the origin of its server URL and a
// path at or below that URL's path (validate.WithinServer). mcpauth signs
// proofs for nothing else, so its key cannot be used as a proof oracle for
// arbitrary URLs (RFC 9449 section 11.1: a proof is only as narrow as its
// htu). The message does not repeat the server URL, which is stored
// sealed.
func (s *Service) CheckProofTarget(ctx context.Context, ref domain.GrantRef, r ProofRequest) error {
	if r.IsZero() {
		return nil
	}
	row, err := s.store.GetProvider(ctx, ref.Tenant, ref.Provider)
	if err != nil {
		return err
	}
	server, err := vault.OpenURL(s.cipher, row)
	if err != nil {
		return err
	}
	target, err := url.Parse(r.URL)
	if err != nil || !validate.WithinServer(server, target) {
		return apperr.Invalid("dpop_url", "must name the provider's MCP server: the origin (scheme, host, port) of its server_url and a path at or below its path, without dot segments")
	}
	return nil
}

// Proof signs a DPoP proof (RFC 9449 section 4.2) for the caller's
// request r with t's key, bound to t (ath). t must be DPoP-bound; a key
// rotated since t was issued is REAUTH_REQUIRED.
func (s *Service) Proof(ctx context.Context, ref domain.GrantRef, t *Token, r ProofRequest) (string, error) {
	key, err := s.boundKey(ctx, ref.Tenant, ref.Provider, t.Grant)
	if err != nil {
		return "", err
	}
	p, err := key.Proof(r.Method, r.URL, t.AccessToken, r.Nonce, s.now())
	if err != nil {
		return "", apperr.Internal(err, "signing a DPoP proof")
	}
	return p, nil
}

// dpopRefused reports a token endpoint answer that does not honour a DPoP
// request: the proof refused (invalid_dpop_proof; RFC 9449 section 5), a
// Bearer token, or a token bound to another key.
func dpopRefused(err error) bool {
	var oe *oauthclient.OAuthError
	return errors.Is(err, oauthclient.ErrUnsupportedTokenType) || errors.Is(err, oauthclient.ErrWrongBinding) ||
		errors.As(err, &oe) && oe.Code == "invalid_dpop_proof"
}

// oauthCode is the OAuth error code of err, "" when it has none.
func oauthCode(err error) string {
	var oe *oauthclient.OAuthError
	if errors.As(err, &oe) {
		return oe.Code
	}
	return ""
}
