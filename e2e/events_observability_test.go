package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// evLogLines returns the JSON log lines of s whose message starts with msg.
func evLogLines(tb testing.TB, s *Service, msg string) []map[string]any {
	tb.Helper()
	var out []map[string]any
	for _, line := range strings.Split(s.Logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if m, _ := rec["msg"].(string); strings.HasPrefix(m, msg) {
			out = append(out, rec)
		}
	}
	return out
}

// evWaitMetric polls /metrics until series reaches at least want and
// returns the last exposition.
func evWaitMetric(tb testing.TB, s *Service, series string, want float64, within time.Duration) string {
	tb.Helper()
	deadline := time.Now().Add(within)
	for {
		exp := tokMetrics(tb, s)
		if tokMetricValue(tb, exp, series) >= want {
			return exp
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s = %v after %v, want >= %v", series, tokMetricValue(tb, exp, series), within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestWebhookFailuresObservable: a receiver refusing every message (401,
// as with a wrong secret) shows in mcpauth_webhook_attempts_total (failed,
// then dead after the last attempt) and in the log, a WARN line per failed
// attempt and an ERROR line when the delivery is dead, naming the tenant,
// endpoint, provider, event, attempt and answer, never the secret or the
// URL's path and query; once redelivered to a receiver that accepts it, the
// delivery counts as delivered with its lag, and no metric names the
// tenant or the endpoint.
func TestWebhookFailuresObservable(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Postgres: true, Env: evEnv(map[string]string{"MCPAUTH_WEBHOOK_MAX_ATTEMPTS": "3"})})
	const (
		tenant   = "tenant-obs-k4"
		endpoint = "endpoint-obs-z8"
		query    = "token=query-secret-m3"
	)
	r := evNewReceiver(t) // no secret yet: every signature fails, 401
	resp, err := s.Webhooks().CreateWebhookEndpoint(Ctx(t, s.AdminKey), &mcpauthv1.CreateWebhookEndpointRequest{
		Parent: "tenants/" + tenant, WebhookEndpointId: endpoint,
		WebhookEndpoint: &mcpauthv1.WebhookEndpoint{Url: r.srv.URL + "/hook-path-p2?" + query, EventTypes: []string{"provider.created"}}})
	if err != nil {
		t.Fatalf("CreateWebhookEndpoint: %v", err)
	}
	signing := resp.GetSigningSecret()
	provCreate(t, s, s.AdminKey, tenant, "prov-obs", provNewProvider("obs"))

	exp := evWaitMetric(t, s, `mcpauth_webhook_attempts_total{class="4xx",outcome="dead"}`, 1, 30*time.Second)
	if v := tokMetricValue(t, exp, `mcpauth_webhook_attempts_total{class="4xx",outcome="failed"}`); v != 2 {
		t.Errorf(`attempts{class="4xx",outcome="failed"} = %v, want 2 (three attempts, the last one dead)`, v)
	}
	if v := tokMetricValue(t, exp, "mcpauth_webhook_attempt_duration_seconds_count"); v != 3 {
		t.Errorf("mcpauth_webhook_attempt_duration_seconds_count = %v, want 3", v)
	}
	if n := r.attempts(); n != 3 {
		t.Errorf("receiver saw %d attempts, want 3", n)
	}

	warns := evLogLines(t, s, "webhook delivery attempt failed")
	if len(warns) != 2 {
		t.Fatalf("%d WARN lines for failed attempts, want 2:\n%s", len(warns), s.Logs.String())
	}
	var eventID string
	for i, w := range warns {
		if w["level"] != "WARN" || w["tenant"] != tenant || w["endpoint"] != endpoint || w["provider"] != "prov-obs" ||
			w["event_type"] != "provider.created" || w["status"] != float64(401) || w["class"] != "4xx" ||
			w["attempt"] != float64(i+1) || w["next_attempt"] == nil || w["err"] == nil {
			t.Errorf("WARN line %v lacks the delivery's fields", w)
		}
		if id, _ := w["event_id"].(string); id == "" || eventID != "" && id != eventID {
			t.Errorf("WARN line %v: event_id %q, want the same event on every attempt", w, id)
		} else {
			eventID = id
		}
	}
	deads := evLogLines(t, s, "webhook delivery dead")
	if len(deads) != 1 || deads[0]["level"] != "ERROR" || deads[0]["event_id"] != eventID || deads[0]["attempt"] != float64(3) ||
		deads[0]["status"] != float64(401) || deads[0]["tenant"] != tenant || deads[0]["endpoint"] != endpoint {
		t.Fatalf("dead delivery lines %v, want one ERROR about event %s after 3 attempts", deads, eventID)
	}
	if u, _ := deads[0]["url"].(string); !strings.HasPrefix(u, "http://127.0.0.1:") {
		t.Errorf("url %q, want the endpoint's origin", u)
	}
	logs := s.Logs.String()
	for what, leak := range map[string]string{"signing secret": strings.TrimPrefix(signing, "whsec_"), "whsec_ prefix": "whsec_",
		"URL query": "query-secret-m3", "URL path": "hook-path-p2", "body": `"data":{`} {
		if strings.Contains(logs, leak) {
			t.Errorf("the log shows the %s", what)
		}
	}

	// Redelivered to a receiver that accepts it: delivered, with its lag.
	r.setSecret(signing)
	if _, err := s.Webhooks().RedeliverWebhookEvent(Ctx(t, s.AdminKey), &mcpauthv1.RedeliverWebhookEventRequest{
		Name: "tenants/" + tenant + "/webhookEndpoints/" + endpoint, AuditEvent: "tenants/" + tenant + "/auditEvents/" + eventID}); err != nil {
		t.Fatal(err)
	}
	exp = evWaitMetric(t, s, `mcpauth_webhook_attempts_total{class="2xx",outcome="delivered"}`, 1, 30*time.Second)
	if v := tokMetricValue(t, exp, "mcpauth_webhook_delivery_lag_seconds_count"); v != 1 {
		t.Errorf("mcpauth_webhook_delivery_lag_seconds_count = %v, want 1", v)
	}
	if n := len(evLogLines(t, s, "webhook delivery")); n != 3 {
		t.Errorf("%d webhook delivery log lines after the success, want still 3 (no line per delivered message)", n)
	}
	for _, leak := range []string{tenant, endpoint, "prov-obs", eventID, strings.TrimPrefix(r.srv.URL, "http://")} {
		if strings.Contains(exp, leak) {
			t.Errorf("/metrics shows %q", leak)
		}
	}
}
