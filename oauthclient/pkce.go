package oauthclient

import (
	"crypto/rand"
	"encoding/base64"

	"golang.org/x/oauth2"

	"github.com/mcpauth/mcpauth/secret"
)

// OfflineAccess is the scope that asks an OIDC-style authorization server
// for a refresh token.
const OfflineAccess = "offline_access"

// NewPKCE returns a fresh PKCE verifier (32 random bytes, 43 base64url
// characters, RFC 7636 section 4.1) and its S256 challenge.
func NewPKCE() (verifier secret.Secret, challenge string, err error) {
	v := oauth2.GenerateVerifier()
	return secret.New(v), oauth2.S256ChallengeFromVerifier(v), nil
}

// NewState returns a fresh state value: 32 random bytes (256 bits),
// base64url without padding.
func NewState() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// SelectScopes applies the MCP scope selection strategy: the scopes of the
// WWW-Authenticate challenge, else the protected resource's
// scopes_supported, else none. offline_access is added when the
// authorization server's scopes_supported lists it (SEP-2207), and extra
// (operator-configured or step-up scopes) is added last. The result has no
// duplicates, keeps first-seen order, drops invalid scope tokens, and is
// nil when nothing is selected (omit the scope parameter).
func SelectScopes(probeScopes, prmScopes, asScopes, extra []string) []string {
	base := splitScopeList(probeScopes)
	if len(base) == 0 {
		base = splitScopeList(prmScopes)
	}
	out := base
	if contains(asScopes, OfflineAccess) && !contains(out, OfflineAccess) {
		out = append(out, OfflineAccess)
	}
	for _, s := range splitScopeList(extra) {
		if !contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
