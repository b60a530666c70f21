package repository

import (
	"context"
)

// This file holds the key-rotation support. KeyUsage and the ...NotUnderKey
// batch readers are deliberately cross-tenant: the re-encrypt command walks
// every row of every tenant. They must never back an API call.
//
// A rotation pass reads a batch, decrypts and re-encrypts each row under the
// new key in the service layer, and writes it back with a Rewrite... method.
// Each rewrite is guarded by the old key id and the row's version (provider,
// registration) or generation (credential) as read, so it is idempotent, can
// be resumed after a crash, and never overwrites a concurrent writer: a row
// changed meanwhile is reported as not rewritten and is picked up again by
// the next pass while it is still under an old key.

// KeyUsage counts, across all tenants, the rows of providers, credentials and
// client_registrations whose ciphertexts use each key id. A key may be retired
// only when its count is zero.
func (s *Store) KeyUsage(ctx context.Context) (map[uint32]int64, error) {
	usage := map[uint32]int64{}
	for _, table := range []string{"providers", "credentials", "client_registrations"} {
		var rows []struct {
			KeyID uint32
			N     int64
		}
		err := s.db.WithContext(ctx).Table(table).Select("key_id, count(*) AS n").
			Group("key_id").Scan(&rows).Error
		if err != nil {
			return nil, dbErr(err, "count key usage")
		}
		for _, r := range rows {
			usage[r.KeyID] += r.N
		}
	}
	return usage, nil
}

// ProvidersNotUnderKey returns up to limit providers of any tenant whose
// key id is not keyID, ordered by (tenant_id, id), after the row
// (afterTenant, afterID); pass empty strings for the first batch.
// Cross-tenant: rotation only.
func (s *Store) ProvidersNotUnderKey(ctx context.Context, keyID uint32, afterTenant, afterID string, limit int) ([]Provider, error) {
	var out []Provider
	err := s.db.WithContext(ctx).
		Where("key_id <> ?", keyID).
		Where("(tenant_id > ? OR (tenant_id = ? AND id > ?))", afterTenant, afterTenant, afterID).
		Order("tenant_id, id").Limit(clampLimit(limit)).Find(&out).Error
	return out, dbErr(err, "list providers for rotation")
}

// CredentialsNotUnderKey returns up to limit credentials of any tenant whose
// key id is not keyID, ordered by (tenant_id, provider_id), after
// (afterTenant, afterProviderID). Cross-tenant: rotation only.
func (s *Store) CredentialsNotUnderKey(ctx context.Context, keyID uint32, afterTenant, afterProviderID string, limit int) ([]Credential, error) {
	var out []Credential
	err := s.db.WithContext(ctx).
		Where("key_id <> ?", keyID).
		Where("(tenant_id > ? OR (tenant_id = ? AND provider_id > ?))", afterTenant, afterTenant, afterProviderID).
		Order("tenant_id, provider_id").Limit(clampLimit(limit)).Find(&out).Error
	return out, dbErr(err, "list credentials for rotation")
}

// ClientRegistrationsNotUnderKey returns up to limit client registrations of
// any tenant whose key id is not keyID, ordered by (tenant_id, provider_id,
// issuer_hash), after (afterTenant, afterProviderID, afterIssuerHash).
// Cross-tenant: rotation only.
func (s *Store) ClientRegistrationsNotUnderKey(ctx context.Context, keyID uint32, afterTenant, afterProviderID, afterIssuerHash string, limit int) ([]ClientRegistration, error) {
	var out []ClientRegistration
	err := s.db.WithContext(ctx).
		Where("key_id <> ?", keyID).
		Where("(tenant_id > ? OR (tenant_id = ? AND (provider_id > ? OR (provider_id = ? AND issuer_hash > ?))))",
			afterTenant, afterTenant, afterProviderID, afterProviderID, afterIssuerHash).
		Order("tenant_id, provider_id, issuer_hash").Limit(clampLimit(limit)).Find(&out).Error
	return out, dbErr(err, "list client registrations for rotation")
}

// RewriteProviderCiphertexts stores p's re-encrypted ServerURL, Headers,
// ClientSecret and CredentialSecrets, its new URLHash and KeyID, only if the stored row still has
// key id oldKeyID and version p.Version. It reports whether the row was
// rewritten; false (with a nil error) means another writer got there first.
// The version is not bumped: the provider's content is unchanged.
func (s *Store) RewriteProviderCiphertexts(ctx context.Context, p *Provider, oldKeyID uint32) (bool, error) {
	q, err := scoped(ctx, s.db, p.TenantID)
	if err != nil {
		return false, err
	}
	res := q.Model(&Provider{}).
		Where("id = ? AND key_id = ? AND version = ?", p.ID, oldKeyID, p.Version).
		UpdateColumns(map[string]any{
			"server_url":         nullBytes(p.ServerURL),
			"headers":            nullBytes(p.Headers),
			"client_secret":      nullBytes(p.ClientSecret),
			"credential_secrets": nullBytes(p.CredentialSecrets),
			"url_hash":           p.URLHash,
			"key_id":             p.KeyID,
		})
	if res.Error != nil {
		return false, providerWriteErr(res.Error, "rewrite provider ciphertexts")
	}
	return res.RowsAffected > 0, nil
}

// RewriteCredentialCiphertexts stores c's re-encrypted Tokens and its new
// KeyID only if the stored row still has key id oldKeyID and generation
// c.Generation. It reports whether the row was rewritten. The generation is
// not bumped: the tokens are unchanged.
func (s *Store) RewriteCredentialCiphertexts(ctx context.Context, c *Credential, oldKeyID uint32) (bool, error) {
	q, err := scoped(ctx, s.db, c.TenantID)
	if err != nil {
		return false, err
	}
	res := q.Model(&Credential{}).
		Where("provider_id = ? AND user_id = ? AND key_id = ? AND generation = ?", c.ProviderID, c.UserID, oldKeyID, c.Generation).
		UpdateColumns(map[string]any{"tokens": c.Tokens, "key_id": c.KeyID})
	if res.Error != nil {
		return false, dbErr(res.Error, "rewrite credential ciphertexts")
	}
	return res.RowsAffected > 0, nil
}

// RewriteClientRegistrationCiphertexts stores r's re-encrypted Secret and its
// new KeyID only if the stored row (r.TenantID, r.ProviderID, r.IssuerHash)
// still has key id oldKeyID and version r.Version. It reports whether the row
// was rewritten. The version is not bumped.
func (s *Store) RewriteClientRegistrationCiphertexts(ctx context.Context, r *ClientRegistration, oldKeyID uint32) (bool, error) {
	q, err := scoped(ctx, s.db, r.TenantID)
	if err != nil {
		return false, err
	}
	res := q.Model(&ClientRegistration{}).
		Where("provider_id = ? AND issuer_hash = ? AND key_id = ? AND version = ?", r.ProviderID, r.IssuerHash, oldKeyID, r.Version).
		UpdateColumns(map[string]any{"secret": nullBytes(r.Secret), "key_id": r.KeyID})
	if res.Error != nil {
		return false, dbErr(res.Error, "rewrite client registration ciphertexts")
	}
	return res.RowsAffected > 0, nil
}
