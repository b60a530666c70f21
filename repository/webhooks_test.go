package repository

import (
	"context"
	"slices"
	"testing"
	"time"
)

// routeAll delivers every event to every endpoint of its tenant.
func routeAll(ev *AuditEvent, eps []WebhookEndpoint) []WebhookDelivery {
	var out []WebhookDelivery
	for _, ep := range eps {
		out = append(out, WebhookDelivery{TenantID: ev.TenantID, EndpointID: ep.ID, EventUID: ev.UID,
			EventType: ev.EventType, ProviderID: ev.ProviderID, EventTxID: ev.TxID, EventID: ev.ID,
			Payload: "{}", State: DeliveryPending, NextAttemptAt: ev.CreatedAt, CreatedAt: ev.CreatedAt, UpdatedAt: ev.CreatedAt})
	}
	return out
}

// appendEvents stores one event per provider id (in that order) for tenant
// t and returns their uids.
func appendEvents(tb testing.TB, s *Store, providers ...string) []string {
	tb.Helper()
	var batch []*AuditEvent
	for _, p := range providers {
		batch = append(batch, &AuditEvent{TenantID: "t", EventType: "x", ProviderID: p, Details: "{}"})
	}
	PrepareEvents(time.Now(), batch...)
	wantNoErr(tb, s.AppendAuditBatch(context.Background(), batch), "AppendAuditBatch")
	uids := make([]string, len(batch))
	for i, e := range batch {
		uids[i] = e.UID
	}
	return uids
}

// fanOut routes the events stored so far (on PostgreSQL the feed may hold
// back an event for a moment, until older transactions end).
func fanOut(tb testing.TB, s *Store, want int, now time.Time) FanOut {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var total FanOut
	for total.Events < want {
		res, err := s.FanOutEvents(context.Background(), 500, routeAll, FanOutLease{Owner: "me", Now: now, For: time.Minute})
		wantNoErr(tb, err, "FanOutEvents")
		total.Events += res.Events
		total.Leased = append(total.Leased, res.Leased...)
		total.Queued += res.Queued
		if time.Now().After(deadline) {
			tb.Fatalf("%d of %d events routed", total.Events, want)
		}
	}
	return total
}

func uidsOf(ds []WebhookDelivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.EventUID
	}
	return out
}

// TestFanOutLeasesFreeGroupsAndQueuesHeldOnes follows one group (endpoint
// and provider) through the fan-out's fast path and a failure: deliveries
// of a group with nothing pending are handed out leased, in feed order,
// with the ids of their rows; after a failure the group's new deliveries
// queue behind the failed one, and claims give them only once its retry is
// due, in feed order.
func TestFanOutLeasesFreeGroupsAndQueuesHeldOnes(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now().UTC()
		createEndpoint(t, s, now)

		first := appendEvents(t, s, "p", "p", "q")
		res := fanOut(t, s, 3, now)
		if res.Queued != 0 || !slices.Equal(uidsOf(res.Leased), first) {
			t.Fatalf("first fan-out leased %v (queued %d), want all of %v in order", uidsOf(res.Leased), res.Queued, first)
		}
		for _, d := range res.Leased {
			if d.LeaseOwner == "" {
				t.Fatalf("delivery %s handed out without a lease", d.EventUID)
			}
		}
		checkLeasedRows(t, s, res.Leased)

		// The first delivery of group p fails; the second is released
		// untried; q's is delivered.
		failed := res.Leased[0]
		failed.Attempts, failed.NextAttemptAt, failed.LastError = 1, now.Add(time.Minute), "boom"
		ok, err := s.FinishAttempt(ctx, &failed)
		wantNoErr(t, err, "FinishAttempt")
		if !ok {
			t.Fatal("FinishAttempt: lease not held")
		}
		wantNoErr(t, s.ReleaseDeliveries(ctx, res.Leased[1:2]), "ReleaseDeliveries")
		wantNoErr(t, s.FinishDelivered(ctx, res.Leased[2:]), "FinishDelivered")

		second := appendEvents(t, s, "p", "q")
		res = fanOut(t, s, 2, now)
		if res.Queued != 1 || !slices.Equal(uidsOf(res.Leased), second[1:]) {
			t.Fatalf("second fan-out leased %v and queued %d, want only q's %s leased and p's queued", uidsOf(res.Leased), res.Queued, second[1])
		}
		wantNoErr(t, s.FinishDelivered(ctx, res.Leased), "FinishDelivered")
		claimed, err := s.ClaimDeliveries(ctx, "other", now, time.Minute, 100)
		wantNoErr(t, err, "ClaimDeliveries now")
		if len(claimed) != 0 {
			t.Fatalf("claimed %v while group p waits for its retry", uidsOf(claimed))
		}
		claimed, err = s.ClaimDeliveries(ctx, "other", now.Add(2*time.Minute), time.Minute, 100)
		wantNoErr(t, err, "ClaimDeliveries after the backoff")
		if want := []string{first[0], first[1], second[0]}; !slices.Equal(uidsOf(claimed), want) {
			t.Fatalf("claimed %v after the backoff, want group p in feed order %v", uidsOf(claimed), want)
		}
	})
}

// TestFanOutReadsBackLeasesAfterConflict: when a delivery of a routed event
// exists already, the insert skips it and the ids it returns cannot be
// trusted; the leased deliveries handed out still carry their own rows' ids.
func TestFanOutReadsBackLeasesAfterConflict(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		now := time.Now().UTC()
		createEndpoint(t, s, now)
		uids := appendEvents(t, s, "", "", "")
		// The first event's delivery exists already (delivered).
		pre := WebhookDelivery{TenantID: "t", EndpointID: "e", EventUID: uids[0], EventType: "x", Payload: "{}",
			State: DeliveryDelivered, NextAttemptAt: now, CreatedAt: now, UpdatedAt: now}
		wantNoErr(t, s.db.Create(&pre).Error, "insert existing delivery")
		res := fanOut(t, s, 3, now)
		if !slices.Equal(uidsOf(res.Leased), uids[1:]) {
			t.Fatalf("leased %v, want %v (the existing delivery is kept, not handed out)", uidsOf(res.Leased), uids[1:])
		}
		checkLeasedRows(t, s, res.Leased)
	})
}

// createEndpoint creates tenant t's endpoint e, existing before now.
func createEndpoint(tb testing.TB, s *Store, now time.Time) {
	tb.Helper()
	wantNoErr(tb, s.CreateWebhookEndpoint(context.Background(), &WebhookEndpoint{TenantID: "t", ID: "e", URL: "https://h.example/",
		Secret: []byte("ct"), KeyID: 1, Version: 1, CreatedAt: now.Add(-time.Hour), UpdatedAt: now}), "CreateWebhookEndpoint")
}

// checkLeasedRows fails unless each delivery handed out carries the id of
// its own row, leased as it says.
func checkLeasedRows(tb testing.TB, s *Store, leased []WebhookDelivery) {
	tb.Helper()
	for _, d := range leased {
		var row WebhookDelivery
		wantNoErr(tb, s.db.Where("id = ?", d.ID).Take(&row).Error, "read delivery %d", d.ID)
		if row.EventUID != d.EventUID || row.LeaseOwner != d.LeaseOwner {
			tb.Fatalf("delivery id %d is the row of %s (lease %q), handed out as %s (lease %q)",
				d.ID, row.EventUID, row.LeaseOwner, d.EventUID, d.LeaseOwner)
		}
	}
}
