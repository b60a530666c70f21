// Package readlog is the token-read audit at scale: instead of one audit row
// per GetAccessToken, it counts reads per (tenant, provider, caller, minute)
// in memory and adds the counts to the database asynchronously.
//
// # Guarantee
//
// Reads are answerable per caller, provider and minute ("who read which
// token, how often, first and last time"), not per request.
//
//   - Never counted twice: every flush is a batch with a random id that the
//     database records in the same transaction as the counts; a flush retried
//     after a lost acknowledgement is skipped (repository.AddTokenReads).
//   - Bounded loss: a counted read is stored by the first flush that
//     succeeds after it. A process that dies without draining (kill -9, OOM,
//     power loss) loses at most the reads of the last flush interval plus
//     the duration of the flush in flight (default 5 s), and, if the
//     database was unreachable, everything counted since it became
//     unreachable (held in memory, up to MaxKeys aggregates; reads beyond
//     that are dropped, counted in Dropped and logged).
//   - Graceful stop (SIGTERM): Close flushes everything counted, retrying
//     until its context ends, so a drained process loses nothing.
//
// Security-relevant events (denials, refreshes, revocations, failures) are
// not counted here: they stay synchronous audit events.
package readlog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/repository"
)

// Store adds counted reads, once per batch id. *repository.Store implements
// it.
type Store interface {
	AddTokenReads(ctx context.Context, batch string, rows []repository.TokenReads) error
}

var _ Store = (*repository.Store)(nil)

// Clock tells the time; tests pass a stepping clock.
type Clock func() time.Time

// Config tunes the aggregator.
type Config struct {
	// FlushInterval is how often counts are written (the loss window of a
	// crash); default 5s.
	FlushInterval time.Duration
	// MaxKeys bounds the aggregates held in memory (while the database is
	// unreachable they pile up); default 100,000 (about 20 MB).
	MaxKeys int
}

type key struct {
	tenant, provider, actor string
	minute                  int64
}

type count struct {
	n           int64
	first, last int64
}

type batch struct {
	id   string
	rows []repository.TokenReads
}

// Aggregator counts token reads and flushes the counts in the background.
// Record is safe for concurrent use and never waits for the database.
type Aggregator struct {
	store Store
	log   *slog.Logger
	now   Clock
	cfg   Config

	mu      sync.Mutex
	pending map[key]*count

	flushMu sync.Mutex
	unacked *batch // written but not acknowledged: retried under the same id

	dropped atomic.Int64
	stored  atomic.Int64

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// New returns an aggregator flushing to store every cfg.FlushInterval until
// Close.
func New(store Store, log *slog.Logger, now Clock, cfg Config) (*Aggregator, error) {
	if store == nil || log == nil {
		return nil, errors.New("readlog: store and log are required")
	}
	if now == nil {
		now = time.Now
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 5 * time.Second
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 100_000
	}
	a := &Aggregator{store: store, log: log, now: now, cfg: cfg, pending: map[key]*count{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go a.loop()
	return a, nil
}

// Record counts one token read of provider in tenant by the caller in ctx.
func (a *Aggregator) Record(ctx context.Context, tenant, provider string) {
	ms := a.now().UnixMilli()
	k := key{tenant: tenant, provider: provider, actor: caller.ActorName(ctx), minute: ms / 60_000 * 60}
	a.mu.Lock()
	c, ok := a.pending[k]
	if !ok {
		if len(a.pending) >= a.cfg.MaxKeys {
			a.mu.Unlock()
			if a.dropped.Add(1) == 1 {
				a.log.Error("TOKEN READS NOT COUNTED: too many unflushed aggregates (is the database reachable?)", "max_keys", a.cfg.MaxKeys)
			}
			return
		}
		c = &count{first: ms}
		a.pending[k] = c
	}
	c.n++
	c.last = ms
	a.mu.Unlock()
}

// Dropped is how many reads were not counted because MaxKeys aggregates
// were waiting for the database.
func (a *Aggregator) Dropped() int64 { return a.dropped.Load() }

// Stored is how many reads this aggregator has stored.
func (a *Aggregator) Stored() int64 { return a.stored.Load() }

func (a *Aggregator) loop() {
	defer close(a.done)
	t := time.NewTicker(a.cfg.FlushInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.FlushInterval+5*time.Second)
		err := a.Flush(ctx)
		cancel()
		switch {
		case err != nil && !failing:
			failing = true
			a.log.Warn("token read counts not stored yet; retrying every flush interval", "err", err.Error())
		case err == nil && failing:
			failing = false
			a.log.Info("token read counts stored again")
		}
	}
}

// Flush writes what is counted: first a batch left unacknowledged by a
// failed flush (under its id, so the database skips it if it did commit),
// then the counts since.
func (a *Aggregator) Flush(ctx context.Context) error {
	a.flushMu.Lock()
	defer a.flushMu.Unlock()
	for {
		if a.unacked == nil {
			a.unacked = a.take()
			if a.unacked == nil {
				return nil
			}
		}
		if err := a.store.AddTokenReads(ctx, a.unacked.id, a.unacked.rows); err != nil {
			return err
		}
		var n int64
		for _, r := range a.unacked.rows {
			n += r.Reads
		}
		a.stored.Add(n)
		a.unacked = nil
	}
}

// take moves the pending counts into a new batch, or returns nil.
func (a *Aggregator) take() *batch {
	a.mu.Lock()
	p := a.pending
	if len(p) == 0 {
		a.mu.Unlock()
		return nil
	}
	a.pending = make(map[key]*count, len(p))
	a.mu.Unlock()
	b := &batch{id: newBatchID(), rows: make([]repository.TokenReads, 0, len(p))}
	for k, c := range p {
		b.rows = append(b.rows, repository.TokenReads{TenantID: k.tenant, ProviderID: k.provider, Actor: k.actor, Minute: k.minute,
			Reads: c.n, FirstMs: c.first, LastMs: c.last})
	}
	return b
}

// Close stops the periodic flush and flushes everything counted, retrying
// until ctx ends. Reads recorded after Close are counted and flushed by a
// later Flush only.
func (a *Aggregator) Close(ctx context.Context) error {
	a.stopOnce.Do(func() { close(a.stop) })
	<-a.done
	for {
		err := a.Flush(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			a.log.Error("TOKEN READ COUNTS LOST at shutdown: the database did not take them", "err", err.Error())
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func newBatchID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b)
}
