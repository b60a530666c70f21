package vault

import (
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/oauthclient"
)

// TestChallengeRowHidesThePath: a stored challenge holds no more of the
// provider's URL than its origin (the path and query may carry a secret),
// and turns back into the same probe result.
func TestChallengeRowHidesThePath(t *testing.T) {
	t.Parallel()
	k := testKeys(t)
	tests := []struct {
		url, rm string
	}{
		{"https://mcp.example.com/k-secret123/mcp?key=sk-1", "https://mcp.example.com/.well-known/oauth-protected-resource/k-secret123/mcp?key=sk-1"},
		{"https://mcp.example.com/k-secret123/mcp", "https://mcp.example.com/.well-known/oauth-protected-resource"},
		{"https://mcp.example.com", "https://meta.example.com/prm"},
		{"https://mcp.example.com/k-secret123", ""},
	}
	for _, tc := range tests {
		d, err := OpenProvider(k, providerRow(t, k, tc.url, "", ""))
		if err != nil {
			t.Fatal(err)
		}
		row := d.ChallengeRow(403, oauthclient.Challenge{Error: "insufficient_scope", Scope: []string{"a", "b"}, ResourceMetadata: tc.rm})
		if strings.Contains(row.ResourceMetadata, "k-secret123") || strings.Contains(row.ResourceMetadata, "sk-1") {
			t.Errorf("%s: stored resource_metadata %q holds the path or query", tc.url, row.ResourceMetadata)
		}
		if row.HTTPStatus != 403 || row.Error != "insufficient_scope" || row.Scope != "a b" || row.TenantID == "" || row.ProviderID == "" {
			t.Errorf("row %+v", row)
		}
		p := d.ChallengeProbe(row)
		if p.ResourceMetadataURL != tc.rm || p.Status != 403 || p.Error != "insufficient_scope" || strings.Join(p.Scopes, " ") != "a b" {
			t.Errorf("%s: probe %+v, want resource_metadata %q", tc.url, p, tc.rm)
		}
	}
	// An oversized value is dropped, and a placeholder that cannot be
	// filled (the provider's URL changed to one without a path) too.
	d, _ := OpenProvider(k, providerRow(t, k, "https://mcp.example.com/mcp", "", ""))
	if row := d.ChallengeRow(401, oauthclient.Challenge{ResourceMetadata: "https://x.example/" + strings.Repeat("a", 3000)}); row.ResourceMetadata != "" {
		t.Error("oversized resource_metadata kept")
	}
	row := d.ChallengeRow(401, oauthclient.Challenge{ResourceMetadata: "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"})
	bare, _ := OpenProvider(k, providerRow(t, k, "https://mcp.example.com", "", ""))
	if p := bare.ChallengeProbe(row); p.ResourceMetadataURL != "" {
		t.Errorf("unfillable placeholder gave %q", p.ResourceMetadataURL)
	}
}
