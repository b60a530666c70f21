package repository

import (
	"context"
	"slices"
	"sync"
	"testing"
)

// TestCheckKeys: unknown ids are recorded, a known id with its own value
// passes, a known id with another value is reported (and not overwritten),
// and of two concurrent first starts with different values exactly one is
// refused.
func TestCheckKeys(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		bad, err := s.CheckKeys(ctx, map[uint32]string{1: "v1"})
		wantNoErr(t, err, "first CheckKeys")
		if len(bad) != 0 {
			t.Fatalf("first start: mismatched %v, want none", bad)
		}
		bad, err = s.CheckKeys(ctx, map[uint32]string{2: "v2", 1: "v1"})
		wantNoErr(t, err, "CheckKeys with a new key")
		if len(bad) != 0 {
			t.Fatalf("same key 1 plus new key 2: mismatched %v, want none", bad)
		}
		bad, err = s.CheckKeys(ctx, map[uint32]string{2: "v2", 1: "other"})
		wantNoErr(t, err, "CheckKeys with another key 1")
		if !slices.Equal(bad, []uint32{1}) {
			t.Fatalf("another key under id 1: mismatched %v, want [1]", bad)
		}
		// The refused value was not recorded: the original still passes.
		bad, err = s.CheckKeys(ctx, map[uint32]string{1: "v1"})
		wantNoErr(t, err, "CheckKeys again")
		if len(bad) != 0 {
			t.Fatalf("original key after a refusal: mismatched %v, want none", bad)
		}
		checks, err := s.KeyChecks(ctx)
		wantNoErr(t, err, "KeyChecks")
		if len(checks) != 2 || checks[1] != "v1" || checks[2] != "v2" {
			t.Fatalf("KeyChecks = %v, want 1:v1 2:v2", checks)
		}

		// Two replicas starting at once with different keys under new id 7.
		var wg sync.WaitGroup
		results := make([][]uint32, 2)
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i], errs[i] = s.CheckKeys(ctx, map[uint32]string{7: []string{"a", "b"}[i]})
			}()
		}
		wg.Wait()
		for i, err := range errs {
			wantNoErr(t, err, "concurrent CheckKeys %d", i)
		}
		if refused := len(results[0]) + len(results[1]); refused != 1 {
			t.Fatalf("concurrent first starts: mismatched %v and %v, want exactly one refused", results[0], results[1])
		}
	})
}

// TestAnyProviderUnderKey finds a row of any tenant under a key id, and nil
// for an id no row uses.
func TestAnyProviderUnderKey(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		p := newProvider("b", "p1")
		p.KeyID = 3
		mustCreate(t, s, newProvider("a", "p1"))
		mustCreate(t, s, p)
		got, err := s.AnyProviderUnderKey(ctx, 3)
		wantNoErr(t, err, "AnyProviderUnderKey")
		if got == nil || got.TenantID != "b" || got.ID != "p1" {
			t.Fatalf("AnyProviderUnderKey(3) = %+v, want b/p1", got)
		}
		got, err = s.AnyProviderUnderKey(ctx, 9)
		wantNoErr(t, err, "AnyProviderUnderKey")
		if got != nil {
			t.Fatalf("AnyProviderUnderKey(9) = %+v, want nil", got)
		}
	})
}
