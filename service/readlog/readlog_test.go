package readlog

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/repository"
)

// memStore is a working in-memory token-read store with the database's
// once-per-batch rule, and two faults: fail (nothing applied, error) and
// loseAck (applied, error: the commit's acknowledgement lost in transit).
type memStore struct {
	mu      sync.Mutex
	applied map[string]bool
	counts  map[repository.TokenReadsCursor]map[string]repository.TokenReads // (minute, provider, actor) → tenant → row
	fail    int
	loseAck int
	calls   int
}

func newMemStore() *memStore {
	return &memStore{applied: map[string]bool{}, counts: map[repository.TokenReadsCursor]map[string]repository.TokenReads{}}
}

func (m *memStore) AddTokenReads(_ context.Context, b string, rows []repository.TokenReads) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if m.fail > 0 {
		m.fail--
		return errors.New("database unavailable")
	}
	if !m.applied[b] {
		m.applied[b] = true
		for _, r := range rows {
			k := repository.TokenReadsCursor{Minute: r.Minute, ProviderID: r.ProviderID, Actor: r.Actor}
			if m.counts[k] == nil {
				m.counts[k] = map[string]repository.TokenReads{}
			}
			cur, ok := m.counts[k][r.TenantID]
			if ok {
				r.Reads += cur.Reads
				r.FirstMs = min(r.FirstMs, cur.FirstMs)
				r.LastMs = max(r.LastMs, cur.LastMs)
			}
			m.counts[k][r.TenantID] = r
		}
	}
	if m.loseAck > 0 {
		m.loseAck--
		return errors.New("connection reset after commit")
	}
	return nil
}

func (m *memStore) total() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for _, byTenant := range m.counts {
		for _, r := range byTenant {
			n += r.Reads
		}
	}
	return n
}

func (m *memStore) row(tenant, provider, actor string, minute int64) repository.TokenReads {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[repository.TokenReadsCursor{Minute: minute, ProviderID: provider, Actor: actor}][tenant]
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func as(name string) context.Context {
	return caller.WithIdentity(context.Background(), &caller.Identity{Name: name})
}

func newAgg(t *testing.T, s Store, c *clock, cfg Config) *Aggregator {
	t.Helper()
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = time.Hour // tests flush by hand
	}
	a, err := New(s, slog.New(slog.NewTextHandler(io.Discard, nil)), c.now, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(context.Background()) })
	return a
}

func TestCountsPerTenantProviderCallerMinute(t *testing.T) {
	s := newMemStore()
	c := &clock{t: time.Date(2026, 11, 30, 1, 0, 10, 0, time.UTC)}
	a := newAgg(t, s, c, Config{})
	for range 3 {
		a.Record(as("svc"), "t1", "p")
		c.add(time.Second)
	}
	a.Record(as("ops"), "t1", "p")
	a.Record(as("svc"), "t2", "p")
	a.Record(as("svc"), "t1", "q")
	c.add(time.Minute)
	a.Record(as("svc"), "t1", "p")
	if err := a.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	m0 := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC).Unix()
	got := s.row("t1", "p", "svc", m0)
	start := time.Date(2026, 11, 30, 1, 0, 10, 0, time.UTC).UnixMilli()
	if got.Reads != 3 || got.FirstMs != start || got.LastMs != start+2000 {
		t.Errorf("t1/p/svc = %+v", got)
	}
	for _, k := range []struct {
		tenant, provider, actor string
		minute                  int64
	}{{"t1", "p", "ops", m0}, {"t2", "p", "svc", m0}, {"t1", "q", "svc", m0}, {"t1", "p", "svc", m0 + 60}} {
		if r := s.row(k.tenant, k.provider, k.actor, k.minute); r.Reads != 1 {
			t.Errorf("%+v = %+v, want 1 read", k, r)
		}
	}
	if s.total() != 7 || a.Stored() != 7 {
		t.Errorf("stored %d (aggregator says %d), want 7", s.total(), a.Stored())
	}
	// Nothing new: no write.
	calls := s.calls
	if err := a.Flush(context.Background()); err != nil || s.calls != calls {
		t.Errorf("empty flush: %v, %d calls", err, s.calls-calls)
	}
}

// A flush whose commit succeeded but whose acknowledgement was lost is
// retried under the same batch id: the reads are counted once, and reads
// recorded meanwhile follow in the next batch.
func TestRetryAfterLostAckNeverDoubles(t *testing.T) {
	s := newMemStore()
	c := &clock{t: time.Unix(6000, 0)}
	a := newAgg(t, s, c, Config{})
	for range 5 {
		a.Record(as("svc"), "t1", "p")
	}
	s.loseAck = 1
	if err := a.Flush(context.Background()); err == nil {
		t.Fatal("flush with a lost acknowledgement reported success")
	}
	a.Record(as("svc"), "t1", "p")
	if err := a.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := s.total(); n != 6 {
		t.Errorf("stored %d reads, want 6 (5 once, then 1)", n)
	}
	if a.Stored() != 6 {
		t.Errorf("Stored() = %d", a.Stored())
	}
}

// While the database is down counts wait in memory, bounded by MaxKeys;
// Close retries until they are stored.
func TestOutageHoldsCountsBoundedAndCloseDrains(t *testing.T) {
	s := newMemStore()
	c := &clock{t: time.Unix(6000, 0)}
	a := newAgg(t, s, c, Config{MaxKeys: 2})
	a.Record(as("a"), "t1", "p")
	s.fail = 3
	if err := a.Flush(context.Background()); err == nil {
		t.Fatal("flush during an outage reported success")
	}
	a.Record(as("a"), "t1", "p") // same key as the unacked batch, new pending aggregate
	a.Record(as("b"), "t1", "p")
	a.Record(as("c"), "t1", "p") // a third key: over MaxKeys, dropped
	a.Record(as("b"), "t1", "p") // existing key: counted
	if a.Dropped() != 1 {
		t.Errorf("Dropped() = %d, want 1", a.Dropped())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := s.total(); n != 4 {
		t.Errorf("stored %d, want 4", n)
	}
	if r := s.row("t1", "p", "a", 6000); r.Reads != 2 {
		t.Errorf("a = %+v, want 2 reads", r)
	}
}

func TestCloseGivesUpWhenItsContextEnds(t *testing.T) {
	s := newMemStore()
	s.fail = 1 << 30
	a := newAgg(t, s, &clock{t: time.Unix(0, 0)}, Config{})
	a.Record(as("a"), "t1", "p")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := a.Close(ctx); err == nil {
		t.Fatal("Close reported success without storing")
	}
	s.mu.Lock()
	s.fail = 0 // let the cleanup's Close finish
	s.mu.Unlock()
}

// The background loop flushes on its own every FlushInterval.
func TestPeriodicFlush(t *testing.T) {
	s := newMemStore()
	a := newAgg(t, s, &clock{t: time.Unix(600, 0)}, Config{FlushInterval: 20 * time.Millisecond})
	a.Record(as("a"), "t1", "p")
	deadline := time.Now().Add(10 * time.Second)
	for s.total() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("not flushed within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConcurrentRecordsAllCounted(t *testing.T) {
	s := newMemStore()
	a := newAgg(t, s, &clock{t: time.Unix(600, 0)}, Config{FlushInterval: time.Millisecond})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				a.Record(as("svc"), "t1", []string{"p", "q"}[g%2])
			}
		}()
	}
	wg.Wait()
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := s.total(); n != 8000 {
		t.Errorf("stored %d, want 8000", n)
	}
}

func TestNewAndListValidate(t *testing.T) {
	if _, err := New(nil, nil, nil, Config{}); err == nil {
		t.Error("New without store")
	}
	if _, err := NewLog(nil); err == nil {
		t.Error("NewLog without store")
	}
}

// ListTokenReads makes memStore a Lister with the repository's order:
// minute, provider, actor, all descending, after the cursor.
func (m *memStore) ListTokenReads(_ context.Context, tenant string, f repository.TokenReadsFilter, after repository.TokenReadsCursor, limit int) ([]repository.TokenReads, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []repository.TokenReads
	for k, byTenant := range m.counts {
		r, ok := byTenant[tenant]
		if !ok || f.ProviderID != "" && k.ProviderID != f.ProviderID {
			continue
		}
		if after != (repository.TokenReadsCursor{}) && !less(k, after) {
			continue
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b repository.TokenReads) int {
		ka := repository.TokenReadsCursor{Minute: a.Minute, ProviderID: a.ProviderID, Actor: a.Actor}
		kb := repository.TokenReadsCursor{Minute: b.Minute, ProviderID: b.ProviderID, Actor: b.Actor}
		if less(kb, ka) {
			return -1
		}
		return 1
	})
	return out[:min(limit, len(out))], nil
}

func less(a, b repository.TokenReadsCursor) bool {
	if a.Minute != b.Minute {
		return a.Minute < b.Minute
	}
	if a.ProviderID != b.ProviderID {
		return a.ProviderID < b.ProviderID
	}
	return a.Actor < b.Actor
}

func TestLogListsStoredCounts(t *testing.T) {
	s := newMemStore()
	c := &clock{t: time.Date(2026, 11, 30, 1, 0, 30, 0, time.UTC)}
	a := newAgg(t, s, c, Config{})
	a.Record(as("svc"), "t1", "p")
	a.Record(as("svc"), "t1", "p")
	a.Record(as("ops"), "t1", "q")
	a.Record(as("svc"), "t2", "p")
	c.add(time.Minute)
	a.Record(as("svc"), "t1", "p")
	if err := a.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	l, err := NewLog(s)
	if err != nil {
		t.Fatal(err)
	}
	m0 := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)
	var got []Reads
	var cur Cursor
	for {
		page, err := l.List(context.Background(), "t1", "", cur, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		got = append(got, page...)
		last := page[len(page)-1]
		cur = Cursor{Minute: last.Minute, Provider: last.Provider, Actor: last.Actor}
	}
	want := []Reads{
		{Provider: "p", Actor: "svc", Minute: m0.Add(time.Minute), Count: 1, First: m0.Add(90 * time.Second), Last: m0.Add(90 * time.Second)},
		{Provider: "q", Actor: "ops", Minute: m0, Count: 1, First: m0.Add(30 * time.Second), Last: m0.Add(30 * time.Second)},
		{Provider: "p", Actor: "svc", Minute: m0, Count: 2, First: m0.Add(30 * time.Second), Last: m0.Add(30 * time.Second)},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	only, err := l.List(context.Background(), "t1", "q", Cursor{}, 10)
	if err != nil || len(only) != 1 || only[0].Provider != "q" {
		t.Errorf("provider q: %+v, %v", only, err)
	}
}
