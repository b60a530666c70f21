package repository

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm/schema"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
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
		{&Credential{}, credentialColumns, len(credentialDest(&Credential{}))},
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
		// A connection with every nullable column set, and the tenant-wide
		// grant with them NULL.
		for _, user := range []string{"alice", ""} {
			c := newCredential("t1", "p1", "sealed-"+user)
			c.UserID, c.Reason, c.CreatedBy, c.RefreshFailures, c.Status = user, "INVALID_GRANT", "caller-a", 2, 3
			if user == "" {
				c.ExpiresAt = nil
			} else {
				now := time.Now().UTC().Truncate(time.Second)
				c.LastRefreshAt = &now
			}
			if _, err := s.PutCredential(ctx, c, 0); err != nil {
				t.Fatal(err)
			}
			ref := domain.GrantRef{Tenant: "t1", Provider: "p1", User: user}
			hot, err := s.GetCredential(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			var viaGORM Credential
			q, _ := grantScoped(ctx, s.db, ref)
			if err := q.Take(&viaGORM).Error; err != nil {
				t.Fatal(err)
			}
			if !credentialsEqual(hot, &viaGORM) {
				t.Errorf("GetCredential(%q) = %+v\nGORM reads %+v", user, hot, viaGORM)
			}
			if _, err := s.GetCredential(ctx, domain.GrantRef{Tenant: "t2", Provider: "p1", User: user}); apperr.KindOf(err) != apperr.KindNotFound {
				t.Errorf("another tenant's credential: %v", err)
			}
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

func credentialsEqual(a, b *Credential) bool {
	timeEq := func(x, y *time.Time) bool { return x == nil && y == nil || x != nil && y != nil && x.Equal(*y) }
	return a.TenantID == b.TenantID && a.ProviderID == b.ProviderID && a.UserID == b.UserID && a.ConnectionID == b.ConnectionID &&
		string(a.Tokens) == string(b.Tokens) && a.Issuer == b.Issuer && a.Scopes == b.Scopes && timeEq(a.ExpiresAt, b.ExpiresAt) &&
		a.HasRefresh == b.HasRefresh && a.Generation == b.Generation && a.Status == b.Status && a.Reason == b.Reason &&
		a.RefreshFailures == b.RefreshFailures && timeEq(a.LastRefreshAt, b.LastRefreshAt) && a.KeyID == b.KeyID &&
		a.CreatedBy == b.CreatedBy && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt) &&
		a.IdentityIssuer == b.IdentityIssuer && a.IdentitySubject == b.IdentitySubject
}
