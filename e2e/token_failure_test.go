package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestTokenReauthRequired: a dead refresh token (invalid_grant) turns the
// authorization into REAUTH_REQUIRED with a structured error telling the
// caller where to start again; the dynamic client registration survives,
// the event is audited, and later reads do not hammer the server.
func TestTokenReauthRequired(t *testing.T) {
	t.Parallel()
	c := tokStart(t, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: tokLifetime}})
	before := c.status(t)
	check := tokCounters(c.AS)
	c.AS.ExpireRefreshTokens()
	c.waitDue(t, tokDueMargin)

	_, err := c.get(c.ctx(t), 0)
	info := tokErrorInfo(t, err, codes.FailedPrecondition)
	if info.GetReason() != "REAUTH_REQUIRED" {
		t.Fatalf("reason %q, want REAUTH_REQUIRED", info.GetReason())
	}
	if got, want := info.GetMetadata()["start_authorization_path"], "/v1/"+c.Name+":startAuthorization"; got != want {
		t.Errorf("start_authorization_path %q, want %q", got, want)
	}
	if got := info.GetMetadata()["provider"]; got != c.Name {
		t.Errorf("provider %q, want %q", got, c.Name)
	}
	if d := c.AS.RefreshCount() - check.refreshes; d != 1 {
		t.Errorf("%d refresh attempts, want 1 (invalid_grant is not retried)", d)
	}

	st := c.status(t)
	if st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_REAUTH_REQUIRED {
		t.Fatalf("status %s, want REAUTH_REQUIRED", st.GetStatus())
	}
	if st.GetHasRefreshToken() {
		t.Error("a dead refresh token is still reported as held")
	}
	reg, err := c.Replicas[0].Store().GetClientRegistration(context.Background(), c.Tenant, c.ID, before.GetIssuer())
	if err != nil {
		t.Fatalf("the client registration was not kept: %v", err)
	}
	if reg.ClientID == "" {
		t.Fatal("the kept client registration has no client id")
	}
	tokWait(t, "the oauth.reauth_required audit event", 10*time.Second, func() bool {
		return len(c.tokAudit(t, "oauth.reauth_required")) > 0
	})
	if ev := c.tokAudit(t, "oauth.reauth_required")[0]; ev.GetReason() != "INVALID_GRANT" ||
		ev.GetOutcome() != mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE {
		t.Errorf("audit event %v, want reason INVALID_GRANT and outcome FAILURE", ev)
	}

	requests := len(c.AS.Requests())
	_, err = c.get(c.ctx(t), 0)
	if info := tokErrorInfo(t, err, codes.FailedPrecondition); info.GetReason() != "REAUTH_REQUIRED" {
		t.Fatalf("second call: reason %q, want REAUTH_REQUIRED", info.GetReason())
	}
	if n := len(c.AS.Requests()); n != requests {
		t.Fatalf("the second GetAccessToken sent %d requests to the authorization server", n-requests)
	}
}

// TestTokenRefreshBoundedWhenServerHangs: with the token expired and the
// authorization server hanging, GetAccessToken never hangs: a caller's own
// deadline ends its call with DEADLINE_EXCEEDED, and without one the
// refresh gives up after the lock TTL. The hung request consumed nothing,
// so the refresh succeeds once the server answers again.
func TestTokenRefreshBoundedWhenServerHangs(t *testing.T) {
	t.Parallel()
	const lockTTL = 2 * time.Second
	c := tokStart(t, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: tokLifetime},
		Env: map[string]string{"MCPAUTH_REFRESH_LOCK_TTL": lockTTL.String()}})
	old := c.mustGet(t, 0).GetAccessToken()
	check := tokCounters(c.AS)
	c.waitDue(t, 0)
	c.AS.SetTokenDelay(30 * time.Second)

	ctx, cancel := context.WithTimeout(c.ctx(t), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := c.get(ctx, 0)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("with a 300ms deadline: %v, want DEADLINE_EXCEEDED", err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("a call with a 300ms deadline took %s", d)
	}

	// A caller without a short deadline joins the refresh still in flight,
	// which the lock TTL bounds.
	_, err = c.get(c.ctx(t), 0)
	elapsed := time.Since(t0)
	if info := tokErrorInfo(t, err, codes.Unavailable); info.GetReason() != "UNAVAILABLE" {
		t.Fatalf("while the server hangs: reason %q, want UNAVAILABLE", info.GetReason())
	}
	if elapsed > lockTTL+time.Second {
		t.Errorf("the hung refresh held callers for %s, beyond the lock TTL %s", elapsed, lockTTL)
	}
	if n := len(tokRefreshRequests(c.AS)) - check.records; n != 1 {
		t.Errorf("%d refresh requests while the server hangs, want 1", n)
	}

	c.AS.SetTokenDelay(0)
	tok := c.mustGet(t, 0).GetAccessToken()
	if tok == old {
		t.Fatal("the expired token was served")
	}
	tokValid(t, c.AS, tok)
	if d := c.AS.RefreshCount() - check.refreshes; d != 1 {
		t.Errorf("server processed %d refreshes, want 1 (the hung one never was)", d)
	}
	if d := c.AS.ReuseRejections() - check.reuse; d != 0 {
		t.Errorf("%d reuse rejections", d)
	}
}

// TestTokenServedWhileServerDown: when a token is due but still valid and
// the authorization server hangs or answers 503, the caller gets the
// still-valid token (within the lock TTL) rather than an error.
func TestTokenServedWhileServerDown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fault func(as *testauthz.AuthServer)
	}{
		{"hang", func(as *testauthz.AuthServer) { as.SetTokenDelay(30 * time.Second) }},
		{"503", func(as *testauthz.AuthServer) { as.SetTokenStatus(503, "") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// An 8 s token has a refresh margin of min(lifetime/4,
			// MARGIN_MAX) = 1.75 to 2 s (fosite's whole seconds): 1.6 s
			// before expiry it is due, and still valid after a refresh
			// attempt bounded by the 1 s lock TTL.
			const lockTTL = time.Second
			c := tokStart(t, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: 8 * time.Second},
				Env: map[string]string{"MCPAUTH_REFRESH_LOCK_TTL": lockTTL.String(), "MCPAUTH_REFRESH_MARGIN_MAX": "2s"}})
			old := c.mustGet(t, 0).GetAccessToken()
			check := tokCounters(c.AS)
			exp := c.waitDue(t, 1600*time.Millisecond)
			tc.fault(c.AS)

			t0 := time.Now()
			tok := c.mustGet(t, 0)
			if d := time.Since(t0); d > lockTTL+500*time.Millisecond {
				t.Errorf("serving the still-valid token took %s", d)
			}
			if time.Now().After(exp) {
				t.Fatal("the token expired during the attempt: the test's timing assumptions do not hold")
			}
			if tok.GetAccessToken() != old {
				t.Fatal("did not get the still-valid token")
			}
			tokValid(t, c.AS, tok.GetAccessToken())
			if n := len(tokRefreshRequests(c.AS)) - check.records; n < 1 {
				t.Error("no refresh was attempted")
			}
			if d := c.AS.RefreshCount() - check.refreshes; d != 0 {
				t.Errorf("server processed %d refreshes during the fault", d)
			}
			tokWait(t, "the oauth.token.refresh_failed audit event", 10*time.Second, func() bool {
				return len(c.tokAudit(t, "oauth.token.refresh_failed")) > 0
			})
			if st := c.status(t); st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
				t.Fatalf("status %s after a temporary failure, want AUTHORIZED", st.GetStatus())
			}
		})
	}
}

// TestTokenRefreshRetryAfter: a 503 with Retry-After: 1 is retried no
// sooner than one second later, and the retry succeeds once the server has
// recovered.
func TestTokenRefreshRetryAfter(t *testing.T) {
	t.Parallel()
	c := tokStart(t, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: tokLifetime}})
	old := c.mustGet(t, 0).GetAccessToken()
	check := tokCounters(c.AS)
	c.waitDue(t, 0)
	c.AS.SetTokenStatus(503, "1")
	start, results := c.tokCallers(t, 1, []int{0}, 30*time.Second)
	close(start)
	// Recover as soon as the first attempt has been answered with the 503.
	tokWait(t, "the first refresh attempt", 10*time.Second, func() bool {
		return len(tokRefreshRequests(c.AS)) > check.records
	})
	c.AS.SetTokenStatus(0, "")

	tok := tokSameToken(t, tokCollect(t, results, 1))
	if tok == old {
		t.Fatal("the expired token was served")
	}
	tokValid(t, c.AS, tok)
	reqs := tokRefreshRequests(c.AS)[check.records:]
	if len(reqs) != 2 {
		t.Fatalf("%d refresh requests, want the 503 and one retry", len(reqs))
	}
	if gap := reqs[1].Time.Sub(reqs[0].Time); gap < time.Second {
		t.Errorf("retried %s after a 503 with Retry-After: 1", gap)
	}
	if reqs[0].Form.Get("refresh_token") != reqs[1].Form.Get("refresh_token") {
		t.Error("the retry used another refresh token")
	}
	if d := c.AS.RefreshCount() - check.refreshes; d != 1 {
		t.Errorf("server processed %d refreshes, want 1", d)
	}
	if d := c.AS.ReuseRejections() - check.reuse; d != 0 {
		t.Errorf("%d reuse rejections", d)
	}
}
