package providers

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/service/vault"
)

// epoch has nanoseconds so the views' truncation to microseconds shows.
var epoch = time.Date(2026, 2, 3, 4, 5, 6, 123456789, time.UTC)

// revoker is a working Revoker over the in-memory store: it notes each
// revocation and whether the provider still held a grant to revoke then.
type revoker struct {
	store   *servicetest.Store
	confirm bool

	mu      sync.Mutex
	revoked []revocation
}

type revocation struct {
	tenant, provider string
	heldGrant        bool
}

// PrepareRevoke notes whether a grant is held now; the revocation it
// returns records itself when run.
func (r *revoker) PrepareRevokeProvider(_ context.Context, tenant, providerID string) func(context.Context) bool {
	held := r.store.Credential(tenant, providerID) != nil
	return func(context.Context) bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.revoked = append(r.revoked, revocation{tenant, providerID, held})
		return r.confirm
	}
}

func (r *revoker) revocations() []revocation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]revocation(nil), r.revoked...)
}

// prober answers every probe with err (or, without one, with authRequired)
// and keeps what it was asked; onProbe, when set, sees each probe's
// context first, as the egress guard's block hook would.
type prober struct {
	err          error
	authRequired bool
	onProbe      func(ctx context.Context)

	mu     sync.Mutex
	probed []probe
}

type probe struct {
	url     string
	headers map[string]string
}

func (p *prober) ProbeServer(ctx context.Context, serverURL string, headers map[string]string) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.probed = append(p.probed, probe{serverURL, maps.Clone(headers)})
	if p.onProbe != nil {
		p.onProbe(ctx)
	}
	return p.authRequired, p.err
}

// env is a provider registry over the in-memory store, a real keyring and
// a real Auditor writing to the same store.
type env struct {
	svc     *Service
	store   *servicetest.Store
	keys    *keyring.Keyring
	revoker *revoker
	prober  *prober
	deps    Deps
}

func parseKeys(tb testing.TB, specs ...string) *keyring.Keyring {
	tb.Helper()
	k, err := keyring.Parse(strings.Join(specs, ","))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func genSpec(tb testing.TB, id uint32) string {
	tb.Helper()
	spec, err := keyring.GenerateSpec(id)
	if err != nil {
		tb.Fatal(err)
	}
	return spec
}

// newEnv returns a registry with key 1; edit changes its dependencies.
func newEnv(tb testing.TB, edit ...func(*Deps)) *env {
	tb.Helper()
	clock := servicetest.NewClock(epoch)
	st := servicetest.NewStore(clock.Now)
	log := slog.New(slog.DiscardHandler)
	a := audit.NewAuditor(st, log, clock.Now)
	tb.Cleanup(a.Close)
	e := &env{store: st, keys: parseKeys(tb, genSpec(tb, 1)), revoker: &revoker{store: st, confirm: true}, prober: &prober{}}
	e.deps = Deps{Store: st, Cipher: e.keys, Audit: a, Log: log, Now: clock.Now, Revoker: e.revoker, Prober: e.prober}
	for _, f := range edit {
		f(&e.deps)
	}
	e.svc = e.with(tb, e.deps.Cipher)
	return e
}

// dropIf is a Deps edit removing an optional dependency when cond holds.
func dropIf(cond bool, drop func(*Deps)) func(*Deps) {
	return func(d *Deps) {
		if cond {
			drop(d)
		}
	}
}

func noRevoker(d *Deps) { d.Revoker = nil }
func noProber(d *Deps)  { d.Prober = nil }

// with returns a registry on the same store and audit log using keys.
func (e *env) with(tb testing.TB, keys vault.Cipher) *Service {
	tb.Helper()
	d := e.deps
	d.Cipher = keys
	svc, err := New(d)
	if err != nil {
		tb.Fatal(err)
	}
	return svc
}

// linear returns valid fields for a provider, every optional field set.
func linear() Fields {
	return Fields{DisplayName: "Linear", ServerIdentifier: "linear", ServerURL: "https://mcp.linear.app/mcp?key=url-secret",
		Headers: map[string]string{"x-api-key": "hdr-secret", "X-Empty": ""}, Icon: "https://linear.app/icon.png",
		OAuthClient: OAuthClient{ClientID: "client-1", ClientSecret: "client-secret", Scopes: []string{"read"}}}
}

// named returns fields that conflict with no other named provider.
func named(name string) Fields {
	return Fields{DisplayName: name, ServerIdentifier: name, ServerURL: "https://" + name + ".example.com/mcp"}
}

func (e *env) create(tb testing.TB, tenant, id string, f Fields) *View {
	tb.Helper()
	v, err := e.svc.Create(context.Background(), CreateInput{Tenant: tenant, ID: id, Fields: f})
	if err != nil {
		tb.Fatalf("Create %s/%s: %v", tenant, id, err)
	}
	return v
}

func (e *env) row(tb testing.TB, tenant, id string) *repository.Provider {
	tb.Helper()
	row, err := e.store.GetProvider(context.Background(), tenant, id)
	if err != nil {
		tb.Fatalf("stored provider %s/%s: %v", tenant, id, err)
	}
	return row
}

// rewriteRow changes the stored row of tenant/id, as a corrupted database
// or an older mcpauth would have left it.
func (e *env) rewriteRow(tb testing.TB, tenant, id string, f func(*repository.Provider)) {
	tb.Helper()
	row := e.row(tb, tenant, id)
	f(row)
	if err := e.store.UpdateProvider(context.Background(), row, row.Version); err != nil {
		tb.Fatal(err)
	}
}

// authorize gives tenant/id a grant, a client registration and a tool
// list, as a completed authorization would.
func (e *env) authorize(tb testing.TB, tenant, id string) {
	tb.Helper()
	ctx := context.Background()
	tokens, err := e.keys.Seal(keyring.Scope{Tenant: tenant, Provider: id, Field: vault.FieldTokens}, []byte(`{"a":"at"}`))
	if err != nil {
		tb.Fatal(err)
	}
	_, err1 := e.store.PutCredential(ctx, &repository.Credential{TenantID: tenant, ProviderID: id, Tokens: tokens,
		Status: domain.StatusAuthorized, KeyID: e.keys.PrimaryID(), Scopes: "[]"}, 0)
	err2 := e.store.PutClientRegistration(ctx, &repository.ClientRegistration{TenantID: tenant, ProviderID: id,
		Issuer: "https://as.example.com", Method: domain.RegDynamic, ClientID: "dcr", KeyID: e.keys.PrimaryID()})
	err3 := putTools(ctx, e.store, &repository.ToolList{TenantID: tenant, ProviderID: id, Tools: "[]"})
	if err := errors.Join(err1, err2, err3); err != nil {
		tb.Fatal(err)
	}
}

// held reports which of the grant, registration and tool list of
// tenant/id are stored.
func (e *env) held(tenant, id string) (grant, registration, tools bool) {
	ctx := context.Background()
	_, regErr := e.store.GetClientRegistration(ctx, tenant, id, "https://as.example.com")
	_, toolErr := e.store.GetTools(ctx, domain.TenantGrant(tenant, id))
	return e.store.Credential(tenant, id) != nil, regErr == nil, toolErr == nil
}

// eventsOf returns the stored audit events of one type.
func (e *env) eventsOf(typ domain.EventType) []repository.AuditEvent {
	var out []repository.AuditEvent
	for _, ev := range e.store.Events() {
		if ev.EventType == string(typ) {
			out = append(out, ev)
		}
	}
	return out
}

// wantErr checks err's kind and, when field is not empty, its field.
func wantErr(tb testing.TB, err error, kind apperr.Kind, field string) {
	tb.Helper()
	e, ok := apperr.As(err)
	if !ok {
		tb.Fatalf("err = %v, want %v on %q", err, kind, field)
	}
	if e.Kind != kind || e.Field != field {
		tb.Fatalf("err = %v (kind %v, field %q), want %v on %q", err, e.Kind, e.Field, kind, field)
	}
}

// ciphertextKeys returns the key ids of a row's non-empty ciphertexts.
func ciphertextKeys(tb testing.TB, row *repository.Provider) []uint32 {
	tb.Helper()
	var ids []uint32
	for _, ct := range [][]byte{row.ServerURL, row.Headers, row.ClientSecret} {
		if len(ct) == 0 {
			continue
		}
		id, err := keyring.KeyID(ct)
		if err != nil {
			tb.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// putTools stores t at its provider's current version.
func putTools(ctx context.Context, st *servicetest.Store, t *repository.ToolList) error {
	p, err := st.GetProvider(ctx, t.TenantID, t.ProviderID)
	if err != nil {
		return err
	}
	stored, err := st.PutTools(ctx, t, p.Version)
	if err == nil && !stored {
		return errors.New("tool list not stored at the current version")
	}
	return err
}
