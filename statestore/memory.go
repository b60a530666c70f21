package statestore

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"time"
)

// janitorInterval is how often Memory sweeps expired entries. Expiry is also
// checked on every access, so the sweep only bounds memory use.
const janitorInterval = time.Second

// Memory is an in-process Store with the same semantics as Redis. It suits a
// single process (the zero-setup default); state and locks are not shared
// with other processes. It is safe for concurrent use.
type Memory struct {
	now func() time.Time

	mu       sync.Mutex
	closed   bool
	values   map[string]memValue
	locks    map[string]memLock
	receipts map[string]memReceipt

	stop chan struct{}
	done chan struct{}
}

type memValue struct {
	data    []byte
	expires time.Time
}

// memReceipt is a Claim's receipt: the value for its token until settled.
type memReceipt struct {
	token   string
	data    []byte
	settled bool
	expires time.Time
}

type memLock struct {
	owner   string
	expires time.Time
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-process Store. It starts a janitor goroutine
// that removes expired entries; Close stops it.
func NewMemory() *Memory {
	m := &Memory{
		now:      time.Now,
		values:   make(map[string]memValue),
		locks:    make(map[string]memLock),
		receipts: make(map[string]memReceipt),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go m.janitor()
	return m
}

func (m *Memory) janitor() {
	defer close(m.done)
	t := time.NewTicker(janitorInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep deletes every expired value and lock.
func (m *Memory) sweep() {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for k, v := range m.values {
		if !now.Before(v.expires) {
			delete(m.values, k)
		}
	}
	for k, l := range m.locks {
		if !now.Before(l.expires) {
			delete(m.locks, k)
		}
	}
	for k, r := range m.receipts {
		if !now.Before(r.expires) {
			delete(m.receipts, k)
		}
	}
}

// begin locks m and reports whether it is usable; the caller must unlock.
func (m *Memory) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errClosed
	}
	return nil
}

// Put implements Store.
func (m *Memory) Put(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := validate(key, ttl, true); err != nil {
		return err
	}
	if err := m.begin(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	now := m.now()
	if v, ok := m.values[key]; ok && now.Before(v.expires) {
		return ErrExists
	}
	m.values[key] = memValue{data: clone(value), expires: now.Add(ttl)}
	return nil
}

// Take implements Store.
func (m *Memory) Take(ctx context.Context, key string) ([]byte, error) {
	return m.read(ctx, key, true)
}

// Claim implements Store.
func (m *Memory) Claim(ctx context.Context, key, token string, ttl time.Duration) ([]byte, error) {
	if err := validateClaim(key, token); err != nil {
		return nil, err
	}
	if err := validate(key, ttl, true); err != nil {
		return nil, err
	}
	if err := m.begin(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	now := m.now()
	if v, ok := m.values[key]; ok && now.Before(v.expires) {
		delete(m.values, key)
		m.receipts[key] = memReceipt{token: token, data: v.data, expires: now.Add(ttl)}
		return clone(v.data), nil
	}
	if r, ok := m.receipts[key]; ok && r.token == token && !r.settled && now.Before(r.expires) {
		return clone(r.data), nil
	}
	return nil, ErrNotFound
}

// Settle implements Store.
func (m *Memory) Settle(ctx context.Context, key, token string) error {
	if err := validateClaim(key, token); err != nil {
		return err
	}
	if err := m.begin(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	r, ok := m.receipts[key]
	if !ok || r.token != token || r.settled || !m.now().Before(r.expires) {
		return ErrNotFound
	}
	r.settled, r.data = true, nil
	m.receipts[key] = r
	return nil
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, key string) ([]byte, error) {
	return m.read(ctx, key, false)
}

// read returns the unexpired value under key, deleting it when consume is
// set (an expired one is deleted too); a value it keeps is copied.
func (m *Memory) read(ctx context.Context, key string, consume bool) ([]byte, error) {
	if err := validate(key, 0, false); err != nil {
		return nil, err
	}
	if err := m.begin(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	v, ok := m.values[key]
	if consume {
		delete(m.values, key)
	}
	switch {
	case !ok || !m.now().Before(v.expires):
		return nil, ErrNotFound
	case consume:
		return v.data, nil
	}
	return clone(v.data), nil
}

// Lock implements Store.
func (m *Memory) Lock(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	if err := validate(key, ttl, true); err != nil {
		return nil, err
	}
	if err := m.begin(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	now := m.now()
	if l, ok := m.locks[key]; ok && now.Before(l.expires) {
		return nil, ErrLocked
	}
	owner := rand.Text()
	m.locks[key] = memLock{owner: owner, expires: now.Add(ttl)}
	return &memLease{m: m, key: key, owner: owner}, nil
}

// WaitUnlocked implements Store by polling, like Redis.
func (m *Memory) WaitUnlocked(ctx context.Context, key string) error {
	if err := validate(key, 0, false); err != nil {
		return err
	}
	return waitUntil(ctx, func(ctx context.Context) (bool, error) {
		if err := m.begin(ctx); err != nil {
			return false, err
		}
		defer m.mu.Unlock()
		l, ok := m.locks[key]
		return !ok || !m.now().Before(l.expires), nil
	})
}

// Ping implements Store; it fails only after Close.
func (m *Memory) Ping(ctx context.Context) error {
	if err := m.begin(ctx); err != nil {
		return err
	}
	m.mu.Unlock()
	return nil
}

// Close stops the janitor and drops all state. It is safe to call more than once.
func (m *Memory) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.values, m.locks, m.receipts = nil, nil, nil
	m.mu.Unlock()
	close(m.stop)
	<-m.done
	return nil
}

// memLease is a lock held in a Memory store.
type memLease struct {
	m     *Memory
	key   string
	owner string
}

// held reports whether the lease still owns its lock; m.mu must be held.
func (l *memLease) held() bool {
	cur, ok := l.m.locks[l.key]
	return ok && cur.owner == l.owner && l.m.now().Before(cur.expires)
}

func (l *memLease) Release(ctx context.Context) error {
	if err := l.m.begin(ctx); err != nil {
		return err
	}
	defer l.m.mu.Unlock()
	if !l.held() {
		return ErrLeaseLost
	}
	delete(l.m.locks, l.key)
	return nil
}

func (l *memLease) Extend(ctx context.Context, ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("statestore: ttl %v must be positive", ttl)
	}
	if err := l.m.begin(ctx); err != nil {
		return err
	}
	defer l.m.mu.Unlock()
	if !l.held() {
		return ErrLeaseLost
	}
	l.m.locks[l.key] = memLock{owner: l.owner, expires: l.m.now().Add(ttl)}
	return nil
}

func clone(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return append([]byte(nil), b...)
}
