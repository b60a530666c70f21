package server

import (
	"sync"
	"testing"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// TestWithProviderLeavesSharedErrorAlone: waiters of one refresh share its
// error value; adding the provider's metadata for one caller must not write
// to it (go test -race catches the concurrent map writes this used to do).
func TestWithProviderLeavesSharedErrorAlone(t *testing.T) {
	t.Parallel()
	shared := apperr.FailedPrecondition(domain.ReasonReauthRequired, "the refresh token was rejected: authorize the provider again")
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, ok := apperr.As(withProvider(shared, "acme", "p"+string(rune('a'+i))))
			if !ok || got.Metadata["provider"] != "tenants/acme/providers/p"+string(rune('a'+i)) ||
				got.Metadata["start_authorization_path"] == "" {
				t.Errorf("metadata %v", got.Metadata)
			}
		}()
	}
	wg.Wait()
	if len(shared.Metadata) != 0 {
		t.Fatalf("the shared error was written to: %v", shared.Metadata)
	}
	plain := apperr.Invalid("name", "is required")
	if withProvider(plain, "acme", "p") != error(plain) {
		t.Error("an error without provider metadata was copied")
	}
}
