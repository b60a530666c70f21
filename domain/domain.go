// Package domain holds the vocabulary mcpauth's use cases share: the
// authorization status of a grant, audit outcomes and event types, client
// registration methods, the compatibility profile, and the stable reason
// codes errors carry. It imports nothing of the transport or the storage:
// the use cases speak it, the repository stores it, and the transport
// adapter maps it to and from the API.
package domain

import (
	"sort"
	"strings"
)

// AuthStatus is the authorization status of a provider's grant. The values
// are stored (credentials.status); never renumber them.
type AuthStatus int32

// The authorization statuses.
const (
	// StatusUnknown is the zero value; it is never stored.
	StatusUnknown AuthStatus = 0
	// StatusNotRequired: the MCP server answered without asking for a token.
	StatusNotRequired AuthStatus = 1
	// StatusUnauthorized: no grant is held and no flow is under way.
	StatusUnauthorized AuthStatus = 2
	// StatusPending: an authorization flow was started and has not completed.
	StatusPending AuthStatus = 3
	// StatusAuthorized: tokens are held.
	StatusAuthorized AuthStatus = 4
	// StatusExpired: the access token expired and no refresh token is held.
	// It is computed when read, never stored.
	StatusExpired AuthStatus = 5
	// StatusReauthRequired: the grant is dead (for example the refresh
	// token was rejected); a person must authorize again.
	StatusReauthRequired AuthStatus = 6
)

// String returns the status in upper snake case, as the audit log and the
// logs show it.
func (s AuthStatus) String() string {
	switch s {
	case StatusNotRequired:
		return "NOT_REQUIRED"
	case StatusUnauthorized:
		return "UNAUTHORIZED"
	case StatusPending:
		return "PENDING"
	case StatusAuthorized:
		return "AUTHORIZED"
	case StatusExpired:
		return "EXPIRED"
	case StatusReauthRequired:
		return "REAUTH_REQUIRED"
	}
	return "UNKNOWN"
}

// Outcome is the outcome of an audited event. The values are stored
// (audit_events.outcome); never renumber them.
type Outcome int32

// The audit outcomes.
const (
	OutcomeUnknown Outcome = 0
	OutcomeSuccess Outcome = 1
	OutcomeFailure Outcome = 2
	OutcomeDenied  Outcome = 3
)

// EventType names an audit event. The values are stored and are part of the
// API: consoles filter on them.
type EventType string

// The audit event types.
const (
	EventProviderCreated     EventType = "provider.created"
	EventProviderUpdated     EventType = "provider.updated"
	EventProviderDeleted     EventType = "provider.deleted"
	EventCredentialsReset    EventType = "provider.credentials.reset"
	EventPermissionDenied    EventType = "permission.denied"
	EventAuthStarted         EventType = "oauth.authorization.started"
	EventCallbackSucceeded   EventType = "oauth.callback.succeeded"
	EventCallbackFailed      EventType = "oauth.callback.failed"
	EventTokenRefreshed      EventType = "oauth.token.refreshed"
	EventTokenRefreshFailed  EventType = "oauth.token.refresh_failed"
	EventTokenRead           EventType = "oauth.token.read"
	EventTokenPersistFailure EventType = "oauth.token.persist_failed"
	EventAuthRevoked         EventType = "oauth.authorization.revoked"
	EventRevocationFailed    EventType = "oauth.revocation.failed"
	EventCompatRelaxation    EventType = "oauth.compatibility.used"
	EventClientRegistered    EventType = "oauth.client.registered"
	EventReauthRequired      EventType = "oauth.reauth_required"
	EventStepUpRequired      EventType = "oauth.step_up_required"
	EventEgressBlocked       EventType = "egress.blocked"
	EventToolCalled          EventType = "mcp.tool.called"
	EventToolsRefreshed      EventType = "mcp.tools.refreshed"
	// EventAuthServerChanged: the protected resource metadata names a new
	// authorization server (details.old_issuer, details.new_issuer).
	EventAuthServerChanged EventType = "oauth.authorization_server.changed"
	// EventChallengeRecorded: an MCP request was refused with a Bearer
	// challenge that changed the provider's status (details.status,
	// details.error).
	EventChallengeRecorded EventType = "mcp.challenge.recorded"
	EventTokenObtained     EventType = "oauth.token.obtained"
	EventTokenObtainFailed EventType = "oauth.token.obtain_failed"
	// EventWebhookChanged: a webhook endpoint was created, updated,
	// deleted or had its secret rotated (details.endpoint, details.change).
	EventWebhookChanged EventType = "webhook.endpoint.changed"
	// EventDPoPKeyChanged: a provider's DPoP key was created, rotated or
	// deleted (details.change, details.algorithm, details.jkt).
	EventDPoPKeyChanged EventType = "provider.dpop_key.changed"
	// EventAuthCompleted: CompleteAuthorization stored a parked grant, or
	// refused it (details.user).
	EventAuthCompleted EventType = "oauth.authorization.completed"
)

// EventTypes lists every event type, in the order above.
var EventTypes = []EventType{
	EventProviderCreated, EventProviderUpdated, EventProviderDeleted, EventCredentialsReset, EventPermissionDenied,
	EventAuthStarted, EventCallbackSucceeded, EventCallbackFailed, EventTokenRefreshed, EventTokenRefreshFailed,
	EventTokenRead, EventTokenPersistFailure, EventAuthRevoked, EventRevocationFailed, EventCompatRelaxation,
	EventClientRegistered, EventReauthRequired, EventStepUpRequired, EventEgressBlocked, EventToolCalled,
	EventToolsRefreshed, EventAuthServerChanged, EventChallengeRecorded, EventWebhookChanged, EventTokenObtained,
	EventTokenObtainFailed, EventDPoPKeyChanged, EventAuthCompleted,
}

// RegistrationMethod is how mcpauth's OAuth client is known to an
// authorization server, in the order the MCP authorization spec asks a
// client to try them. The values are stored; never change them.
type RegistrationMethod string

// The registration methods.
const (
	RegPreRegistered RegistrationMethod = "pre_registered"
	RegCIMD          RegistrationMethod = "client_id_metadata_document"
	RegDynamic       RegistrationMethod = "dynamic_registration"
)

// ResourceMode says which RFC 8707 resource parameter a provider sends. The
// values are stored in the provider's compatibility profile.
type ResourceMode int32

// The resource modes.
const (
	// ResourceCanonical (or the zero value) sends the canonical MCP server URI.
	ResourceCanonical ResourceMode = 1
	// ResourceOmit sends no resource parameter.
	ResourceOmit ResourceMode = 2
	// ResourceOverride sends Compat.ResourceOverride.
	ResourceOverride ResourceMode = 3
)

// Compat is a provider's compatibility profile: audited relaxations for
// authorization servers that do not follow the specification.
type Compat struct {
	ResourceMode      ResourceMode      `json:"resource_mode,omitempty"`
	ResourceOverride  string            `json:"resource_override,omitempty"`
	AllowMissingPKCE  bool              `json:"allow_missing_pkce,omitempty"`
	ExtraParams       map[string]string `json:"extra_params,omitempty"`
	TokenEndpointAuth string            `json:"token_endpoint_auth,omitempty"`
}

// AuditDetails lists the relaxations the profile turns on, for the audit
// log; nil when it turns on none.
func (c Compat) AuditDetails() map[string]string {
	d := map[string]string{}
	switch c.ResourceMode {
	case ResourceOmit:
		d["compat.resource"] = "omit"
	case ResourceOverride:
		d["compat.resource"] = "override"
	}
	if c.AllowMissingPKCE {
		d["compat.allow_missing_pkce_metadata"] = "true"
	}
	if len(c.ExtraParams) > 0 {
		keys := make([]string, 0, len(c.ExtraParams))
		for k := range c.ExtraParams {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		d["compat.extra_authorization_params"] = strings.Join(keys, ",")
	}
	if c.TokenEndpointAuth != "" {
		d["compat.token_endpoint_auth_method"] = c.TokenEndpointAuth
	}
	if len(d) == 0 {
		return nil
	}
	return d
}

// IsZero reports whether the profile relaxes nothing.
func (c Compat) IsZero() bool {
	return (c.ResourceMode == 0 || c.ResourceMode == ResourceCanonical) && c.ResourceOverride == "" &&
		!c.AllowMissingPKCE && len(c.ExtraParams) == 0 && c.TokenEndpointAuth == ""
}

// ServerStatusReason returns the reason of a definitive HTTP error answer
// from an MCP endpoint: 404 and 410 (the URL names no MCP endpoint) are
// SERVER_NOT_FOUND, 400 (a well-formed request refused) is
// SERVER_REQUEST_REJECTED. Retrying cannot help with either. Any other
// status returns "": the caller keeps its own mapping (5xx, 408 and 429
// are temporary).
func ServerStatusReason(status int) string {
	switch status {
	case 404, 410:
		return ReasonServerNotFound
	case 400:
		return ReasonServerRequestRejected
	}
	return ""
}
