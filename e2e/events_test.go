package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// Webhooks returns a webhook service client.
func (s *Service) Webhooks() mcpauthv1.WebhookServiceClient {
	return mcpauthv1.NewWebhookServiceClient(s.Conn)
}

// evEnv is the configuration of the event tests: receivers on 127.0.0.1,
// short backoff (the production cap is 10 minutes).
func evEnv(extra map[string]string) map[string]string {
	env := map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1", "MCPAUTH_WEBHOOK_BACKOFF_BASE": "20ms",
		"MCPAUTH_WEBHOOK_BACKOFF_MAX": "200ms", "MCPAUTH_EVENTS_POLL": "100ms"}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// evCreateEndpoint creates an endpoint for r and gives r its secret.
func evCreateEndpoint(tb testing.TB, s *Service, tenant, id string, r *evReceiver, types ...string) {
	tb.Helper()
	resp, err := s.Webhooks().CreateWebhookEndpoint(Ctx(tb, s.AdminKey), &mcpauthv1.CreateWebhookEndpointRequest{
		Parent: "tenants/" + tenant, WebhookEndpointId: id,
		WebhookEndpoint: &mcpauthv1.WebhookEndpoint{Url: r.srv.URL + "/hook", EventTypes: types}})
	if err != nil {
		tb.Fatalf("CreateWebhookEndpoint: %v", err)
	}
	if !strings.HasPrefix(resp.GetSigningSecret(), "whsec_") {
		tb.Fatalf("signing secret %q does not have the whsec_ form", resp.GetSigningSecret())
	}
	r.setSecret(resp.GetSigningSecret())
}

// evAuditNames lists the tenant's audit event names oldest first, skipping
// webhook endpoint changes.
func evAuditNames(tb testing.TB, s *Service, tenant string) []*mcpauthv1.AuditEvent {
	tb.Helper()
	var out []*mcpauthv1.AuditEvent
	for _, e := range provAuditEvents(tb, s, s.AdminKey, tenant) {
		if e.GetEventType() != "webhook.endpoint.changed" {
			out = append(out, e)
		}
	}
	slices.Reverse(out)
	return out
}

func evNames(evs []*mcpauthv1.AuditEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.GetName()
	}
	return out
}

// TestWebhookDeliversSignedEventsAsAudited: every event after the
// endpoint's creation reaches it once, signed (verified with the spec's
// algorithm), with the body naming the event exactly as ListAuditEvents
// does; endpoint types filter; ListWebhookDeliveries shows them delivered.
func TestWebhookDeliversSignedEventsAsAudited(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Postgres: true, Env: evEnv(nil)})
	all, onlyDeleted := evNewReceiver(t), evNewReceiver(t)
	evCreateEndpoint(t, s, "acme", "all", all)
	evCreateEndpoint(t, s, "acme", "deletions", onlyDeleted, "provider.deleted")
	for i := range 3 {
		provCreate(t, s, s.AdminKey, "acme", fmt.Sprintf("p%d", i), provNewProvider(fmt.Sprint(i)))
	}
	if _, err := s.Providers().DeleteProvider(Ctx(t, s.AdminKey), &mcpauthv1.DeleteProviderRequest{Name: "tenants/acme/providers/p1"}); err != nil {
		t.Fatal(err)
	}
	provCreate(t, s, s.AdminKey, "other", "x", provNewProvider("x")) // another tenant: not delivered

	audited := evAuditNames(t, s, "acme")
	if len(audited) != 4 {
		t.Fatalf("%d audit events, want 4", len(audited))
	}
	got := all.waitFor(t, evNames(audited), 30*time.Second)
	byName := map[string][]evMessage{}
	for _, m := range got {
		byName[m.Name] = append(byName[m.Name], m)
	}
	for _, e := range audited {
		ms := byName[e.GetName()]
		if len(ms) != 1 {
			t.Fatalf("%s accepted %d times, want once", e.GetName(), len(ms))
		}
		m := ms[0]
		if m.Type != e.GetEventType() || m.Provider != e.GetProvider() || m.ID != strings.TrimPrefix(e.GetName(), "tenants/acme/auditEvents/") {
			t.Errorf("message %+v does not match the audit event %v", m, e)
		}
	}
	provEvents := 0
	for _, m := range got {
		if m.Type != "webhook.endpoint.changed" { // the second endpoint's creation reaches the first
			provEvents++
		}
	}
	if provEvents != len(audited) {
		t.Errorf("receiver accepted %d provider messages, want %d (nothing of another tenant, nothing twice)", provEvents, len(audited))
	}
	if bad := all.badSignatures(); len(bad) > 0 {
		t.Fatalf("signatures that do not verify: %v", bad)
	}
	del := onlyDeleted.waitFor(t, []string{audited[3].GetName()}, 30*time.Second)
	time.Sleep(500 * time.Millisecond) // a wrongly routed message would arrive meanwhile
	if del = onlyDeleted.messages(); len(del) != 1 || del[0].Type != "provider.deleted" {
		t.Fatalf("filtered endpoint got %+v, want only the deletion", del)
	}

	ep, err := s.Webhooks().GetWebhookEndpoint(Ctx(t, s.AdminKey), &mcpauthv1.GetWebhookEndpointRequest{Name: "tenants/acme/webhookEndpoints/all"})
	if err != nil {
		t.Fatal(err)
	}
	// Every message accepted by now (the endpoint change, about no
	// provider, may arrive after the provider events it precedes: they
	// are not ordered together) is counted delivered.
	accepted := len(all.messages())
	if e := ep.GetWebhookEndpoint(); e.GetDeliveredDeliveries() != int64(accepted) || e.GetPendingDeliveries() != 0 || e.GetDeadDeliveries() != 0 {
		t.Errorf("endpoint counts %v, want %d delivered", e, accepted)
	}
	if strings.Contains(provJSON(t, ep), "whsec_") {
		t.Error("GetWebhookEndpoint shows the secret")
	}
	// The secret is stored sealed, never in clear.
	if dump := provDumpDB(t, s); strings.Contains(dump, strings.TrimPrefix(all.secret, "whsec_")) {
		t.Error("the signing secret is stored in clear")
	}
}

// TestWebhookEndpointDownThenUp: an endpoint that refuses every attempt for
// a while gets every event afterwards, in feed order per provider; one that
// fails past the last attempt holds dead letters, listed, and redelivered.
func TestWebhookEndpointDownThenUp(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Postgres: true, Env: evEnv(map[string]string{"MCPAUTH_WEBHOOK_MAX_ATTEMPTS": "1000"})})
	r := evNewReceiver(t)
	evCreateEndpoint(t, s, "acme", "down", r)
	r.setDown(true)
	ctx := Ctx(t, s.AdminKey)
	for round := range 4 {
		for _, id := range []string{"a", "b"} {
			if round == 0 {
				provCreate(t, s, s.AdminKey, "acme", id, provNewProvider(id))
				continue
			}
			_, err := s.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
				Provider:   &mcpauthv1.Provider{Name: "tenants/acme/providers/" + id, DisplayName: fmt.Sprintf("Provider %s %d", id, round)},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	// Down long enough for many attempts, all refused.
	deadline := time.Now().Add(30 * time.Second)
	for r.attempts() < 20 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := r.attempts(); n < 20 {
		t.Fatalf("only %d attempts while the endpoint was down", n)
	}
	r.setDown(false)
	audited := evAuditNames(t, s, "acme")
	got := r.waitFor(t, evNames(audited), 60*time.Second)
	for _, prov := range []string{"tenants/acme/providers/a", "tenants/acme/providers/b"} {
		var want, order []string
		for _, e := range audited {
			if e.GetProvider() == prov {
				want = append(want, e.GetName())
			}
		}
		seen := map[string]bool{}
		for _, m := range got {
			if m.Provider == prov && !seen[m.Name] {
				seen[m.Name] = true
				order = append(order, m.Name)
			}
		}
		if !slices.Equal(order, want) {
			t.Errorf("%s delivered in order %v, want %v", prov, order, want)
		}
	}

	// Dead letters: an endpoint whose deliveries fail past the last attempt.
	dead := Start(t, Options{DSN: s.DSN, Env: evEnv(map[string]string{"MCPAUTH_WEBHOOK_MAX_ATTEMPTS": "2"})})
	s.Stop() // only the replica with two attempts delivers now
	dr := evNewReceiver(t)
	dr.setDown(true)
	evCreateEndpoint(t, dead, "acme", "dead", dr)
	provCreate(t, dead, dead.AdminKey, "acme", "c", provNewProvider("c"))
	dctx := Ctx(t, dead.AdminKey)
	var letters []*mcpauthv1.WebhookDelivery
	deadline = time.Now().Add(30 * time.Second)
	for len(letters) == 0 && time.Now().Before(deadline) {
		resp, err := dead.Webhooks().ListWebhookDeliveries(dctx, &mcpauthv1.ListWebhookDeliveriesRequest{
			Parent: "tenants/acme/webhookEndpoints/dead", State: mcpauthv1.WebhookDeliveryState_WEBHOOK_DELIVERY_STATE_DEAD})
		if err != nil {
			t.Fatal(err)
		}
		letters = resp.GetWebhookDeliveries()
		time.Sleep(50 * time.Millisecond)
	}
	if len(letters) != 1 || letters[0].GetAttempts() != 2 || letters[0].GetLastStatus() != 503 {
		t.Fatalf("dead letters %v, want the one event after 2 attempts answered 503", letters)
	}
	dr.setDown(false)
	if _, err := dead.Webhooks().RedeliverWebhookEvent(dctx, &mcpauthv1.RedeliverWebhookEventRequest{
		Name: "tenants/acme/webhookEndpoints/dead", AuditEvent: letters[0].GetAuditEvent()}); err != nil {
		t.Fatal(err)
	}
	dr.waitFor(t, []string{letters[0].GetAuditEvent()}, 30*time.Second)
}

// TestWebhookPrivateAddressRefused: without an allow-list, endpoints on
// loopback, private or link-local addresses (literal, or a name resolving
// to one) and plain http are refused with INVALID_ARGUMENT on the url;
// nothing is stored.
func TestWebhookPrivateAddressRefused(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{})
	for _, u := range []string{"https://127.0.0.1/hook", "https://10.1.2.3/hook", "https://169.254.169.254/latest",
		"https://[::1]/hook", "https://localhost/hook", "http://hooks.example.com/hook", "ftp://example.com/x"} {
		_, err := s.Webhooks().CreateWebhookEndpoint(Ctx(t, s.AdminKey), &mcpauthv1.CreateWebhookEndpointRequest{
			Parent: "tenants/acme", WebhookEndpointId: "hook", WebhookEndpoint: &mcpauthv1.WebhookEndpoint{Url: u}})
		st := provStatus(t, err, codes.InvalidArgument)
		if v := provViolations(st); len(v) != 1 || !strings.HasPrefix(v[0], "webhook_endpoint.url") {
			t.Errorf("%s: violations %v, want one on webhook_endpoint.url", u, v)
		}
	}
	list, err := s.Webhooks().ListWebhookEndpoints(Ctx(t, s.AdminKey), &mcpauthv1.ListWebhookEndpointsRequest{Parent: "tenants/acme"})
	if err != nil || len(list.GetWebhookEndpoints()) != 0 {
		t.Fatalf("endpoints after refusals: %v, %v", list, err)
	}
}

// evWatch collects WatchEvents messages into ch until the stream ends.
func evWatch(ctx context.Context, s *Service, key, tenant, after string, ch chan<- *mcpauthv1.AuditEvent) error {
	stream, err := s.Audit().WatchEvents(metadataCtx(ctx, key), &mcpauthv1.WatchEventsRequest{Parent: "tenants/" + tenant, ResumeAfter: after})
	if err != nil {
		return err
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		ch <- m.GetAuditEvent()
	}
}

// TestWatchEventsResumeExactlyOnce: a subscriber on one replica sees the
// events written on another; disconnected, it misses what happens
// meanwhile, and reconnecting with the name of the last event received it
// gets every event exactly once, in order, nothing twice. Callers without
// audit.read are refused.
func TestWatchEventsResumeExactlyOnce(t *testing.T) {
	t.Parallel()
	a := Start(t, Options{Postgres: true, Redis: true, Env: evEnv(nil)})
	b := Start(t, Options{DSN: a.DSN, RedisURL: a.RedisURL, DataDir: a.DataDir, Env: evEnv(nil)})

	ch := make(chan *mcpauthv1.AuditEvent, 1000)
	ctx1, cancel1 := context.WithCancel(context.Background())
	done1 := make(chan error, 1)
	go func() { done1 <- evWatch(ctx1, a, a.AdminKey, "acme", "", ch) }()
	time.Sleep(300 * time.Millisecond) // the stream starts "from now"

	var seen []string
	writer := func(s *Service, from, to int) {
		for i := from; i < to; i++ {
			provCreate(t, s, s.AdminKey, "acme", fmt.Sprintf("p%d", i), provNewProvider(fmt.Sprint(i)))
		}
	}
	writer(b, 0, 5) // written on the other replica
	recv := func(n int) {
		t.Helper()
		for range n {
			select {
			case e := <-ch:
				seen = append(seen, e.GetName())
			case <-time.After(30 * time.Second):
				t.Fatalf("stream stalled after %d events", len(seen))
			}
		}
	}
	recv(5)
	cancel1()
	<-done1
	for len(ch) > 0 {
		seen = append(seen, (<-ch).GetName())
	}
	writer(a, 5, 10) // while disconnected
	writer(b, 10, 12)

	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := make(chan error, 1)
	go func() { done2 <- evWatch(ctx2, b, a.AdminKey, "acme", seen[len(seen)-1], ch) }()
	writer(a, 12, 15) // while resuming
	recv(15 - len(seen))
	time.Sleep(500 * time.Millisecond) // a repeat would arrive meanwhile
	for len(ch) > 0 {
		seen = append(seen, (<-ch).GetName())
	}
	want := evNames(evAuditNames(t, a, "acme"))
	if !slices.Equal(seen, want) {
		t.Fatalf("watched %d events %v\nwant %d %v", len(seen), seen, len(want), want)
	}

	// Permission: a caller without audit.read is refused before any event.
	err := evWatch(context.Background(), a, "not-a-key", "acme", "", ch)
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("WatchEvents with a bad key: %v, want UNAUTHENTICATED", err)
	}
	err = evWatch(context.Background(), a, a.AdminKey, "acme", "tenants/other/auditEvents/0123456789abcdef0123456789abcdef", ch)
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("resume_after of another tenant: %v, want INVALID_ARGUMENT", err)
	}
}

// TestWebhookTwoReplicasDeliverOnceInOrder: two replicas on one database
// both run the fan-out; changes made on either reach the endpoint once
// each (one replica holds the feed at a time, so no event is sent by both)
// and in feed order per provider.
func TestWebhookTwoReplicasDeliverOnceInOrder(t *testing.T) {
	t.Parallel()
	a := Start(t, Options{Postgres: true, Env: evEnv(nil)})
	b := Start(t, Options{DSN: a.DSN, DataDir: a.DataDir, Env: evEnv(nil)})
	r := evNewReceiver(t)
	evCreateEndpoint(t, a, "acme", "sink", r)
	replicas := []*Service{a, b}
	for i := range 4 {
		id := fmt.Sprintf("p%d", i)
		provCreate(t, replicas[i%2], a.AdminKey, "acme", id, provNewProvider(id))
	}
	for round := 1; round <= 3; round++ {
		for i := range 4 {
			s := replicas[(i+round)%2]
			_, err := s.Providers().UpdateProvider(Ctx(t, a.AdminKey), &mcpauthv1.UpdateProviderRequest{
				Provider:   &mcpauthv1.Provider{Name: fmt.Sprintf("tenants/acme/providers/p%d", i), DisplayName: fmt.Sprintf("Provider %d %d", i, round)},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	audited := evAuditNames(t, a, "acme")
	if len(audited) != 16 {
		t.Fatalf("%d audit events, want 16", len(audited))
	}
	r.waitFor(t, evNames(audited), 30*time.Second)
	time.Sleep(500 * time.Millisecond) // a repeat would arrive meanwhile
	got := r.messages()
	count := map[string]int{}
	for _, m := range got {
		count[m.Name]++
	}
	for _, e := range audited {
		if count[e.GetName()] != 1 {
			t.Errorf("%s accepted %d times, want once", e.GetName(), count[e.GetName()])
		}
	}
	for i := range 4 {
		prov := fmt.Sprintf("tenants/acme/providers/p%d", i)
		var want, order []string
		for _, e := range audited {
			if e.GetProvider() == prov {
				want = append(want, e.GetName())
			}
		}
		for _, m := range got {
			if m.Provider == prov {
				order = append(order, m.Name)
			}
		}
		if !slices.Equal(order, want) {
			t.Errorf("%s delivered in order %v, want %v", prov, order, want)
		}
	}
}

// TestWebhookDisabledEndpointQueues: nothing is posted to a disabled
// endpoint (its deliveries wait, pending); once enabled again it gets them.
func TestWebhookDisabledEndpointQueues(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Postgres: true, Env: evEnv(nil)})
	r := evNewReceiver(t)
	evCreateEndpoint(t, s, "acme", "paused", r)
	ctx := Ctx(t, s.AdminKey)
	setDisabled := func(disabled bool) {
		t.Helper()
		if _, err := s.Webhooks().UpdateWebhookEndpoint(ctx, &mcpauthv1.UpdateWebhookEndpointRequest{
			WebhookEndpoint: &mcpauthv1.WebhookEndpoint{Name: "tenants/acme/webhookEndpoints/paused", Disabled: disabled},
			UpdateMask:      &fieldmaskpb.FieldMask{Paths: []string{"disabled"}}}); err != nil {
			t.Fatal(err)
		}
	}
	setDisabled(true)
	provCreate(t, s, s.AdminKey, "acme", "a", provNewProvider("a"))
	var pending int64
	deadline := time.Now().Add(10 * time.Second)
	for pending == 0 && time.Now().Before(deadline) {
		ep, err := s.Webhooks().GetWebhookEndpoint(ctx, &mcpauthv1.GetWebhookEndpointRequest{Name: "tenants/acme/webhookEndpoints/paused"})
		if err != nil {
			t.Fatal(err)
		}
		pending = ep.GetWebhookEndpoint().GetPendingDeliveries()
		time.Sleep(50 * time.Millisecond)
	}
	if pending == 0 {
		t.Fatal("the disabled endpoint's delivery was never queued")
	}
	time.Sleep(300 * time.Millisecond) // a wrongly sent message would arrive meanwhile
	if n := r.attempts(); n != 0 {
		t.Fatalf("%d requests to the disabled endpoint", n)
	}
	setDisabled(false)
	var names []string
	for _, e := range evAuditNames(t, s, "acme") {
		if e.GetProvider() != "" {
			names = append(names, e.GetName())
		}
	}
	r.waitFor(t, names, 30*time.Second)
}

// TestWebhookEndpointDeletedMidBatch: an endpoint deleted while a batch is
// being sent to it (its receiver deletes it through the API before
// answering its first message) costs the other endpoint nothing: it gets
// every event exactly once (counted by webhook-id), on PostgreSQL and on
// SQLite. Before, recording the batch failed on the deleted endpoint and
// the whole batch was sent again.
func TestWebhookEndpointDeletedMidBatch(t *testing.T) {
	t.Parallel()
	for _, postgres := range []bool{true, false} {
		t.Run(map[bool]string{true: "postgres", false: "sqlite"}[postgres], func(t *testing.T) {
			t.Parallel()
			s := Start(t, Options{Postgres: postgres, Env: evEnv(nil)})
			ctx := Ctx(t, s.AdminKey)
			survivor, victim := evNewReceiver(t), evNewReceiver(t)
			evCreateEndpoint(t, s, "acme", "survivor", survivor)
			evCreateEndpoint(t, s, "acme", "victim", victim)
			deleted := make(chan error, 1)
			victim.setBeforeNext(func() {
				_, err := s.Webhooks().DeleteWebhookEndpoint(ctx, &mcpauthv1.DeleteWebhookEndpointRequest{Name: "tenants/acme/webhookEndpoints/victim"})
				deleted <- err
			})
			for i := range 3 {
				provCreate(t, s, s.AdminKey, "acme", fmt.Sprintf("p%d", i), provNewProvider(fmt.Sprint(i)))
			}
			var names []string
			for _, e := range evAuditNames(t, s, "acme") {
				names = append(names, e.GetName())
			}
			survivor.waitFor(t, names, 30*time.Second)
			select {
			case err := <-deleted:
				if err != nil {
					t.Fatalf("DeleteWebhookEndpoint from the receiver: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the victim endpoint never received a message")
			}
			// Wait until every message the survivor accepted is recorded
			// delivered: a batch whose record failed is sent again before
			// it is recorded, so its repeats have arrived by then.
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				ep, err := s.Webhooks().GetWebhookEndpoint(ctx, &mcpauthv1.GetWebhookEndpointRequest{Name: "tenants/acme/webhookEndpoints/survivor"})
				if err != nil {
					t.Fatal(err)
				}
				ids := map[string]bool{}
				for _, m := range survivor.messages() {
					ids[m.ID] = true
				}
				if e := ep.GetWebhookEndpoint(); e.GetPendingDeliveries() == 0 && e.GetDeliveredDeliveries() >= int64(len(ids)) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the survivor's deliveries were never all recorded: %v", ep.GetWebhookEndpoint())
				}
			}
			seen := map[string]int{}
			for _, m := range survivor.messages() {
				seen[m.ID]++
			}
			for id, n := range seen {
				if n != 1 {
					t.Errorf("webhook-id %s accepted %d times by the surviving endpoint, want once", id, n)
				}
			}
		})
	}
}
