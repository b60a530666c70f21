package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestReplicasWakeEachOtherThroughRedis: with Redis, a change on one
// replica reaches the other without waiting for its polling or its cache
// TTL. Polling is set to 10 minutes and the provider cache to its maximum,
// 10 s, so only the Redis message can explain an answer within the
// waits below (30 s for a stream event, 5 s for a cached read).
func TestReplicasWakeEachOtherThroughRedis(t *testing.T) {
	t.Parallel()
	env := evEnv(map[string]string{"MCPAUTH_EVENTS_POLL": "10m", "MCPAUTH_PROVIDER_CACHE_TTL": "10s"})
	a := Start(t, Options{Postgres: true, Redis: true, Env: env})
	b := Start(t, Options{DSN: a.DSN, RedisURL: a.RedisURL, DataDir: a.DataDir, Env: env})

	// A WatchEvents stream on a sees an event committed on b.
	ch := make(chan *mcpauthv1.AuditEvent, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = evWatch(ctx, a, a.AdminKey, "acme", "", ch) }()
	time.Sleep(300 * time.Millisecond) // the stream starts "from now"
	created := provCreate(t, b, b.AdminKey, "acme", "p1", provNewProvider("1"))
	select {
	case e := <-ch:
		if e.GetEventType() != "provider.created" {
			t.Fatalf("first event %q, want provider.created", e.GetEventType())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the stream on the other replica was not woken (its poll is 10 minutes)")
	}

	// a caches the provider; b renames it; a's next reads see the new name
	// long before the 10 s TTL.
	if got := provGet(t, a, a.AdminKey, created.GetName()); got.GetDisplayName() != created.GetDisplayName() {
		t.Fatalf("display name %q", got.GetDisplayName())
	}
	if _, err := b.Providers().UpdateProvider(Ctx(t, b.AdminKey), &mcpauthv1.UpdateProviderRequest{
		Provider:   &mcpauthv1.Provider{Name: created.GetName(), DisplayName: "renamed on b"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}},
	}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if provGet(t, a, a.AdminKey, created.GetName()).GetDisplayName() == "renamed on b" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("replica a still serves its cached provider 5 s after b changed it")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
