package webhooks

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/repository"
)

// TestRoute: an event goes to the endpoints that existed when it happened
// and whose type filter takes it, with the body naming it as the API does.
func TestRoute(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	d := &Dispatcher{now: func() time.Time { return at }, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ev := &repository.AuditEvent{ID: 7, TxID: 99, UID: "0123456789abcdef0123456789abcdef", TenantID: "acme", CreatedAt: at,
		EventType: "oauth.reauth_required", ProviderID: "linear", UserID: "alice@acme", Outcome: 2, Reason: "INVALID_GRANT", Details: `{"k":"v"}`}
	eps := []repository.WebhookEndpoint{
		{TenantID: "acme", ID: "all", CreatedAt: at.Add(-time.Hour)},
		{TenantID: "acme", ID: "reauth", EventTypes: "provider.created,oauth.reauth_required", CreatedAt: at.Add(-time.Hour)},
		{TenantID: "acme", ID: "created-only", EventTypes: "provider.created", CreatedAt: at.Add(-time.Hour)},
		{TenantID: "acme", ID: "later", CreatedAt: at.Add(time.Second)},
	}
	out := d.route(ev, eps)
	var ids []string
	for _, dl := range out {
		ids = append(ids, dl.EndpointID)
		if dl.EventUID != ev.UID || dl.EventTxID != 99 || dl.EventID != 7 || dl.ProviderID != "linear" || dl.State != repository.DeliveryPending {
			t.Errorf("delivery %+v does not carry the event's id, feed position and provider", dl)
		}
	}
	if len(ids) != 2 || ids[0] != "all" || ids[1] != "reauth" {
		t.Fatalf("routed to %v, want [all reauth]", ids)
	}
	var body struct {
		Type      string    `json:"type"`
		Timestamp time.Time `json:"timestamp"`
		Data      struct {
			Name, EventType, Provider, User, Outcome, Reason string
			Details                                          map[string]string
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(out[0].Payload), &body); err != nil {
		t.Fatal(err)
	}
	if body.Type != "oauth.reauth_required" || !body.Timestamp.Equal(at) || body.Data.Name != "tenants/acme/auditEvents/"+ev.UID ||
		body.Data.Provider != "tenants/acme/providers/linear" || body.Data.User != "alice@acme" || body.Data.Outcome != "FAILURE" || body.Data.Reason != "INVALID_GRANT" ||
		body.Data.Details["k"] != "v" {
		t.Errorf("payload %s", out[0].Payload)
	}
}

// TestBackoff: each retry waits between half and all of the doubled
// delay, capped.
func TestBackoff(t *testing.T) {
	t.Parallel()
	d := &Dispatcher{cfg: DispatchConfig{BackoffBase: time.Second, BackoffMax: 10 * time.Second}}
	for n, max := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 30: 10 * time.Second} {
		for range 100 {
			if got := d.backoff(n); got < max/2 || got > max {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, got, max/2, max)
			}
		}
	}
}

// TestAttemptClass: the class label is the status class of an answer,
// "blocked" for an egress refusal however wrapped, "error" otherwise.
func TestAttemptClass(t *testing.T) {
	t.Parallel()
	blocked := fmt.Errorf("webhook: %w", &net.OpError{Op: "dial", Net: "tcp",
		Err: &egress.BlockedError{Host: "hooks.example.com", Reason: "private address"}})
	for _, tt := range []struct {
		status int
		err    error
		want   string
	}{
		{204, nil, "2xx"}, {301, errors.New("webhook: endpoint answered 301"), "3xx"},
		{401, errors.New("webhook: endpoint answered 401"), "4xx"}, {503, errors.New("webhook: endpoint answered 503"), "5xx"},
		{0, blocked, "blocked"}, {0, errors.New("webhook: context deadline exceeded"), "error"}, {0, errNoSecret, "error"},
		{999, errors.New("webhook: endpoint answered 999"), "error"},
	} {
		if got := attemptClass(tt.status, tt.err); got != tt.want {
			t.Errorf("attemptClass(%d, %v) = %q, want %q", tt.status, tt.err, got, tt.want)
		}
	}
}
