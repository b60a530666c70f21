package e2e

import (
	"cmp"
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/caller"
)

// TestProviderAuthn checks that every provider RPC needs a valid API key,
// while health and reflection need none.
func TestProviderAuthn(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		pc := s.Providers()
		provCreate(t, s, s.AdminKey, "acme", "p1", provNewProvider("p1"))

		calls := map[string]func(ctx context.Context) error{
			"create": func(ctx context.Context) error {
				_, err := pc.CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", Provider: provNewProvider("p2")})
				return err
			},
			"get": func(ctx context.Context) error {
				_, err := pc.GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: "tenants/acme/providers/p1"})
				return err
			},
			"list": func(ctx context.Context) error {
				_, err := pc.ListProviders(ctx, &mcpauthv1.ListProvidersRequest{Parent: "tenants/acme"})
				return err
			},
			"update": func(ctx context.Context) error {
				_, err := pc.UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
					Provider:   &mcpauthv1.Provider{Name: "tenants/acme/providers/p1", DisplayName: "x"},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
				return err
			},
			"delete": func(ctx context.Context) error {
				_, err := pc.DeleteProvider(ctx, &mcpauthv1.DeleteProviderRequest{Name: "tenants/acme/providers/p1"})
				return err
			},
		}
		keys := []struct {
			name string
			ctx  func(t *testing.T) context.Context
		}{
			{"no key", func(t *testing.T) context.Context { return Ctx(t, "") }},
			{"bad key", func(t *testing.T) context.Context { return Ctx(t, "not-a-key") }},
			{"admin key with one byte changed", func(t *testing.T) context.Context {
				k := []byte(s.AdminKey)
				k[len(k)-1] ^= 1
				return Ctx(t, string(k))
			}},
			{"basic scheme", func(t *testing.T) context.Context {
				return metadata.AppendToOutgoingContext(Ctx(t, ""), "authorization", "Basic "+s.AdminKey)
			}},
			{"bare key", func(t *testing.T) context.Context {
				return metadata.AppendToOutgoingContext(Ctx(t, ""), "authorization", s.AdminKey)
			}},
		}
		for _, k := range keys {
			for name, call := range calls {
				t.Run(k.name+"/"+name, func(t *testing.T) {
					provStatus(t, call(k.ctx(t)), codes.Unauthenticated)
				})
			}
		}
		// Nothing changed, nothing was audited as a provider event.
		if got := provListAll(t, s, s.AdminKey, "acme", 0); len(got[0]) != 1 || got[0][0].GetDisplayName() != "Provider p1" {
			t.Fatalf("unauthenticated calls changed the providers: %v", got)
		}
		if n := provRowCount(t, s, "audit_events"); n != 1 {
			t.Fatalf("audit events = %d, want 1 (the create)", n)
		}

		t.Run("health without key", func(t *testing.T) {
			resp, err := healthpb.NewHealthClient(s.Conn).Check(Ctx(t, ""), &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatalf("health check: %v", err)
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health = %v, want SERVING", resp.GetStatus())
			}
		})
		t.Run("reflection without key", func(t *testing.T) {
			services := provReflectServices(t, s.Conn)
			for _, want := range []string{"mcpauth.v1.MCPProviderService", "mcpauth.v1.OAuthService", "grpc.health.v1.Health"} {
				if !slices.Contains(services, want) {
					t.Errorf("reflection lists %q, missing %q", services, want)
				}
			}
		})
	})
}

// provReflectServices lists the services the server reflects, over the
// reflection v1 API, without an API key.
func provReflectServices(tb testing.TB, conn *grpc.ClientConn) []string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		tb.Fatalf("reflection stream: %v", err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"}}); err != nil {
		tb.Fatalf("reflection send: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		tb.Fatalf("reflection recv: %v", err)
	}
	_ = stream.CloseSend()
	var out []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		out = append(out, svc.GetName())
	}
	return out
}

// TestProviderAuthz checks tenants and permissions from a callers file:
// refusals do not depend on whether the resource exists, change nothing,
// and are audited in the tenant that was targeted.
func TestProviderAuthz(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		callerA, keyA := NewCaller(t, "caller-a", []string{"a"}, caller.All...)
		callerB, keyB := NewCaller(t, "caller-b", []string{"b"}, caller.ProvidersRead)
		callerC, keyC := NewCaller(t, "caller-c", []string{"a"}, caller.ProvidersRead)
		s := provStart(t, b, Options{Callers: &caller.File{Callers: []caller.FileCaller{callerA, callerB, callerC}}})
		pc := s.Providers()
		existing := provCreate(t, s, keyA, "a", "exists", provNewProvider("exists"))

		// B may read tenant b but not tenant a: the answer for an existing
		// and a missing provider must be indistinguishable.
		_, errExisting := pc.GetProvider(Ctx(t, keyB), &mcpauthv1.GetProviderRequest{Name: existing.GetName()})
		_, errMissing := pc.GetProvider(Ctx(t, keyB), &mcpauthv1.GetProviderRequest{Name: "tenants/a/providers/missing"})
		stE := provStatus(t, errExisting, codes.PermissionDenied)
		stM := provStatus(t, errMissing, codes.PermissionDenied)
		if stE.Message() != stM.Message() || provErrorReason(stE) != provErrorReason(stM) || len(stE.Details()) != len(stM.Details()) {
			t.Fatalf("denials differ: existing %q %v, missing %q %v", stE.Message(), stE.Details(), stM.Message(), stM.Details())
		}
		if provErrorReason(stE) != "PERMISSION_DENIED" {
			t.Errorf("reason = %q, want PERMISSION_DENIED", provErrorReason(stE))
		}
		// B in its own tenant gets NOT_FOUND for a missing provider; A gets
		// PERMISSION_DENIED on tenant b.
		_, err := pc.GetProvider(Ctx(t, keyB), &mcpauthv1.GetProviderRequest{Name: "tenants/b/providers/missing"})
		provStatus(t, err, codes.NotFound)
		_, err = pc.ListProviders(Ctx(t, keyA), &mcpauthv1.ListProvidersRequest{Parent: "tenants/b"})
		provStatus(t, err, codes.PermissionDenied)
		_, err = pc.ListProviders(Ctx(t, keyB), &mcpauthv1.ListProvidersRequest{Parent: "tenants/a"})
		provStatus(t, err, codes.PermissionDenied)

		// C may read tenant a but not write it.
		if got := provGet(t, s, keyC, existing.GetName()); got.GetName() != existing.GetName() {
			t.Fatalf("C reads %v", got)
		}
		before := provRowCount(t, s, "providers")
		writes := map[string]func() error{
			"create": func() error {
				_, err := pc.CreateProvider(Ctx(t, keyC), &mcpauthv1.CreateProviderRequest{Parent: "tenants/a", Provider: provNewProvider("c")})
				return err
			},
			"update": func() error {
				_, err := pc.UpdateProvider(Ctx(t, keyC), &mcpauthv1.UpdateProviderRequest{
					Provider:   &mcpauthv1.Provider{Name: existing.GetName(), DisplayName: "by C"},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
				return err
			},
			"delete": func() error {
				_, err := pc.DeleteProvider(Ctx(t, keyC), &mcpauthv1.DeleteProviderRequest{Name: existing.GetName()})
				return err
			},
			"create in b by B": func() error {
				_, err := pc.CreateProvider(Ctx(t, keyB), &mcpauthv1.CreateProviderRequest{Parent: "tenants/b", Provider: provNewProvider("b")})
				return err
			},
		}
		for name, w := range writes {
			t.Run(name, func(t *testing.T) { provStatus(t, w(), codes.PermissionDenied) })
		}
		if after := provRowCount(t, s, "providers"); after != before {
			t.Fatalf("providers %d -> %d after refused writes", before, after)
		}
		if got := provGet(t, s, keyA, existing.GetName()); got.GetEtag() != existing.GetEtag() {
			t.Fatalf("a refused write changed the provider: %v", got)
		}

		// Every refusal is audited in the tenant it targeted, with the
		// caller and method, and tenant b's log holds nothing from tenant a.
		type denial struct{ actor, method string }
		var gotA []denial
		for _, e := range provAuditEvents(t, s, keyA, "a") {
			if e.GetEventType() != "permission.denied" {
				continue
			}
			if e.GetOutcome() != mcpauthv1.AuditOutcome_AUDIT_OUTCOME_DENIED {
				t.Errorf("denial outcome = %v", e.GetOutcome())
			}
			gotA = append(gotA, denial{e.GetActor(), e.GetDetails()["method"]})
		}
		wantA := []denial{
			{"caller-b", mcpauthv1.MCPProviderService_GetProvider_FullMethodName},
			{"caller-b", mcpauthv1.MCPProviderService_GetProvider_FullMethodName},
			{"caller-b", mcpauthv1.MCPProviderService_ListProviders_FullMethodName},
			{"caller-c", mcpauthv1.MCPProviderService_CreateProvider_FullMethodName},
			{"caller-c", mcpauthv1.MCPProviderService_UpdateProvider_FullMethodName},
			{"caller-c", mcpauthv1.MCPProviderService_DeleteProvider_FullMethodName},
		}
		less := func(x, y denial) int {
			if x.actor != y.actor {
				return cmp.Compare(x.actor, y.actor)
			}
			return cmp.Compare(x.method, y.method)
		}
		slices.SortFunc(gotA, less)
		slices.SortFunc(wantA, less)
		if !slices.Equal(gotA, wantA) {
			t.Fatalf("permission.denied events in tenant a = %v, want %v", gotA, wantA)
		}
		var inB int
		var rows []struct{ TenantID, Actor string }
		if err := s.Store().DB().Raw("SELECT tenant_id, actor FROM audit_events WHERE event_type = 'permission.denied'").Scan(&rows).Error; err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.TenantID == "b" {
				inB++
			}
		}
		// A's list of tenant b and B's create in tenant b.
		if inB != 2 || len(rows) != 8 {
			t.Fatalf("denials per tenant: %v, want 6 in a and 2 in b", rows)
		}
	})
}
