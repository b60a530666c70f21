package repository

import (
	"context"
	"errors"
	"slices"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"

	"github.com/mcpauth/mcpauth/apperr"
)

func credentialChanged() *apperr.Error {
	return apperr.Aborted("credential was changed concurrently; re-read and retry")
}

// GetCredential returns the grant's credential, or apperr.NotFound
// ("credential not found") when it has none.
func (s *Store) GetCredential(ctx context.Context, g domain.GrantRef) (*Credential, error) {
	var c Credential
	if err := s.getRow(ctx, getCredentialSQL, "credentials", "credential", g.Tenant, []any{g.Provider, g.User}, credentialDest(&c)...); err != nil {
		return nil, err
	}
	return &c, nil
}

// PutCredential writes c with compare-and-swap on the generation counter.
// An update keeps the stored identity binding unless c sets one.
// expectedGeneration 0 inserts and requires that no credential exists;
// otherwise the stored row is replaced only if its generation is
// expectedGeneration. The new generation (an update's expectedGeneration+1,
// an insert's the next of the provider's sequence) is returned and stored
// in c.Generation. Any mismatch (including a row that appeared or
// disappeared meanwhile) is apperr.Aborted and changes nothing, so a writer
// holding stale tokens can never overwrite newer ones. A missing provider
// is apperr.NotFound("provider not found"). A write that raises the
// provider's cred_generation takes the provider row before the credential
// row (lockProvider): such writers queue on it; an update of one of a USER
// provider's grants that raises nothing does not.
//
// events are inserted in the same transaction (see insertEvents): they are
// stored exactly when the credential is.
func (s *Store) PutCredential(ctx context.Context, c *Credential, expectedGeneration int64, events ...*AuditEvent) (int64, error) {
	return s.putCredential(ctx, c, expectedGeneration, 0, events)
}

// PutCredentialAtProvider is PutCredential that writes only while the
// provider is still at providerVersion, the version of the row the tokens
// were obtained under: otherwise it changes nothing and answers
// apperr.FailedPrecondition with reason PROVIDER_CHANGED. The check and
// the write are one transaction, the version read under the provider row's
// lock (lockProvider), the one UpdateProvider takes before deleting the
// grants: tokens obtained under rules an update replaced meanwhile (an
// enterprise provider's user_claim, its identity provider, its client) can
// never be stored after that update reset the grants, each grant read
// afresh or not.
func (s *Store) PutCredentialAtProvider(ctx context.Context, c *Credential, expectedGeneration, providerVersion int64, events ...*AuditEvent) (int64, error) {
	if providerVersion <= 0 {
		return 0, apperr.Internal(errors.New("repository: no provider version"), "put credential")
	}
	return s.putCredential(ctx, c, expectedGeneration, providerVersion, events)
}

// lockingNoKeyUpdate is PostgreSQL's FOR NO KEY UPDATE: the row lock an
// UPDATE that changes no key takes, which foreign key checks of other
// transactions (FOR KEY SHARE) do not wait for.
const lockingNoKeyUpdate = "NO KEY UPDATE"

// providerGen is what a credential write reads of its provider's row.
type providerGen struct {
	Version        int64 `gorm:"column:version"`
	CredGeneration int64 `gorm:"column:cred_generation"`
}

// lockProvider locks the provider row of a credential write and reads its
// version and cred_generation, in one statement. Every transaction that
// takes the provider row and a grant's credential row takes the provider
// row first, with this statement or by raising cred_generation
// (raiseCredGeneration) before it writes the credential, as UpdateProvider
// and DeleteProvider update the provider before deleting the grants.
// Taken in one order, the locks queue writers instead of deadlocking them
// on PostgreSQL (a writer holding the provider row, waiting on the
// credential row or its unique key, while the one holding that waits on
// the provider row: 40P01, one of them aborted after deadlock_timeout).
// The lock is FOR NO KEY UPDATE, the one the cred_generation update takes
// anyway, so it is never upgraded; a foreign key check (FOR KEY SHARE)
// does not wait for it. SQLite's write transactions are exclusive and
// ignore the clause. A missing provider is apperr.NotFound("provider not
// found").
func lockProvider(ctx context.Context, tx *gorm.DB, tenant, id string) (providerGen, error) {
	var p providerGen
	q, err := scoped(ctx, tx, tenant)
	if err != nil {
		return p, err
	}
	err = q.Model(&Provider{}).Clauses(clause.Locking{Strength: lockingNoKeyUpdate}).
		Select("version", "cred_generation").Where("id = ?", id).Take(&p).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return p, apperr.NotFound("provider")
	}
	return p, err
}

// errProviderChanged is PutCredentialAtProvider's answer for a provider
// changed since the tokens were obtained.
func errProviderChanged() error {
	return apperr.FailedPrecondition(domain.ReasonProviderChanged,
		"the provider was changed while its tokens were being obtained: obtain them again")
}

// putCredential is PutCredential, guarded by the provider's version when
// providerVersion is not 0.
func (s *Store) putCredential(ctx context.Context, c *Credential, expectedGeneration, providerVersion int64, events []*AuditEvent) (int64, error) {
	if err := checkTenant(c.TenantID); err != nil {
		return 0, err
	}
	if c.ProviderID == "" {
		return 0, apperr.Internal(errEmptyID, "provider id missing")
	}
	now := s.db.NowFunc()
	newGen := expectedGeneration + 1
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		// The provider row first, whenever the write takes it: see
		// lockProvider.
		raise := true
		if providerVersion != 0 || expectedGeneration == 0 {
			p, err := lockProvider(ctx, tx, c.TenantID, c.ProviderID)
			if err != nil {
				return err
			}
			if providerVersion != 0 && p.Version != providerVersion {
				return errProviderChanged()
			}
			if expectedGeneration == 0 {
				// A new credential continues the provider's generation
				// sequence (providers.cred_generation), so a credential
				// deleted and created again never reuses a generation a
				// stale writer holds.
				newGen = p.CredGeneration + 1
			}
			raise = p.CredGeneration < newGen
		}
		if raise {
			if err := raiseCredGeneration(ctx, tx, c.TenantID, c.ProviderID, newGen); err != nil {
				return err
			}
		}
		if expectedGeneration == 0 {
			if err := insertCredential(tx, c, newGen, now); err != nil {
				return err
			}
		} else if err := updateCredential(ctx, tx, c, expectedGeneration, newGen, now); err != nil {
			return err
		}
		return insertEvents(ctx, tx, events)
	})
	if err != nil {
		if _, ok := apperr.As(err); ok {
			return 0, err
		}
		return 0, dbErr(err, "put credential")
	}
	s.eventsStored(events)
	c.Generation = newGen
	c.UpdatedAt = now
	return newGen, nil
}

// raiseCredGeneration raises the provider's cred_generation to gen when it
// is behind, so that it stays at least every generation its grants ever
// had. An update that raises it takes the provider row's lock (FOR NO KEY
// UPDATE); one that finds it at gen or beyond takes nothing: a refresh of
// one of a USER provider's many grants rarely raises it, and such writers
// do not queue on the provider row. It runs before the credential row is
// written (lockProvider).
func raiseCredGeneration(ctx context.Context, tx *gorm.DB, tenant, providerID string, gen int64) error {
	pq, err := scoped(ctx, tx, tenant)
	if err != nil {
		return err
	}
	return pq.Model(&Provider{}).Where("id = ? AND cred_generation < ?", providerID, gen).
		UpdateColumn("cred_generation", gen).Error
}

// insertCredential inserts c at generation gen. A row that exists already
// is a lost race (apperr.Aborted), a missing provider apperr.NotFound.
func insertCredential(tx *gorm.DB, c *Credential, gen int64, now time.Time) error {
	row := *c
	row.Generation = gen
	row.UpdatedAt = now
	if row.CreatedAt.IsZero() {
		row.CreatedAt = now
	}
	row.ConnectionID = connectionID(row.UserID)
	if err := tx.Create(&row).Error; err != nil {
		if _, dup := uniqueViolation(err); dup {
			return credentialChanged()
		}
		if foreignKeyViolation(err) {
			return apperr.NotFound("provider")
		}
		return err
	}
	return nil
}

// updateCredential replaces the grant's row of generation expected with c
// at generation gen; a row of another generation, or none, is a lost race
// (apperr.Aborted).
func updateCredential(ctx context.Context, tx *gorm.DB, c *Credential, expected, gen int64, now time.Time) error {
	q, err := grantScoped(ctx, tx, c.Ref())
	if err != nil {
		return err
	}
	set := map[string]any{
		"tokens":           c.Tokens,
		"issuer":           c.Issuer,
		"scopes":           c.Scopes,
		"expires_at":       c.ExpiresAt,
		"has_refresh":      c.HasRefresh,
		"generation":       gen,
		"status":           c.Status,
		"reason":           c.Reason,
		"refresh_failures": c.RefreshFailures,
		"last_refresh_at":  c.LastRefreshAt,
		"key_id":           c.KeyID,
		"updated_at":       now,
	}
	if c.IdentitySubject != "" {
		// The binding is written by the writer that checked it against
		// the row of expected; the others leave it alone.
		set["identity_issuer"], set["identity_subject"] = c.IdentityIssuer, c.IdentitySubject
	}
	res := q.Model(&Credential{}).Where("generation = ?", expected).Updates(set)
	if res.Error != nil {
		return res.Error
	}
	if res.RowsAffected == 0 {
		return credentialChanged()
	}
	return nil
}

// DeleteCredential deletes the grant's credential. expectedGeneration 0
// deletes any generation; otherwise a mismatch is apperr.Aborted. A missing
// credential is apperr.NotFound("credential not found"). events are inserted
// in the same transaction.
func (s *Store) DeleteCredential(ctx context.Context, g domain.GrantRef, expectedGeneration int64, events ...*AuditEvent) error {
	if err := checkTenant(g.Tenant); err != nil {
		return err
	}
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		q, err := grantScoped(ctx, tx, g)
		if err != nil {
			return err
		}
		if expectedGeneration != 0 {
			q = q.Where("generation = ?", expectedGeneration)
		}
		res := q.Delete(&Credential{})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return errNothingDeleted
		}
		return insertEvents(ctx, tx, events)
	})
	if errors.Is(err, errNothingDeleted) {
		if _, err := s.GetCredential(ctx, g); err != nil {
			return err
		}
		return credentialChanged()
	}
	if err != nil {
		return dbErr(err, "delete credential")
	}
	s.eventsStored(events)
	return nil
}

// connectionID is the connection id of user's grant row, empty for the
// tenant-wide grant.
func connectionID(user string) string {
	if user == "" {
		return ""
	}
	return domain.ConnectionID(user)
}

// errNothingDeleted rolls back a delete that matched no row.
var errNothingDeleted = errors.New("repository: nothing deleted")

// SetGrantStatus moves the grant g to status to (with reason) when
// its current status is one of from, without touching its tokens or its
// generation. A provider without a grant row counts as UNAUTHORIZED: when
// from names it, a row without tokens is created (keyID is the key id it
// records, though it holds no ciphertext; its creator is the caller in ctx). It reports whether anything
// changed. A missing provider is apperr.NotFound. When from names
// UNAUTHORIZED the provider row is locked before the credential row, as
// every credential writer that takes both does.
//
// events are inserted in the same transaction, and only when the status
// changed.
func (s *Store) SetGrantStatus(ctx context.Context, g domain.GrantRef, from []domain.AuthStatus, to domain.AuthStatus, reason string, keyID uint32, events ...*AuditEvent) (bool, error) {
	if err := checkTenant(g.Tenant); err != nil {
		return false, err
	}
	tenant, providerID := g.Tenant, g.Provider
	changed := false
	now := s.db.NowFunc()
	mayCreate := slices.Contains(from, domain.StatusUnauthorized)
	set := func(tx *gorm.DB) error {
		var p providerGen
		if mayCreate {
			// Creating the row writes cred_generation: the provider row is
			// locked first (lockProvider), before the UPDATE below and not
			// after it. On PostgreSQL's READ COMMITTED an UPDATE that
			// waited on a concurrent writer locks the newest row version
			// before rechecking its WHERE, and keeps the lock when the
			// recheck fails: asking for the provider row then would hold
			// the credential row while waiting on UpdateProvider,
			// DeleteProvider or PutCredential, which hold the provider row
			// and wait on the credential row (40P01).
			var err error
			if p, err = lockProvider(ctx, tx, tenant, providerID); err != nil {
				return err
			}
		}
		q, err := grantScoped(ctx, tx, g)
		if err != nil {
			return err
		}
		res := q.Model(&Credential{}).Where("status IN ?", from).
			Updates(map[string]any{"status": to, "reason": reason, "updated_at": now})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected > 0 || !mayCreate {
			changed = res.RowsAffected > 0
			return nil
		}
		q, err = grantScoped(ctx, tx, g)
		if err != nil {
			return err
		}
		var n int64
		if err := q.Model(&Credential{}).Count(&n).Error; err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		gen := p.CredGeneration + 1
		row := Credential{TenantID: tenant, ProviderID: providerID, UserID: g.User, Tokens: []byte{}, Generation: gen, Status: to,
			Reason: reason, KeyID: keyID, CreatedBy: caller.ActorName(ctx), CreatedAt: now, UpdatedAt: now,
			ConnectionID: connectionID(g.User)}
		// A concurrent writer may create the grant first: it wins. ON
		// CONFLICT DO NOTHING keeps the transaction alive on PostgreSQL,
		// where a failed statement would abort it.
		res = tx.Clauses(clause.OnConflict{DoNothing: true}).Create(&row)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return nil
		}
		pq, err := scoped(ctx, tx, tenant)
		if err != nil {
			return err
		}
		changed = true
		return pq.Model(&Provider{}).Where("id = ? AND cred_generation < ?", providerID, gen).
			UpdateColumn("cred_generation", gen).Error
	}
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		if err := set(tx); err != nil || !changed {
			return err
		}
		return insertEvents(ctx, tx, events)
	})
	if err != nil {
		if _, ok := apperr.As(err); ok {
			return false, err
		}
		return false, dbErr(err, "set grant status")
	}
	if changed {
		s.eventsStored(events)
	}
	return changed, nil
}
