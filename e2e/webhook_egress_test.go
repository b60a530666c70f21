package e2e

import (
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestWebhookEgressRefusalAudited: an endpoint URL the egress policy
// refuses (http://10.0.0.1 with only 127.0.0.1 allowed), at creation or in
// an update, is refused with INVALID_ARGUMENT on webhook_endpoint.url and
// changes nothing; each refusal is one egress.blocked audit event of the
// tenant, with the caller, the request id, the endpoint and its URL masked
// (no path or query), and one warning that names the tenant. Refusals used
// to be logged as "egress blocked outside a tenant scope", unaudited, and
// the call's log line said the reason twice.
func TestWebhookEgressRefusalAudited(t *testing.T) {
	t.Parallel()
	hookURL := acceptingReceiver(t)
	s := Start(t, Options{Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"}})
	ctx := Ctx(t, s.AdminKey)
	good, err := s.Webhooks().CreateWebhookEndpoint(ctx, &mcpauthv1.CreateWebhookEndpointRequest{Parent: "tenants/acme",
		WebhookEndpointId: "good", WebhookEndpoint: &mcpauthv1.WebhookEndpoint{Url: hookURL + "/hook"}})
	if err != nil {
		t.Fatal(err)
	}
	const secretQuery = "token=s3cret-in-query"
	refused := func(what string, call func(opt grpc.CallOption) error) string {
		t.Helper()
		var hdr metadata.MD
		st := provStatus(t, call(grpc.Header(&hdr)), codes.InvalidArgument)
		if v := provViolations(st); len(v) != 1 || v[0] != "webhook_endpoint.url" {
			t.Errorf("%s: violations %v, want one on webhook_endpoint.url", what, v)
		}
		if r := provErrorReason(st); r != "EGRESS_BLOCKED" {
			t.Errorf("%s: reason %q, want EGRESS_BLOCKED", what, r)
		}
		if id := hdr.Get("x-request-id"); len(id) == 1 {
			return id[0]
		}
		t.Fatalf("%s: no request id in the answer's header", what)
		return ""
	}
	createID := refused("create", func(opt grpc.CallOption) error {
		_, err := s.Webhooks().CreateWebhookEndpoint(ctx, &mcpauthv1.CreateWebhookEndpointRequest{Parent: "tenants/acme",
			WebhookEndpointId: "bad", WebhookEndpoint: &mcpauthv1.WebhookEndpoint{Url: "http://10.0.0.1/"}}, opt)
		return err
	})
	updateID := refused("update", func(opt grpc.CallOption) error {
		_, err := s.Webhooks().UpdateWebhookEndpoint(ctx, &mcpauthv1.UpdateWebhookEndpointRequest{
			WebhookEndpoint: &mcpauthv1.WebhookEndpoint{Name: good.GetWebhookEndpoint().GetName(), Url: "http://10.0.0.1/hook?" + secretQuery},
			UpdateMask:      &fieldmaskpb.FieldMask{Paths: []string{"url"}}}, opt)
		return err
	})

	// Nothing changed: one endpoint, on its first URL.
	list, err := s.Webhooks().ListWebhookEndpoints(ctx, &mcpauthv1.ListWebhookEndpointsRequest{Parent: "tenants/acme"})
	if err != nil {
		t.Fatal(err)
	}
	if eps := list.GetWebhookEndpoints(); len(eps) != 1 || eps[0].GetUrl() != hookURL+"/hook" || eps[0].GetUpdateTime().AsTime() != good.GetWebhookEndpoint().GetUpdateTime().AsTime() {
		t.Errorf("endpoints after the refusals: %v, want only %v unchanged", eps, good.GetWebhookEndpoint())
	}

	// The audit log: one egress.blocked event per refusal, by the caller
	// who created the good endpoint.
	var actor string
	var blocked []*mcpauthv1.AuditEvent
	for _, e := range provAuditEvents(t, s, s.AdminKey, "acme") {
		switch e.GetEventType() {
		case "webhook.endpoint.changed":
			actor = e.GetActor()
		case "egress.blocked":
			blocked = append(blocked, e)
		}
	}
	want := map[string]map[string]string{
		createID: {"webhook_endpoint": "bad", "url": "http://10.0.0.1", "host": "10.0.0.1", "rule": "https required"},
		updateID: {"webhook_endpoint": "good", "url": "http://10.0.0.1/******", "host": "10.0.0.1", "rule": "https required"},
	}
	if len(blocked) != 2 {
		t.Errorf("%d egress.blocked events, want 2: %v", len(blocked), blocked)
	}
	for _, e := range blocked {
		w, ok := want[e.GetRequestId()]
		if !ok {
			t.Errorf("egress.blocked event %v has request id %q, want %q or %q", e, e.GetRequestId(), createID, updateID)
			continue
		}
		delete(want, e.GetRequestId())
		if actor == "" || e.GetActor() != actor || e.GetOutcome() != mcpauthv1.AuditOutcome_AUDIT_OUTCOME_DENIED ||
			e.GetReason() != "EGRESS_BLOCKED" || !maps.Equal(e.GetDetails(), w) {
			t.Errorf("egress.blocked event %v, want actor %q, outcome DENIED, reason EGRESS_BLOCKED, details %v", e, actor, w)
		}
	}

	// The log: one warning per refusal naming the tenant, and no line
	// saying the reason twice; the URL's query nowhere.
	logs := s.Logs.String()
	warned := 0
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["msg"] == "egress blocked" {
			warned++
			if rec["tenant"] != "acme" || rec["reason"] != "https required" || rec["host"] != "10.0.0.1" {
				t.Errorf("logged %s, want the tenant acme, host 10.0.0.1 and the reason", line)
			}
		}
		if strings.Count(line, "https required") > 1 {
			t.Errorf("log line says the reason more than once: %s", line)
		}
	}
	if warned != 2 {
		t.Errorf("%d \"egress blocked\" warnings, want 2:\n%s", warned, logs)
	}
	if strings.Contains(logs, "outside a tenant scope") || strings.Contains(logs, "s3cret") {
		t.Errorf("the log says the refusals were outside a tenant scope, or quotes the URL's query:\n%s", logs)
	}
}

// acceptingReceiver returns the URL of a webhook receiver on 127.0.0.1 that
// answers every delivery 204, closed when tb ends.
func acceptingReceiver(tb testing.TB) string {
	tb.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	tb.Cleanup(srv.Close)
	return srv.URL
}
