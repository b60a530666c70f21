package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/app"
	"github.com/mcpauth/mcpauth/config"
	"github.com/mcpauth/mcpauth/internal/testenv"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/rotation"
)

// rotTenants and rotIDs name the providers of the rotation test. The same
// ids exist in both tenants, so a ciphertext moved between tenants lands on
// a row with the same provider id and field: only the tenant binding of
// the associated data can refuse it.
var (
	rotTenants = []string{"t1", "t2"}
	rotIDs     = []string{"p0", "p1", "p2"}
)

// rotSecret is the distinctive header value of one provider.
func rotSecret(tenant, id string) string { return "rot-hdr-" + tenant + "-" + id }

// rotEnv is a restartable service: the same database and data directory
// under changing master keys.
type rotEnv struct {
	dataDir, dsn string
}

func (e rotEnv) start(tb testing.TB, keys string) *Service {
	tb.Helper()
	return Start(tb, Options{DSN: e.dsn, DataDir: e.dataDir, Env: map[string]string{"MCPAUTH_MASTER_KEYS": keys}})
}

// newApp runs app.New (the startup checks) without serving, and closes the
// app when it starts.
func (e rotEnv) newApp(tb testing.TB, keys string) error {
	tb.Helper()
	env := map[string]string{
		"MCPAUTH_DATA_DIR":                    e.dataDir,
		"MCPAUTH_GRPC_ADDR":                   "127.0.0.1:0",
		"MCPAUTH_HTTP_ADDR":                   "127.0.0.1:0",
		"MCPAUTH_MASTER_KEYS":                 keys,
		"MCPAUTH_BACKGROUND_REFRESH_INTERVAL": "0",
	}
	if e.dsn != "" {
		env["MCPAUTH_DATABASE_URL"] = e.dsn
	}
	ctx := context.Background()
	cfg, err := config.Load(ctx, nil, envconfig.MapLookuper(env))
	if err != nil {
		tb.Fatalf("config: %v", err)
	}
	a, err := app.New(ctx, cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err == nil {
		a.Close()
	}
	return err
}

// rotViews reads every provider of the test through the API.
func rotViews(tb testing.TB, s *Service) map[string]*mcpauthv1.Provider {
	tb.Helper()
	out := map[string]*mcpauthv1.Provider{}
	for _, tenant := range rotTenants {
		for _, page := range provListAll(tb, s, s.AdminKey, tenant, 2) {
			for _, p := range page {
				out[p.GetName()] = provGet(tb, s, s.AdminKey, p.GetName())
			}
		}
	}
	return out
}

// rotSameViews compares views across a key change: header fingerprints are
// keyed by the primary key and may change; everything else may not.
func rotSameViews(tb testing.TB, want, got map[string]*mcpauthv1.Provider) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("%d providers readable, want %d", len(got), len(want))
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			tb.Fatalf("provider %s missing", name)
		}
		if !proto.Equal(provWithout(w, "header_info"), provWithout(g, "header_info")) {
			tb.Fatalf("provider %s reads %v, want %v", name, g, w)
		}
		if strings.Join(provHeaderNames(w), ",") != strings.Join(provHeaderNames(g), ",") {
			tb.Fatalf("provider %s headers %v, want %v", name, g.GetHeaderInfo(), w.GetHeaderInfo())
		}
	}
}

// rotCheckRows checks, straight from the database, that every provider and
// credential row says it is under keyID, that every ciphertext in it
// carries keyID, and that the plaintexts are what the test stored.
func rotCheckRows(tb testing.TB, s *Service, keyID uint32, wantProviders, wantCreds int) {
	tb.Helper()
	ctx := context.Background()
	var providers []repository.Provider
	if err := s.Store().DB().WithContext(ctx).Order("tenant_id, id").Find(&providers).Error; err != nil {
		tb.Fatal(err)
	}
	if len(providers) != wantProviders {
		tb.Fatalf("%d provider rows, want %d", len(providers), wantProviders)
	}
	for i := range providers {
		p := &providers[i]
		if p.KeyID != keyID || !strings.HasPrefix(p.URLHash, fmt.Sprintf("k%d:", keyID)) {
			tb.Fatalf("provider %s/%s: key_id %d, url_hash %.4s..., want key %d", p.TenantID, p.ID, p.KeyID, p.URLHash, keyID)
		}
		for field, ct := range map[string][]byte{provFieldServerURL: p.ServerURL, provFieldHeaders: p.Headers, provFieldClientSecret: p.ClientSecret} {
			if len(ct) == 0 {
				continue
			}
			if id, err := keyring.KeyID(ct); err != nil || id != keyID {
				tb.Fatalf("provider %s/%s %s: ciphertext key id %d (%v), want %d", p.TenantID, p.ID, field, id, err, keyID)
			}
			pt := provOpen(tb, s, p, field, ct)
			if field == provFieldHeaders && !strings.Contains(pt, rotSecret(p.TenantID, p.ID)) && !strings.HasPrefix(p.ID, "new") {
				tb.Fatalf("provider %s/%s headers decrypt to %s", p.TenantID, p.ID, pt)
			}
		}
	}
	var creds []repository.Credential
	if err := s.Store().DB().WithContext(ctx).Find(&creds).Error; err != nil {
		tb.Fatal(err)
	}
	if len(creds) != wantCreds {
		tb.Fatalf("%d credential rows, want %d", len(creds), wantCreds)
	}
	for _, c := range creds {
		if id, err := keyring.KeyID(c.Tokens); err != nil || id != keyID || c.KeyID != keyID {
			tb.Fatalf("credential %s/%s: key_id %d, ciphertext key id %d (%v), want %d", c.TenantID, c.ProviderID, c.KeyID, id, err, keyID)
		}
		pt, err := s.App.Keys().Open(provScope(c.TenantID, c.ProviderID, provFieldTokens), c.Tokens)
		if err != nil || string(pt) != `{"a":"access-`+c.TenantID+"-"+c.ProviderID+`"}` {
			tb.Fatalf("credential %s/%s opens to %q, %v", c.TenantID, c.ProviderID, pt, err)
		}
	}
}

// rotUsage returns the store's key usage.
func rotUsage(tb testing.TB, s *Service) map[uint32]int64 {
	tb.Helper()
	u, err := s.Store().KeyUsage(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	for id, n := range u {
		if n == 0 {
			delete(u, id)
		}
	}
	return u
}

func rotUsageString(u map[uint32]int64) string {
	var b strings.Builder
	for id := uint32(1); id <= 3; id++ {
		if n, ok := u[id]; ok {
			fmt.Fprintf(&b, "%d:%d ", id, n)
		}
	}
	return strings.TrimSpace(b.String())
}

// TestRotationEndToEnd encrypts providers under key 1, proves ciphertexts
// are bound to their row, tenant and field, then rotates to key 2 with
// restarts in between and retires key 1 only once no row uses it.
func TestRotationEndToEnd(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		spec1, err := keyring.GenerateSpec(1)
		if err != nil {
			t.Fatal(err)
		}
		spec2, err := keyring.GenerateSpec(2)
		if err != nil {
			t.Fatal(err)
		}
		env := rotEnv{dataDir: t.TempDir()}
		if b.postgres {
			env.dsn = testenv.PostgresDSN(t)
		}
		ctx := context.Background()

		// Key 1 only: providers with headers and client secrets in two
		// tenants, and a credential row per provider.
		s1 := env.start(t, spec1)
		for _, tenant := range rotTenants {
			for _, id := range rotIDs {
				provCreate(t, s1, s1.AdminKey, tenant, id, &mcpauthv1.Provider{
					DisplayName: "Rot " + id, ServerIdentifier: id,
					ServerUrl:   "https://" + id + ".rot.example/mcp?tenant=" + tenant,
					Headers:     map[string]string{"X-Api-Key": rotSecret(tenant, id)},
					OauthClient: &mcpauthv1.OAuthClient{ClientId: "client-" + id, ClientSecret: "rot-cs-" + tenant + "-" + id},
				})
				tokens, err := s1.App.Keys().Seal(provScope(tenant, id, provFieldTokens), []byte(`{"a":"access-`+tenant+"-"+id+`"}`))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := s1.Store().PutCredential(ctx, &repository.Credential{TenantID: tenant, ProviderID: id, Tokens: tokens,
					KeyID: s1.App.Keys().PrimaryID(), Scopes: "[]"}, 0); err != nil {
					t.Fatal(err)
				}
			}
		}
		nProviders, nCreds := len(rotTenants)*len(rotIDs), len(rotTenants)*len(rotIDs)
		rotCheckRows(t, s1, 1, nProviders, nCreds)
		views := rotViews(t, s1)
		if got := rotUsageString(rotUsage(t, s1)); got != fmt.Sprintf("1:%d", nProviders+nCreds) {
			t.Fatalf("key usage %s", got)
		}

		// A ciphertext moved to another row, tenant or field does not
		// decrypt: the read fails with a bare INTERNAL instead of returning
		// the other row's secret.
		moves := []struct {
			name                         string
			fromTenant, fromID, fromCol  string
			toTenant, toID, toCol        string
			readTenantList, secretInView string
		}{
			{"headers to another row", "t1", "p0", "headers", "t1", "p1", "headers", "t1", rotSecret("t1", "p0")},
			{"headers to another tenant", "t1", "p0", "headers", "t2", "p0", "headers", "t2", rotSecret("t1", "p0")},
			{"url to another tenant", "t2", "p1", "server_url", "t1", "p1", "server_url", "t1", "tenant=t2"},
			{"client secret to another row", "t1", "p2", "client_secret", "t1", "p0", "client_secret", "t1", "rot-cs-t1-p2"},
			{"client secret into headers of the same row", "t2", "p2", "client_secret", "t2", "p2", "headers", "t2", "rot-cs-t2-p2"},
		}
		db := s1.Store().DB()
		for _, mv := range moves {
			t.Run("tamper/"+mv.name, func(t *testing.T) {
				var saved []byte
				if err := db.Raw("SELECT "+mv.toCol+" FROM providers WHERE tenant_id = ? AND id = ?", mv.toTenant, mv.toID).Row().Scan(&saved); err != nil {
					t.Fatal(err)
				}
				res := db.Exec("UPDATE providers SET "+mv.toCol+" = (SELECT "+mv.fromCol+" FROM providers WHERE tenant_id = ? AND id = ?) WHERE tenant_id = ? AND id = ?",
					mv.fromTenant, mv.fromID, mv.toTenant, mv.toID)
				if res.Error != nil || res.RowsAffected != 1 {
					t.Fatalf("moving the ciphertext: %v (%d rows)", res.Error, res.RowsAffected)
				}
				name := "tenants/" + mv.toTenant + "/providers/" + mv.toID
				_, err := s1.Providers().GetProvider(Ctx(t, s1.AdminKey), &mcpauthv1.GetProviderRequest{Name: name})
				st := provStatus(t, err, codes.Internal)
				if st.Message() != "internal error" || len(st.Details()) != 0 {
					t.Fatalf("INTERNAL carries %q %v, want a bare internal error", st.Message(), st.Details())
				}
				_, err = s1.Providers().ListProviders(Ctx(t, s1.AdminKey), &mcpauthv1.ListProvidersRequest{Parent: "tenants/" + mv.readTenantList})
				provStatus(t, err, codes.Internal)
				_, err = s1.Providers().UpdateProvider(Ctx(t, s1.AdminKey), &mcpauthv1.UpdateProviderRequest{
					Provider:   &mcpauthv1.Provider{Name: name, DisplayName: "tampered"},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
				provStatus(t, err, codes.Internal)

				if err := db.Exec("UPDATE providers SET "+mv.toCol+" = ? WHERE tenant_id = ? AND id = ?", saved, mv.toTenant, mv.toID).Error; err != nil {
					t.Fatal(err)
				}
				if got := provGet(t, s1, s1.AdminKey, name); !proto.Equal(got, views[name]) {
					t.Fatalf("after restoring: %v, want %v", got, views[name])
				}
				if strings.Contains(s1.Logs.String(), mv.secretInView) {
					t.Fatalf("logs contain %q", mv.secretInView)
				}
			})
		}
		s1.Stop()

		// Retiring key 1 before re-encryption is refused at startup, naming
		// the missing key id.
		err = env.newApp(t, spec2)
		if err == nil || !strings.Contains(err.Error(), "key ids [1]") {
			t.Fatalf("app.New with key 2 only before rotation: %v, want a refusal naming key id 1", err)
		}
		if strings.Contains(err.Error(), strings.SplitN(spec1, ":", 2)[1]) || strings.Contains(err.Error(), strings.SplitN(spec2, ":", 2)[1]) {
			t.Fatal("the refusal contains key material")
		}

		// Key 2 primary, key 1 still readable.
		s2 := env.start(t, spec2+","+spec1)
		rotSameViews(t, views, rotViews(t, s2))
		if usage, err := s2.Store().KeyUsage(ctx); err != nil || usage[1] == 0 {
			t.Fatalf("key 1 usage before rotation = %v, %v; want rows under key 1", usage, err)
		}
		// URL uniqueness spans both keys during the rotation.
		_, err = s2.Providers().CreateProvider(Ctx(t, s2.AdminKey), &mcpauthv1.CreateProviderRequest{Parent: "tenants/t1",
			Provider: &mcpauthv1.Provider{DisplayName: "Dup", ServerIdentifier: "dup", ServerUrl: "HTTPS://P0.rot.example:443/mcp?tenant=t1"}})
		provWantField(t, err, codes.AlreadyExists, "provider.server_url")
		// New writes use key 2: a new provider, and an update that re-seals
		// the fields it does not touch.
		provCreate(t, s2, s2.AdminKey, "t1", "new1", &mcpauthv1.Provider{DisplayName: "New", ServerIdentifier: "new1",
			ServerUrl: "https://new1.rot.example/mcp", Headers: map[string]string{"X-Api-Key": "new"}})
		if row := provRow(t, s2, "t1", "new1"); row.KeyID != 2 {
			t.Fatalf("new provider under key %d, want 2", row.KeyID)
		}
		if _, err := s2.Providers().UpdateProvider(Ctx(t, s2.AdminKey), &mcpauthv1.UpdateProviderRequest{
			Provider:   &mcpauthv1.Provider{Name: "tenants/t2/providers/p1", Icon: "R"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"icon"}}}); err != nil {
			t.Fatal(err)
		}
		row := provRow(t, s2, "t2", "p1")
		for _, ct := range [][]byte{row.ServerURL, row.Headers, row.ClientSecret} {
			if id, _ := keyring.KeyID(ct); id != 2 || row.KeyID != 2 {
				t.Fatalf("updated provider: key_id %d, ciphertext key %d, want 2", row.KeyID, id)
			}
		}
		views["tenants/t2/providers/p1"] = provGet(t, s2, s2.AdminKey, "tenants/t2/providers/p1")
		views["tenants/t1/providers/new1"] = provGet(t, s2, s2.AdminKey, "tenants/t1/providers/new1")
		nProviders++
		want := fmt.Sprintf("1:%d 2:2", nProviders+nCreds-2)
		if got := rotUsageString(rotUsage(t, s2)); got != want {
			t.Fatalf("key usage %s, want %s", got, want)
		}

		// Re-encrypt everything under key 2, while the service runs.
		var rotLog syncBuffer
		rot := rotation.New(s2.Store(), s2.App.Keys(), slog.New(slog.NewJSONHandler(&rotLog, nil)))
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		rep, err := rot.Run(rctx)
		if err != nil {
			t.Fatalf("rotation: %v", err)
		}
		if rep.Providers != nProviders-2 || rep.Credentials != nCreds || rep.Skipped != 0 {
			t.Fatalf("rotation report %+v, want %d providers and %d credentials", rep, nProviders-2, nCreds)
		}
		if rep.Usage[1] != 0 || rep.Usage[2] != int64(nProviders+nCreds) {
			t.Fatalf("usage after rotation %v", rep.Usage)
		}
		rotCheckRows(t, s2, 2, nProviders, nCreds)
		if usage, err := s2.Store().KeyUsage(ctx); err != nil || usage[1] != 0 {
			t.Fatalf("key 1 usage after rotation = %v, %v; want none", usage, err)
		}
		rotSameViews(t, views, rotViews(t, s2))
		// A second pass has nothing to do.
		if rep, err := rot.Run(rctx); err != nil || rep.Providers+rep.Credentials+rep.Registrations+rep.Skipped != 0 {
			t.Fatalf("second rotation pass: %+v, %v", rep, err)
		}
		if strings.Contains(rotLog.String(), "rot-hdr-") || strings.Contains(rotLog.String(), "rot-cs-") {
			t.Fatal("rotation log contains a secret")
		}
		s2.Stop()

		// Key 1 retired: every row still reads, and uniqueness still holds
		// under the re-computed URL hashes.
		s3 := env.start(t, spec2)
		rotSameViews(t, views, rotViews(t, s3))
		rotCheckRows(t, s3, 2, nProviders, nCreds)
		_, err = s3.Providers().CreateProvider(Ctx(t, s3.AdminKey), &mcpauthv1.CreateProviderRequest{Parent: "tenants/t2",
			Provider: &mcpauthv1.Provider{DisplayName: "Dup", ServerIdentifier: "dup", ServerUrl: "https://p2.rot.example/mcp?tenant=t2"}})
		provWantField(t, err, codes.AlreadyExists, "provider.server_url")
		s3.Stop()

		// And now key 2 cannot be dropped for key 1.
		if err := env.newApp(t, spec1); err == nil || !strings.Contains(err.Error(), "key ids [2]") {
			t.Fatalf("app.New with key 1 only after rotation: %v, want a refusal naming key id 2", err)
		}
	})
}
