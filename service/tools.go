package service

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

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/mcpclient"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/secret"
)

// MCPConnector talks MCP to remote servers. *mcpclient.Client implements
// it.
type MCPConnector interface {
	ListTools(ctx context.Context, key string, t mcpclient.Target, cr mcpclient.Credentials) ([]*mcp.Tool, error)
	CallTool(ctx context.Context, key string, t mcpclient.Target, cr mcpclient.Credentials, name string, args map[string]any) (*mcp.CallToolResult, error)
	Probe(ctx context.Context, t mcpclient.Target, cr mcpclient.Credentials) error
}

var _ MCPConnector = (*mcpclient.Client)(nil)

// ToolStore persists tool lists. *repository.Store implements it.
type ToolStore interface {
	CredentialStore
	PutTools(ctx context.Context, t *repository.ToolList) error
	GetTools(ctx context.Context, tenant, providerID string) (*repository.ToolList, error)
}

var _ ToolStore = (*repository.Store)(nil)

// ToolService implements mcpauth.v1.MCPToolService: it connects to MCP
// servers with the stored credentials so callers never hold raw tokens.
type ToolService struct {
	mcpauthv1.UnimplementedMCPToolServiceServer
	store     ToolStore
	cipher    Cipher
	tokens    *TokenService
	mcp       MCPConnector
	audit     *Auditor
	log       *slog.Logger
	metrics   *metrics.Metrics
	maxResult int64
	now       Clock
	starter   AuthorizationStarter
}

// ToolDeps are what NewToolService needs.
type ToolDeps struct {
	Store          ToolStore
	Cipher         Cipher
	Tokens         *TokenService
	MCP            MCPConnector
	Audit          *Auditor
	Log            *slog.Logger
	Metrics        *metrics.Metrics
	MaxResultBytes int64
	Now            Clock
	// Starter, when set, lets step-up answers carry an authorization URL.
	Starter AuthorizationStarter
}

// NewToolService returns the tool service.
func NewToolService(d ToolDeps) (*ToolService, error) {
	if d.Store == nil || d.Cipher == nil || d.Tokens == nil || d.MCP == nil || d.Audit == nil || d.Log == nil || d.Metrics == nil {
		return nil, errors.New("tool service: store, cipher, tokens, mcp, audit, log and metrics are required")
	}
	if d.MaxResultBytes <= 0 {
		d.MaxResultBytes = 4 << 20
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return &ToolService{store: d.Store, cipher: d.Cipher, tokens: d.Tokens, mcp: d.MCP, audit: d.Audit, log: d.Log,
		metrics: d.Metrics, maxResult: d.MaxResultBytes, now: d.Now, starter: d.Starter}, nil
}

// maxToolNameLen bounds the tool name of CallTool.
const maxToolNameLen = 128

// session is what one MCP exchange needs.
type session struct {
	d      *providerData
	target mcpclient.Target
	cred   mcpclient.Credentials
	key    string
	gen    int64
	// user is the person the call is made for, if the caller said so.
	user string
}

// prepare loads the provider and its current credentials. A provider that
// was never authorized is tried with its headers only (servers that need no
// OAuth); one whose authorization broke answers with the reason.
func (s *ToolService) prepare(ctx context.Context, tenant, id string) (*session, error) {
	row, err := s.store.GetProvider(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	d, err := openProvider(s.cipher, row)
	if err != nil {
		return nil, err
	}
	ss := &session{d: d, target: mcpclient.Target{URL: d.url.String(), Timeout: time.Duration(row.TimeoutMS) * time.Millisecond,
		SSEReadTimeout: time.Duration(row.SSEReadTimeoutMS) * time.Millisecond, MaxResultBytes: s.maxResult},
		cred: mcpclient.Credentials{Headers: d.headers}}
	if err := s.attachToken(ctx, ss); err != nil {
		return nil, err
	}
	return ss, nil
}

// attachToken adds the current access token, when the provider has one.
func (s *ToolService) attachToken(ctx context.Context, ss *session) error {
	row := ss.d.row
	tok, cred, grant, err := s.tokens.getHeld(ctx, row.TenantID, row.ID)
	switch {
	case err == nil && mcpauthv1.AuthorizationStatus(row.AuthStatus) != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED:
		// The provider row, read just now, holds no authorization (its URL
		// changed, it was revoked, or a new flow has not completed): a token
		// can only come from a cache that has not seen that yet, possibly on
		// another replica, and may belong to another server. Never send it.
		ss.cred.AccessToken = secret.Secret{}
		ss.gen = 0
	case err == nil && !grant.grantedFor(ss.d):
		// The tokens were granted for another server URL (the URL changed
		// after they were issued): never send them to this one.
		ss.cred.AccessToken = secret.Secret{}
		ss.gen = 0
	case err == nil:
		ss.cred.AccessToken = tok.AccessToken
		ss.gen = cred.Generation
	case reasonOf(err) == "NOT_AUTHORIZED":
		// No OAuth tokens: headers only (NOT_REQUIRED or custom-header auth).
		ss.cred.AccessToken = secret.Secret{}
		ss.gen = 0
	default:
		return err
	}
	ss.key = fmt.Sprintf("%s/%s/%d/%d", row.TenantID, row.ID, row.Version, ss.gen)
	return nil
}

// withAuthRetry runs fn; on a 401 it refreshes once and retries; a second
// 401 marks the authorization dead; a 403 insufficient_scope becomes a
// structured step-up error.
func (s *ToolService) withAuthRetry(ctx context.Context, ss *session, fn func(ss *session) error) error {
	tenant, id := ss.d.row.TenantID, ss.d.row.ID
	err := fn(ss)
	var ae *mcpclient.AuthError
	if errors.As(err, &ae) && ae.Status == 401 {
		if ss.cred.AccessToken.IsZero() {
			return apperr.FailedPrecondition("NOT_AUTHORIZED", "the MCP server requires authorization: call StartAuthorization").
				WithMeta("provider", resname.ProviderName(tenant, id))
		}
		// Retry with exactly the tokens the refresh produced (never a cached
		// copy, which could be the rejected token again).
		tok, cred, rerr := s.tokens.ForceRefresh(ctx, tenant, id, ss.cred.AccessToken)
		if rerr != nil {
			return rerr
		}
		if !s.tokens.grantMatches(cred, ss.d) {
			return reauthErr(tenant, id, "the stored grant belongs to another server")
		}
		ss.cred.AccessToken, ss.gen = tok.AccessToken, cred.Generation
		ss.key = fmt.Sprintf("%s/%s/%d/%d", tenant, id, ss.d.row.Version, ss.gen)
		err = fn(ss)
		if errors.As(err, &ae) && ae.Status == 401 {
			if !ae.Bearer {
				// Refused with a fresh token, and without a Bearer challenge:
				// the server refused something else (a custom header), and
				// wiping a working authorization would not help.
				return apperr.FailedPrecondition("NOT_AUTHORIZED",
					"the MCP server refused the request without asking for an OAuth token: check the provider's headers").
					WithMeta("provider", resname.ProviderName(tenant, id))
			}
			// Wipe only the generation that was just rejected: newer tokens
			// stored meanwhile by another replica survive.
			return s.tokens.MarkReauth(ctx, tenant, id, "MCP_SERVER_REJECTED_TOKEN", ss.gen)
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
func (s *ToolService) stepUp(ctx context.Context, ss *session, ae *mcpclient.AuthError) error {
	tenant, id := ss.d.row.TenantID, ss.d.row.ID
	if !ae.InsufficientScope {
		return apperr.PermissionDenied("the MCP server refused the request (403)")
	}
	var granted []string
	if cred, err := s.store.GetCredential(ctx, tenant, id); err == nil {
		granted = parseList(cred.Scopes)
	}
	union := slices.Clone(granted)
	missing := []string{}
	for _, sc := range ae.Scopes {
		if !slices.Contains(union, sc) {
			union = append(union, sc)
			missing = append(missing, sc)
		}
	}
	name := resname.ProviderName(tenant, id)
	if len(missing) == 0 {
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventStepUpRequired, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE, Reason: "STEP_UP_LOOP"})
		return apperr.FailedPrecondition("INSUFFICIENT_SCOPE_LOOP",
			"the MCP server refuses the call although every scope it asks for is already granted; re-authorizing would not help").
			WithMeta("provider", name).WithMeta("required_scopes", strings.Join(ae.Scopes, " "))
	}
	s.audit.Record(ctx, Event{Tenant: tenant, Type: EventStepUpRequired, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE,
		Reason: "INSUFFICIENT_SCOPE", Details: map[string]string{"missing_scopes": strings.Join(missing, " ")}})
	e := apperr.FailedPrecondition("INSUFFICIENT_SCOPE", "the MCP server needs more scopes: authorize again with additional_scopes").
		WithMeta("provider", name).
		WithMeta("missing_scopes", strings.Join(missing, " ")).
		WithMeta("required_scopes", strings.Join(ae.Scopes, " ")).
		WithMeta("granted_scopes", strings.Join(granted, " ")).
		WithMeta("step_up_scopes", strings.Join(union, " ")).
		WithMeta("action", "call mcpauth.v1.OAuthService/StartAuthorization with additional_scopes = missing_scopes")
	s.attachStepUpURL(ctx, ss, missing, e)
	return e
}

// AuthorizationStarter starts an authorization flow.
// *OAuthService implements it.
type AuthorizationStarter interface {
	StartAuthorization(ctx context.Context, req *mcpauthv1.StartAuthorizationRequest) (*mcpauthv1.StartAuthorizationResponse, error)
}

// attachStepUpURL adds a fresh authorization URL (with the missing scopes)
// to a step-up answer when the call named the person it is made for and
// the caller may also start authorizations on this tenant; otherwise the
// answer only says what to call.
func (s *ToolService) attachStepUpURL(ctx context.Context, ss *session, missing []string, e *apperr.Error) {
	if s.starter == nil || ss.user == "" {
		return
	}
	id, ok := caller.FromContext(ctx)
	if !ok || !id.Allows(ss.d.row.TenantID, caller.Authorize) {
		return
	}
	resp, err := s.starter.StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{
		Name: resname.ProviderName(ss.d.row.TenantID, ss.d.row.ID), User: ss.user, AdditionalScopes: missing})
	if err != nil || resp.GetAuthorizationUrl() == "" {
		return
	}
	e.WithMeta("authorization_url", resp.GetAuthorizationUrl()).
		WithMeta("authorization_expire_time", resp.GetExpireTime().AsTime().UTC().Format(time.RFC3339))
}

// mapErr classifies MCP failures without leaking upstream text.
func (s *ToolService) mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mcpclient.ErrResultTooLarge):
		return apperr.FailedPrecondition("RESULT_TOO_LARGE", "the MCP server's response exceeds %d bytes", s.maxResult)
	case errors.Is(err, context.DeadlineExceeded):
		return apperr.Unavailable(err, "the MCP server did not answer in time")
	case errors.Is(err, context.Canceled):
		return err
	}
	var blocked *egress.BlockedError
	if errors.As(err, &blocked) {
		// A policy refusal, not an outage: retrying cannot help until the
		// provider's URL or the allow-list changes. Host and rule only.
		return apperr.FailedPrecondition("EGRESS_BLOCKED", "the MCP server's address is not allowed: %s", blocked.Error())
	}
	if _, ok := apperr.As(err); ok {
		return err
	}
	return apperr.Unavailable(err, "the MCP server could not be reached or answered with an error")
}

// RefreshTools connects, lists every tool (all pages), stores and returns
// the list.
func (s *ToolService) RefreshTools(ctx context.Context, req *mcpauthv1.RefreshToolsRequest) (*mcpauthv1.RefreshToolsResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	ctx = WithAuditScope(ctx, tenant, id)
	ss, err := s.prepare(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	ss.user = req.GetUser()
	var tools []*mcp.Tool
	err = s.withAuthRetry(ctx, ss, func(ss *session) error {
		var lerr error
		tools, lerr = s.mcp.ListTools(ctx, ss.key, ss.target, ss.cred)
		return lerr
	})
	if err != nil {
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventToolsRefreshed, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE, Reason: reasonOf(err)})
		return nil, err
	}
	raw, err := json.Marshal(tools)
	if err != nil {
		return nil, apperr.Internal(err, "encoding tools")
	}
	// Microseconds: what PostgreSQL keeps, so ListTools later reports the
	// same fetch_time as this answer.
	now := s.now().UTC().Truncate(time.Microsecond)
	if err := s.store.PutTools(ctx, &repository.ToolList{TenantID: tenant, ProviderID: id, Tools: string(raw), FetchedAt: now}); err != nil {
		return nil, err
	}
	s.audit.Record(ctx, Event{Tenant: tenant, Type: EventToolsRefreshed, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS,
		Details: map[string]string{"count": strconv.Itoa(len(tools))}})
	out, err := toolsToProto(string(raw))
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.RefreshToolsResponse{Tools: out, FetchTime: timestamppb.New(now)}, nil
}

// ListTools returns the stored tool list without connecting.
func (s *ToolService) ListTools(ctx context.Context, req *mcpauthv1.ListToolsRequest) (*mcpauthv1.ListToolsResponse, error) {
	row, err := providerByName(ctx, s.store, req.GetName())
	if err != nil {
		return nil, err
	}
	tenant, id := row.TenantID, row.ID
	tl, err := s.store.GetTools(ctx, tenant, id)
	if apperr.KindOf(err) == apperr.KindNotFound {
		return &mcpauthv1.ListToolsResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	out, err := toolsToProto(tl.Tools)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.ListToolsResponse{Tools: out, FetchTime: timestamppb.New(tl.FetchedAt)}, nil
}

// CallTool calls one tool and returns its result faithfully. The audit
// event records caller, provider, tool, outcome and duration, never the
// arguments or the result.
func (s *ToolService) CallTool(ctx context.Context, req *mcpauthv1.CallToolRequest) (*mcpauthv1.CallToolResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	tool := req.GetTool()
	if tool == "" || len(tool) > maxToolNameLen || strings.ContainsAny(tool, "\x00\r\n") {
		return nil, invalid("tool", fmt.Sprintf("must be 1-%d characters without control characters", maxToolNameLen))
	}
	ctx = WithAuditScope(ctx, tenant, id)
	start := time.Now()
	ss, err := s.prepare(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	ss.user = req.GetUser()
	args := req.GetArguments().AsMap()
	var res *mcp.CallToolResult
	err = s.withAuthRetry(ctx, ss, func(ss *session) error {
		var cerr error
		res, cerr = s.mcp.CallTool(ctx, ss.key, ss.target, ss.cred, tool, args)
		return cerr
	})
	details := map[string]string{"tool": tool, "duration_ms": strconv.FormatInt(time.Since(start).Milliseconds(), 10)}
	if err != nil {
		s.metrics.ToolCalls.WithLabelValues("error").Inc()
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventToolCalled, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE, Reason: reasonOf(err), Details: details})
		return nil, err
	}
	resp, err := resultToProto(res)
	if err != nil {
		return nil, err
	}
	outcome := "success"
	if resp.IsError {
		outcome = "tool_error"
		details["is_error"] = "true"
	}
	s.metrics.ToolCalls.WithLabelValues(outcome).Inc()
	s.audit.Record(ctx, Event{Tenant: tenant, Type: EventToolCalled, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS, Details: details})
	return resp, nil
}

// ProbeServer checks that an MCP server answers (service.Prober): any
// answer, including a demand for authorization, counts as reachable.
func (s *ToolService) ProbeServer(ctx context.Context, serverURL string, headers map[string]string) error {
	err := s.mcp.Probe(ctx, mcpclient.Target{URL: serverURL, Timeout: 15 * time.Second, MaxResultBytes: 1 << 20}, mcpclient.Credentials{Headers: headers})
	var ae *mcpclient.AuthError
	if err == nil || errors.As(err, &ae) {
		return nil
	}
	return apperr.FailedPrecondition("SERVER_UNREACHABLE", "the MCP server could not be reached: %s", err.Error())
}

func toolsToProto(raw string) ([]*mcpauthv1.Tool, error) {
	var list []map[string]any
	if err := json.Unmarshal([]byte(raw), &list); err != nil {
		return nil, apperr.Internal(err, "decoding stored tools")
	}
	out := make([]*mcpauthv1.Tool, 0, len(list))
	for _, m := range list {
		t := &mcpauthv1.Tool{}
		t.Name, _ = m["name"].(string)
		t.Title, _ = m["title"].(string)
		t.Description, _ = m["description"].(string)
		t.InputSchema = structOf(m["inputSchema"])
		t.OutputSchema = structOf(m["outputSchema"])
		t.Annotations = structOf(m["annotations"])
		out = append(out, t)
	}
	return out, nil
}

func structOf(v any) *structpb.Struct {
	m, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil
	}
	return s
}

// resultToProto converts a tool result through JSON, so every content
// block keeps exactly the fields the server sent.
func resultToProto(res *mcp.CallToolResult) (*mcpauthv1.CallToolResponse, error) {
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
	out := &mcpauthv1.CallToolResponse{IsError: m.IsError, StructuredContent: structOf(m.StructuredContent)}
	for _, c := range m.Content {
		if st := structOf(c); st != nil {
			out.Content = append(out.Content, st)
		}
	}
	return out, nil
}
