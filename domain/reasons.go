package domain

// Reason codes are the stable, upper-snake-case codes errors and audit events
// carry (google.rpc.ErrorInfo.reason on the API, declared there as the
// ErrorReason enum). Callers branch on them, so they never change.
const (
	ReasonInvalidArgument       = "INVALID_ARGUMENT"
	ReasonNotFound              = "NOT_FOUND"
	ReasonAlreadyExists         = "ALREADY_EXISTS"
	ReasonPermissionDenied      = "PERMISSION_DENIED"
	ReasonUnauthenticated       = "UNAUTHENTICATED"
	ReasonAborted               = "ABORTED"
	ReasonUnavailable           = "UNAVAILABLE"
	ReasonInternal              = "INTERNAL"
	ReasonNotAuthorized         = "NOT_AUTHORIZED"
	ReasonReauthRequired        = "REAUTH_REQUIRED"
	ReasonTokenExpired          = "TOKEN_EXPIRED"
	ReasonInsufficientScope     = "INSUFFICIENT_SCOPE"
	ReasonInsufficientScopeLoop = "INSUFFICIENT_SCOPE_LOOP"
	ReasonStepUpLoop            = "STEP_UP_LOOP"
	ReasonPKCENotSupported      = "PKCE_NOT_SUPPORTED"
	ReasonPKCEMetadataMissing   = "PKCE_METADATA_MISSING"
	ReasonIssuerMismatch        = "ISSUER_MISMATCH"
	ReasonResourceMismatch      = "RESOURCE_MISMATCH"
	ReasonEgressBlocked         = "EGRESS_BLOCKED"
	ReasonNoClientRegistration  = "NO_CLIENT_REGISTRATION"
	ReasonFlowExpiredOrUsed     = "FLOW_EXPIRED_OR_USED"
	ReasonProbeUnavailable      = "PROBE_UNAVAILABLE"
	ReasonServerUnreachable     = "SERVER_UNREACHABLE"
	ReasonResultTooLarge        = "RESULT_TOO_LARGE"
	ReasonNotRequired           = "NOT_REQUIRED"
	ReasonMetadataNotFound      = "METADATA_NOT_FOUND"
	ReasonServerNotFound        = "SERVER_NOT_FOUND"
	ReasonServerRequestRejected = "SERVER_REQUEST_REJECTED"

	// Reasons of a dead grant (REAUTH_REQUIRED's audit reason and status reason).
	ReasonInvalidGrant           = "INVALID_GRANT"
	ReasonInvalidClient          = "INVALID_CLIENT"
	ReasonMCPServerRejectedToken = "MCP_SERVER_REJECTED_TOKEN"
	ReasonRefreshExhausted       = "REFRESH_EXHAUSTED"
	ReasonPersistFailed          = "PERSIST_FAILED"
	ReasonDBWriteFailed          = "DB_WRITE_FAILED"
	ReasonServerURLChanged       = "SERVER_URL_CHANGED"
	ReasonNoClient               = "NO_CLIENT"
	ReasonRevokeRefreshFailed    = "REVOKE_REFRESH_FAILED"
	ReasonRevokeAccessFailed     = "REVOKE_ACCESS_FAILED"

	// Reasons of the credential kinds without a browser (issue 12).
	ReasonCredentialKindChanged = "CREDENTIAL_KIND_CHANGED"
	ReasonInvalidScope          = "INVALID_SCOPE"
	ReasonUnauthorizedClient    = "UNAUTHORIZED_CLIENT"
	ReasonGrantRefused          = "GRANT_REFUSED"
	ReasonAssertionUnavailable  = "ASSERTION_UNAVAILABLE"
	// ReasonDPoPRefused: the authorization server did not honour DPoP, or
	// the DPoP key changed since the tokens were issued.
	ReasonDPoPRefused = "DPOP_REFUSED"

	// Reasons of enterprise-managed authorization (issue 12 item 3).
	ReasonIDTokenRequired         = "ID_TOKEN_REQUIRED"
	ReasonIdentityProviderRefused = "IDENTITY_PROVIDER_REFUSED"
	// ReasonIDJAGNotSupported: the authorization server's metadata lists
	// grant profiles without the ID-JAG one.
	ReasonIDJAGNotSupported = "ID_JAG_NOT_SUPPORTED"

	// Reasons of a failed browser callback.
	ReasonMissingState        = "MISSING_STATE"
	ReasonStateInvalid        = "STATE_INVALID"
	ReasonBrowserMismatch     = "BROWSER_MISMATCH"
	ReasonAuthorizationDenied = "AUTHORIZATION_DENIED"
	ReasonMissingCode         = "MISSING_CODE"
	ReasonProviderGone        = "PROVIDER_GONE"
	ReasonProviderChanged     = "PROVIDER_CHANGED"
	ReasonClientChanged       = "CLIENT_CHANGED"
	ReasonTokenExchangeFailed = "TOKEN_EXCHANGE_FAILED"
	ReasonStoreFailed         = "STORE_FAILED"
	ReasonDuplicateParameter  = "DUPLICATE_PARAMETER"
)

// Reasons of challenge-driven authorization (issue 9).
const (
	// ReasonAuthorizationRequired: an MCP request was answered 401 (or 403
	// insufficient_scope) and the challenge was recorded; StartAuthorization
	// uses it.
	ReasonAuthorizationRequired = "AUTHORIZATION_REQUIRED"
	// ReasonStepUpExhausted: the server kept refusing with
	// insufficient_scope after MaxStepUpAttempts authorizations.
	ReasonStepUpExhausted = "STEP_UP_EXHAUSTED"
	// ReasonNoUsableAuthMethod: the authorization server advertises no token
	// endpoint authentication method mcpauth can use with this client.
	ReasonNoUsableAuthMethod = "NO_USABLE_AUTH_METHOD"
	// ReasonAuthServerChanged: the protected resource metadata names another
	// authorization server than the one that issued the held grant.
	ReasonAuthServerChanged = "AUTHORIZATION_SERVER_CHANGED"
	// ReasonUpstreamInvalidParams: the MCP server answered JSON-RPC -32602
	// (invalid params, also its answer to an unknown tool) or -32600.
	ReasonUpstreamInvalidParams = "UPSTREAM_INVALID_PARAMS"
	// ReasonUpstreamMethodNotFound: the MCP server answered JSON-RPC -32601.
	ReasonUpstreamMethodNotFound = "UPSTREAM_METHOD_NOT_FOUND"
	// ReasonUpstreamRPCError: the MCP server answered another JSON-RPC error.
	ReasonUpstreamRPCError = "UPSTREAM_RPC_ERROR"
)

// MaxStepUpAttempts bounds the authorizations made for one run of
// insufficient_scope refusals (MCP authorization, Step-Up Authorization
// Flow: "no more than a few times"); past it the refusal is permanent.
const MaxStepUpAttempts = 3

// Reasons of per-user grants' completion binding and of callers limited to
// users (issue 11).
const (
	// ReasonUserNotAllowed: the caller may act only for the end users its
	// callers-file entry names, and the request named another.
	ReasonUserNotAllowed = "USER_NOT_ALLOWED"
	// ReasonCompletionInvalid: a completion code is unknown, expired,
	// already used, or was issued for another provider.
	ReasonCompletionInvalid = "COMPLETION_INVALID"
	// ReasonCompletionUserMismatch: CompleteAuthorization named another user
	// than the one the flow was started for; the parked grant is revoked.
	ReasonCompletionUserMismatch = "COMPLETION_USER_MISMATCH"
	// ReasonIDTokenSubjectMismatch: the authorization server's ID token
	// names another subject than the one the platform expected.
	ReasonIDTokenSubjectMismatch = "ID_TOKEN_SUBJECT_MISMATCH"
	// ReasonIDTokenInvalid: a subject was expected but the token response
	// carried no ID token, or one whose issuer, audience or expiry is wrong.
	ReasonIDTokenInvalid = "ID_TOKEN_INVALID"
)

// Reasons of the identity binding of enterprise-managed connections
// (issue 12).
const (
	// ReasonIdentityBindingMismatch: an ID token for a user's
	// enterprise-managed connection names another identity (iss, sub) than
	// the one the connection is bound to.
	ReasonIdentityBindingMismatch = "IDENTITY_BINDING_MISMATCH"
	// ReasonIDTokenUserMismatch: the ID token's claim named by the
	// provider's user_claim is not the request's user.
	ReasonIDTokenUserMismatch = "ID_TOKEN_USER_MISMATCH"
	// ReasonIDTokenIssuerMismatch: the ID token's iss is not the issuer
	// identifier of the provider's enterprise identity provider, exactly
	// (OpenID Connect Core 1.0 section 3.1.3.7 step 2).
	ReasonIDTokenIssuerMismatch = "ID_TOKEN_ISSUER_MISMATCH"
)
