package tools

import (
	"maps"

	"github.com/mcpauth/mcpauth/service/vault"
)

// withStaticAuthorization returns the headers to send to a provider's
// server: its custom headers and, for a static API-key provider, its
// Authorization value (such a provider never holds an OAuth grant, so no
// token competes with it).
func withStaticAuthorization(d *vault.Provider) map[string]string {
	if d.StaticAuthorization.IsZero() {
		return d.Headers
	}
	h := maps.Clone(d.Headers)
	if h == nil {
		h = map[string]string{}
	}
	h["Authorization"] = d.StaticAuthorization.Reveal()
	return h
}
