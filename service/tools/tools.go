// Package tools is the MCP tool use case: it connects to a provider's MCP
// server with the stored credentials (custom headers and the OAuth token
// together) so callers never hold raw tokens, lists and stores its tools,
// and calls them. A 401 refreshes once; a 403 insufficient_scope becomes a
// structured step-up answer.
package tools

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/mcpclient"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/authflow"
	"github.com/mcpauth/mcpauth/service/grants"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// Connector talks MCP to remote servers. *mcpclient.Client implements it.
type Connector interface {
	ListTools(ctx context.Context, key string, t mcpclient.Target, cr mcpclient.Credentials) ([]*mcp.Tool, error)
	CallTool(ctx context.Context, key string, t mcpclient.Target, cr mcpclient.Credentials, name string, args map[string]any) (*mcp.CallToolResult, error)
	Probe(ctx context.Context, t mcpclient.Target, cr mcpclient.Credentials) error
}

var _ Connector = (*mcpclient.Client)(nil)

// Store reads providers and grants and keeps tool lists.
// *repository.Store implements it.
type Store interface {
	vault.ProviderGetter
	GetCredential(ctx context.Context, g domain.GrantRef) (*repository.Credential, error)
	// PutTools stores a grant's own list only while the provider is still
	// at providerVersion (the row the list was fetched under), checked in
	// the write's transaction; it reports whether it stored the list.
	PutTools(ctx context.Context, t *repository.ToolList, providerVersion int64) (bool, error)
	// PutSharedTools stores a USER provider's shared list only while the
	// provider is still shared at providerVersion, checked in the write's
	// transaction; it reports whether it stored the list.
	PutSharedTools(ctx context.Context, t *repository.ToolList, providerVersion int64) (bool, error)
	GetTools(ctx context.Context, g domain.GrantRef) (*repository.ToolList, error)
	// Challenges: what the MCP server answered 401/403 with, for every
	// replica and for StartAuthorization.
	// RecordChallenge stores events in the transaction of the grant status
	// change, only when the status changed.
	RecordChallenge(ctx context.Context, c *repository.Challenge, keyID uint32, events ...*repository.AuditEvent) (bool, error)
	GetChallenge(ctx context.Context, g domain.GrantRef) (*repository.Challenge, error)
	ClearChallenge(ctx context.Context, g domain.GrantRef) error
	SetGrantStatus(ctx context.Context, g domain.GrantRef, from []domain.AuthStatus, to domain.AuthStatus, reason string, keyID uint32, events ...*repository.AuditEvent) (bool, error)
}

var _ Store = (*repository.Store)(nil)

// Grants serves and refreshes access tokens. *grants.Service implements it.
type Grants interface {
	Get(ctx context.Context, ref domain.GrantRef) (*grants.Token, error)
	ForceRefresh(ctx context.Context, ref domain.GrantRef, staleAccess secret.Secret) (*grants.Token, error)
	MarkReauth(ctx context.Context, ref domain.GrantRef, reason string, generation int64) error
	Forget(ref domain.GrantRef)
	Holds(ctx context.Context, ref domain.GrantRef) error
}

var _ Grants = (*grants.Service)(nil)

// Starter starts an authorization flow, so step-up answers can carry an
// authorization URL. *authflow.Service implements it.
type Starter interface {
	Start(ctx context.Context, in authflow.StartInput) (*authflow.Started, error)
}

var _ Starter = (*authflow.Service)(nil)

// Clock tells the time.
type Clock func() time.Time

// Service connects callers' tool calls to MCP servers.
type Service struct {
	store     Store
	cipher    vault.Cipher
	grants    Grants
	mcp       Connector
	audit     audit.Recorder
	log       *slog.Logger
	metrics   *metrics.Metrics
	maxResult int64
	now       Clock
	starter   Starter
}

// Deps are what New needs. Starter is optional; Now defaults to time.Now.
type Deps struct {
	Store          Store
	Cipher         vault.Cipher
	Grants         Grants
	MCP            Connector
	Audit          audit.Recorder
	Log            *slog.Logger
	Metrics        *metrics.Metrics
	MaxResultBytes int64
	Now            Clock
	Starter        Starter
}

// New returns the tool use case.
func New(d Deps) (*Service, error) {
	if d.Store == nil || d.Cipher == nil || d.Grants == nil || d.MCP == nil || d.Audit == nil || d.Log == nil || d.Metrics == nil {
		return nil, errors.New("tools: store, cipher, grants, mcp, audit, log and metrics are required")
	}
	if d.MaxResultBytes <= 0 {
		d.MaxResultBytes = 4 << 20
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return &Service{store: d.Store, cipher: d.Cipher, grants: d.Grants, mcp: d.MCP, audit: d.Audit, log: d.Log,
		metrics: d.Metrics, maxResult: d.MaxResultBytes, now: d.Now, starter: d.Starter}, nil
}

// maxToolNameLen bounds the tool name of Call.
const maxToolNameLen = 128

// session is what one MCP exchange needs.
type session struct {
	d      *vault.Provider
	target mcpclient.Target
	cred   mcpclient.Credentials
	key    string
	gen    int64
	// user is the person the call is made for, if the caller said so.
	user string
	// grant is the grant whose token the exchange carries.
	grant domain.GrantRef
}

// prepare loads the provider and its current credentials. A provider that
// was never authorized is tried with its headers only (servers that need no
// OAuth); one whose authorization broke answers with the reason.
func (s *Service) prepare(ctx context.Context, tenant, id, user string) (*session, error) {
	row, err := s.store.GetProvider(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	d, err := vault.OpenProvider(s.cipher, row)
	if err != nil {
		return nil, err
	}
	grant := domain.TenantGrant(row.TenantID, row.ID)
	if row.GrantScope.PerUser() {
		// The user's own connection, never the tenant's or another user's.
		if grant, err = vault.GrantFor(row, user); err != nil {
			return nil, err
		}
	}
	ss := &session{d: d, user: user, grant: grant, target: mcpclient.Target{URL: d.URL.String(), Timeout: time.Duration(row.TimeoutMS) * time.Millisecond,
		SSEReadTimeout: time.Duration(row.SSEReadTimeoutMS) * time.Millisecond, MaxResultBytes: s.maxResult},
		cred: mcpclient.Credentials{Headers: withStaticAuthorization(d)}}
	if err := s.attachToken(ctx, ss); err != nil {
		return nil, err
	}
	return ss, nil
}

// attachToken adds the current access token, when the provider has one.
// The grant read with the provider just now is the truth: a token from a
// cache that has not seen a revocation, a URL change or a newer generation
// (possibly on another replica) is never sent.
func (s *Service) attachToken(ctx context.Context, ss *session) error {
	row := ss.d.Row
	ss.cred.AccessToken, ss.cred.DPoP, ss.gen = secret.Secret{}, nil, 0
	defer func() { ss.key = fmt.Sprintf("%s/%d/%d", ss.grant.Key(), row.Version, ss.gen) }()
	if ss.grant.User != "" {
		return s.attachUserToken(ctx, ss)
	}
	status, _ := row.AuthStatus()
	if status != domain.StatusAuthorized && status != domain.StatusReauthRequired && !ss.d.Kind.Machine() &&
		ss.d.Kind != domain.KindEnterpriseManaged {
		// No OAuth grant: headers only (NOT_REQUIRED or custom-header auth).
		return nil
	}
	tok, err := s.grants.Get(ctx, ss.grant)
	if err == nil && tok.Generation < row.GrantGeneration {
		// Cached before a newer grant was stored: read it again.
		s.grants.Forget(ss.grant)
		tok, err = s.grants.Get(ctx, ss.grant)
	}
	switch {
	case err != nil && reasonOf(err) == domain.ReasonNotAuthorized:
		return nil
	case err != nil:
		return err
	case tok.Generation < row.GrantGeneration || !tok.Grant.GrantedFor(ss.d):
		// The tokens were granted for another server URL, or are older than
		// the grant just read: never send them.
		return nil
	}
	if err := bindDPoP(ss, tok); err != nil {
		return err
	}
	ss.cred.AccessToken, ss.gen = tok.AccessToken, tok.Generation
	return nil
}

// attachUserToken adds the token of the user's connection. Unlike the
// tenant-wide grant, a connection that is missing or broken is never
// replaced by a request with headers only: the answer says the user must
// connect (NOT_AUTHORIZED, with a fresh authorization URL for them when the
// caller may authorize) or authorize again.
func (s *Service) attachUserToken(ctx context.Context, ss *session) error {
	tok, err := s.grants.Get(ctx, ss.grant)
	if err != nil {
		return err
	}
	if !tok.Grant.GrantedFor(ss.d) {
		return grants.ReauthRequired("the connection's tokens were granted for another server URL")
	}
	if err := bindDPoP(ss, tok); err != nil {
		return err
	}
	ss.cred.AccessToken, ss.gen = tok.AccessToken, tok.Generation
	return nil
}

// bindDPoP sets the DPoP key a token is presented with: the provider's
// key when the token is bound to it (RFC 9449 section 7.1), none for a
// Bearer token. A token bound to a key the provider no longer holds is
// never sent, and never as a Bearer token.
func bindDPoP(ss *session, tok *grants.Token) error {
	ss.cred.DPoP = nil
	if tok.Grant.DPoPJKT == "" {
		return nil
	}
	if ss.d.DPoP == nil || ss.d.DPoP.Thumbprint() != tok.Grant.DPoPJKT {
		return grants.ReauthRequired("the provider's DPoP key changed since the tokens were issued")
	}
	ss.cred.DPoP = ss.d.DPoP
	return nil
}

// optionalUser checks the person a call is made for, when it names one,
// by the rule StartAuthorization applies to it.
func optionalUser(user string) error {
	if user == "" {
		return nil
	}
	return validate.UserID("user", user)
}

func reasonOf(err error) string {
	if e, ok := apperr.As(err); ok {
		return e.Reason
	}
	return domain.ReasonInternal
}

// withAuthRetry runs fn; on a 401 it refreshes once and retries; a second
// 401 marks the authorization dead; a 403 insufficient_scope becomes a
// structured step-up error.
func (s *Service) withAuthRetry(ctx context.Context, ss *session, fn func(ss *session) error) error {
	err := s.withAuthRetryOnce(ctx, ss, fn)
	if err == nil {
		s.succeeded(ctx, ss)
	}
	return err
}

// succeeded settles what a successful MCP request proves: made without a
// token, the server needs none (NOT_REQUIRED, any recorded challenge
// forgotten); made with one, no refusal is outstanding any more (the
// step-up attempt count starts again). Failures here are logged only: the
// request itself succeeded.
func (s *Service) succeeded(ctx context.Context, ss *session) {
	row := ss.d.Row
	if !ss.cred.AccessToken.IsZero() {
		if err := s.store.ClearChallenge(ctx, ss.grant); err != nil {
			s.log.WarnContext(ctx, "clearing the recorded challenge failed", "tenant", row.TenantID, "provider", row.ID, "err", err.Error())
		}
		return
	}
	if st, _ := row.AuthStatus(); st != domain.StatusUnauthorized {
		return
	}
	if err := s.store.ClearChallenge(ctx, ss.grant); err != nil {
		s.log.WarnContext(ctx, "clearing the recorded challenge failed", "tenant", row.TenantID, "provider", row.ID, "err", err.Error())
		return
	}
	if _, err := s.store.SetGrantStatus(ctx, ss.grant, []domain.AuthStatus{domain.StatusUnauthorized},
		domain.StatusNotRequired, "", s.cipher.PrimaryID()); err != nil {
		s.log.WarnContext(ctx, "recording NOT_REQUIRED failed", "tenant", row.TenantID, "provider", row.ID, "err", err.Error())
	}
}

// recordChallenge keeps a 401 or 403 insufficient_scope Bearer challenge
// for the provider in the database, so that every replica and
// StartAuthorization see it (MCP authorization, Scope Selection Strategy:
// the challenge's scope is authoritative for the operation). A refusal
// without a Bearer challenge (a custom header missing) is not about OAuth
// and is not recorded.
func (s *Service) recordChallenge(ctx context.Context, ss *session, ae *mcpclient.AuthError) {
	if !ae.Bearer || (ae.Status == 403 && !ae.InsufficientScope) {
		return
	}
	ch, err := oauthclient.ParseChallenge([]string{ae.Challenge})
	if err != nil {
		return
	}
	row := ss.d.Row
	reason := domain.ReasonAuthorizationRequired
	if ae.InsufficientScope {
		reason = domain.ReasonInsufficientScope
	}
	// Stored with the grant status change, and only when it changed.
	events := audit.Rows(ctx, s.now(), audit.Event{Tenant: row.TenantID, Type: domain.EventChallengeRecorded, Provider: row.ID, User: ss.grant.User,
		Outcome: domain.OutcomeFailure, Reason: reason, Details: map[string]string{"status": strconv.Itoa(ae.Status), "error": ch.Error}})
	chRow := ss.d.ChallengeRow(ae.Status, ch)
	chRow.UserID = ss.grant.User
	if _, err := s.store.RecordChallenge(ctx, chRow, s.cipher.PrimaryID(), events...); err != nil {
		s.log.WarnContext(ctx, "recording the MCP server's challenge failed", "tenant", row.TenantID, "provider", row.ID, "err", err.Error())
	}
}

// withAuthRetryOnce is withAuthRetry without the success bookkeeping.
func (s *Service) withAuthRetryOnce(ctx context.Context, ss *session, fn func(ss *session) error) error {
	err := fn(ss)
	var ae *mcpclient.AuthError
	if errors.As(err, &ae) {
		s.recordChallenge(ctx, ss, ae)
	}
	if errors.As(err, &ae) && ae.Status == 401 {
		if ss.cred.AccessToken.IsZero() {
			if !ae.Bearer {
				return apperr.FailedPrecondition(domain.ReasonNotAuthorized,
					"the MCP server refused the request without asking for an OAuth token: check the provider's headers")
			}
			return apperr.FailedPrecondition(domain.ReasonNotAuthorized,
				"the MCP server requires authorization (its challenge was recorded): call StartAuthorization")
		}
		// Retry with exactly the token the refresh produced (never a cached
		// copy, which could be the rejected token again).
		tok, rerr := s.grants.ForceRefresh(ctx, ss.grant, ss.cred.AccessToken)
		if rerr != nil {
			return rerr
		}
		if !tok.Grant.GrantedFor(ss.d) {
			return grants.ReauthRequired("the stored grant belongs to another server")
		}
		if err := bindDPoP(ss, tok); err != nil {
			return err
		}
		ss.cred.AccessToken, ss.gen = tok.AccessToken, tok.Generation
		ss.key = fmt.Sprintf("%s/%d/%d", ss.grant.Key(), ss.d.Row.Version, ss.gen)
		err = fn(ss)
		if errors.As(err, &ae) {
			s.recordChallenge(ctx, ss, ae)
		}
		if errors.As(err, &ae) && ae.Status == 401 {
			if !ae.Bearer {
				// Refused with a fresh token, and without a Bearer challenge:
				// the server refused something else (a custom header), and
				// wiping a working authorization would not help.
				return apperr.FailedPrecondition(domain.ReasonNotAuthorized,
					"the MCP server refused the request without asking for an OAuth token: check the provider's headers")
			}
			// Wipe only the generation that was just rejected: newer tokens
			// stored meanwhile by another replica survive.
			return s.grants.MarkReauth(ctx, ss.grant, domain.ReasonMCPServerRejectedToken, ss.gen)
		}
	}
	if errors.As(err, &ae) && ae.Status == 403 {
		return s.stepUp(ctx, ss, ae)
	}
	return s.mapErr(err)
}

// stepUp builds the structured "authorization required" answer to a 403
// insufficient_scope: the scopes the server asks for, the union to request,
// and what to call. If the server refuses scopes already granted, asking
// again would loop: that is reported instead.
func (s *Service) stepUp(ctx context.Context, ss *session, ae *mcpclient.AuthError) error {
	tenant, id := ss.d.Row.TenantID, ss.d.Row.ID
	if !ae.InsufficientScope {
		return apperr.PermissionDenied("the MCP server refused the request (403)")
	}
	if ch, err := s.store.GetChallenge(ctx, ss.grant); err == nil && ch.StepUpAttempts >= domain.MaxStepUpAttempts {
		s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventStepUpRequired, Provider: id, User: ss.grant.User, Outcome: domain.OutcomeFailure, Reason: domain.ReasonStepUpExhausted})
		return apperr.FailedPrecondition(domain.ReasonStepUpExhausted,
			"the MCP server still refuses with insufficient_scope after %d authorizations for more scopes; authorizing again will not help", ch.StepUpAttempts).
			WithMeta("required_scopes", strings.Join(ae.Scopes, " "))
	}
	var granted []string
	if cred, err := s.store.GetCredential(ctx, ss.grant); err == nil {
		granted = vault.ParseList(cred.Scopes)
	}
	union := slices.Clone(granted)
	missing := []string{}
	for _, sc := range ae.Scopes {
		if !slices.Contains(union, sc) {
			union = append(union, sc)
			missing = append(missing, sc)
		}
	}
	if len(missing) == 0 {
		s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventStepUpRequired, Provider: id, User: ss.grant.User, Outcome: domain.OutcomeFailure, Reason: domain.ReasonStepUpLoop})
		return apperr.FailedPrecondition(domain.ReasonInsufficientScopeLoop,
			"the MCP server refuses the call although every scope it asks for is already granted; re-authorizing would not help").
			WithMeta("required_scopes", strings.Join(ae.Scopes, " "))
	}
	s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventStepUpRequired, Provider: id, User: ss.grant.User, Outcome: domain.OutcomeFailure,
		Reason: domain.ReasonInsufficientScope, Details: map[string]string{"missing_scopes": strings.Join(missing, " ")}})
	e := apperr.FailedPrecondition(domain.ReasonInsufficientScope, "the MCP server needs more scopes: authorize again with additional_scopes").
		WithMeta("missing_scopes", strings.Join(missing, " ")).
		WithMeta("required_scopes", strings.Join(ae.Scopes, " ")).
		WithMeta("granted_scopes", strings.Join(granted, " ")).
		WithMeta("step_up_scopes", strings.Join(union, " "))
	s.attachStepUpURL(ctx, ss, union, e)
	return e
}

// attachStepUpURL adds a fresh authorization URL asking for scopes (the
// union of those granted and those missing, so a step-up never drops a
// scope an earlier one added) to a step-up answer when the call named the person it is made for and
// the caller may also start authorizations on this tenant; otherwise the
// answer only says what to call.
func (s *Service) attachStepUpURL(ctx context.Context, ss *session, scopes []string, e *apperr.Error) {
	if s.starter == nil || ss.user == "" {
		return
	}
	id, ok := caller.FromContext(ctx)
	if !ok || !id.Allows(ss.d.Row.TenantID, caller.Authorize) {
		return
	}
	started, err := s.starter.Start(ctx, authflow.StartInput{Tenant: ss.d.Row.TenantID, Provider: ss.d.Row.ID, User: ss.user, AdditionalScopes: scopes})
	if err != nil || started.AuthorizationURL == "" {
		return
	}
	e.WithMeta("authorization_url", started.AuthorizationURL).
		WithMeta("authorization_expire_time", started.ExpiresAt.UTC().Format(time.RFC3339))
}

// mapErr classifies MCP failures without leaking upstream text.
func (s *Service) mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mcpclient.ErrResultTooLarge):
		return apperr.FailedPrecondition(domain.ReasonResultTooLarge, "the MCP server's response exceeds %d bytes", s.maxResult)
	case errors.Is(err, context.DeadlineExceeded):
		return apperr.Unavailable(err, "the MCP server did not answer in time")
	case errors.Is(err, context.Canceled):
		return err
	}
	if perr := definitiveErr(err); perr != nil {
		return perr
	}
	if rerr := rpcErr(err); rerr != nil {
		return rerr
	}
	if _, ok := apperr.As(err); ok {
		return err
	}
	return apperr.Unavailable(err, "the MCP server could not be reached")
}

// JSON-RPC error codes (JSON-RPC 2.0 section 5.1; MCP tools: an unknown
// tool or invalid arguments are -32602).
const (
	rpcInvalidRequest = -32600
	rpcMethodNotFound = -32601
	rpcInvalidParams  = -32602
)

// rpcErr maps a JSON-RPC error the MCP server answered to a code that keeps
// its meaning (the request reached the server and was refused: not an
// outage), with the server's message sanitised and bounded; nil for other
// errors.
func rpcErr(err error) error {
	code, msg, ok := mcpclient.RPCErrorOf(err)
	if !ok {
		return nil
	}
	var e *apperr.Error
	switch code {
	case rpcInvalidParams, rpcInvalidRequest:
		e = &apperr.Error{Kind: apperr.KindInvalidArgument, Reason: domain.ReasonUpstreamInvalidParams,
			Message: fmt.Sprintf("the MCP server rejected the request's parameters (JSON-RPC %d): %s", code, msg)}
	case rpcMethodNotFound:
		e = &apperr.Error{Kind: apperr.KindUnimplemented, Reason: domain.ReasonUpstreamMethodNotFound,
			Message: fmt.Sprintf("the MCP server does not offer this method (JSON-RPC %d): %s", code, msg)}
	default:
		e = apperr.FailedPrecondition(domain.ReasonUpstreamRPCError, "the MCP server answered with JSON-RPC error %d: %s", code, msg)
	}
	return e.WithMeta("rpc_code", strconv.FormatInt(code, 10))
}

// definitiveErr maps the MCP failures retrying cannot help with (an egress
// refusal; a 404, 410 or 400 from the endpoint) to FAILED_PRECONDITION, and
// returns nil for any other error.
func definitiveErr(err error) error {
	var blocked *egress.BlockedError
	if errors.As(err, &blocked) {
		// A policy refusal, not an outage: retrying cannot help until the
		// provider's URL or the allow-list changes. Host and rule only.
		return apperr.FailedPrecondition(domain.ReasonEgressBlocked, "the MCP server's address is not allowed: %s", blocked.Error())
	}
	var se *mcpclient.StatusError
	if errors.As(err, &se) {
		switch reason := domain.ServerStatusReason(se.Status); reason {
		case domain.ReasonServerNotFound:
			return apperr.FailedPrecondition(reason, "the MCP server answered %d: no MCP endpoint at the provider's server_url", se.Status)
		case domain.ReasonServerRequestRejected:
			return apperr.FailedPrecondition(reason, "the MCP server answered %d to an MCP request: check the provider's server_url and headers", se.Status)
		}
	}
	return nil
}

// Tool is one tool as the MCP server describes it. Schemas and annotations
// are JSON objects, nil when absent.
type Tool struct {
	Name         string
	Title        string
	Description  string
	InputSchema  map[string]any
	OutputSchema map[string]any
	Annotations  map[string]any
}

// List is a provider's tool list and when it was fetched.
type List struct {
	Tools     []Tool
	FetchedAt time.Time
}

// Refresh connects, lists every tool (all pages), stores and returns the
// list. user, when set, names the person the call is made for.
func (s *Service) Refresh(ctx context.Context, tenant, id, user string) (*List, error) {
	if err := optionalUser(user); err != nil {
		return nil, err
	}
	ctx = audit.WithScope(ctx, tenant, id)
	ss, err := s.prepare(ctx, tenant, id, user)
	if err != nil {
		return nil, err
	}
	var tools []*mcp.Tool
	err = s.withAuthRetry(ctx, ss, func(ss *session) error {
		var lerr error
		tools, lerr = s.mcp.ListTools(ctx, ss.key, ss.target, ss.cred)
		return lerr
	})
	if err != nil {
		s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventToolsRefreshed, Provider: id, User: ss.grant.User, Outcome: domain.OutcomeFailure, Reason: reasonOf(err)})
		return nil, err
	}
	raw, err := json.Marshal(tools)
	if err != nil {
		return nil, apperr.Internal(err, "encoding tools")
	}
	// Microseconds: what PostgreSQL keeps, so List later reports the same
	// fetch time as this answer.
	now := s.now().UTC().Truncate(time.Microsecond)
	tl := &repository.ToolList{TenantID: tenant, ProviderID: id, UserID: toolListRef(ss.d.Row, ss.grant).User, Tools: string(raw), FetchedAt: now}
	if err := s.storeList(ctx, ss.d.Row, tl); err != nil {
		return nil, err
	}
	s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventToolsRefreshed, Provider: id, User: ss.grant.User, Outcome: domain.OutcomeSuccess,
		Details: map[string]string{"count": strconv.Itoa(len(tools))}})
	out, err := decodeTools(string(raw))
	if err != nil {
		return nil, err
	}
	return &List{Tools: out, FetchedAt: now}, nil
}

// storeList stores tl, fetched under the provider row row, as the shared
// list or as the grant's own. The store keeps it only if the provider is
// still at row's version (perhaps another replica's cached copy), checked
// in the write's transaction: otherwise the provider changed during the
// fetch (sharing was turned off, or the provider moved to another server
// and its lists were cleared), and storing the list would serve tools of
// an earlier period or of the old server. A list not stored is no error:
// the caller still gets its answer, and the next refresh stores a list
// fetched under the current row.
func (s *Service) storeList(ctx context.Context, row *repository.Provider, tl *repository.ToolList) error {
	put := s.store.PutTools
	if sharedToolList(row) {
		put = s.store.PutSharedTools
	}
	stored, err := put(ctx, tl, row.Version)
	if err != nil {
		return err
	}
	if !stored {
		s.log.InfoContext(ctx, "tool list not stored: the provider changed during the refresh", "tenant", tl.TenantID, "provider", tl.ProviderID)
	}
	return nil
}

// toolListRef names the tool list a grant's fetches fill and its reads
// serve: the grant's own, except on a USER provider whose operator
// declared the list the same for everyone (shared_tool_list), where one
// list (no user) serves every connection. Only the list is shared: each
// fetch and each call still carries the user's own token.
func toolListRef(row *repository.Provider, grant domain.GrantRef) domain.GrantRef {
	if sharedToolList(row) {
		return domain.TenantGrant(grant.Tenant, grant.Provider)
	}
	return grant
}

// sharedToolList reports whether row is a USER provider whose one tool list
// serves every connection.
func sharedToolList(row *repository.Provider) bool {
	return row.GrantScope.PerUser() && row.SharedToolList
}

// Stored returns the stored tool list without connecting (empty when the
// tools were never fetched): the provider's, or for a USER provider the
// list last fetched with user's connection, or with any user's when the
// list is shared. On a USER provider the user must hold a connection: a
// shared list never lets someone who has not connected see the tools, and
// a connection revoked since its list was fetched shows nothing.
func (s *Service) Stored(ctx context.Context, tenant, id, user string) (*List, error) {
	row, err := s.store.GetProvider(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	ref, err := vault.GrantFor(row, user)
	if err != nil {
		return nil, err
	}
	if row.GrantScope.PerUser() {
		if err := s.grants.Holds(ctx, ref); err != nil {
			return nil, err
		}
	}
	tl, err := s.store.GetTools(ctx, toolListRef(row, ref))
	if apperr.KindOf(err) == apperr.KindNotFound {
		return &List{}, nil
	}
	if err != nil {
		return nil, err
	}
	out, err := decodeTools(tl.Tools)
	if err != nil {
		return nil, err
	}
	return &List{Tools: out, FetchedAt: tl.FetchedAt}, nil
}

// CallInput is one tool call.
type CallInput struct {
	Tenant, Provider string
	Tool             string
	Arguments        map[string]any
	// User, when set, names the person the call is made for.
	User string
}

// Result is a tool's result as the server sent it: each content block and
// the structured content as JSON objects.
type Result struct {
	Content           []map[string]any
	StructuredContent map[string]any
	IsError           bool
}

// Call calls one tool and returns its result faithfully. The audit event
// records caller, provider, tool, outcome and duration, never the arguments
// or the result.
func (s *Service) Call(ctx context.Context, in CallInput) (*Result, error) {
	tool := in.Tool
	if tool == "" || len(tool) > maxToolNameLen || strings.ContainsFunc(tool, unicode.IsControl) {
		return nil, apperr.Invalid("tool", "must be 1-%d characters without control characters", maxToolNameLen)
	}
	if err := optionalUser(in.User); err != nil {
		return nil, err
	}
	tenant, id := in.Tenant, in.Provider
	ctx = audit.WithScope(ctx, tenant, id)
	start := time.Now()
	ss, err := s.prepare(ctx, tenant, id, in.User)
	if err != nil {
		if apperr.KindOf(err) == apperr.KindNotFound {
			return nil, err // no such provider: nothing was attempted
		}
		// Refused before reaching the server (no grant, REAUTH_REQUIRED, a
		// store outage): an attempted call is audited all the same.
		s.metrics.ToolCalls.WithLabelValues("error").Inc()
		s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventToolCalled, Provider: id, User: in.User, Outcome: domain.OutcomeFailure, Reason: reasonOf(err),
			Details: map[string]string{"tool": tool, "refused": "before_server", "duration_ms": strconv.FormatInt(time.Since(start).Milliseconds(), 10)}})
		return nil, err
	}
	var res *mcp.CallToolResult
	err = s.withAuthRetry(ctx, ss, func(ss *session) error {
		var cerr error
		res, cerr = s.mcp.CallTool(ctx, ss.key, ss.target, ss.cred, tool, in.Arguments)
		return cerr
	})
	details := map[string]string{"tool": tool, "duration_ms": strconv.FormatInt(time.Since(start).Milliseconds(), 10)}
	if err != nil {
		s.metrics.ToolCalls.WithLabelValues("error").Inc()
		s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventToolCalled, Provider: id, User: ss.grant.User, Outcome: domain.OutcomeFailure, Reason: reasonOf(err), Details: details})
		return nil, err
	}
	out, err := decodeResult(res)
	if err != nil {
		return nil, err
	}
	outcome := "success"
	if out.IsError {
		outcome = "tool_error"
		details["is_error"] = "true"
	}
	s.metrics.ToolCalls.WithLabelValues(outcome).Inc()
	s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventToolCalled, Provider: id, User: ss.grant.User, Outcome: domain.OutcomeSuccess, Details: details})
	return out, nil
}

// ProbeServer checks that an MCP server answers (providers.Prober): any
// answer, including a demand for authorization, counts as reachable. It
// reports whether the server asked for authorization; a server that
// answered without asking needs none.
func (s *Service) ProbeServer(ctx context.Context, serverURL string, headers map[string]string) (authRequired bool, err error) {
	err = s.mcp.Probe(ctx, mcpclient.Target{URL: serverURL, Timeout: 15 * time.Second, MaxResultBytes: 1 << 20}, mcpclient.Credentials{Headers: headers})
	var ae *mcpclient.AuthError
	switch {
	case err == nil:
		return false, nil
	case errors.As(err, &ae):
		return true, nil
	}
	if perr := definitiveErr(err); perr != nil {
		return false, perr
	}
	return false, apperr.FailedPrecondition(domain.ReasonServerUnreachable, "the MCP server could not be reached: %s", err.Error())
}

func decodeTools(raw string) ([]Tool, error) {
	var list []map[string]any
	if err := json.Unmarshal([]byte(raw), &list); err != nil {
		return nil, apperr.Internal(err, "decoding stored tools")
	}
	out := make([]Tool, 0, len(list))
	for _, m := range list {
		t := Tool{InputSchema: object(m["inputSchema"]), OutputSchema: object(m["outputSchema"]), Annotations: object(m["annotations"])}
		t.Name, _ = m["name"].(string)
		t.Title, _ = m["title"].(string)
		t.Description, _ = m["description"].(string)
		out = append(out, t)
	}
	return out, nil
}

func object(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// decodeResult reads a tool result through JSON, so every content block
// keeps exactly the fields the server sent.
func decodeResult(res *mcp.CallToolResult) (*Result, error) {
	raw, err := json.Marshal(res)
	if err != nil {
		return nil, apperr.Internal(err, "encoding tool result")
	}
	var m struct {
		Content           []map[string]any `json:"content"`
		StructuredContent any              `json:"structuredContent"`
		IsError           bool             `json:"isError"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, apperr.Internal(err, "decoding tool result")
	}
	return &Result{Content: m.Content, StructuredContent: object(m.StructuredContent), IsError: m.IsError}, nil
}
