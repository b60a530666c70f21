package statestore

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestMemorySweepRemovesExpired(t *testing.T) {
	t.Parallel()
	m := NewMemory()
	defer m.Close()
	now := time.Now()
	m.now = func() time.Time { return now }
	ctx := t.Context()
	if err := m.Put(ctx, "short", []byte("v"), time.Second); err != nil {
		t.Fatal(err)
	}
	if err := m.Put(ctx, "long", []byte("v"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Lock(ctx, "lock", time.Second); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Second)
	m.sweep()
	m.mu.Lock()
	nv, nl := len(m.values), len(m.locks)
	m.mu.Unlock()
	if nv != 1 || nl != 0 {
		t.Fatalf("after sweep: %d values, %d locks; want 1, 0", nv, nl)
	}
}

func TestMemoryCopiesValues(t *testing.T) {
	t.Parallel()
	m := NewMemory()
	defer m.Close()
	v := []byte("abc")
	if err := m.Put(t.Context(), "k", v, time.Minute); err != nil {
		t.Fatal(err)
	}
	v[0] = 'X'
	got, err := m.Take(t.Context(), "k")
	if err != nil || string(got) != "abc" {
		t.Fatalf("Take = %q, %v; the caller's later write leaked in", got, err)
	}
}

func TestMemoryClosed(t *testing.T) {
	t.Parallel()
	m := NewMemory()
	l, err := m.Lock(t.Context(), "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for name, err := range map[string]error{
		"Put":     m.Put(t.Context(), "k", []byte("v"), time.Minute),
		"Ping":    m.Ping(t.Context()),
		"Release": l.Release(t.Context()),
		"Wait":    m.WaitUnlocked(t.Context(), "k"),
	} {
		if !IsUnavailable(err) {
			t.Errorf("%s after Close: %v, want unavailable", name, err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	m2 := NewMemory()
	defer m2.Close()
	if _, err := m2.Take(ctx, "k"); !errors.Is(err, context.Canceled) || IsUnavailable(err) {
		t.Errorf("Take with a cancelled context: %v", err)
	}
}
