package repository

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"
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

// leaseAll leases the next want events stored so far for owner (on
// PostgreSQL the feed may hold back an event for a moment, until older
// transactions end) and routes them to every endpoint.
func leaseAll(tb testing.TB, s *Store, owner string, want int, now time.Time) (*FanOutBatch, []WebhookDelivery) {
	tb.Helper()
	b := leaseWhen(tb, s, owner, FanOutRead{Limit: 500}, now, func(b *FanOutBatch) bool { return len(b.Events) >= want })
	return b, routeBatch(b)
}

// leaseWhen leases the fan-out for owner with read until the batch
// satisfies enough, failing the test after 10 seconds.
func leaseWhen(tb testing.TB, s *Store, owner string, read FanOutRead, now time.Time, enough func(*FanOutBatch) bool) *FanOutBatch {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := s.LeaseFanOut(context.Background(), owner, now, time.Minute, read, nil)
		wantNoErr(tb, err, "LeaseFanOut")
		if b != nil && enough(b) {
			return b
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the fan-out leased no batch with enough events: %+v", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// routeBatch routes every event of b to every endpoint of its tenant.
func routeBatch(b *FanOutBatch) []WebhookDelivery {
	var ds []WebhookDelivery
	for i := range b.Events {
		ds = append(ds, routeAll(&b.Events[i], b.Endpoints[b.Events[i].TenantID])...)
	}
	return ds
}

func uidsOf(ds []WebhookDelivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.EventUID
	}
	return out
}

// TestFanOutRecordsOutcomesAndQueuesHeldGroups follows one group
// (endpoint and provider) through the fan-out and a failure: a batch's
// deliveries are recorded in their outcomes' states with the cursor past
// the batch; after a failure the group is held, so the fan-out queues its
// new deliveries, and claims give them only once the failed one's retry is
// due, in feed order. A delivery stored already is kept.
func TestFanOutRecordsOutcomesAndQueuesHeldGroups(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now().UTC()
		createEndpoint(t, s, now)

		first := appendEvents(t, s, "p", "p", "q", "")
		b, ds := leaseAll(t, s, "me", 4, now)
		if !slices.Equal(uidsOf(ds), first) {
			t.Fatalf("leased %v, want %v in feed order", uidsOf(ds), first)
		}
		held, err := s.HeldGroups(ctx, ds)
		wantNoErr(t, err, "HeldGroups")
		if len(held) != 0 {
			t.Fatalf("held groups %v before any delivery", held)
		}
		// The event about no provider was delivered already (a batch sent
		// again after a crash): its row is kept.
		pre := ds[3]
		pre.State, pre.Attempts, pre.LastStatus = DeliveryDelivered, 1, 204
		wantNoErr(t, s.db.Create(&pre).Error, "insert existing delivery")
		// p's first delivery fails, its second stays untried behind it,
		// q's and the provider-less one are delivered.
		ds[0].Attempts, ds[0].NextAttemptAt, ds[0].LastError = 1, now.Add(time.Minute), "boom"
		ds[2].State, ds[2].Attempts, ds[2].LastStatus = DeliveryDelivered, 1, 200
		ds[3].State, ds[3].Attempts, ds[3].LastStatus = DeliveryDelivered, 1, 200
		wantNoErr(t, s.RecordFanOut(ctx, b, ds, now, time.Minute), "RecordFanOut")
		counts, err := s.DeliveryCounts(ctx, "t", "e")
		wantNoErr(t, err, "DeliveryCounts")
		if counts[DeliveryPending] != 2 || counts[DeliveryDelivered] != 2 {
			t.Fatalf("counts %v after the first batch, want 2 pending and 2 delivered", counts)
		}

		second := appendEvents(t, s, "p", "q")
		b, ds = leaseAll(t, s, "me", 2, now)
		if !slices.Equal(uidsOf(ds), second) {
			t.Fatalf("second batch %v, want only the new events %v", uidsOf(ds), second)
		}
		held, err = s.HeldGroups(ctx, ds)
		wantNoErr(t, err, "HeldGroups")
		if want := (DeliveryGroup{"t", "e", "p"}); len(held) != 1 || !held[want] {
			t.Fatalf("held groups %v, want only %v", held, want)
		}
		ds[1].State, ds[1].Attempts = DeliveryDelivered, 1
		wantNoErr(t, s.RecordFanOut(ctx, b, ds, now, time.Minute), "RecordFanOut")

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

// TestFanOutLeaseIsExclusive: while one replica's lease is live no other
// replica's fan-out gets the feed (none while it leads: on PostgreSQL and
// on a SQLite file); once it expires (and its lead is gone) another takes
// the same events over, and the first owner's record then writes nothing.
// On a shared in-memory SQLite database there is no lead, and the lease
// alone decides.
func TestFanOutLeaseIsExclusive(t *testing.T) {
	t.Parallel()
	run := func(t *testing.T, sa, sb *Store) {
		ctx := context.Background()
		now := time.Now().UTC()
		createEndpoint(t, sa, now)
		uids := appendEvents(t, sa, "p", "q")
		a, ads := leaseAll(t, sa, "a", 2, now)
		b, err := sb.LeaseFanOut(ctx, "b", now.Add(30*time.Second), time.Minute, FanOutRead{Limit: 500}, nil)
		wantNoErr(t, err, "LeaseFanOut while a holds the lease")
		if b != nil {
			t.Fatalf("b leased %d events while a's lease is live", len(b.Events))
		}
		later := now.Add(2 * time.Minute)
		if sa.hasFanOutLead() {
			// Only the lead fans out: a's ended lease is not b's while a's
			// process leads (two healthy replicas never send one batch).
			if b, err := sb.LeaseFanOut(ctx, "b", later, time.Minute, FanOutRead{Limit: 500}, nil); err != nil || b != nil {
				t.Fatalf("b leased %v (%v) while a's process leads", b, err)
			}
			sa.dropFanOutLead(ctx) // a's process stops leading
		}
		b, bds := leaseAll(t, sb, "b", 2, later)
		if !slices.Equal(uidsOf(bds), uids) {
			t.Fatalf("b took over %v, want %v", uidsOf(bds), uids)
		}
		for i := range ads {
			ads[i].State = DeliveryDelivered
		}
		if err := sa.RecordFanOut(ctx, a, ads, later, time.Minute); !errors.Is(err, ErrFanOutLeaseLost) {
			t.Fatalf("a's record after losing the lease: %v, want ErrFanOutLeaseLost", err)
		}
		counts, err := sa.DeliveryCounts(ctx, "t", "e")
		wantNoErr(t, err, "DeliveryCounts")
		if len(counts) != 0 {
			t.Fatalf("a's lost record wrote deliveries %v", counts)
		}
		wantNoErr(t, sb.RecordFanOut(ctx, b, bds, later, time.Minute), "b's RecordFanOut")
		wantNoErr(t, sb.ReleaseFanOut(ctx, "b"), "ReleaseFanOut")
		// Released: a leases again at once, and finds nothing new.
		a, err = sa.LeaseFanOut(ctx, "a", later, time.Minute, FanOutRead{Limit: 500}, nil)
		wantNoErr(t, err, "LeaseFanOut after the release")
		if a != nil {
			t.Fatalf("a leased %v after b recorded them", a.Events)
		}
		next := appendEvents(t, sa, "p")
		_, ads = leaseAll(t, sa, "a", 1, later)
		if !slices.Equal(uidsOf(ads), next) {
			t.Fatalf("a leased %v after the release, want %v", uidsOf(ads), next)
		}
	}
	eachBackendReplicas(t, func(t *testing.T, sa, sb *Store) {
		wantFanOutLead(t, sa, sb)
		run(t, sa, sb)
	})
	t.Run("sqlite-memory", func(t *testing.T) {
		dsn := "file:" + strings.ReplaceAll(t.Name(), "/", "-") + "?mode=memory&cache=shared"
		sa, sb := openStore(t, dsn), openStore(t, dsn)
		if sa.hasFanOutLead() || sb.hasFanOutLead() {
			t.Fatal("a Store on an in-memory database has a fan-out lead")
		}
		run(t, sa, sb)
	})
}

// wantFanOutLead fails unless every store (on PostgreSQL or a SQLite file)
// has a fan-out lead; on SQLite without flock it skips the test.
func wantFanOutLead(tb testing.TB, stores ...*Store) {
	tb.Helper()
	for _, s := range stores {
		if !s.fanOut.pg && !flockLead {
			tb.Skip("no flock on this platform: SQLite has no fan-out lead")
		}
		if !s.hasFanOutLead() {
			tb.Fatalf("a Store on %s has no fan-out lead", s.db.Dialector.Name())
		}
	}
}

// killFanOutLead ends a's lead as the death of a's process would, leaving
// its lease row as it is: on PostgreSQL the server ends the lead's session
// (asked on other's connection), on a SQLite file a's lock file closes.
func killFanOutLead(tb testing.TB, a, other *Store) {
	tb.Helper()
	if a.fanOut.pg {
		var killed int
		err := other.DB().Raw(`SELECT count(pg_terminate_backend(pid)) FROM pg_locks
			WHERE locktype = 'advisory' AND granted AND classid = ? AND objid = (hashtext(current_schema())::bigint & 4294967295)::oid
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, fanOutLockClass).Scan(&killed).Error
		wantNoErr(tb, err, "end the lead's session")
		if killed != 1 {
			tb.Fatalf("ended %d sessions holding the lead, want 1", killed)
		}
		return
	}
	a.fanOut.mu.Lock()
	defer a.fanOut.mu.Unlock()
	a.fanOut.file.close()
}

// TestFanOutLeadPassesWhenItsHolderDies: when the process holding the
// fan-out dies (its connections close on PostgreSQL, its lock file on
// SQLite), another replica, or the restarted process, takes the feed over
// at its next step, without waiting for the dead one's lease to end; the
// dead owner's record then writes nothing.
func TestFanOutLeadPassesWhenItsHolderDies(t *testing.T) {
	t.Parallel()
	eachBackendReplicas(t, func(t *testing.T, sa, sb *Store) {
		wantFanOutLead(t, sa, sb)
		ctx := context.Background()
		now := time.Now().UTC()
		createEndpoint(t, sa, now)
		uids := appendEvents(t, sa, "p", "q")
		a, ads := leaseAll(t, sa, "a", 2, now)
		if b, err := sb.LeaseFanOut(ctx, "b", now, time.Minute, FanOutRead{Limit: 500}, nil); err != nil || b != nil {
			t.Fatalf("b leased %v (%v) while a's process leads", b, err)
		}
		killFanOutLead(t, sa, sb)
		// a's lease has a minute left: b takes it over anyway.
		b, bds := leaseAll(t, sb, "b", 2, now.Add(time.Second))
		if !slices.Equal(uidsOf(bds), uids) {
			t.Fatalf("b took over %v, want %v", uidsOf(bds), uids)
		}
		if err := sa.RecordFanOut(ctx, a, ads, now, time.Minute); !errors.Is(err, ErrFanOutLeaseLost) {
			t.Fatalf("the dead owner's record: %v, want ErrFanOutLeaseLost", err)
		}
		wantNoErr(t, sb.RecordFanOut(ctx, b, bds, now, time.Minute), "b's RecordFanOut")
		// a's Store, were its process alive after all, no longer leads (its
		// lead's connection, or lock file, is gone): it gets nothing while
		// b's lease lives.
		appendEvents(t, sb, "p")
		if again, err := sa.LeaseFanOut(ctx, "a", now, time.Minute, FanOutRead{Limit: 500}, nil); err != nil || again != nil {
			t.Fatalf("a leased %v (%v) after b took over", again, err)
		}
	})
}

// createEndpoint creates tenant t's endpoint e, existing before now.
func createEndpoint(tb testing.TB, s *Store, now time.Time) {
	tb.Helper()
	wantNoErr(tb, s.CreateWebhookEndpoint(context.Background(), &WebhookEndpoint{TenantID: "t", ID: "e", URL: "https://h.example/",
		Secret: []byte("ct"), KeyID: 1, Version: 1, CreatedAt: now.Add(-time.Hour), UpdatedAt: now}), "CreateWebhookEndpoint")
}

// TestFanOutReadsAheadOfItsRecord: the fan-out reads the batch after one
// whose record is still under way; the later batch records only after the
// earlier one, and nothing is read twice.
func TestFanOutReadsAheadOfItsRecord(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now().UTC()
		createEndpoint(t, s, now)
		first := appendEvents(t, s, "p", "q")
		b1, ds1 := leaseAll(t, s, "me", 2, now)
		second := appendEvents(t, s, "p")
		var b2 *FanOutBatch
		deadline := time.Now().Add(10 * time.Second)
		for b2 == nil || len(b2.Events) == 0 {
			var err error
			b2, err = s.LeaseFanOut(ctx, "me", now, time.Minute, FanOutRead{Limit: 500}, b1)
			wantNoErr(t, err, "LeaseFanOut after an unrecorded batch")
			if time.Now().After(deadline) {
				t.Fatal("the batch after an unrecorded one was never read")
			}
		}
		var ds2 []WebhookDelivery
		for i := range b2.Events {
			ds2 = append(ds2, routeAll(&b2.Events[i], b2.Endpoints[b2.Events[i].TenantID])...)
		}
		if !slices.Equal(uidsOf(ds1), first) || !slices.Equal(uidsOf(ds2), second) {
			t.Fatalf("batches %v and %v, want %v and %v", uidsOf(ds1), uidsOf(ds2), first, second)
		}
		if err := s.RecordFanOut(ctx, b2, ds2, now, time.Minute); !errors.Is(err, ErrFanOutLeaseLost) {
			t.Fatalf("recording the later batch first: %v, want ErrFanOutLeaseLost", err)
		}
		wantNoErr(t, s.RecordFanOut(ctx, b1, ds1, now, time.Minute), "RecordFanOut first batch")
		wantNoErr(t, s.RecordFanOut(ctx, b2, ds2, now, time.Minute), "RecordFanOut second batch")
		if b, err := s.LeaseFanOut(ctx, "me", now, time.Minute, FanOutRead{Limit: 500}, nil); err != nil || b != nil {
			t.Fatalf("LeaseFanOut after both records: %v, %v; want nothing new", b, err)
		}
		// Another owner cannot read ahead of a batch that is not its own.
		if b, err := s.LeaseFanOut(ctx, "other", now, time.Minute, FanOutRead{Limit: 500}, b2); err != nil || b != nil {
			t.Fatalf("another owner read ahead: %v, %v", b, err)
		}
	})
}

// TestFanOutRecordSkipsDeletedEndpoint: an endpoint deleted while a batch
// is being sent (after the lease read it) has its deliveries dropped from
// the record; the other endpoint's are recorded and the cursor moves past
// the batch, so nothing is sent again. Before, the record failed on the
// deleted endpoint's foreign key and the whole batch was sent again later,
// duplicates to every other endpoint.
func TestFanOutRecordSkipsDeletedEndpoint(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now().UTC()
		createEndpoint(t, s, now)
		wantNoErr(t, s.CreateWebhookEndpoint(ctx, &WebhookEndpoint{TenantID: "t", ID: "gone", URL: "https://g.example/",
			Secret: []byte("ct"), KeyID: 1, Version: 1, CreatedAt: now.Add(-time.Hour), UpdatedAt: now}), "CreateWebhookEndpoint gone")

		uids := appendEvents(t, s, "p", "q")
		b, ds := leaseAll(t, s, "me", 2, now)
		if len(ds) != 4 {
			t.Fatalf("routed %d deliveries, want 2 events to 2 endpoints", len(ds))
		}
		for i := range ds {
			ds[i].State, ds[i].Attempts, ds[i].LastStatus = DeliveryDelivered, 1, 204
		}
		wantNoErr(t, s.DeleteWebhookEndpoint(ctx, "t", "gone"), "DeleteWebhookEndpoint mid-batch")
		wantNoErr(t, s.RecordFanOut(ctx, b, ds, now, time.Minute), "RecordFanOut with a deleted endpoint")

		kept, err := s.ListWebhookDeliveries(ctx, "t", "e", -1, "", 100)
		wantNoErr(t, err, "ListWebhookDeliveries")
		if got := uidsOf(kept); len(got) != 2 || !slices.Contains(got, uids[0]) || !slices.Contains(got, uids[1]) {
			t.Fatalf("surviving endpoint's deliveries %v, want %v", got, uids)
		}
		var orphans int64
		wantNoErr(t, s.db.Model(&WebhookDelivery{}).Where("endpoint_id = ?", "gone").Count(&orphans).Error, "count")
		if orphans != 0 {
			t.Fatalf("%d deliveries to the deleted endpoint recorded", orphans)
		}
		// The cursor moved past the batch: nothing is leased (sent) again.
		if again, err := s.LeaseFanOut(ctx, "me", now, time.Minute, FanOutRead{Limit: 500}, nil); err != nil || again != nil {
			t.Fatalf("LeaseFanOut after the record = %+v, %v; want nothing new", again, err)
		}
	})
}

// TestDeliveryCountsReadTheIndexOnly: an endpoint's delivery counts are
// an index-only scan (PostgreSQL) or a covering index (SQLite), never a
// read of the deliveries themselves, whose cost grows with their payloads
// (a sequential scan of 300,000 deliveries took about 100 ms). Sequential
// and bitmap scans are disabled on PostgreSQL so the plan does not depend
// on the test's few rows.
func TestDeliveryCountsReadTheIndexOnly(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now().UTC()
		createEndpoint(t, s, now)
		appendEvents(t, s, "p", "q", "r")
		b, ds := leaseAll(t, s, "me", 3, now)
		ds[0].State, ds[1].State = DeliveryDelivered, DeliveryDead
		wantNoErr(t, s.RecordFanOut(ctx, b, ds, now, time.Minute), "RecordFanOut")
		counts, err := s.DeliveryCounts(ctx, "t", "e")
		wantNoErr(t, err, "DeliveryCounts")
		if counts[DeliveryDelivered] != 1 || counts[DeliveryDead] != 1 || counts[DeliveryPending] != 1 {
			t.Fatalf("counts %v, want one in each state", counts)
		}

		query := s.db.ToSQL(func(tx *gorm.DB) *gorm.DB {
			q, err := scoped(ctx, tx, "t")
			if err != nil {
				t.Fatal(err)
			}
			var rows []deliveryCount
			return deliveryCounts(q, "e").Scan(&rows)
		})
		var plan []string
		if s.db.Dialector.Name() == "postgres" {
			err = s.db.Transaction(func(tx *gorm.DB) error {
				if err := tx.Exec("SET LOCAL enable_seqscan = off").Error; err != nil {
					return err
				}
				if err := tx.Exec("SET LOCAL enable_bitmapscan = off").Error; err != nil {
					return err
				}
				return tx.Raw("EXPLAIN "+query).Pluck("QUERY PLAN", &plan).Error
			})
			wantNoErr(t, err, "EXPLAIN")
			if !strings.Contains(strings.Join(plan, "\n"), "Index Only Scan using idx_webhook_delivery_endpoint") {
				t.Fatalf("DeliveryCounts plan reads the deliveries:\n%s", strings.Join(plan, "\n"))
			}
			return
		}
		var rows []struct{ Detail string }
		wantNoErr(t, s.db.Raw("EXPLAIN QUERY PLAN "+query).Scan(&rows).Error, "EXPLAIN QUERY PLAN")
		for _, r := range rows {
			plan = append(plan, r.Detail)
		}
		if !strings.Contains(strings.Join(plan, "\n"), "USING COVERING INDEX idx_webhook_delivery_endpoint") {
			t.Fatalf("DeliveryCounts plan reads the deliveries:\n%s", strings.Join(plan, "\n"))
		}
	})
}

// TestFanOutReadsWholeOnlyEventsWithEndpoints: a stretch of the feed is
// passed whole, but only the events of tenants with an endpoint are read
// (and returned to be routed); the record moves the cursor past the
// others too, also when the batch routes nothing (the record is then one
// statement, still fenced by the lease). With AllEvents every event is
// read, for the log mirror.
func TestFanOutReadsWholeOnlyEventsWithEndpoints(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now().UTC()
		createEndpoint(t, s, now) // tenant "t"'s; tenant "u" has none
		var batch []*AuditEvent
		for _, tenant := range []string{"u", "u", "t", "u"} {
			batch = append(batch, &AuditEvent{TenantID: tenant, EventType: "x", ProviderID: "p", Details: "{}"})
		}
		PrepareEvents(now, batch...)
		wantNoErr(t, s.AppendAuditBatch(ctx, batch), "AppendAuditBatch")

		lease := func(read FanOutRead, want int) *FanOutBatch {
			t.Helper()
			return leaseWhen(t, s, "me", read, now, func(b *FanOutBatch) bool { return b.Scanned >= want })
		}
		b := lease(FanOutRead{Limit: 500}, 4)
		if b.Scanned != 4 || len(b.Events) != 1 || b.Events[0].UID != batch[2].UID {
			t.Fatalf("batch: scanned %d, events %+v; want 4 scanned and only tenant t's event %s", b.Scanned, b.Events, batch[2].UID)
		}
		if _, ok := b.Endpoints["u"]; ok || len(b.Endpoints["t"]) != 1 {
			t.Fatalf("endpoints %+v, want tenant t's only", b.Endpoints)
		}
		wantNoErr(t, s.RecordFanOut(ctx, b, routeBatch(b), now, time.Minute), "RecordFanOut")
		if again, err := s.LeaseFanOut(ctx, "me", now, time.Minute, FanOutRead{Limit: 500}, nil); err != nil || again != nil {
			t.Fatalf("after the record: %+v %v, want nothing left", again, err)
		}

		// Only tenant u's events: nothing to route, the cursor moves all
		// the same; a stale batch's record is refused.
		more := []*AuditEvent{{TenantID: "u", EventType: "y", Details: "{}"}, {TenantID: "u", EventType: "z", Details: "{}"}}
		PrepareEvents(now, more...)
		wantNoErr(t, s.AppendAuditBatch(ctx, more), "AppendAuditBatch")
		all := lease(FanOutRead{Limit: 500, AllEvents: true}, 2)
		if len(all.Events) != 2 || all.Events[0].UID != more[0].UID || all.Events[1].UID != more[1].UID {
			t.Fatalf("AllEvents read %+v, want both of tenant u's events", all.Events)
		}
		quiet := lease(FanOutRead{Limit: 500}, 2)
		if len(quiet.Events) != 0 {
			t.Fatalf("events %+v read for a tenant without endpoints", quiet.Events)
		}
		wantNoErr(t, s.RecordFanOut(ctx, quiet, nil, now, time.Minute), "RecordFanOut without deliveries")
		if err := s.RecordFanOut(ctx, all, nil, now, time.Minute); !errors.Is(err, ErrFanOutLeaseLost) {
			t.Fatalf("recording a batch the cursor moved past: %v, want ErrFanOutLeaseLost", err)
		}
		if again, err := s.LeaseFanOut(ctx, "me", now, time.Minute, FanOutRead{Limit: 500}, nil); err != nil || again != nil {
			t.Fatalf("after the record without deliveries: %+v %v, want nothing left", again, err)
		}
	})
}

// TestClaimTakesOverExpiredLeases: a delivery due for its retry is claimed
// once; while that claim's lease is live no other replica claims it, and
// once the lease is over (its claimer died mid-send) another one does.
func TestClaimTakesOverExpiredLeases(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now().UTC()
		createEndpoint(t, s, now)
		uids := appendEvents(t, s, "p")
		b, ds := leaseAll(t, s, "me", 1, now)
		ds[0].Attempts, ds[0].NextAttemptAt, ds[0].LastError = 1, now.Add(time.Minute), "boom"
		wantNoErr(t, s.RecordFanOut(ctx, b, ds, now, time.Minute), "RecordFanOut")

		claim := func(owner string, at time.Time) []string {
			t.Helper()
			got, err := s.ClaimDeliveries(ctx, owner, at, time.Minute, 10)
			wantNoErr(t, err, "ClaimDeliveries")
			return uidsOf(got)
		}
		if got := claim("a", now); len(got) != 0 {
			t.Fatalf("claimed %v before its retry was due", got)
		}
		if got := claim("a", now.Add(2*time.Minute)); !slices.Equal(got, uids) {
			t.Fatalf("a claimed %v once due, want %v", got, uids)
		}
		if got := claim("b", now.Add(2*time.Minute+30*time.Second)); len(got) != 0 {
			t.Fatalf("b claimed %v under a's live lease", got)
		}
		if got := claim("b", now.Add(4*time.Minute)); !slices.Equal(got, uids) {
			t.Fatalf("b claimed %v after a's lease ended, want %v", got, uids)
		}
	})
}

// TestFanOutRecordReadsBackLeasedIDs: a delivery recorded leased (a
// straggler still being sent) gets its row id back, to be finished by,
// also when another endpoint of the batch was deleted meanwhile (its
// deliveries dropped from the insert); a delivery leased by another token
// (a row already there) gets none.
func TestFanOutRecordReadsBackLeasedIDs(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now().UTC()
		createEndpoint(t, s, now)
		wantNoErr(t, s.CreateWebhookEndpoint(ctx, &WebhookEndpoint{TenantID: "t", ID: "gone", URL: "https://g.example/",
			Secret: []byte("ct"), KeyID: 1, Version: 1, CreatedAt: now.Add(-time.Hour), UpdatedAt: now}), "CreateWebhookEndpoint gone")
		appendEvents(t, s, "p", "q")
		b, ds := leaseAll(t, s, "me", 2, now)
		until := now.Add(time.Minute)
		var straggler int
		for i := range ds {
			switch {
			case ds[i].EndpointID == "e" && ds[i].ProviderID == "p":
				straggler = i
				ds[i].LeaseOwner, ds[i].LeaseUntil = "me/s1", &until
			default:
				ds[i].State, ds[i].Attempts, ds[i].LastStatus = DeliveryDelivered, 1, 204
			}
		}
		wantNoErr(t, s.DeleteWebhookEndpoint(ctx, "t", "gone"), "DeleteWebhookEndpoint mid-batch")
		wantNoErr(t, s.RecordFanOut(ctx, b, ds, now, time.Minute), "RecordFanOut")
		if ds[straggler].ID == 0 {
			t.Fatal("the straggler's row id was not read back")
		}
		var row WebhookDelivery
		wantNoErr(t, s.db.Where("id = ?", ds[straggler].ID).First(&row).Error, "read the straggler's row")
		if row.EventUID != ds[straggler].EventUID || row.EndpointID != "e" || row.LeaseOwner != "me/s1" || row.State != DeliveryPending {
			t.Fatalf("row %d is %+v, not the straggler's pending leased delivery", ds[straggler].ID, row)
		}
		done := ds[straggler]
		done.LastStatus = 204
		wantNoErr(t, s.FinishDelivered(ctx, []WebhookDelivery{done}), "FinishDelivered")
		counts, err := s.DeliveryCounts(ctx, "t", "e")
		wantNoErr(t, err, "DeliveryCounts")
		if counts[DeliveryPending] != 0 || counts[DeliveryDelivered] != 2 {
			t.Fatalf("counts %v after finishing the straggler, want 2 delivered", counts)
		}
	})
}
