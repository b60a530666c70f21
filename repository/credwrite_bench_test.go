package repository

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// BenchmarkPutCredential is the cost of the refresh's write: PutCredential
// over the generation it read, with the token.refreshed event in the same
// transaction, on PostgreSQL. tenant-grant writes one TENANT grant over
// and over from one goroutine; user-grants writes random users' grants of
// one USER provider with 1,000 users from 16 goroutines a CPU at once, so that
// writers of one provider's grants meet (they queue on the provider row,
// whose cred_generation every write may raise). Run old and new side by
// side:
//
//	go test -run '^$' -bench PutCredential -count 3 ./repository/
func BenchmarkPutCredential(b *testing.B) {
	b.Run("tenant-grant", func(b *testing.B) {
		s := openStore(b, testenv.PostgresDSN(b))
		ctx := context.Background()
		mustCreate(b, s, newProvider("a", "p1"))
		gen, err := s.PutCredential(ctx, newCredential("a", "p1", "t0"), 0)
		wantNoErr(b, err, "seed")
		for b.Loop() {
			gen, err = s.PutCredential(ctx, newCredential("a", "p1", "t"), gen, benchRefreshed("a", "p1", ""))
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("user-grants-1k-parallel", func(b *testing.B) {
		const users, parallelism = 1000, 16
		workers := parallelism * runtime.GOMAXPROCS(0)
		s := openStore(b, testenv.PostgresDSN(b))
		ctx := context.Background()
		p := newProvider("a", "people")
		p.GrantScope = domain.ScopeUser
		mustCreate(b, s, p)
		// Each worker owns the users i with i % workers == its number,
		// and remembers their generations: no compare-and-swap is lost.
		gens := make([]int64, users)
		for i := range users {
			c := newCredential("a", "people", "t0")
			c.UserID = fmt.Sprintf("u%04d", i)
			g, err := s.PutCredential(ctx, c, 0)
			wantNoErr(b, err, "seed %s", c.UserID)
			gens[i] = g
		}
		var next atomic.Int64
		b.SetParallelism(parallelism)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			w := int(next.Add(1)-1) % workers
			i := w
			for pb.Next() {
				c := newCredential("a", "people", "t")
				c.UserID = fmt.Sprintf("u%04d", i)
				g, err := s.PutCredential(ctx, c, gens[i], benchRefreshed("a", "people", c.UserID))
				if err != nil {
					b.Error(err)
					return
				}
				gens[i] = g
				if i += workers; i >= users {
					i = w
				}
			}
		})
	})
}

// benchRefreshed is a token.refreshed event of a grant.
func benchRefreshed(tenant, provider, user string) *AuditEvent {
	return &AuditEvent{TenantID: tenant, EventType: "token.refreshed", Actor: "bench", ProviderID: provider, UserID: user, Outcome: 1}
}
