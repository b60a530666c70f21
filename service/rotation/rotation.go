// Package rotation is the key rotation use case: it re-encrypts every
// provider, grant and client registration under the primary key (online,
// idempotent, resumable) and refuses to retire a key still in use.
package rotation

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// Store is the cross-tenant access key rotation needs.
// *repository.Store implements it.
type Store interface {
	KeyUsage(ctx context.Context) (map[uint32]int64, error)
	ProvidersNotUnderKey(ctx context.Context, keyID uint32, afterTenant, afterID string, limit int) ([]repository.Provider, error)
	CredentialsNotUnderKey(ctx context.Context, keyID uint32, afterTenant, afterProviderID string, limit int) ([]repository.Credential, error)
	ClientRegistrationsNotUnderKey(ctx context.Context, keyID uint32, afterTenant, afterProviderID, afterIssuerHash string, limit int) ([]repository.ClientRegistration, error)
	RewriteProviderCiphertexts(ctx context.Context, p *repository.Provider, oldKeyID uint32) (bool, error)
	RewriteCredentialCiphertexts(ctx context.Context, c *repository.Credential, oldKeyID uint32) (bool, error)
	RewriteClientRegistrationCiphertexts(ctx context.Context, r *repository.ClientRegistration, oldKeyID uint32) (bool, error)
}

var _ Store = (*repository.Store)(nil)

// Report says what a rotation pass did.
type Report struct {
	Providers, Credentials, Registrations int
	// Skipped rows changed concurrently; a writer re-encrypts under the
	// primary key anyway, and a second pass picks up any left over.
	Skipped int
	// Usage is the row count per key id after the pass.
	Usage map[uint32]int64
}

// Rotator re-encrypts every row under the primary key. It is idempotent and
// resumable: it only touches rows under another key, and each rewrite is
// conditional on the row still being under the key it was read with.
type Rotator struct {
	store Store
	keys  vault.Cipher
	log   *slog.Logger
	batch int
}

// New returns a rotator.
func New(store Store, keys vault.Cipher, log *slog.Logger) *Rotator {
	return &Rotator{store: store, keys: keys, log: log, batch: 200}
}

func (r *Rotator) reseal(s keyring.Scope, ct []byte) ([]byte, error) {
	if len(ct) == 0 {
		return ct, nil
	}
	pt, err := r.keys.Open(s, ct)
	if err != nil {
		return nil, fmt.Errorf("opening %s of %s/%s: %w", s.Field, s.Tenant, s.Provider, err)
	}
	return r.keys.Seal(s, pt)
}

// Run re-encrypts all providers, credentials and client registrations.
func (r *Rotator) Run(ctx context.Context) (*Report, error) {
	primary := r.keys.PrimaryID()
	rep := &Report{}
	afterT, afterID := "", ""
	for {
		rows, err := r.store.ProvidersNotUnderKey(ctx, primary, afterT, afterID, r.batch)
		if err != nil {
			return rep, err
		}
		for i := range rows {
			p := &rows[i]
			afterT, afterID = p.TenantID, p.ID
			old := p.KeyID
			sc := func(f string) keyring.Scope { return keyring.Scope{Tenant: p.TenantID, Provider: p.ID, Field: f} }
			if p.ServerURL, err = r.reseal(sc(vault.FieldServerURL), p.ServerURL); err != nil {
				return rep, err
			}
			if p.Headers, err = r.reseal(sc(vault.FieldHeaders), p.Headers); err != nil {
				return rep, err
			}
			if p.ClientSecret, err = r.reseal(sc(vault.FieldClientSecret), p.ClientSecret); err != nil {
				return rep, err
			}
			if p.CredentialSecrets, err = r.reseal(sc(vault.FieldCredentialSecrets), p.CredentialSecrets); err != nil {
				return rep, err
			}
			u, err := vault.OpenURL(r.keys, p)
			if err != nil {
				return rep, err
			}
			p.URLHash = r.keys.Fingerprint(p.TenantID, vault.PurposeURL, []byte(validate.NormalizeURL(u)))
			p.KeyID = primary
			ok, err := r.store.RewriteProviderCiphertexts(ctx, p, old)
			if err != nil {
				return rep, err
			}
			count(ok, &rep.Providers, &rep.Skipped)
		}
		if len(rows) < r.batch {
			break
		}
	}
	afterT, afterID = "", ""
	for {
		rows, err := r.store.CredentialsNotUnderKey(ctx, primary, afterT, afterID, r.batch)
		if err != nil {
			return rep, err
		}
		for i := range rows {
			c := &rows[i]
			afterT, afterID = c.TenantID, c.ProviderID
			old := c.KeyID
			if c.Tokens, err = r.reseal(vault.TokenScope(c.Ref()), c.Tokens); err != nil {
				return rep, err
			}
			c.KeyID = primary
			ok, err := r.store.RewriteCredentialCiphertexts(ctx, c, old)
			if err != nil {
				return rep, err
			}
			count(ok, &rep.Credentials, &rep.Skipped)
		}
		if len(rows) < r.batch {
			break
		}
	}
	afterT, afterID, afterIH := "", "", ""
	for {
		rows, err := r.store.ClientRegistrationsNotUnderKey(ctx, primary, afterT, afterID, afterIH, r.batch)
		if err != nil {
			return rep, err
		}
		for i := range rows {
			g := &rows[i]
			afterT, afterID, afterIH = g.TenantID, g.ProviderID, g.IssuerHash
			old := g.KeyID
			if g.Secret, err = r.reseal(vault.RegistrationScope(g.TenantID, g.ProviderID, g.Issuer), g.Secret); err != nil {
				return rep, err
			}
			g.KeyID = primary
			ok, err := r.store.RewriteClientRegistrationCiphertexts(ctx, g, old)
			if err != nil {
				return rep, err
			}
			count(ok, &rep.Registrations, &rep.Skipped)
		}
		if len(rows) < r.batch {
			break
		}
	}
	usage, err := r.store.KeyUsage(ctx)
	if err != nil {
		return rep, err
	}
	rep.Usage = usage
	return rep, nil
}

func count(ok bool, done, skipped *int) {
	if ok {
		*done++
	} else {
		*skipped++
	}
}
