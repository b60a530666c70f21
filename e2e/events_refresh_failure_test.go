package e2e

import (
	"context"
	"encoding/json"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	"github.com/mcpauth/mcpauth/internal/testenv"
	"github.com/mcpauth/mcpauth/repository"
)

// rfWatched is one event a WatchEvents subscriber received, with when.
type rfWatched struct {
	ev      *mcpauthv1.AuditEvent
	arrived time.Time
}

// rfWatcher is a WatchEvents subscriber that keeps every event it received,
// across reconnections, in order.
type rfWatcher struct {
	mu     sync.Mutex
	got    []rfWatched
	notify chan struct{}
}

// follow subscribes to tenant's events on s after the event named after
// ("" from now) and records them until ctx ends or the stream breaks. It
// returns once the stream is open.
func (w *rfWatcher) follow(tb testing.TB, ctx context.Context, s *Service, tenant, after string) <-chan error {
	tb.Helper()
	stream, err := s.Audit().WatchEvents(metadataCtx(ctx, s.AdminKey), &mcpauthv1.WatchEventsRequest{Parent: "tenants/" + tenant, ResumeAfter: after})
	if err != nil {
		tb.Fatalf("WatchEvents: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				done <- err
				return
			}
			w.mu.Lock()
			w.got = append(w.got, rfWatched{ev: m.GetAuditEvent(), arrived: time.Now()})
			w.mu.Unlock()
			select {
			case w.notify <- struct{}{}:
			default:
			}
		}
	}()
	return done
}

func (w *rfWatcher) all() []rfWatched {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.got)
}

// waitFor waits until the event named name was received and returns it.
func (w *rfWatcher) waitFor(tb testing.TB, name string, within time.Duration) rfWatched {
	tb.Helper()
	deadline := time.After(within)
	for {
		for _, g := range w.all() {
			if g.ev.GetName() == name {
				return g
			}
		}
		select {
		case <-w.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			tb.Fatalf("the WatchEvents subscriber did not receive %s within %s (%d events received)", name, within, len(w.all()))
		}
	}
}

// rfPayload is a webhook message body in full, as the receiver reads it.
type rfPayload struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      struct {
		Name      string            `json:"name"`
		EventType string            `json:"event_type"`
		Actor     string            `json:"actor"`
		Provider  string            `json:"provider"`
		User      string            `json:"user"`
		Outcome   string            `json:"outcome"`
		Reason    string            `json:"reason"`
		RequestID string            `json:"request_id"`
		Details   map[string]string `json:"details"`
	} `json:"data"`
}

// rfProvider is a provider authorized against its own authorization server.
type rfProvider struct {
	id, name string
	as       *testauthz.AuthServer
}

// rfAuditSince returns tenant's audit events after the one named after,
// oldest first, as ListAuditEvents returns them.
func rfAuditSince(tb testing.TB, s *Service, tenant, after string) []*mcpauthv1.AuditEvent {
	tb.Helper()
	evs := provAuditEvents(tb, s, s.AdminKey, tenant)
	slices.Reverse(evs)
	i := slices.IndexFunc(evs, func(e *mcpauthv1.AuditEvent) bool { return e.GetName() == after })
	if i < 0 {
		tb.Fatalf("ListAuditEvents no longer lists %s", after)
	}
	return evs[i+1:]
}

// TestEventsRefreshFailureSeenOutside checks, from outside, the promise
// "a webhook receiver and a WatchEvents subscriber see a refresh failure
// within a second of it happening, signed and exactly as the audit log
// records it, also across a restart", with real components: the mcpauthd
// binary as a child process, on PostgreSQL and on its embedded default (a
// SQLite file in the data directory), real authorization servers
// (fosite, dynamic registration) and MCP servers, providers authorized
// through a user agent, a Standard Webhooks receiver that verifies every
// signature, and a WatchEvents stream.
//
// A refresh fails in two ways, and the service names each with its own
// event: the authorization server cannot answer (503: the caller gets
// UNAVAILABLE, event oauth.token.refresh_failed, reason UNAVAILABLE) and
// the refresh token is dead (invalid_grant: REAUTH_REQUIRED, event
// oauth.reauth_required, reason INVALID_GRANT). Both are provoked through
// GetAccessToken, before a SIGKILL and again on the restarted process,
// and each must reach the receiver and the subscriber once, equal to what
// ListAuditEvents shows (same name, type, provider, outcome, reason,
// request id of the failing call). The times from the failing call's
// answer to the arrivals are logged, not asserted (the machine is shared
// and noisy); the waits are generous deadlines. One time is asserted, for
// a correctness property rather than speed: the killed process holds a
// live fan-out lease when it dies (one more event, fanned out and recorded
// just before the SIGKILL, renews it), and the first webhook after the
// restart arrives before that lease ends, which the restarted process
// achieves only by taking the dead one's lease over at once (its lead),
// not by waiting it out.
func TestEventsRefreshFailureSeenOutside(t *testing.T) {
	t.Parallel()
	t.Run("postgres", func(t *testing.T) { rfSeenOutside(t, testenv.PostgresDSN(t)) })
	// MCPAUTH_DATABASE_URL empty: the SQLite file in the data directory.
	t.Run("sqlite", func(t *testing.T) { rfSeenOutside(t, "") })
}

// rfSeenOutside is TestEventsRefreshFailureSeenOutside on the database
// dsn ("" for the SQLite file in the data directory).
func rfSeenOutside(t *testing.T, dsn string) {
	dataDir := t.TempDir()
	// The product's defaults (fan-out poll, backoff, leases), but for
	// egress: the receiver and the authorization servers are on 127.0.0.1.
	env := map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"}
	a := evSpawn(t, dsn, dataDir, env)
	sa := &Service{Conn: a.conn, AdminKey: a.key}
	const tenant = "acme"

	// Four providers, each on its own authorization server (2 s access
	// tokens, rotated refresh tokens) and MCP server, all authorized now:
	// two fail before the kill, two after the restart.
	provs := map[string]*rfProvider{}
	for _, id := range []string{"down-before", "dead-before", "down-after", "dead-after"} {
		as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, AccessTokenLifetime: 2 * time.Second})
		mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
		name := createProvider(t, sa, sa.AdminKey, tenant, id, mcp.URL(), nil)
		start, err := sa.OAuth().StartAuthorization(Ctx(t, sa.AdminKey), &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
		if err != nil {
			t.Fatalf("StartAuthorization(%s): %v", name, err)
		}
		if code, body, final := NewBrowser(t).Open(t, start.GetAuthorizationUrl()); code != 200 || !strings.Contains(body, "Authorization complete") {
			t.Fatalf("authorizing %s: final page %s: %d %s", name, final, code, body)
		}
		provs[id] = &rfProvider{id: id, name: name, as: as}
	}

	r := evNewReceiver(t)
	evCreateEndpoint(t, sa, tenant, "sink", r)
	// Everything after this event must reach the receiver (its endpoint
	// exists by then) and the subscriber, which resumes after it.
	before := provAuditEvents(t, sa, sa.AdminKey, tenant)
	if len(before) == 0 {
		t.Fatal("no audit events after authorizing and creating the endpoint")
	}
	origin := before[0].GetName()
	w := &rfWatcher{notify: make(chan struct{}, 1)}
	wctx, wcancel := context.WithCancel(context.Background())
	t.Cleanup(wcancel)
	wdone := w.follow(t, wctx, sa, tenant, origin)

	// fail provokes p's refresh failure of the given kind through
	// GetAccessToken on s, checks its event on the audit log, at the
	// receiver and at the subscriber, logs the arrival times and returns
	// when the receiver got it.
	fail := func(s *Service, p *rfProvider, unavailable bool, phase string) time.Time {
		t.Helper()
		// The stored access token must have expired: every read refreshes.
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
			st, err := s.OAuth().GetAuthorizationStatus(Ctx(t, s.AdminKey), &mcpauthv1.GetAuthorizationStatusRequest{Name: p.name})
			if err != nil {
				t.Fatalf("GetAuthorizationStatus(%s): %v", p.name, err)
			}
			if st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED || st.GetExpireTime() == nil {
				t.Fatalf("%s: status %v before its refresh, want AUTHORIZED with an expiry", p.name, st)
			}
			if time.Now().After(st.GetExpireTime().AsTime()) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the access token never expired", p.name)
			}
		}
		wantType, wantReason, wantCode, wantErr := "oauth.reauth_required", "INVALID_GRANT", codes.FailedPrecondition, "REAUTH_REQUIRED"
		if unavailable {
			wantType, wantReason, wantCode, wantErr = "oauth.token.refresh_failed", "UNAVAILABLE", codes.Unavailable, "UNAVAILABLE"
			p.as.SetTokenStatus(503, "")
		} else {
			p.as.ExpireRefreshTokens()
		}
		refreshes := len(tokRefreshRequests(p.as))
		var hdr metadata.MD
		_, err := s.OAuth().GetAccessToken(Ctx(t, s.AdminKey), &mcpauthv1.GetAccessTokenRequest{Name: p.name}, grpc.Header(&hdr))
		answered := time.Now()
		if info := tokErrorInfo(t, err, wantCode); info.GetReason() != wantErr {
			t.Fatalf("%s: GetAccessToken reason %q, want %q", p.name, info.GetReason(), wantErr)
		}
		if len(tokRefreshRequests(p.as)) == refreshes {
			t.Fatalf("%s: GetAccessToken did not try to refresh", p.name)
		}
		reqID := ""
		if v := hdr.Get("x-request-id"); len(v) == 1 {
			reqID = v[0]
		}

		// The audit log's record of the failure: one event of its type.
		var ev *mcpauthv1.AuditEvent
		tokWait(t, wantType+" on the audit log of "+p.name, 30*time.Second, func() bool {
			resp, err := s.Audit().ListAuditEvents(Ctx(t, s.AdminKey), &mcpauthv1.ListAuditEventsRequest{
				Parent: "tenants/" + tenant, Provider: p.name, EventType: wantType})
			if err != nil {
				t.Fatalf("ListAuditEvents: %v", err)
			}
			if n := len(resp.GetAuditEvents()); n > 1 {
				t.Fatalf("%d %s events for %s, want one", n, wantType, p.name)
			} else if n == 1 {
				ev = resp.GetAuditEvents()[0]
			}
			return ev != nil
		})
		if ev.GetOutcome() != mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE || ev.GetReason() != wantReason || ev.GetProvider() != p.name {
			t.Errorf("%s: audited %v, want outcome FAILURE, reason %s, provider %s", p.name, ev, wantReason, p.name)
		}
		if reqID == "" || ev.GetRequestId() != reqID {
			t.Errorf("%s: audited request id %q, want the failing call's %q", p.name, ev.GetRequestId(), reqID)
		}

		// At the receiver: signed (the receiver accepts only what verifies
		// with the Standard Webhooks algorithm), the body the audited event.
		var msg evMessage
		for _, m := range r.waitFor(t, []string{ev.GetName()}, 60*time.Second) {
			if m.Name == ev.GetName() {
				msg = m
				break
			}
		}
		var body rfPayload
		if err := json.Unmarshal(msg.Body, &body); err != nil {
			t.Fatalf("%s: webhook body %s: %v", p.name, msg.Body, err)
		}
		d := body.Data
		if msg.ID != strings.TrimPrefix(ev.GetName(), "tenants/"+tenant+"/auditEvents/") || body.Type != ev.GetEventType() ||
			d.Name != ev.GetName() || d.EventType != ev.GetEventType() || d.Provider != ev.GetProvider() || d.User != ev.GetUser() ||
			d.Outcome != strings.TrimPrefix(ev.GetOutcome().String(), "AUDIT_OUTCOME_") || d.Reason != ev.GetReason() ||
			d.RequestID != ev.GetRequestId() || d.Actor != ev.GetActor() || !maps.Equal(d.Details, ev.GetDetails()) ||
			!body.Timestamp.Equal(ev.GetCreateTime().AsTime()) {
			t.Errorf("%s: webhook-id %s body %s\ndoes not match the audited event %v", p.name, msg.ID, msg.Body, ev)
		}

		// At the subscriber: the very event ListAuditEvents returns.
		got := w.waitFor(t, ev.GetName(), 60*time.Second)
		if !proto.Equal(got.ev, ev) {
			t.Errorf("%s: watched %v\nlisted %v", p.name, got.ev, ev)
		}
		t.Logf("%s %s (%s): failing GetAccessToken answered; receiver got it %s later, subscriber %s later",
			phase, wantType, p.id, msg.Received.Sub(answered).Round(time.Millisecond), got.arrived.Sub(answered).Round(time.Millisecond))
		return msg.Received
	}

	// exactlyOnce checks that every event after origin on the audit log
	// reached the receiver and the subscriber, each once, and the
	// subscriber got them in the log's order with nothing else.
	exactlyOnce := func(s *Service) {
		t.Helper()
		listed := rfAuditSince(t, s, tenant, origin)
		r.waitFor(t, evNames(listed), 60*time.Second)
		w.waitFor(t, listed[len(listed)-1].GetName(), 60*time.Second)
		time.Sleep(time.Second) // a repeat would arrive meanwhile
		listed = rfAuditSince(t, s, tenant, origin)
		var watched []string
		for _, g := range w.all() {
			watched = append(watched, g.ev.GetName())
		}
		if want := evNames(listed); !slices.Equal(watched, want) {
			t.Errorf("the subscriber received %d events %v\nListAuditEvents lists %d after %s: %v", len(watched), watched, len(want), origin, want)
		}
		ids := map[string]int{}
		for _, m := range r.messages() {
			ids[m.ID]++
		}
		for id, n := range ids {
			if n != 1 {
				t.Errorf("webhook-id %s accepted %d times, want once", id, n)
			}
		}
		for _, e := range listed {
			if id := strings.TrimPrefix(e.GetName(), "tenants/"+tenant+"/auditEvents/"); ids[id] != 1 {
				t.Errorf("%s (%s) accepted %d times by the receiver, want once", e.GetName(), e.GetEventType(), ids[id])
			}
		}
		if bad := r.badSignatures(); len(bad) > 0 {
			t.Errorf("messages whose signature does not verify: %v", bad)
		}
	}

	// recorded waits until every delivery is recorded: what the receiver
	// accepted is not sent again by the next process.
	recorded := func() {
		t.Helper()
		tokWait(t, "the endpoint's deliveries recorded", 30*time.Second, func() bool {
			ep, err := sa.Webhooks().GetWebhookEndpoint(Ctx(t, sa.AdminKey), &mcpauthv1.GetWebhookEndpointRequest{Name: "tenants/" + tenant + "/webhookEndpoints/sink"})
			if err != nil {
				t.Fatalf("GetWebhookEndpoint: %v", err)
			}
			return ep.GetWebhookEndpoint().GetPendingDeliveries() == 0 && ep.GetWebhookEndpoint().GetDeliveredDeliveries() == int64(len(r.messages()))
		})
	}

	fail(sa, provs["down-before"], true, "before the kill:")
	fail(sa, provs["dead-before"], false, "before the kill:")
	exactlyOnce(sa)
	recorded()

	// The killed process must hold a live fan-out lease when it dies, or
	// the check after the restart would hold without a takeover: the lease
	// ends 5 s after the fan-out's last record, and the feed has been idle
	// since. One more event (a provider created), fanned out and recorded
	// just before the kill, renews it.
	dbDSN := dsn
	if dbDSN == "" {
		dbDSN = filepath.Join(dataDir, "mcpauth.db")
	}
	st, err := repository.Open(context.Background(), dbDSN, repository.Options{})
	if err != nil {
		t.Fatalf("open the database: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: provs["down-before"].as})
	fresh := createProvider(t, sa, sa.AdminKey, tenant, "fresh", mcp.URL(), nil)
	var created *mcpauthv1.AuditEvent
	tokWait(t, "provider.created of "+fresh+" on the audit log", 30*time.Second, func() bool {
		resp, err := sa.Audit().ListAuditEvents(Ctx(t, sa.AdminKey), &mcpauthv1.ListAuditEventsRequest{
			Parent: "tenants/" + tenant, Provider: fresh, EventType: "provider.created"})
		if err != nil {
			t.Fatalf("ListAuditEvents: %v", err)
		}
		if evs := resp.GetAuditEvents(); len(evs) > 0 {
			created = evs[0]
		}
		return created != nil
	})
	r.waitFor(t, []string{created.GetName()}, 60*time.Second)
	w.waitFor(t, created.GetName(), 60*time.Second)
	recorded()

	seen := w.all()
	last := seen[len(seen)-1].ev.GetName()
	wcancel()
	<-wdone
	var lease struct {
		LeaseOwner string
		LeaseUntil *time.Time
	}
	if err := st.DB().Raw("SELECT lease_owner, lease_until FROM event_cursors WHERE name = ?", "webhooks").Scan(&lease).Error; err != nil {
		t.Fatalf("read the fan-out cursor: %v", err)
	}
	killed := time.Now()
	a.kill()
	if lease.LeaseOwner == "" || lease.LeaseUntil == nil || !lease.LeaseUntil.After(killed) {
		t.Fatalf("the killed process's fan-out lease (owner %q, until %v) was not live at the SIGKILL (%v), although its last record renewed it just before: the check of the takeover would be vacuous",
			lease.LeaseOwner, lease.LeaseUntil, killed)
	}
	t.Logf("the killed process's fan-out lease had %s left at the SIGKILL", lease.LeaseUntil.Sub(killed).Round(time.Millisecond))

	b := evSpawn(t, dsn, dataDir, env)
	ready := time.Now()
	t.Logf("the new process was ready %s after the SIGKILL", ready.Sub(killed).Round(time.Millisecond))
	sb := &Service{Conn: b.conn, AdminKey: b.key}
	wctx2, wcancel2 := context.WithCancel(context.Background())
	t.Cleanup(wcancel2)
	w.follow(t, wctx2, sb, tenant, last)
	first := fail(sb, provs["down-after"], true, "after the restart:")
	t.Logf("the first webhook after the restart arrived %s after the SIGKILL, %s before the killed process's lease would have ended",
		first.Sub(killed).Round(time.Millisecond), lease.LeaseUntil.Sub(first).Round(time.Millisecond))
	if !first.Before(*lease.LeaseUntil) {
		why := "the restarted process waited the live lease out instead of taking it over"
		if !ready.Before(*lease.LeaseUntil) {
			why = "the new process was ready only after the lease had ended: the machine was too slow to tell a takeover from a wait"
		}
		t.Errorf("the first webhook after the restart arrived at %s, not before the killed process's fan-out lease ended at %s (SIGKILL at %s, new process ready at %s): %s",
			first.Format(time.StampMilli), lease.LeaseUntil.Local().Format(time.StampMilli), killed.Format(time.StampMilli), ready.Format(time.StampMilli), why)
	}
	fail(sb, provs["dead-after"], false, "after the restart:")
	exactlyOnce(sb)
}
