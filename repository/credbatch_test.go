package repository

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// TestCredentialBatcher: many concurrent reads through the batcher (so
// most share statements) each get exactly their own grant's row, in their
// own tenant, and NotFound for a grant that exists only in another tenant
// or not at all; a missing tenant is refused before any query.
func TestCredentialBatcher(t *testing.T) {
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		for _, tenant := range []string{"t1", "t2"} {
			mustCreate(t, s, newProvider(tenant, "p"))
		}
		const users = 40
		for i := range users {
			// Even users are connected in t1 only, odd users in t2 only.
			tenant := []string{"t1", "t2"}[i%2]
			c := newCredential(tenant, "p", fmt.Sprintf("sealed-%s-u%d", tenant, i))
			c.UserID = fmt.Sprintf("u%d", i)
			if _, err := s.PutCredential(ctx, c, 0); err != nil {
				t.Fatal(err)
			}
		}
		b := s.NewCredentialBatcher()
		var wg sync.WaitGroup
		errs := make(chan error, 4*users)
		for round := range 4 {
			for i := range users {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tenant := []string{"t1", "t2"}[(i+round)%2]
					ref := domain.GrantRef{Tenant: tenant, Provider: "p", User: fmt.Sprintf("u%d", i)}
					got, err := b.GetCredential(ctx, ref)
					own := (i%2 == 0) == (tenant == "t1")
					switch {
					case own && err != nil:
						errs <- fmt.Errorf("%v: %v", ref, err)
					case own && (got.Ref() != ref || string(got.Tokens) != fmt.Sprintf("sealed-%s-u%d", tenant, i)):
						errs <- fmt.Errorf("%v: got the row of %v (%q)", ref, got.Ref(), got.Tokens)
					case !own && apperr.KindOf(err) != apperr.KindNotFound:
						errs <- fmt.Errorf("%v belongs to the other tenant: got %v, %v", ref, got, err)
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if _, err := b.GetCredential(ctx, domain.GrantRef{Provider: "p", User: "u0"}); apperr.KindOf(err) != apperr.KindInternal {
			t.Errorf("no tenant: %v, want the tenant-scope error", err)
		}
	})
}

// TestCredentialBatcherSharesStatements: reads queued while one is in
// flight are answered by one statement, with the same rows a direct read
// returns.
func TestCredentialBatcherSharesStatements(t *testing.T) {
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mustCreate(t, s, newProvider("t1", "p"))
		var batch []*credRequest
		for i := range 5 {
			c := newCredential("t1", "p", fmt.Sprintf("sealed-%d", i))
			c.UserID = fmt.Sprintf("u%d", i)
			if _, err := s.PutCredential(ctx, c, 0); err != nil {
				t.Fatal(err)
			}
			batch = append(batch, &credRequest{ctx: ctx, ref: c.Ref(), done: make(chan struct{})})
		}
		batch = append(batch, &credRequest{ctx: ctx, ref: domain.GrantRef{Tenant: "t1", Provider: "p", User: "nobody"}, done: make(chan struct{})})
		s.NewCredentialBatcher().read(batch)
		for _, r := range batch[:5] {
			direct, err := s.GetCredential(ctx, r.ref)
			if err != nil || r.err != nil || !credentialsEqual(r.cred, direct) {
				t.Errorf("%v: batched %+v, %v; direct %+v, %v", r.ref, r.cred, r.err, direct, err)
			}
		}
		if last := batch[5]; apperr.KindOf(last.err) != apperr.KindNotFound {
			t.Errorf("no such grant: %v, %v", last.cred, last.err)
		}
	})
}
