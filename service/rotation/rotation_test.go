package rotation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// memStore is an in-memory rotation.Store with the repository's rules:
// keyset paging on the primary keys, and rewrites conditional on the old key
// id and the version (generation) read. Rows are keyed by their primary key
// joined with NUL, which sorts as the tuple does.
type memStore struct {
	mu        sync.Mutex
	providers map[string]repository.Provider
	creds     map[string]repository.Credential
	regs      map[string]repository.ClientRegistration
	fail      map[string]error
	// afterList runs after a NotUnderKey read, outside the lock: a
	// concurrent writer.
	afterList func(method string)
}

func newMemStore() *memStore {
	return &memStore{providers: map[string]repository.Provider{}, creds: map[string]repository.Credential{},
		regs: map[string]repository.ClientRegistration{}, fail: map[string]error{}}
}

func key(parts ...string) string { return strings.Join(parts, "\x00") }

func (s *memStore) enter(method string) error {
	s.mu.Lock()
	if err := s.fail[method]; err != nil {
		s.mu.Unlock()
		return err
	}
	return nil
}

func (s *memStore) failOn(method string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[method] = err
}

func (s *memStore) KeyUsage(context.Context) (map[uint32]int64, error) {
	if err := s.enter("KeyUsage"); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	usage := map[uint32]int64{}
	for _, p := range s.providers {
		usage[p.KeyID]++
	}
	for _, c := range s.creds {
		usage[c.KeyID]++
	}
	for _, r := range s.regs {
		usage[r.KeyID]++
	}
	return usage, nil
}

// notUnder returns up to limit rows of m not under keyID with a key after
// after, in key order.
func notUnder[T any](m map[string]T, keyID uint32, kid func(T) uint32, after string, limit int) []T {
	var out []T
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if k > after && kid(m[k]) != keyID && len(out) < limit {
			out = append(out, m[k])
		}
	}
	return out
}

func list[T any](s *memStore, method string, m map[string]T, keyID uint32, kid func(T) uint32, after string, limit int) ([]T, error) {
	if err := s.enter(method); err != nil {
		return nil, err
	}
	out := notUnder(m, keyID, kid, after, limit)
	s.mu.Unlock()
	if s.afterList != nil {
		s.afterList(method)
	}
	return out, nil
}

func (s *memStore) ProvidersNotUnderKey(_ context.Context, keyID uint32, afterTenant, afterID string, limit int) ([]repository.Provider, error) {
	return list(s, "ProvidersNotUnderKey", s.providers, keyID, func(p repository.Provider) uint32 { return p.KeyID },
		key(afterTenant, afterID), limit)
}

func (s *memStore) CredentialsNotUnderKey(_ context.Context, keyID uint32, afterTenant, afterProviderID string, limit int) ([]repository.Credential, error) {
	return list(s, "CredentialsNotUnderKey", s.creds, keyID, func(c repository.Credential) uint32 { return c.KeyID },
		key(afterTenant, afterProviderID), limit)
}

func (s *memStore) ClientRegistrationsNotUnderKey(_ context.Context, keyID uint32, afterTenant, afterProviderID, afterIssuerHash string, limit int) ([]repository.ClientRegistration, error) {
	return list(s, "ClientRegistrationsNotUnderKey", s.regs, keyID, func(r repository.ClientRegistration) uint32 { return r.KeyID },
		key(afterTenant, afterProviderID, afterIssuerHash), limit)
}

// rewrite replaces the row at k with fresh when the stored row passes
// current.
func rewrite[T any](s *memStore, method string, m map[string]T, k string, current func(T) bool, fresh T) (bool, error) {
	if err := s.enter(method); err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	row, ok := m[k]
	if !ok || !current(row) {
		return false, nil
	}
	m[k] = fresh
	return true, nil
}

func (s *memStore) RewriteProviderCiphertexts(_ context.Context, p *repository.Provider, oldKeyID uint32) (bool, error) {
	return rewrite(s, "RewriteProviderCiphertexts", s.providers, key(p.TenantID, p.ID), func(r repository.Provider) bool {
		return r.KeyID == oldKeyID && r.Version == p.Version
	}, *p)
}

func (s *memStore) RewriteCredentialCiphertexts(_ context.Context, c *repository.Credential, oldKeyID uint32) (bool, error) {
	return rewrite(s, "RewriteCredentialCiphertexts", s.creds, key(c.TenantID, c.ProviderID), func(r repository.Credential) bool {
		return r.KeyID == oldKeyID && r.Generation == c.Generation
	}, *c)
}

func (s *memStore) RewriteClientRegistrationCiphertexts(_ context.Context, r *repository.ClientRegistration, oldKeyID uint32) (bool, error) {
	return rewrite(s, "RewriteClientRegistrationCiphertexts", s.regs, key(r.TenantID, r.ProviderID, r.IssuerHash),
		func(cur repository.ClientRegistration) bool { return cur.KeyID == oldKeyID && cur.Version == r.Version }, *r)
}

// touch is a concurrent writer: it bumps the version (generation) of the
// row of tenant/id in the table listed by method, without re-encrypting it.
func (s *memStore) touch(method, tenant, id string) {
	s.edit(tenant, id, func(p *repository.Provider, c *repository.Credential, r *repository.ClientRegistration) {
		switch method {
		case "ProvidersNotUnderKey":
			p.Version++
		case "CredentialsNotUnderKey":
			c.Generation++
		case "ClientRegistrationsNotUnderKey":
			r.Version++
		}
	})
}

// keysets holds the old keyring (key 1), the rotated one (key 2 primary,
// key 1 kept) and the retired one (key 2 only).
type keysets struct{ old, rotated, retired *keyring.Keyring }

func newKeysets(t *testing.T) keysets {
	t.Helper()
	parse := func(specs ...string) *keyring.Keyring {
		k, err := keyring.Parse(strings.Join(specs, ","))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	spec1, err1 := keyring.GenerateSpec(1)
	spec2, err2 := keyring.GenerateSpec(2)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	return keysets{old: parse(spec1), rotated: parse(spec2, spec1), retired: parse(spec2)}
}

const issuer = "https://as.example.com"

func serverURL(tenant, id string) string {
	return fmt.Sprintf("https://%s.example.com/mcp?tenant=%s", id, tenant)
}

// seed stores, under k, a provider, a credential and a client registration
// for each (tenant, provider); every other one has no headers, client
// secret, tokens or registration secret.
func seed(t *testing.T, s *memStore, k *keyring.Keyring, tenants, ids []string) {
	t.Helper()
	sealField := func(tenant, id, field, v string) []byte {
		return sealAs(t, k, keyring.Scope{Tenant: tenant, Provider: id, Field: field}, v)
	}
	n := 0
	for _, tenant := range tenants {
		for _, id := range ids {
			full := n%2 == 0
			n++
			u := serverURL(tenant, id)
			p := repository.Provider{TenantID: tenant, ID: id, KeyID: k.PrimaryID(), Version: 3,
				ServerURL: sealField(tenant, id, vault.FieldServerURL, u),
				URLHash:   k.Fingerprint(tenant, vault.PurposeURL, []byte(u))}
			c := repository.Credential{TenantID: tenant, ProviderID: id, KeyID: k.PrimaryID(), Generation: 5, Status: domain.StatusUnauthorized}
			r := repository.ClientRegistration{TenantID: tenant, ProviderID: id, Issuer: issuer, IssuerHash: "ih", ClientID: "c-" + id,
				KeyID: k.PrimaryID(), Version: 2}
			if full {
				p.Headers = sealField(tenant, id, vault.FieldHeaders, `{"X-Key":"h-`+id+`"}`)
				p.ClientSecret = sealField(tenant, id, vault.FieldClientSecret, "cs-"+id)
				var err error
				c.Tokens, err = vault.SealTokens(k, domain.TenantGrant(tenant, id), &oauthclient.Tokens{AccessToken: secret.New("at-" + id)},
					vault.Grant{Issuer: issuer}, time.Unix(1e9, 0))
				if err != nil {
					t.Fatal(err)
				}
				c.Status = domain.StatusAuthorized
				r.Secret, err = vault.SealRegistration(k, tenant, id, issuer, &oauthclient.Registration{ClientSecret: secret.New("rs-" + id)})
				if err != nil {
					t.Fatal(err)
				}
			}
			s.providers[key(tenant, id)] = p
			s.creds[key(tenant, id)] = c
			s.regs[key(tenant, id, "ih")] = r
		}
	}
}

// checkAllUnder checks that every row and every ciphertext is under k's
// primary key, opens with k and holds what seed stored.
func checkAllUnder(t *testing.T, s *memStore, k *keyring.Keyring) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	want := k.PrimaryID()
	under := func(what string, rowKey uint32, cts ...[]byte) {
		t.Helper()
		if rowKey != want {
			t.Errorf("%s: key_id %d, want %d", what, rowKey, want)
		}
		for _, ct := range cts {
			if len(ct) == 0 {
				continue
			}
			if id, err := keyring.KeyID(ct); err != nil || id != want {
				t.Errorf("%s: a ciphertext under key %d (%v), want %d", what, id, err, want)
			}
		}
	}
	for _, p := range s.providers {
		under("provider "+p.ID, p.KeyID, p.ServerURL, p.Headers, p.ClientSecret)
		d, err := vault.OpenProvider(k, &p)
		if err != nil {
			t.Errorf("provider %s/%s: %v", p.TenantID, p.ID, err)
			continue
		}
		if d.URL.String() != serverURL(p.TenantID, p.ID) || (len(p.Headers) > 0 && d.Headers["X-Key"] != "h-"+p.ID) ||
			(len(p.ClientSecret) > 0 && d.ClientSecret.Reveal() != "cs-"+p.ID) {
			t.Errorf("provider %s/%s opened as %+v", p.TenantID, p.ID, d)
		}
		if p.URLHash != k.Fingerprint(p.TenantID, vault.PurposeURL, []byte(validate.NormalizeURL(d.URL))) {
			t.Errorf("provider %s/%s: url hash %s is not the primary key's", p.TenantID, p.ID, p.URLHash)
		}
	}
	for _, c := range s.creds {
		under("credential "+c.ProviderID, c.KeyID, c.Tokens)
		if len(c.Tokens) == 0 {
			continue
		}
		if h, err := vault.OpenTokens(k, &c); err != nil || h.Tokens.AccessToken.Reveal() != "at-"+c.ProviderID {
			t.Errorf("credential %s/%s: %v", c.TenantID, c.ProviderID, err)
		}
	}
	for _, r := range s.regs {
		under("registration "+r.ProviderID, r.KeyID, r.Secret)
		if reg, err := vault.OpenRegistration(k, &r); err != nil || (len(r.Secret) > 0 && reg.ClientSecret.Reveal() != "rs-"+r.ProviderID) {
			t.Errorf("registration %s/%s: %v", r.TenantID, r.ProviderID, err)
		}
	}
}

func newRotator(s Store, k vault.Cipher, batch int) *Rotator {
	r := New(s, k, slog.New(slog.DiscardHandler))
	r.batch = batch
	return r
}

// TestRun rotates three tenants of five providers each from key 1 to key
// 2, in batches of various sizes (exact multiples included).
func TestRun(t *testing.T) {
	t.Parallel()
	ks := newKeysets(t)
	tenants, ids := []string{"t1", "t2", "t3"}, []string{"a", "b", "c", "d", "e"}
	for _, batch := range []int{1, 2, 3, 5, 15, 200} {
		t.Run(fmt.Sprintf("batch %d", batch), func(t *testing.T) {
			t.Parallel()
			s := newMemStore()
			seed(t, s, ks.old, tenants, ids)
			ctx := context.Background()
			if usage, _ := s.KeyUsage(ctx); !reflect.DeepEqual(usage, map[uint32]int64{1: 45}) {
				t.Fatalf("usage before the rotation = %v", usage)
			}

			rep, err := newRotator(s, ks.rotated, batch).Run(ctx)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			want := &Report{Providers: 15, Credentials: 15, Registrations: 15, Usage: map[uint32]int64{2: 45}}
			if !reflect.DeepEqual(rep, want) {
				t.Errorf("report = %+v, want %+v", rep, want)
			}
			checkAllUnder(t, s, ks.retired)

			again, err := newRotator(s, ks.rotated, batch).Run(ctx)
			if err != nil {
				t.Fatalf("second Run: %v", err)
			}
			if want := (&Report{Usage: map[uint32]int64{2: 45}}); !reflect.DeepEqual(again, want) {
				t.Errorf("second report = %+v, want %+v: nothing left to do", again, want)
			}
		})
	}
}

// TestRunSkipsRowsChangedConcurrently bumps the version of one row of each
// table between the read and the rewrite: those rows are skipped, left
// under key 1, and picked up by the next pass.
func TestRunSkipsRowsChangedConcurrently(t *testing.T) {
	t.Parallel()
	ks := newKeysets(t)
	s := newMemStore()
	seed(t, s, ks.old, []string{"t1", "t2"}, []string{"a", "b"})
	touched := map[string]bool{} // afterList runs on Run's goroutine
	s.afterList = func(method string) {
		if !touched[method] {
			touched[method] = true
			s.touch(method, "t1", "b")
		}
	}
	ctx := context.Background()

	rep, err := newRotator(s, ks.rotated, 10).Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := &Report{Providers: 3, Credentials: 3, Registrations: 3, Skipped: 3, Usage: map[uint32]int64{1: 3, 2: 9}}
	if !reflect.DeepEqual(rep, want) {
		t.Errorf("report = %+v, want %+v", rep, want)
	}

	rep, err = newRotator(s, ks.rotated, 10).Run(ctx)
	if err != nil {
		t.Fatalf("second Run: %v", err)
	}
	want = &Report{Providers: 1, Credentials: 1, Registrations: 1, Usage: map[uint32]int64{2: 12}}
	if !reflect.DeepEqual(rep, want) {
		t.Errorf("second report = %+v, want %+v", rep, want)
	}
	checkAllUnder(t, s, ks.retired)
}

// put stores a replacement ciphertext into one column of a provider's
// rows.
type put func(p *repository.Provider, c *repository.Credential, r *repository.ClientRegistration, ct []byte)

var (
	putURL put = func(p *repository.Provider, _ *repository.Credential, _ *repository.ClientRegistration, ct []byte) {
		p.ServerURL = ct
	}
	putHeaders put = func(p *repository.Provider, _ *repository.Credential, _ *repository.ClientRegistration, ct []byte) {
		p.Headers = ct
	}
	putClientSecret put = func(p *repository.Provider, _ *repository.Credential, _ *repository.ClientRegistration, ct []byte) {
		p.ClientSecret = ct
	}
	putTokens put = func(_ *repository.Provider, c *repository.Credential, _ *repository.ClientRegistration, ct []byte) {
		c.Tokens = ct
	}
	putRegistration put = func(_ *repository.Provider, _ *repository.Credential, r *repository.ClientRegistration, ct []byte) {
		r.Secret = ct
	}
)

func TestRunFailures(t *testing.T) {
	t.Parallel()
	ks := newKeysets(t)
	spec9, err := keyring.GenerateSpec(9)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := keyring.Parse(spec9)
	if err != nil {
		t.Fatal(err)
	}
	errStore := errors.New("store down")
	scope := func(tenant, id, field string) keyring.Scope {
		return keyring.Scope{Tenant: tenant, Provider: id, Field: field}
	}
	tests := []struct {
		name   string
		failOn string
		// Else a ciphertext of t1/a the rotation cannot open: value ("x"
		// when empty) sealed by keys (the old keyring when nil) for scope.
		put   put
		keys  *keyring.Keyring
		scope keyring.Scope
		value string
		want  string
	}{
		{name: "listing providers", failOn: "ProvidersNotUnderKey", want: "store down"},
		{name: "listing credentials", failOn: "CredentialsNotUnderKey", want: "store down"},
		{name: "listing registrations", failOn: "ClientRegistrationsNotUnderKey", want: "store down"},
		{name: "rewriting a provider", failOn: "RewriteProviderCiphertexts", want: "store down"},
		{name: "rewriting a credential", failOn: "RewriteCredentialCiphertexts", want: "store down"},
		{name: "rewriting a registration", failOn: "RewriteClientRegistrationCiphertexts", want: "store down"},
		{name: "counting usage", failOn: "KeyUsage", want: "store down"},
		{name: "url of another provider", put: putURL, scope: scope("t1", "b", vault.FieldServerURL),
			want: "opening provider.server_url of t1/a"},
		{name: "url under an unknown key", put: putURL, keys: foreign, scope: scope("t1", "a", vault.FieldServerURL),
			want: "opening provider.server_url of t1/a: keyring: unknown key id 9"},
		{name: "url that does not parse", put: putURL, scope: scope("t1", "a", vault.FieldServerURL), value: "http://[::1",
			want: "parsing stored server url"},
		{name: "headers sealed as another field", put: putHeaders, scope: scope("t1", "a", vault.FieldClientSecret),
			want: "opening provider.headers of t1/a"},
		{name: "client secret of another tenant", put: putClientSecret, scope: scope("t2", "a", vault.FieldClientSecret),
			want: "opening provider.oauth_client.client_secret of t1/a"},
		{name: "tokens of another provider", put: putTokens, scope: scope("t1", "b", vault.FieldTokens),
			want: "opening credential.tokens of t1/a"},
		{name: "registration of another issuer", put: putRegistration,
			scope: vault.RegistrationScope("t1", "a", "https://other.example.com"), want: "opening client_registration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newMemStore()
			seed(t, s, ks.old, []string{"t1"}, []string{"a", "b"})
			if tt.failOn != "" {
				s.failOn(tt.failOn, errStore)
			}
			if tt.put != nil {
				k := tt.keys
				if k == nil {
					k = ks.old
				}
				value := tt.value
				if value == "" {
					value = "x"
				}
				ct := sealAs(t, k, tt.scope, value)
				s.edit("t1", "a", func(p *repository.Provider, c *repository.Credential, r *repository.ClientRegistration) {
					tt.put(p, c, r, ct)
				})
			}
			rep, err := newRotator(s, ks.rotated, 10).Run(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Run = %v, want an error containing %q", err, tt.want)
			}
			if rep == nil {
				t.Error("no report of the work done before the failure")
			}
		})
	}
}

func sealAs(t *testing.T, k *keyring.Keyring, sc keyring.Scope, plaintext string) []byte {
	t.Helper()
	ct, err := k.Seal(sc, []byte(plaintext))
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

// edit changes the rows of tenant/id (its registration at issuer hash "ih").
func (s *memStore) edit(tenant, id string, f func(*repository.Provider, *repository.Credential, *repository.ClientRegistration)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, c, r := s.providers[key(tenant, id)], s.creds[key(tenant, id)], s.regs[key(tenant, id, "ih")]
	f(&p, &c, &r)
	s.providers[key(tenant, id)], s.creds[key(tenant, id)], s.regs[key(tenant, id, "ih")] = p, c, r
}
