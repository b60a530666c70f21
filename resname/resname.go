// Package resname parses and formats the API's resource names (Google AIP
// style: "tenants/{tenant}", "tenants/{tenant}/providers/{provider}") and
// encodes list page tokens.
//
// Page tokens are opaque to callers but carry no authority: a token only
// says where the previous page ended and which parent it was issued for. A
// position is always something the previous page showed the caller (a
// provider id, an audit event's public id), never an internal counter:
// audit events are numbered by one sequence across all tenants, and a token
// carrying that number would tell every tenant the others' event volume.
// The server authorises every list request from its parent field, never
// from the token, and a token presented with a different parent is
// rejected, so swapping tokens between requests cannot reach another
// tenant's data.
package resname

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"strings"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/validate"
)

const (
	tenantsPrefix   = "tenants/"
	providersInfix  = "/providers/"
	auditEventInfix = "/auditEvents/"
)

// ParseTenant parses "tenants/{tenant}" and returns the tenant id, which
// must satisfy validate.ResourceID. Errors name field.
func ParseTenant(field, name string) (tenant string, err error) {
	rest, ok := strings.CutPrefix(name, tenantsPrefix)
	if !ok || strings.Contains(rest, "/") {
		return "", apperr.Invalid(field, "must be of the form tenants/{tenant}")
	}
	if err := segment(field, "tenant", rest); err != nil {
		return "", err
	}
	return rest, nil
}

// ParseProvider parses "tenants/{tenant}/providers/{provider}" and returns
// both ids, each of which must satisfy validate.ResourceID. Errors name
// field.
func ParseProvider(field, name string) (tenant, provider string, err error) {
	rest, ok := strings.CutPrefix(name, tenantsPrefix)
	if !ok {
		return "", "", apperr.Invalid(field, "must be of the form tenants/{tenant}/providers/{provider}")
	}
	tenant, provider, ok = strings.Cut(rest, providersInfix)
	if !ok || strings.Contains(tenant, "/") || strings.Contains(provider, "/") {
		return "", "", apperr.Invalid(field, "must be of the form tenants/{tenant}/providers/{provider}")
	}
	if err := segment(field, "tenant", tenant); err != nil {
		return "", "", err
	}
	if err := segment(field, "provider", provider); err != nil {
		return "", "", err
	}
	return tenant, provider, nil
}

// segment validates one id of a resource name, prefixing the rule with the
// segment's name ("tenant id must not end with '-'").
func segment(field, what, id string) error {
	if err := validate.ResourceID(field, id); err != nil {
		if e, ok := apperr.As(err); ok {
			return apperr.Invalid(field, "%s id %s", what, e.Message)
		}
		return err
	}
	return nil
}

// TenantName formats "tenants/{tenant}".
func TenantName(tenant string) string {
	return tenantsPrefix + tenant
}

// ProviderName formats "tenants/{tenant}/providers/{provider}".
func ProviderName(tenant, provider string) string {
	return tenantsPrefix + tenant + providersInfix + provider
}

// AuditEventName formats "tenants/{tenant}/auditEvents/{uid}", where uid is
// the event's public id (random, unique within the tenant), not its row
// number.
func AuditEventName(tenant, uid string) string {
	return tenantsPrefix + tenant + auditEventInfix + uid
}

// PageToken is the decoded content of a list page token: the parent the
// list was for and the position after which the next page starts (the key
// the previous page's last item was shown with).
type PageToken struct {
	Parent string
	After  string
}

// pageTokenVersion is bumped when the encoding changes; older tokens are
// then rejected instead of misread.
const pageTokenVersion = 1

// maxPageTokenLen bounds the work spent on a token before it is rejected.
const maxPageTokenLen = 2048

// pageTokenJSON is the token's encoding. Tokens of version 1 carrying a
// numeric position "n" (audit lists until they paged on public ids) are
// rejected as unknown fields.
type pageTokenJSON struct {
	V int    `json:"v"`
	P string `json:"p"`
	K string `json:"k,omitempty"`
}

// EncodePageToken returns the opaque token for t: unpadded base64url of a
// small versioned JSON document. It is not encrypted or signed because it
// grants nothing and holds nothing the caller has not seen (see the package
// documentation).
func EncodePageToken(t PageToken) string {
	b, err := json.Marshal(pageTokenJSON{V: pageTokenVersion, P: t.Parent, K: t.After})
	if err != nil {
		// Marshalling strings and an integer (the version) cannot fail.
		panic("resname: encoding page token: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodePageToken decodes a token from a list request whose parent is
// parent. An empty token is the first page (the zero PageToken and no
// error). A token that does not decode, has another version, or was issued
// for a different parent is an invalid-argument error on field.
func DecodePageToken(field, parent, s string) (PageToken, error) {
	if s == "" {
		return PageToken{}, nil
	}
	if len(s) > maxPageTokenLen {
		return PageToken{}, apperr.Invalid(field, "is not a valid page token")
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return PageToken{}, apperr.Invalid(field, "is not a valid page token")
	}
	var tj pageTokenJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tj); err != nil || dec.Decode(new(json.RawMessage)) != io.EOF || tj.V != pageTokenVersion {
		return PageToken{}, apperr.Invalid(field, "is not a valid page token")
	}
	if tj.P != parent {
		return PageToken{}, apperr.Invalid(field, "does not belong to this request")
	}
	return PageToken{Parent: tj.P, After: tj.K}, nil
}
