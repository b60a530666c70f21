package audit

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
)

// FeedStore reads the event feed. *repository.Store implements it.
type FeedStore interface {
	EventsAfter(ctx context.Context, tenant string, after repository.EventCursor, limit int) ([]repository.AuditEvent, error)
	FeedEnd(ctx context.Context) (repository.EventCursor, error)
	EventCursorOf(ctx context.Context, tenant, uid, field string) (repository.EventCursor, error)
}

var _ FeedStore = (*repository.Store)(nil)

// Wakeup broadcasts "new events may be stored" to every waiting reader.
// The store's commit hook calls Notify in this process; other replicas'
// events are found by polling.
type Wakeup struct {
	mu sync.Mutex
	ch chan struct{}
}

// NewWakeup returns a Wakeup with no waiters.
func NewWakeup() *Wakeup { return &Wakeup{ch: make(chan struct{})} }

// Notify wakes every current waiter.
func (w *Wakeup) Notify() {
	w.mu.Lock()
	close(w.ch)
	w.ch = make(chan struct{})
	w.mu.Unlock()
}

// C returns a channel closed at the next Notify.
func (w *Wakeup) C() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

// Recheck schedules reads after a wake-up: the commit that woke the reader
// may still be hidden behind an older transaction (the feed reads below
// the oldest running one), so it is read again after 10 ms, 20 ms, 40 ms...
// until the poll interval takes over. Without it, such a commit would wait
// for the next poll, however immediate the wake-up.
type Recheck struct {
	poll time.Duration
	next time.Duration
}

// NewRecheck returns a Recheck handing over to polling at poll.
func NewRecheck(poll time.Duration) *Recheck { return &Recheck{poll: poll} }

// Woken restarts the schedule.
func (r *Recheck) Woken() { r.next = 10 * time.Millisecond }

// C returns the channel of the next scheduled read (nil when polling has
// taken over) and advances the schedule.
func (r *Recheck) C() <-chan time.Time {
	if r.next == 0 || r.next >= r.poll {
		return nil
	}
	c := time.After(r.next)
	r.next *= 2
	return c
}

// Feed streams a tenant's events as they are stored (WatchEvents).
//
// Guarantee: a watcher sees every event of its tenant stored after it
// started (or after the event it resumes from), each once, in feed order
// (see repository.EventCursor): resuming after the last event received
// neither repeats nor skips one, across disconnects, restarts and replicas.
// Events arrive once every older transaction has ended; with no long
// transactions that is within the poll interval, within MinReadGap for
// events written by this replica (or by another, with Redis). A watcher that never received an event resumes from
// "now" (it has no position to resume from).
type Feed struct {
	store FeedStore
	wake  *Wakeup
	poll  time.Duration

	// reads shares reads among the watchers of a tenant at one position
	// (see read).
	mu    sync.Mutex
	reads map[readKey]*sharedRead
	// joins counts the reads that joined one under way (for tests, which
	// wait until the watchers are blocked on it).
	joins atomic.Int64
}

// readKey is a read of a tenant's feed after a position.
type readKey struct {
	tenant string
	after  repository.EventCursor
}

// sharedRead is a read of the feed, done or under way.
type sharedRead struct {
	done chan struct{}
	// at is when the read started; rows and err are set once done.
	at   time.Time
	rows []repository.AuditEvent
	err  error
}

// NewFeed returns a feed over store, polling every poll (default 250 ms) and
// woken early by wake (optional).
func NewFeed(store FeedStore, wake *Wakeup, poll time.Duration) (*Feed, error) {
	if store == nil {
		return nil, errors.New("audit feed: store is required")
	}
	if poll <= 0 {
		poll = 250 * time.Millisecond
	}
	if wake == nil {
		wake = NewWakeup()
	}
	return &Feed{store: store, wake: wake, poll: poll, reads: map[readKey]*sharedRead{}}, nil
}

// read returns the tenant's events after cur (EventsAfter), sharing one
// query among the watchers that read from the same position at about the
// same time: a watcher joins a read under way, or takes one that started
// less than MinReadGap ago. A shared answer may end earlier than a fresh
// one would (events that became readable since), never differ from it
// below its end: the feed's order never changes once read, so the
// watcher's next read goes on from there without a gap. Ten watchers of
// one tenant then cost one query per round instead of ten.
func (f *Feed) read(ctx context.Context, tenant string, cur repository.EventCursor) ([]repository.AuditEvent, error) {
	k := readKey{tenant, cur}
	now := time.Now()
	f.mu.Lock()
	if r := f.reads[k]; r != nil {
		select {
		case <-r.done:
			if r.err == nil && now.Sub(r.at) < MinReadGap {
				f.mu.Unlock()
				return r.rows, nil
			}
		default:
			f.joins.Add(1)
			f.mu.Unlock()
			select {
			case <-r.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if r.err == nil {
				return r.rows, nil
			}
			return f.store.EventsAfter(ctx, tenant, cur, feedBatch)
		}
	}
	r := &sharedRead{done: make(chan struct{}), at: now}
	f.reads[k] = r
	if len(f.reads) > maxSharedReads {
		for key, old := range f.reads {
			select {
			case <-old.done:
				if now.Sub(old.at) >= MinReadGap {
					delete(f.reads, key)
				}
			default:
			}
		}
	}
	f.mu.Unlock()
	r.rows, r.err = f.store.EventsAfter(ctx, tenant, cur, feedBatch)
	close(r.done)
	return r.rows, r.err
}

// maxSharedReads is how many reads the feed keeps before dropping the
// stale ones (older than MinReadGap): it holds those of the last few
// milliseconds only.
const maxSharedReads = 32

// feedBatch bounds one read of the feed.
const feedBatch = 500

// MinReadGap spaces the reads of one feed reader woken by commits: at 1,000
// events/s commits come every few milliseconds, and a reader that read
// after each would cost the database a query per commit and reader (and
// more with the rechecks); waiting this long after the last read lets one
// read take them all, at a latency cost of at most this gap.
const MinReadGap = 20 * time.Millisecond

// Spaced waits until gap has passed since last, or ctx ends; it reports
// whether ctx is still live.
func Spaced(ctx context.Context, last time.Time, gap time.Duration) bool {
	wait := gap - time.Since(last)
	if wait <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Watch sends the tenant's events to send, in feed order, from after the
// event with uid afterUID ("" for events stored from now on), until ctx ends
// or send fails. It returns send's error, or ctx's.
func (f *Feed) Watch(ctx context.Context, tenant, afterUID string, send func(Entry) error) error {
	var cur repository.EventCursor
	var err error
	if afterUID != "" {
		cur, err = f.store.EventCursorOf(ctx, tenant, afterUID, "resume_after")
	} else {
		cur, err = f.store.FeedEnd(ctx)
	}
	if err != nil {
		return err
	}
	t := time.NewTicker(f.poll)
	defer t.Stop()
	recheck := NewRecheck(f.poll)
	for {
		woken := f.wake.C()
		last := time.Now()
		rows, err := f.read(ctx, tenant, cur)
		if err != nil {
			return err
		}
		for i := range rows {
			if err := send(entryOf(&rows[i])); err != nil {
				return err
			}
			cur = rows[i].Cursor()
		}
		if len(rows) == feedBatch {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-woken:
			// A commit (of any replica, with Redis): its transaction may
			// still be below the horizon of an older one.
			recheck.Woken()
		case <-recheck.C():
		case <-t.C:
		}
		if !Spaced(ctx, last, MinReadGap) {
			return ctx.Err()
		}
	}
}

// entryOf turns a stored row into an Entry.
func entryOf(r *repository.AuditEvent) Entry {
	e := Entry{UID: r.UID, Time: r.CreatedAt, Type: domain.EventType(r.EventType), Actor: r.Actor, Provider: r.ProviderID, User: r.UserID,
		Outcome: domain.Outcome(r.Outcome), Reason: r.Reason, RequestID: r.RequestID}
	if r.Details != "" && r.Details != "{}" {
		_ = json.Unmarshal([]byte(r.Details), &e.Details)
	}
	return e
}
