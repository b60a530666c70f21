package statestore

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Broadcast tells every replica sharing the Redis that something happened
// (events were committed, a cached row changed), over Redis pub/sub. A
// message carries no data, only its topic: what changed is read from the
// database, so nothing secret or tenant-specific ever goes through Redis,
// and a lost message (pub/sub is at most once, and a replica that is
// reconnecting misses what was published meanwhile) only delays the
// receiver until its own polling or TTL catches up.
//
// Notify never blocks its caller: notifications of one topic that arrive
// while one is being published are coalesced into one more message.
type Broadcast struct {
	client redis.UniversalClient
	// own is client when the broadcast dialled its own pool (closed by
	// Close), nil when it shares the store's.
	own    redis.UniversalClient
	prefix string
	log    *slog.Logger

	mu      sync.Mutex
	pending map[string]bool // topics with a publish queued
	kick    chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup
}

// NewBroadcast returns the broadcast of the Redis store r; Close stops it.
// It publishes and subscribes through a pool of its own: during a Redis
// outage its publishes and go-redis's resubscribe attempts fail to dial,
// and through the shared pool they would keep go-redis's dial circuit
// breaker open and fail the flow-state calls after Redis is back.
func (r *Redis) NewBroadcast(log *slog.Logger) *Broadcast {
	client, own, sibling := r.client, redis.UniversalClient(nil), r.sibling
	if sibling == nil {
		sibling = siblings(r.client)
	}
	if sibling != nil {
		// Publishes are sequential; the subscription has its own connection.
		own = sibling(2, false)
		client = own
	}
	b := &Broadcast{client: client, own: own, prefix: r.prefix + "bcast:", log: log, pending: map[string]bool{},
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	b.wg.Add(1)
	go b.publisher()
	return b
}

// Notify publishes topic to every replica (this one included), soon.
func (b *Broadcast) Notify(topic string) {
	b.mu.Lock()
	b.pending[topic] = true
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func (b *Broadcast) publisher() {
	defer b.wg.Done()
	for {
		select {
		case <-b.done:
			return
		case <-b.kick:
		}
		b.mu.Lock()
		topics := make([]string, 0, len(b.pending))
		for t := range b.pending {
			topics = append(topics, t)
		}
		clear(b.pending)
		b.mu.Unlock()
		for _, t := range topics {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := b.client.Publish(ctx, b.prefix+t, "1").Err(); err != nil {
				b.log.Warn("redis broadcast failed; other replicas catch up by polling", "topic", t, "error", redactURLError(err).Error())
			}
			cancel()
		}
		// Coalesce: notifications that come in the next moments go out
		// together (under load the audit writer commits hundreds of
		// times a second, and each commit notified every replica).
		select {
		case <-b.done:
			return
		case <-time.After(broadcastMinGap):
		}
	}
}

// broadcastMinGap is the least time between two rounds of publishes: what
// a notification may wait at most for the one before it. Event readers
// read at most every 20 ms anyway (audit.MinReadGap).
const broadcastMinGap = 10 * time.Millisecond

// Listen calls on[topic] for every message of its topic (from any
// replica) until Close, resubscribing after a lost connection (go-redis
// does that itself). It returns once subscribed, or with ctx's error.
func (b *Broadcast) Listen(ctx context.Context, on map[string]func()) error {
	channels := make([]string, 0, len(on))
	for t := range on {
		channels = append(channels, b.prefix+t)
	}
	sub := b.client.Subscribe(ctx, channels...)
	if _, err := sub.Receive(ctx); err != nil {
		_ = sub.Close()
		return redactURLError(err)
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer sub.Close()
		ch := sub.Channel()
		for {
			select {
			case <-b.done:
				return
			case m, ok := <-ch:
				if !ok {
					return
				}
				if f := on[m.Channel[len(b.prefix):]]; f != nil {
					f()
				}
			}
		}
	}()
	return nil
}

// Close stops publishing and listening.
func (b *Broadcast) Close() {
	select {
	case <-b.done:
		return
	default:
		close(b.done)
	}
	b.wg.Wait()
	if b.own != nil {
		_ = b.own.Close()
	}
}
