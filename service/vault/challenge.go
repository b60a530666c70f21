package vault

import (
	"strings"

	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
)

// Placeholders standing for the provider's URL path and query in a stored
// challenge: the path can hold a secret (some servers put an API key
// there), and a path-inserted resource_metadata URL repeats it. The
// provider's server URL itself is encrypted; the challenge row is not.
const (
	pathPlaceholder  = "{mcpauth:path}"
	queryPlaceholder = "{mcpauth:query}"
)

// ChallengeRow is the row recording a challenge the provider's MCP server
// answered with HTTP status (401 or 403).
func (d *Provider) ChallengeRow(status int, ch oauthclient.Challenge) *repository.Challenge {
	rm := ch.ResourceMetadata
	if len(rm) > 2048 {
		rm = ""
	}
	if p := strings.TrimRight(d.URL.EscapedPath(), "/"); p != "" {
		rm = strings.ReplaceAll(rm, p, pathPlaceholder)
	}
	if q := d.URL.RawQuery; q != "" {
		rm = strings.ReplaceAll(rm, q, queryPlaceholder)
	}
	return &repository.Challenge{TenantID: d.Row.TenantID, ProviderID: d.Row.ID, HTTPStatus: status, Error: ch.Error,
		Scope: strings.Join(ch.Scope, " "), ResourceMetadata: rm}
}

// ChallengeProbe turns a recorded challenge back into what an
// unauthenticated probe would have reported, for discovery.
func (d *Provider) ChallengeProbe(c *repository.Challenge) *oauthclient.ProbeResult {
	rm := c.ResourceMetadata
	if p := strings.TrimRight(d.URL.EscapedPath(), "/"); p != "" {
		rm = strings.ReplaceAll(rm, pathPlaceholder, p)
	}
	rm = strings.ReplaceAll(rm, queryPlaceholder, d.URL.RawQuery)
	if strings.Contains(rm, pathPlaceholder) {
		rm = ""
	}
	return &oauthclient.ProbeResult{Status: c.HTTPStatus, Error: c.Error, Scopes: strings.Fields(c.Scope), ResourceMetadataURL: rm}
}
