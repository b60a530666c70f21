package audit

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/repository"
)

// countingFeed is an in-memory feed of one tenant that counts its reads
// and can hold them until released.
type countingFeed struct {
	mu     sync.Mutex
	events []repository.AuditEvent
	reads  atomic.Int32
	gate   chan struct{}
}

func (c *countingFeed) EventsAfter(ctx context.Context, tenant string, after repository.EventCursor, limit int) ([]repository.AuditEvent, error) {
	c.reads.Add(1)
	if c.gate != nil {
		select {
		case <-c.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []repository.AuditEvent
	for _, e := range c.events {
		if e.TenantID == tenant && (e.TxID > after.TxID || e.TxID == after.TxID && e.ID > after.ID) && len(out) < limit {
			out = append(out, e)
		}
	}
	return out, nil
}

func (c *countingFeed) FeedEnd(context.Context) (repository.EventCursor, error) {
	return repository.EventCursor{}, nil
}

func (c *countingFeed) EventCursorOf(context.Context, string, string, string) (repository.EventCursor, error) {
	return repository.EventCursor{}, nil
}

func (c *countingFeed) add(tenant string, id int64) {
	c.mu.Lock()
	c.events = append(c.events, repository.AuditEvent{TenantID: tenant, ID: id, UID: tenant + string(rune('a'+id)), EventType: "x"})
	c.mu.Unlock()
}

// TestFeedSharesReadsAmongWatchers: watchers of one tenant at one position
// waiting on a read under way take its answer instead of querying again;
// another tenant, or the same position once the read is older than
// MinReadGap, queries anew, and what a shared read could not see yet comes
// with the next one.
func TestFeedSharesReadsAmongWatchers(t *testing.T) {
	t.Parallel()
	store := &countingFeed{gate: make(chan struct{})}
	store.add("t", 1)
	f, err := NewFeed(store, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	got := make([][]repository.AuditEvent, 5)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rows, err := f.read(ctx, "t", repository.EventCursor{})
			if err != nil {
				t.Error(err)
			}
			got[i] = rows
		}()
	}
	for f.joins.Load() < 4 { // the other watchers join the read under way
		time.Sleep(time.Millisecond)
	}
	close(store.gate)
	wg.Wait()
	if n := store.reads.Load(); n != 1 {
		t.Fatalf("5 watchers at one position made %d reads, want 1", n)
	}
	for i, rows := range got {
		if len(rows) != 1 || rows[0].ID != 1 {
			t.Fatalf("watcher %d got %v, want event 1", i, rows)
		}
	}
	if _, err := f.read(ctx, "u", repository.EventCursor{}); err != nil || store.reads.Load() != 2 {
		t.Fatalf("another tenant's read: %v, %d reads in all, want 2", err, store.reads.Load())
	}
	store.add("t", 2)
	time.Sleep(MinReadGap)
	rows, err := f.read(ctx, "t", repository.EventCursor{})
	if err != nil || len(rows) != 2 {
		t.Fatalf("read after MinReadGap: %v, %v; want events 1 and 2", rows, err)
	}
}
