package repository

import (
	"context"
	"slices"
	"sync"
	"testing"

	"gorm.io/gorm/schema"

	"github.com/mcpauth/mcpauth/apperr"
)

// modelColumns lists the columns GORM maps model's fields to.
func modelColumns(tb testing.TB, model any) []string {
	tb.Helper()
	sc, err := schema.Parse(model, &sync.Map{}, schema.NamingStrategy{})
	if err != nil {
		tb.Fatal(err)
	}
	var cols []string
	for _, f := range sc.Fields {
		if f.DBName != "" {
			cols = append(cols, f.DBName)
		}
	}
	return cols
}

// TestHotQueriesCoverTheModels: a field added to Provider or
// ClientRegistration must be read by the hand-written queries too, or it
// would silently read as zero on the hot paths.
func TestHotQueriesCoverTheModels(t *testing.T) {
	for _, tc := range []struct {
		model any
		cols  []string
		dests int
	}{
		{&Provider{}, providerColumns, len(providerDest(&Provider{}))},
		{&ClientRegistration{}, registrationColumns, len(registrationDest(&ClientRegistration{}))},
	} {
		want := modelColumns(t, tc.model)
		got := slices.Clone(tc.cols)
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%T: hot query reads %v, model has %v", tc.model, got, want)
		}
		if tc.dests != len(tc.cols) {
			t.Errorf("%T: %d scan destinations for %d columns", tc.model, tc.dests, len(tc.cols))
		}
	}
}

// TestHotReadsMatchGORM: the hand-written reads return what GORM's
// generic read of the same row returns, on both databases.
func TestHotReadsMatchGORM(t *testing.T) {
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mustCreate(t, s, newProvider("t1", "p1"))
		got, err := s.GetProvider(ctx, "t1", "p1")
		if err != nil {
			t.Fatal(err)
		}
		var viaGORM Provider
		q, _ := scopedTable(ctx, s.db, "providers", "t1")
		if err := withGrant(q).Where("providers.id = ?", "p1").Take(&viaGORM).Error; err != nil {
			t.Fatal(err)
		}
		if !providersEqual(got, &viaGORM) {
			t.Errorf("GetProvider = %+v\nGORM reads %+v", got, viaGORM)
		}
		if _, err := s.GetProvider(ctx, "t2", "p1"); apperr.KindOf(err) != apperr.KindNotFound {
			t.Errorf("another tenant's provider: %v", err)
		}
		if _, err := s.GetClientRegistration(ctx, "t1", "p1", "https://as.example"); apperr.KindOf(err) != apperr.KindNotFound {
			t.Errorf("no registration: %v", err)
		}
	})
}

func providersEqual(a, b *Provider) bool {
	return a.TenantID == b.TenantID && a.ID == b.ID && a.DisplayName == b.DisplayName && a.ServerIdentifier == b.ServerIdentifier &&
		a.URLHash == b.URLHash && string(a.ServerURL) == string(b.ServerURL) && string(a.Headers) == string(b.Headers) &&
		a.Icon == b.Icon && a.TimeoutMS == b.TimeoutMS && a.SSEReadTimeoutMS == b.SSEReadTimeoutMS && a.ClientID == b.ClientID &&
		string(a.ClientSecret) == string(b.ClientSecret) && a.Scopes == b.Scopes && a.Compat == b.Compat && a.KeyID == b.KeyID &&
		a.Version == b.Version && a.CredGeneration == b.CredGeneration && a.GrantStatus == b.GrantStatus &&
		a.GrantReason == b.GrantReason && a.GrantGeneration == b.GrantGeneration && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt) &&
		a.CredentialKind == b.CredentialKind && a.CredentialConfig == b.CredentialConfig && string(a.CredentialSecrets) == string(b.CredentialSecrets)
}
