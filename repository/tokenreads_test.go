package repository

import (
	"context"
	"errors"
	"testing"

	"github.com/mcpauth/mcpauth/apperr"
)

func TestAddTokenReadsOncePerBatchAndMerges(t *testing.T) {
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		b1 := []TokenReads{
			{TenantID: "t1", ProviderID: "p", Actor: "svc", Minute: 600, Reads: 3, FirstMs: 600_100, LastMs: 600_900},
			{TenantID: "t1", ProviderID: "p", Actor: "other", Minute: 600, Reads: 1, FirstMs: 600_200, LastMs: 600_200},
			{TenantID: "t2", ProviderID: "p", Actor: "svc", Minute: 600, Reads: 7, FirstMs: 600_300, LastMs: 600_400},
		}
		if err := s.AddTokenReads(ctx, "batch-1", b1); err != nil {
			t.Fatal(err)
		}
		// The same batch again (a retry after a lost acknowledgement): no change.
		if err := s.AddTokenReads(ctx, "batch-1", b1); err != nil {
			t.Fatal(err)
		}
		// Another replica's batch for the same minute adds to the counts and
		// widens the first/last times.
		if err := s.AddTokenReads(ctx, "batch-2", []TokenReads{
			{TenantID: "t1", ProviderID: "p", Actor: "svc", Minute: 600, Reads: 2, FirstMs: 600_050, LastMs: 600_500},
			{TenantID: "t1", ProviderID: "p", Actor: "svc", Minute: 660, Reads: 4, FirstMs: 660_000, LastMs: 660_001},
		}); err != nil {
			t.Fatal(err)
		}
		got, err := s.ListTokenReads(ctx, "t1", TokenReadsFilter{}, TokenReadsCursor{}, 10)
		if err != nil {
			t.Fatal(err)
		}
		want := []TokenReads{
			{TenantID: "t1", ProviderID: "p", Actor: "svc", Minute: 660, Reads: 4, FirstMs: 660_000, LastMs: 660_001},
			{TenantID: "t1", ProviderID: "p", Actor: "svc", Minute: 600, Reads: 5, FirstMs: 600_050, LastMs: 600_900},
			{TenantID: "t1", ProviderID: "p", Actor: "other", Minute: 600, Reads: 1, FirstMs: 600_200, LastMs: 600_200},
		}
		if len(got) != len(want) {
			t.Fatalf("got %d rows %+v, want %+v", len(got), got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("row %d = %+v, want %+v", i, got[i], want[i])
			}
		}
		// Keyset paging, one row per page, and the provider filter.
		var paged []TokenReads
		var cur TokenReadsCursor
		for {
			page, err := s.ListTokenReads(ctx, "t1", TokenReadsFilter{ProviderID: "p"}, cur, 1)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			paged = append(paged, page...)
			last := page[len(page)-1]
			cur = TokenReadsCursor{Minute: last.Minute, ProviderID: last.ProviderID, Actor: last.Actor}
		}
		if len(paged) != 3 || paged[2] != want[2] {
			t.Errorf("paged = %+v", paged)
		}
		if none, err := s.ListTokenReads(ctx, "t1", TokenReadsFilter{ProviderID: "q"}, TokenReadsCursor{}, 10); err != nil || len(none) != 0 {
			t.Errorf("provider q: %v %+v", err, none)
		}
		// The other tenant sees only its own row.
		t2, err := s.ListTokenReads(ctx, "t2", TokenReadsFilter{}, TokenReadsCursor{}, 10)
		if err != nil || len(t2) != 1 || t2[0].Reads != 7 {
			t.Errorf("t2 = %+v, %v", t2, err)
		}
	})
}

func TestTokenReadsNeedATenant(t *testing.T) {
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		err := s.AddTokenReads(ctx, "b", []TokenReads{{ProviderID: "p", Actor: "a", Minute: 60, Reads: 1}})
		if !errors.Is(err, ErrNoTenant) {
			t.Errorf("add without tenant: %v", err)
		}
		if _, err := s.ListTokenReads(ctx, "", TokenReadsFilter{}, TokenReadsCursor{}, 10); apperr.KindOf(err) != apperr.KindInternal {
			t.Errorf("list without tenant: %v", err)
		}
	})
}
