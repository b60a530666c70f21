package audit

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/servicetest"
)

// lingeringAuditor returns an Auditor whose batches of RecordAsync events
// wait an hour for company: in these tests only a Record, a full batch,
// Flush or Shutdown can end the wait. It reports each batch's size on sizes.
func lingeringAuditor(t *testing.T) (*Auditor, *servicetest.Store, chan int) {
	t.Helper()
	st, sizes := servicetest.NewStore(nil), make(chan int, 64)
	hooked := &hookedStore{Store: st, before: func(events []*repository.AuditEvent) error {
		sizes <- len(events)
		return nil
	}}
	a := NewAuditor(hooked, slog.New(slog.NewTextHandler(&logBuffer{}, nil)), servicetest.NewClock(epoch).Now, WithLinger(time.Hour))
	t.Cleanup(a.Close)
	return a, st, sizes
}

func started(provider string) Event {
	return Event{Tenant: "t1", Type: domain.EventAuthStarted, Provider: provider, Outcome: domain.OutcomeSuccess}
}

// TestRecordAsyncDoesNotWait checks that RecordAsync returns while the
// write of its event is held, and that the event is stored afterwards.
func TestRecordAsyncDoesNotWait(t *testing.T) {
	t.Parallel()
	a, st, g, _ := gatedAuditor(t)
	a.RecordAsync(context.Background(), started("p1")) // returns with the write held
	if n := <-g.entered; n != 1 {
		t.Fatalf("batch of %d events, want 1", n)
	}
	close(g.release)
	if err := a.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if evs := st.Events(); len(evs) != 1 || evs[0].EventType != string(domain.EventAuthStarted) || evs[0].ProviderID != "p1" {
		t.Fatalf("stored %+v", evs)
	}
}

// TestRecordAsyncLingersUntilARecord checks that events nobody waits for
// wait for company, and that a Record (which someone waits for) takes them
// along at once: one batch, every event stored once.
func TestRecordAsyncLingersUntilARecord(t *testing.T) {
	t.Parallel()
	a, st, sizes := lingeringAuditor(t)
	for _, p := range []string{"p1", "p2", "p3"} {
		a.RecordAsync(context.Background(), started(p))
	}
	waitFor(t, "the three events queued", func() bool { return a.queued() == 3 })
	// Returns once its batch was tried: with the hour-long linger, only
	// because a Record does not linger.
	a.Record(context.Background(), Event{Tenant: "t1", Type: domain.EventAuthRevoked, Provider: "p4"})
	if n := <-sizes; n != 4 {
		t.Fatalf("first batch of %d events, want the 3 lingering ones and the Record's", n)
	}
	if got := len(st.Events()); got != 4 {
		t.Fatalf("stored %d events, want 4", got)
	}
}

// TestRecordAsyncFullBatchCommits checks that a batch stops lingering once
// it has lingerBatch events.
func TestRecordAsyncFullBatchCommits(t *testing.T) {
	t.Parallel()
	a, st, sizes := lingeringAuditor(t)
	for range lingerBatch {
		a.RecordAsync(context.Background(), started("p1"))
	}
	total := 0
	for total < lingerBatch {
		total += <-sizes
	}
	if got := len(st.Events()); got != lingerBatch {
		t.Fatalf("stored %d events, want %d", got, lingerBatch)
	}
}

// TestFlushAndShutdownEndTheLinger checks that Flush returns with lingering
// events stored, that a Flush bounded by a context ends with the context,
// and that Shutdown stores what lingers.
func TestFlushAndShutdownEndTheLinger(t *testing.T) {
	t.Parallel()
	t.Run("flush", func(t *testing.T) {
		t.Parallel()
		a, st, _ := lingeringAuditor(t)
		a.RecordAsync(context.Background(), started("p1"))
		a.RecordAsync(context.Background(), started("p2"))
		if err := a.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := len(st.Events()); got != 2 {
			t.Fatalf("stored %d events after Flush, want 2", got)
		}
	})
	t.Run("flush bounded", func(t *testing.T) {
		t.Parallel()
		a, _, g, _ := gatedAuditor(t)
		a.RecordAsync(context.Background(), started("p1"))
		<-g.entered // the write is held: Flush cannot see it stored
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := a.Flush(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Flush = %v, want the context's error", err)
		}
		close(g.release)
	})
	t.Run("shutdown", func(t *testing.T) {
		t.Parallel()
		a, st, _ := lingeringAuditor(t)
		a.RecordAsync(context.Background(), started("p1"))
		waitFor(t, "the event queued", func() bool { return a.queued() == 1 })
		if err := a.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := len(st.Events()); got != 1 {
			t.Fatalf("stored %d events after Shutdown, want 1", got)
		}
	})
}
