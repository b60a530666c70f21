package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
)

func TestToStatus(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	secretCause := errors.New("pq: password=hunter2 connection refused")
	tests := []struct {
		name      string
		err       error
		code      codes.Code
		msg       string
		reason    string
		field     string
		forbidden string
	}{
		{"invalid", apperr.Invalid("provider.server_url", "must use http or https"), codes.InvalidArgument,
			"provider.server_url: must use http or https", "INVALID_ARGUMENT", "provider.server_url", ""},
		{"wrapped invalid", fmt.Errorf("ctx: %w", apperr.Invalid("page_size", "must be 1-500")), codes.InvalidArgument,
			"page_size: must be 1-500", "INVALID_ARGUMENT", "page_size", ""},
		{"not found", apperr.NotFound("provider"), codes.NotFound, "provider not found", "NOT_FOUND", "", ""},
		{"exists", apperr.AlreadyExists("provider.display_name", "taken"), codes.AlreadyExists, "provider.display_name: taken", "ALREADY_EXISTS", "provider.display_name", ""},
		{"denied", apperr.PermissionDenied("no"), codes.PermissionDenied, "no", "PERMISSION_DENIED", "", ""},
		{"reauth", apperr.FailedPrecondition("REAUTH_REQUIRED", "authorize again"), codes.FailedPrecondition, "authorize again", "REAUTH_REQUIRED", "", ""},
		{"aborted", apperr.Aborted("etag"), codes.Aborted, "etag", "ABORTED", "", ""},
		{"unavailable hides cause", apperr.Unavailable(secretCause, "database unavailable"), codes.Unavailable, "database unavailable", "UNAVAILABLE", "", "hunter2"},
		{"internal hides everything", apperr.Internal(secretCause, "opening tokens"), codes.Internal, "internal error", "", "", "hunter2"},
		{"unclassified", secretCause, codes.Internal, "internal error", "", "", "hunter2"},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded, "deadline exceeded", "", "", ""},
		{"canceled", context.Canceled, codes.Canceled, "request canceled", "", "", ""},
		{"upstream timeout stays unavailable", apperr.Unavailable(fmt.Errorf("token: %w", context.DeadlineExceeded), "the MCP server did not answer in time"),
			codes.Unavailable, "the MCP server did not answer in time", "UNAVAILABLE", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := status.Convert(toStatus(context.Background(), log, tt.err))
			if st.Code() != tt.code || st.Message() != tt.msg {
				t.Fatalf("got %v %q, want %v %q", st.Code(), st.Message(), tt.code, tt.msg)
			}
			var reason, field string
			for _, d := range st.Details() {
				switch d := d.(type) {
				case *errdetails.ErrorInfo:
					reason = d.GetReason()
				case *errdetails.BadRequest:
					field = d.GetFieldViolations()[0].GetField()
				}
			}
			if reason != tt.reason || field != tt.field {
				t.Errorf("reason %q field %q, want %q %q", reason, field, tt.reason, tt.field)
			}
			if tt.forbidden != "" && strings.Contains(fmt.Sprint(st.Proto()), tt.forbidden) {
				t.Errorf("status leaks %q", tt.forbidden)
			}
		})
	}
}

func TestAuthorizeTable(t *testing.T) {
	t.Parallel()
	admin := caller.NewIdentity("admin", []string{"*"}, caller.All)
	reader := caller.NewIdentity("reader", []string{"a"}, []caller.Permission{caller.ProvidersRead})
	get := mcpauthv1.MCPProviderService_GetProvider_FullMethodName
	create := mcpauthv1.MCPProviderService_CreateProvider_FullMethodName
	update := mcpauthv1.MCPProviderService_UpdateProvider_FullMethodName
	tests := []struct {
		name   string
		id     *caller.Identity
		method string
		req    any
		code   apperr.Kind
		tenant string
	}{
		{"admin any tenant", admin, get, &mcpauthv1.GetProviderRequest{Name: "tenants/x/providers/p"}, -1, "x"},
		{"reader own tenant", reader, get, &mcpauthv1.GetProviderRequest{Name: "tenants/a/providers/p"}, -1, "a"},
		{"reader other tenant", reader, get, &mcpauthv1.GetProviderRequest{Name: "tenants/b/providers/p"}, apperr.KindPermissionDenied, "b"},
		{"reader lacks write", reader, create, &mcpauthv1.CreateProviderRequest{Parent: "tenants/a"}, apperr.KindPermissionDenied, "a"},
		{"update tenant from provider.name", reader, update, &mcpauthv1.UpdateProviderRequest{Provider: &mcpauthv1.Provider{Name: "tenants/a/providers/p"}}, apperr.KindPermissionDenied, "a"},
		{"malformed name", admin, get, &mcpauthv1.GetProviderRequest{Name: "tenants//providers/p"}, apperr.KindInvalidArgument, ""},
		{"unknown method fails closed", admin, "/mcpauth.v1.Secret/Method", &mcpauthv1.GetProviderRequest{Name: "tenants/a/providers/p"}, apperr.KindPermissionDenied, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tenant, _, err := authorize(context.Background(), tt.id, tt.method, tt.req)
			if tt.code == -1 {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
			} else if apperr.KindOf(err) != tt.code {
				t.Fatalf("error %v, want kind %v", err, tt.code)
			}
			if tenant != tt.tenant {
				t.Errorf("tenant %q, want %q", tenant, tt.tenant)
			}
		})
	}
}

func TestEveryRPCHasAPermission(t *testing.T) {
	t.Parallel()
	for _, sd := range []struct {
		name    string
		methods []string
	}{
		{mcpauthv1.MCPProviderService_ServiceDesc.ServiceName, methodNames(mcpauthv1.MCPProviderService_ServiceDesc.Methods)},
		{mcpauthv1.OAuthService_ServiceDesc.ServiceName, methodNames(mcpauthv1.OAuthService_ServiceDesc.Methods)},
		{mcpauthv1.AuditService_ServiceDesc.ServiceName, methodNames(mcpauthv1.AuditService_ServiceDesc.Methods)},
		{mcpauthv1.MCPToolService_ServiceDesc.ServiceName, methodNames(mcpauthv1.MCPToolService_ServiceDesc.Methods)},
		{mcpauthv1.TokenReadService_ServiceDesc.ServiceName, methodNames(mcpauthv1.TokenReadService_ServiceDesc.Methods)},
	} {
		for _, m := range sd.methods {
			full := "/" + sd.name + "/" + m
			if _, ok := methodPermissions[full]; !ok {
				t.Errorf("%s has no permission: it would be refused to every caller", full)
			}
		}
	}
}

func TestHeaderMatcherDropsMetadataInjection(t *testing.T) {
	t.Parallel()
	for _, h := range []string{"Grpc-Metadata-Authorization", "Grpc-Metadata-X-Tenant", "X-Forwarded-User", "Cookie", "X-Tenant"} {
		if k, ok := headerMatcher(h); ok {
			t.Errorf("header %q forwarded as %q", h, k)
		}
	}
	for h, want := range map[string]string{"authorization": "authorization", "X-Request-ID": "x-request-id"} {
		if k, ok := headerMatcher(h); !ok || k != want {
			t.Errorf("header %q → %q %v, want %q", h, k, ok, want)
		}
	}
}
