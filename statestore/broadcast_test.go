package statestore_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/statestore"
)

// TestBroadcastReachesOtherReplicas: a notification published by one
// replica wakes the listeners of every replica on the same Redis (and
// prefix), for its topic only.
func TestBroadcastReachesOtherReplicas(t *testing.T) {
	client, prefix := redisClient(t), redisPrefix(t)
	log := slog.New(slog.DiscardHandler)
	a, b := statestore.NewRedis(client, prefix).NewBroadcast(log), statestore.NewRedis(client, prefix).NewBroadcast(log)
	defer a.Close()
	defer b.Close()
	events, changed := make(chan struct{}, 10), make(chan struct{}, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Listen(ctx, map[string]func(){
		"events":  func() { events <- struct{}{} },
		"changed": func() { changed <- struct{}{} },
	}); err != nil {
		t.Fatal(err)
	}
	a.Notify("events")
	select {
	case <-events:
	case <-ctx.Done():
		t.Fatal("the other replica's listener was not woken")
	}
	select {
	case <-changed:
		t.Fatal("a notification of one topic woke another topic's listener")
	default:
	}
	// Another prefix (another deployment on the same Redis) hears nothing.
	c := statestore.NewRedis(client, prefix+"other:").NewBroadcast(log)
	defer c.Close()
	c.Notify("changed")
	a.Notify("changed")
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("the changed topic never arrived")
	}
	time.Sleep(200 * time.Millisecond) // let a stray message from the other prefix arrive, if it were delivered
	if n := len(changed); n != 0 {
		t.Fatalf("%d extra notifications: the other prefix's message was delivered", n)
	}
}
